"""The threat response agent: incidents in, blocks and alerts out, per a policy kept as data.

- :mod:`.policy` and ``policy.toml``: what to do per threat category and severity (block with an
  escalating TTL, alert, or only record).
- :mod:`.agent`: :class:`ThreatResponseAgent`, which claims an incident's due actions once and takes
  them through an :class:`AddressBlocker` (the block list) and an :class:`Alerter` (alert channels).
"""

from bhiv_core.agents.threat_response.agent import (
    AddressBlocker,
    Alerter,
    Decision,
    IncidentFacts,
    IncidentLedger,
    ThreatResponseAgent,
    cidr_of,
)
from bhiv_core.agents.threat_response.policy import (
    Escalation,
    PolicyEntry,
    PolicyError,
    ResponsePolicy,
    format_duration,
    load_policy,
    parse_duration,
)

__all__ = [
    "AddressBlocker",
    "Alerter",
    "Decision",
    "Escalation",
    "IncidentFacts",
    "IncidentLedger",
    "PolicyEntry",
    "PolicyError",
    "ResponsePolicy",
    "ThreatResponseAgent",
    "cidr_of",
    "format_duration",
    "load_policy",
    "parse_duration",
]
