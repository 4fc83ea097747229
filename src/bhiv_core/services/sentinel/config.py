"""The sentinel service's settings, read once at start; a bad value fails fast with a ConfigError.

Every setting is a ``BHIV_*`` variable (or the same key in lower case in the TOML file) read
through :class:`~bhiv_core.runtime.config.Settings`, so the message of a bad one names it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from bhiv_core.registry import SENTINEL_ACCESS_LOG_PORT
from bhiv_core.runtime.config import RuntimeConfig

__all__ = ["SentinelConfig"]


@dataclass(frozen=True, slots=True)
class SentinelConfig:
    """What sentinel needs beyond the shared runtime: audit checkpoints and the access-log port.

    Attributes:
        checkpoint_key_path: ``BHIV_AUDIT_CHECKPOINT_KEY_FILE``, the Ed25519 seed that signs audit
            checkpoints (default ``<data_dir>/audit-checkpoint-key``, created 0600 when missing).
        checkpoint_witness_path: ``<data_dir>/audit-checkpoint-last``, the last checkpoint this
            sentinel wrote, kept outside the audit store.
        checkpoint_records: ``BHIV_AUDIT_CHECKPOINT_RECORDS``, records after the last checkpoint
            that make the next one due (default 10000).
        checkpoint_seconds: ``BHIV_AUDIT_CHECKPOINT_SECONDS``, seconds after the last checkpoint
            that make the next one due when records were appended since (default 60).
        access_log_port: ``BHIV_SENTINEL_ACCESS_LOG_PORT``, where the edge streams its access log
            (default 50059; 0 picks a free port), served to the trusted edge peers
            (``BHIV_EDGE_PEERS``) only.
        access_log_rate: ``BHIV_SENTINEL_ACCESS_LOG_RATE``, access-log entries per second taken
            from one edge address (a token bucket as large); more are dropped and counted
            (default 5000).
        access_log_max_message_bytes: ``BHIV_SENTINEL_ACCESS_LOG_MAX_MESSAGE_BYTES``, the largest
            access-log message (one batch of entries) taken; a larger one ends its stream with
            RESOURCE_EXHAUSTED (default 1 MiB; Envoy sends a batch per 16 KiB).
        access_log_max_connections: ``BHIV_SENTINEL_ACCESS_LOG_MAX_CONNECTIONS``, the most
            connections the access-log port keeps open at once (default 64).

    """

    checkpoint_key_path: Path
    checkpoint_witness_path: Path
    checkpoint_records: int
    checkpoint_seconds: float
    access_log_port: int = SENTINEL_ACCESS_LOG_PORT
    access_log_rate: int = 5000
    access_log_max_message_bytes: int = 1024 * 1024
    access_log_max_connections: int = 64

    @classmethod
    def from_runtime(cls, config: RuntimeConfig) -> SentinelConfig:
        """Reads every sentinel setting once; raises ConfigError naming a bad one."""
        s = config.settings

        def seconds(raw: str) -> float:
            value = float(raw)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(raw)
            return value

        key = s.raw("AUDIT_CHECKPOINT_KEY_FILE")
        return cls(
            checkpoint_key_path=Path(key).resolve() if key else config.data_dir / "audit-checkpoint-key",
            checkpoint_witness_path=config.data_dir / "audit-checkpoint-last",
            checkpoint_records=s.positive_int("AUDIT_CHECKPOINT_RECORDS", 10_000),
            checkpoint_seconds=s.get("AUDIT_CHECKPOINT_SECONDS", 60.0, seconds, "a number of seconds > 0"),
            access_log_port=s.port("SENTINEL_ACCESS_LOG_PORT", SENTINEL_ACCESS_LOG_PORT),
            access_log_rate=s.positive_int("SENTINEL_ACCESS_LOG_RATE", 5000),
            access_log_max_message_bytes=s.positive_int("SENTINEL_ACCESS_LOG_MAX_MESSAGE_BYTES", 1024 * 1024),
            access_log_max_connections=s.positive_int("SENTINEL_ACCESS_LOG_MAX_CONNECTIONS", 64),
        )
