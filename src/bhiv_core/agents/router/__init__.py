"""The orchestrator's router: the intent classifier and attachment type detection.

:class:`Router` chooses one of the twelve agents for a query and its attachments, with a
calibrated confidence (:mod:`.classifier`); :func:`detect_input_type` tells what an attachment is
from its content, declared type and file name (:mod:`.detect`).
"""

from bhiv_core.agents.router.classifier import (
    DEFAULT_MIN_CONFIDENCE,
    DOCUMENT_INTENTS,
    FALLBACK_AGENT,
    FALLBACK_INTENT,
    MAX_ROUTED_CHARS,
    Example,
    Route,
    Router,
    load_examples,
    min_confidence_setting,
    routed_text,
    training_examples,
)
from bhiv_core.agents.router.detect import GENERIC_MIME_TYPES, MEDIA_TYPES, detect_input_type

__all__ = [
    "DEFAULT_MIN_CONFIDENCE",
    "DOCUMENT_INTENTS",
    "FALLBACK_AGENT",
    "FALLBACK_INTENT",
    "GENERIC_MIME_TYPES",
    "MAX_ROUTED_CHARS",
    "MEDIA_TYPES",
    "Example",
    "Route",
    "Router",
    "detect_input_type",
    "load_examples",
    "min_confidence_setting",
    "routed_text",
    "training_examples",
]
