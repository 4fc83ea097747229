"""AIP-158 pagination shared by every store: page sizes and opaque page tokens bound to a query.

A page token carries the key the next page continues after and a fingerprint of the query's
filters, so a token reused with other filters is INVALID_ARGUMENT instead of a wrong page.
"""

from __future__ import annotations

import base64
import binascii
import json

from bhiv_core.runtime.errors import FieldViolation, InvalidArgument

__all__ = ["bad_page_token", "decode_page_token", "encode_page_token", "page_size_of"]


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
