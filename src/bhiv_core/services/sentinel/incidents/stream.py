"""The live fan-out of threat events to ``StreamThreatEvents`` subscribers, bounded per subscriber.

Detection publishes every stored threat event with :meth:`ThreatEventHub.publish`, which never
waits: it appends the event to each matching subscriber's buffer and wakes it. A subscriber whose
client reads slower than events arrive fills its buffer (``BHIV_THREAT_STREAM_BUFFER`` events);
the next event **cuts it off**: its buffer is freed at once and its stream ends with
RESOURCE_EXHAUSTED (reason ``STREAM_TOO_SLOW``), so the client knows it missed events (and can
catch up with ListIncidents and reconnect), memory per subscriber is bounded, and detection is
never slowed by a reader. Silently dropping events instead would leave a console showing a
partial picture without saying so. At most ``BHIV_THREAT_STREAM_MAX_SUBSCRIBERS`` streams are open
at once. On shutdown :meth:`ThreatEventHub.close` ends every stream cleanly (status OK) before the
server drains.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from bhiv.sentinel.v1 import threat_pb2
from bhiv_core.agents.threat_response.agent import RESPONSE_OUTCOMES
from bhiv_core.runtime.errors import QuotaViolation, ResourceExhausted, Unavailable

__all__ = ["Subscription", "ThreatEventHub"]

log = logging.getLogger(__name__)


class Subscription:
    """One subscriber's filter and buffer.

    Args:
        hub: The hub it belongs to.
        min_severity: Only events at least this severe (0: any).
        category: Only events of this category (0: any).
        buffer: The most events it may have waiting.

    """

    def __init__(self, hub: ThreatEventHub, min_severity: int, category: int, buffer: int):
        self._hub = hub
        self._min_severity = min_severity
        self._category = category
        self._buffer = buffer
        self._events: deque[threat_pb2.ThreatEvent] = deque()
        self._wake = asyncio.Event()
        self._closed = False
        self.cut_off = False
        self.missed = 0

    def matches(self, event: threat_pb2.ThreatEvent) -> bool:
        """True when the subscriber's filters take ``event``."""
        return event.severity >= self._min_severity and (
            not self._category or event.category == self._category
        )

    def offer(self, event: threat_pb2.ThreatEvent) -> None:
        """Buffers ``event``, or cuts the subscriber off when its buffer is full."""
        if self._closed or self.cut_off:
            return
        if len(self._events) >= self._buffer:
            self.missed = len(self._events) + 1
            self._events.clear()
            self.cut_off = True
            self._hub.remove(self)
        else:
            self._events.append(event)
        self._wake.set()

    def close(self) -> None:
        """Ends the stream after what is buffered (shutdown)."""
        self._closed = True
        self._wake.set()

    async def next(self) -> threat_pb2.ThreatEvent | None:
        """The next event; None when the hub closed.

        Raises:
            ResourceExhausted: The subscriber fell behind by more than its buffer and was cut off.

        """
        while True:
            if self.cut_off:
                raise ResourceExhausted(
                    f"this stream fell behind by more than {self._buffer} threat events and was ended; "
                    "list incidents to catch up, then reconnect",
                    violations=[
                        QuotaViolation(
                            "threat-event-stream", f"at most {self._buffer} events waiting per stream"
                        )
                    ],
                    reason="STREAM_TOO_SLOW",
                )
            if self._events:
                return self._events.popleft()
            if self._closed:
                return None
            self._wake.clear()
            await self._wake.wait()


class ThreatEventHub:
    """Publishes threat events to subscribers without ever waiting for them.

    Args:
        buffer: Events one subscriber may have waiting before it is cut off.
        max_subscribers: Concurrent subscribers; one more is RESOURCE_EXHAUSTED.

    Attributes:
        published: Events published.
        cut_off: Subscribers cut off for falling behind.

    """

    def __init__(self, *, buffer: int = 256, max_subscribers: int = 64):
        self._buffer = buffer
        self._max = max_subscribers
        self._subscribers: set[Subscription] = set()
        self._closed = False
        self.published = 0
        self.cut_off = 0

    @property
    def subscribers(self) -> int:
        """How many subscribers are open."""
        return len(self._subscribers)

    def subscribe(self, *, min_severity: int = 0, category: int = 0) -> Subscription:
        """A new subscriber of events matching the filters, from now on.

        Raises:
            Unavailable: The server is shutting down.
            ResourceExhausted: :attr:`max_subscribers` streams are open.

        """
        if self._closed:
            raise Unavailable("sentinel is shutting down: reconnect to another replica or later")
        if len(self._subscribers) >= self._max:
            raise ResourceExhausted(
                f"{self._max} threat event streams are open, the most sentinel serves",
                violations=[
                    QuotaViolation("threat-event-streams", f"at most {self._max} concurrent streams")
                ],
                reason="TOO_MANY_STREAMS",
            )
        subscription = Subscription(self, min_severity, category, self._buffer)
        self._subscribers.add(subscription)
        return subscription

    def remove(self, subscription: Subscription) -> None:
        """Forgets ``subscription`` (its stream ended, or it was cut off)."""
        if subscription in self._subscribers:
            self._subscribers.discard(subscription)
            if subscription.cut_off:
                self.cut_off += 1
                RESPONSE_OUTCOMES.labels("stream_cut_off").inc()
                log.warning(
                    "threat event stream cut off: its reader fell behind",
                    extra={"missed": subscription.missed},
                )

    def publish(self, event: threat_pb2.ThreatEvent) -> None:
        """Hands ``event`` to every matching subscriber; never waits, never raises."""
        self.published += 1
        for subscription in list(self._subscribers):
            if subscription.matches(event):
                subscription.offer(event)

    def close(self) -> None:
        """Ends every stream (after its buffered events) and refuses new ones."""
        self._closed = True
        for subscription in list(self._subscribers):
            subscription.close()
        self._subscribers.clear()
