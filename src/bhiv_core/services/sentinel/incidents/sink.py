"""Detections in: stored as threat events, grouped into incidents, streamed, handed to the response.

:class:`ResponseSink` is the threat detection agent's
:class:`~bhiv_core.agents.threat_detection.DetectionSink` in sentinel. For each detection, on the
detection task (never on a caller's path), it groups the detection into its incident, stores it
as a threat event linked to that incident (``ThreatEvent.incident``), logs it, publishes it to
the live streams and queues the incident for the response agent. A grouping failure still stores
the event (unlinked) and is logged and counted; a storing failure is raised to the detection agent,
which logs and counts it.

:class:`ResponseWorker` runs the :class:`~bhiv_core.agents.threat_response.ThreatResponseAgent`
on its own task. Its queue holds incident names, each at most once: a burst of 500 detections of
one attack queues its incident once (or twice, when a detection arrives while the incident is being
handled), and the agent's claim makes each action happen once regardless. A full queue drops the
incident (logged, counted); its next detection queues it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from bhiv.sentinel.v1 import threat_pb2
from bhiv_core.agents.threat_detection import Detection, Severity
from bhiv_core.agents.threat_response import ThreatResponseAgent
from bhiv_core.agents.threat_response.agent import RESPONSE_OUTCOMES
from bhiv_core.services.sentinel.alerts.delivery import AlertDispatcher, Outcome
from bhiv_core.services.sentinel.incidents.incidents import Incidents, threat_event_to_proto
from bhiv_core.services.sentinel.incidents.stream import ThreatEventHub
from bhiv_core.services.sentinel.store import SentinelStore
from bhiv_core.services.sentinel.threats import threat_event_of

__all__ = ["DispatcherAlerter", "ResponseSink", "ResponseWorker"]

log = logging.getLogger(__name__)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class DispatcherAlerter:
    """The response agent's :class:`~bhiv_core.agents.threat_response.Alerter` over sentinel's alerts.

    Args:
        dispatcher: Sentinel's alert dispatcher (deduplication and rate limits per channel).

    """

    def __init__(self, dispatcher: AlertDispatcher):
        self._dispatcher = dispatcher

    async def raise_alert(
        self, kind: str, severity: Severity, summary: str, details: str, dedup_key: str, incident: str
    ) -> list[str]:
        """Raises the alert; one ``actions_taken`` line per channel it reached."""
        outcomes = await self._dispatcher.raise_alert(
            kind, threat_pb2.Severity.ValueType(int(severity)), summary, details, dedup_key, incident
        )
        return [
            f"alerted {o.channel}"
            if o.outcome is Outcome.QUEUED
            else f"alert to {o.channel} not sent ({o.outcome.value.replace('_', ' ')})"
            for o in outcomes
        ]


class ResponseWorker:
    """Runs the response agent on queued incidents, one at a time, off the detection path.

    Args:
        agent: The response agent.
        limit: Incidents that may wait before new ones are dropped.

    Attributes:
        dropped: Incidents dropped because the queue was full.
        failed: Responses that raised (logged, then skipped).
        handled: Responses run.

    """

    def __init__(self, agent: ThreatResponseAgent, *, limit: int = 10_000):
        self.agent = agent
        self._limit = limit
        self._pending: dict[str, None] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._last_drop_log = float("-inf")
        self.dropped = 0
        self.failed = 0
        self.handled = 0

    def submit(self, incident: str) -> bool:
        """Queues ``incident`` (once); False (counted, logged) when the queue is full."""
        if incident in self._pending:
            return True
        if len(self._pending) >= self._limit:
            self.dropped += 1
            RESPONSE_OUTCOMES.labels("queue_full").inc()
            now = time.monotonic()
            if now - self._last_drop_log >= 60:
                self._last_drop_log = now
                log.warning("threat response is behind: dropping incidents", extra={"dropped": self.dropped})
            return False
        self._pending[incident] = None
        self._idle.clear()
        self._wake.set()
        return True

    async def start(self) -> None:
        """Starts the task that takes queued incidents."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="threat-response")

    async def stop(self, drain_seconds: float = 2.0) -> None:
        """Gives queued incidents up to ``drain_seconds``, then stops the task."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), drain_seconds)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                incident = next(iter(self._pending))
                del self._pending[incident]
                try:
                    await self.agent.respond(incident)
                    self.handled += 1
                except asyncio.CancelledError:
                    raise
                except Exception:
                    self.failed += 1
                    RESPONSE_OUTCOMES.labels("response_failed").inc()
                    log.exception("threat response failed on an incident", extra={"incident": incident})
            self._idle.set()


class ResponseSink:
    """Stores each detection as a threat event in its incident, streams it, queues the response.

    Args:
        store: Sentinel's store (threat events).
        incidents: Groups detections into incidents.
        hub: The live streams.
        worker: The response agent's queue.
        clock: The current UTC time (the event's detection time).

    Attributes:
        ungrouped: Detections stored without an incident because grouping failed (logged).

    """

    def __init__(
        self,
        store: SentinelStore,
        incidents: Incidents,
        hub: ThreatEventHub,
        worker: ResponseWorker,
        clock: Callable[[], datetime] = _utc_now,
    ):
        self._store = store
        self._incidents = incidents
        self._hub = hub
        self._worker = worker
        self._clock = clock
        self.ungrouped = 0

    async def record(self, detection: Detection) -> None:
        """Groups, stores, logs, streams and queues ``detection``; raises when it cannot be stored."""
        now = self._clock()
        record = threat_event_of(detection, now)
        try:
            incident = await self._incidents.group(record)
        except Exception:
            # The event is still stored (below), without its incident: nothing is lost.
            self.ungrouped += 1
            RESPONSE_OUTCOMES.labels("grouping_failed").inc()
            incident = ""
            log.exception(
                "threat detection: grouping into an incident failed", extra={"event_id": record.event_id}
            )
        record = dataclasses.replace(record, incident=incident)
        await self._store.add_threat_event(record)
        log.warning(
            "threat detected",
            extra={
                "event_id": record.event_id,
                "rule_id": record.rule_id,
                "category": record.category,
                "severity": detection.severity.name,
                "source_address": record.source_address,
                "principal": record.principal,
                "method": record.method,
                "evidence": record.evidence,
                "incident": incident,
            },
        )
        self._hub.publish(threat_event_to_proto(record))
        if incident:
            self._worker.submit(incident)
