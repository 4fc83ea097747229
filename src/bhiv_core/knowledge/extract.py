"""Extracting a document's text and sections from what IngestDocument received.

``text/plain`` content is UTF-8 text (Markdown headings make its sections); ``application/pdf``
content is read with ``pypdf``, page by page (``Page N`` sections, pages joined by a blank line).
Anything that cannot be read is an :class:`~bhiv_core.runtime.errors.InvalidArgument` naming the
field, never an internal error: a hostile PDF costs at most :data:`MAX_PDF_PAGES` pages and
:data:`MAX_TEXT_CHARS` characters of extracted text.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

from bhiv_core.knowledge.chunking import Section, markdown_sections
from bhiv_core.runtime.errors import FieldViolation, InvalidArgument

__all__ = ["MAX_PDF_PAGES", "MAX_TEXT_CHARS", "Extracted", "extract_pdf", "extract_text"]

MAX_TEXT_CHARS = 20_971_520
"""The most characters of text a document may hold (the contract's 20 MiB)."""

MAX_PDF_PAGES = 2000
"""The most pages read from a PDF."""

PDF = "application/pdf"
TEXT = "text/plain"


@dataclass(frozen=True, slots=True)
class Extracted:
    """A document's extracted text and its sections (spans of that text)."""

    text: str
    sections: list[Section]


def _bad(field: str, description: str, reason: str) -> InvalidArgument:
    return InvalidArgument(violations=[FieldViolation(field, description, reason)])


def extract_text(text: str, *, field: str) -> Extracted:
    """The text itself, sectioned by its Markdown headings; INVALID_ARGUMENT when blank."""
    if not text.strip():
        raise _bad(field, "holds no text", "EMPTY_CONTENT")
    if len(text) > MAX_TEXT_CHARS:
        raise _bad(field, f"is longer than {MAX_TEXT_CHARS} characters", "TOO_LONG")
    return Extracted(text, markdown_sections(text))


def decode_text(data: bytes) -> str:
    """UTF-8 ``data`` as text (a BOM is dropped); INVALID_ARGUMENT on ``data`` when it is not UTF-8."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise _bad("data", f"is not UTF-8 text (byte {err.start})", "NOT_UTF8") from None


def extract_pdf(data: bytes) -> Extracted:
    """The text of a PDF's pages, one ``Page N`` section each; INVALID_ARGUMENT on ``data`` otherwise.

    Blocking (CPU): call it in a worker thread.
    """
    if b"%PDF-" not in data[:1024]:
        raise _bad("data", "is not a PDF (no %PDF- header)", "NOT_PDF")
    from pypdf import PdfReader

    # pypdf logs a warning per oddity of a malformed file; the caller gets one clear error instead.
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    parts: list[str] = []
    sections: list[Section] = []
    length = 0
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            raise _bad("data", "is an encrypted PDF", "PDF_ENCRYPTED")
        for number, page in enumerate(reader.pages, start=1):
            if number > MAX_PDF_PAGES:
                raise _bad("data", f"has more than {MAX_PDF_PAGES} pages", "TOO_MANY_PAGES")
            page_text = (page.extract_text() or "").replace("\x00", "").strip()
            if not page_text:
                continue
            if parts:
                parts.append("\n\n")
                length += 2
            sections.append(Section(f"Page {number}", length, length + len(page_text)))
            parts.append(page_text)
            length += len(page_text)
            if length > MAX_TEXT_CHARS:
                raise _bad("data", f"holds more than {MAX_TEXT_CHARS} characters of text", "TOO_LONG")
    except InvalidArgument:
        raise
    except Exception as err:  # pypdf raises many kinds for a malformed file
        raise _bad("data", f"is not a readable PDF ({type(err).__name__})", "BAD_PDF") from None
    if not sections:
        raise _bad("data", "holds no extractable text", "EMPTY_CONTENT")
    return Extracted("".join(parts), sections)
