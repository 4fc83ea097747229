"""Social posts for X, LinkedIn, Instagram and Facebook from given content, within each platform's limits.

A library shared by the orchestrator's content agent and the integrations service's
``GenerateSocialContent``. Offline, :func:`draft` builds a post by template and extraction: the
content's most central sentence (:mod:`bhiv_core.text.summarize`) as the hook, more central
sentences where the platform has room, and hashtags from its key phrases
(:mod:`bhiv_core.text.keywords`). :func:`fit` makes any text (an LLM's too) respect a platform's
limit, cutting only between words (never inside a word, a URL or an emoji sequence) and dropping
hashtags first. X's length is its weighted length (:mod:`bhiv_core.text.x_length`); the others
count code points.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bhiv_core.text.keywords import keywords
from bhiv_core.text.sentences import content_words
from bhiv_core.text.summarize import summarize
from bhiv_core.text.x_length import weighted_length

__all__ = [
    "LIMITS",
    "Limits",
    "Platform",
    "Post",
    "draft",
    "fit",
    "hashtag",
    "hashtags_in",
    "length",
    "sections",
    "subjects_of",
    "suggest_hashtags",
    "violations",
]


class Platform(enum.StrEnum):
    """The platforms a post can be drafted for."""

    X = "x"
    LINKEDIN = "linkedin"
    INSTAGRAM = "instagram"
    FACEBOOK = "facebook"


@dataclass(frozen=True, slots=True)
class Limits:
    """A platform's rules: the hard length limit, hashtags allowed, and the drafted shape."""

    name: str
    max_length: int
    max_hashtags: int
    hashtags: int
    sentences: int


LIMITS = {
    Platform.X: Limits("X", 280, 10, 2, 1),
    Platform.LINKEDIN: Limits("LinkedIn", 3000, 30, 4, 3),
    Platform.INSTAGRAM: Limits("Instagram", 2200, 30, 8, 2),
    Platform.FACEBOOK: Limits("Facebook", 63206, 30, 2, 3),
}
"""X: 280 weighted; LinkedIn posts 3,000 characters; Instagram captions 2,200 and at most 30
hashtags; Facebook posts 63,206. ``hashtags`` and ``sentences`` shape the offline draft."""

_HASHTAG = re.compile(r"(?<![\w#])#[^\W_][\w]*")
_ELLIPSIS = "…"


@dataclass(frozen=True, slots=True)
class Post:
    """A drafted post: its platform, text, length as the platform counts it, and limit."""

    platform: Platform
    text: str
    length: int
    limit: int
    hashtags: tuple[str, ...]


def length(text: str, platform: Platform) -> int:
    """The length of ``text`` as ``platform`` counts it."""
    return weighted_length(text) if platform is Platform.X else len(text)


def _limit(platform: Platform, limit: int | None) -> int:
    """The platform's limit, or ``limit`` when that is set and lower."""
    most = LIMITS[platform].max_length
    return min(most, limit) if limit else most


def hashtags_in(text: str) -> list[str]:
    """The hashtags of ``text`` (``#Word``), in order."""
    return _HASHTAG.findall(text)


# Blanks within the line only: ``\s*`` would run across blank lines from every line start (quadratic).
_SECTION = re.compile(r"^[ \t]*\[?(X|Twitter|LinkedIn|Instagram|Facebook)\]?[ \t]*:?[ \t\r]*$", re.I | re.M)
_SECTION_NAMES = {
    "x": Platform.X,
    "twitter": Platform.X,
    "linkedin": Platform.LINKEDIN,
    "instagram": Platform.INSTAGRAM,
    "facebook": Platform.FACEBOOK,
}


def sections(text: str) -> dict[Platform, str]:
    """A model's posts by platform: each under a line holding only its name, such as ``[LinkedIn]``."""
    found: dict[Platform, str] = {}
    headers = list(_SECTION.finditer(text))
    for i, header in enumerate(headers):
        end = headers[i + 1].start() if i + 1 < len(headers) else len(text)
        body = text[header.end() : end].strip()
        if body:
            found.setdefault(_SECTION_NAMES[header.group(1).lower()], body)
    return found


def violations(text: str, platform: Platform, *, limit: int | None = None) -> list[str]:
    """What breaks the platform's rules in ``text`` (empty when it may be posted).

    ``limit`` is a lower length limit than the platform's (a caller's ``max_length``).
    """
    rules = LIMITS[platform]
    most = _limit(platform, limit)
    found = []
    if not text.strip():
        found.append("the post is empty")
    size = length(text, platform)
    if size > most:
        found.append(f"{size} characters is over {rules.name}'s {most}")
    tags = _HASHTAG.findall(text)
    if len(tags) > rules.max_hashtags:
        found.append(f"{len(tags)} hashtags is over {rules.name}'s {rules.max_hashtags}")
    return found


def hashtag(phrase: str) -> str | None:
    """``north dock`` → ``#NorthDock``; None when no letters remain."""
    parts = re.findall(r"[^\W_]+", phrase)
    if not parts:
        return None
    tag = "".join(p[:1].upper() + p[1:] for p in parts)
    return None if tag.isdigit() else "#" + tag[:40]


def _joins(ch: str) -> bool:
    """Whether ``ch`` belongs to the character before it (a combining mark, ZWJ, selector, skin tone)."""
    cp = ord(ch)
    return (
        bool(unicodedata.combining(ch)) or cp in (0x200D, 0xFE0F, 0xFE0E, 0x20E3) or 0x1F3FB <= cp <= 0x1F3FF
    )


def _splittable(text: str, i: int) -> bool:
    """Whether ``text`` may be cut before index ``i`` without splitting a character sequence."""
    before = ord(text[i - 1])
    return not _joins(text[i]) and before != 0x200D and not 0x1F1E6 <= before <= 0x1F1FF


def _cut(text: str, fits: Callable[[str], bool]) -> str:
    """The longest prefix of ``text`` ending at a word boundary that ``fits`` with an ellipsis.

    A first word too long to fit at all is cut between characters, never before a combining mark,
    a joiner or a modifier (so never inside an emoji sequence).
    """
    if fits(text):
        return text
    cuts = [m.start() for m in re.finditer(r"\s+", text)]
    if not cuts or not fits(text[: cuts[0]].rstrip(" ,;:-–—") + _ELLIPSIS):
        cuts = [i for i in range(1, len(text)) if _splittable(text, i)]
    low, high, best = 0, len(cuts) - 1, ""
    while low <= high:  # binary search over word boundaries: O(log n) length checks
        middle = (low + high) // 2
        candidate = text[: cuts[middle]].rstrip(" ,;:-–—") + _ELLIPSIS
        if fits(candidate):
            best, low = candidate, middle + 1
        else:
            high = middle - 1
    return best


def fit(text: str, platform: Platform, *, limit: int | None = None) -> str:
    """``text`` made to respect the platform: extra hashtags dropped, then cut between words.

    Trailing hashtags are dropped one by one before any word of the body is; the body is cut at
    white space (so never inside a word, a link or an emoji sequence) and ends with ``…``.
    ``limit`` is a lower length limit than the platform's (a caller's ``max_length``).
    """
    rules = LIMITS[platform]
    most = _limit(platform, limit)
    text = text.strip()
    tags = _HASHTAG.findall(text)
    for extra in tags[rules.max_hashtags :][::-1]:
        at = text.rfind(extra)
        text = (text[:at] + text[at + len(extra) :]).rstrip()

    def fits(candidate: str) -> bool:
        return length(candidate, platform) <= most

    if fits(text):
        return text
    lines = text.split("\n")
    while lines and _HASHTAG.sub("", lines[-1]).strip() == "" and len(lines) > 1:
        tag_line = lines.pop()
        body = "\n".join(lines).rstrip()
        kept = tag_line.split()
        while kept:
            candidate = body + "\n\n" + " ".join(kept)
            if fits(candidate):
                return candidate
            kept.pop()
        text = body
    return _cut(text, fits)


def _hashtags(content: str, count: int, extra: Sequence[str]) -> list[str]:
    tags: list[str] = []
    for phrase in [*extra, *(k.phrase for k in keywords(content, limit=count * 2))]:
        tag = hashtag(phrase)
        if tag and tag.lower() not in (t.lower() for t in tags) and len(tag) <= 25:
            tags.append(tag)
        if len(tags) >= count:
            break
    return tags


_PROMOTIONAL = frozenset(
    {
        "announcing", "announce", "announces", "introducing", "introduce", "launch", "launching",
        "launched", "guide", "new", "latest", "release", "released", "today", "check", "read", "learn",
        "post", "share", "sharing", "excited", "proud", "happy", "our",
    }
)  # fmt: skip
"""Words of a brief that say it is an announcement, not what it is about: neither searched for nor tagged."""


def subjects_of(brief: str) -> list[str]:
    """The content words of ``brief`` that say what it is about (not "announcing", "new"), in order."""
    return [w for w in dict.fromkeys(content_words(brief)) if w not in _PROMOTIONAL]


def suggest_hashtags(content: str, count: int, extra: Sequence[str] = ()) -> list[str]:
    """Up to ``count`` hashtags: ``extra`` phrases first, then the key phrases of ``content``."""
    return _hashtags(content, count, extra)


def draft(
    content: str,
    platform: Platform,
    *,
    lead: str = "",
    hashtags: Sequence[str] = (),
    link: str = "",
    closing: str = "",
    tagged: bool = True,
    limit: int | None = None,
) -> Post:
    """An offline post for ``platform`` from ``content`` (template and extraction; deterministic).

    Args:
        content: What the post is about: a text, or a one-line brief.
        platform: Where it goes.
        lead: The opening sentence (a brief such as "Announcing our new guide"); by default the
            content's most central sentence.
        hashtags: Phrases to tag first (a campaign's own, a brief's subject), then the key phrases
            of ``content`` (of ``lead`` when there is no content).
        link: A URL to include (X counts it as 23).
        closing: A last sentence (a call to action), kept only when the post has room for it.
        tagged: False for a post with no hashtags at all.
        limit: A lower length limit than the platform's (a caller's ``max_length``).

    """
    rules = LIMITS[platform]
    most = _limit(platform, limit)
    if lead:
        hook, rest = lead.strip(), summarize(content, length=rules.sentences - 1).sentences if content else []
    else:
        chosen = summarize(content, length=rules.sentences).sentences or [content.strip()]
        hook, rest = chosen[0], chosen[1:]
    tags = _hashtags(content or lead, rules.hashtags, hashtags) if tagged else []
    if platform is Platform.X:
        body = " ".join([hook, link]).strip()
        closed = f"{body} {closing}"
    else:
        paragraphs = [hook, " ".join(rest), link]
        body = "\n\n".join(p for p in paragraphs if p)
        closed = f"{body}\n\n{closing}"
    if closing and length(closed, platform) <= most:
        body = closed
    text = f"{body}\n\n{' '.join(tags)}" if tags else body
    text = fit(text, platform, limit=limit)
    return Post(platform, text, length(text, platform), rules.max_length, tuple(_HASHTAG.findall(text)))
