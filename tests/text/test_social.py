"""Social posts: drafts within each platform's limits, and fitting that never cuts inside a token."""

from __future__ import annotations

import pytest

from bhiv_core.text.social import LIMITS, Platform, draft, fit, hashtag, length, violations
from bhiv_core.text.x_length import weighted_length

ARTICLE = (
    "The warehouse moved to a new building in March. The move took three weeks and every shelf was "
    "relabelled. Orders shipped late during the first week, but the team caught up by the end of the "
    "month. The new building has a loading dock for four trucks at once, twice as many as before. "
    "Staff now take a shuttle from the station, which runs every twenty minutes in the morning. "
    "Next year the company plans to add a second floor for returns and repairs."
)


@pytest.mark.parametrize("platform", list(Platform))
def test_drafts_respect_each_platform(platform: Platform) -> None:
    post = draft(ARTICLE, platform, link="https://bhiv.dev/news/warehouse")
    assert not violations(post.text, platform)
    assert post.length == length(post.text, platform) <= LIMITS[platform].max_length
    assert post.text.startswith("The warehouse moved to a new building in March.")
    assert "https://bhiv.dev/news/warehouse" in post.text
    assert 1 <= len(post.hashtags) <= LIMITS[platform].hashtags
    assert all(tag[1:].isalnum() for tag in post.hashtags)


def test_longer_platforms_carry_more_of_the_content() -> None:
    x = draft(ARTICLE, Platform.X)
    linkedin = draft(ARTICLE, Platform.LINKEDIN)
    assert linkedin.text.count(".") > x.text.count(".")
    assert len(draft(ARTICLE, Platform.INSTAGRAM).hashtags) > len(x.hashtags)


def test_hashtags_are_camel_case_phrases() -> None:
    assert hashtag("north dock") == "#NorthDock"
    assert hashtag("patanjali's yoga sutras") == "#PatanjaliSYogaSutras"
    assert hashtag("2026") is None
    assert hashtag("...") is None


def tokens(text: str) -> list[str]:
    return text.replace("…", " ").split()


@pytest.mark.parametrize(
    "text",
    [
        "word " * 120,
        "日本語の文章 " * 60 + "https://example.com/a/very/long/path/that/is/one/link",
        "emoji 👨‍👩‍👧‍👦 family " * 40,
        "Read https://example.com/" + "x" * 400 + " now " + "please " * 80,
    ],
)
def test_fit_cuts_between_tokens_within_x_limit(text: str) -> None:
    fitted = fit(text, Platform.X)
    assert weighted_length(fitted) <= 280
    assert fitted.endswith("…")
    original = text.split()
    kept = tokens(fitted)
    assert kept == original[: len(kept)]  # whole words, links and emoji sequences only
    # and not needlessly short: one more token would not fit.
    assert weighted_length(" ".join(original[: len(kept) + 1]) + "…") > 280


def test_fit_drops_hashtags_before_words() -> None:
    body = "A" * 260  # 266 with #One, 278 with #Three, 284 with #Four
    fitted = fit(body + "\n\n#One #Two #Three #Four", Platform.X)
    assert fitted == body + "\n\n#One #Two #Three"
    assert weighted_length(fitted) <= 280


def test_instagram_keeps_at_most_thirty_hashtags() -> None:
    tags = " ".join(f"#tag{i}" for i in range(40))
    fitted = fit("Sunrise over the harbour.\n\n" + tags, Platform.INSTAGRAM)
    assert fitted.count("#") == 30 and "#tag29" in fitted and "#tag30" not in fitted
    assert violations("x " + tags, Platform.INSTAGRAM) == ["40 hashtags is over Instagram's 30"]


def test_a_text_within_limits_is_left_alone() -> None:
    text = "Short and sweet. #Fine"
    assert fit(text, Platform.X) == text
    assert violations(text, Platform.X) == []
    assert violations("", Platform.X) == ["the post is empty"]


def test_a_single_word_too_long_for_x_is_cut_between_characters() -> None:
    fitted = fit("x" * 400, Platform.X)
    assert fitted == "x" * 278 + "…"  # the ellipsis weighs 2 at X (U+2026 is outside the light ranges)
    family = "👨‍👩‍👧‍👦"
    fitted = fit(family * 200, Platform.X)
    assert weighted_length(fitted) <= 280
    assert fitted[:-1] == family * (len(fitted[:-1]) // len(family))  # whole sequences only
    for count in range(130, 150):  # wherever the limit falls, a sequence is never split
        text = "ab" * count + family * 10
        fitted = fit(text, Platform.X)
        assert fitted == text or fitted[:-1].endswith((family, "b"))
