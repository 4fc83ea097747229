"""Splitting a document's extracted text into sections and passages, in linear time.

A passage is a span ``text[start:end]`` of the extracted text, so its text exists verbatim in the
document. Sections come from Markdown headings (``#`` … ``######`` at the start of a line) or from
PDF pages (``Page N``); a document with neither has one untitled section. Within a section,
paragraphs (separated by blank lines) are packed into passages of at most :data:`MAX_PASSAGE_CHARS`
characters; a longer paragraph is cut at a sentence end or a space. Every step walks the text once.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

__all__ = ["MAX_PASSAGE_CHARS", "Chunk", "Section", "chunk", "markdown_sections"]

MAX_PASSAGE_CHARS = 900
"""The longest passage, in characters."""

MIN_PASSAGE_CHARS = 200
"""Paragraphs are packed together until a passage reaches this many characters."""

_HEADING = re.compile(r"^#{1,6}[ \t]+(\S[^\n]*)$", re.MULTILINE)
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")


@dataclass(frozen=True, slots=True)
class Section:
    """A titled span of the extracted text: ``text[start:end]``."""

    title: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Chunk:
    """One passage: its section's title and its span ``text[start:end]`` (end exclusive)."""

    section: str
    start: int
    end: int


def markdown_sections(text: str) -> list[Section]:
    """The sections of a text by its Markdown headings; the text before the first one is untitled.

    A heading's own line belongs to its section but is not part of any passage (its words are
    indexed as the section title).
    """
    sections: list[Section] = []
    position = 0
    title = ""
    for match in _HEADING.finditer(text):
        if match.start() > position or title:
            sections.append(Section(title, position, match.start()))
        title = match.group(1).strip().rstrip("#").strip()[:200]
        position = match.end()
    sections.append(Section(title, position, len(text)))
    return sections


def _paragraphs(text: str, start: int, end: int) -> Iterator[tuple[int, int]]:
    """The non-blank paragraphs of ``text[start:end]``, trimmed of surrounding whitespace."""
    position = start
    for match in _PARAGRAPH_BREAK.finditer(text, start, end):
        yield from _trimmed(text, position, match.start())
        position = match.end()
    yield from _trimmed(text, position, end)


def _trimmed(text: str, start: int, end: int) -> Iterator[tuple[int, int]]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if end > start:
        yield start, end


def _cut(text: str, start: int, end: int) -> Iterator[tuple[int, int]]:
    """``text[start:end]`` in pieces of at most MAX_PASSAGE_CHARS, cut at a sentence end or space."""
    while end - start > MAX_PASSAGE_CHARS:
        limit = start + MAX_PASSAGE_CHARS
        floor = start + MAX_PASSAGE_CHARS // 2
        cut = -1
        for mark in (". ", "? ", "! ", "\n"):
            found = text.rfind(mark, floor, limit)
            if found > cut:
                cut = found + 1
        if cut <= start:
            found = text.rfind(" ", floor, limit)
            cut = found if found > start else limit
        yield from _trimmed(text, start, cut)
        start = cut
    yield from _trimmed(text, start, end)


def chunk(text: str, sections: Sequence[Section]) -> list[Chunk]:
    """The passages of ``text``, section by section, in document order.

    Args:
        text: The document's extracted text.
        sections: Its sections, in order and not overlapping.

    Returns:
        Passages whose spans lie inside their section, each 1 to MAX_PASSAGE_CHARS characters,
        never starting or ending with whitespace.

    """
    chunks: list[Chunk] = []
    for section in sections:
        pending: tuple[int, int] | None = None
        for p_start, p_end in _paragraphs(text, section.start, section.end):
            for piece_start, piece_end in _cut(text, p_start, p_end):
                if pending is not None and piece_end - pending[0] <= MAX_PASSAGE_CHARS:
                    pending = (pending[0], piece_end)
                else:
                    if pending is not None:
                        chunks.append(Chunk(section.title, *pending))
                    pending = (piece_start, piece_end)
                if pending[1] - pending[0] >= MIN_PASSAGE_CHARS:
                    chunks.append(Chunk(section.title, *pending))
                    pending = None
        if pending is not None:
            chunks.append(Chunk(section.title, *pending))
    return chunks
