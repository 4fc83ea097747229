"""GenerateSocialContent offline: platform limits (X weighted), hashtags, order, tone, languages, bad input.

Integrations is served by its real definition behind the real chain (see :mod:`.content_served`);
the offline generator is the one the content agent uses (``bhiv_core.text.social``).
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from bhiv.integrations.v1 import content_service_pb2 as cs
from bhiv_core.text.social import LIMITS, Platform
from bhiv_core.text.x_length import weighted_length
from tests.services.crm.conftest import reason, refused, violations
from tests.services.integrations.content_served import SUPPORT, Content, serve_content

ALL = [
    cs.SOCIAL_PLATFORM_X,
    cs.SOCIAL_PLATFORM_LINKEDIN,
    cs.SOCIAL_PLATFORM_INSTAGRAM,
    cs.SOCIAL_PLATFORM_FACEBOOK,
]
LIMIT = {
    cs.SOCIAL_PLATFORM_X: 280,
    cs.SOCIAL_PLATFORM_LINKEDIN: 3000,
    cs.SOCIAL_PLATFORM_INSTAGRAM: 2200,
    cs.SOCIAL_PLATFORM_FACEBOOK: 63206,
}
BRIEF = "Announcing our new guide to Ayurveda"
MATERIAL = (
    "Ayurveda is a traditional system of medicine from India. It describes three doshas: vata, pitta "
    "and kapha. Balance between the doshas is health, and daily routines keep that balance. The guide "
    "explains seasonal diets, morning routines and simple herbal teas. Each chapter ends with a short "
    "practice you can try at home. Read it at https://example.com/guides/ayurveda-for-beginners-2026 today."
)
LONG = " ".join(
    f"Our warehouse in district {n} now ships orders {n} hours faster than last year, thanks to new "
    f"loading docks and a second night shift."
    for n in range(1, 15)
)


def measured(post: cs.SocialPost) -> int:
    return weighted_length(post.text) if post.platform == cs.SOCIAL_PLATFORM_X else len(post.text)


@pytest.fixture
async def offline(tmp_path: Path) -> Content:  # type: ignore[misc]
    async with serve_content(tmp_path, mode="off", llm_down=True) as served:
        yield served


async def test_offline_posts_respect_every_platforms_limit_and_say_so(offline: Content) -> None:
    for topic in (f"{BRIEF}\n\n{MATERIAL}", LONG):
        reply = await offline.generate(topic=topic, platforms=ALL, include_hashtags=True)
        assert (reply.provider, reply.model) == ("offline", "template-extract")
        assert [p.platform for p in reply.posts] == ALL
        for post in reply.posts:
            assert post.language == "en"
            assert post.platform_limit == LIMIT[post.platform]
            assert post.character_count == len(post.text)
            assert post.platform_length == measured(post) <= post.platform_limit
            assert (post.provider, post.model) == ("offline", "template-extract")
            assert post.text.strip()


async def test_a_brief_opens_the_posts_and_the_material_follows(offline: Content) -> None:
    reply = await offline.generate(topic=f"{BRIEF}\n\n{MATERIAL}", platforms=ALL)
    for post in reply.posts:
        assert post.text.startswith(BRIEF + ".")
    linkedin = reply.posts[1].text
    following = linkedin.removeprefix(BRIEF + ".").strip()
    assert following and following in " ".join(MATERIAL.split())  # sentences of the material


async def test_x_is_counted_as_x_counts_links_emoji_and_cjk(offline: Content) -> None:
    link = "https://example.com/news/warehouse-opening-ceremony-in-osaka-2026/photos/all"
    topic = f"新しい倉庫は三月に完成しました 🎉🎉 {link}"
    reply = await offline.generate(
        topic=topic, platforms=[cs.SOCIAL_PLATFORM_X], languages=["ja"], max_length=60
    )
    post = reply.posts[0]
    # Code points: 15 CJK + 2 spaces + 2 emoji + the link's 76 + the full stop = 96 > 60; as X
    # counts them: 30 + 2 + 4 + 23 + 1 = 60.
    assert len(post.text) == 96
    assert post.platform_length == weighted_length(post.text) == 60
    assert link in post.text  # a link is never cut, and counts 23 whatever its length
    cjk = "新しい倉庫は三月に完成しました。" * 30
    reply = await offline.generate(topic=cjk, platforms=[cs.SOCIAL_PLATFORM_X], languages=["ja"])
    post = reply.posts[0]
    assert weighted_length(post.text) <= 280 and len(post.text) <= 141  # CJK weighs two
    assert post.text.startswith("新しい倉庫")


async def test_hashtags_only_when_asked_and_instagram_gets_them(offline: Content) -> None:
    topic = f"{BRIEF}\n\n{MATERIAL}"
    plain = await offline.generate(topic=topic, platforms=ALL)
    for post in plain.posts:
        assert "#" not in post.text and not post.hashtags
    tagged = await offline.generate(topic=topic, platforms=ALL, include_hashtags=True)
    for post in tagged.posts:
        assert post.hashtags, post
        assert all(tag.startswith("#") and tag in post.text for tag in post.hashtags)
        rules = LIMITS[list(Platform)[post.platform - 1]]
        assert len(post.hashtags) <= rules.max_hashtags
    instagram = tagged.posts[2]
    assert len(instagram.hashtags) > len(tagged.posts[0].hashtags)  # captions carry more than X


async def test_posts_come_by_platform_as_asked_then_language_as_asked(offline: Content) -> None:
    reply = await offline.generate(
        topic=BRIEF,
        platforms=[cs.SOCIAL_PLATFORM_FACEBOOK, cs.SOCIAL_PLATFORM_X],
        languages=["en-GB", "en", "en-US"],
    )
    assert [(p.platform, p.language) for p in reply.posts] == [
        (cs.SOCIAL_PLATFORM_FACEBOOK, "en-GB"),
        (cs.SOCIAL_PLATFORM_FACEBOOK, "en"),
        (cs.SOCIAL_PLATFORM_FACEBOOK, "en-US"),
        (cs.SOCIAL_PLATFORM_X, "en-GB"),
        (cs.SOCIAL_PLATFORM_X, "en"),
        (cs.SOCIAL_PLATFORM_X, "en-US"),
    ]


async def test_max_length_caps_every_post_below_its_platforms_limit(offline: Content) -> None:
    reply = await offline.generate(
        topic=f"{BRIEF}\n\n{MATERIAL}", platforms=ALL, include_hashtags=True, max_length=90
    )
    for post in reply.posts:
        assert post.platform_length == measured(post) <= 90
        assert post.platform_limit == LIMIT[post.platform]
    assert reply.posts[1].text.startswith(BRIEF)


async def test_the_tone_picks_the_templates_voice(offline: Content) -> None:
    professional = await offline.generate(topic=BRIEF, platforms=[cs.SOCIAL_PLATFORM_LINKEDIN])
    casual = await offline.generate(topic=BRIEF, platforms=[cs.SOCIAL_PLATFORM_LINKEDIN], tone=cs.TONE_CASUAL)
    enthusiastic = await offline.generate(
        topic=BRIEF, platforms=[cs.SOCIAL_PLATFORM_LINKEDIN], tone=cs.TONE_ENTHUSIASTIC
    )
    assert professional.posts[0].text == BRIEF + "."
    assert casual.posts[0].text == BRIEF + ".\n\nTake a look and tell us what you think."
    assert enthusiastic.posts[0].text == BRIEF + "!\n\nDon't miss it!"


async def test_offline_writes_only_the_topics_own_language(offline: Content) -> None:
    japanese = "新しい倉庫は三月に完成しました。四台のトラックが同時に荷物を積めます。"
    reply = await offline.generate(topic=japanese, platforms=[cs.SOCIAL_PLATFORM_X], languages=["ja-JP"])
    assert reply.posts[0].language == "ja-JP" and "新しい倉庫" in reply.posts[0].text
    for topic, languages in ((BRIEF, ["en", "hi-IN"]), (japanese, [])):
        err = await refused(
            offline.generate(topic=topic, platforms=[cs.SOCIAL_PLATFORM_X], languages=languages)
        )
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert reason(err) == "LANGUAGE_NEEDS_MODEL"
        assert "needs the language model" in (err.details() or "")


async def test_bad_input_is_invalid_argument_with_field_violations(offline: Content) -> None:
    cases: list[tuple[dict[str, object], tuple[str, str]]] = [
        ({"topic": "   "}, ("topic", "REQUIRED")),
        ({"platforms": [cs.SOCIAL_PLATFORM_X, cs.SOCIAL_PLATFORM_X]}, ("platforms[1]", "DUPLICATE")),
        ({"languages": ["en", "hi", "EN"]}, ("languages[2]", "DUPLICATE")),
        ({"max_length": 29}, ("max_length", "TOO_SHORT")),
        ({"platforms": [cs.SOCIAL_PLATFORM_UNSPECIFIED]}, ("platforms[0]", "INVALID")),
    ]
    for fields, expected in cases:
        request = {"topic": BRIEF, "platforms": [cs.SOCIAL_PLATFORM_X]} | fields
        err = await refused(offline.generate(**request))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, fields
        assert expected in violations(err), (fields, violations(err))
    for fields in (
        {"topic": ""},
        {"topic": "x" * 2001},
        {"platforms": []},
        {"languages": ["english!"]},
        {"languages": ["en", "hi", "ta", "te", "bn", "mr"]},
        {"max_length": -1},
        {"max_length": 63207},
        {"tone": 99},
    ):
        request = {"topic": BRIEF, "platforms": [cs.SOCIAL_PLATFORM_X]} | fields
        err = await refused(offline.generate(**request))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, fields
        assert violations(err), fields
    assert (await offline.generate(topic=BRIEF, platforms=ALL, max_length=30)).posts


async def test_a_role_without_the_permission_is_refused(offline: Content) -> None:
    err = await refused(offline.generate(SUPPORT, topic=BRIEF, platforms=ALL))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_auto_writes_offline_and_says_so_when_llm_has_no_model_or_is_down(tmp_path: Path) -> None:
    async with serve_content(tmp_path / "unkeyed") as unkeyed:
        reply = await unkeyed.generate(topic=BRIEF, platforms=ALL)
        assert (reply.provider, reply.model) == ("offline", "template-extract")
        assert unkeyed.llm_auth.calls  # it asked llm for its models
    async with serve_content(tmp_path / "down", llm_down=True) as down:
        reply = await down.generate(topic=BRIEF, platforms=ALL)
        assert (reply.provider, reply.model) == ("offline", "template-extract")
        err = await refused(down.generate(topic=BRIEF, platforms=ALL, languages=["hi"]))
        assert err.code() == grpc.StatusCode.UNAVAILABLE  # the model was needed, and is unreachable


async def test_required_never_writes_offline(tmp_path: Path) -> None:
    async with serve_content(tmp_path / "unkeyed", mode="required") as unkeyed:
        err = await refused(unkeyed.generate(topic=BRIEF, platforms=ALL))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert reason(err) == "MODEL_NOT_CONFIGURED"
    async with serve_content(tmp_path / "down", mode="required", llm_down=True) as down:
        err = await refused(down.generate(topic=BRIEF, platforms=ALL))
        assert err.code() == grpc.StatusCode.UNAVAILABLE
