"""Incidents: detections grouped by rule and source, read and updated through ThreatService.

**Grouping.** A detection joins the incident of the same *group key* — its rule and its source
(the client address; for rules about an account, such as ``bruteforce.account``, the account) —
that is OPEN or ACKNOWLEDGED and was last seen within ``BHIV_INCIDENT_WINDOW_SECONDS``; otherwise
it opens a new OPEN incident. A RESOLVED incident is final: later detections open a new one. The
incident counts its events, keeps the highest severity, the first 100 distinct addresses and the
first and last detection times. Opening an incident publishes ``sentinel.incident.opened`` in the
same transaction (:func:`~bhiv_core.events.outbox.publish`).

**Updates.** ``UpdateIncident`` changes ``status`` and ``notes`` (the mask's paths); status moves
only OPEN → ACKNOWLEDGED → RESOLVED or OPEN → RESOLVED (setting the status an incident already has
changes nothing); anything else is FAILED_PRECONDITION. A stale ``etag`` is ABORTED.

**Ledger.** :class:`Incidents` is also the response agent's
:class:`~bhiv_core.agents.threat_response.IncidentLedger`: it claims an incident's due actions
in the same transaction that reads it, and keeps the blocks made.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TypeVar

from bhiv.integrations.v1 import event_pb2
from bhiv.sentinel.v1 import threat_pb2
from bhiv.sentinel.v1 import threat_service_pb2 as ts
from bhiv_core.agents.threat_detection import Category, Severity
from bhiv_core.agents.threat_detection.detection import printable
from bhiv_core.agents.threat_response import Decision, IncidentFacts
from bhiv_core.events.outbox import publish
from bhiv_core.resources import (
    Cmp,
    Eq,
    Filter,
    In,
    Record,
    ResourceStore,
    Transaction,
    Value,
    list_page,
    new_id,
    time_range,
)
from bhiv_core.runtime.errors import Aborted, FailedPrecondition, FieldViolation, InvalidArgument
from bhiv_core.runtime.times import seconds_of, to_timestamp
from bhiv_core.security.principal import Principal
from bhiv_core.services.sentinel.incidents.resources import (
    BLOCKS,
    INCIDENT,
    INCIDENTS,
    incident_record,
    state_of,
)
from bhiv_core.services.sentinel.store import ThreatEventRecord

__all__ = [
    "ACTIONS_LIMIT",
    "ADDRESS_LIMIT",
    "NOTES_LIMIT",
    "Incidents",
    "group_key",
    "threat_event_to_proto",
]

ADDRESS_LIMIT = 100
"""The most source addresses an incident lists (the first ones seen)."""
ACTIONS_LIMIT = 200
"""The most ``actions_taken`` lines an incident keeps; later ones are counted in the last line."""
NOTES_LIMIT = 10_000
"""The longest ``notes`` (characters), as in the contract."""

OPEN = threat_pb2.INCIDENT_STATUS_OPEN
ACKNOWLEDGED = threat_pb2.INCIDENT_STATUS_ACKNOWLEDGED
RESOLVED = threat_pb2.INCIDENT_STATUS_RESOLVED
_LEGAL = {(OPEN, ACKNOWLEDGED), (OPEN, RESOLVED), (ACKNOWLEDGED, RESOLVED)}
_ACCOUNT_RULES = ("bruteforce.account",)
_WORDS = {
    Category.INJECTION: "Injection",
    Category.BRUTE_FORCE: "Brute force",
    Category.FLOOD: "Flood",
    Category.SCANNING: "Scanning",
    Category.TOKEN_ABUSE: "Token abuse",
}


def _category_number(category: str) -> threat_pb2.ThreatCategory.ValueType:
    return threat_pb2.ThreatCategory.Value("THREAT_CATEGORY_" + category.upper())


def _status_word(status: int) -> str:
    value = threat_pb2.IncidentStatus.DESCRIPTOR.values_by_number.get(status)
    return value.name.removeprefix("INCIDENT_STATUS_") if value is not None else str(status)


def threat_event_to_proto(event: ThreatEventRecord) -> threat_pb2.ThreatEvent:
    """Maps a stored detection to ``bhiv.sentinel.v1.ThreatEvent``."""
    stamp = to_timestamp(event.detect_time.timestamp())
    return threat_pb2.ThreatEvent(
        event_id=event.event_id,
        rule_id=event.rule_id,
        category=_category_number(event.category),
        severity=threat_pb2.Severity.ValueType(event.severity),
        source_address=event.source_address,
        principal=event.principal,
        method=event.method,
        evidence=event.evidence,
        detect_time=stamp,
        incident=event.incident,
    )


def _account_rule(rule_id: str) -> bool:
    return rule_id in _ACCOUNT_RULES


def group_key(event: ThreatEventRecord) -> str:
    """What groups detections into one incident: the rule and the source (address or account)."""
    if _account_rule(event.rule_id):
        return f"{event.rule_id}\x1faccount:{event.principal.casefold()}"
    return f"{event.rule_id}\x1f{event.source_address}"


def _title(event: ThreatEventRecord) -> str:
    word = _WORDS.get(Category(event.category), event.category)
    if _account_rule(event.rule_id):
        who = f" against account {printable(event.principal, 64)!r}"
    else:
        who = f" from {event.source_address or 'an unknown address'}"
    where = f" on {printable(event.method, 100)}" if event.method else ""
    return f"{word}{who}{where} ({event.rule_id})"


def _facts(incident: threat_pb2.Incident, record: Record) -> IncidentFacts:
    alerted = record.value("alerted")
    blocked = record.value("blocked")
    return IncidentFacts(
        name=incident.name,
        title=incident.title,
        rule_id=str(record.value("rule")),
        category=Category(
            threat_pb2.ThreatCategory.Name(incident.category).removeprefix("THREAT_CATEGORY_").lower()
        ),
        severity=Severity(incident.severity),
        addresses=tuple(incident.source_addresses),
        event_count=incident.event_count,
        blocked=frozenset(blocked if isinstance(blocked, list) else []),
        alerted=Severity(alerted) if isinstance(alerted, int) and alerted else None,
    )


class _Changed(Exception):
    """An incident changed between a transaction's read and its conditional write."""


_T = TypeVar("_T")


async def _retrying(
    store: ResourceStore, step: Callable[[Transaction], Awaitable[_T]], attempts: int = 5
) -> _T:
    """Runs ``step`` in a transaction, again when another writer changed the incident meanwhile.

    Within one SQLite store transactions are serialised and the write never loses; several
    sentinels on one MongoDB can race, and the loser re-reads instead of dropping its change.
    """
    for attempt in range(attempts):
        try:
            return await store.run(step)
        except _Changed:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


class Incidents:
    """Groups detections into incidents and serves the incident RPCs.

    Args:
        store: Sentinel's incident store.
        window_seconds: How long after its last event an incident takes new ones.
        clock: Unix seconds now.

    """

    def __init__(
        self, store: ResourceStore, *, window_seconds: float = 3600.0, clock: Callable[[], float] = time.time
    ):
        self.store = store
        self._window = window_seconds
        self._clock = clock

    # Grouping.

    async def group(self, event: ThreatEventRecord) -> str:
        """Adds ``event`` to its incident (opening one when none takes it); returns the incident's name."""
        key = group_key(event)
        seen = event.detect_time.timestamp()
        now = self._clock()

        async def step(txn: Transaction) -> str:
            filters: list[Filter] = [
                Eq("group_key", key),
                In("status", (OPEN, ACKNOWLEDGED)),
                Cmp("last_seen", ">=", seen - self._window),
            ]
            found = await txn.find(INCIDENTS, filters, limit=1)
            if found:
                record = found[0]
                incident = INCIDENT.load(record)
                incident.event_count += 1
                incident.severity = max(incident.severity, threat_pb2.Severity.ValueType(event.severity))
                if (
                    event.source_address
                    and event.source_address not in incident.source_addresses
                    and len(incident.source_addresses) < ADDRESS_LIMIT
                ):
                    incident.source_addresses.append(event.source_address)
                if seen > seconds_of(incident.last_seen_time):
                    incident.last_seen_time.CopyFrom(to_timestamp(seen))
                INCIDENT.stamp(incident, now=now)
                if not await txn.replace(
                    INCIDENTS, incident_record(incident, state_of(record)), expected_etag=record.etag
                ):
                    raise _Changed(incident.name)
                return incident.name
            incident = INCIDENT.fresh(
                threat_pb2.Incident(
                    title=_title(event),
                    category=_category_number(event.category),
                    severity=threat_pb2.Severity.ValueType(event.severity),
                    status=OPEN,
                    source_addresses=[event.source_address] if event.source_address else [],
                    event_count=1,
                    first_seen_time=to_timestamp(seen),
                    last_seen_time=to_timestamp(seen),
                ),
                now=now,
                id=new_id(),
            )
            state: dict[str, Value] = {"group_key": key, "rule": event.rule_id, "blocked": [], "alerted": 0}
            await txn.insert(INCIDENTS, incident_record(incident, state))
            opened = event_pb2.IncidentOpenedEvent(
                incident=incident.name,
                category=threat_pb2.ThreatCategory.Name(incident.category),
                severity=threat_pb2.Severity.Name(incident.severity),
                title=incident.title,
                source_address=event.source_address,
            )
            await publish(txn, opened, source="sentinel", subject=incident.name, time=now)
            return incident.name

        return await _retrying(self.store, step)

    # ThreatService.

    async def list(self, request: ts.ListIncidentsRequest) -> ts.ListIncidentsResponse:
        """A page of incidents matching the request's filters, most recently seen first."""
        filters: list[Filter] = []
        if request.status:
            filters.append(Eq("status", int(request.status)))
        if request.min_severity:
            filters.append(Cmp("severity", ">=", int(request.min_severity)))
        if request.category:
            filters.append(Eq("category", int(request.category)))
        start, end = time_range(request)
        if start is not None:
            filters.append(Cmp("last_seen", ">=", start))
        if end is not None:
            filters.append(Cmp("first_seen", "<", end))
        records, token = await list_page(
            self.store,
            INCIDENTS,
            filters,
            page_size=request.page_size,
            page_token=request.page_token,
            query=("ListIncidents",),
        )
        response = ts.ListIncidentsResponse(next_page_token=token)
        for record in records:
            response.incidents.add().MergeFromString(record.data)
        return response

    async def exists(self, name: str) -> bool:
        """Tells whether the incident ``name`` (``incidents/{id}``) exists (BlockAddress's check)."""
        if not name.startswith("incidents/"):
            return False
        return await self.store.get(INCIDENTS, INCIDENT.id_of(name)) is not None

    async def get(self, request: ts.GetIncidentRequest, principal: Principal) -> ts.GetIncidentResponse:
        """The incident named in the request; NOT_FOUND when unknown."""
        record = await INCIDENT.get(self.store, request.name, principal)
        return ts.GetIncidentResponse(incident=INCIDENT.load(record))

    async def update(
        self, request: ts.UpdateIncidentRequest, principal: Principal
    ) -> ts.UpdateIncidentResponse:
        """Applies the mask's ``status`` and ``notes``; checks the etag and the transition."""
        patch = request.incident
        if not patch.name:
            raise InvalidArgument(violations=[FieldViolation("incident.name", "is required", "REQUIRED")])
        paths = list(request.update_mask.paths)
        violations = []
        if "status" in paths and patch.status == threat_pb2.INCIDENT_STATUS_UNSPECIFIED:
            violations.append(
                FieldViolation(
                    "incident.status", "must be ACKNOWLEDGED or RESOLVED when in the mask", "REQUIRED"
                )
            )
        if "notes" in paths and len(patch.notes) > NOTES_LIMIT:
            violations.append(
                FieldViolation("incident.notes", f"must be at most {NOTES_LIMIT} characters", "TOO_LONG")
            )
        if violations:
            raise InvalidArgument(violations=violations)
        now = self._clock()

        async def step(txn: Transaction) -> ts.UpdateIncidentResponse:
            record = await INCIDENT.get(txn, patch.name, principal)
            current = INCIDENT.load(record)
            merged = INCIDENT.merge(current, patch, request.update_mask)
            if patch.etag and patch.etag != record.etag:
                raise Aborted(
                    f"{patch.name} changed since it was read (stale etag): re-read and retry",
                    reason="STALE_ETAG",
                )
            if merged.status != current.status and (current.status, merged.status) not in _LEGAL:
                raise FailedPrecondition(
                    f"{patch.name} cannot go from {_status_word(current.status)} to "
                    f"{_status_word(merged.status)}: only OPEN → ACKNOWLEDGED → RESOLVED and OPEN → RESOLVED",
                    reason="ILLEGAL_TRANSITION",
                )
            INCIDENT.stamp(merged, now=now)
            if not await txn.replace(
                INCIDENTS, incident_record(merged, state_of(record)), expected_etag=record.etag
            ):
                raise Aborted(
                    f"{patch.name} changed while this call ran: re-read it and retry",
                    reason="CONCURRENT_CHANGE",
                )
            return ts.UpdateIncidentResponse(incident=merged)

        return await self.store.run(step)

    # The response agent's ledger.

    async def claim(
        self, incident: str, decide: Callable[[IncidentFacts], Decision]
    ) -> tuple[IncidentFacts, Decision] | None:
        """Reads the incident, decides, and marks the decision's actions taken, in one transaction."""
        now = self._clock()

        async def step(txn: Transaction) -> tuple[IncidentFacts, Decision] | None:
            record = await txn.get(INCIDENTS, INCIDENT.id_of(incident))
            if record is None:
                return None
            message = INCIDENT.load(record)
            if message.status == RESOLVED:
                return None
            facts = _facts(message, record)
            decision = decide(facts)
            if decision.empty:
                return None
            state = state_of(record)
            state["blocked"] = sorted(facts.blocked | set(decision.block))
            if decision.alert:
                state["alerted"] = int(facts.severity)
            INCIDENT.stamp(message, now=now)
            if not await txn.replace(INCIDENTS, incident_record(message, state), expected_etag=record.etag):
                # Changed by another sentinel between the read and the write: it queues the
                # incident again, and the next claim decides on what is stored then.
                return None
            return facts, decision

        return await self.store.run(step)

    async def block_history(
        self, address: str, *, since: datetime, now: datetime
    ) -> tuple[int, datetime | None]:
        """How many blocks of ``address`` were made since ``since``; the end of one active at ``now``."""
        prior = await self.store.count(BLOCKS, [Eq("address", address), Cmp("at", ">=", since.timestamp())])
        active = await self.store.find(
            BLOCKS, [Eq("address", address), Cmp("until", ">", now.timestamp())], after=None, limit=1
        )
        end = active[0].value("until") if active else None
        until = datetime.fromtimestamp(end, UTC) if isinstance(end, float | int) else None
        return prior, until

    async def record_block(self, address: str, incident: str, *, at: datetime, until: datetime) -> None:
        """Keeps a block made by the response agent."""
        fields: dict[str, Value] = {
            "address": address,
            "at": at.timestamp(),
            "until": until.timestamp(),
            "incident": incident,
        }

        async def step(txn: Transaction) -> None:
            await txn.insert(BLOCKS, Record(id=new_id(), data=b"", fields=fields, owner="", etag=""))

        await self.store.run(step)

    async def add_actions(self, incident: str, actions: Sequence[str]) -> None:
        """Appends ``actions`` to ``actions_taken`` (at most :data:`ACTIONS_LIMIT` lines kept)."""
        now = self._clock()

        async def step(txn: Transaction) -> None:
            record = await txn.get(INCIDENTS, INCIDENT.id_of(incident))
            if record is None:
                return
            message = INCIDENT.load(record)
            taken = list(message.actions_taken)
            if len(taken) >= ACTIONS_LIMIT and taken[-1].startswith("… "):
                dropped = int(taken.pop().split()[1]) + len(actions)
            else:
                taken += actions
                dropped = max(len(taken) - ACTIONS_LIMIT + 1, 0) if len(taken) > ACTIONS_LIMIT else 0
                taken = taken[: ACTIONS_LIMIT - 1] if dropped else taken
            if dropped:
                taken.append(f"… {dropped} more actions not kept")
            del message.actions_taken[:]
            message.actions_taken.extend(taken)
            INCIDENT.stamp(message, now=now)
            if not await txn.replace(
                INCIDENTS, incident_record(message, state_of(record)), expected_etag=record.etag
            ):
                raise _Changed(incident)

        await _retrying(self.store, step)
