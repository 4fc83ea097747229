"""publish() writes an event in the caller's transaction: it commits or rolls back with the change."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bhiv.integrations.v1 import event_pb2
from bhiv_core.events.catalog import UnknownEventType, payload_of
from bhiv_core.events.outbox import OUTBOX, add_listener, publish, remove_listener
from bhiv_core.resources import Record, ResourceStore, Transaction
from bhiv_core.resources.sqlite import SqliteResourceStore, schema
from tests.events.conftest import THINGS, open_sqlite, outbox_events

PAYLOAD = event_pb2.TicketOpenedEvent(
    ticket="tickets/t1", customer="customers/c1", subject="It broke", priority="TICKET_PRIORITY_HIGH"
)


async def change_and_publish(store: ResourceStore, n: int, *, fail: bool = False) -> event_pb2.Event:
    async def step(txn: Transaction) -> event_pb2.Event:
        await txn.insert(THINGS, Record(id=f"thing{n}", data=b"", fields={"n": n}))
        event = await publish(txn, PAYLOAD, source="crm", subject=f"tickets/t{n}", time=1_700_000_000 + n)
        if fail:
            raise RuntimeError("the change fails after publishing")
        return event

    return await store.run(step)


async def test_a_rolled_back_change_leaves_no_event(store: ResourceStore) -> None:
    with pytest.raises(RuntimeError, match="after publishing"):
        await change_and_publish(store, 1, fail=True)
    assert await store.count(THINGS, []) == 0
    assert await outbox_events(store) == []


async def test_a_committed_change_holds_exactly_its_event(store: ResourceStore) -> None:
    event = await change_and_publish(store, 1)
    stored = await outbox_events(store)
    assert stored == [event]
    (only,) = stored
    assert (only.type, only.source, only.subject, only.time.seconds) == (
        "crm.ticket.opened",
        "crm",
        "tickets/t1",
        1_700_000_001,
    )
    assert payload_of(only) == PAYLOAD


async def test_events_are_numbered_in_commit_order_across_rollbacks(store: ResourceStore) -> None:
    first = await change_and_publish(store, 1)
    with pytest.raises(RuntimeError):
        await change_and_publish(store, 2, fail=True)
    third = await change_and_publish(store, 3)
    records = await store.find(OUTBOX, [], after=None, limit=10)
    assert [r.id for r in records] == [first.id, third.id]
    assert [r.value("seq") for r in records] == [1, 2]


async def test_a_message_that_is_no_event_payload_rolls_the_change_back(store: ResourceStore) -> None:
    async def step(txn: Transaction) -> None:
        await txn.insert(THINGS, Record(id="x", data=b"", fields={"n": 1}))
        await publish(txn, event_pb2.Event(), source="crm", subject="", time=0)

    with pytest.raises(UnknownEventType):
        await store.run(step)
    assert await store.count(THINGS, []) == 0


async def test_publish_wakes_the_listeners(store: ResourceStore) -> None:
    calls: list[int] = []

    def listener() -> None:
        calls.append(1)

    add_listener(listener)
    try:
        await change_and_publish(store, 1)
    finally:
        remove_listener(listener)
    await change_and_publish(store, 2)
    assert calls == [1]


async def test_the_migration_adds_the_outbox_to_an_existing_store(tmp_path: Path) -> None:
    path = tmp_path / "svc.db"
    before = SqliteResourceStore(path, (THINGS,), (schema((THINGS,)),))
    await before.open()
    await before.run(lambda txn: txn.insert(THINGS, Record(id="old", data=b"", fields={"n": 0})))
    await before.close()
    after = open_sqlite(path)
    await after.open()
    try:
        await change_and_publish(after, 1)
        assert len(await outbox_events(after)) == 1
        assert await after.count(THINGS, []) == 2
    finally:
        await after.close()
    with sqlite3.connect(path) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"things", "receipts", "outbox", "outbox_state"} <= tables
