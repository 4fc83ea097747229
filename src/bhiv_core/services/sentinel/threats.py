"""Sentinel's side of threat detection: reported events in, detections stored and logged.

Sentinel runs the :class:`~bhiv_core.agents.threat_detection.ThreatDetectionAgent` in process.
Every security event a service reports (``ReportSecurityEvent``) is stored first, then handed to
the agent as an :class:`~bhiv_core.agents.threat_detection.Observation` through its bounded queue,
so the reporting call never waits for detection. The server hands detections to
:class:`~bhiv_core.services.sentinel.incidents.sink.ResponseSink` (grouped into incidents, stored,
streamed, acted on), which makes each a threat event with :func:`threat_event_of`.
"""

from __future__ import annotations

from datetime import datetime

from bhiv_core.agents.threat_detection import Detection, Observation, ObservationKind
from bhiv_core.services.sentinel.service import new_event_id
from bhiv_core.services.sentinel.store import EventKind, SecurityEvent, ThreatEventRecord

__all__ = ["observation_of", "threat_event_of"]

_KINDS = {
    EventKind.LOGIN_FAILED: ObservationKind.LOGIN_FAILED,
    EventKind.LOGIN_SUCCEEDED: ObservationKind.LOGIN_SUCCEEDED,
    EventKind.TOKEN_INVALID: ObservationKind.TOKEN_INVALID,
    EventKind.TOKEN_REPLAYED: ObservationKind.TOKEN_REPLAYED,
    EventKind.PERMISSION_DENIED: ObservationKind.PERMISSION_DENIED,
    EventKind.SUSPICIOUS_INPUT: ObservationKind.SUSPICIOUS_INPUT,
}


def observation_of(event: SecurityEvent) -> Observation:
    """The detectors' view of a reported security event.

    A suspicious-input event carries the request fields a service's screening matched: the agent
    screens them again with sentinel's own rules, and only what those match becomes a detection.
    """
    return Observation(
        kind=_KINDS[event.kind],
        source_address=event.source_address,
        principal=event.principal,
        method=event.method,
        detail=event.detail,
        fields=event.fields,
    )


def threat_event_of(detection: Detection, now: datetime) -> ThreatEventRecord:
    """``detection`` as a new threat event detected at ``now`` (its incident not yet known)."""
    return ThreatEventRecord(
        event_id=new_event_id(now),
        rule_id=detection.rule_id,
        category=detection.category.value,
        severity=int(detection.severity),
        source_address=detection.source_address,
        principal=detection.principal,
        method=detection.method,
        evidence=detection.evidence,
        detect_time=now,
    )
