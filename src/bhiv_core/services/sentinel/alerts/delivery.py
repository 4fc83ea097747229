"""Raising and delivering alerts: deduplication, a per-channel rate limit, retries with backoff.

:meth:`AlertDispatcher.raise_alert` is the internal API of the response policy. In one store
transaction it reads the enabled channels whose minimum severity the alert meets and, for each,
either records a PENDING alert (due now) or drops it: a **duplicate** when an alert with the same
dedup key went to that channel within ``BHIV_ALERT_DEDUP_SECONDS``, **rate-limited** when the
channel already got ``BHIV_ALERT_RATE_LIMIT`` alerts within ``BHIV_ALERT_RATE_WINDOW_SECONDS``.
Both checks read the store, not process memory, so every sentinel worker and replica sharing the
store enforces one limit; an attack raising thousands of incidents reaches an admin's inbox as at
most the limit per window, the rest counted in the log.

Delivery is an outbox in the same store: a loop claims due PENDING alerts (a conditional write,
so two processes never send the same attempt), makes one attempt each, and records it on the
alert (``attempts``, ``error``, ``last_attempt_time``): DELIVERED on success; else PENDING again,
due after ``backoff * 2**(attempts-1)`` (at most ``backoff_max``) times a random factor in
[0.5, 1) so retries of many alerts do not arrive in step; FAILED after ``max_attempts``. A
sentinel that restarts resumes the PENDING alerts it finds (a claim expires after a lease).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from bhiv.sentinel.v1 import alert_pb2, threat_pb2
from bhiv_core.outbound.backoff import retry_delay
from bhiv_core.outbound.signatures import SIGNATURE_HEADER, sign
from bhiv_core.resources import Cmp, Eq, Filter, Record, ResourceStore, Transaction, new_etag
from bhiv_core.runtime.errors import FieldViolation, InvalidArgument, NotFound
from bhiv_core.runtime.times import to_timestamp
from bhiv_core.services.sentinel.alerts import transports
from bhiv_core.services.sentinel.alerts.config import AlertConfig
from bhiv_core.services.sentinel.alerts.resources import ALERT, ALERTS, CHANNEL, CHANNELS
from bhiv_core.storage.sealing import SecretBox

__all__ = [
    "SUMMARY_LIMIT",
    "TEST_ATTEMPTS",
    "AlertDispatcher",
    "Destination",
    "Outcome",
    "RaisedAlert",
    "open_destination",
    "sealed_record",
]

log = logging.getLogger(__name__)

SUMMARY_LIMIT = 500
"""The longest summary sent (characters); longer ones are cut."""
DETAILS_LIMIT = 4000
"""The longest details sent (characters); longer ones are cut."""
TEST_ATTEMPTS = 3
"""SendTestAlert's attempts (the contract's bound)."""
_BATCH = 20
_MAX_CHANNELS = 1000
_PENDING = alert_pb2.ALERT_STATUS_PENDING
_DELIVERED = alert_pb2.ALERT_STATUS_DELIVERED
_FAILED = alert_pb2.ALERT_STATUS_FAILED


class Outcome(StrEnum):
    """What :meth:`AlertDispatcher.raise_alert` did for one channel."""

    QUEUED = "queued"
    """Recorded PENDING; the delivery loop sends it."""
    DUPLICATE = "duplicate"
    """Dropped: the same dedup key went to this channel within the dedup window."""
    RATE_LIMITED = "rate_limited"
    """Dropped: the channel had its quota of alerts for the rate window."""


@dataclass(frozen=True, slots=True)
class RaisedAlert:
    """The outcome of a raised alert for one channel; ``alert`` is its name when QUEUED."""

    channel: str
    outcome: Outcome
    alert: str = ""


@dataclass(frozen=True, slots=True)
class Destination:
    """A channel with its secrets opened, for one delivery (never returned to a client)."""

    name: str
    kind: alert_pb2.AlertChannelKind.ValueType
    target: str
    secret: str
    enabled: bool

    def __repr__(self) -> str:  # keep the target and secret out of logs and tracebacks
        return f"Destination({self.name})"


def sealed_record(channel: alert_pb2.AlertChannel, target: str, secret: str, box: SecretBox) -> Record:
    """The stored form of a channel: the message as reads return it, its secrets sealed beside it."""
    record = CHANNEL.record(channel)
    sealed = box.seal(json.dumps({"target": target, "secret": secret}).encode(), channel.name)
    return dataclasses.replace(record, fields={**record.fields, "sealed": sealed})


def open_destination(record: Record, box: SecretBox) -> Destination:
    """The channel of a stored record with its target and secret decrypted."""
    channel = CHANNEL.load(record)
    opened = json.loads(box.open(str(record.fields["sealed"]), channel.name))
    return Destination(channel.name, channel.kind, opened["target"], opened["secret"], channel.enabled)


def _severity_word(severity: int) -> str:
    return threat_pb2.Severity.Name(severity).removeprefix("SEVERITY_")  # type: ignore[arg-type]


def _slack_escape(text: str) -> str:
    # Slack reads <...> as links and mentions (<!channel>): attack text must not ping anyone.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class AlertDispatcher:
    """Raises alerts, runs their delivery, and sends test alerts.

    Args:
        store: Sentinel's kit store (alert channels and alerts).
        box: Opens the channels' sealed secrets.
        config: Limits, retries, the SMTP relay.
        clock: Unix seconds now (tests move it).
        jitter: Returns a number in [0, 1) (tests pin it).

    """

    def __init__(
        self,
        store: ResourceStore,
        box: SecretBox,
        config: AlertConfig,
        *,
        clock: Callable[[], float] = time.time,
        jitter: Callable[[], float] = random.random,
    ):
        self._store = store
        self._box = box
        self._config = config
        self._clock = clock
        self._jitter = jitter
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # The internal API of the response policy.

    async def raise_alert(
        self,
        kind: str,
        severity: threat_pb2.Severity.ValueType,
        summary: str,
        details: str,
        dedup_key: str,
        incident: str = "",
    ) -> list[RaisedAlert]:
        """Records an alert for every enabled channel whose minimum severity it meets.

        Args:
            kind: What happened, for people and receivers (``brute_force``, ``block``).
            severity: The incident's severity (SEVERITY_UNSPECIFIED reaches only channels
                without a minimum).
            summary: One line, cut to :data:`SUMMARY_LIMIT` characters.
            details: Free text, cut to :data:`DETAILS_LIMIT` characters.
            dedup_key: Alerts with the same key go to a channel once per dedup window; empty
                uses ``kind`` and ``summary``.
            incident: The incident it is about, ``incidents/{id}``, or empty.

        Returns:
            What happened per channel (channels it does not reach are not listed).

        Raises:
            InvalidArgument: ``severity`` is not a defined severity.

        """
        if severity not in threat_pb2.Severity.values():
            raise InvalidArgument(
                violations=[FieldViolation("severity", "must be a Severity", "UNDEFINED_ENUM")]
            )
        now = self._clock()
        summary = " ".join(summary.split())[:SUMMARY_LIMIT]
        key = dedup_key or f"{kind}\x1f{summary}"
        payload = json.dumps({"kind": kind[:100], "details": details[:DETAILS_LIMIT]})
        config = self._config

        async def step(txn: Transaction) -> list[RaisedAlert]:
            outcomes = []
            channels = await txn.find(CHANNELS, [Eq("enabled", True)], limit=_MAX_CHANNELS)
            for record in channels:
                channel = CHANNEL.load(record)
                if severity < channel.min_severity:
                    continue
                recent: list[Filter] = [
                    Eq("channel", channel.name),
                    Eq("dedup", key),
                    Cmp("created", ">=", now - config.dedup_seconds),
                ]
                if await txn.find(ALERTS, recent, limit=1):
                    outcomes.append(RaisedAlert(channel.name, Outcome.DUPLICATE))
                    continue
                window: list[Filter] = [
                    Eq("channel", channel.name),
                    Eq("test", False),
                    Cmp("created", ">=", now - config.rate_window_seconds),
                ]
                if await txn.count(ALERTS, window) >= config.rate_limit:
                    outcomes.append(RaisedAlert(channel.name, Outcome.RATE_LIMITED))
                    continue
                alert = ALERT.fresh(
                    alert_pb2.Alert(
                        channel=channel.name,
                        incident=incident,
                        severity=severity,
                        summary=summary,
                        status=_PENDING,
                    ),
                    now=now,
                )
                await txn.insert(ALERTS, _alert_record(alert, dedup=key, due=now, payload=payload))
                outcomes.append(RaisedAlert(channel.name, Outcome.QUEUED, alert.name))
            return outcomes

        outcomes = await self._store.run(step)
        dropped = [o for o in outcomes if o.outcome is not Outcome.QUEUED]
        if dropped:
            log.warning(
                "alerts dropped",
                extra={
                    "kind": kind,
                    "incident": incident,
                    "dropped": {o.channel: str(o.outcome) for o in dropped},
                },
            )
        if len(dropped) < len(outcomes):
            self._wake.set()
        return outcomes

    # Delivery.

    def backoff(self, attempts: int) -> float:
        """The wait after the ``attempts``-th failed attempt: doubling, capped, with jitter."""
        config = self._config
        return retry_delay(attempts, config.backoff_seconds, config.backoff_max_seconds, self._jitter())

    async def _attempt(
        self, destination: Destination, alert: alert_pb2.Alert, payload: dict[str, Any]
    ) -> str:
        """Makes one delivery attempt; returns the error, or empty when delivered."""
        try:
            await self._send(destination, alert, payload)
        except transports.DeliveryError as exc:
            # A message never holds the target, but say so explicitly for any future transport.
            return str(exc).replace(destination.target, "[target]") if destination.target else str(exc)
        return ""

    async def _send(self, destination: Destination, alert: alert_pb2.Alert, payload: dict[str, Any]) -> None:
        severity = _severity_word(alert.severity)
        details = str(payload.get("details", ""))
        timeout = self._config.timeout_seconds
        prefix = "[TEST] " if alert.test else ""
        if destination.kind == alert_pb2.ALERT_CHANNEL_KIND_EMAIL:
            lines = [alert.summary, "", f"Severity: {severity}"]
            if alert.incident:
                lines.append(f"Incident: {alert.incident}")
            lines += [f"Alert: {alert.name}", "", details]
            await transports.send_mail(
                self._config.smtp,
                destination.target,
                f"{prefix}[BHIV {severity}] {alert.summary}",
                "\n".join(lines),
                seconds=timeout,
            )
            return
        if destination.kind == alert_pb2.ALERT_CHANNEL_KIND_SLACK_WEBHOOK:
            text = f"{prefix}*[{severity}]* {_slack_escape(alert.summary)}"
            if alert.incident:
                text += f"\nIncident: {alert.incident}"
            if details:
                text += f"\n{_slack_escape(details)}"
            body = json.dumps({"text": text}).encode()
            await transports.post_json(destination.target, body, {}, seconds=timeout)
            return
        document = {
            "alert": alert.name,
            "channel": alert.channel,
            "incident": alert.incident,
            "kind": payload.get("kind", ""),
            "severity": threat_pb2.Severity.Name(alert.severity),
            "summary": alert.summary,
            "details": details,
            "test": alert.test,
            "time": alert.create_time.ToJsonString(),
        }
        body = json.dumps(document).encode()
        headers = {"X-BHIV-Alert": alert.name}
        if destination.secret:
            headers[SIGNATURE_HEADER] = sign(destination.secret.encode(), int(self._clock()), body)
        await transports.post_json(destination.target, body, headers, seconds=timeout)

    async def run_due(self) -> float | None:
        """Makes one attempt for each due PENDING alert (a batch); returns when the next is due."""
        now = self._clock()
        due: list[Filter] = [Eq("status", _PENDING), Cmp("due", "<=", now)]
        records = await self._store.find(ALERTS, due, after=None, limit=_BATCH)
        claimed = [c for c in [await self._claim(r.id, now) for r in records] if c is not None]
        await asyncio.gather(*(self._deliver(record) for record in claimed))
        if len(records) == _BATCH:
            return now
        upcoming = await self._store.find(ALERTS, [Eq("status", _PENDING)], after=None, limit=_BATCH)
        times = [_due(r) for r in upcoming]
        return min(times) if times else None

    async def _claim(self, id: str, now: float) -> Record | None:
        lease = self._config.timeout_seconds * 3 + 30

        async def claim(txn: Transaction) -> Record | None:
            record = await txn.get(ALERTS, id)
            if record is None or record.value("status") != _PENDING or _due(record) > now:
                return None
            taken = dataclasses.replace(record, fields={**record.fields, "due": now + lease}, etag=new_etag())
            return taken if await txn.replace(ALERTS, taken, expected_etag=record.etag) else None

        return await self._store.run(claim)

    async def _deliver(self, record: Record) -> None:
        alert = ALERT.load(record)
        payload = json.loads(str(record.value("payload")) or "{}")
        channel = await self._store.get(CHANNELS, CHANNEL.id_of(alert.channel))
        if channel is None:
            error = "the channel was deleted before delivery"
            final = True
        else:
            destination = open_destination(channel, self._box)
            if not destination.enabled:
                error, final = "the channel was disabled before delivery", True
            else:
                error = await self._attempt(destination, alert, payload)
                final = False
        now = self._clock()
        alert.attempts += 1
        alert.error = error
        alert.last_attempt_time.CopyFrom(to_timestamp(now))
        due = 0.0
        if not error:
            alert.status = _DELIVERED
        elif final or alert.attempts >= self._config.max_attempts:
            alert.status = _FAILED
        else:
            due = now + self.backoff(alert.attempts)
        if error:
            log.warning(
                "alert delivery failed",
                extra={"alert": alert.name, "attempts": alert.attempts, "error": error},
            )

        async def record_attempt(txn: Transaction) -> None:
            current = await txn.get(ALERTS, record.id)
            if current is None or current.etag != record.etag:
                return  # the lease ran out and another process took it: its result stands
            updated = _alert_record(
                alert, dedup=str(record.value("dedup")), due=due, payload=str(record.value("payload"))
            )
            await txn.replace(ALERTS, updated, expected_etag=record.etag)

        await self._store.run(record_attempt)

    async def send_test(self, name: str) -> tuple[alert_pb2.Alert, bool]:
        """Sends a test alert to one channel, enabled or not, waiting for up to 3 attempts.

        Returns:
            The recorded test alert and whether it was delivered.

        Raises:
            NotFound: The channel does not exist.

        """
        record = await self._store.get(CHANNELS, CHANNEL.id_of(name))
        if record is None:
            raise NotFound(f"{name} not found", reason="NOT_FOUND")
        destination = open_destination(record, self._box)
        channel = CHANNEL.load(record)
        alert = ALERT.fresh(
            alert_pb2.Alert(
                channel=name,
                severity=channel.min_severity or threat_pb2.SEVERITY_LOW,
                summary=f"Test alert for {channel.display_name}",
                status=_PENDING,
                test=True,
            ),
            now=self._clock(),
        )
        payload = {"kind": "test", "details": "Sent by SendTestAlert: this channel is reachable."}
        for attempt in range(1, TEST_ATTEMPTS + 1):
            alert.error = await self._attempt(destination, alert, payload)
            alert.attempts = attempt
            alert.last_attempt_time.CopyFrom(to_timestamp(self._clock()))
            if not alert.error:
                break
            if attempt < TEST_ATTEMPTS:  # the caller waits: keep the pauses short
                await asyncio.sleep(min(self.backoff(attempt), 2.0))
        alert.status = _FAILED if alert.error else _DELIVERED

        async def insert(txn: Transaction) -> None:
            await txn.insert(ALERTS, _alert_record(alert, dedup="", due=0.0, payload=json.dumps(payload)))

        await self._store.run(insert)
        return alert, not alert.error

    # The delivery loop.

    async def _loop(self) -> None:
        while True:
            next_due: float | None = None
            try:
                next_due = await self.run_due()
            except Exception:  # the store is down: health reports it; try again shortly
                log.warning("alert delivery round failed", exc_info=True)
                next_due = self._clock() + 5.0
            wait = 60.0 if next_due is None else max(0.0, min(60.0, next_due - self._clock()))
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=wait)
            self._wake.clear()

    async def start(self) -> None:
        """Starts the delivery loop (it resumes alerts left PENDING by an earlier run)."""
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Stops the delivery loop; an attempt in flight is abandoned and retried after its lease."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _alert_record(alert: alert_pb2.Alert, *, dedup: str, due: float, payload: str) -> Record:
    record = ALERT.record(alert)
    # Alerts have no etag in the contract; the store's etag still guards claims and updates.
    return dataclasses.replace(
        record, fields={**record.fields, "dedup": dedup, "due": due, "payload": payload}, etag=new_etag()
    )


def _due(record: Record) -> float:
    value = record.value("due")
    return float(value) if isinstance(value, int | float) else 0.0
