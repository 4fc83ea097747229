"""The webhook delivery engine: durable deliveries, claims with leases, retries, per-webhook limits.

Every delivery is a record in the store before anything is sent (queued by PublishEvents in the
same transaction that accepts the event), and every delivery with an attempt still to make has an
entry in ``delivery_queue`` (:mod:`.resources`). The engine's loop:

1. **Finds due work per webhook**: one aggregate over the queue (entries due now, grouped by
   webhook), then, for each active webhook with free slots, its oldest due entries. A webhook
   whose slots are all taken is skipped, so a receiver that hangs holds only its own
   ``max_concurrent_deliveries`` (0 → 4) slots and never delays another webhook's deliveries;
   ``BHIV_WEBHOOK_CONCURRENCY`` bounds the attempts in flight in the process over all webhooks,
   and webhooks are visited in turn so one busy webhook cannot take every global slot each round.
2. **Claims** an entry in a transaction: still due, and fewer of the webhook's entries under a
   live lease than its limit (counted in the store, so the limit holds across every process
   sharing it). The claim moves the entry's ``due`` and ``lease`` to the end of the lease
   (twice the attempt timeout plus 10 s): a process killed mid-attempt leaves an entry that falls
   due again when the lease runs out, and the delivery is retried; a process that stops cleanly
   gives its claims back at once.
3. **Attempts** it: an HTTP POST of the stored body through the SSRF-safe
   :class:`~bhiv_core.outbound.http.OutboundClient` (the allowlist and the address checks at
   connect time; no redirects followed: a 3xx is a failed attempt; ``BHIV_WEBHOOK_TIMEOUT_SECONDS``
   for the whole attempt; at most 512 bytes of the answer read), signed afresh at each attempt
   (``X-BHIV-Signature: t=<now>,v1=…``).
4. **Records** it, if the claim is still its own: the attempt appended to ``attempt_log`` (the
   last 20 kept), ``attempts``, ``last_response_code``, ``last_error``, ``update_time``; 2xx →
   SUCCEEDED; otherwise RETRYING with ``next_attempt_time`` after
   :func:`~bhiv_core.outbound.backoff.retry_delay` (``BHIV_WEBHOOK_BACKOFF_SECONDS`` doubling to
   ``BHIV_WEBHOOK_BACKOFF_MAX_SECONDS``, jittered), or FAILED (dead letter) after the delivery's
   last attempt (``BHIV_WEBHOOK_MAX_ATTEMPTS``). Finished deliveries leave the queue.

The loop wakes when this process queues work (PublishEvents, RedeliverDelivery) or an attempt
ends, and polls every ``BHIV_WEBHOOK_POLL_SECONDS`` for work it was not told about (another
process's, or a lease that ran out).

Guarantees: **at least once** — a delivery is never dropped before a 2xx or its last attempt, but
a process killed after the receiver answered and before the result was recorded sends it again
(with the same ``X-BHIV-Event-Id``; receivers dedupe on it). **Order** is not guaranteed: a
webhook's due deliveries are claimed oldest due first, but up to its limit run at once and a
failed one is retried later, after newer ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from google.protobuf.duration_pb2 import Duration

from bhiv.integrations.v1 import event_pb2, webhook_pb2
from bhiv_core.outbound.backoff import retry_delay
from bhiv_core.outbound.http import OutboundClient, OutboundError
from bhiv_core.outbound.signatures import SIGNATURE_HEADER, sign
from bhiv_core.resources import Cmp, Eq, Filter, Record, ResourceStore, Transaction, new_etag, new_id
from bhiv_core.runtime.times import seconds_of, to_timestamp
from bhiv_core.services.integrations.webhooks.config import WebhookConfig
from bhiv_core.services.integrations.webhooks.resources import DELIVERIES, EVENTS, QUEUE, WEBHOOK, WEBHOOKS
from bhiv_core.storage.sealing import SecretBox

__all__ = [
    "ATTEMPT_LOG_SIZE",
    "DEFAULT_CONCURRENCY",
    "EVENT_RETENTION_SECONDS",
    "EXCERPT_BYTES",
    "PARKED",
    "Attempt",
    "DeliveryEngine",
    "delivery_record",
    "new_delivery",
    "open_secret",
    "park_queue",
    "queue_entry",
]

log = logging.getLogger(__name__)

ATTEMPT_LOG_SIZE = 20
"""How many attempts a delivery's ``attempt_log`` keeps (the most recent)."""
EXCERPT_BYTES = 512
"""How much of a response body is read and kept."""
DEFAULT_CONCURRENCY = 4
"""A webhook's in-flight limit when its ``max_concurrent_deliveries`` is 0."""
ERROR_CHARS = 1000
EVENT_RETENTION_SECONDS = 7 * 24 * 3600.0
"""How long an accepted event id is remembered for dedup: far longer than any relay retries a batch."""
PARKED = 1e18
"""The ``due`` of the queue entries of an inactive webhook: never due until it is reactivated."""
_DRAIN = 500
_PRUNE_EVERY_SECONDS = 3600.0
_UNSEALABLE = "the signing secret does not open with BHIV_INTEGRATIONS_KEK_FILE: nothing was sent"

Delivery = webhook_pb2.Delivery
_PENDING = webhook_pb2.DELIVERY_STATUS_PENDING
_SUCCEEDED = webhook_pb2.DELIVERY_STATUS_SUCCEEDED
_FAILED = webhook_pb2.DELIVERY_STATUS_FAILED
_RETRYING = webhook_pb2.DELIVERY_STATUS_RETRYING


@dataclass(frozen=True, slots=True)
class Attempt:
    """One HTTP attempt's outcome.

    Attributes:
        start: When it started (Unix seconds).
        latency: Seconds from sending to the end of the answer, or to the failure.
        response_code: The HTTP status, 0 when none was received.
        excerpt: The first :data:`EXCERPT_BYTES` of the answer, decoded with replacements.
        error: Why it failed, empty on a 2xx.

    """

    start: float
    latency: float
    response_code: int
    excerpt: str
    error: str

    @property
    def ok(self) -> bool:
        """True for a 2xx answer."""
        return not self.error


def open_secret(record: Record, box: SecretBox) -> bytes:
    """The signing secret sealed in a webhook record."""
    return box.open(str(record.value("sealed")), WEBHOOK.load(record).name)


def new_delivery(webhook: str, event: event_pb2.Event, body: bytes, now: float) -> Delivery:
    """A PENDING delivery of ``event`` (whose webhook body is ``body``) to ``webhook``."""
    delivery = Delivery(
        name=f"{webhook}/deliveries/{new_id()}",
        event_type=event.type,
        status=_PENDING,
        event_id=event.id,
        create_time=to_timestamp(now),
        update_time=to_timestamp(now),
        next_attempt_time=to_timestamp(now),
    )
    delivery.payload.update(json.loads(body))
    return delivery


def delivery_record(delivery: Delivery, *, body: str, budget: int) -> Record:
    """The stored form of a delivery (a new etag on every write guards claims and updates)."""
    webhook_id, _, id = delivery.name.removeprefix("webhooks/").partition("/deliveries/")
    return Record(
        id=id,
        data=delivery.SerializeToString(deterministic=True),
        fields={
            "created": seconds_of(delivery.create_time),
            "webhook": webhook_id,
            "status": int(delivery.status),
            "body": body,
            "budget": budget,
        },
        etag=new_etag(),
    )


def queue_entry(id: str, webhook_id: str, due: float) -> Record:
    """The queue entry of a delivery that has an attempt to make at ``due``."""
    return Record(id=id, data=b"", fields={"webhook": webhook_id, "due": due, "lease": 0.0}, etag=new_etag())


def _cut(text: str) -> str:
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 1] + "…"


class DeliveryEngine:
    """Delivers queued webhook deliveries (see the module docstring) and sends test events.

    Args:
        store: Integrations' kit store.
        box: Opens the webhooks' sealed signing secrets.
        client: The SSRF-safe outbound HTTP client.
        config: Attempts, backoff, timeouts, concurrency.
        clock: Unix seconds now.
        jitter: Returns a number in [0, 1) (tests pin it).

    """

    def __init__(
        self,
        store: ResourceStore,
        box: SecretBox,
        client: OutboundClient,
        config: WebhookConfig,
        *,
        clock: Callable[[], float] = time.time,
        jitter: Callable[[], float] = random.random,
    ):
        self._store = store
        self._box = box
        self._client = client
        self._config = config
        self._clock = clock
        self._jitter = jitter
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._inflight: dict[asyncio.Task[None], Record] = {}
        self._per_webhook: dict[str, int] = {}
        self._turn = 0

    @property
    def config(self) -> WebhookConfig:
        """The delivery settings."""
        return self._config

    def wake(self) -> None:
        """Tells the loop that work was queued (it also polls, for work of other processes)."""
        self._wake.set()

    # One attempt.

    async def post(self, url: str, secret: bytes, delivery: Delivery, body: bytes) -> Attempt:
        """POSTs ``body`` to ``url`` once, signed now; a failure is an :class:`Attempt`, not an error."""
        start = self._clock()
        began = time.monotonic()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "BHIV-Webhooks/1",
            "X-BHIV-Event": delivery.event_type,
            "X-BHIV-Event-Id": delivery.event_id,
            "X-BHIV-Delivery": delivery.name,
            SIGNATURE_HEADER: sign(secret, int(self._clock()), body),
        }
        try:
            response = await self._client.request(
                "POST",
                url,
                headers=headers,
                body=body,
                timeout=self._config.timeout_seconds,
                max_redirects=0,
                max_response_bytes=EXCERPT_BYTES,
            )
        except OutboundError as exc:  # refused, timeout, unreachable: the message names no secret
            return Attempt(start, time.monotonic() - began, 0, "", _cut(str(exc)))
        except Exception as exc:  # a bug must not kill the loop; the delivery is retried
            log.exception("webhook attempt failed unexpectedly", extra={"delivery": delivery.name})
            return Attempt(start, time.monotonic() - began, 0, "", f"internal error ({type(exc).__name__})")
        code = response.status
        excerpt = response.body[:EXCERPT_BYTES].decode("utf-8", "replace")
        error = ""
        if not 200 <= code < 300:
            error = f"HTTP {code}" + (" (redirects are not followed)" if 300 <= code < 400 else "")
        return Attempt(start, time.monotonic() - began, code, excerpt, error)

    def apply(self, delivery: Delivery, attempt: Attempt, *, budget: int, now: float) -> None:
        """Records ``attempt`` on ``delivery`` and moves it to its next status."""
        delivery.attempts += 1
        entry = delivery.attempt_log.add(
            number=delivery.attempts,
            start_time=to_timestamp(attempt.start),
            response_code=attempt.response_code,
            response_excerpt=attempt.excerpt,
            error=attempt.error,
        )
        latency = Duration()
        latency.FromNanoseconds(int(max(attempt.latency, 0.0) * 1e9))
        entry.latency.CopyFrom(latency)
        if len(delivery.attempt_log) > ATTEMPT_LOG_SIZE:
            del delivery.attempt_log[: len(delivery.attempt_log) - ATTEMPT_LOG_SIZE]
        delivery.last_response_code = attempt.response_code
        delivery.last_error = attempt.error
        delivery.update_time.CopyFrom(to_timestamp(now))
        delivery.ClearField("next_attempt_time")
        if attempt.ok:
            delivery.status = _SUCCEEDED
        elif delivery.attempts >= budget:
            delivery.status = _FAILED
        else:
            delivery.status = _RETRYING
            # The exponent counts from the last (re)delivery, so a redelivered one starts fast again.
            failed = delivery.attempts - (budget - self._config.max_attempts)
            wait = retry_delay(
                failed, self._config.backoff_seconds, self._config.backoff_max_seconds, self._jitter()
            )
            delivery.next_attempt_time.CopyFrom(to_timestamp(now + wait))

    # The loop.

    async def run_round(self) -> float | None:
        """Claims and starts attempts for the due deliveries there is room for.

        Returns:
            When the next queued delivery falls due (None when none is waiting for a time).

        """
        now = self._clock()
        room = self._config.concurrency - len(self._inflight)
        if room > 0:
            groups = await self._store.aggregate(QUEUE, [Cmp("due", "<=", now)], group_by="webhook")
            if groups:
                self._turn = (self._turn + 1) % len(groups)
                groups = groups[self._turn :] + groups[: self._turn]
            for group in groups:
                if room <= 0:
                    break
                room -= await self._start_webhook(str(group.key), room, now)
        upcoming = await self._store.find(QUEUE, [Cmp("due", ">", now)], after=None, limit=1)
        return _number(upcoming[0], "due") if upcoming else None

    async def _start_webhook(self, webhook_id: str, room: int, now: float) -> int:
        """Claims up to ``room`` due deliveries of one webhook; returns how many it started."""
        record = await self._store.get(WEBHOOKS, webhook_id)
        if record is None:  # deleted while a delivery was being queued: drop its leftovers
            await self._store.run(lambda txn: _drop_queue(txn, webhook_id))
            return 0
        webhook = WEBHOOK.load(record)
        if not webhook.active:  # queued while it was being deactivated: park it with the rest
            await self._store.run(lambda txn: park_queue(txn, webhook_id, active=False, now=now))
            return 0
        limit = webhook.max_concurrent_deliveries or DEFAULT_CONCURRENCY
        free = min(room, limit - self._per_webhook.get(webhook_id, 0))
        if free <= 0:
            return 0
        due: list[Filter] = [Eq("webhook", webhook_id), Cmp("due", "<=", now)]
        started = 0
        for entry in await self._store.find(QUEUE, due, after=None, limit=free):
            claimed = await self._claim(entry.id, webhook_id, limit, now)
            if claimed is None:
                continue
            task = asyncio.create_task(self._deliver(claimed, record))
            self._inflight[task] = claimed
            self._per_webhook[webhook_id] = self._per_webhook.get(webhook_id, 0) + 1
            task.add_done_callback(self._finished)
            started += 1
        return started

    def _finished(self, task: asyncio.Task[None]) -> None:
        entry = self._inflight.pop(task, None)
        if entry is not None:
            webhook_id = str(entry.value("webhook"))
            left = self._per_webhook.get(webhook_id, 1) - 1
            if left > 0:
                self._per_webhook[webhook_id] = left
            else:
                self._per_webhook.pop(webhook_id, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("webhook delivery task failed", exc_info=task.exception())
        self._wake.set()

    async def _claim(self, id: str, webhook_id: str, limit: int, now: float) -> Record | None:
        until = now + self._config.lease_seconds

        async def claim(txn: Transaction) -> Record | None:
            entry = await txn.get(QUEUE, id)
            if entry is None or _number(entry, "due") > now:
                return None
            busy = await txn.count(QUEUE, [Eq("webhook", webhook_id), Cmp("lease", ">", now)])
            if busy >= limit:  # other processes hold this webhook's slots
                return None
            taken = dataclasses.replace(
                entry, fields={**entry.fields, "due": until, "lease": until}, etag=new_etag()
            )
            return taken if await txn.replace(QUEUE, taken, expected_etag=entry.etag) else None

        return await self._store.run(claim)

    async def _deliver(self, claim: Record, webhook_record: Record) -> None:
        record = await self._store.get(DELIVERIES, claim.id)
        if record is None:
            await self._store.run(lambda txn: _release(txn, claim, delete=True))
            return
        delivery = Delivery.FromString(record.data)
        webhook = WEBHOOK.load(webhook_record)
        try:
            secret = open_secret(webhook_record, self._box)
        except ValueError:  # another key file than the one that sealed it: nothing can be signed
            log.error("a webhook's signing secret does not open", extra={"webhook": webhook.name})
            attempt = Attempt(self._clock(), 0.0, 0, "", _UNSEALABLE)
        else:
            body = str(record.value("body")).encode()
            attempt = await self.post(webhook.target_url, secret, delivery, body)
        if not attempt.ok:
            log.warning(
                "webhook delivery attempt failed",
                extra={"delivery": delivery.name, "attempts": delivery.attempts + 1, "error": attempt.error},
            )

        async def record_attempt(txn: Transaction) -> None:
            entry = await txn.get(QUEUE, claim.id)
            if entry is None or entry.etag != claim.etag:
                return  # deleted, or the lease ran out and another process took it: its result stands
            current = await txn.get(DELIVERIES, claim.id)
            if current is None:
                await txn.delete(QUEUE, claim.id, expected_etag=claim.etag)
                return
            updated = Delivery.FromString(current.data)
            budget = int(_number(current, "budget"))
            now = self._clock()
            self.apply(updated, attempt, budget=budget, now=now)
            body = str(current.value("body"))
            await txn.replace(
                DELIVERIES, delivery_record(updated, body=body, budget=budget), expected_etag=current.etag
            )
            if updated.status == _RETRYING:
                due = seconds_of(updated.next_attempt_time)
                requeued = dataclasses.replace(
                    entry, fields={**entry.fields, "due": due, "lease": 0.0}, etag=new_etag()
                )
                await txn.replace(QUEUE, requeued, expected_etag=claim.etag)
            else:
                await txn.delete(QUEUE, claim.id, expected_etag=claim.etag)

        await self._store.run(record_attempt)

    async def prune_events(self) -> int:
        """Forgets accepted events older than :data:`EVENT_RETENTION_SECONDS`; returns how many."""
        cutoff = self._clock() - EVENT_RETENTION_SECONDS

        async def prune(txn: Transaction) -> int:
            old = await txn.find(EVENTS, [Cmp("received", "<", cutoff)], limit=_DRAIN)
            for record in old:
                await txn.delete(EVENTS, record.id, expected_etag=record.etag)
            return len(old)

        pruned = 0
        while (batch := await self._store.run(prune)) > 0:
            pruned += batch
            if batch < _DRAIN:
                break
        return pruned

    async def _loop(self) -> None:
        pruned_at = -float("inf")
        while True:
            self._wake.clear()
            next_due: float | None = None
            try:
                if self._clock() - pruned_at >= _PRUNE_EVERY_SECONDS:
                    pruned_at = self._clock()
                    await self.prune_events()
                next_due = await self.run_round()
            except Exception:  # the store is down: health reports it; try again shortly
                log.warning("webhook delivery round failed", exc_info=True)
            wait = self._config.poll_seconds
            if next_due is not None:
                wait = min(wait, max(0.0, next_due - self._clock()))
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=wait)

    async def start(self) -> None:
        """Starts the loop; it resumes whatever the queue holds (an earlier run's work included)."""
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Stops the loop and the attempts in flight, giving their claims back to the queue."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        claims = list(self._inflight.values())
        tasks = list(self._inflight)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for claim in claims:
            with contextlib.suppress(Exception):  # a claim not given back expires with its lease
                await self._store.run(_releaser(claim))


def _number(record: Record, name: str) -> float:
    value = record.value(name)
    return float(value) if isinstance(value, int | float) else 0.0


def _releaser(claim: Record) -> Callable[[Transaction], Awaitable[None]]:
    async def release(txn: Transaction) -> None:
        await _release(txn, claim, delete=False)

    return release


async def _release(txn: Transaction, claim: Record, *, delete: bool) -> None:
    """Gives a claim back (due now) or, with ``delete``, drops its entry; only if still ours."""
    entry = await txn.get(QUEUE, claim.id)
    if entry is None or entry.etag != claim.etag:
        return
    if delete:
        await txn.delete(QUEUE, claim.id, expected_etag=entry.etag)
        return
    released = dataclasses.replace(entry, fields={**entry.fields, "due": 0.0, "lease": 0.0}, etag=new_etag())
    await txn.replace(QUEUE, released, expected_etag=entry.etag)


async def park_queue(txn: Transaction, webhook_id: str, *, active: bool, now: float) -> int:
    """Parks a deactivated webhook's queued deliveries, or makes a reactivated one's due now.

    Parked entries (``due`` = :data:`PARKED`) are never due, so an inactive webhook's backlog costs
    the delivery loop nothing. An entry under a live claim is left alone: its attempt ends by
    requeueing it, and the next round parks it. Returns how many entries changed.
    """
    filters: list[Filter] = [Eq("webhook", webhook_id), Cmp("lease", "<=", now)]
    filters.append(Cmp("due", ">=", PARKED) if active else Cmp("due", "<", PARKED))
    changed = 0
    while entries := await txn.find(QUEUE, filters, limit=_DRAIN):
        for entry in entries:
            fields = {**entry.fields, "due": now if active else PARKED, "lease": 0.0}
            await txn.replace(
                QUEUE, dataclasses.replace(entry, fields=fields, etag=new_etag()), expected_etag=entry.etag
            )
        changed += len(entries)
    return changed


async def _drop_queue(txn: Transaction, webhook_id: str) -> None:
    """Deletes every queue entry of a webhook."""
    while entries := await txn.find(QUEUE, [Eq("webhook", webhook_id)], limit=_DRAIN):
        for entry in entries:
            await txn.delete(QUEUE, entry.id, expected_etag=entry.etag)
