"""AIP-158 pagination shared by every store: page sizes and opaque page tokens bound to a query.

A page token carries the key the next page continues after and a fingerprint of the query's
filters, so a token reused with other filters is INVALID_ARGUMENT instead of a wrong page.

Tokens come back from callers, so reading one must cost little whatever it holds: the format is a
flat, fixed binary layout (no nesting, nothing recursive), base64url-encoded without padding, at
most :data:`MAX_PAGE_TOKEN_LENGTH` characters, and a longer token is refused before it is decoded::

    version (1 byte) | sha256(fingerprint)[:8] | shape (1 byte) | item ...
    shape: bit 7 set = the key is a list of items, else one item; bits 0-6 = the item count (1-4)
    item:  b"i" + int64 (big-endian) | b"f" + finite float64 | b"s" + length (1 byte) + UTF-8

Anything else — another version, another query, a cut-off or over-long item, bytes left over,
not base64url — is INVALID_ARGUMENT with the reason ``BAD_PAGE_TOKEN``. Tokens are not signed:
a key only says where a page starts, and the store still applies the caller's filters and
permissions to every row, so a forged key can select nothing the caller could not list anyway.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import re
import struct
from collections.abc import Callable
from typing import TypeAlias, TypeVar

from bhiv_core.runtime.errors import FieldViolation, InvalidArgument

T = TypeVar("T")

__all__ = [
    "MAX_PAGE_TOKEN_LENGTH",
    "PageKey",
    "bad_page_token",
    "cut_page",
    "decode_page_token",
    "encode_page_token",
    "page_size_of",
]

PageKeyItem: TypeAlias = int | float | str
PageKey: TypeAlias = PageKeyItem | list[PageKeyItem]
"""What a page continues after: one value, or a list of them for a composite sort key."""

MAX_PAGE_TOKEN_LENGTH = 512
"""The longest page token accepted, in characters; every token this module writes is shorter."""

_VERSION = 1
_FINGERPRINT_BYTES = 8
_LIST_FLAG = 0x80
_MAX_ITEMS = 4
_MAX_TEXT_BYTES = 255
_INT64 = struct.Struct(">q")
_FLOAT64 = struct.Struct(">d")
_HEADER = 1 + _FINGERPRINT_BYTES + 1
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


def page_size_of(requested: int, default: int = 50, maximum: int = 500) -> int:
    """The page size to use: ``default`` for 0, capped at ``maximum``; negative is INVALID_ARGUMENT."""
    if requested < 0:
        raise InvalidArgument(violations=[FieldViolation("page_size", "must be at least 0", "OUT_OF_RANGE")])
    return min(requested or default, maximum)


def bad_page_token() -> InvalidArgument:
    """The error for a token that is not a ``next_page_token`` of the same query."""
    return InvalidArgument(
        violations=[
            FieldViolation(
                "page_token", "is not a next_page_token of this query (same filters)", "BAD_PAGE_TOKEN"
            )
        ]
    )


def _query_digest(fingerprint: str) -> bytes:
    return hashlib.sha256(fingerprint.encode()).digest()[:_FINGERPRINT_BYTES]


def _encode_item(item: PageKeyItem) -> bytes:
    # bool is an int to Python but not a key any store sorts by: refused like any other type.
    if isinstance(item, int) and not isinstance(item, bool):
        return b"i" + _INT64.pack(item)
    if isinstance(item, float) and math.isfinite(item):
        return b"f" + _FLOAT64.pack(item)
    if isinstance(item, str):
        text = item.encode()
        if len(text) <= _MAX_TEXT_BYTES:
            return b"s" + bytes([len(text)]) + text
        raise ValueError(f"a page key string is {len(text)} bytes, more than {_MAX_TEXT_BYTES}")
    raise ValueError(f"a page key cannot hold {item!r}")


def encode_page_token(after: PageKey, fingerprint: str) -> str:
    """An opaque token for the page after the key ``after`` of the query ``fingerprint``.

    Raises:
        ValueError: ``after`` does not fit the format (a bug of the caller, not of the request):
            more than four items, a string over 255 UTF-8 bytes, an integer outside int64, a
            non-finite float, or another type.

    """
    items = after if isinstance(after, list) else [after]
    if not 1 <= len(items) <= _MAX_ITEMS:
        raise ValueError(f"a page key has {len(items)} items, not 1 to {_MAX_ITEMS}")
    try:
        body = b"".join(_encode_item(item) for item in items)
    except struct.error as exc:
        raise ValueError(f"a page key integer is outside int64: {exc}") from None
    shape = len(items) | (_LIST_FLAG if isinstance(after, list) else 0)
    raw = bytes([_VERSION]) + _query_digest(fingerprint) + bytes([shape]) + body
    token = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    if len(token) > MAX_PAGE_TOKEN_LENGTH:  # cannot happen within the item limits; kept as a guard
        raise ValueError(f"a page token of {len(token)} characters exceeds {MAX_PAGE_TOKEN_LENGTH}")
    return token


def _decode_items(raw: bytes, count: int) -> list[PageKeyItem] | None:
    """The ``count`` items from ``raw[_HEADER:]``, or None when they are not exactly that."""
    items: list[PageKeyItem] = []
    at = _HEADER
    for _ in range(count):
        tag = raw[at : at + 1]
        at += 1
        if tag == b"i" and at + 8 <= len(raw):
            items.append(_INT64.unpack_from(raw, at)[0])
            at += 8
        elif tag == b"f" and at + 8 <= len(raw):
            number: float = _FLOAT64.unpack_from(raw, at)[0]
            if not math.isfinite(number):
                return None
            items.append(number)
            at += 8
        elif tag == b"s" and at < len(raw):
            end = at + 1 + raw[at]
            if end > len(raw):
                return None
            try:
                items.append(raw[at + 1 : end].decode())
            except UnicodeDecodeError:
                return None
            at = end
        else:
            return None
    return items if at == len(raw) else None


def decode_page_token(token: str, fingerprint: str) -> PageKey:
    """The key a token continues after; raises INVALID_ARGUMENT for a foreign or corrupt token.

    The work is bounded by :data:`MAX_PAGE_TOKEN_LENGTH` whatever the token holds. The caller
    checks the key's type and range; an empty token is the caller's first page.
    """
    if not 0 < len(token) <= MAX_PAGE_TOKEN_LENGTH or not _BASE64URL.fullmatch(token):
        raise bad_page_token()
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise bad_page_token() from None
    if len(raw) < _HEADER or raw[0] != _VERSION:
        raise bad_page_token()
    if raw[1 : 1 + _FINGERPRINT_BYTES] != _query_digest(fingerprint):
        raise bad_page_token()
    shape = raw[_HEADER - 1]
    count = shape & ~_LIST_FLAG
    items = _decode_items(raw, count) if 1 <= count <= _MAX_ITEMS else None
    if items is None or (count > 1 and not shape & _LIST_FLAG):
        raise bad_page_token()
    return items if shape & _LIST_FLAG else items[0]


def cut_page(items: list[T], size: int, key: Callable[[T], PageKey], fingerprint: str) -> tuple[list[T], str]:
    """Cuts a fetch of up to ``size + 1`` items into one page and the token of the next.

    Args:
        items: What the store read, one item more than a page when there is a next page.
        size: The page size.
        key: The key of an item, which the next page continues after.
        fingerprint: The query's filters, which the token is bound to.

    Returns:
        The page, and the next page's token (empty on the last page).

    """
    if len(items) <= size:
        return items, ""
    page = items[:size]
    return page, encode_page_token(key(page[-1]), fingerprint)
