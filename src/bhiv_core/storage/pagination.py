"""AIP-158 pagination shared by every store: page sizes and opaque page tokens bound to a query.

A page token carries the key the next page continues after and a fingerprint of the query's
filters, so a token reused with other filters is INVALID_ARGUMENT instead of a wrong page.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import TypeVar

from bhiv_core.runtime.errors import FieldViolation, InvalidArgument

T = TypeVar("T")

__all__ = ["bad_page_token", "cut_page", "decode_page_token", "encode_page_token", "page_size_of"]


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


def encode_page_token(after: int | str | list[int | float | str], fingerprint: str) -> str:
    """An opaque token for the page after the key ``after`` (a JSON value) of the query ``fingerprint``."""
    raw = json.dumps({"after": after, "filter": fingerprint}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_page_token(token: str, fingerprint: str) -> object:
    """The key a token continues after; raises INVALID_ARGUMENT for a foreign or corrupt token.

    The caller checks the key's type and range; an empty token is the caller's first page.
    """
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        after, found = data["after"], data["filter"]
    except (ValueError, TypeError, KeyError, binascii.Error):
        raise bad_page_token() from None
    if found != fingerprint:
        raise bad_page_token()
    return after


def cut_page(
    items: list[T], size: int, key: Callable[[T], int | str | list[int | float | str]], fingerprint: str
) -> tuple[list[T], str]:
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
