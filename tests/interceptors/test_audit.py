from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from bhiv.crm.v1 import customer_service_pb2 as cs
from bhiv.crm.v1 import customer_service_pb2_grpc as cs_grpc
from bhiv.identity.v1 import user_service_pb2 as us
from bhiv.identity.v1 import user_service_pb2_grpc as us_grpc
from bhiv.integrations.v1 import webhook_service_pb2 as ws
from bhiv.sentinel.v1 import threat_service_pb2 as ts
from bhiv.sentinel.v1 import threat_service_pb2_grpc as ts_grpc
from bhiv_core.audit.record import RESOURCE_LIMIT, TEXT_LIMIT, AuditEntry
from bhiv_core.audit.sink import AuditSink
from bhiv_core.audit.store import AuditFilter, make_audit_store
from bhiv_core.audit.store.sqlite import SqliteAuditStore
from bhiv_core.interceptors.audit import AuditInterceptor, resource_of
from bhiv_core.interceptors.auth import AuthInterceptor
from bhiv_core.interceptors.errors import ErrorMappingInterceptor
from bhiv_core.interceptors.rbac import RbacInterceptor, RolePolicy
from bhiv_core.interceptors.validation import ValidationInterceptor
from bhiv_core.mesh import free_port
from bhiv_core.registry import EDGE_SOURCE_ADDRESS
from bhiv_core.runtime.chain import CallInfo, PreCheckInterceptor, chain_order
from bhiv_core.runtime.errors import NotFound, PermissionDenied
from bhiv_core.runtime.logging import JsonFormatter
from bhiv_core.runtime.server import Chain
from bhiv_core.runtime.telemetry import REGISTRY
from bhiv_core.security.principal import Principal, current_principal
from bhiv_core.services.crm.server import build_server
from tests.harness import config_for, relay, serving
from tests.security.tokens import Signer, verifier_for

USER_SERVICE = us.DESCRIPTOR.services_by_name["UserService"]
THREAT_SERVICE = ts.DESCRIPTOR.services_by_name["ThreatService"]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


class FakeSink:
    """Keeps what it is given; ``full`` makes :meth:`offer` refuse, like a full queue."""

    def __init__(self, *, full: bool = False) -> None:
        self.records: list[tuple[AuditEntry, bool]] = []
        self.full = full
        self.waited = 0

    async def record(self, entry: AuditEntry, durable: bool) -> None:
        self.waited += not durable
        self.records.append((entry, durable))

    def offer(self, entry: AuditEntry) -> bool:
        if self.full:
            return False
        self.records.append((entry, False))
        return True


class FakeAuth(PreCheckInterceptor):
    """Sets the principal named by ``x-test-user``; refuses when ``x-test-deny`` is sent."""

    async def check(self, call: CallInfo, request: Any, context: Any) -> None:
        metadata = dict(context.invocation_metadata() or ())
        call.trace_id = TRACE_ID
        user = metadata.get("x-test-user")
        if user:
            call.principal = Principal(subject=f"users/{user}", role="sales")
            current_principal.set(call.principal)
        if "x-test-deny" in metadata:
            raise PermissionDenied("the role may not do this")


class Users:
    async def GetUser(self, request: us.GetUserRequest, context: Any) -> us.GetUserResponse:
        if request.name == "users/missing":
            raise NotFound(f"{request.name} does not exist")
        if request.name == "users/crash":
            raise RuntimeError("bug")
        return us.GetUserResponse(user={"name": request.name})

    async def DisableUser(self, request: us.DisableUserRequest, context: Any) -> us.DisableUserResponse:
        return us.DisableUserResponse(user={"name": request.name})

    async def UpdateUser(self, request: us.UpdateUserRequest, context: Any) -> us.UpdateUserResponse:
        return us.UpdateUserResponse(user=request.user)


class Threats:
    async def StreamThreatEvents(self, request: ts.StreamThreatEventsRequest, context: Any) -> Any:
        yield ts.StreamThreatEventsResponse(event={"event_id": "e1"})
        if request.min_severity:
            raise NotFound("no such stream")
        yield ts.StreamThreatEventsResponse(event={"event_id": "e2"})


def chain_with(sink: Any) -> Any:
    return lambda *_: [AuditInterceptor(sink, "test"), ErrorMappingInterceptor("t"), FakeAuth()]


async def test_allowed_call_is_recorded_with_principal_method_resource_and_address() -> None:
    sink = FakeSink()
    async with serving([(USER_SERVICE, Users())], chain=chain_with(sink)) as (_, channel):
        await us_grpc.UserServiceStub(channel).GetUser(
            us.GetUserRequest(name="users/u7"), metadata=(("x-test-user", "ada"),)
        )
    [(entry, durable)] = sink.records
    assert (entry.principal, entry.role, entry.method, entry.resource) == (
        "users/ada",
        "sales",
        "/bhiv.identity.v1.UserService/GetUser",
        "users/u7",
    )
    assert (entry.outcome_code, entry.outcome_code_number, entry.service) == ("OK", 0, "test")
    assert (entry.client_address, entry.trace_id) == ("127.0.0.1", TRACE_ID)
    assert entry.duration_ms > 0
    assert durable is False  # a read goes the batched path


async def test_a_read_waits_for_room_when_the_sink_is_full() -> None:
    sink = FakeSink(full=True)
    async with serving([(USER_SERVICE, Users())], chain=chain_with(sink)) as (_, channel):
        await us_grpc.UserServiceStub(channel).GetUser(us.GetUserRequest(name="users/u7"))
    assert [(entry.method, durable) for entry, durable in sink.records] == [
        ("/bhiv.identity.v1.UserService/GetUser", False)
    ]
    assert sink.waited == 1


async def test_denied_call_is_recorded_as_permission_denied() -> None:
    sink = FakeSink()
    async with serving([(USER_SERVICE, Users())], chain=chain_with(sink)) as (_, channel):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await us_grpc.UserServiceStub(channel).DisableUser(
                us.DisableUserRequest(name="users/u9"),
                metadata=(
                    ("x-test-user", "eve"),
                    ("x-test-deny", "1"),
                    ("x-envoy-external-address", "203.0.113.7"),
                ),
            )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    [(entry, durable)] = sink.records
    assert (entry.outcome_code, entry.outcome_code_number) == ("PERMISSION_DENIED", 7)
    assert (entry.principal, entry.method, entry.resource) == (
        "users/eve",
        "/bhiv.identity.v1.UserService/DisableUser",
        "users/u9",
    )
    assert entry.client_address == "127.0.0.1"  # a direct caller does not choose its address
    assert durable is False  # a refused mutation changed nothing


async def test_a_direct_caller_is_audited_at_its_peer_whatever_it_claims() -> None:
    sink = FakeSink()
    claims = (("x-envoy-external-address", "6.6.6.6"), ("x-forwarded-for", "6.6.6.6"))
    async with serving([(USER_SERVICE, Users())], chain=chain_with(sink)) as (_, channel):
        await us_grpc.UserServiceStub(channel).GetUser(us.GetUserRequest(name="users/u7"), metadata=claims)
    [(entry, _)] = sink.records
    assert entry.client_address == "127.0.0.1"


async def test_the_edge_vouches_for_the_client_address_it_forwards() -> None:
    sink = FakeSink()
    forwarded = (("x-envoy-external-address", "203.0.113.7"),)
    # A peer at the edge's address (127.0.0.2 by default), as the mesh's Envoy connects from.
    async with (
        serving([(USER_SERVICE, Users())], chain=chain_with(sink)) as (running, _),
        relay(running.address, EDGE_SOURCE_ADDRESS) as edge,
        grpc.aio.insecure_channel(edge) as channel,
    ):
        stub = us_grpc.UserServiceStub(channel)
        await stub.GetUser(us.GetUserRequest(name="users/u7"), metadata=forwarded)
        await stub.GetUser(us.GetUserRequest(name="users/u8"))
    assert [(entry.resource, entry.client_address) for entry, _ in sink.records] == [
        ("users/u7", "203.0.113.7"),
        ("users/u8", EDGE_SOURCE_ADDRESS),  # the edge's own call (a health check) is its own
    ]


async def test_unauthenticated_call_has_an_empty_principal() -> None:
    sink = FakeSink()
    async with serving([(USER_SERVICE, Users())], chain=chain_with(sink)) as (_, channel):
        with pytest.raises(grpc.aio.AioRpcError):
            await us_grpc.UserServiceStub(channel).GetUser(
                us.GetUserRequest(name="users/u1"), metadata=(("x-test-deny", "1"),)
            )
    [(entry, _)] = sink.records
    assert (entry.principal, entry.role) == ("", "")


async def test_handler_error_is_recorded_with_its_code() -> None:
    sink = FakeSink()
    async with serving([(USER_SERVICE, Users())], chain=chain_with(sink)) as (_, channel):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await us_grpc.UserServiceStub(channel).GetUser(us.GetUserRequest(name="users/missing"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert sink.records[0][0].outcome_code == "NOT_FOUND"


async def test_exception_escaping_without_a_mapper_is_recorded_unknown() -> None:
    sink = FakeSink()
    chain = lambda *_: [AuditInterceptor(sink, "test")]
    async with serving([(USER_SERVICE, Users())], chain=chain) as (_, channel):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await us_grpc.UserServiceStub(channel).GetUser(us.GetUserRequest(name="users/crash"))
    assert err.value.code() == grpc.StatusCode.UNKNOWN
    assert sink.records[0][0].outcome_code == "UNKNOWN"


async def test_successful_mutation_is_recorded_durably() -> None:
    sink = FakeSink()
    async with serving([(USER_SERVICE, Users())], chain=chain_with(sink)) as (_, channel):
        await us_grpc.UserServiceStub(channel).UpdateUser(
            us.UpdateUserRequest(
                user={"name": "users/u3"}, update_mask=field_mask_pb2.FieldMask(paths=["email"])
            )
        )
    [(entry, durable)] = sink.records
    assert entry.resource == "users/u3"  # from the first message field that has a name
    assert durable is True


async def test_mutation_record_is_in_the_store_when_the_client_gets_the_response(tmp_path: Path) -> None:
    sink = AuditSink(SqliteAuditStore(tmp_path / "audit.db"), flush_interval=30)
    await sink.start()
    reader = SqliteAuditStore(tmp_path / "audit.db")
    await reader.open()
    try:
        async with serving([(USER_SERVICE, Users())], chain=chain_with(sink)) as (_, channel):
            stub = us_grpc.UserServiceStub(channel)
            await stub.GetUser(us.GetUserRequest(name="users/u1"), metadata=(("x-test-user", "ada"),))
            await stub.DisableUser(us.DisableUserRequest(name="users/u2"), metadata=(("x-test-user", "ada"),))
            records, _ = await reader.list(AuditFilter())
            # Written by the mutation's durable commit (the batch interval is 30 s), read before
            # it included, in call order.
            assert [(r.method.rsplit("/", 1)[1], r.resource, r.outcome_code) for r in records] == [
                ("GetUser", "users/u1", "OK"),
                ("DisableUser", "users/u2", "OK"),
            ]
            await stub.GetUser(us.GetUserRequest(name="users/u3"))
            assert len((await reader.list(AuditFilter()))[0]) == 2  # the read waits for its batch
        await sink.close()
        records, _ = await reader.list(AuditFilter())
        assert [r.resource for r in records] == ["users/u1", "users/u2", "users/u3"]
        assert (await reader.verify()).ok
    finally:
        await reader.close()


async def test_stream_is_recorded_when_it_ends() -> None:
    sink = FakeSink()
    async with serving([(THREAT_SERVICE, Threats())], chain=chain_with(sink)) as (_, channel):
        stub = ts_grpc.ThreatServiceStub(channel)
        got = [r.event.event_id async for r in stub.StreamThreatEvents(ts.StreamThreatEventsRequest())]
        assert got == ["e1", "e2"]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in stub.StreamThreatEvents(ts.StreamThreatEventsRequest(min_severity=2)):
                pass
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert [(e.method.rsplit("/", 1)[1], e.outcome_code, d) for e, d in sink.records] == [
        ("StreamThreatEvents", "OK", False),
        ("StreamThreatEvents", "NOT_FOUND", False),
    ]


async def test_unknown_method_is_recorded_unimplemented() -> None:
    sink = FakeSink()
    async with serving([(USER_SERVICE, Users())], chain=chain_with(sink)) as (_, channel):
        call = channel.unary_unary("/bhiv.nothing.v1.Nope/Probe")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(b"")
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    [(entry, _)] = sink.records
    assert (entry.method, entry.outcome_code, entry.resource) == (
        "/bhiv.nothing.v1.Nope/Probe",
        "UNIMPLEMENTED",
        "",
    )


async def test_a_health_check_reaching_the_interceptor_is_never_recorded_durably() -> None:
    # The standard chain keeps probes away from audit altogether (chain_order); composed by hand,
    # the interceptor still never makes a probe cost a commit.

    sink = FakeSink()
    async with serving([(USER_SERVICE, Users())], chain=chain_with(sink)) as (_, channel):
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    [(entry, durable)] = sink.records
    assert (entry.method, entry.outcome_code, durable) == ("/grpc.health.v1.Health/Check", "OK", False)


async def test_each_call_writes_one_json_request_log_line(caplog: pytest.LogCaptureFixture) -> None:
    sink = FakeSink()
    with caplog.at_level(logging.INFO, logger="bhiv.requests"):
        async with serving([(USER_SERVICE, Users())], chain=chain_with(sink)) as (_, channel):
            await us_grpc.UserServiceStub(channel).GetUser(
                us.GetUserRequest(name="users/u1"), metadata=(("x-test-user", "ada"),)
            )
    [record] = [r for r in caplog.records if r.name == "bhiv.requests"]
    line = json.loads(JsonFormatter("test").format(record))
    assert line["method"] == "/bhiv.identity.v1.UserService/GetUser"
    assert (line["code"], line["principal"], line["client_address"], line["trace_id"]) == (
        "OK",
        "users/ada",
        "127.0.0.1",
        TRACE_ID,
    )
    assert isinstance(line["duration_ms"], float)


async def test_failing_sink_does_not_fail_the_call(caplog: pytest.LogCaptureFixture) -> None:
    class BrokenSink:
        async def record(self, entry: AuditEntry, durable: bool) -> None:
            raise RuntimeError("store down")

    async with serving([(USER_SERVICE, Users())], chain=chain_with(BrokenSink())) as (_, channel):
        reply = await us_grpc.UserServiceStub(channel).DisableUser(us.DisableUserRequest(name="users/u1"))
    assert reply.user.name == "users/u1"
    assert any("was not written" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)


def test_resource_is_name_then_parent_then_a_nested_name() -> None:
    assert resource_of(us.GetUserRequest(name="users/u1")) == "users/u1"
    assert resource_of(ws.ListDeliveriesRequest(parent="webhooks/w1")) == "webhooks/w1"
    assert resource_of(us.UpdateUserRequest(user={"name": "users/u2"})) == "users/u2"
    assert resource_of(us.UpdateUserRequest(user={"email": "a@b.example"})) == ""
    assert resource_of(us.ListUsersRequest()) == ""
    assert resource_of(b"raw") == ""


async def test_a_service_counts_probes_but_neither_audits_them_nor_logs_them_at_info(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Nothing listens on the identity port: crm's revocation watch just keeps retrying.
    config = config_for("crm", DATA_DIR=str(tmp_path), IDENTITY_PORT=str(free_port()))
    probes = [
        ("grpc.health.v1.Health", "Check", "unary"),
        ("grpc.reflection.v1alpha.ServerReflection", "ServerReflectionInfo", "bidi_stream"),
    ]

    def handled(service: str, method: str, kind: str, code: str) -> float:
        labels = {"grpc_service": service, "grpc_method": method, "grpc_type": kind, "grpc_code": code}
        return REGISTRY.get_sample_value("grpc_server_handled_total", labels) or 0.0

    before = [handled(*probe, "OK") for probe in probes]
    with caplog.at_level(logging.INFO, logger="bhiv.requests"):
        running = await build_server(config)
        try:
            async with grpc.aio.insecure_channel(running.address) as channel:
                await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
                ask = reflection_pb2.ServerReflectionRequest(list_services="")
                async for reply in reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                    iter([ask])
                ):
                    assert reply.list_services_response.service
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await cs_grpc.CustomerServiceStub(channel).ListCustomers(cs.ListCustomersRequest())
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        finally:
            await running.stop(grace=0.5)  # flushes the audit sink
    assert [handled(*probe, "OK") for probe in probes] == [count + 1 for count in before]
    store = make_audit_store(config)
    await store.open()
    try:
        records, _ = await store.list(AuditFilter())
    finally:
        await store.close()
    assert [(r.method, r.outcome_code) for r in records] == [
        ("/bhiv.crm.v1.CustomerService/ListCustomers", "UNAUTHENTICATED")
    ]
    assert [r.getMessage() for r in caplog.records if r.name == "bhiv.requests"] == [
        "/bhiv.crm.v1.CustomerService/ListCustomers UNAUTHENTICATED"
    ]


CUSTOMER_SERVICE = cs.DESCRIPTOR.services_by_name["CustomerService"]
SIGNER = Signer()


def audit_file_bytes(path: Path) -> int:
    """The audit file's size in pages, once its write-ahead log is folded in."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        return int(pages) * int(conn.execute("PRAGMA page_size").fetchone()[0])
    finally:
        conn.close()


async def flood(data_dir: Path, calls: int, name_bytes: int) -> int:
    """Sends ``calls`` GetCustomer calls naming a ``name_bytes`` customer, each refused.

    Through a real server, the standard concerns and a real SQLite audit log. The caller has a
    valid ops token, so its body is decoded and the name reaches the audit record as the resource
    (the chain decodes no body for a caller without a valid token: such a record names no
    resource); the name breaks the contract's pattern, so every call is INVALID_ARGUMENT. Returns the audit
    file's size once the server stopped (its audit writer wrote everything and closed).
    """
    sink = AuditSink(SqliteAuditStore(data_dir / "audit.db"))

    def chain(*_: object) -> Chain:
        interceptors = chain_order(
            audit=AuditInterceptor(sink, "crm"),
            errors=ErrorMappingInterceptor("crm.bhiv.core"),
            auth=AuthInterceptor(verifier_for(SIGNER)),
            rbac=RbacInterceptor(RolePolicy()),
            validation=ValidationInterceptor(),
        )
        return Chain(interceptors, on_start=[sink.start], on_stop=[sink.close])

    name = "customers/" + "x" * (name_bytes - len("customers/"))
    metadata = (("authorization", f"Bearer {SIGNER.token(role='ops')}"),)
    async with serving([(CUSTOMER_SERVICE, object())], chain=chain) as (_, channel):
        stub = cs_grpc.CustomerServiceStub(channel)
        for _ in range(calls):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetCustomer(cs.GetCustomerRequest(name=name), metadata=metadata, timeout=60)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    conn = sqlite3.connect(data_dir / "audit.db")
    try:
        stored = conn.execute("SELECT COUNT(*), MAX(LENGTH(CAST(resource AS BLOB))) FROM audit_records")
        assert stored.fetchone() == (calls, RESOURCE_LIMIT)
    finally:
        conn.close()
    return audit_file_bytes(data_dir / "audit.db")


async def test_a_flood_of_oversized_names_grows_the_audit_log_by_calls_not_by_bytes(tmp_path: Path) -> None:
    empty = SqliteAuditStore(tmp_path / "empty" / "audit.db")
    await empty.open()
    await empty.close()
    base = audit_file_bytes(tmp_path / "empty" / "audit.db")
    calls = 20
    small = await flood(tmp_path / "small", calls, 128 * 1024)
    large = await flood(tmp_path / "large", calls, 1280 * 1024)  # ten times the size
    assert abs(large - small) <= 4096  # one page
    assert (large - base) / calls <= 2048  # a record costs a bounded size, whatever was sent


async def test_an_unknown_method_with_a_long_path_is_recorded_capped() -> None:
    sink = FakeSink()
    path = "/bhiv.nothing.v1.Nope/" + "P" * 6000
    async with serving([(USER_SERVICE, Users())], chain=chain_with(sink)) as (_, channel):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await channel.unary_unary(path)(b"")
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    [(entry, _)] = sink.records
    marker = "\u2026[truncated from 6022 bytes]"
    assert entry.method == path[: TEXT_LIMIT - len(marker.encode())] + marker
    assert len(entry.method.encode()) == TEXT_LIMIT
