"""Security events identity reports to sentinel: failed and successful logins, replayed tokens.

:class:`SentinelReporter` sends them from a background task with a bounded queue, so reporting
never slows or fails a login; :class:`NullReporter` drops them (tests, or no sentinel).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import grpc

from bhiv.sentinel.v1 import threat_pb2, threat_service_pb2, threat_service_pb2_grpc
from bhiv_core.runtime.times import to_timestamp
from bhiv_core.services.identity.tokens import SERVICE_TOKEN_TTL_SECONDS

__all__ = [
    "NullReporter",
    "SecurityEvent",
    "SecurityEventKind",
    "SecurityEventReporter",
    "SentinelReporter",
    "to_timestamp",
]

log = logging.getLogger(__name__)


class SecurityEventKind(enum.Enum):
    """The kinds of security event identity reports (a subset of sentinel's ``SecurityEventKind``)."""

    LOGIN_FAILED = "login_failed"
    LOGIN_SUCCEEDED = "login_succeeded"
    TOKEN_REPLAYED = "token_replayed"  # noqa: S105 - an event kind, not a secret


@dataclass(frozen=True, slots=True)
class SecurityEvent:
    """One security fact for sentinel's detection rules.

    Attributes:
        kind: What happened.
        source_address: The client's IP.
        principal: The username tried, or the user's resource name.
        method: The full gRPC method.
        detail: Context for a person; never a password or token.
        event_time: When it happened (Unix seconds).

    """

    kind: SecurityEventKind
    source_address: str
    principal: str
    method: str
    detail: str
    event_time: float


class SecurityEventReporter(Protocol):
    """Where identity sends security events. ``report`` must return at once and never raise."""

    def report(self, event: SecurityEvent, *, metadata: Sequence[tuple[str, str]] = ()) -> None:
        """Queues ``event``; ``metadata`` travels with it (trace context, for instance)."""


class NullReporter:
    """A reporter that drops every event (no sentinel configured)."""

    def report(self, event: SecurityEvent, *, metadata: Sequence[tuple[str, str]] = ()) -> None:
        """Drops ``event``."""


_Queued = tuple[SecurityEvent, tuple[tuple[str, str], ...], contextvars.Context]


class SentinelReporter:
    """Sends security events to sentinel's ``ThreatService/ReportSecurityEvent`` in the background.

    Events wait in a bounded queue; when it is full new ones are dropped and counted, so a slow or
    absent sentinel never slows a login. Each call carries a short-lived service token
    (``services/identity`` with the scope ``sentinel.events.write``). Failures are logged (at most
    once a minute) and counted, never raised.

    Each event is sent in a copy of the context it was reported in, so client interceptors that read
    context variables (the current trace span) see the call that caused it, and with it the
    ``metadata`` given to :meth:`report`.

    Args:
        address: Sentinel's ``host:port``.
        token_source: Returns a fresh service token.
        queue_size: Events that may wait before new ones are dropped.
        timeout_seconds: Deadline of each call.
        channel: Returns the channel to sentinel when the caller owns one (a shared channel pool
            with tracing interceptors, say); by default the reporter opens and closes its own.
        close_channel: Closes what ``channel`` draws on; awaited by :meth:`stop`, once the sender
            has stopped (when the pool lives exactly as long as the reporter).

    Attributes:
        sent: Events sentinel accepted.
        failed: Events whose call failed.
        dropped: Events dropped because the queue was full.

    """

    def __init__(
        self,
        address: str,
        token_source: Callable[[], Awaitable[str]],
        *,
        queue_size: int = 1000,
        timeout_seconds: float = 3.0,
        channel: Callable[[], grpc.aio.Channel] | None = None,
        close_channel: Callable[[], Awaitable[None]] | None = None,
    ):
        self.address = address
        self._token_source = token_source
        self._channel_factory = channel
        self._close_channel = close_channel
        self._queue: asyncio.Queue[_Queued] = asyncio.Queue(queue_size)
        self._timeout = timeout_seconds
        self._channel: grpc.aio.Channel | None = None
        self._task: asyncio.Task[None] | None = None
        self._token = ""
        self._token_expires = 0.0
        self._last_error_log = 0.0
        self.sent = 0
        self.failed = 0
        self.dropped = 0

    def report(self, event: SecurityEvent, *, metadata: Sequence[tuple[str, str]] = ()) -> None:
        """Queues ``event``, or drops and counts it when the queue is full."""
        try:
            self._queue.put_nowait((event, tuple(metadata), contextvars.copy_context()))
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("security event queue full: dropping events", extra={"dropped": self.dropped})

    async def start(self) -> None:
        """Opens the channel and starts the sender task."""
        if self._task is None:
            if self._channel_factory is None:
                self._channel = grpc.aio.insecure_channel(self.address)
            self._task = asyncio.create_task(self._run(), name="identity-security-events")

    async def stop(self, drain_seconds: float = 1.0) -> None:
        """Gives queued events up to ``drain_seconds`` to go out, then stops and closes the channel."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), drain_seconds)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = None
        if self._close_channel is not None:
            await self._close_channel()

    async def _token_now(self) -> str:
        now = time.time()
        if now >= self._token_expires:
            self._token = await self._token_source()
            # Renewed a minute early so a token never expires in flight.
            self._token_expires = now + SERVICE_TOKEN_TTL_SECONDS - 60
        return self._token

    async def _run(self) -> None:
        while True:
            event, metadata, context = await self._queue.get()
            try:
                await asyncio.create_task(self._send(event, metadata), context=context)
                self.sent += 1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failed += 1
                now = time.monotonic()
                if now - self._last_error_log >= 60:
                    self._last_error_log = now
                    log.warning(
                        "cannot report a security event to sentinel",
                        extra={
                            "address": self.address,
                            "error": f"{type(exc).__name__}: {exc}",
                            "failed": self.failed,
                        },
                    )
            finally:
                self._queue.task_done()

    async def _send(self, event: SecurityEvent, metadata: tuple[tuple[str, str], ...]) -> None:
        channel = self._channel_factory() if self._channel_factory is not None else self._channel
        assert channel is not None
        request = threat_service_pb2.ReportSecurityEventRequest(
            kind=threat_pb2.SecurityEventKind.Value(f"SECURITY_EVENT_KIND_{event.kind.name}"),
            source_address=event.source_address,
            principal=event.principal[:256],
            method=event.method,
            detail=event.detail[:2000],
            event_time=to_timestamp(event.event_time),
        )
        token = await self._token_now()
        stub = threat_service_pb2_grpc.ThreatServiceStub(channel)
        await stub.ReportSecurityEvent(
            request, metadata=(("authorization", f"Bearer {token}"), *metadata), timeout=self._timeout
        )
