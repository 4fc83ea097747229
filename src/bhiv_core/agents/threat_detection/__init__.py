"""The threat detection agent: injection screening and behavioural detectors over observations.

- :mod:`.rules` and ``rules.toml``: the injection rules, as data.
- :mod:`.screening`: the rules compiled into one Hyperscan database; linear-time screening.
- :mod:`.observations`: the detectors' input, one shape for every feed.
- :mod:`.detectors` and :mod:`.windows`: brute force, credential stuffing, floods, scanning and
  token abuse over bounded sliding windows.
- :mod:`.agent`: the bounded queue and task that run them off the request path.
"""

from bhiv_core.agents.threat_detection.agent import DetectionSink, ThreatDetectionAgent
from bhiv_core.agents.threat_detection.detection import Category, Detection, Severity
from bhiv_core.agents.threat_detection.observations import Observation, ObservationKind
from bhiv_core.agents.threat_detection.screening import Screener

__all__ = [
    "Category",
    "Detection",
    "DetectionSink",
    "Observation",
    "ObservationKind",
    "Screener",
    "Severity",
    "ThreatDetectionAgent",
]
