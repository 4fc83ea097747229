"""An honest offline rewrite: a deterministic clean-up that says exactly what it changed.

Without a language model the text is not reworded. :func:`clean_up` fixes only mechanical faults,
each counted in :attr:`Rewrite.changes`: runs of spaces and tabs, space before punctuation, a
missing space after a sentence or clause mark, repeated punctuation (an ellipsis is kept), a word
written twice in a row ("the the"), a lower-case sentence start, a lone lower-case "i", and more
than one blank line. The two word-level fixes (repeated words, lone "i") apply only to text that
reads as English (a fifth of its words English function words): "nous nous" is French grammar and
"i" an Italian article. Applying it twice changes nothing more (it is idempotent). Linear.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from bhiv_core.text.sentences import STOPWORDS, words
from bhiv_core.text.sentences import ends_abbreviation as _ends_abbreviation

__all__ = ["Rewrite", "clean_up"]


@dataclass(frozen=True, slots=True)
class Rewrite:
    """The cleaned text and what was changed: ``{description: count}`` in the order applied."""

    text: str
    changes: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        """The changes in words, such as ``removed 1 repeated word; capitalised 2 sentence starts``."""
        if not self.changes:
            return "no mechanical fault found; the text is unchanged"
        return "; ".join(f"{what.format(n=n, s='' if n == 1 else 's')}" for what, n in self.changes.items())


# (pattern, replacement, description). Descriptions take {n} and {s} (plural ending).
_RULES: tuple[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str], str], ...] = (
    (re.compile(r"\r\n?"), "\n", "normalised {n} line ending{s}"),
    (re.compile(r"[ \t]+$", re.MULTILINE), "", "removed trailing spaces from {n} line{s}"),
    (re.compile(r"(?<=\S)[ \t]{2,}|\t+"), " ", "collapsed {n} run{s} of spaces"),
    (re.compile(r"\n{3,}"), "\n\n", "removed {n} extra blank line{s}"),
    (re.compile(r"[ \t]+(?=[,.;:!?](?:\s|$))"), "", "removed {n} space{s} before punctuation"),
    (re.compile(r"([!?,;])\1+"), r"\1", "removed {n} repeated punctuation mark{s}"),
    (re.compile(r"(?<!\.)\.\.(?!\.)"), ".", "removed {n} doubled full stop{s}"),
    (
        re.compile(r"(?<=\w)[ \t]+([,;:!?]|\.(?=[a-z]))(?=[^\W\d_])"),
        r"\1 ",
        "moved {n} punctuation mark{s} next to the word before",
    ),
    (re.compile(r"([,;:!?])(?=[^\W\d_])"), r"\1 ", "added {n} space{s} after punctuation"),
    (re.compile(r"(?<=[a-z]{2})\.(?=[A-Z][a-z])"), ". ", "added {n} space{s} after a full stop"),
)
_REPEATED_WORD = re.compile(r"\b([^\W\d_]+)(\s+)\1\b", re.IGNORECASE)
_KEPT_REPEATS = frozenset({"had", "that", "is", "bye", "very", "so", "ha", "no", "yes", "knock"})
_SENTENCE_START = re.compile(r"(?:^|(?<=[.!?]\s)|(?<=[.!?]\s\s)|(?<=\n))([ \t]*)([a-z])", re.MULTILINE)
_LONE_I = re.compile(r"\bi\b(?=\s|'|’|[,.;:!?]|$)")


def _reads_as_english(text: str) -> bool:
    found = words(text[:20_000])
    return bool(found) and sum(len(w) > 1 and w.lower() in STOPWORDS for w in found) >= len(found) / 5


def clean_up(text: str) -> Rewrite:
    """The mechanically cleaned ``text`` and the list of changes made."""
    changes: dict[str, int] = {}
    english = _reads_as_english(text)
    for pattern, replacement, description in _RULES:
        text, n = pattern.subn(replacement, text)
        if n:
            changes[description] = changes.get(description, 0) + n

    removed = 0

    def once(match: re.Match[str]) -> str:
        nonlocal removed
        first, second = match.group(1), match.group(0)[-len(match.group(1)) :]
        if first.lower() in _KEPT_REPEATS or first.lower() != second.lower():
            return match.group(0)
        removed += 1
        return first

    for _ in range(4 if english else 0):  # "the the the" needs two passes
        before = removed
        text = _REPEATED_WORD.sub(once, text)
        if removed == before:
            break
    if removed:
        changes["removed {n} repeated word{s}"] = removed

    capitalised = 0

    def capital(match: re.Match[str]) -> str:
        nonlocal capitalised
        mark = match.start() - 1
        while mark >= 0 and text[mark].isspace():
            mark -= 1
        if mark >= 0 and text[mark] == "." and _ends_abbreviation(text, mark):
            return match.group(0)
        capitalised += 1
        return match.group(1) + match.group(2).upper()

    text = _SENTENCE_START.sub(capital, text)
    if capitalised:
        changes["capitalised {n} sentence start{s}"] = capitalised
    text, n = _LONE_I.subn("I", text) if english else (text, 0)
    if n:
        changes['wrote "I" for {n} lone "i"'] = n
    stripped = text.strip()
    if stripped != text:
        changes["trimmed the ends"] = 1
    return Rewrite(stripped, changes)
