"""What an attachment is: read from its content, then its declared media type, then its extension.

Binary formats are recognised by their magic bytes: PDF (``%PDF-``), PNG, JPEG, GIF, WebP
(``RIFF....WEBP``), WAV (``RIFF....WAVE``), FLAC (``fLaC``), Ogg (``OggS``), MP3 (an ``ID3`` tag or
an MPEG audio frame sync) and WebM (an EBML header whose doc type is ``webm``). Content without
magic is text when it is valid UTF-8 without control characters. A declared media type (or, when
none is declared, a known extension) that contradicts the content is INVALID_ARGUMENT, and so is a
binary content of no known format: nothing is guessed.
"""

from __future__ import annotations

from typing import Final

from bhiv_core.agents.base import InputType
from bhiv_core.runtime.errors import FieldViolation, InvalidArgument

__all__ = ["GENERIC_MIME_TYPES", "MEDIA_TYPES", "detect_input_type"]

MEDIA_TYPES: Final[dict[str, InputType]] = {
    "application/pdf": InputType.PDF,
    "image/png": InputType.IMAGE,
    "image/jpeg": InputType.IMAGE,
    "image/gif": InputType.IMAGE,
    "image/webp": InputType.IMAGE,
    "audio/wav": InputType.AUDIO,
    "audio/flac": InputType.AUDIO,
    "audio/ogg": InputType.AUDIO,
    "audio/mpeg": InputType.AUDIO,
    "audio/webm": InputType.AUDIO,
}
"""The binary media types recognised, by their canonical name (what detection returns)."""

_ALIASES: Final = {
    "application/x-pdf": "application/pdf",
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "audio/x-wav": "audio/wav",
    "audio/wave": "audio/wav",
    "audio/vnd.wave": "audio/wav",
    "audio/x-flac": "audio/flac",
    "application/ogg": "audio/ogg",
    "audio/opus": "audio/ogg",
    "audio/vorbis": "audio/ogg",
    "audio/mp3": "audio/mpeg",
    "audio/mpeg3": "audio/mpeg",
    "audio/x-mpeg": "audio/mpeg",
    "video/webm": "audio/webm",
}

GENERIC_MIME_TYPES: Final = frozenset(
    {"application/octet-stream", "binary/octet-stream", "application/unknown"}
)
"""Declared types that say nothing about the content (as if none were declared)."""

_TEXT_APPLICATION_TYPES: Final = frozenset(
    {"application/json", "application/xml", "application/yaml", "application/x-yaml", "application/x-ndjson"}
)

_EXTENSIONS: Final = {
    "pdf": "application/pdf",
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "gif": "image/gif",
    "webp": "image/webp",
    "wav": "audio/wav",
    "flac": "audio/flac",
    "ogg": "audio/ogg",
    "oga": "audio/ogg",
    "opus": "audio/ogg",
    "mp3": "audio/mpeg",
    "webm": "audio/webm",
    "txt": "text/plain",
    "text": "text/plain",
    "log": "text/plain",
    "rst": "text/plain",
    "md": "text/markdown",
    "markdown": "text/markdown",
    "csv": "text/csv",
    "tsv": "text/tab-separated-values",
    "html": "text/html",
    "htm": "text/html",
    "json": "application/json",
    "xml": "application/xml",
    "yaml": "application/yaml",
    "yml": "application/yaml",
}

_SIGNATURE_SCAN: Final = 4096
"""How far into a WebM file its doc type is looked for (it is in the EBML header, the first bytes)."""


def _canonical(mime_type: str) -> str:
    """``mime_type`` lower-cased, without parameters (``; charset=...``), aliases resolved."""
    base = mime_type.split(";", 1)[0].strip().lower()
    return _ALIASES.get(base, base)


def _is_text_type(mime_type: str) -> bool:
    return mime_type.startswith("text/") or mime_type in _TEXT_APPLICATION_TYPES


def _extension_type(file_name: str) -> str | None:
    """The media type a known extension names, else None."""
    _, dot, ext = file_name.rpartition(".")
    return _EXTENSIONS.get(ext.lower()) if dot else None


def _mp3_frame(data: bytes) -> bool:
    """An MPEG audio frame header: 11 sync bits, a valid version, layer, bitrate and sample rate."""
    if len(data) < 4 or data[0] != 0xFF or data[1] & 0xE0 != 0xE0:
        return False
    version, layer = (data[1] >> 3) & 0b11, (data[1] >> 1) & 0b11
    bitrate, rate = data[2] >> 4, (data[2] >> 2) & 0b11
    # Version 01 and layer 00 are reserved (layer 00 is also AAC's ADTS); bitrate 1111 is invalid.
    return version != 0b01 and layer != 0b00 and bitrate != 0b1111 and rate != 0b11


def _sniff(data: bytes) -> str | None:
    """The canonical media type of ``data``'s magic bytes, or None."""
    head = data[:16]
    if head.startswith(b"%PDF-"):
        return "application/pdf"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head.startswith(b"RIFF") and len(head) >= 12:
        return {b"WEBP": "image/webp", b"WAVE": "audio/wav"}.get(head[8:12])
    # The byte after each of these four is binary (a text that happens to start "OggS" is text):
    # FLAC's first metadata block is STREAMINFO (type 0), Ogg's version is 0, ID3's major version 2-4.
    if head.startswith(b"fLaC") and len(head) > 4 and head[4] & 0x7F == 0:
        return "audio/flac"
    if head.startswith(b"OggS\x00"):
        return "audio/ogg"
    if (head.startswith(b"ID3") and len(head) > 3 and head[3] in (2, 3, 4)) or _mp3_frame(head):
        return "audio/mpeg"
    if head.startswith(b"\x1a\x45\xdf\xa3") and b"webm" in data[:_SIGNATURE_SCAN]:
        return "audio/webm"
    return None


def _as_text(data: bytes) -> str | None:
    """``data`` decoded when it is UTF-8 text (no NUL or other control characters but whitespace)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if any(ord(c) < 32 and c not in "\t\n\r\f" for c in text):
        return None
    return text


def _mismatch(field: str, description: str) -> InvalidArgument:
    return InvalidArgument(violations=[FieldViolation(field, description, "MEDIA_TYPE_MISMATCH")])


def _unsupported(field: str, description: str) -> InvalidArgument:
    return InvalidArgument(violations=[FieldViolation(field, description, "UNSUPPORTED_MEDIA_TYPE")])


def _name(mime_type: str) -> str:
    """How a media type is named in messages."""
    return mime_type.split("/", 1)[1].upper() if mime_type in MEDIA_TYPES else mime_type


def detect_input_type(
    mime_type: str, file_name: str, data: bytes | None, text: str | None, *, field: str = "attachment"
) -> tuple[InputType, str]:
    """Detects an attachment's type from its content, then its declared type, then its extension.

    Args:
        mime_type: The declared media type; may be empty (or generic, ``application/octet-stream``).
        file_name: The file name; may be empty. Its extension counts only when no type is declared.
        data: The raw content, when sent as bytes.
        text: The content, when sent as text (then ``data`` is not read).
        field: The attachment's field path (``attachments[0]``): violations name
            ``<field>.data``, ``<field>.text``, ``<field>.mime_type`` or ``<field>.file_name``.

    Returns:
        The input type and the effective media type (canonical for binary formats: ``image/jpeg``
        for a declared ``image/jpg``; the declared or extension's type for text, else ``text/plain``).

    Raises:
        InvalidArgument: No content; a binary content of no supported format; or a declared type
            (or extension, when no type is declared) that contradicts the content.

    """
    declared = _canonical(mime_type)
    if declared in GENERIC_MIME_TYPES:
        declared = ""
    by_extension = _extension_type(file_name) if not declared else None
    if text is not None:
        if declared and not _is_text_type(declared):
            raise _mismatch(f"{field}.mime_type", f"{mime_type} was declared but the content is text")
        if by_extension and not _is_text_type(by_extension):
            raise _mismatch(
                f"{field}.file_name", f"{file_name} names {_name(by_extension)} but the content is text"
            )
        return InputType.TEXT, declared or by_extension or "text/plain"
    if not data:
        raise InvalidArgument(
            violations=[FieldViolation(f"{field}.data", "the attachment is empty", "REQUIRED")]
        )
    sniffed = _sniff(data)
    if sniffed is not None:
        if declared and declared != sniffed:
            raise _mismatch(
                f"{field}.mime_type", f"{mime_type} was declared but the content is {_name(sniffed)}"
            )
        if by_extension and by_extension != sniffed:
            raise _mismatch(
                f"{field}.file_name",
                f"{file_name} names {_name(by_extension)} but the content is {_name(sniffed)}",
            )
        return MEDIA_TYPES[sniffed], sniffed
    claimed = declared or by_extension
    where = f"{field}.mime_type" if declared else f"{field}.file_name"
    if claimed in MEDIA_TYPES:
        raise _mismatch(where, f"{_name(claimed)} was declared but the content is not {_name(claimed)}")
    decoded = _as_text(data)
    if claimed and _is_text_type(claimed):
        if decoded is None:
            raise _mismatch(where, f"{claimed} was declared but the content is not UTF-8 text")
        return InputType.TEXT, claimed
    if declared:
        raise _unsupported(
            f"{field}.mime_type",
            f"{mime_type} is not supported (PDF, PNG, JPEG, GIF, WebP, WAV, FLAC, Ogg, MP3, WebM, text)",
        )
    if decoded is not None:
        return InputType.TEXT, "text/plain"
    raise _unsupported(
        f"{field}.data",
        "the content is of no supported format (PDF, PNG, JPEG, GIF, WebP, WAV, FLAC, Ogg, MP3, WebM, text)",
    )
