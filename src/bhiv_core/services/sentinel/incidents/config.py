"""The incident and threat-response settings, read once at start; a bad value fails fast."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bhiv_core.runtime.config import RuntimeConfig
from bhiv_core.storage.mongo import mongo_url_setting

__all__ = ["IncidentConfig"]


@dataclass(frozen=True, slots=True)
class IncidentConfig:
    """How sentinel groups detections into incidents, responds to them and streams them.

    Attributes:
        store_url: ``BHIV_SENTINEL_STORE_URL`` (a MongoDB URL), or None for
            ``<data_dir>/sentinel-incidents.db``.
        window_seconds: ``BHIV_INCIDENT_WINDOW_SECONDS``: a detection joins the open (or
            acknowledged) incident of the same rule and source last seen within this window;
            otherwise it opens a new one (default 3600).
        policy_file: ``BHIV_THREAT_RESPONSE_POLICY_FILE``: a response policy replacing the shipped
            ``policy.toml`` (same format); None for the shipped one.
        response_queue: ``BHIV_THREAT_RESPONSE_QUEUE``: incidents waiting for the response agent
            before new ones are dropped, logged and counted (default 10000).
        stream_buffer: ``BHIV_THREAT_STREAM_BUFFER``: events one StreamThreatEvents subscriber may
            have waiting; a subscriber that falls further behind is cut off with
            RESOURCE_EXHAUSTED (default 256).
        stream_max_subscribers: ``BHIV_THREAT_STREAM_MAX_SUBSCRIBERS``: concurrent streams; one
            more is RESOURCE_EXHAUSTED (default 64).

    """

    store_url: str | None
    window_seconds: float = 3600.0
    policy_file: Path | None = None
    response_queue: int = 10_000
    stream_buffer: int = 256
    stream_max_subscribers: int = 64

    @classmethod
    def from_runtime(cls, config: RuntimeConfig) -> IncidentConfig:
        """Reads every incident setting once; raises ConfigError naming a bad one."""
        s = config.settings
        policy = s.raw("THREAT_RESPONSE_POLICY_FILE")
        return cls(
            store_url=mongo_url_setting(
                s, "SENTINEL_STORE_URL", "the SQLite file <data_dir>/sentinel-incidents.db"
            ),
            window_seconds=s.positive_float("INCIDENT_WINDOW_SECONDS", 3600.0),
            policy_file=Path(policy).resolve() if policy else None,
            response_queue=s.positive_int("THREAT_RESPONSE_QUEUE", 10_000),
            stream_buffer=s.positive_int("THREAT_STREAM_BUFFER", 256),
            stream_max_subscribers=s.positive_int("THREAT_STREAM_MAX_SUBSCRIBERS", 64),
        )
