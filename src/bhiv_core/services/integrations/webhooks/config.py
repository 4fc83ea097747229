"""The webhook delivery settings, read once at start; a bad value fails fast with a ConfigError."""

from __future__ import annotations

from dataclasses import dataclass

from bhiv_core.runtime.config import RuntimeConfig

__all__ = ["WebhookConfig"]


def _attempts(raw: str) -> int:
    value = int(raw)
    if not 1 <= value <= 50:
        raise ValueError(raw)
    return value


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """How integrations delivers webhooks.

    Attributes:
        max_attempts: ``BHIV_WEBHOOK_MAX_ATTEMPTS``: attempts before a delivery is dead-lettered
            (DELIVERY_STATUS_FAILED), 1-50 (default 8); a redelivery grants as many again.
        backoff_seconds: ``BHIV_WEBHOOK_BACKOFF_SECONDS``: the wait after the first failed
            attempt, doubling per attempt up to :attr:`backoff_max_seconds`, times a random
            factor in [0.5, 1) (default 2).
        backoff_max_seconds: ``BHIV_WEBHOOK_BACKOFF_MAX_SECONDS``: the longest wait between two
            attempts (default 3600).
        timeout_seconds: ``BHIV_WEBHOOK_TIMEOUT_SECONDS``: the bound on one attempt, connect to
            the end of the response (default 10).
        concurrency: ``BHIV_WEBHOOK_CONCURRENCY``: the most attempts in flight in one process,
            over every webhook (default 64); each webhook also has its own limit.
        poll_seconds: ``BHIV_WEBHOOK_POLL_SECONDS``: how often the engine looks for due
            deliveries it was not woken for (queued by another process, or left by one that
            stopped), default 2.

    """

    max_attempts: int = 8
    backoff_seconds: float = 2.0
    backoff_max_seconds: float = 3600.0
    timeout_seconds: float = 10.0
    concurrency: int = 64
    poll_seconds: float = 2.0

    @property
    def lease_seconds(self) -> float:
        """How long a claim holds a delivery: an attempt's bound plus a margin for the store."""
        return self.timeout_seconds * 2 + 10.0

    @classmethod
    def from_runtime(cls, config: RuntimeConfig) -> WebhookConfig:
        """Reads every webhook setting once; raises ConfigError naming a bad one."""
        s = config.settings
        return cls(
            max_attempts=s.get("WEBHOOK_MAX_ATTEMPTS", 8, _attempts, "an integer 1-50"),
            backoff_seconds=s.positive_float("WEBHOOK_BACKOFF_SECONDS", 2.0),
            backoff_max_seconds=s.positive_float("WEBHOOK_BACKOFF_MAX_SECONDS", 3600.0),
            timeout_seconds=s.positive_float("WEBHOOK_TIMEOUT_SECONDS", 10.0),
            concurrency=s.positive_int("WEBHOOK_CONCURRENCY", 64),
            poll_seconds=s.positive_float("WEBHOOK_POLL_SECONDS", 2.0),
        )
