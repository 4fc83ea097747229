"""Page tokens: a bounded flat format, bound to one query, whatever a caller sends back."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from bhiv_core.runtime.errors import InvalidArgument
from bhiv_core.storage.pagination import (
    MAX_PAGE_TOKEN_LENGTH,
    PageKey,
    cut_page,
    decode_page_token,
    encode_page_token,
)
from tests.storage.page_tokens import damaged, hostile_page_tokens

KEYS: list[PageKey] = [
    0,
    2**63 - 1,
    -(2**63),
    1.5,
    -0.0,
    "",
    "ada",
    "é" * 127,
    [1_790_000_000.123456, "0f" * 16],
    ["a", 1, 2.5, "z"],
    [7],
]


def reasons(err: InvalidArgument) -> set[tuple[str, str]]:
    return {(v.field, v.reason) for v in err.violations}


@pytest.mark.parametrize("key", KEYS, ids=repr)
def test_every_key_shape_round_trips(key: PageKey) -> None:
    token = encode_page_token(key, "users role=")
    assert len(token) <= MAX_PAGE_TOKEN_LENGTH
    decoded = decode_page_token(token, "users role=")
    assert decoded == key and type(decoded) is type(key)


def test_a_token_of_another_query_is_bad_page_token() -> None:
    token = encode_page_token("ada", "users role=")
    with pytest.raises(InvalidArgument) as err:
        decode_page_token(token, "users role=sales")
    assert reasons(err.value) == {("page_token", "BAD_PAGE_TOKEN")}


@pytest.mark.parametrize("case", sorted(hostile_page_tokens()))
def test_a_token_no_store_wrote_is_bad_page_token(case: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        decode_page_token(hostile_page_tokens()[case], "users role=")
    assert reasons(err.value) == {("page_token", "BAD_PAGE_TOKEN")}


@pytest.mark.parametrize("key", KEYS, ids=repr)
def test_a_damaged_token_is_bad_page_token(key: PageKey) -> None:
    for case, token in damaged(encode_page_token(key, "q")).items():
        with pytest.raises(InvalidArgument) as err:
            decode_page_token(token, "q")
        assert reasons(err.value) == {("page_token", "BAD_PAGE_TOKEN")}, case


def test_a_huge_token_is_refused_before_it_is_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[int] = []
    real = base64.b64decode

    def spy(data: str | bytes, *args: Any, **kwargs: Any) -> bytes:
        decoded.append(len(data))
        return real(data, *args, **kwargs)

    monkeypatch.setattr(base64, "b64decode", spy)
    for token in ("A" * 8_000_000, "A" * (MAX_PAGE_TOKEN_LENGTH + 4)):
        with pytest.raises(InvalidArgument):
            decode_page_token(token, "q")
    assert decoded == []
    decode_page_token(encode_page_token(1, "q"), "q")
    assert decoded != []  # the spy sees the decodes that do happen


@pytest.mark.parametrize(
    "key",
    [2**63, float("nan"), float("inf"), True, "x" * 256, [1, 2, 3, 4, 5], [], None, b"bytes"],
    ids=repr,
)
def test_a_key_the_format_cannot_hold_is_a_value_error(key: object) -> None:
    with pytest.raises(ValueError):
        encode_page_token(key, "q")  # type: ignore[arg-type]


def test_cut_page_gives_a_token_only_when_more_items_follow() -> None:
    assert cut_page([1, 2], 2, lambda n: n, "q") == ([1, 2], "")
    page, token = cut_page([1, 2, 3], 2, lambda n: n, "q")
    assert page == [1, 2]
    assert decode_page_token(token, "q") == 2
