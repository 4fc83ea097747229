"""Security events every service reports to sentinel: one reporter, shared by the whole mesh.

What goes in: a :class:`SecurityEvent` (a failed login, a refused token, a denied call, a screening
hit...) given to :meth:`SecurityEventReporter.report`, which returns at once and never raises. How
to report from a concern of the chain, or from a service::

    from bhiv_core.runtime.security_events import SecurityEvent, SecurityEventKind

    reporter.report(SecurityEvent(SecurityEventKind.TOKEN_INVALID, "203.0.113.7", "", method, "expired"))

The reporter of a service is the chain's (:func:`bhiv_core.standard_chain.standard_chain` builds it
and hands it to the concerns that report; ``Chain.reporter`` exposes it), so a new concern takes
it as a collaborator rather than building its own.

:class:`QueuedReporter` is the machinery: a bounded queue drained by one background task, so
reporting never slows or fails the call that reports, and a flood cannot turn into a flood of
reports: of the events with the same kind, address and principal within ``window_seconds`` of the
first, the first ``burst`` go out one by one and the rest are *coalesced*: counted, and when the
window ends one summary event says how many more there were (``... (+41 more like it within 1
s)``). A short burst (ten password guesses, three forged tokens) thus reaches detection event by
event, as its thresholds count them, while a flood from one address costs at most ``burst + 1``
reports per window and key. When the queue or the table of open windows is full, new events are
dropped and counted. :class:`SentinelReporter` sends to sentinel's ``ThreatService/ReportSecurityEvent``
with a service token (``sentinel.events.write``) from a token source: identity mints its own in
process, every other service gets one from identity with the service credentials
(:class:`~bhiv_core.runtime.service_credentials.ServiceTokenSource`). Sentinel itself records its
events in process (a :class:`QueuedReporter` whose ``send`` stores them): a report never causes a
call, so nothing it reports can come back to it as another report.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import enum
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from prometheus_client import Counter

from bhiv.sentinel.v1 import threat_pb2, threat_service_pb2, threat_service_pb2_grpc
from bhiv_core.runtime.chain import CallInfo
from bhiv_core.runtime.config import Settings
from bhiv_core.runtime.telemetry import REGISTRY
from bhiv_core.runtime.times import to_timestamp
from bhiv_core.security.address import client_address_of
from bhiv_core.security.principal import Principal

__all__ = [
    "CallEvents",
    "NullReporter",
    "QueuedReporter",
    "SecurityEvent",
    "SecurityEventKind",
    "SecurityEventReporter",
    "SentinelReporter",
    "coalescing_settings",
    "reportable_address",
    "request_of",
]

log = logging.getLogger(__name__)

OUTCOMES = ("sent", "failed", "dropped", "coalesced")

security_events = Counter(
    "bhiv_security_events",
    "Security events a service reported to sentinel, by outcome (sent, failed, dropped, coalesced).",
    ("service", "outcome"),
    registry=REGISTRY,
)
"""``bhiv_security_events_total{service, outcome}``."""


class SecurityEventKind(enum.Enum):
    """The kinds of security event a service reports (sentinel's ``SecurityEventKind``, by name)."""

    LOGIN_FAILED = "login_failed"
    LOGIN_SUCCEEDED = "login_succeeded"
    TOKEN_INVALID = "token_invalid"  # noqa: S105 - an event kind, not a secret
    TOKEN_REPLAYED = "token_replayed"  # noqa: S105 - an event kind, not a secret
    PERMISSION_DENIED = "permission_denied"
    SUSPICIOUS_INPUT = "suspicious_input"


@dataclass(frozen=True, slots=True)
class SecurityEvent:
    """One security fact for sentinel's detection rules.

    Attributes:
        kind: What happened.
        source_address: The client's IP, as the runtime trusts it
            (:func:`bhiv_core.security.address.client_address`); events without one are not sent.
        principal: The username tried, the caller's resource name, or empty when unknown.
        method: The full gRPC method, or empty.
        detail: Context for a person; never a password or token. At most 2000 characters are sent.
        event_time: When it happened (Unix seconds); 0 means when it is reported.
        fields: For :attr:`SecurityEventKind.SUSPICIOUS_INPUT`, the matched request fields as
            ``(path, excerpt)`` pairs (the screening concern bounds them); empty for the other kinds.

    """

    kind: SecurityEventKind
    source_address: str
    principal: str
    method: str
    detail: str
    event_time: float = 0.0
    fields: tuple[tuple[str, str], ...] = ()


def request_of(event: SecurityEvent) -> threat_service_pb2.ReportSecurityEventRequest:
    """``event`` as the ``ReportSecurityEvent`` request that tells sentinel about it."""
    return threat_service_pb2.ReportSecurityEventRequest(
        kind=threat_pb2.SecurityEventKind.Value(f"SECURITY_EVENT_KIND_{event.kind.name}"),
        source_address=event.source_address,
        principal=event.principal[:256],
        method=event.method[:256],
        detail=event.detail[:2000],
        event_time=to_timestamp(event.event_time),
        fields=[threat_pb2.ScreenedField(path=path, excerpt=excerpt) for path, excerpt in event.fields],
    )


class SecurityEventReporter(Protocol):
    """Where security events go. ``report`` must return at once and never raise."""

    def report(self, event: SecurityEvent, *, metadata: Sequence[tuple[str, str]] = ()) -> None:
        """Queues ``event``; ``metadata`` travels with it (trace context, for instance)."""


class NullReporter:
    """A reporter that drops every event (tests, or no sentinel)."""

    def report(self, event: SecurityEvent, *, metadata: Sequence[tuple[str, str]] = ()) -> None:
        """Drops ``event``."""


def reportable_address(address: str) -> str | None:
    """``address`` normalised when it is an IP address worth reporting, else None (a Unix socket)."""
    try:
        return ipaddress.ip_address(address).compressed
    except ValueError:
        return None


Sender = Callable[[SecurityEvent, tuple[tuple[str, str], ...]], Coroutine[Any, Any, None]]
"""Sends one event with its metadata; raises on failure."""

_Key = tuple[SecurityEventKind, str, str]
_Queued = tuple[SecurityEvent, tuple[tuple[str, str], ...], contextvars.Context]


@dataclass(slots=True)
class _Window:
    """An open coalescing window of one key: when it opened, its first event, and how many followed."""

    opened: float
    event: SecurityEvent
    metadata: tuple[tuple[str, str], ...]
    passed: int = 1
    more: int = 0


class QueuedReporter:
    """Reports events through ``send`` from a background task, coalescing floods (see the module).

    Each event is sent in a copy of the context it was reported in, so client interceptors that read
    context variables (the current trace span) see the call that caused it.

    Args:
        send: Sends one event; its failures are counted and logged (at most once a minute).
        queue_size: Events that may wait to be sent; also the most keys with an open window.
        window_seconds: The coalescing window; 0 sends every event.
        burst: The events of one key sent one by one in a window before the rest are coalesced.
        service: The reporting service, the ``service`` label of ``bhiv_security_events_total``.
        name: Names the background task and the log lines.
        clock: Monotonic seconds (tests pass a fake).

    Attributes:
        sent: Events sent (a summary counts once).
        failed: Events whose sending failed.
        dropped: Events dropped because the queue or the window table was full.
        coalesced: Events folded into a summary instead of being sent.

    """

    def __init__(
        self,
        send: Sender,
        *,
        queue_size: int = 1000,
        window_seconds: float = 1.0,
        burst: int = 10,
        service: str = "",
        name: str = "security-events",
        clock: Callable[[], float] = time.monotonic,
    ):
        self._send_one = send
        self._counted = {outcome: security_events.labels(service, outcome) for outcome in OUTCOMES}
        self._burst = max(1, burst)
        self._queue: asyncio.Queue[_Queued] = asyncio.Queue(queue_size)
        self._capacity = queue_size
        self._window = window_seconds
        self._name = name
        self._clock = clock
        self._windows: dict[_Key, _Window] = {}
        self._task: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._last_error_log = 0.0
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self.coalesced = 0

    def report(self, event: SecurityEvent, *, metadata: Sequence[tuple[str, str]] = ()) -> None:
        """Queues ``event`` (or counts it in its key's open window); never blocks, never raises."""
        try:
            self._report(event, metadata if isinstance(metadata, tuple) else tuple(metadata))
        except Exception:  # a reporter must never fail the call that reports
            log.exception("cannot queue a security event")

    def _report(self, event: SecurityEvent, metadata: tuple[tuple[str, str], ...]) -> None:
        if self._window <= 0:
            self._enqueue(self._stamped(event), metadata)
            return
        now = self._clock()
        key = (event.kind, event.source_address, event.principal)
        window = self._windows.get(key)
        # A flood's events end here, first, at the cost of a lookup and an addition.
        if window is not None and now - window.opened < self._window:
            if window.passed < self._burst:
                window.passed += 1
                self._enqueue(self._stamped(event), metadata)
            else:
                window.more += 1
                self.coalesced += 1
                self._counted["coalesced"].inc()
            return
        if window is not None:
            self._close(key, window)
        elif len(self._windows) >= self._capacity:
            self._flush(now)
            if len(self._windows) >= self._capacity:
                self._drop()
                return
        event = self._stamped(event)
        self._windows[key] = _Window(now, event, metadata)
        self._enqueue(event, metadata)

    @staticmethod
    def _stamped(event: SecurityEvent) -> SecurityEvent:
        """``event`` with its time set to now when it has none."""
        return event if event.event_time else dataclasses.replace(event, event_time=time.time())

    def _close(self, key: _Key, window: _Window) -> None:
        """Ends ``key``'s window, queueing its summary when events were folded into it."""
        del self._windows[key]
        if window.more:
            first = window.event
            summary = dataclasses.replace(
                first,
                detail=f"{first.detail[:1900]} (+{window.more} more like it within {self._window:g} s)",
            )
            self._enqueue(summary, window.metadata)

    def _flush(self, now: float) -> None:
        """Ends every window older than the coalescing window."""
        for key, window in list(self._windows.items()):
            if now - window.opened >= self._window:
                self._close(key, window)

    def _enqueue(self, event: SecurityEvent, metadata: tuple[tuple[str, str], ...]) -> None:
        try:
            self._queue.put_nowait((event, metadata, contextvars.copy_context()))
        except asyncio.QueueFull:
            self._drop()

    def _drop(self) -> None:
        self.dropped += 1
        self._counted["dropped"].inc()
        if self.dropped == 1 or self.dropped % 1000 == 0:
            log.warning("security event queue full: dropping events", extra={"dropped": self.dropped})

    async def start(self) -> None:
        """Starts the sender task (and the window flusher)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self._name)
            if self._window > 0:
                self._flusher = asyncio.create_task(self._flush_every_window(), name=f"{self._name}-flush")

    async def stop(self, drain_seconds: float = 1.0) -> None:
        """Closes every open window, gives queued events up to ``drain_seconds`` to go out, then stops."""
        if self._task is None:
            return
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        self._flush(float("inf"))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), drain_seconds)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _flush_every_window(self) -> None:
        while True:
            await asyncio.sleep(self._window)
            try:
                self._flush(self._clock())
            except Exception:
                log.exception("cannot flush coalesced security events")

    async def _run(self) -> None:
        while True:
            event, metadata, context = await self._queue.get()
            try:
                await asyncio.create_task(self._send_one(event, metadata), context=context)
                self.sent += 1
                self._counted["sent"].inc()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failed += 1
                self._counted["failed"].inc()
                now = time.monotonic()
                if now - self._last_error_log >= 60:
                    self._last_error_log = now
                    log.warning(
                        "cannot report a security event",
                        extra={
                            "reporter": self._name,
                            "error": f"{type(exc).__name__}: {exc}",
                            "failed": self.failed,
                        },
                    )
            finally:
                self._queue.task_done()


class SentinelReporter(QueuedReporter):
    """A :class:`QueuedReporter` that sends to sentinel's ``ThreatService/ReportSecurityEvent``.

    Each call carries a service token with the scope ``sentinel.events.write`` from
    ``token_source`` (which keeps and renews it: identity's mints one in process, the others'
    is a :class:`~bhiv_core.runtime.service_credentials.ServiceTokenSource`).

    Args:
        address: Sentinel's ``host:port``.
        token_source: Returns a valid service token (may raise: the event is then counted failed).
        queue_size: Events that may wait before new ones are dropped.
        timeout_seconds: Deadline of each call.
        window_seconds: The coalescing window (see :class:`QueuedReporter`).
        burst: The events of one key sent one by one per window (see :class:`QueuedReporter`).
        service: The reporting service (a metrics label).
        channel: Returns the channel to sentinel when the caller owns one (a shared channel pool
            with tracing interceptors, say); by default the reporter opens and closes its own.
        close_channel: Closes what ``channel`` draws on; awaited by :meth:`stop`, once the sender
            has stopped (when the pool lives exactly as long as the reporter).

    """

    def __init__(
        self,
        address: str,
        token_source: Callable[[], Awaitable[str]],
        *,
        queue_size: int = 1000,
        timeout_seconds: float = 3.0,
        window_seconds: float = 1.0,
        burst: int = 10,
        service: str = "",
        channel: Callable[[], grpc.aio.Channel] | None = None,
        close_channel: Callable[[], Awaitable[None]] | None = None,
    ):
        super().__init__(
            self._send,
            queue_size=queue_size,
            window_seconds=window_seconds,
            burst=burst,
            service=service,
            name="sentinel-security-events",
        )
        self.address = address
        self._token_source = token_source
        self._channel_factory = channel
        self._close_channel = close_channel
        self._timeout = timeout_seconds
        self._channel: grpc.aio.Channel | None = None

    async def start(self) -> None:
        """Opens the channel (unless lent one) and starts the sender task."""
        if self._channel_factory is None and self._channel is None:
            self._channel = grpc.aio.insecure_channel(self.address)
        await super().start()

    async def stop(self, drain_seconds: float = 1.0) -> None:
        """Drains and stops the sender, then closes the channel."""
        await super().stop(drain_seconds)
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = None
        if self._close_channel is not None:
            close, self._close_channel = self._close_channel, None
            await close()

    async def _send(self, event: SecurityEvent, metadata: tuple[tuple[str, str], ...]) -> None:
        channel = self._channel_factory() if self._channel_factory is not None else self._channel
        assert channel is not None
        request = request_of(event)
        token = await self._token_source()
        stub = threat_service_pb2_grpc.ThreatServiceStub(channel)
        await stub.ReportSecurityEvent(
            request, metadata=(("authorization", f"Bearer {token}"), *metadata), timeout=self._timeout
        )


class CallEvents:
    """Turns the chain's refusals into security events for ``reporter`` (auth's and RBAC's hooks).

    The address is the one the runtime trusts for the call (the edge's word for it from the edge,
    the TCP peer otherwise: calls between services are reported too); a call without an IP address
    (a Unix socket) is not reported. Neither hook ever raises into the call.

    Args:
        reporter: Where the events go.

    """

    def __init__(self, reporter: SecurityEventReporter):
        self.reporter = reporter

    def token_refused(self, call: CallInfo, reason: str) -> None:
        """Reports a refused bearer token as ``TOKEN_INVALID`` with the reason (never the token)."""
        if reason == "missing":
            return  # no token is not a bad token: the audit log and the access log have it
        self._report(call, SecurityEventKind.TOKEN_INVALID, "", f"token refused: {reason}")

    def denied(self, call: CallInfo, principal: Principal, permission: str) -> None:
        """Reports a call RBAC refused as ``PERMISSION_DENIED`` with the caller and the permission."""
        who = principal.role or "service"
        self._report(
            call, SecurityEventKind.PERMISSION_DENIED, principal.subject, f"{who} lacks {permission}"
        )

    def _report(self, call: CallInfo, kind: SecurityEventKind, principal: str, detail: str) -> None:
        try:
            address = reportable_address(client_address_of(call.headers, call.peer))
            if address is None:
                return
            self.reporter.report(SecurityEvent(kind, address, principal, call.method, detail, time.time()))
        except Exception:  # reporting never fails the call
            log.exception("cannot report a security event")


def coalescing_settings(settings: Settings) -> dict[str, Any]:
    """The coalescing arguments of a reporter from ``BHIV_SECURITY_EVENT_*`` (window and burst)."""
    return {
        "window_seconds": settings.positive_float("SECURITY_EVENT_WINDOW_SECONDS", 1.0),
        "burst": settings.positive_int("SECURITY_EVENT_BURST", 10),
    }
