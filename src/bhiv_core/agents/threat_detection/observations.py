"""The detectors' input: one :class:`Observation` per thing seen, from any feed.

Feeds map their records onto this one shape: sentinel maps each reported security event
(``ReportSecurityEvent``) to a login, token or permission observation; the edge's access-log stream
(a later feed) maps each log entry to a :attr:`ObservationKind.CALL` with its gRPC status. The text
fields of requests come from the services' own screening, as ``SUSPICIOUS_INPUT`` events carrying
the matched fields (:mod:`bhiv_core.interceptors.screening`). Detectors never see where an
observation came from.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["SCAN_STATUSES", "Observation", "ObservationKind"]


class ObservationKind(enum.Enum):
    """What was observed."""

    LOGIN_FAILED = "login_failed"
    """A login with a wrong username or password (``principal`` is the username tried)."""
    LOGIN_SUCCEEDED = "login_succeeded"
    """A successful login."""
    TOKEN_INVALID = "token_invalid"  # noqa: S105 - a kind name, not a secret
    """A token that failed verification; ``detail`` says why (bad signature, expired, ...)."""
    TOKEN_REPLAYED = "token_replayed"  # noqa: S105 - a kind name, not a secret
    """A spent refresh token presented again."""
    PERMISSION_DENIED = "permission_denied"
    """A call refused for lack of permission, as reported by a service."""
    CALL = "call"
    """A finished call, with its gRPC status name in ``status`` (from an access log)."""
    SUSPICIOUS_INPUT = "suspicious_input"
    """Request text fields a service's screening matched, in ``fields``; screened again here."""


SCAN_STATUSES = frozenset({"NOT_FOUND", "UNIMPLEMENTED", "PERMISSION_DENIED"})
"""The call outcomes a scanner piles up: probing methods and resources that are not there or not its."""


@dataclass(frozen=True, slots=True)
class Observation:
    """One thing a detector may count.

    Attributes:
        kind: What was observed.
        source_address: The client address (normalised IP); empty when unknown.
        principal: The account involved: the username tried, or the caller; empty when none.
        method: The full gRPC method; empty when none.
        status: For :attr:`ObservationKind.CALL`, the gRPC status name (``OK``, ``NOT_FOUND``);
            an access-log feed must take it from the trailers, or from the body for gRPC-web.
        detail: Context for a person (never a secret), such as ``bad signature``.
        fields: Request text fields to screen for injection, as ``(path, text)`` pairs.

    """

    kind: ObservationKind
    source_address: str
    principal: str = ""
    method: str = ""
    status: str = ""
    detail: str = ""
    fields: tuple[tuple[str, str], ...] = ()
