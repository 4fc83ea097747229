"""GenerateSocialContent through the llm service: integrations → llm over the stubs → the real groq SDK.

Llm is keyed to the fake Groq of the llm tests (an OpenAI-compatible server on loopback, answering
what the test scripts); what the model writes is checked against the limits like any text.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from bhiv.integrations.v1 import content_service_pb2 as cs
from bhiv_core.text.x_length import weighted_length
from tests.services.crm.conftest import reason, refused
from tests.services.integrations.content_served import SALLY_TOKEN, TRACE_ID, serve_content
from tests.services.llm.conftest import FakeGroq, fake_groq  # noqa: F401 - the fixture

TOPIC = "Our warehouse moved to a bigger building with a dock for four trucks"
TOO_LONG = "Our warehouse story " + "continues " * 40 + "with a dock for four trucks at once."
LINKEDIN = "We moved our warehouse. Four trucks dock at once now. #Logistics #Warehouse"


async def test_the_models_posts_are_fitted_and_a_missing_one_drafted_offline(
    tmp_path: Path,
    fake_groq: FakeGroq,  # noqa: F811 - the fixture
) -> None:
    fake_groq.replies.append(["[X]\n", f"{TOO_LONG}\n\n", f"[LinkedIn]\n{LINKEDIN}\n"])
    async with serve_content(tmp_path, groq=fake_groq) as content:
        reply = await content.generate(
            topic=TOPIC,
            platforms=[cs.SOCIAL_PLATFORM_X, cs.SOCIAL_PLATFORM_LINKEDIN, cs.SOCIAL_PLATFORM_FACEBOOK],
            tone=cs.TONE_CASUAL,
            include_hashtags=True,
        )
        seen = content.llm_auth.completions()
    assert (reply.provider, reply.model) == ("groq", "llama-3.1-8b-instant")
    x_post, linkedin, facebook = reply.posts
    # Too long for X: cut between words with an ellipsis, then given hashtags from the topic.
    assert x_post.text.startswith("Our warehouse story continues") and "…" in x_post.text
    assert x_post.platform_length == weighted_length(x_post.text) <= 280
    assert x_post.hashtags and all(tag in x_post.text for tag in x_post.hashtags)
    assert (x_post.provider, x_post.model) == ("groq", "llama-3.1-8b-instant")
    assert linkedin.text == LINKEDIN and list(linkedin.hashtags) == ["#Logistics", "#Warehouse"]
    # The model left Facebook out: drafted offline, and the post says so.
    assert (facebook.provider, facebook.model) == ("offline", "template-extract")
    assert facebook.text.startswith(TOPIC + ".")
    # The caller's token and trace reached llm; the prompt asked for the tone and the language.
    assert [h["authorization"] for h in seen] == [f"Bearer {SALLY_TOKEN}"]
    assert TRACE_ID in seen[0]["traceparent"]
    system = fake_groq.requests[-1]["messages"][0]["content"]
    assert "casual tone" in system and "in English (BCP-47 `en`)" in system
    assert "X 280, LinkedIn 3000, Facebook 63206" in system


async def test_hashtags_the_model_wrote_are_removed_when_not_asked(
    tmp_path: Path,
    fake_groq: FakeGroq,  # noqa: F811 - the fixture
) -> None:
    fake_groq.replies.append([f"[LinkedIn]\n{LINKEDIN}\n\n[Instagram]\nA #bigger warehouse.\n#Trucks #Dock"])
    async with serve_content(tmp_path, groq=fake_groq) as content:
        reply = await content.generate(
            topic=TOPIC, platforms=[cs.SOCIAL_PLATFORM_LINKEDIN, cs.SOCIAL_PLATFORM_INSTAGRAM], max_length=60
        )
    linkedin, instagram = reply.posts
    assert linkedin.text == "We moved our warehouse. Four trucks dock at once now."
    assert instagram.text == "A bigger warehouse."
    assert not linkedin.hashtags and not instagram.hashtags
    assert "Use no hashtags." in fake_groq.requests[-1]["messages"][0]["content"]
    assert "LinkedIn 60, Instagram 60" in fake_groq.requests[-1]["messages"][0]["content"]


async def test_the_model_writes_each_language_asked(
    tmp_path: Path,
    fake_groq: FakeGroq,  # noqa: F811 - the fixture
) -> None:
    answers = ["नया गोदाम अब चार ट्रकों को एक साथ लोड करता है।", "Our bigger warehouse."]
    fake_groq.replies += [[f"[X]\n{answer}"] for answer in answers]
    async with serve_content(tmp_path, groq=fake_groq) as content:
        reply = await content.generate(
            topic=TOPIC, platforms=[cs.SOCIAL_PLATFORM_X], languages=["hi-IN", "en"]
        )
    assert [(p.language, p.provider) for p in reply.posts] == [("hi-IN", "groq"), ("en", "groq")]
    # One completion per language; the fake answered them in the order they arrived.
    asked = [r["messages"][0]["content"].split("(BCP-47 `")[1].split("`")[0] for r in fake_groq.requests]
    assert sorted(asked) == ["en", "hi-IN"]
    by_language = {p.language: p.text for p in reply.posts}
    assert [by_language[language] for language in asked] == answers


async def test_a_spent_quota_is_resource_exhausted_when_required_and_offline_when_auto(
    tmp_path: Path,
    fake_groq: FakeGroq,  # noqa: F811 - the fixture
) -> None:
    fake_groq.script[:] = ["429"]  # no retries: llm falls back (rate limited) at once
    async with serve_content(tmp_path / "required", mode="required", groq=fake_groq) as content:
        err = await refused(content.generate(topic=TOPIC, platforms=[cs.SOCIAL_PLATFORM_X]))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    fake_groq.script[:] = ["429"]
    async with serve_content(tmp_path / "auto", groq=fake_groq) as content:
        reply = await content.generate(topic=TOPIC, platforms=[cs.SOCIAL_PLATFORM_X])
    assert (reply.provider, reply.model) == ("offline", "template-extract")
    assert reply.posts[0].text == TOPIC + "."
    fake_groq.script[:] = ["429"]
    async with serve_content(tmp_path / "hindi", groq=fake_groq) as content:
        err = await refused(content.generate(topic=TOPIC, platforms=[cs.SOCIAL_PLATFORM_X], languages=["hi"]))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # only the model could write Hindi
    assert reason(err) == "RESOURCE_EXHAUSTED"


async def test_a_post_the_model_left_out_in_a_language_offline_cannot_write_is_unavailable(
    tmp_path: Path,
    fake_groq: FakeGroq,  # noqa: F811 - the fixture
) -> None:
    fake_groq.replies.append(["[LinkedIn]\nनया गोदाम।"])  # no [X] post, and the topic is English
    async with serve_content(tmp_path, groq=fake_groq) as content:
        err = await refused(
            content.generate(
                topic=TOPIC, platforms=[cs.SOCIAL_PLATFORM_X, cs.SOCIAL_PLATFORM_LINKEDIN], languages=["hi"]
            )
        )
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert reason(err) == "MODEL_INCOMPLETE"
