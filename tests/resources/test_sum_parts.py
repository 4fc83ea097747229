"""Exact sums of amounts too large for a store's 64-bit SUM."""

from __future__ import annotations

from pathlib import Path

from bhiv_core.resources import Collection, Field, Record, make_resource_store, sum_parts, total_of_parts
from bhiv_core.resources.sqlite import schema

INT64_MAX = 2**63 - 1
AMOUNTS = Collection("amounts", (Field("high", "int"), Field("low", "int")))


def test_parts_join_back_to_the_value() -> None:
    for value in (0, 1, 10**9 - 1, 10**9, INT64_MAX, INT64_MAX * 100):
        assert total_of_parts(*sum_parts(value)) == value


async def test_a_store_sums_int64_sized_amounts_exactly_in_parts(tmp_path: Path) -> None:
    store = make_resource_store(
        name="kit", collections=[AMOUNTS], migrations=[schema([AMOUNTS])], data_dir=tmp_path, url=None
    )
    await store.open()
    values = [INT64_MAX, INT64_MAX, INT64_MAX * 100, 7]
    try:

        async def insert(txn) -> None:
            for number, value in enumerate(values):
                high, low = sum_parts(value)
                await txn.insert(AMOUNTS, Record(str(number), b"", {"high": high, "low": low}, etag="e"))

        await store.run(insert)
        [group] = await store.aggregate(AMOUNTS, [], sums=("high", "low"))
        assert group.count == 4
        assert total_of_parts(*(int(v) for v in group.sums)) == sum(values)
    finally:
        await store.close()
