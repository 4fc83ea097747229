"""The threat detection agent: observations in through a bounded queue, detections out to a sink.

Feeds call :meth:`ThreatDetectionAgent.submit`, which never waits and never fails: a full queue
drops the observation and counts it, so detection can fall behind under a flood but never slows
the request or event that fed it. One task on the event loop takes observations in order, runs the
behavioural detectors and screens the observation's text fields, and hands each detection to the
:class:`DetectionSink` (sentinel stores and logs it; the response agent acts on it later).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from bhiv_core.agents.threat_detection.detection import Detection
from bhiv_core.agents.threat_detection.detectors import Detector, default_detectors
from bhiv_core.agents.threat_detection.observations import Observation
from bhiv_core.agents.threat_detection.screening import Screener

__all__ = ["DetectionSink", "ThreatDetectionAgent"]

log = logging.getLogger(__name__)


class DetectionSink(Protocol):
    """Where detections go."""

    async def record(self, detection: Detection) -> None:
        """Keeps ``detection`` (store, log, hand to the response agent); may raise."""


class ThreatDetectionAgent:
    """Runs the detectors and the screener over a stream of observations, off the caller's path.

    Args:
        sink: Receives every detection.
        detectors: The behavioural detectors; :func:`default_detectors` by default.
        screener: Screens the observations' text fields; the shipped rules by default.
        clock: Seconds for the detectors' windows (monotonic by default; injected by tests).
        queue_size: Observations that may wait before new ones are dropped.

    Attributes:
        accepted: Observations queued.
        dropped: Observations dropped because the queue was full.
        detections: Detections handed to the sink.
        failed: Observations or detections whose processing raised (logged, then skipped).

    """

    def __init__(
        self,
        sink: DetectionSink,
        *,
        detectors: Sequence[Detector] | None = None,
        screener: Screener | None = None,
        clock: Callable[[], float] = time.monotonic,
        queue_size: int = 10_000,
    ):
        self._sink = sink
        self._detectors = list(default_detectors() if detectors is None else detectors)
        self._screener = screener if screener is not None else Screener()
        self._clock = clock
        self._queue: asyncio.Queue[Observation] = asyncio.Queue(queue_size)
        self._task: asyncio.Task[None] | None = None
        self._last_drop_log = float("-inf")
        self.accepted = 0
        self.dropped = 0
        self.detections = 0
        self.failed = 0

    def submit(self, observation: Observation) -> bool:
        """Queues ``observation``; returns False (and counts it) when the queue is full."""
        try:
            self._queue.put_nowait(observation)
        except asyncio.QueueFull:
            self.dropped += 1
            now = time.monotonic()
            if now - self._last_drop_log >= 60:
                self._last_drop_log = now
                log.warning(
                    "threat detection is behind: dropping observations", extra={"dropped": self.dropped}
                )
            return False
        self.accepted += 1
        return True

    def detect(self, observation: Observation, now: float) -> list[Detection]:
        """The detections ``observation`` causes at ``now``: every detector's, then the screen's."""
        found = [d for detector in self._detectors for d in detector.observe(observation, now)]
        if observation.fields:
            seen: set[tuple[str, str]] = set()
            for finding in self._screener.screen_fields(observation.fields):
                # One detection per rule and field, however many excerpts of the field are sent.
                if (finding.field, finding.rule.id) in seen:
                    continue
                seen.add((finding.field, finding.rule.id))
                found.append(
                    finding.detection(
                        source_address=observation.source_address,
                        principal=observation.principal,
                        method=observation.method,
                        time=now,
                    )
                )
        return found

    async def start(self) -> None:
        """Starts the task that drains the queue."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="threat-detection")

    async def stop(self, drain_seconds: float = 1.0) -> None:
        """Gives queued observations up to ``drain_seconds``, then stops the task."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), drain_seconds)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _run(self) -> None:
        while True:
            observation = await self._queue.get()
            try:
                for detection in self.detect(observation, self._clock()):
                    await self._sink.record(detection)
                    self.detections += 1
            except asyncio.CancelledError:
                raise
            except Exception:
                self.failed += 1
                log.exception(
                    "threat detection failed on an observation", extra={"kind": observation.kind.value}
                )
            finally:
                self._queue.task_done()
