"""Pages of a short list held in memory (built-in agents, configured models).

A page token is ``base64url("{kind}:{offset}")``; a token of another list, or an offset past the
end, is INVALID_ARGUMENT on ``page_token``. Stored resources page by key through the kit instead.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import TypeVar

from bhiv_core.runtime.errors import FieldViolation, InvalidArgument

__all__ = ["fixed_page"]

T = TypeVar("T")


def _token(kind: str, offset: int) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{offset}".encode()).decode()


def _offset(kind: str, token: str, total: int) -> int:
    if not token:
        return 0
    try:
        found, _, number = base64.urlsafe_b64decode(token.encode("ascii")).decode().partition(":")
        offset = int(number)
    except (ValueError, UnicodeError, binascii.Error):
        found, offset = "", -1
    if found != kind or not 0 <= offset <= total:
        raise InvalidArgument(
            violations=[FieldViolation("page_token", "not a token of this list", "INVALID_PAGE_TOKEN")]
        )
    return offset


def fixed_page(
    kind: str, items: Sequence[T], page_size: int, page_token: str, *, default: int, maximum: int
) -> tuple[list[T], str]:
    """Returns one page of ``items`` and the next page's token (empty on the last page).

    Args:
        kind: The list's name, written into its tokens (``agents``, ``models``).
        items: The whole list, in its order.
        page_size: The request's page size; 0 means ``default``, above ``maximum`` is capped.
        page_token: The request's token; empty for the first page.
        default: The page size when none is asked.
        maximum: The largest page size.

    """
    start = _offset(kind, page_token, len(items))
    page = list(items[start : start + min(page_size or default, maximum)])
    end = start + len(page)
    return page, _token(kind, end) if end < len(items) else ""
