"""Interim routing, until the trained router (``bhiv_core.agents.router``, branch i12-router) lands.

:func:`detect_input_type` reads magic numbers; :func:`classify` is a stop-gap of a few word rules,
kept private to the service and replaced by the router's classifier on merge (the issue asks for a
trained classifier, which this is not).
"""

from __future__ import annotations

import re

from bhiv_core.agents.base import InputType

__all__ = ["classify", "detect_input_type"]

_MAGIC: tuple[tuple[bytes, InputType], ...] = (
    (b"%PDF-", InputType.PDF),
    (b"\x89PNG\r\n\x1a\n", InputType.IMAGE),
    (b"\xff\xd8\xff", InputType.IMAGE),
    (b"GIF87a", InputType.IMAGE),
    (b"GIF89a", InputType.IMAGE),
    (b"fLaC", InputType.AUDIO),
    (b"OggS", InputType.AUDIO),
    (b"ID3", InputType.AUDIO),
    (b"\x1a\x45\xdf\xa3", InputType.AUDIO),
)


def detect_input_type(mime_type: str, data: bytes, file_name: str = "") -> InputType:
    """The type of ``data`` from its content (magic numbers), else its media type; UNSPECIFIED if neither."""
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return kind
    if data[:4] == b"RIFF" and data[8:12] in (b"WAVE", b"WEBP"):
        return InputType.AUDIO if data[8:12] == b"WAVE" else InputType.IMAGE
    major = mime_type.split("/", 1)[0]
    if mime_type == "application/pdf":
        return InputType.PDF
    if major in ("image", "audio"):
        return InputType.IMAGE if major == "image" else InputType.AUDIO
    if major == "text":
        return InputType.TEXT
    return InputType.UNSPECIFIED


_RULES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (intent, re.compile(pattern, re.IGNORECASE))
    for intent, pattern in (
        (
            "greeting",
            r"^\s*(?:hi|hello|hey|namaste|good (?:morning|afternoon|evening))\b[\s!.,]*\w{0,12}[\s!.]*$",
        ),
        ("small_talk", r"^\s*(?:how are you|thanks?|thank you|who are you)\b"),
        ("summarize", r"\b(?:summari[sz]e|summary|tl;?dr)\b"),
        ("plan", r"\b(?:plan|schedule|roadmap|steps to)\b"),
        ("translate", r"\btranslate\b"),
        ("rewrite", r"\b(?:rewrite|rephrase)\b"),
        ("extract_keywords", r"\bkeywords?\b"),
        ("detect_language", r"\bwhat language\b"),
        ("social_post", r"\b(?:tweet|social (?:media )?post|linkedin|instagram)\b"),
        ("find_documents", r"\b(?:find|search|which) (?:the )?(?:documents?|files?|pdfs?)\b"),
        (
            "vedic_knowledge",
            r"\b(?:vedas?|vedic|gita|upanishads?|krishna|arjuna|dharma|karma|moksha|brahman|atman)\b",
        ),
        ("wellness", r"\b(?:ayurveda|dosha|vata|pitta|kapha|yoga|pranayama|meditat\w*|asana)\b"),
        ("learning", r"\b(?:study|studying|learn\w*|exam|memori[sz]\w*|revision|flashcards?)\b"),
        ("knowledge_lookup", r"\b(?:refund|shipping|support|policy|policies|return|order|tracking)\b"),
    )
)


def classify(query: str, input_type: InputType) -> tuple[str, float]:
    """The intent of a request and a confidence; ``question`` (0.5) when nothing matches."""
    if input_type == InputType.IMAGE:
        return "describe_image", 0.99
    if input_type == InputType.AUDIO:
        return "transcribe_audio", 0.99
    for intent, pattern in _RULES:
        if pattern.search(query):
            return intent, 0.8
    if input_type == InputType.PDF:
        return "summarize", 0.9
    return "question", 0.5
