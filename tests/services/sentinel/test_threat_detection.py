"""Sentinel runs threat detection on the security events services report: a real sentinel server,
events reported over gRPC, detections stored as threat events and logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest

from bhiv.sentinel.v1 import threat_pb2 as tp
from bhiv.sentinel.v1 import threat_service_pb2 as ts
from bhiv.sentinel.v1 import threat_service_pb2_grpc as ts_grpc
from bhiv_core.agents.threat_detection import Category, Detection, Severity
from bhiv_core.interceptors.errors import ErrorMappingInterceptor
from bhiv_core.runtime.chain import CallInfo, PreCheckInterceptor, chain_order
from bhiv_core.runtime.errors import InvalidArgument
from bhiv_core.runtime.server import start_service
from bhiv_core.security.principal import Principal, current_principal
from bhiv_core.services.sentinel import server
from bhiv_core.services.sentinel.store import EventKind, SecurityEvent, SqliteSentinelStore, ThreatEventRecord
from bhiv_core.services.sentinel.threats import observation_of, threat_event_of
from tests.harness import config_for

LOGIN = "/bhiv.identity.v1.AuthService/Login"


class AsIdentity(PreCheckInterceptor):
    async def check(self, call: CallInfo, request: Any, context: Any) -> None:
        call.principal = Principal(subject="services/identity", role="")
        current_principal.set(call.principal)


def chain(*_: Any) -> Any:
    return chain_order(errors=ErrorMappingInterceptor("sentinel.bhiv.core"), auth=AsIdentity())


async def threats(store: SqliteSentinelStore, address: str) -> list[ThreatEventRecord]:
    found, _ = await store.list_threat_events(address)
    return found


async def test_reported_failed_logins_become_a_stored_and_logged_brute_force_detection(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = config_for("sentinel", DATA_DIR=str(tmp_path))
    running = await start_service(config, server.definition(config), chain)
    reader = SqliteSentinelStore(tmp_path / "sentinel.db")
    await reader.open()
    caplog.set_level(logging.WARNING, logger="bhiv_core.services.sentinel.incidents.sink")
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            stub = ts_grpc.ThreatServiceStub(channel)
            for i in range(10):
                await stub.ReportSecurityEvent(
                    ts.ReportSecurityEventRequest(
                        kind=tp.SECURITY_EVENT_KIND_LOGIN_FAILED,
                        source_address="203.0.113.7",
                        principal="admin",
                        method=LOGIN,
                        detail=f"wrong password; attempt {i}",
                    )
                )
            # Another address with one failure: nothing.
            await stub.ReportSecurityEvent(
                ts.ReportSecurityEventRequest(
                    kind=tp.SECURITY_EVENT_KIND_LOGIN_FAILED, source_address="198.51.100.4", principal="priya"
                )
            )
            deadline = time.monotonic() + 30
            found: list[ThreatEventRecord] = []
            while time.monotonic() < deadline:
                found = await threats(reader, "203.0.113.7")
                if len(found) >= 2:
                    break
                await asyncio.sleep(0.05)
            assert sorted(t.rule_id for t in found) == ["bruteforce.account", "bruteforce.address"]
            by_address = next(t for t in found if t.rule_id == "bruteforce.address")
            assert (by_address.category, by_address.severity) == ("brute_force", int(Severity.HIGH))
            assert by_address.principal == "admin" and by_address.method == LOGIN
            assert "10 failed logins from 203.0.113.7" in by_address.evidence
            assert by_address.incident.startswith("incidents/")  # grouped by the response sink
            assert await threats(reader, "198.51.100.4") == []
    finally:
        await running.stop(grace=0.5)
        await reader.close()
    logged = [r for r in caplog.records if r.getMessage() == "threat detected"]
    assert {getattr(r, "rule_id", "") for r in logged} == {"bruteforce.address", "bruteforce.account"}
    assert all(getattr(r, "source_address", "") == "203.0.113.7" for r in logged)


async def test_every_reported_event_kind_maps_to_an_observation() -> None:
    moment = datetime(2026, 6, 1, tzinfo=UTC)
    for kind in EventKind:
        event = SecurityEvent("e", kind, "192.0.2.1", "u", LOGIN, "d", "services/identity", moment, moment)
        observation = observation_of(event)
        assert observation.kind.value == kind.value
        assert (observation.source_address, observation.principal, observation.method) == (
            "192.0.2.1",
            "u",
            LOGIN,
        )


async def test_stored_detections_list_in_detection_time_order(tmp_path: Path) -> None:
    store = SqliteSentinelStore(tmp_path / "sentinel.db")
    await store.open()
    times = iter([datetime(2026, 6, 1, tzinfo=UTC), datetime(2026, 6, 1, 0, 0, 1, tzinfo=UTC)])
    try:
        for rule in ("sql.union_select", "xss.script_tag"):
            detection = Detection(
                rule, Category.INJECTION, Severity.HIGH, "203.0.113.7", "", "/m.S/M", "evidence", 1.0
            )
            await store.add_threat_event(threat_event_of(detection, next(times)))
        page, token = await store.list_threat_events("203.0.113.7", page_size=1)
        assert [t.rule_id for t in page] == ["sql.union_select"] and token
        page, last = await store.list_threat_events("203.0.113.7", page_size=1, page_token=token)
        assert [t.rule_id for t in page] == ["xss.script_tag"] and last == ""
        # A token is bound to its query: another address's listing refuses it.
        with pytest.raises(InvalidArgument):
            await store.list_threat_events("198.51.100.1", page_token=token)
    finally:
        await store.close()


async def test_a_suspicious_input_report_becomes_an_injection_threat_with_the_rule_and_evidence(
    tmp_path: Path,
) -> None:
    config = config_for("sentinel", DATA_DIR=str(tmp_path))
    running = await start_service(config, server.definition(config), chain)
    reader = SqliteSentinelStore(tmp_path / "sentinel.db")
    await reader.open()
    create = "/bhiv.crm.v1.TicketService/CreateTicket"
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            stub = ts_grpc.ThreatServiceStub(channel)
            # A report whose excerpt sentinel's own rules do not match yields nothing: sentinel's
            # screening is the one that counts. Sent first: the agent takes events in order.
            await stub.ReportSecurityEvent(
                ts.ReportSecurityEventRequest(
                    kind=tp.SECURITY_EVENT_KIND_SUSPICIOUS_INPUT,
                    source_address="198.51.100.8",
                    fields=[tp.ScreenedField(path="ticket.title", excerpt="What's dharma?")],
                )
            )
            reply = await stub.ReportSecurityEvent(
                ts.ReportSecurityEventRequest(
                    kind=tp.SECURITY_EVENT_KIND_SUSPICIOUS_INPUT,
                    source_address="203.0.113.9",
                    principal="users/sales",
                    method=create,
                    fields=[tp.ScreenedField(path="ticket.title", excerpt="x'; DROP TABLE tickets;--")],
                )
            )
            assert reply.event.kind == tp.SECURITY_EVENT_KIND_SUSPICIOUS_INPUT
            deadline = time.monotonic() + 30
            found: list[ThreatEventRecord] = []
            while time.monotonic() < deadline and not found:
                found = await threats(reader, "203.0.113.9")
                await asyncio.sleep(0.05)
            assert [t.rule_id for t in found] == ["sql.stacked_query"]
            [threat] = found
            assert (threat.category, threat.severity) == ("injection", int(Severity.CRITICAL))
            assert (threat.principal, threat.method) == ("users/sales", create)
            assert "field ticket.title" in threat.evidence and "DROP TABLE" in threat.evidence
            # The benign report was processed before the one that produced the threat.
            assert await threats(reader, "198.51.100.8") == []
    finally:
        await running.stop(grace=0.5)
        await reader.close()


def test_a_suspicious_input_event_maps_to_an_observation_with_its_fields() -> None:
    moment = datetime(2026, 6, 1, tzinfo=UTC)
    fields = (("ticket.title", "<script>alert(1)</script>"),)
    event = SecurityEvent(
        "e",
        EventKind.SUSPICIOUS_INPUT,
        "192.0.2.1",
        "u",
        "/m.S/M",
        "",
        "services/crm",
        moment,
        moment,
        fields,
    )
    assert observation_of(event).fields == fields
