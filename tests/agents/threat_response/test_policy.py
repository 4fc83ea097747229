"""The response policy as data, and the agent that applies it.

Every entry of the shipped ``policy.toml`` is run through the real agent over sentinel's real
incident store (SQLite in a temporary directory) and real alert dispatcher; only the block list is
a recording :class:`~bhiv_core.agents.threat_response.AddressBlocker` (the real one is
sentinel's BlockService, built beside this).
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from bhiv.sentinel.v1 import threat_pb2
from bhiv.sentinel.v1 import threat_service_pb2 as ts
from bhiv_core.agents.threat_detection import Category, Detection, Severity
from bhiv_core.agents.threat_response import (
    Escalation,
    PolicyError,
    ThreatResponseAgent,
    format_duration,
    load_policy,
    parse_duration,
)
from bhiv_core.agents.threat_response.policy import parse_policy
from bhiv_core.runtime.telemetry import REGISTRY
from bhiv_core.security.principal import Principal
from bhiv_core.services.sentinel.alerts.service import Alerts
from bhiv_core.services.sentinel.incidents.incidents import Incidents
from bhiv_core.services.sentinel.incidents.resources import INCIDENT, make_incident_store
from bhiv_core.services.sentinel.incidents.sink import DispatcherAlerter, ResponseSink, ResponseWorker
from bhiv_core.services.sentinel.incidents.stream import ThreatEventHub
from bhiv_core.services.sentinel.store import SqliteSentinelStore, ThreatEventRecord
from tests.harness import config_for

POLICY = load_policy()


def failures(outcome: str) -> float:
    return REGISTRY.get_sample_value("bhiv_threat_response_total", {"outcome": outcome}) or 0.0


ADDRESS = "203.0.113.7"


class MovableClock:
    """UTC time that a test moves."""

    def __init__(self) -> None:
        self.now = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def seconds(self) -> float:
        return self.now.timestamp()


@dataclass
class RecordingBlocker:
    """Records every block and keeps the active ones (as the block list does); fails with ``error``
    when set."""

    clock: MovableClock
    calls: list[tuple[str, timedelta | None, str]] = field(default_factory=list)
    error: Exception | None = None
    active: dict[str, datetime | None] = field(default_factory=dict)

    async def block(self, cidr: str, *, ttl: timedelta | None, reason: str, incident: str) -> str:
        if self.error is not None:
            raise self.error
        self.calls.append((cidr, ttl, incident))
        self.active[cidr] = self.clock() + ttl if ttl is not None else None
        return "until later"

    async def blocked(self, address: str) -> str | None:
        if self.error is not None:
            raise self.error
        cidr = f"{address}/32"
        if cidr not in self.active:
            return None
        until = self.active[cidr]
        if until is None:
            return "until lifted"
        return f"until {until.strftime('%Y-%m-%dT%H:%M:%SZ')}" if until > self.clock() else None

    def lift(self, address: str) -> None:
        """An administrator lifts the block of ``address`` (UnblockAddress)."""
        del self.active[f"{address}/32"]


@dataclass
class Rig:
    incidents: Incidents
    agent: ThreatResponseAgent
    blocker: RecordingBlocker
    clock: MovableClock
    alerts: Alerts

    async def incident(
        self, category: Category, severity: Severity, address: str = ADDRESS, rule: str = ""
    ) -> str:
        return await self.incidents.group(event(category, severity, address, rule, self.clock()))

    async def get(self, name: str) -> threat_pb2.Incident:
        record = await self.incidents.store.get(INCIDENT.collection, INCIDENT.id_of(name))
        assert record is not None
        return INCIDENT.load(record)


_ids = itertools.count()


def event(
    category: Category, severity: Severity, address: str, rule: str, when: datetime
) -> ThreatEventRecord:
    return ThreatEventRecord(
        event_id=f"e{next(_ids)}",
        rule_id=rule or f"{category.value}.test",
        category=category.value,
        severity=int(severity),
        source_address=address,
        principal="admin",
        method="/bhiv.identity.v1.AuthService/Login",
        evidence="test",
        detect_time=when,
    )


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    clock = MovableClock()
    store = make_incident_store(tmp_path, None)
    await store.open()
    alerts = Alerts.from_config(config_for("sentinel", DATA_DIR=str(tmp_path)), clock=clock.seconds)
    await alerts.store.open()
    incidents = Incidents(store, window_seconds=3600, clock=clock.seconds)
    blocker = RecordingBlocker(clock)
    agent = ThreatResponseAgent(POLICY, incidents, DispatcherAlerter(alerts.dispatcher), blocker, clock=clock)
    try:
        yield Rig(incidents, agent, blocker, clock, alerts)
    finally:
        await alerts.store.close()
        await store.close()


def test_the_shipped_policy_has_an_entry_for_every_category_and_severity() -> None:
    assert set(POLICY.entries) == {(c, s) for c in Category for s in Severity}
    # The table the README documents: lows are only recorded, criticals block and alert.
    for category in Category:
        assert POLICY.decide(category, Severity.LOW).response == "record"
        assert POLICY.decide(category, Severity.CRITICAL).response == "block+alert"
    assert POLICY.decide(Category.BRUTE_FORCE, Severity.HIGH).ttl == timedelta(minutes=15)
    assert POLICY.escalation == Escalation(timedelta(hours=24), 2, timedelta(hours=24))


@pytest.mark.parametrize(
    ("category", "severity"),
    [(c, s) for c in Category for s in Severity],
    ids=[f"{c.value}-{s.name.lower()}" for c in Category for s in Severity],
)
async def test_every_policy_entry_is_applied_once_per_incident(
    rig: Rig, category: Category, severity: Severity
) -> None:
    entry = POLICY.decide(category, severity)
    name = await rig.incident(category, severity)
    actions = await rig.agent.respond(name)
    if entry.block:
        assert rig.blocker.calls == [(f"{ADDRESS}/32", entry.ttl, name)]
        assert (
            actions[0] == f"blocked {ADDRESS} for {format_duration(entry.ttl or timedelta())} (until later)"
        )
    else:
        assert rig.blocker.calls == []
    alerted = [a for a in actions if a.startswith("alert")]
    # No channel is configured: the alert is raised and says that it reached nobody.
    assert alerted == (["alert raised: no enabled alert channel takes this severity"] if entry.alert else [])
    assert list((await rig.get(name)).actions_taken) == actions
    # More events of the same attack: the same incident, nothing done again.
    for _ in range(3):
        assert await rig.incident(category, severity) == name
        assert await rig.agent.respond(name) == []
    assert len(rig.blocker.calls) == (1 if entry.block else 0)
    assert rig.agent.alerts == (1 if entry.alert else 0)


async def test_repeat_offenders_get_doubling_blocks_up_to_the_cap(rig: Rig) -> None:
    # A week's window, so that every earlier block counts (with the shipped 24h window the
    # oldest ones are forgiven before the cap is reached: the next test).
    rig.agent.policy = dataclasses.replace(
        POLICY, escalation=Escalation(timedelta(days=7), 2, timedelta(hours=24))
    )
    ttls = []
    for i in range(8):
        # A new incident (another rule) after the previous block has run out.
        name = await rig.incident(Category.INJECTION, Severity.HIGH, rule=f"sql.rule{i}")
        await rig.agent.respond(name)
        ttls.append(rig.blocker.calls[-1][1])
        rig.clock.now += ttls[-1] + timedelta(seconds=1)
    minutes = [int(t.total_seconds() // 60) for t in ttls if t is not None]
    assert minutes == [15, 30, 60, 120, 240, 480, 960, 1440]  # capped at 24h
    assert (await rig.get(name)).actions_taken[0].startswith(f"blocked {ADDRESS} for 1d, block 8 in 7d")


async def test_blocks_older_than_the_escalation_window_are_forgiven(rig: Rig) -> None:
    await rig.agent.respond(await rig.incident(Category.FLOOD, Severity.HIGH, rule="flood.a"))
    rig.clock.now += timedelta(minutes=6)
    await rig.agent.respond(await rig.incident(Category.FLOOD, Severity.HIGH, rule="flood.b"))
    rig.clock.now += timedelta(hours=25)
    await rig.agent.respond(await rig.incident(Category.FLOOD, Severity.HIGH, rule="flood.c"))
    assert [c[1] for c in rig.blocker.calls] == [
        timedelta(minutes=5),
        timedelta(minutes=10),
        timedelta(minutes=5),
    ]


async def test_an_address_under_an_active_block_is_not_blocked_again(rig: Rig) -> None:
    await rig.agent.respond(
        await rig.incident(Category.BRUTE_FORCE, Severity.HIGH, rule="bruteforce.address")
    )
    second = await rig.incident(Category.TOKEN_ABUSE, Severity.HIGH, rule="token.forged")
    actions = await rig.agent.respond(second)
    assert len(rig.blocker.calls) == 1
    assert actions[0] == f"{ADDRESS} already blocked until 2026-12-02T12:15:00Z"


async def test_a_lifted_block_does_not_stop_the_next_attacks_block(rig: Rig) -> None:
    """An administrator's UnblockAddress is the block list's: the next incident blocks again."""
    await rig.agent.respond(
        await rig.incident(Category.BRUTE_FORCE, Severity.HIGH, rule="bruteforce.address")
    )
    rig.blocker.lift(ADDRESS)
    rig.clock.now += timedelta(minutes=1)
    actions = await rig.agent.respond(
        await rig.incident(Category.TOKEN_ABUSE, Severity.HIGH, rule="token.forged")
    )
    assert [c[1] for c in rig.blocker.calls] == [timedelta(minutes=15), timedelta(minutes=30)]
    assert actions[0] == f"blocked {ADDRESS} for 30m, block 2 in 1d (until later)"


async def test_an_incident_growing_more_severe_gets_the_stronger_response_once(rig: Rig) -> None:
    name = await rig.incident(Category.BRUTE_FORCE, Severity.MEDIUM)
    assert await rig.agent.respond(name) == ["alert raised: no enabled alert channel takes this severity"]
    assert await rig.incident(Category.BRUTE_FORCE, Severity.HIGH) == name
    actions = await rig.agent.respond(name)
    assert actions[0].startswith(f"blocked {ADDRESS} for 15m")
    assert rig.agent.alerts == 2  # alerted again at HIGH, once
    assert await rig.agent.respond(name) == []


async def test_a_failing_block_is_written_to_the_incident_counted_and_not_retried(rig: Rig) -> None:
    rig.blocker.error = PermissionError("203.0.113.7 is allowlisted")
    before = failures("block_failed")
    name = await rig.incident(Category.INJECTION, Severity.CRITICAL)
    actions = await rig.agent.respond(name)
    assert actions[0] == f"block of {ADDRESS} failed: 203.0.113.7 is allowlisted"
    assert rig.agent.failures == 1
    assert failures("block_failed") == before + 1  # bhiv_threat_response_total{outcome="block_failed"}
    rig.blocker.error = None
    assert await rig.agent.respond(name) == []
    assert rig.blocker.calls == []


async def test_a_resolved_incident_is_final_and_new_events_open_another(rig: Rig) -> None:
    name = await rig.incident(Category.SCANNING, Severity.MEDIUM)
    await rig.incidents.update(
        ts.UpdateIncidentRequest(
            incident=threat_pb2.Incident(name=name, status=threat_pb2.INCIDENT_STATUS_RESOLVED),
            update_mask=FieldMask(paths=["status"]),
        ),
        Principal(subject="users/admin", role="admin"),
    )
    assert await rig.agent.respond(name) == []
    again = await rig.incident(Category.SCANNING, Severity.MEDIUM)
    assert again != name
    await rig.agent.respond(again)
    # Resolved before the agent got to it: the resolved one did nothing, the new one blocks.
    assert rig.blocker.calls == [(f"{ADDRESS}/32", timedelta(minutes=5), again)]


async def test_a_burst_of_500_detections_is_one_incident_one_block_one_alert(
    rig: Rig, tmp_path: Path
) -> None:
    events = SqliteSentinelStore(tmp_path / "sentinel.db")
    await events.open()
    worker = ResponseWorker(rig.agent)
    hub = ThreatEventHub(buffer=500)
    watcher = hub.subscribe()
    sink = ResponseSink(events, rig.incidents, hub, worker, clock=rig.clock)
    await worker.start()
    try:
        for i in range(500):
            await sink.record(
                Detection(
                    "sql.union_select",
                    Category.INJECTION,
                    Severity.HIGH,
                    ADDRESS,
                    "",
                    "/bhiv.crm.v1.CustomerService/CreateCustomer",
                    f"UNION SELECT #{i}",
                    0.0,
                )
            )
        await worker.stop(drain_seconds=30)
    finally:
        await events.close()
    listed = await rig.incidents.list(ts.ListIncidentsRequest(page_size=500))
    assert len(listed.incidents) == 1
    incident = listed.incidents[0]
    assert incident.event_count == 500
    assert list(incident.source_addresses) == [ADDRESS]
    assert (
        incident.title
        == f"Injection from {ADDRESS} on /bhiv.crm.v1.CustomerService/CreateCustomer (sql.union_select)"
    )
    assert rig.blocker.calls == [(f"{ADDRESS}/32", timedelta(minutes=15), incident.name)]
    assert rig.agent.alerts == 1
    assert worker.failed == 0
    first = await watcher.next()
    assert first is not None and first.incident == incident.name and first.evidence == "UNION SELECT #0"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[policy]]\ncategory = "flood"\nseverity = "low"\n', "no entry for"),
        ('[[policy]]\ncategory = "floods"\nseverity = "low"\n', "category must be one of"),
        ('[[policy]]\ncategory = "flood"\nseverity = "severe"\n', "severity must be"),
        ('[[policy]]\ncategory = "flood"\nseverity = "low"\nblock = true\n', "a block needs a ttl"),
        ('[[policy]]\ncategory = "flood"\nseverity = "low"\nttl = "5m"\n', "a block needs a ttl"),
        (
            '[[policy]]\ncategory = "flood"\nseverity = "low"\nblock = true\nttl = "5 minutes"\n',
            "not a duration",
        ),
        ('[[policy]]\ncategory = "flood"\nseverity = "low"\nalert = "yes"\n', "alert must be true or false"),
        ('[[policy]]\ncategory = "flood"\nseverity = "low"\nnotify = true\n', "unknown keys"),
        ('[[policy]]\ncategory = "flood"\nseverity = "low"\n' * 2, "repeated"),
        ("[escalation]\nfactor = 0\n", "no [[policy]] tables"),
        ("", "no [[policy]] tables"),
    ],
)
def test_a_malformed_policy_is_refused_naming_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    with pytest.raises(PolicyError, match=re.escape(message)):
        load_policy(path)


def test_a_bad_escalation_is_refused() -> None:
    document = {
        "policy": [{"category": c.value, "severity": s.name.lower()} for c in Category for s in Severity],
        "escalation": {"factor": 0},
    }
    with pytest.raises(PolicyError, match="factor must be an integer"):
        parse_policy(document)
    document["escalation"] = {"window": "forever"}
    with pytest.raises(PolicyError, match="not a duration"):
        parse_policy(document)
    document["escalation"] = {"max_ttl": "2d", "factor": 3}
    assert parse_policy(document).escalation.ttl(timedelta(hours=1), 3) == timedelta(hours=27)


def test_durations_parse_and_format_both_ways() -> None:
    for text in ("30s", "15m", "1h", "2d"):
        assert format_duration(parse_duration(text)) == text
    assert format_duration(timedelta(minutes=90)) == "1h30m"
    for bad in ("0m", "-5m", "5", "m", "1.5h", "5 m", "1w"):
        with pytest.raises(PolicyError):
            parse_duration(bad)


def test_escalation_is_bounded_for_persistent_offenders() -> None:
    escalation = Escalation(timedelta(hours=24), 2, timedelta(hours=24))
    assert escalation.ttl(timedelta(minutes=15), 0) == timedelta(minutes=15)
    assert escalation.ttl(timedelta(minutes=15), 1_000_000) == timedelta(hours=24)


async def test_failures_of_grouping_and_response_are_counted_and_the_event_kept(
    rig: Rig, tmp_path: Path
) -> None:
    events = SqliteSentinelStore(tmp_path / "sentinel.db")
    await events.open()
    broken = Incidents(make_incident_store(tmp_path / "never-opened", None))  # every call raises
    worker = ResponseWorker(ThreatResponseAgent(POLICY, broken, DispatcherAlerter(rig.alerts.dispatcher)))
    sink = ResponseSink(events, broken, ThreatEventHub(), worker, clock=rig.clock)
    grouping, responding = failures("grouping_failed"), failures("response_failed")
    try:
        detection = Detection("flood.address", Category.FLOOD, Severity.HIGH, ADDRESS, "", "", "rate", 0.0)
        await sink.record(detection)
        stored, _ = await events.list_threat_events(ADDRESS)
        assert [(e.rule_id, e.incident) for e in stored] == [("flood.address", "")]
        assert sink.ungrouped == 1 and failures("grouping_failed") == grouping + 1
        # A response that raises is counted and the worker goes on.
        await worker.start()
        worker.submit("incidents/abc")
        worker.submit("incidents/def")
        await worker.stop(drain_seconds=30)
        assert worker.failed == 2 and failures("response_failed") == responding + 2
    finally:
        await events.close()
