"""X's weighted length (twitter-text v3) against known cases, and its cost on hostile input.

The expected values were checked against the ``twitter-text-parser`` 3.0.0 port of twitter-text
(its conformance-tested ``parse_tweet``): every case below agrees with it.
"""

from __future__ import annotations

import pytest

from bhiv_core.text.x_length import url_spans, weighted_length

KNOWN = [
    ("english text 日本語 😷 https://example.com", 46),  # twitter-text's own documented example
    ("a" * 280, 280),
    ("日" * 140, 280),  # CJK weighs 2
    ("https://www.example.com/foo/bar?x=1", 23),  # any URL weighs 23
    ("https://example.com/" + "a" * 200, 23),
    ("example.com", 23),  # no protocol, known top-level domain
    ("bhiv.dev", 23),
    ("foo.co/x", 23),
    ("file.py", 23),  # .py is Paraguay: X links it too
    ("Mr.Smith", 8),  # "smith" is no top-level domain
    ("e.g.", 4),
    ("example.com.", 24),  # the full stop is not part of the link
    ("(see example.com).", 30),
    ("x(example.com)", 26),
    ("example.com,foo", 27),
    ("@example.com", 12),  # a mention-like prefix: not a link
    ("$example.com", 12),
    ("a_b.com", 7),
    ("-ab.com", 7),
    ("http://localhost/x", 18),  # no top-level domain: not a link
    ("https://例え.jp", 23),  # internationalised host with a protocol
    ("例え.jp", 7),  # ... but not without one
    ("👍🏻", 2),  # skin-tone sequence: one emoji
    ("👨‍👩‍👧‍👦", 2),  # ZWJ family: one emoji
    ("🇮🇳", 2),  # flag: two regional indicators
    ("#️⃣", 2),  # keycap
    ("©", 2),  # an emoji in the weight-1 range
    ("⭐", 2),
    ("café", 4),
    ("cafe\u0301", 4),  # NFC-normalised first
    ("a\r\nb", 3),  # CRLF counts once
    ("\u2014\u2019", 2),  # general punctuation weighs 1
]


@pytest.mark.parametrize(("text", "expected"), KNOWN)
def test_weighted_length_matches_twitter_text(text: str, expected: int) -> None:
    assert weighted_length(text) == expected


def test_url_spans_exclude_trailing_punctuation() -> None:
    text = "Read https://bhiv.dev/docs?x=1, then example.org!"
    assert [text[s:e] for s, e in url_spans(text)] == ["https://bhiv.dev/docs?x=1", "example.org"]


def test_a_dotted_token_that_makes_twitter_text_backtrack_is_counted_in_one_pass() -> None:
    # twitter-text's URL pattern takes ~3 s on 1,600 characters of this and grows quadratically;
    # 200,000 characters would take hours there. Here it is one scan (the test's timeout guards it).
    assert weighted_length("a." * 100_000) == 200_000
    assert weighted_length("a." * 50_000 + "com") == 23  # one long host name: one link
