"""The outbox relay: one background task per publishing process sends its outbox to integrations.

:class:`OutboxRelay` reads the service's outbox (:mod:`bhiv_core.events.outbox`) in commit order,
in batches of at most :data:`MAX_BATCH`, and hands each batch to a sender — in a service, an
:class:`EventServiceSender`, which calls ``bhiv.integrations.v1.EventService/PublishEvents``
through the generated stub with a service token carrying ``integrations.events.publish``. What
integrations accepted is deleted; nothing is deleted before that, so an event is sent at least
once, and integrations drops the duplicates a retried batch brings (by event id).

- **Order.** A batch is sent only when the one before it was accepted; on a failure the relay
  waits (exponential backoff with jitter, capped) and sends the same events again, from the
  oldest: never reordered, never skipped.
- **A bad event.** When integrations answers INVALID_ARGUMENT the relay sends the batch's events
  one by one; one that is refused on its own is marked ``rejected`` in the outbox (kept for an
  operator, counted, logged) and the relay goes on with the rest.
- **Several workers.** The worker processes of one service share the store; a lease record
  (``outbox_state/relay``), claimed in the transaction that reads the batch and renewed with each
  batch, lets one relay at a time send, so they do not send the same batch in parallel. A relay
  that stops releases it; one that dies leaves it to expire after :data:`LEASE_SECONDS`.
- **Wake-up.** :func:`~bhiv_core.events.outbox.publish` wakes the relays of its process at once;
  a poll every ``poll_seconds`` catches the events other processes wrote.

Metrics: ``bhiv_outbox_depth{service}`` (events waiting), ``bhiv_outbox_relayed_total{service,
outcome}`` (``sent``, ``rejected``) and ``bhiv_outbox_relay_failures_total{service}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, Protocol

import grpc
from prometheus_client import Counter, Gauge

from bhiv.integrations.v1 import event_pb2, event_service_pb2, event_service_pb2_grpc
from bhiv_core.events.outbox import (
    LEASE_ID,
    OUTBOX,
    OUTBOX_STATE,
    add_listener,
    event_of,
    remove_listener,
)
from bhiv_core.interceptors.tracing import client_interceptors
from bhiv_core.resources import Eq, Record, ResourceStore, Transaction, new_etag
from bhiv_core.runtime.clients import PeerChannels
from bhiv_core.runtime.config import RuntimeConfig
from bhiv_core.runtime.service_credentials import (
    PUBLISH_SCOPE,
    ServiceTokenSource,
    load_service_secret,
    service_secret_path,
)
from bhiv_core.runtime.telemetry import REGISTRY

__all__ = [
    "LEASE_SECONDS",
    "MAX_BATCH",
    "DisabledRelay",
    "EventRefused",
    "EventSender",
    "EventServiceSender",
    "OutboxRelay",
    "outbox_relay",
]

log = logging.getLogger(__name__)

MAX_BATCH: Final = 100
"""The most events one ``PublishEvents`` call carries (the contract's limit)."""

LEASE_SECONDS: Final = 60.0
"""How long a relay's claim on the outbox lasts without a renewal (longer than the longest backoff)."""

MIN_BACKOFF_SECONDS: Final = 0.5
"""The first wait after a failed send; each further failure doubles it, up to the maximum."""

outbox_depth = Gauge(
    "bhiv_outbox_depth",
    "Platform events in the service's outbox waiting for the relay (rejected ones not counted).",
    ("service",),
    registry=REGISTRY,
    multiprocess_mode="livemax",
)
relayed_events = Counter(
    "bhiv_outbox_relayed",
    "Platform events the outbox relay handed to integrations, by outcome (sent, rejected).",
    ("service", "outcome"),
    registry=REGISTRY,
)
relay_failures = Counter(
    "bhiv_outbox_relay_failures",
    "Failed attempts of the outbox relay to send a batch (each is retried after a backoff).",
    ("service",),
    registry=REGISTRY,
)


class EventRefused(Exception):
    """Integrations refused a batch as invalid (INVALID_ARGUMENT): retrying it as is cannot help."""


class EventSender(Protocol):
    """Sends a batch of events; returns when the receiver accepted all of them.

    Raises :class:`EventRefused` when the receiver says the batch is invalid, anything else when
    it could not be sent (the relay retries).
    """

    async def __call__(self, events: Sequence[event_pb2.Event]) -> None:
        """Sends ``events``, in order."""
        ...


class EventServiceSender:
    """Sends batches to integrations' ``EventService/PublishEvents`` with a service token.

    Args:
        channel: Returns the channel to integrations.
        token: Returns a service token carrying ``integrations.events.publish``.
        timeout_seconds: The deadline of each call.

    """

    def __init__(
        self,
        channel: Callable[[], grpc.aio.Channel],
        token: Callable[[], Awaitable[str]],
        *,
        timeout_seconds: float = 10.0,
    ):
        self._channel = channel
        self._token = token
        self._timeout = timeout_seconds

    async def __call__(self, events: Sequence[event_pb2.Event]) -> None:
        """Calls ``PublishEvents``; INVALID_ARGUMENT is :class:`EventRefused`."""
        token = await self._token()
        stub = event_service_pb2_grpc.EventServiceStub(self._channel())
        try:
            await stub.PublishEvents(
                event_service_pb2.PublishEventsRequest(events=events),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise EventRefused(exc.details() or "invalid events") from exc
            raise


class OutboxRelay:
    """Drains one store's outbox to a sender, in commit order, in the background.

    Args:
        store: The publishing service's store (it holds the outbox collections).
        send: Where batches go.
        service: The service's name (metrics, logs).
        batch: The most events per batch, 1 to :data:`MAX_BATCH`.
        poll_seconds: How often the outbox is looked at without a wake-up.
        max_backoff_seconds: The longest wait between two failed attempts.
        lease_seconds: How long a claim on the outbox lasts without a renewal.
        clock: Unix seconds now.
        rng: Returns a float in [0, 1) (the jitter).
        on_stop: Awaited when the relay stopped (closes the channels it was built with).

    """

    def __init__(
        self,
        store: ResourceStore,
        send: EventSender,
        *,
        service: str,
        batch: int = MAX_BATCH,
        poll_seconds: float = 1.0,
        max_backoff_seconds: float = 30.0,
        lease_seconds: float = LEASE_SECONDS,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
        on_stop: Callable[[], Awaitable[None]] | None = None,
    ):
        if not 1 <= batch <= MAX_BATCH:
            raise ValueError(f"a batch holds 1 to {MAX_BATCH} events")
        self._store = store
        self._send = send
        self.service = service
        self._batch = batch
        self._poll = poll_seconds
        self._max_backoff = max_backoff_seconds
        self._lease = max(lease_seconds, 2 * max_backoff_seconds)
        self._clock = clock
        self._rng = rng
        self._on_stop = on_stop
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self.failures = 0
        """Consecutive failed attempts (0 after a success)."""
        self._depth = outbox_depth.labels(service)
        self._sent = relayed_events.labels(service, "sent")
        self._rejected = relayed_events.labels(service, "rejected")
        self._failed = relay_failures.labels(service)

    # Lifecycle (the service definition's on_start / on_stop hooks).

    async def start(self) -> None:
        """Starts the background task (and its wake-up by this process's publishes)."""
        if self._task is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        add_listener(self._notify)
        self._task = asyncio.create_task(self._run(), name=f"outbox-relay-{self.service}")

    async def stop(self) -> None:
        """Stops the task (a send in flight is abandoned: its events stay) and releases the lease."""
        remove_listener(self._notify)
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        with contextlib.suppress(Exception):  # the store may be down: the lease then expires
            await self._store.run(self._release)
        if self._on_stop is not None:
            await self._on_stop()

    def wake(self) -> None:
        """Makes the relay look at the outbox now (call on the relay's loop)."""
        self._wake.set()

    def _notify(self) -> None:
        # Called by publish() inside a transaction, maybe on the store's writer thread.
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._wake.set)

    # The loop.

    async def _run(self) -> None:
        woken = True  # look once at start: events may have waited for this relay
        while True:
            try:
                await self.relay_pending(check_first=not woken)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                self._failed.inc()
                delay = self.backoff(self.failures)
                # Said at the first failure and every 20th after (about every 10 minutes at the cap).
                level = logging.WARNING if self.failures % 20 == 1 else logging.DEBUG
                log.log(
                    level,
                    "relaying the outbox failed; retrying in %.1f s",
                    delay,
                    extra={"service": self.service, "failures": self.failures, "error": str(exc)[:200]},
                )
                await asyncio.sleep(delay)  # wake-ups wait too: retrying faster would not help
                woken = True
                continue
            if self.failures:
                log.info("relaying the outbox works again", extra={"service": self.service})
                self.failures = 0
            woken = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll)
                woken = True

    def backoff(self, failures: int) -> float:
        """The wait after ``failures`` consecutive failures: a capped doubling, its upper half jittered.

        Half the ceiling at least (so a retry never comes at once), spread over the other half so
        the relays of several services that failed together do not retry together.
        """
        ceiling: float = min(self._max_backoff, MIN_BACKOFF_SECONDS * 2.0 ** min(failures - 1, 30))
        return ceiling / 2 + self._rng() * ceiling / 2

    async def relay_pending(self, *, check_first: bool = False) -> int:
        """Sends every pending event, batch by batch; returns how many were accepted or rejected.

        Args:
            check_first: Count the pending events with a plain read first and stop when there
                are none (a poll), instead of opening a write transaction (a wake-up, whose
                event a plain read might not see yet).

        Raises:
            Exception: A batch could not be sent (its events stay; the caller retries).

        """
        done = 0
        if check_first:
            pending = await self._store.count(OUTBOX, [Eq("rejected", False)])
            self._depth.set(pending)
            if not pending:
                return 0
        while True:
            self._wake.clear()
            records = await self._store.run(self._claim)
            if not records:
                break
            done += await self._deliver(records)
            if len(records) < self._batch:
                break
        self._depth.set(await self._store.count(OUTBOX, [Eq("rejected", False)]))
        return done

    async def _claim(self, txn: Transaction) -> list[Record]:
        """The next batch, when this relay holds (or now takes) the lease; else nothing."""
        now = self._clock()
        lease = await txn.get(OUTBOX_STATE, LEASE_ID)
        until = lease.value("until") if lease is not None else 0.0
        held = lease is not None and lease.value("holder") not in ("", self.holder)
        if held and isinstance(until, float) and until > now:
            return []  # another worker's relay sends; this one looks again at the next poll
        records = await txn.find(OUTBOX, [Eq("rejected", False)], limit=self._batch)
        if not records:
            return []
        claim = Record(
            id=LEASE_ID,
            data=b"",
            fields={"value": 0, "holder": self.holder, "until": now + self._lease},
            etag=new_etag(),
        )
        if lease is None:
            await txn.insert(OUTBOX_STATE, claim)
        elif not await txn.replace(OUTBOX_STATE, claim, expected_etag=lease.etag):
            return []
        return records

    async def _release(self, txn: Transaction) -> None:
        lease = await txn.get(OUTBOX_STATE, LEASE_ID)
        if lease is not None and lease.value("holder") == self.holder:
            released = Record(
                id=LEASE_ID, data=b"", fields={"value": 0, "holder": "", "until": 0.0}, etag=new_etag()
            )
            await txn.replace(OUTBOX_STATE, released, expected_etag=lease.etag)

    async def _deliver(self, records: list[Record]) -> int:
        """Sends one batch (one by one after a refusal); deletes or rejects what is settled."""
        try:
            await self._send([event_of(r) for r in records])
        except EventRefused:
            if len(records) == 1:
                await self._settle([], records)
                return 1
            for record in records:  # find the bad one; the good ones before it go through
                await self._deliver([record])
            return len(records)
        await self._settle(records, [])
        return len(records)

    async def _settle(self, accepted: list[Record], rejected: list[Record]) -> None:
        async def settle(txn: Transaction) -> None:
            for record in accepted:
                await txn.delete(OUTBOX, record.id, expected_etag=record.etag)
            for record in rejected:
                marked = Record(
                    id=record.id,
                    data=record.data,
                    fields={**record.fields, "rejected": True},
                    etag=record.etag,
                )
                await txn.replace(OUTBOX, marked, expected_etag=record.etag)

        await self._store.run(settle)
        self._sent.inc(len(accepted))
        if rejected:
            self._rejected.inc(len(rejected))
            for record in rejected:
                log.error(
                    "integrations refused an event as invalid: kept in the outbox, marked rejected",
                    extra={"service": self.service, "event_id": record.id, "type": record.value("type")},
                )


class DisabledRelay:
    """The relay of ``BHIV_EVENTS_RELAY=off``: events stay in the outbox."""

    async def start(self) -> None:
        """Says that the relay is off."""
        log.info("the outbox relay is off (BHIV_EVENTS_RELAY=off): events stay in the outbox")

    async def stop(self) -> None:
        """Nothing to stop."""


def outbox_relay(config: RuntimeConfig, store: ResourceStore) -> OutboxRelay | DisabledRelay:
    """The relay of a publishing service, from its settings; add its ``start``/``stop`` to the hooks.

    It sends to the ``integrations`` peer with a token that identity issues for the deployment's
    service secret (read, or created, now: a bad secret file fails the start) with the scope
    ``integrations.events.publish``. ``BHIV_EVENTS_RELAY=off`` keeps the events in the outbox
    (a deployment whose integrations is not running yet); ``BHIV_EVENTS_RELAY_POLL_SECONDS`` and
    ``BHIV_EVENTS_RELAY_MAX_BACKOFF_SECONDS`` tune the poll and the retries.
    """
    settings = config.settings
    if settings.choice("EVENTS_RELAY", "on", ("on", "off")) == "off":
        return DisabledRelay()
    channels = PeerChannels(config.peers, extra_interceptors=client_interceptors)
    tokens = ServiceTokenSource(
        config.service,
        load_service_secret(service_secret_path(config)),
        lambda: channels.channel("identity"),
        scopes=(PUBLISH_SCOPE,),
    )
    sender = EventServiceSender(lambda: channels.channel("integrations"), tokens)
    return OutboxRelay(
        store,
        sender,
        service=config.service,
        poll_seconds=settings.positive_float("EVENTS_RELAY_POLL_SECONDS", 1.0),
        max_backoff_seconds=settings.positive_float("EVENTS_RELAY_MAX_BACKOFF_SECONDS", 30.0),
        on_stop=channels.close,
    )
