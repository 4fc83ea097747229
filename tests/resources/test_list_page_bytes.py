"""The kit's pages bounded by bytes: a page of large resources ends early and continues after."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bhiv_core.resources import Collection, Field, Record, ResourceStore, list_page
from bhiv_core.resources.sqlite import SqliteResourceStore, schema

NOTES = Collection("notes", (Field("key", "text"),), order=("key",))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ResourceStore]:
    opened = SqliteResourceStore(tmp_path / "notes.db", (NOTES,), (schema((NOTES,)),))
    await opened.open()

    async def fill(txn: object) -> None:
        for number, size in enumerate([100, 100, 100, 400, 100]):
            record = Record(id=f"n{number}", data=b"x" * size, fields={"key": f"k{number}"}, etag="e")
            await txn.insert(NOTES, record)  # type: ignore[attr-defined]

    await opened.run(fill)
    try:
        yield opened
    finally:
        await opened.close()


async def pages(store: ResourceStore, **kwargs: object) -> list[list[str]]:
    token, out = "", []
    while True:
        page, token = await list_page(
            store, NOTES, [], page_size=10, page_token=token, query=("ListNotes",), **kwargs
        )
        out.append([r.id for r in page])
        if not token:
            return out


async def test_a_page_ends_before_max_bytes_and_the_next_continues_after_it(store: ResourceStore) -> None:
    # 100 + 100 fit 250, a third would not; a 400-byte record alone exceeds it and still gets a page.
    assert await pages(store, max_bytes=250) == [["n0", "n1"], ["n2"], ["n3"], ["n4"]]


async def test_without_max_bytes_the_page_size_alone_decides(store: ResourceStore) -> None:
    assert await pages(store) == [["n0", "n1", "n2", "n3", "n4"]]
    assert await pages(store, max_bytes=10_000) == [["n0", "n1", "n2", "n3", "n4"]]
