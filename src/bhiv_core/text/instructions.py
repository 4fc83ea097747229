"""Separating what a request asks (the instruction) from what it is about (the payload).

``"Translate to French: Good morning"`` is the instruction ``Translate to French`` and the payload
``Good morning``; so is ``Translate "Good morning" into French`` (quoted payload) and a bare
``Translate this into French`` with the text as an attachment. The operation of the text agent is
read from the instruction's verbs; the target language of a translation from ``to``/``into``/``in``
followed by a language name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Instruction", "language_code", "split_instruction", "target_language", "text_operation"]

_LANGUAGES = {
    "english": "en", "french": "fr", "german": "de", "spanish": "es", "italian": "it",
    "portuguese": "pt", "dutch": "nl", "hindi": "hi", "sanskrit": "sa", "russian": "ru",
    "japanese": "ja", "chinese": "zh", "mandarin": "zh", "korean": "ko", "arabic": "ar",
    "bengali": "bn", "tamil": "ta", "telugu": "te", "marathi": "mr", "gujarati": "gu",
    "kannada": "kn", "malayalam": "ml", "punjabi": "pa", "urdu": "ur", "turkish": "tr",
    "polish": "pl", "swedish": "sv", "greek": "el", "hebrew": "he", "indonesian": "id",
    "vietnamese": "vi", "thai": "th", "ukrainian": "uk", "czech": "cs", "danish": "da",
    "finnish": "fi", "norwegian": "no", "romanian": "ro", "hungarian": "hu", "swahili": "sw",
    "nepali": "ne", "persian": "fa", "malay": "ms",
}  # fmt: skip

_OPERATIONS = (
    (
        "translate",
        re.compile(rf"\b(?:translat\w*|in(?:to)? (?:plain )?(?:{'|'.join(_LANGUAGES)})\b)", re.I),
    ),
    (
        "detect_language",
        re.compile(
            r"\b(?:detect|identify|recogni[sz]e|guess|determine)\w*\b.{0,20}\blanguage\b"
            r"|\b(?:what|which)\s+language\b|\blanguage\s+(?:is|of)\b",
            re.I,
        ),
    ),
    (
        "extract_keywords",
        re.compile(
            r"\bkey\s*words?\b|\bkey\s*phrases?\b|\bkeyphrases?\b|\bhashtags?\b|\btags\b|\bmain terms\b", re.I
        ),
    ),
    (
        "rewrite",
        re.compile(
            r"\b(?:re-?writ\w*|rephras\w*|paraphras\w*|proofread\w*|clean\s*up|tidy|polish|"
            r"fix|correct|improve|edit)\b",
            re.I,
        ),
    ),
)
_TARGET = re.compile(rf"\b(?:to|into|in)\s+({'|'.join(_LANGUAGES)})\b", re.I)
_QUOTED = re.compile(r"\"([^\"]{2,})\"|“([^”]{2,})”|«([^»]{2,})»|'([^']{8,})'")
# "Summarize this: ...", "Extract the keywords - ...": an instruction up to a colon or dash near the start.
_LEAD = re.compile(r"^\s*([^:?\n]{1,120}?)\s*(?::|\?|\s[-–—]\s|\n)\s*", re.S)
_FILLER = re.compile(
    r"^\s*(?:(?:for me|please)\s+)?(?:(?:the|this|that)\s+)?(?:following\s+)?"
    r"(?:(?:text|passage|paragraph|sentence|article|document|note)s?\b)?\s*(?:below\b)?[\s,:]*",
    re.I,
)


@dataclass(frozen=True, slots=True)
class Instruction:
    """A query split in two: the instruction (may be empty) and the payload text (may be empty)."""

    instruction: str
    payload: str


def language_code(name: str) -> str | None:
    """The ISO 639-1 code of an English language name (``French`` → ``fr``), else None."""
    return _LANGUAGES.get(name.strip().lower())


def split_instruction(query: str, verbs: re.Pattern[str]) -> Instruction:
    """Splits ``query`` where ``verbs`` (an instruction's words) end and the payload begins.

    Args:
        query: The query text.
        verbs: Matches the words that make a phrase an instruction (``summari[sz]e|tl;dr``).

    """
    text = query.strip()
    lead = _LEAD.match(text)
    if lead and verbs.search(lead.group(1)):
        return Instruction(lead.group(1).strip(), text[lead.end() :].strip())
    quoted = _QUOTED.search(text)
    if quoted and verbs.search(text[: quoted.start()] + text[quoted.end() :]):
        payload = next(g for g in quoted.groups() if g)
        return Instruction((text[: quoted.start()] + text[quoted.end() :]).strip(), payload.strip())
    found = verbs.search(text)
    if found and found.start() < 40:
        # "Summarize the following text the cat sat" with no separator: what follows the verb and
        # its filler words (this, the following text, below) is the payload.
        rest = _FILLER.sub("", text[found.end() :], count=1)
        return Instruction(text[: len(text) - len(rest)].strip(), rest.strip())
    return Instruction("", text)


def text_operation(instruction: str) -> str | None:
    """The text agent's intent named by ``instruction`` (translate, rewrite, extract_keywords...)."""
    for name, pattern in _OPERATIONS:
        if pattern.search(instruction):
            return name
    return None


def target_language(instruction: str) -> str | None:
    """The language a translation goes to (``into French`` → ``French``), else None."""
    found = _TARGET.search(instruction)
    return found.group(1).capitalize() if found else None
