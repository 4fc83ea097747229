"""The relay against a real gRPC EventService on loopback: order, retries, restarts, workers, refusals."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from bhiv.integrations.v1 import event_pb2
from bhiv_core.events.outbox import LEASE_ID, OUTBOX, OUTBOX_STATE, publish
from bhiv_core.events.relay import (
    MAX_BATCH,
    DisabledRelay,
    EventServiceSender,
    OutboxRelay,
    outbox_relay,
)
from bhiv_core.resources import ResourceStore, Transaction
from tests.events.conftest import Recorder, drained, ids, integrations, open_sqlite, outbox_events, wait_until
from tests.harness import config_for

TOKEN = "service-token"


async def token() -> str:
    return TOKEN


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[Recorder, grpc.aio.Channel]]:
    found = Recorder()
    async with integrations(found) as address:
        channel = grpc.aio.insecure_channel(address)
        try:
            yield found, channel
        finally:
            await channel.close()


async def publish_many(store: ResourceStore, count: int, start: int = 0) -> list[str]:
    """Publishes ``count`` events, one transaction each; returns their ids in commit order."""
    published = []
    for n in range(start, start + count):

        async def step(txn: Transaction, n: int = n) -> event_pb2.Event:
            payload = event_pb2.ShipmentStatusChangedEvent(shipment=f"shipments/s{n}", status="SHIPPED")
            return await publish(txn, payload, source="logistics", subject=f"shipments/s{n}", time=n)

        published.append((await store.run(step)).id)
    return published


def relay_of(store: ResourceStore, channel: grpc.aio.Channel, **options: object) -> OutboxRelay:
    options.setdefault("max_backoff_seconds", 0.05)
    options.setdefault("rng", lambda: 0.0)
    return OutboxRelay(
        store,
        EventServiceSender(lambda: channel, token),
        service="logistics",
        **options,  # type: ignore[arg-type]
    )


async def test_the_relay_delivers_the_outbox_in_commit_order_in_batches_and_empties_it(
    store: ResourceStore, recorder: tuple[Recorder, grpc.aio.Channel]
) -> None:
    found, channel = recorder
    published = await publish_many(store, 2 * MAX_BATCH + 30)
    relay = relay_of(store, channel)
    await relay.start()
    try:
        await wait_until(lambda: drained(store))
    finally:
        await relay.stop()
    assert ids(found.events) == published
    assert [len(b) for b in found.batches] == [MAX_BATCH, MAX_BATCH, 30]
    assert set(found.tokens) == {f"Bearer {TOKEN}"}
    assert await outbox_events(store) == []


async def test_a_publish_wakes_the_relay_without_waiting_for_the_poll(
    store: ResourceStore, recorder: tuple[Recorder, grpc.aio.Channel]
) -> None:
    found, channel = recorder
    relay = relay_of(store, channel, poll_seconds=3600.0)  # only a wake-up can make it send
    await relay.start()
    try:
        await wait_until(lambda: found.calls == 0 and relay._task is not None)
        published = await publish_many(store, 1)
        await wait_until(lambda: drained(store))
        published += await publish_many(store, 2, start=1)
        await wait_until(lambda: drained(store))
    finally:
        await relay.stop()
    assert ids(found.events) == published


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNIMPLEMENTED])
async def test_failed_sends_are_retried_until_accepted_without_loss_or_reordering(
    store: ResourceStore, recorder: tuple[Recorder, grpc.aio.Channel], code: grpc.StatusCode
) -> None:
    found, channel = recorder
    found.failures = [code, code, code]
    published = await publish_many(store, 5)
    relay = relay_of(store, channel)
    await relay.start()
    try:
        await wait_until(lambda: drained(store))
    finally:
        await relay.stop()
    assert found.calls == 4  # three refusals, then the same batch accepted
    assert ids(found.events) == published
    assert await outbox_events(store) == []


async def test_events_wait_while_integrations_is_down_and_a_new_relay_sends_them(tmp_path: Path) -> None:
    store = open_sqlite(tmp_path / "svc.db")
    await store.open()
    down = grpc.aio.insecure_channel("127.0.0.1:9")  # nothing listens on the discard port
    first = relay_of(store, down)
    await first.start()
    try:
        published = await publish_many(store, 7)
        await wait_until(lambda: first.failures >= 2)
    finally:
        await first.stop()
        await down.close()
    assert ids(await outbox_events(store)) == published
    await store.close()

    # The service restarts: a new process, a new store connection and a new relay.
    store = open_sqlite(tmp_path / "svc.db")
    await store.open()
    found = Recorder()
    try:
        async with integrations(found) as address:
            channel = grpc.aio.insecure_channel(address)
            second = relay_of(store, channel)
            await second.start()
            try:
                await wait_until(lambda: drained(store))
            finally:
                await second.stop()
                await channel.close()
        assert ids(found.events) == published
        assert await outbox_events(store) == []
    finally:
        await store.close()


async def test_a_dead_relay_s_lease_blocks_others_until_it_expires(
    store: ResourceStore, recorder: tuple[Recorder, grpc.aio.Channel]
) -> None:
    found, channel = recorder
    # A relay that claimed the outbox and died (SIGKILL): its lease stays in the store.
    down = grpc.aio.insecure_channel("127.0.0.1:9")
    dead = relay_of(store, down)
    published = await publish_many(store, 3)
    with pytest.raises(grpc.aio.AioRpcError):
        await dead.relay_pending()
    await down.close()
    lease = await store.get(OUTBOX_STATE, LEASE_ID)
    assert lease is not None and lease.value("holder") == dead.holder

    waiting = relay_of(store, channel)
    assert await waiting.relay_pending() == 0  # the lease is live: nothing sent twice
    assert found.calls == 0

    later = relay_of(store, channel, clock=lambda: time.time() + 2 * 60.0 + 1)
    assert await later.relay_pending() == 3
    assert ids(found.events) == published


async def test_two_workers_relays_send_each_event_once_in_order(
    tmp_path: Path, recorder: tuple[Recorder, grpc.aio.Channel]
) -> None:
    found, channel = recorder
    # Two worker processes of one service: two connections to one store file, a relay each.
    one, two = open_sqlite(tmp_path / "svc.db"), open_sqlite(tmp_path / "svc.db")
    await one.open()
    await two.open()
    relays = [relay_of(one, channel, poll_seconds=0.01), relay_of(two, channel, poll_seconds=0.01)]
    try:
        for relay in relays:
            await relay.start()
        published = []
        for round in range(10):
            published += await publish_many(one, 15, start=100 * round)
            published += await publish_many(two, 15, start=100 * round + 50)
        await wait_until(lambda: drained(one))
        for relay in relays:
            await relay.stop()
    finally:
        await one.close()
        await two.close()
    assert ids(found.events) == published  # once each, in commit order across both writers


async def test_an_event_integrations_refuses_alone_is_marked_rejected_and_the_rest_go_on(
    store: ResourceStore, recorder: tuple[Recorder, grpc.aio.Channel]
) -> None:
    found, channel = recorder
    published = await publish_many(store, 4)
    found.refuse = {published[1]}
    relay = relay_of(store, channel)
    assert await relay.relay_pending() == 4
    assert ids(found.events) == [published[0], published[2], published[3]]
    left = await store.find(OUTBOX, [], after=None, limit=10)
    assert [(r.id, r.value("rejected")) for r in left] == [(published[1], True)]
    assert await relay.relay_pending() == 0  # a rejected event is not sent again
    assert found.calls == 1 + 4  # the batch, then each event alone


def test_the_backoff_doubles_with_jitter_up_to_its_cap(tmp_path: Path) -> None:
    store = open_sqlite(tmp_path / "svc.db")
    low = OutboxRelay(store, EventServiceSender(lambda: None, token), service="x", rng=lambda: 0.0)  # type: ignore[arg-type,return-value]
    high = OutboxRelay(store, EventServiceSender(lambda: None, token), service="x", rng=lambda: 0.999)  # type: ignore[arg-type,return-value]
    assert [low.backoff(n) for n in (1, 2, 3)] == [0.25, 0.5, 1.0]
    assert all(low.backoff(n) < high.backoff(n) <= 0.5 * 2 ** (n - 1) for n in (1, 2, 3))
    assert high.backoff(100) <= 30.0
    assert low.backoff(100) == 15.0


async def test_the_relay_setting_turns_it_off(tmp_path: Path) -> None:
    store = open_sqlite(tmp_path / "svc.db")
    off = outbox_relay(config_for("crm", DATA_DIR=str(tmp_path), EVENTS_RELAY="off"), store)
    assert isinstance(off, DisabledRelay)
    on = outbox_relay(config_for("crm", DATA_DIR=str(tmp_path)), store)
    assert isinstance(on, OutboxRelay)
    await on.stop()
