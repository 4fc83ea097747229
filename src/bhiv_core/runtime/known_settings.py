"""The one list of settings: every ``BHIV_<NAME>`` that some part of the platform reads.

:class:`~bhiv_core.runtime.config.Settings` refuses to read a name that is not listed here (a
programming error, which the tests hit), and the launcher and every service warn about a setting
they were given that is not listed (a typo, or a setting of another version): a misspelt setting is
reported at start instead of being ignored in silence. The README's configuration table documents
exactly these names (a test compares them).

Names are written without the ``BHIV_`` prefix, as :meth:`Settings.raw` takes them.
"""

from __future__ import annotations

import difflib
from typing import Final

from bhiv_core.registry import SERVICES

__all__ = ["KNOWN_SETTINGS", "PER_SERVICE_SETTINGS", "SHARED_SETTINGS", "closest_setting", "is_known_setting"]

PER_SERVICE_SETTINGS: Final = ("PORT", "METRICS_PORT", "WORKERS", "ADDR")
"""What every service of the registry has, as ``BHIV_<SERVICE>_<NAME>`` (``BHIV_CRM_WORKERS``)."""

SHARED_SETTINGS: Final = frozenset(
    {
        # The launcher and the runtime of every process.
        "CONFIG_FILE",
        "HOST",
        "DATA_DIR",
        "MAX_MESSAGE_BYTES",
        "MAX_CONCURRENT_RPCS",
        "GRACE_SECONDS",
        "HEALTH_INTERVAL_SECONDS",
        "LOG_LEVEL",
        "LOG_FORMAT",
        "LOG_DIR",
        "LOG_MAX_BYTES",
        "LOG_BACKUPS",
        # Who may vouch for a client address: the edge.
        "EDGE_PEERS",
        "OTLP_ENDPOINT",
        "TRACE_SAMPLE_RATIO",
        # The edge, configured by the launcher.
        "EDGE_PORT",
        "EDGE_ADMIN_PORT",
        "EDGE_REPLICAS",
        "EDGE_RATE_LIMIT",
        # The edge's limits (bhiv_core.edge.envoy_config.EDGE_SETTINGS).
        "EDGE_STREAM_IDLE_TIMEOUT_SECONDS",
        "EDGE_REQUEST_HEADERS_TIMEOUT_SECONDS",
        "EDGE_IDLE_TIMEOUT_SECONDS",
        "EDGE_REQUEST_TIMEOUT_SECONDS",
        "EDGE_UNARY_TIMEOUT_SECONDS",
        "EDGE_STREAMING_IDLE_TIMEOUT_SECONDS",
        "EDGE_CONNECT_TIMEOUT_SECONDS",
        "EDGE_BUFFER_LIMIT_BYTES",
        "EDGE_MAX_CONCURRENT_STREAMS",
        "EDGE_INITIAL_STREAM_WINDOW_BYTES",
        "EDGE_INITIAL_CONNECTION_WINDOW_BYTES",
        "EDGE_MAX_CONNECTIONS",
        "EDGE_MAX_HEAP_BYTES",
        "EDGE_XFF_TRUSTED_HOPS",
        "EDGE_RATE_LIMIT_PER_ADDRESS",
        "EDGE_LOGIN_RATE_LIMIT",
        "EDGE_RATE_LIMIT_ADDRESSES",
        "EDGE_RATE_LIMIT_SERVICE",
        "EDGE_JWKS_CACHE_SECONDS",
        "EDGE_ACCESS_LOG_SERVICE",
        "EDGE_ACCESS_LOG_FLUSH_SECONDS",
        # Token verification in every service.
        "JWT_ISSUER",
        "JWT_AUDIENCE",
        "JWT_LEEWAY_SECONDS",
        "TOKEN_CACHE_SIZE",
        # Injection screening of requests' text fields (bhiv_core.interceptors.screening).
        "SCREENING",
        "SCREENING_INLINE_CHARS",
        "SCREENING_QUEUE_CHARS",
        "REVOCATION_POLL_SECONDS",
        # Service credentials and the security events every service reports to sentinel.
        "SERVICE_SECRET_FILE",
        "SECURITY_EVENT_QUEUE_SIZE",
        "SECURITY_EVENT_WINDOW_SECONDS",
        "SECURITY_EVENT_BURST",
        # The audit log every service appends to.
        "AUDIT_STORE_URL",
        # identity
        "IDENTITY_STORE_URL",
        "IDENTITY_MONGO_DATABASE",
        "IDENTITY_KEK_FILE",
        "IDENTITY_REPORT_QUEUE_SIZE",
        "ACCESS_TOKEN_TTL_SECONDS",
        "REFRESH_TOKEN_TTL_SECONDS",
        "SESSION_MAX_SECONDS",
        "SIGNING_KEY_MAX_AGE_SECONDS",
        "SIGNING_KEY_OVERLAP_SECONDS",
        "SIGNING_KEY_MIN_ROTATION_SECONDS",
        "SIGNING_KEY_CHECK_SECONDS",
        "SCRYPT_LOG_N",
        "LOGIN_BACKOFF_AFTER",
        "LOGIN_ADDRESS_BACKOFF_AFTER",
        "LOGIN_ACCOUNT_BACKOFF_AFTER",
        "LOGIN_BACKOFF_MAX_SECONDS",
        "LOGIN_FAILURE_WINDOW_SECONDS",
        "LOGIN_THROTTLE_MAX_ENTRIES",
        # logistics
        "LOGISTICS_STORE_URL",
        # crm
        "CRM_STORE_URL",
        # llm
        "LLM_GROQ_API_KEY_FILE",
        "LLM_GROQ_BASE_URL",
        "LLM_GROQ_TIMEOUT_SECONDS",
        "LLM_GROQ_MAX_RETRIES",
        "LLM_DEFAULT_MODEL",
        "LLM_FALLBACK",
        "LLM_DEFAULT_BUDGET_MICROS",
        "LLM_STORE_URL",
        # Orchestration: its store (documents, passage index); the sample corpus; dense retrieval.
        "ORCHESTRATION_STORE_URL",
        "KNOWLEDGE_SAMPLE_CORPUS",
        "KNOWLEDGE_DENSE",
        "AGENTS_DISABLED",
        "AGENTS_DEADLINE_SECONDS",
        "AGENTS_SESSION_TURNS",
        "TASKS_CONCURRENCY",
        "TASKS_QUEUE",
        "TASKS_LEASE_SECONDS",
        "AGENTS_LLM",
        # Orchestration's router: the confidence under which a query goes to the general agent.
        "ROUTER_MIN_CONFIDENCE",
        # integrations: its store, the key sealing its secrets, where outbound calls may go.
        "INTEGRATIONS_STORE_URL",
        "CONTENT_LLM",  # integrations' social content: whether it asks the llm (auto, off, required)
        "INTEGRATIONS_KEK_FILE",
        "OUTBOUND_ALLOWLIST",
        # integrations' webhook delivery: attempts, backoff, per-attempt timeout, concurrency, polling.
        "WEBHOOK_MAX_ATTEMPTS",
        "WEBHOOK_BACKOFF_SECONDS",
        "WEBHOOK_BACKOFF_MAX_SECONDS",
        "WEBHOOK_TIMEOUT_SECONDS",
        "WEBHOOK_CONCURRENCY",
        "WEBHOOK_POLL_SECONDS",
        # The outbox relay of the publishing services (bhiv_core.events.relay).
        "EVENTS_RELAY",
        "EVENTS_RELAY_POLL_SECONDS",
        "EVENTS_RELAY_MAX_BACKOFF_SECONDS",
        # sentinel
        "SENTINEL_STORE_URL",
        "AUDIT_CHECKPOINT_KEY_FILE",
        "AUDIT_CHECKPOINT_RECORDS",
        "AUDIT_CHECKPOINT_SECONDS",
        # sentinel's access-log port (the edge's access-log stream)
        "SENTINEL_ACCESS_LOG_PORT",
        "SENTINEL_ACCESS_LOG_RATE",
        "SENTINEL_ACCESS_LOG_MAX_MESSAGE_BYTES",
        "SENTINEL_ACCESS_LOG_MAX_CONNECTIONS",
        # sentinel's block list and its xDS server
        "SENTINEL_XDS_PORT",
        "SENTINEL_BLOCK_ALLOWLIST",
        # sentinel's alerts
        "ALERT_KEK_FILE",
        "ALERT_SMTP_HOST",
        "ALERT_SMTP_PORT",
        "ALERT_SMTP_STARTTLS",
        "ALERT_SMTP_CA_FILE",
        "ALERT_SMTP_USERNAME",
        "ALERT_SMTP_PASSWORD_FILE",
        "ALERT_SMTP_FROM",
        "ALERT_DEDUP_SECONDS",
        "ALERT_RATE_LIMIT",
        "ALERT_RATE_WINDOW_SECONDS",
        "ALERT_MAX_ATTEMPTS",
        "ALERT_BACKOFF_SECONDS",
        "ALERT_TIMEOUT_SECONDS",
        # sentinel's incidents and threat response
        "INCIDENT_WINDOW_SECONDS",
        "THREAT_RESPONSE_POLICY_FILE",
        "THREAT_RESPONSE_QUEUE",
        "THREAT_STREAM_BUFFER",
        "THREAT_STREAM_MAX_SUBSCRIBERS",
    }
)
"""Settings that are not per service (some belong to one service and say so in their name)."""

KNOWN_SETTINGS: Final[frozenset[str]] = SHARED_SETTINGS | {
    f"{spec.name.upper()}_{name}" for spec in SERVICES for name in PER_SERVICE_SETTINGS
}
"""Every setting name, without the ``BHIV_`` prefix."""


def is_known_setting(name: str) -> bool:
    """True when ``name`` (without ``BHIV_``) is a setting the platform reads."""
    return name in KNOWN_SETTINGS


def closest_setting(name: str) -> str | None:
    """The known setting ``name`` was most likely meant to be (for a "did you mean"), if any."""
    matches = difflib.get_close_matches(name, sorted(KNOWN_SETTINGS), n=1, cutoff=0.75)
    return matches[0] if matches else None
