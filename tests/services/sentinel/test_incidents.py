"""Incidents, the threat response and the live event stream, end to end through sentinel's server.

Sentinel is started from its real definition (detection, incidents, response agent, alerts, all
stores on disk) behind the real error mapper, RBAC (the contract's permissions) and validation.
Security events are reported over gRPC; alerts reach a real HTTP receiver as a signed generic
webhook. Blocks go to sentinel's own block list (BlockService), which serves them to the edge.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp

from bhiv.sentinel.v1 import (
    alert_pb2,
    alert_service_pb2_grpc,
    block_pb2,
    block_service_pb2_grpc,
    threat_service_pb2_grpc,
)
from bhiv.sentinel.v1 import alert_service_pb2 as als
from bhiv.sentinel.v1 import block_service_pb2 as bs
from bhiv.sentinel.v1 import threat_pb2 as tp
from bhiv.sentinel.v1 import threat_service_pb2 as ts
from bhiv_core.interceptors.errors import ErrorMappingInterceptor
from bhiv_core.interceptors.rbac import RbacInterceptor, RolePolicy
from bhiv_core.interceptors.validation import ValidationInterceptor
from bhiv_core.outbound.signatures import verify_signature
from bhiv_core.runtime.chain import chain_order
from bhiv_core.runtime.server import RunningService, start_service
from bhiv_core.services.sentinel import server
from bhiv_core.services.sentinel.store import SqliteSentinelStore
from tests.harness import config_for
from tests.services.crm.conftest import AsCaller, as_, reason, refused, violations
from tests.services.sentinel.alert_sinks import http_sink

ADMIN = as_("admin")
OPS = as_("ops")
SALES = as_("sales")
LOGIN = "/bhiv.identity.v1.AuthService/Login"
SECRET = "k" * 24
OPEN, ACKNOWLEDGED, RESOLVED = (
    tp.INCIDENT_STATUS_OPEN,
    tp.INCIDENT_STATUS_ACKNOWLEDGED,
    tp.INCIDENT_STATUS_RESOLVED,
)


def chain(*_: Any) -> Any:
    return chain_order(
        errors=ErrorMappingInterceptor("sentinel.bhiv.core"),
        auth=AsCaller(),
        rbac=RbacInterceptor(RolePolicy()),
        validation=ValidationInterceptor(),
    )


@dataclass
class Sentinel:
    running: RunningService
    channel: grpc.aio.Channel
    data_dir: Path

    @property
    def threats(self) -> threat_service_pb2_grpc.ThreatServiceAsyncStub:
        return threat_service_pb2_grpc.ThreatServiceStub(self.channel)

    @property
    def alerts(self) -> alert_service_pb2_grpc.AlertServiceAsyncStub:
        return alert_service_pb2_grpc.AlertServiceStub(self.channel)

    async def failed_logins(self, address: str, username: str, count: int = 10) -> None:
        for i in range(count):
            await self.threats.ReportSecurityEvent(
                ts.ReportSecurityEventRequest(
                    kind=tp.SECURITY_EVENT_KIND_LOGIN_FAILED,
                    source_address=address,
                    principal=username,
                    method=LOGIN,
                    detail=f"wrong password; attempt {i}",
                ),
                metadata=ADMIN,
            )

    async def incidents(self, **filters: Any) -> list[tp.Incident]:
        request = ts.ListIncidentsRequest(page_size=500, **filters)
        return list((await self.threats.ListIncidents(request, metadata=OPS)).incidents)

    async def incident_of(self, address: str, rule_word: str = "bruteforce.address") -> tp.Incident:
        async def found() -> tp.Incident | None:
            for incident in await self.incidents():
                if (
                    address in incident.source_addresses
                    and rule_word in incident.title
                    and incident.actions_taken
                ):
                    return incident
            return None

        incident = await eventually(found)
        assert incident is not None, f"no incident for {address}"
        return incident


async def eventually(check: Callable[[], Any], deadline: float = 30.0) -> Any:
    """Polls ``check`` (a coroutine function) until it returns something truthy."""
    end = time.monotonic() + deadline
    while True:
        value = await check()
        if value or time.monotonic() > end:
            return value
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def serve_sentinel(data_dir: Path, **env: str) -> AsyncIterator[Sentinel]:
    config = config_for("sentinel", DATA_DIR=str(data_dir), **env)
    running = await start_service(config, server.definition(config), chain)
    channel = grpc.aio.insecure_channel(running.address)
    try:
        yield Sentinel(running, channel, data_dir)
    finally:
        await channel.close()
        await running.stop(grace=0.5)


@pytest.fixture
async def sentinel(tmp_path: Path) -> AsyncIterator[Sentinel]:
    async with serve_sentinel(tmp_path) as served:
        yield served


@pytest.fixture(scope="module")
async def shared(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Sentinel]:
    """One sentinel for the tests of refused requests (they change nothing)."""
    async with serve_sentinel(tmp_path_factory.mktemp("sentinel")) as served:
        yield served


async def test_a_brute_force_becomes_one_incident_with_its_events_actions_and_a_signed_alert(
    tmp_path: Path,
) -> None:
    with http_sink() as sink:
        async with serve_sentinel(tmp_path) as sentinel:
            channel = (
                await sentinel.alerts.CreateAlertChannel(
                    als.CreateAlertChannelRequest(
                        alert_channel=alert_pb2.AlertChannel(
                            display_name="soc",
                            kind=alert_pb2.ALERT_CHANNEL_KIND_GENERIC_WEBHOOK,
                            target=sink.url,
                            enabled=True,
                            min_severity=tp.SEVERITY_HIGH,
                        ),
                        secret=SECRET,
                    ),
                    metadata=ADMIN,
                )
            ).alert_channel
            # 30 failures: the detectors fire more than once, still one incident per rule and source.
            await sentinel.failed_logins("203.0.113.7", "admin", 30)
            incident = await sentinel.incident_of("203.0.113.7")
            assert incident.name.startswith("incidents/")
            assert incident.title == f"Brute force from 203.0.113.7 on {LOGIN} (bruteforce.address)"
            assert (incident.category, incident.severity, incident.status) == (
                tp.THREAT_CATEGORY_BRUTE_FORCE,
                tp.SEVERITY_HIGH,
                OPEN,
            )
            assert list(incident.source_addresses) == ["203.0.113.7"]
            assert incident.first_seen_time.ToDatetime() <= incident.last_seen_time.ToDatetime()
            assert incident.etag
            blocked, alerted = incident.actions_taken
            assert (
                blocked.startswith("blocked 203.0.113.7 for 15m (until ")
                and alerted == f"alerted {channel.name}"
            )
            # The block is in sentinel's block list, automatic, linked to the incident.
            check = await block_service_pb2_grpc.BlockServiceStub(sentinel.channel).CheckAddress(
                bs.CheckAddressRequest(address="203.0.113.7"), metadata=OPS
            )
            assert check.blocked and check.block.incident == incident.name
            assert (check.block.source, check.block.created_by) == (
                block_pb2.BLOCK_SOURCE_AUTOMATIC,
                "sentinel",
            )
            # The account has its own incident (rule bruteforce.account, source the account).
            by_account = await sentinel.incident_of("203.0.113.7", "against account 'admin'")
            assert by_account.name != incident.name
            # The alert reached the receiver once per incident, signed.
            requests = await eventually(lambda: _async(len(sink.requests) >= 2 and sink.requests))
            documents = [json.loads(r.body) for r in requests]
            assert sorted(d["incident"] for d in documents) == sorted([incident.name, by_account.name])
            for request in requests:
                assert verify_signature(
                    SECRET.encode(), request.headers["x-bhiv-signature"], request.body, time.time()
                )
            first = next(d for d in documents if d["incident"] == incident.name)
            assert (first["kind"], first["severity"]) == ("brute_force", "SEVERITY_HIGH")
            assert "blocked 203.0.113.7 for 15m" in first["details"]
            # Every stored threat event links to its incident; their number is the event count.
            got = (
                await sentinel.threats.GetIncident(ts.GetIncidentRequest(name=incident.name), metadata=OPS)
            ).incident
            reader = SqliteSentinelStore(tmp_path / "sentinel.db")
            await reader.open()
            try:
                events, _ = await reader.list_threat_events("203.0.113.7", page_size=500)
            finally:
                await reader.close()
            linked = [e for e in events if e.incident == incident.name]
            assert linked and all(e.rule_id == "bruteforce.address" for e in linked)
            assert got.event_count == len(linked)
            assert {e.incident for e in events} == {incident.name, by_account.name}
        # Nothing more was sent for these incidents (one alert each, whatever the event count).
        assert len(sink.requests) == 2


async def _async(value: Any) -> Any:
    return value


async def test_incidents_are_updated_through_legal_transitions_only(sentinel: Sentinel) -> None:
    await sentinel.failed_logins("198.51.100.20", "priya")
    incident = await sentinel.incident_of("198.51.100.20")

    async def update(status: int | None = None, notes: str | None = None, etag: str = "") -> tp.Incident:
        patch = tp.Incident(name=incident.name, etag=etag)
        paths = []
        if status is not None:
            patch.status = status  # type: ignore[assignment]
            paths.append("status")
        if notes is not None:
            patch.notes = notes
            paths.append("notes")
        request = ts.UpdateIncidentRequest(incident=patch, update_mask=FieldMask(paths=paths))
        return (await sentinel.threats.UpdateIncident(request, metadata=OPS)).incident

    current = (
        await sentinel.threats.GetIncident(ts.GetIncidentRequest(name=incident.name), metadata=OPS)
    ).incident
    acknowledged = await update(ACKNOWLEDGED, "looking: ops on call", etag=current.etag)
    assert (acknowledged.status, acknowledged.notes) == (ACKNOWLEDGED, "looking: ops on call")
    assert acknowledged.etag != current.etag
    # The stale etag is refused, and nothing changed.
    err = await refused(update(RESOLVED, etag=current.etag))
    assert err.code() == grpc.StatusCode.ABORTED
    assert reason(err) == "STALE_ETAG"
    # Backwards is not a transition.
    err = await refused(update(OPEN))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "cannot go from ACKNOWLEDGED to OPEN" in (err.details() or "")
    resolved = await update(RESOLVED, etag=acknowledged.etag)
    assert resolved.status == RESOLVED and resolved.notes == "looking: ops on call"
    for status in (OPEN, ACKNOWLEDGED):
        err = await refused(update(status))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    # Only notes: the status stays.
    noted = await update(notes="false positive: a load test")
    assert (noted.status, noted.notes) == (RESOLVED, "false positive: a load test")
    # RESOLVED is final: the same attack again opens a new incident.
    await sentinel.failed_logins("198.51.100.20", "priya")
    again = await eventually(
        lambda: _first(sentinel.incidents(status=OPEN), lambda i: "198.51.100.20" in i.source_addresses)
    )
    assert again is not None and again.name != incident.name


async def _first(listing: Any, predicate: Callable[[tp.Incident], bool]) -> tp.Incident | None:
    return next((i for i in await listing if predicate(i)), None)


async def test_an_open_incident_resolves_directly(sentinel: Sentinel) -> None:
    await sentinel.failed_logins("198.51.100.21", "ravi")
    incident = await sentinel.incident_of("198.51.100.21")
    request = ts.UpdateIncidentRequest(
        incident=tp.Incident(name=incident.name, status=RESOLVED), update_mask=FieldMask(paths=["status"])
    )
    assert (await sentinel.threats.UpdateIncident(request, metadata=OPS)).incident.status == RESOLVED


async def test_incidents_are_listed_with_filters_and_pages(sentinel: Sentinel) -> None:
    for n in range(3):
        await sentinel.failed_logins(f"192.0.2.{n + 1}", f"user{n}")
    everything = await eventually(lambda: _at_least(sentinel.incidents(), 6))
    assert len(everything) == 6  # per address and per account, three times
    # Most recently seen first.
    seen = [i.last_seen_time.ToNanoseconds() for i in everything]
    assert seen == sorted(seen, reverse=True)
    # Pages of two, without repeats or gaps.
    names, token = [], ""
    while True:
        page = await sentinel.threats.ListIncidents(
            ts.ListIncidentsRequest(page_size=2, page_token=token), metadata=OPS
        )
        names += [i.name for i in page.incidents]
        token = page.next_page_token
        if not token:
            break
    assert names == [i.name for i in everything]
    # Filters.
    assert len(await sentinel.incidents(category=tp.THREAT_CATEGORY_BRUTE_FORCE)) == 6
    assert await sentinel.incidents(category=tp.THREAT_CATEGORY_FLOOD) == []
    assert len(await sentinel.incidents(min_severity=tp.SEVERITY_HIGH)) == 6
    assert await sentinel.incidents(min_severity=tp.SEVERITY_CRITICAL) == []
    assert await sentinel.incidents(status=ACKNOWLEDGED) == []
    oldest = everything[-1]
    after = Timestamp()
    after.FromNanoseconds(oldest.last_seen_time.ToNanoseconds() + 1_000_000)  # stored as float seconds
    assert oldest.name not in [i.name for i in await sentinel.incidents(start_time=after)]
    before = Timestamp()
    before.FromNanoseconds(oldest.first_seen_time.ToNanoseconds() + 1_000_000)
    assert oldest.name in [i.name for i in await sentinel.incidents(end_time=before)]
    # Sales holds no sentinel permission.
    err = await refused(sentinel.threats.ListIncidents(ts.ListIncidentsRequest(), metadata=SALES))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED


async def _at_least(listing: Any, count: int) -> list[tp.Incident] | None:
    found = list(await listing)
    return found if len(found) >= count and all(i.actions_taken for i in found) else None


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (ts.ListIncidentsRequest(page_size=-1), "page_size"),
        (ts.ListIncidentsRequest(page_token="not-a-token"), "page_token"),
        (ts.ListIncidentsRequest(status=99), "status"),  # type: ignore[arg-type]
        (ts.ListIncidentsRequest(min_severity=-3), "min_severity"),  # type: ignore[arg-type]
        (ts.ListIncidentsRequest(category=42), "category"),  # type: ignore[arg-type]
        (
            ts.ListIncidentsRequest(
                start_time=Timestamp(seconds=2_000_000), end_time=Timestamp(seconds=1_000_000)
            ),
            "end_time",
        ),
    ],
    ids=["negative-page-size", "bad-token", "status", "min-severity", "category", "range"],
)
async def test_bad_list_requests_are_invalid_argument(shared: Sentinel, request_: Any, field: str) -> None:
    err = await refused(shared.threats.ListIncidents(request_, metadata=OPS))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in [f for f, _ in violations(err)]


async def test_a_page_token_of_other_filters_is_invalid_argument(sentinel: Sentinel) -> None:
    for n in range(2):
        await sentinel.failed_logins(f"192.0.2.{50 + n}", f"someone{n}")
    await eventually(lambda: _at_least(sentinel.incidents(), 4))
    page = await sentinel.threats.ListIncidents(ts.ListIncidentsRequest(page_size=1), metadata=OPS)
    assert page.next_page_token
    err = await refused(
        sentinel.threats.ListIncidents(
            ts.ListIncidentsRequest(page_size=1, page_token=page.next_page_token, status=OPEN), metadata=OPS
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in violations(err)] == ["page_token"]


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("", grpc.StatusCode.INVALID_ARGUMENT),
        ("incidents/", grpc.StatusCode.INVALID_ARGUMENT),
        ("incidents/a/b", grpc.StatusCode.INVALID_ARGUMENT),
        ("alerts/abc", grpc.StatusCode.INVALID_ARGUMENT),
        ("incidents/" + "a" * 65, grpc.StatusCode.INVALID_ARGUMENT),
        ("incidents/'; DROP TABLE incidents;--", grpc.StatusCode.INVALID_ARGUMENT),
        ("incidents/doesNotExist", grpc.StatusCode.NOT_FOUND),
    ],
)
async def test_bad_or_unknown_incident_names(shared: Sentinel, name: str, code: grpc.StatusCode) -> None:
    err = await refused(shared.threats.GetIncident(ts.GetIncidentRequest(name=name), metadata=OPS))
    assert err.code() == code
    patch = tp.Incident(name=name, notes="x")
    err = await refused(
        shared.threats.UpdateIncident(
            ts.UpdateIncidentRequest(incident=patch, update_mask=FieldMask(paths=["notes"])), metadata=OPS
        )
    )
    assert err.code() == code


async def test_bad_updates_are_invalid_argument_with_field_violations(sentinel: Sentinel) -> None:
    await sentinel.failed_logins("198.51.100.30", "maya")
    incident = await sentinel.incident_of("198.51.100.30")

    async def update(patch: tp.Incident, *paths: str, mask: bool = True) -> grpc.aio.AioRpcError:
        patch.name = patch.name or incident.name
        request = ts.UpdateIncidentRequest(incident=patch)
        if mask:
            request.update_mask.CopyFrom(FieldMask(paths=list(paths)))
        return await refused(sentinel.threats.UpdateIncident(request, metadata=OPS))

    cases = [
        (await update(tp.Incident(notes="n" * 10_001), "notes"), "incident.notes"),
        (await update(tp.Incident(status=7), "status"), "incident.status"),  # type: ignore[arg-type]
        (await update(tp.Incident(), "status"), "incident.status"),
        (await update(tp.Incident(title="mine"), "title"), "update_mask.paths[0]"),
        (await update(tp.Incident(), "notes", "nope"), "update_mask.paths[1]"),
        (await update(tp.Incident(notes="x"), mask=False), "update_mask"),
        (
            await refused(sentinel.threats.UpdateIncident(ts.UpdateIncidentRequest(), metadata=OPS)),
            "incident",
        ),
    ]
    for err, field in cases:
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert field in [f for f, _ in violations(err)], (field, violations(err))
    # A 1 MiB note is refused by the message limit or validation, never INTERNAL.
    err = await update(tp.Incident(notes="n" * (1 << 20)), "notes")
    assert err.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)
    # Nothing changed.
    got = (
        await sentinel.threats.GetIncident(ts.GetIncidentRequest(name=incident.name), metadata=OPS)
    ).incident
    assert (got.status, got.notes, got.title) == (OPEN, "", incident.title)


async def test_threat_events_stream_live_with_filters(sentinel: Sentinel) -> None:
    everything = sentinel.threats.StreamThreatEvents(ts.StreamThreatEventsRequest(), metadata=OPS)
    critical = sentinel.threats.StreamThreatEvents(
        ts.StreamThreatEventsRequest(
            min_severity=tp.SEVERITY_CRITICAL, category=tp.THREAT_CATEGORY_BRUTE_FORCE
        ),
        metadata=OPS,
    )
    floods = sentinel.threats.StreamThreatEvents(
        ts.StreamThreatEventsRequest(category=tp.THREAT_CATEGORY_FLOOD), metadata=OPS
    )
    # The streams are open once the hub counts them (a stream's first message is an event).
    await eventually(lambda: _async(_hub_subscribers(sentinel) == 3))
    await sentinel.failed_logins("203.0.113.40", "arjun")
    first = (await everything.read()).event
    assert first.category == tp.THREAT_CATEGORY_BRUTE_FORCE
    assert first.source_address == "203.0.113.40"
    assert first.incident.startswith("incidents/")
    assert first.rule_id in ("bruteforce.address", "bruteforce.account")
    # A successful login after the failures is critical: the first event the filtered stream sees.
    await sentinel.threats.ReportSecurityEvent(
        ts.ReportSecurityEventRequest(
            kind=tp.SECURITY_EVENT_KIND_LOGIN_SUCCEEDED,
            source_address="203.0.113.40",
            principal="arjun",
            method=LOGIN,
        ),
        metadata=ADMIN,
    )
    got = (await critical.read()).event
    assert (got.rule_id, got.severity) == ("bruteforce.success_after_failures", tp.SEVERITY_CRITICAL)
    floods.cancel()
    everything.cancel()
    critical.cancel()
    await eventually(lambda: _async(_hub_subscribers(sentinel) == 0))


def _hub_subscribers(sentinel: Sentinel) -> int:
    servicer = next(s for d, s in sentinel.running.definition.servicers if d.name == "ThreatService")
    return int(servicer._hub.subscribers)  # the test reads the live count


async def test_streams_end_cleanly_when_sentinel_shuts_down(tmp_path: Path) -> None:
    config = config_for("sentinel", DATA_DIR=str(tmp_path))
    running = await start_service(config, server.definition(config), chain)
    async with grpc.aio.insecure_channel(running.address) as channel:
        sentinel = Sentinel(running, channel, tmp_path)
        stream = sentinel.threats.StreamThreatEvents(ts.StreamThreatEventsRequest(), metadata=OPS)
        await eventually(lambda: _async(_hub_subscribers(sentinel) == 1))
        # A long grace: the stream must end because the drain hook closed it, not because the
        # grace ran out (then it would end CANCELLED or UNAVAILABLE, not OK).
        stopping = asyncio.create_task(running.stop(grace=120))
        assert await stream.read() == grpc.aio.EOF
        assert await stream.code() == grpc.StatusCode.OK
        await stopping


async def test_streams_beyond_the_limit_are_resource_exhausted(tmp_path: Path) -> None:
    async with serve_sentinel(tmp_path, THREAT_STREAM_MAX_SUBSCRIBERS="1") as sentinel:
        first = sentinel.threats.StreamThreatEvents(ts.StreamThreatEventsRequest(), metadata=OPS)
        await eventually(lambda: _async(_hub_subscribers(sentinel) == 1))
        second = sentinel.threats.StreamThreatEvents(ts.StreamThreatEventsRequest(), metadata=OPS)
        err = await refused(second.read())
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert reason(err) == "TOO_MANY_STREAMS"
        first.cancel()


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (ts.StreamThreatEventsRequest(min_severity=9), "min_severity"),  # type: ignore[arg-type]
        (ts.StreamThreatEventsRequest(category=-1), "category"),  # type: ignore[arg-type]
    ],
)
async def test_bad_stream_filters_are_invalid_argument(shared: Sentinel, request_: Any, field: str) -> None:
    stream = shared.threats.StreamThreatEvents(request_, metadata=OPS)
    err = await refused(stream.read())
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in violations(err)] == [field]


async def test_streaming_needs_the_events_read_permission(shared: Sentinel) -> None:
    stream = shared.threats.StreamThreatEvents(ts.StreamThreatEventsRequest(), metadata=SALES)
    err = await refused(stream.read())
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
