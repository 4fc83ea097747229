"""The threat response agent: an incident in, the policy's actions out, each taken once.

:meth:`ThreatResponseAgent.respond` is called with an incident's name whenever the incident
changes. It asks the :class:`IncidentLedger` to *claim* the incident's due actions in one
transaction: the ledger reads the incident, the agent decides (:meth:`ThreatResponseAgent.decide`)
what the policy wants that has not been done — addresses not blocked yet for this incident, an
alert when the incident reached a severity not alerted yet — and the ledger marks them taken
before anything happens. Only then are the addresses blocked and the alert raised, and the
outcomes appended to the incident's ``actions_taken``. A burst of 500 detections of one attack is
one incident, so one block and one alert; a second sentinel replica sharing the store claims
nothing the first has claimed. A failed action stays claimed (it is not retried in a loop
against a failing block list): its failure is written to ``actions_taken``, logged and counted.

Blocks escalate for repeat offenders (:class:`~.policy.Escalation`): the ledger keeps every block
made, so a block counts the same address's earlier ones within the window. An address already
under an active block (from another incident, or an administrator's) is not blocked again; which
blocks are active is the block list's to say (:meth:`AddressBlocker.blocked`), not the ledger's, so
that a block an administrator lifted no longer counts as active and the next attack is blocked.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from prometheus_client import Counter

from bhiv_core.agents.threat_detection import Category, Severity
from bhiv_core.agents.threat_response.policy import PolicyEntry, ResponsePolicy, format_duration
from bhiv_core.runtime.errors import BhivError
from bhiv_core.runtime.telemetry import REGISTRY

__all__ = [
    "RESPONSE_OUTCOMES",
    "AddressBlocker",
    "Alerter",
    "Decision",
    "IncidentFacts",
    "IncidentLedger",
    "ThreatResponseAgent",
    "cidr_of",
]

log = logging.getLogger(__name__)

RESPONSE_OUTCOMES = Counter(
    "bhiv_threat_response",
    "Threat response outcomes: blocked, alerted, block_refused, and every failure by stage "
    "(block_failed, alert_failed, grouping_failed, response_failed, queue_full, stream_cut_off).",
    ("outcome",),
    registry=REGISTRY,
)
"""``bhiv_threat_response_total{outcome}``: what the response did, and what failed (never silently)."""


class AddressBlocker(Protocol):
    """Blocks addresses at the edge (sentinel's block list, served to every Envoy over xDS)."""

    async def block(self, cidr: str, *, ttl: timedelta | None, reason: str, incident: str) -> str:
        """Blocks ``cidr`` for ``ttl`` (None: until lifted); returns a description such as its expiry.

        Raises:
            Exception: The block was refused (an allowlisted address) or failed.

        """
        ...

    async def blocked(self, address: str) -> str | None:
        """Describes the active block covering ``address`` (such as ``until 2026-12-02T12:15:00Z``).

        Returns:
            The description, or None when no active block covers the address: one that expired or
            that an administrator lifted is not active.

        Raises:
            Exception: The block list could not be read.

        """
        ...


class Alerter(Protocol):
    """Raises alerts through sentinel's alert channels."""

    async def raise_alert(
        self, kind: str, severity: Severity, summary: str, details: str, dedup_key: str, incident: str
    ) -> list[str]:
        """Raises one alert; returns what happened per channel, as ``actions_taken`` lines."""
        ...


@dataclass(frozen=True, slots=True)
class IncidentFacts:
    """What the agent needs to know of an incident.

    Attributes:
        name: ``incidents/{id}``.
        title: Its one-line summary.
        rule_id: The rule its events matched.
        category: Its category.
        severity: Its highest severity so far.
        addresses: Its distinct source addresses (at most 100).
        event_count: Events grouped into it.
        blocked: Addresses already blocked (or claimed) for it.
        alerted: The highest severity it was alerted at; None when never.

    """

    name: str
    title: str
    rule_id: str
    category: Category
    severity: Severity
    addresses: tuple[str, ...]
    event_count: int
    blocked: frozenset[str]
    alerted: Severity | None


@dataclass(frozen=True, slots=True)
class Decision:
    """The actions due for an incident, as claimed.

    Attributes:
        entry: The policy entry of its category and severity.
        block: The addresses to block now.
        alert: Whether to raise an alert now.

    """

    entry: PolicyEntry
    block: tuple[str, ...]
    alert: bool

    @property
    def empty(self) -> bool:
        """True when nothing is due."""
        return not self.block and not self.alert


class IncidentLedger(Protocol):
    """Where incidents and the blocks made for them are kept (sentinel's incident store)."""

    async def claim(
        self, incident: str, decide: Callable[[IncidentFacts], Decision]
    ) -> tuple[IncidentFacts, Decision] | None:
        """In one transaction: reads the incident, calls ``decide``, marks its actions taken.

        Returns None when the incident does not exist, is resolved, or nothing is due.
        """
        ...

    async def block_history(
        self, address: str, *, since: datetime, now: datetime
    ) -> tuple[int, datetime | None]:
        """The blocks of ``address`` made since ``since``, and the end of one still active at ``now``."""
        ...

    async def record_block(self, address: str, incident: str, *, at: datetime, until: datetime) -> None:
        """Keeps a block made (for escalation and the active-block check)."""
        ...

    async def add_actions(self, incident: str, actions: Sequence[str]) -> None:
        """Appends ``actions`` to the incident's ``actions_taken``."""
        ...


def cidr_of(address: str) -> str | None:
    """``203.0.113.7`` → ``203.0.113.7/32`` (``/128`` for IPv6); None for anything else."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return None
    return f"{parsed.compressed}/{parsed.max_prefixlen}"


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _clock_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ThreatResponseAgent:
    """Applies the response policy to incidents.

    Args:
        policy: What to do per category and severity.
        ledger: The incidents and the blocks made.
        alerter: Raises alerts.
        blocker: Blocks addresses; None when no block list is wired (the block is then recorded
            as not made).
        clock: The current UTC time.

    Attributes:
        responses: Incidents acted on (something was due).
        blocks: Addresses blocked.
        alerts: Alerts raised.
        failures: Actions that failed (logged and written to the incident).

    """

    def __init__(
        self,
        policy: ResponsePolicy,
        ledger: IncidentLedger,
        alerter: Alerter,
        blocker: AddressBlocker | None = None,
        clock: Callable[[], datetime] = _utc_now,
    ):
        self.policy = policy
        self._ledger = ledger
        self._alerter = alerter
        self._blocker = blocker
        self._clock = clock
        self.responses = 0
        self.blocks = 0
        self.alerts = 0
        self.failures = 0

    def decide(self, facts: IncidentFacts) -> Decision:
        """What the policy wants for ``facts`` that was not done yet (pure: no I/O)."""
        entry = self.policy.decide(facts.category, facts.severity)
        block: tuple[str, ...] = ()
        if entry.block:
            block = tuple(a for a in facts.addresses if a not in facts.blocked and cidr_of(a) is not None)
        alert = entry.alert and (facts.alerted is None or facts.severity > facts.alerted)
        return Decision(entry, block, alert)

    async def respond(self, incident: str) -> list[str]:
        """Takes the incident's due actions once; returns the ``actions_taken`` lines it added."""
        claimed = await self._ledger.claim(incident, self.decide)
        if claimed is None:
            return []
        facts, decision = claimed
        self.responses += 1
        actions: list[str] = []
        for address in decision.block:
            actions.append(await self._block(facts, decision.entry, address))
        if decision.alert:
            actions += await self._alert(facts, actions)
        if actions:
            await self._ledger.add_actions(incident, actions)
        log.warning(
            "threat response",
            extra={"incident": incident, "response": decision.entry.response, "actions": actions},
        )
        return actions

    async def _block(self, facts: IncidentFacts, entry: PolicyEntry, address: str) -> str:
        base = entry.ttl or timedelta(0)  # the policy loader pairs every block with a ttl
        now = self._clock()
        escalation = self.policy.escalation
        prior, active_until = await self._ledger.block_history(
            address, since=now - escalation.window, now=now
        )
        ttl = escalation.ttl(base, prior)
        repeat = f", block {prior + 1} in {format_duration(escalation.window)}" if prior else ""
        if self._blocker is None:
            if active_until is not None:
                return f"{address} already blocked until {_clock_time(active_until)}"
            return f"not blocked {address} for {format_duration(ttl)}: no block list is configured"
        cidr = cidr_of(address) or address
        try:
            # The block list says what is active: the ledger does not hear of lifted blocks.
            covering = await self._blocker.blocked(address)
            if covering is not None:
                return f"{address} already blocked {covering}"
            described = await self._blocker.block(
                cidr, ttl=ttl, reason=f"{facts.title} ({facts.rule_id})", incident=facts.name
            )
        except (
            BhivError
        ) as exc:  # refused by the block list (an allowlisted address): a decision, not a fault
            RESPONSE_OUTCOMES.labels("block_refused").inc()
            log.warning(
                "threat response: block refused",
                extra={"incident": facts.name, "address": address, "error": str(exc)[:200]},
            )
            return f"block of {address} refused: {str(exc)[:200] or type(exc).__name__}"
        except Exception as exc:
            self.failures += 1
            RESPONSE_OUTCOMES.labels("block_failed").inc()
            log.exception("threat response: block failed", extra={"incident": facts.name, "address": address})
            return f"block of {address} failed: {str(exc)[:200] or type(exc).__name__}"
        await self._ledger.record_block(address, facts.name, at=now, until=now + ttl)
        self.blocks += 1
        RESPONSE_OUTCOMES.labels("blocked").inc()
        detail = f" ({described[:200]})" if described else ""
        return f"blocked {address} for {format_duration(ttl)}{repeat}{detail}"

    async def _alert(self, facts: IncidentFacts, actions: Sequence[str]) -> list[str]:
        lines = [
            facts.title,
            f"Incident: {facts.name}",
            f"Rule: {facts.rule_id}",
            f"Severity: {facts.severity.name}",
            f"Events: {facts.event_count}",
            f"Addresses: {', '.join(facts.addresses[:20])}" + (" …" if len(facts.addresses) > 20 else ""),
        ]
        if actions:
            lines += ["Actions:", *(f"- {a}" for a in actions)]
        try:
            outcomes = await self._alerter.raise_alert(
                facts.category.value,
                facts.severity,
                facts.title,
                "\n".join(lines),
                f"{facts.name}:{facts.severity.name.lower()}",
                facts.name,
            )
        except Exception as exc:
            self.failures += 1
            RESPONSE_OUTCOMES.labels("alert_failed").inc()
            log.exception("threat response: alert failed", extra={"incident": facts.name})
            return [f"alert failed: {str(exc)[:200] or type(exc).__name__}"]
        self.alerts += 1
        RESPONSE_OUTCOMES.labels("alerted").inc()
        return outcomes or ["alert raised: no enabled alert channel takes this severity"]
