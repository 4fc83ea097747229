"""What every detector emits: a :class:`Detection` with its category and severity.

The two enums mirror ``bhiv.sentinel.v1.ThreatCategory`` and ``Severity`` by name, so sentinel maps
them to the contract without a table; severities are ordered (a higher value is more severe).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["EVIDENCE_LIMIT", "Category", "Detection", "Severity", "printable"]

EVIDENCE_LIMIT = 2000
"""The most characters of evidence a detection carries (``ThreatEvent.evidence``)."""


class Severity(enum.IntEnum):
    """How serious a detection is; ordered like ``bhiv.sentinel.v1.Severity``."""

    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4


class Category(enum.Enum):
    """The kind of attack (``bhiv.sentinel.v1.ThreatCategory``)."""

    INJECTION = "injection"
    BRUTE_FORCE = "brute_force"
    FLOOD = "flood"
    SCANNING = "scanning"
    TOKEN_ABUSE = "token_abuse"  # noqa: S105 - a category name, not a secret


@dataclass(frozen=True, slots=True)
class Detection:
    """One detection: a rule matched a field, or a detector's window crossed its threshold.

    Attributes:
        rule_id: The rule or detector that fired, such as ``sql.union_select`` or
            ``bruteforce.address``.
        category: The kind of attack.
        severity: How serious it is.
        source_address: The client address involved; empty when unknown.
        principal: The account involved (the username tried, or the caller); empty when none.
        method: The full gRPC method involved; empty when none.
        evidence: What matched, for a person, at most :data:`EVIDENCE_LIMIT` characters; never a
            password or token.
        time: When it was detected, in the detector's clock (seconds).

    """

    rule_id: str
    category: Category
    severity: Severity
    source_address: str
    principal: str
    method: str
    evidence: str
    time: float


def printable(text: str, limit: int = 120) -> str:
    """``text`` cut to ``limit`` characters with control characters escaped, for evidence and logs.

    Linear in ``limit`` whatever the length of ``text`` (only the head is read).
    """
    head = text[: limit + 1]
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in head[:limit])
    return shown + ("…" if len(head) > limit else "")
