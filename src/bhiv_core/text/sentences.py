"""Sentences and words of a text, in one linear pass each.

A sentence is a span ``text[start:end]`` (trimmed), so a summary made of sentences quotes the text
verbatim. Boundaries are ``.``, ``!``, ``?`` (and their CJK forms) followed by white space and not
closing a known abbreviation or an initial, blank lines, and the line break after a heading or
before a list item. Words are runs of letters (with inner apostrophes or hyphens) or numbers.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["STOPWORDS", "Sentence", "content_words", "ends_abbreviation", "sentences", "words"]


@dataclass(frozen=True, slots=True)
class Sentence:
    """A sentence: the span ``text[start:end]`` of the text it was found in."""

    start: int
    end: int
    text: str


_ABBREVIATIONS = frozenset(
    [
        "mr",
        "mrs",
        "ms",
        "dr",
        "prof",
        "sr",
        "jr",
        "st",
        "vs",
        "etc",
        "e.g",
        "i.e",
        "eg",
        "ie",
        "no",
        "fig",
        "al",
        "approx",
        "dept",
        "est",
        "inc",
        "ltd",
        "co",
        "corp",
        "jan",
        "feb",
        "mar",
        "apr",
        "jun",
        "jul",
        "aug",
        "sep",
        "sept",
        "oct",
        "nov",
        "dec",
        "mt",
        "ft",
        "cf",
        "ca",
    ]
)

# A terminator (with closing quotes/brackets) before white space or the end; a blank line; a line
# break next to a heading or list item; CJK terminators need no following space.
_BOUNDARY = re.compile(
    r"[.!?…]+[\"'”’)\]]*(?=\s|$)"
    r"|[。！？]+[」』”’)]*"
    r"|\n[ \t]*\n\s*"
    r"|\n(?=[ \t]*(?:[-*•]|\d+[.)])[ \t])"
    r"|\n(?=[ \t]*#)"
)
_HEADING_LINE = re.compile(r"^[ \t]*#{1,6}[ \t]+[^\n]*(?:\n|$)", re.MULTILINE)
_WORD = re.compile(r"[^\W\d_]+(?:['’\-][^\W\d_]+)*|\d+(?:[.,]\d+)*")
_LETTER = re.compile(r"[^\W\d_]")

STOPWORDS = frozenset(
    """
    a about above after again against all also am an and any are aren't as at be because been before
    being below between both but by can can't cannot could couldn't did didn't do does doesn't doing
    don't down during each either else ever every few for from further had hadn't has hasn't have
    haven't having he he'd he'll he's her here here's hers herself him himself his how how's however
    i i'd i'll i'm i've if in into is isn't it it's its itself just let's like made make many may me
    might more most much must mustn't my myself need needs new no nor not now of off often on once
    one only or other ought our ours ourselves out over own per put rather really same say says she
    she'd she'll she's should shouldn't since so some such than that that's the their theirs them
    themselves then there there's these they they'd they'll they're they've this those though
    through thus to too under until up upon us use used using very via was wasn't we we'd we'll
    we're we've well were weren't what what's when when's where where's whether which while who
    who's whom whose why why's will with within without won't would wouldn't yet you you'd you'll
    you're you've your yours yourself yourselves
    """.split()
)
"""English function words, never keywords nor hashtags."""


def ends_abbreviation(text: str, dot: int) -> bool:
    """Whether the ``.`` at ``dot`` closes an abbreviation or an initial (not a sentence)."""
    start = dot
    while start > 0 and (text[start - 1].isalpha() or text[start - 1] == "."):
        start -= 1
        if dot - start > 6:
            return False
    word = text[start:dot].lower()
    if not word:
        return False
    if word in _ABBREVIATIONS:
        return True
    # A single capital letter ("J. Smith") is an initial.
    return len(word) == 1 and text[start].isupper()


def _spans(text: str) -> Iterator[tuple[int, int]]:
    position = 0
    for match in _BOUNDARY.finditer(text):
        found = match.group()
        if found.startswith(".") and len(found.rstrip("\"'”’)]")) == 1:
            if ends_abbreviation(text, match.start()):
                continue
            following = text[match.end() : match.end() + 3].lstrip()
            if following[:1].islower():
                continue
        end = match.end() if found.strip() else match.start()
        if end > position:
            yield position, end
        position = match.end()
    if position < len(text):
        yield position, len(text)


def sentences(text: str, *, limit: int | None = None) -> list[Sentence]:
    """The sentences of ``text`` (Markdown heading lines left out), in order; at most ``limit``."""
    found: list[Sentence] = []
    headings = {m.start(): m.end() for m in _HEADING_LINE.finditer(text)}
    for start, end in _spans(text):
        while start < end and text[start].isspace():
            start += 1
        if start in headings:
            start = min(end, headings[start])
            while start < end and text[start].isspace():
                start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if end > start and _LETTER.search(text, start, end):
            found.append(Sentence(start, end, text[start:end]))
            if limit is not None and len(found) >= limit:
                break
    return found


def words(text: str) -> list[str]:
    """The words and numbers of ``text``, as written."""
    return _WORD.findall(text)


def content_words(text: str) -> list[str]:
    """The lower-cased words of ``text`` that are not stop words nor single letters."""
    return [
        w
        for w in (w.lower().replace("’", "'") for w in _WORD.findall(text))
        if w not in STOPWORDS and len(w) > 1
    ]
