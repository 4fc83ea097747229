"""The resource store contract: every backend passes it (SQLite always, MongoDB when configured)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bhiv_core.resources import (
    Cmp,
    Contains,
    Eq,
    FieldLe,
    Group,
    HasItem,
    In,
    Receipt,
    Record,
    ResourceStore,
    Transaction,
    UniqueViolation,
)
from tests.resources.conftest import EVENTS, ITEMS


def item(id: str, sku: str, **fields: Any) -> Record:
    values: dict[str, Any] = {"sku": sku, "category": "", "quantity": 0, "reorder_level": 0}
    values.update(fields)
    owner = values.pop("owner", "")
    return Record(id=id, data=f"data of {id}".encode(), fields=values, owner=owner, etag=f"etag-{id}")


async def insert(store: ResourceStore, *records: Record) -> None:
    async def step(txn: Transaction) -> None:
        for record in records:
            await txn.insert(ITEMS, record)

    await store.run(step)


async def ids(store: ResourceStore, *filters: Any, limit: int = 100) -> list[str]:
    return [r.id for r in await store.find(ITEMS, list(filters), after=None, limit=limit)]


async def test_a_record_reads_back_exactly_with_every_kind_of_field(store: ResourceStore) -> None:
    text = "O'Brien; DROP TABLE items; -- नमस्ते 🚚 \x00 end"
    record = Record(
        id="a1",
        data=bytes(range(256)),
        fields={
            "sku": text,
            "category": "tools",
            "quantity": 2**62,
            "reorder_level": -3,
            "price": 0.1,
            "active": True,
            "tags": ["vip", "नमस्ते"],
            "search": "",
        },
        owner="customers/c1",
        etag="e1",
    )
    await insert(store, record)
    assert await store.get(ITEMS, "a1") == record
    assert await store.get(ITEMS, "missing") is None


async def test_fields_left_out_read_back_as_their_kinds_zero(store: ResourceStore) -> None:
    await insert(store, Record(id="z", data=b"", fields={"sku": "z"}, etag="e"))
    got = await store.get(ITEMS, "z")
    assert got is not None
    assert dict(got.fields) == {
        "sku": "z",
        "category": "",
        "quantity": 0,
        "reorder_level": 0,
        "price": 0.0,
        "active": False,
        "tags": [],
        "search": "",
    }


async def test_a_unique_key_clash_is_a_unique_violation_naming_the_key(store: ResourceStore) -> None:
    await insert(store, item("a", "SKU-1"))
    with pytest.raises(UniqueViolation) as caught:
        await insert(store, item("b", "SKU-1"))
    assert caught.value.fields == ("sku",)
    with pytest.raises(UniqueViolation) as caught_id:
        await insert(store, item("a", "SKU-2"))
    assert caught_id.value.fields == ("id",)
    assert await ids(store) == ["a"]


async def test_a_failing_transaction_writes_nothing(store: ResourceStore) -> None:
    async def step(txn: Transaction) -> None:
        await txn.insert(ITEMS, item("a", "A"))
        await txn.insert(ITEMS, item("b", "B"))
        raise RuntimeError("the third step fails")

    with pytest.raises(RuntimeError):
        await store.run(step)
    assert await ids(store) == []


async def test_a_unique_clash_in_the_middle_rolls_back_the_earlier_writes(store: ResourceStore) -> None:
    await insert(store, item("taken", "TAKEN"))
    with pytest.raises(UniqueViolation):
        await insert(store, item("a", "A"), item("b", "TAKEN"))
    assert await ids(store) == ["taken"]


async def test_replace_and_delete_are_conditional_on_the_etag(store: ResourceStore) -> None:
    await insert(store, item("a", "A", quantity=1))
    changed = Record(id="a", data=b"v2", fields={"sku": "A", "quantity": 2}, etag="v2")

    async def replace(expected: str) -> bool:
        return await store.run(lambda txn: txn.replace(ITEMS, changed, expected_etag=expected))

    assert await replace("stale") is False
    assert (await store.get(ITEMS, "a")).fields["quantity"] == 1  # type: ignore[union-attr]
    assert await replace("etag-a") is True
    got = await store.get(ITEMS, "a")
    assert got is not None and got.etag == "v2" and got.data == b"v2" and got.fields["quantity"] == 2
    assert await store.run(lambda txn: txn.delete(ITEMS, "a", expected_etag="etag-a")) is False
    assert await store.run(lambda txn: txn.delete(ITEMS, "a", expected_etag="v2")) is True
    assert await store.get(ITEMS, "a") is None
    assert await store.run(lambda txn: txn.replace(ITEMS, changed, expected_etag="v2")) is False


async def test_a_replace_onto_a_taken_unique_key_is_refused(store: ResourceStore) -> None:
    await insert(store, item("a", "A"), item("b", "B"))
    clash = Record(id="b", data=b"", fields={"sku": "A"}, etag="x")
    with pytest.raises(UniqueViolation):
        await store.run(lambda txn: txn.replace(ITEMS, clash, expected_etag="etag-b"))
    assert (await store.get(ITEMS, "b")).fields["sku"] == "B"  # type: ignore[union-attr]


async def test_filters_select_exactly_the_matching_records(store: ResourceStore) -> None:
    await insert(
        store,
        item("a", "A", category="tools", quantity=5, reorder_level=10, tags=["x"], search="o'brien\x1fada"),
        item("b", "B", category="tools", quantity=20, reorder_level=10, active=True, owner="customers/1"),
        item("c", "C", category="food", quantity=10, reorder_level=10, tags=["x", "y"], search="drop by"),
    )
    assert await ids(store, Eq("category", "tools")) == ["a", "b"]
    assert await ids(store, Eq("active", True)) == ["b"]
    assert await ids(store, In("sku", ("A", "C"))) == ["a", "c"]
    assert await ids(store, In("sku", ())) == []
    assert await ids(store, Cmp("quantity", ">=", 10)) == ["b", "c"]
    assert await ids(store, Cmp("quantity", "<", 10)) == ["a"]
    assert await ids(store, FieldLe("quantity", "reorder_level")) == ["a", "c"]
    assert await ids(store, Contains("search", "'bri")) == ["a"]
    assert await ids(store, Contains("search", "%")) == []  # no pattern characters
    assert await ids(store, Contains("search", ".")) == []
    assert await ids(store, HasItem("tags", "x")) == ["a", "c"]
    assert await ids(store, HasItem("tags", "y"), Eq("category", "food")) == ["c"]
    assert await ids(store, Eq("owner", "customers/1")) == ["b"]
    assert await store.count(ITEMS, [Eq("category", "tools")]) == 2
    assert await store.run(lambda txn: txn.count(ITEMS, [HasItem("tags", "x")])) == 2


async def test_pages_continue_after_the_key_and_inserts_between_pages_do_not_repeat_or_skip(
    store: ResourceStore,
) -> None:
    await insert(store, *(item(f"id{n}", f"S{n:02d}") for n in range(0, 20, 2)))
    first = await store.find(ITEMS, [], after=None, limit=4)
    assert [r.id for r in first] == ["id0", "id2", "id4", "id6"]
    # Records inserted before and after the cut while the caller pages.
    await insert(store, item("early", "S01"), item("late", "S07"))
    last = first[-1]
    rest = await store.find(ITEMS, [], after=[last.fields["sku"], last.id], limit=100)
    assert [r.id for r in rest] == ["late", "id8", "id10", "id12", "id14", "id16", "id18"]


async def test_ties_in_the_order_are_broken_by_id(store: ResourceStore) -> None:
    async def step(txn: Transaction) -> None:
        for n, id in enumerate(["c", "a", "b"]):
            await txn.insert(
                EVENTS, Record(id=id, data=b"", fields={"time": 5.0 if n else 9.0, "kind": "k"}, etag="e")
            )

    await store.run(step)
    newest = await store.find(EVENTS, [], after=None, limit=10)
    assert [r.id for r in newest] == ["c", "b", "a"]
    after_b = await store.find(EVENTS, [], after=[5.0, "b"], limit=10)
    assert [r.id for r in after_b] == ["a"]


async def test_aggregates_count_and_sum_per_group_in_the_store(store: ResourceStore) -> None:
    await insert(
        store,
        item("a", "A", category="tools", quantity=5, price=1.25),
        item("b", "B", category="tools", quantity=7, price=2.5),
        item("c", "C", category="food", quantity=1, price=0.5, active=True),
    )
    groups = await store.aggregate(ITEMS, [], group_by="category", sums=("quantity", "price"))
    assert groups == [Group("food", 1, (1, 0.5)), Group("tools", 2, (12, 3.75))]
    assert all(isinstance(g.sums[0], int) for g in groups)
    assert await store.aggregate(ITEMS, [Eq("active", True)], sums=("quantity",)) == [Group(None, 1, (1,))]
    assert await store.aggregate(ITEMS, [Eq("sku", "none")], group_by="category") == []
    by_flag = await store.aggregate(ITEMS, [], group_by="active")
    assert by_flag == [Group(False, 2, ()), Group(True, 1, ())]


async def test_receipts_are_recalled_within_their_transaction_and_pruned_by_age(store: ResourceStore) -> None:
    receipt = Receipt(b"hash", b"response", 100.0)
    await store.run(lambda txn: txn.remember("Create:users/a", "r1", receipt))
    assert await store.run(lambda txn: txn.recall("Create:users/a", "r1")) == receipt
    assert await store.run(lambda txn: txn.recall("Create:users/b", "r1")) is None

    async def remember_then_fail(txn: Transaction) -> None:
        await txn.remember("Create:users/a", "r2", receipt)
        raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        await store.run(remember_then_fail)
    assert await store.run(lambda txn: txn.recall("Create:users/a", "r2")) is None
    assert await store.prune_receipts(before=50.0) == 0
    assert await store.prune_receipts(before=150.0) == 1
    assert await store.run(lambda txn: txn.recall("Create:users/a", "r1")) is None


async def test_concurrent_read_modify_write_transactions_lose_no_update(store: ResourceStore) -> None:
    await insert(store, item("counter", "C", quantity=0))

    async def increment(txn: Transaction) -> None:
        current = await txn.get(ITEMS, "counter")
        assert current is not None
        await asyncio.sleep(0)  # let the other transactions run if the store allowed it
        bumped = Record(
            id="counter",
            data=b"",
            fields={**current.fields, "quantity": int(current.fields["quantity"]) + 1},  # type: ignore[arg-type]
            etag=f"v{int(current.fields['quantity']) + 1}",  # type: ignore[arg-type]
        )
        assert await txn.replace(ITEMS, bumped, expected_etag=current.etag)

    await asyncio.gather(*(store.run(increment) for _ in range(25)))
    got = await store.get(ITEMS, "counter")
    assert got is not None and got.fields["quantity"] == 25
