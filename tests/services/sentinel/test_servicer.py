"""Sentinel's built RPCs through a real server: audit queries and verification, security events."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2, status_pb2

from bhiv.sentinel.v1 import audit_record_pb2 as ar
from bhiv.sentinel.v1 import audit_service_pb2 as aus
from bhiv.sentinel.v1 import audit_service_pb2_grpc as aus_grpc
from bhiv.sentinel.v1 import threat_pb2 as tp
from bhiv.sentinel.v1 import threat_service_pb2 as ts
from bhiv.sentinel.v1 import threat_service_pb2_grpc as ts_grpc
from bhiv_core.audit.checkpoint import CheckpointKey
from bhiv_core.audit.checkpointing import AuditVerifier, CheckpointWitness, CheckpointWriter
from bhiv_core.audit.record import AuditEntry, to_micros
from bhiv_core.audit.store.sqlite import SqliteAuditStore
from bhiv_core.interceptors.errors import ErrorMappingInterceptor
from bhiv_core.interceptors.validation import ValidationInterceptor
from bhiv_core.runtime.chain import CallInfo, PreCheckInterceptor, chain_order
from bhiv_core.runtime.contracts import services_of_package
from bhiv_core.security.principal import Principal, current_principal
from bhiv_core.services.sentinel.service import SentinelService
from bhiv_core.services.sentinel.servicer import SentinelServicer
from bhiv_core.services.sentinel.store import EventFilter, EventKind, SqliteSentinelStore
from bhiv_core.storage.pagination import encode_page_token
from tests.harness import config_for, serving
from tests.storage.page_tokens import damaged, hostile_page_tokens

T0 = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)


class AsService(PreCheckInterceptor):
    """Stands in for auth: the caller is ``services/identity`` unless ``x-anonymous`` is sent."""

    async def check(self, call: CallInfo, request: Any, context: Any) -> None:
        if "x-anonymous" in dict(context.invocation_metadata() or ()):
            return
        call.principal = Principal(subject="services/identity", role="")
        current_principal.set(call.principal)


@dataclass
class Sentinel:
    audit: SqliteAuditStore
    service: SentinelService
    audit_path: Path
    audit_stub: aus_grpc.AuditServiceStub
    threat_stub: ts_grpc.ThreatServiceStub
    key: CheckpointKey
    writer: CheckpointWriter
    witness: CheckpointWitness


def entry(
    n: int, principal: str, code: str = "OK", number: int = 0, method: str = "GetCustomer"
) -> AuditEntry:
    return AuditEntry(
        time_us=to_micros(T0 + timedelta(minutes=n)),
        service="crm",
        principal=principal,
        role="sales",
        method=f"/bhiv.crm.v1.CustomerService/{method}",
        resource=f"customers/c{n}",
        outcome_code=code,
        outcome_code_number=number,
        client_address="198.51.100.4",
        trace_id="",
        duration_ms=2.5,
    )


@pytest.fixture
async def sentinel(tmp_path: Path) -> AsyncIterator[Sentinel]:
    audit = SqliteAuditStore(tmp_path / "audit.db")
    store = SqliteSentinelStore(tmp_path / "sentinel.db")
    await audit.open()
    await store.open()
    key = CheckpointKey.from_seed(os.urandom(32))
    witness = CheckpointWitness(tmp_path / "audit-checkpoint-last")
    # Due at every call of write_if_due that finds new records; the tests call it themselves.
    writer = CheckpointWriter(audit, key, witness, every_records=1, every_seconds=3600)
    service = SentinelService(audit, store, AuditVerifier(audit, key, witness))
    servicer = SentinelServicer(service)
    chain = lambda *_: chain_order(
        errors=ErrorMappingInterceptor("sentinel.bhiv.core"),
        auth=AsService(),
        validation=ValidationInterceptor(),
    )
    try:
        async with serving(
            [(s, servicer) for s in services_of_package("bhiv.sentinel.v1")],
            chain=chain,
            config=config_for("sentinel"),
        ) as (_, channel):
            yield Sentinel(
                audit,
                service,
                tmp_path / "audit.db",
                aus_grpc.AuditServiceStub(channel),
                ts_grpc.ThreatServiceStub(channel),
                key,
                writer,
                witness,
            )
    finally:
        await store.close()
        await audit.close()


async def seed(s: Sentinel) -> None:
    await s.audit.append(
        [
            entry(1, "users/a"),
            entry(2, "users/b", "PERMISSION_DENIED", 7, "DeleteCustomer"),
            entry(3, "users/a", method="UpdateCustomer"),
            entry(4, "users/a", "NOT_FOUND", 5),
            entry(5, "users/b"),
        ]
    )


def tamper(path: Path, sql: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("DROP TRIGGER IF EXISTS audit_records_no_update")
        conn.execute("DROP TRIGGER IF EXISTS audit_records_no_delete")
        conn.execute(sql)
    finally:
        conn.close()


def ts_of(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


async def expect_code(code: grpc.StatusCode, call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == code, err.value.details()
    return err.value


def violations(err: grpc.aio.AioRpcError) -> set[tuple[str, str]]:
    raw = dict(err.trailing_metadata() or ())["grpc-status-details-bin"]
    found = set()
    for packed in status_pb2.Status.FromString(raw).details:
        bad = error_details_pb2.BadRequest()
        if packed.Unpack(bad):
            found |= {(v.field, v.reason) for v in bad.field_violations}
    return found


# --- ListAuditRecords -----------------------------------------------------------------------------


async def test_list_returns_records_in_sequence_order_with_every_field(sentinel: Sentinel) -> None:
    await seed(sentinel)
    reply = await sentinel.audit_stub.ListAuditRecords(aus.ListAuditRecordsRequest())
    assert [r.sequence for r in reply.audit_records] == [1, 2, 3, 4, 5]
    assert reply.next_page_token == ""
    first = reply.audit_records[0]
    assert first.name == "auditRecords/1"
    assert (first.principal, first.role, first.service, first.resource) == (
        "users/a",
        "sales",
        "crm",
        "customers/c1",
    )
    assert (first.outcome_code, first.outcome_code_number, first.client_address) == ("OK", 0, "198.51.100.4")
    assert first.time.ToDatetime(tzinfo=UTC) == T0 + timedelta(minutes=1)
    assert first.duration.ToMicroseconds() == 2500
    assert first.prev_hash == "0" * 64
    assert reply.audit_records[1].prev_hash == first.hash


async def test_list_applies_every_filter(sentinel: Sentinel) -> None:
    await seed(sentinel)

    async def sequences(**fields: Any) -> list[int]:
        reply = await sentinel.audit_stub.ListAuditRecords(aus.ListAuditRecordsRequest(**fields))
        return [r.sequence for r in reply.audit_records]

    assert await sequences(principal="users/a") == [1, 3, 4]
    assert await sequences(outcome_code="PERMISSION_DENIED") == [2]
    assert await sequences(method="/bhiv.crm.v1.CustomerService/UpdateCustomer") == [3]
    assert await sequences(resource="customers/c4") == [4]
    assert await sequences(principal="users/b", outcome_code="OK") == [5]
    assert await sequences(
        start_time=ts_of(T0 + timedelta(minutes=2)), end_time=ts_of(T0 + timedelta(minutes=4))
    ) == [
        2,
        3,
    ]


async def test_list_paginates(sentinel: Sentinel) -> None:
    await seed(sentinel)
    seen, token = [], ""
    while True:
        reply = await sentinel.audit_stub.ListAuditRecords(
            aus.ListAuditRecordsRequest(page_size=2, page_token=token)
        )
        assert len(reply.audit_records) <= 2
        seen += [r.sequence for r in reply.audit_records]
        token = reply.next_page_token
        if not token:
            break
    assert seen == [1, 2, 3, 4, 5]


async def test_list_rejects_negative_page_size_bad_range_and_foreign_token(sentinel: Sentinel) -> None:
    await seed(sentinel)
    stub = sentinel.audit_stub
    await expect_code(
        grpc.StatusCode.INVALID_ARGUMENT, stub.ListAuditRecords(aus.ListAuditRecordsRequest(page_size=-1))
    )
    await expect_code(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.ListAuditRecords(aus.ListAuditRecordsRequest(start_time=ts_of(T0), end_time=ts_of(T0))),
    )
    token = (await stub.ListAuditRecords(aus.ListAuditRecordsRequest(page_size=1))).next_page_token
    await expect_code(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.ListAuditRecords(
            aus.ListAuditRecordsRequest(page_size=1, page_token=token, principal="users/a")
        ),
    )
    await expect_code(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.ListAuditRecords(aus.ListAuditRecordsRequest(outcome_code="FINE")),
    )


async def test_list_answers_a_token_it_did_not_issue_with_bad_page_token(sentinel: Sentinel) -> None:
    await seed(sentinel)
    stub = sentinel.audit_stub
    issued = (await stub.ListAuditRecords(aus.ListAuditRecordsRequest(page_size=1))).next_page_token
    assert issued
    other = (
        await stub.ListAuditRecords(aus.ListAuditRecordsRequest(page_size=1, principal="users/a"))
    ).next_page_token
    # The identity RPCs' tokens use the same format: one of theirs must not pass here either.
    users_token = encode_page_token("ada", "users role=")
    bad = hostile_page_tokens() | damaged(issued) | {"another query": other, "ListUsers": users_token}
    for case, token in bad.items():
        err = await expect_code(
            grpc.StatusCode.INVALID_ARGUMENT,
            stub.ListAuditRecords(aus.ListAuditRecordsRequest(page_size=1, page_token=token)),
        )
        assert violations(err) == {("page_token", "BAD_PAGE_TOKEN")}, case
    await stub.ListAuditRecords(aus.ListAuditRecordsRequest(page_size=1, page_token=issued))


async def test_timestamps_out_of_their_range_are_invalid_argument_not_internal(sentinel: Sentinel) -> None:
    await seed(sentinel)
    too_late = timestamp_pb2.Timestamp(seconds=253_402_300_800)
    too_early = timestamp_pb2.Timestamp(seconds=-62_135_596_801)
    bad_nanos = timestamp_pb2.Timestamp(seconds=0, nanos=1_000_000_000)
    for request, expected in (
        (aus.ListAuditRecordsRequest(start_time=too_late), {("start_time.seconds", "OUT_OF_RANGE")}),
        (aus.ListAuditRecordsRequest(end_time=too_early), {("end_time.seconds", "OUT_OF_RANGE")}),
        (aus.ListAuditRecordsRequest(start_time=bad_nanos), {("start_time.nanos", "OUT_OF_RANGE")}),
    ):
        err = await expect_code(
            grpc.StatusCode.INVALID_ARGUMENT, sentinel.audit_stub.ListAuditRecords(request)
        )
        assert violations(err) == expected
    for stamp, where in ((too_late, "seconds"), (too_early, "seconds"), (bad_nanos, "nanos")):
        err = await expect_code(
            grpc.StatusCode.INVALID_ARGUMENT,
            sentinel.threat_stub.ReportSecurityEvent(
                ts.ReportSecurityEventRequest(
                    kind=tp.SECURITY_EVENT_KIND_LOGIN_FAILED, source_address="192.0.2.1", event_time=stamp
                )
            ),
        )
        assert violations(err) == {(f"event_time.{where}", "OUT_OF_RANGE")}
    stored, _ = await sentinel.service.store.list_security_events(EventFilter())
    assert stored == []


async def test_service_layer_rejects_negative_page_size_too(sentinel: Sentinel) -> None:
    from bhiv_core.audit.store import AuditFilter
    from bhiv_core.runtime.errors import InvalidArgument

    with pytest.raises(InvalidArgument):
        await sentinel.service.list_audit_records(AuditFilter(), -5, "")


async def test_a_resource_filter_finds_the_capped_record_of_the_resource_it_names(sentinel: Sentinel) -> None:
    long_name = "customers/" + "\u00e9" * 500  # 1010 bytes: stored capped at 512
    await sentinel.audit.append([entry(1, "users/a")._replace(resource=long_name), entry(2, "users/b")])
    reply = await sentinel.audit_stub.ListAuditRecords(aus.ListAuditRecordsRequest(resource=long_name))
    assert [r.sequence for r in reply.audit_records] == [1]
    assert reply.audit_records[0].resource.endswith("\u2026[truncated from 1010 bytes]")


@pytest.mark.parametrize(
    "text",
    ["", "a" * 256, "\u00e9" * 128, "\U0001f600" * 64, '\x00\n"\\' * 64, "\u2028" * 85],
)
@pytest.mark.parametrize("sequence", [1, 2**63 - 1])
def test_a_records_page_cost_bounds_its_size_in_a_response(text: str, sequence: int) -> None:
    from bhiv_core.audit.record import seal
    from bhiv_core.audit.store.common import record_bytes
    from bhiv_core.services.sentinel.servicer import audit_record_to_proto

    item = AuditEntry(
        time_us=to_micros(datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
        service=text,
        principal=text,
        role=text,
        method=text,
        resource=text + text,
        outcome_code=text,
        outcome_code_number=-(2**31),
        client_address=text,
        trace_id=text,
        duration_ms=-1e12,
    )
    record = seal(item, sequence, "f" * 64)
    reply = aus.ListAuditRecordsResponse(audit_records=[audit_record_to_proto(record)])
    assert reply.ByteSize() <= record_bytes(record)


# --- GetAuditRecord -------------------------------------------------------------------------------


async def test_get_returns_the_named_record(sentinel: Sentinel) -> None:
    await seed(sentinel)
    reply = await sentinel.audit_stub.GetAuditRecord(aus.GetAuditRecordRequest(name="auditRecords/2"))
    assert (reply.audit_record.sequence, reply.audit_record.outcome_code) == (2, "PERMISSION_DENIED")


async def test_get_missing_record_is_not_found(sentinel: Sentinel) -> None:
    await seed(sentinel)
    error = await expect_code(
        grpc.StatusCode.NOT_FOUND,
        sentinel.audit_stub.GetAuditRecord(aus.GetAuditRecordRequest(name="auditRecords/6")),
    )
    assert error.details() == "auditRecords/6 does not exist"
    await expect_code(
        grpc.StatusCode.NOT_FOUND,
        sentinel.audit_stub.GetAuditRecord(
            aus.GetAuditRecordRequest(name="auditRecords/9999999999999999999")
        ),
    )


async def test_get_malformed_name_is_invalid_argument(sentinel: Sentinel) -> None:
    await expect_code(
        grpc.StatusCode.INVALID_ARGUMENT,
        sentinel.audit_stub.GetAuditRecord(aus.GetAuditRecordRequest(name="auditRecords/0")),
    )


# --- VerifyAuditChain -----------------------------------------------------------------------------


async def test_verify_reports_ok_then_the_first_tampered_record(sentinel: Sentinel) -> None:
    await seed(sentinel)
    stub = sentinel.audit_stub
    reply = await stub.VerifyAuditChain(aus.VerifyAuditChainRequest())
    assert (reply.ok, reply.records_checked, reply.start_sequence, reply.end_sequence, reply.reason) == (
        True,
        5,
        1,
        5,
        ar.CHAIN_BREAK_REASON_UNSPECIFIED,
    )
    # Someone with the file hides a denial.
    tamper(
        sentinel.audit_path,
        "UPDATE audit_records SET outcome_code = 'OK', outcome_code_number = 0 WHERE sequence = 2",
    )
    reply = await stub.VerifyAuditChain(aus.VerifyAuditChainRequest())
    assert (reply.ok, reply.first_broken_sequence, reply.reason, reply.records_checked) == (
        False,
        2,
        ar.CHAIN_BREAK_REASON_HASH_MISMATCH,
        2,
    )
    assert "record 2" in reply.detail
    tamper(sentinel.audit_path, "DELETE FROM audit_records WHERE sequence = 4")
    reply = await stub.VerifyAuditChain(aus.VerifyAuditChainRequest(start_sequence=3))
    assert (reply.ok, reply.first_broken_sequence, reply.reason) == (
        False,
        4,
        ar.CHAIN_BREAK_REASON_SEQUENCE_GAP,
    )


async def test_verify_of_an_empty_log_is_ok(sentinel: Sentinel) -> None:
    reply = await sentinel.audit_stub.VerifyAuditChain(aus.VerifyAuditChainRequest())
    assert (reply.ok, reply.records_checked, reply.end_sequence) == (True, 0, 0)


async def test_verify_range_checks(sentinel: Sentinel) -> None:
    await seed(sentinel)
    stub = sentinel.audit_stub
    reply = await stub.VerifyAuditChain(aus.VerifyAuditChainRequest(start_sequence=2, end_sequence=3))
    assert (reply.ok, reply.records_checked, reply.start_sequence, reply.end_sequence) == (True, 2, 2, 3)
    await expect_code(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.VerifyAuditChain(aus.VerifyAuditChainRequest(start_sequence=3, end_sequence=2)),
    )
    await expect_code(
        grpc.StatusCode.OUT_OF_RANGE, stub.VerifyAuditChain(aus.VerifyAuditChainRequest(start_sequence=6))
    )


async def test_verify_by_default_starts_from_the_latest_checkpoint(sentinel: Sentinel) -> None:
    await seed(sentinel)
    assert await sentinel.writer.write_if_due() is not None
    await sentinel.audit.append([entry(6, "users/a"), entry(7, "users/b")])
    reply = await sentinel.audit_stub.VerifyAuditChain(aus.VerifyAuditChainRequest())
    assert (reply.ok, reply.mode, reply.checkpoint_sequence, reply.checkpoints_checked) == (
        True,
        aus.AUDIT_VERIFY_MODE_FROM_CHECKPOINT,
        5,
        1,
    )
    # Record 5 (re-hashed against the signed checkpoint), then 6 and 7; records 1-4 are not read.
    assert (reply.records_checked, reply.start_sequence, reply.end_sequence) == (3, 5, 7)
    assert reply.checkpoint_key == sentinel.key.public


async def test_verify_full_walks_every_record_and_checkpoint(sentinel: Sentinel) -> None:
    await seed(sentinel)
    await sentinel.writer.write_if_due()
    await sentinel.audit.append([entry(6, "users/a")])
    await sentinel.writer.write_if_due()
    full = aus.VerifyAuditChainRequest(mode=aus.AUDIT_VERIFY_MODE_FULL)
    reply = await sentinel.audit_stub.VerifyAuditChain(full)
    assert (
        reply.ok,
        reply.mode,
        reply.records_checked,
        reply.checkpoints_checked,
        reply.checkpoint_sequence,
    ) == (
        True,
        aus.AUDIT_VERIFY_MODE_FULL,
        6,
        2,
        0,
    )
    # A record before the latest checkpoint, changed: only the full walk reads it.
    tamper(sentinel.audit_path, "UPDATE audit_records SET principal = 'users/mallory' WHERE sequence = 2")
    assert (await sentinel.audit_stub.VerifyAuditChain(aus.VerifyAuditChainRequest())).ok
    reply = await sentinel.audit_stub.VerifyAuditChain(full)
    assert (reply.ok, reply.first_broken_sequence, reply.reason) == (
        False,
        2,
        ar.CHAIN_BREAK_REASON_HASH_MISMATCH,
    )


async def test_verify_reports_a_tampered_checkpoint(sentinel: Sentinel) -> None:
    await seed(sentinel)
    await sentinel.writer.write_if_due()
    conn = sqlite3.connect(sentinel.audit_path, isolation_level=None)
    try:
        conn.execute("DROP TRIGGER audit_checkpoints_no_update")
        conn.execute("UPDATE audit_checkpoints SET sequence = 4 WHERE number = 1")
    finally:
        conn.close()
    for mode in (aus.AUDIT_VERIFY_MODE_UNSPECIFIED, aus.AUDIT_VERIFY_MODE_FULL):
        reply = await sentinel.audit_stub.VerifyAuditChain(aus.VerifyAuditChainRequest(mode=mode))
        assert (reply.ok, reply.reason, reply.first_broken_sequence) == (
            False,
            ar.CHAIN_BREAK_REASON_CHECKPOINT_INVALID,
            4,
        )


async def test_verify_with_a_start_walks_the_range_and_from_checkpoint_refuses_one(
    sentinel: Sentinel,
) -> None:
    await seed(sentinel)
    await sentinel.writer.write_if_due()
    stub = sentinel.audit_stub
    reply = await stub.VerifyAuditChain(aus.VerifyAuditChainRequest(start_sequence=2))
    assert (reply.ok, reply.mode, reply.records_checked, reply.checkpoints_checked) == (
        True,
        aus.AUDIT_VERIFY_MODE_FULL,
        4,
        1,
    )
    err = await expect_code(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.VerifyAuditChain(
            aus.VerifyAuditChainRequest(start_sequence=2, mode=aus.AUDIT_VERIFY_MODE_FROM_CHECKPOINT)
        ),
    )
    assert "start_sequence" in (err.details() or "")
    await expect_code(
        grpc.StatusCode.INVALID_ARGUMENT, stub.VerifyAuditChain(aus.VerifyAuditChainRequest(mode=7))
    )


# --- ReportSecurityEvent --------------------------------------------------------------------------


async def test_reported_event_is_stored_with_id_reporter_and_times(sentinel: Sentinel) -> None:
    reply = await sentinel.threat_stub.ReportSecurityEvent(
        ts.ReportSecurityEventRequest(
            kind=tp.SECURITY_EVENT_KIND_LOGIN_FAILED,
            source_address="2001:DB8:0:0::7",
            principal="ada",
            method="/bhiv.identity.v1.AuthService/Login",
            detail="wrong password",
            event_time=ts_of(T0),
        )
    )
    event = reply.event
    assert len(event.event_id) == 32
    assert (event.kind, event.source_address, event.reporter) == (
        tp.SECURITY_EVENT_KIND_LOGIN_FAILED,
        "2001:db8::7",
        "services/identity",
    )
    assert event.event_time.ToDatetime(tzinfo=UTC) == T0
    assert abs(event.receive_time.ToDatetime(tzinfo=UTC) - datetime.now(UTC)) < timedelta(seconds=10)
    stored, _ = await sentinel.service.store.list_security_events(EventFilter())
    assert [(e.event_id, e.kind, e.principal, e.detail) for e in stored] == [
        (event.event_id, EventKind.LOGIN_FAILED, "ada", "wrong password")
    ]


async def test_event_without_time_happened_when_received(sentinel: Sentinel) -> None:
    reply = await sentinel.threat_stub.ReportSecurityEvent(
        ts.ReportSecurityEventRequest(kind=tp.SECURITY_EVENT_KIND_TOKEN_REPLAYED, source_address="192.0.2.1")
    )
    assert reply.event.event_time == reply.event.receive_time


async def test_every_kind_round_trips(sentinel: Sentinel) -> None:
    kinds = [v.number for v in tp.SecurityEventKind.DESCRIPTOR.values if v.number]
    for kind in kinds:
        fields = (
            [tp.ScreenedField(path="note", excerpt="' OR '1'='1")]
            if kind == tp.SECURITY_EVENT_KIND_SUSPICIOUS_INPUT
            else []
        )
        reply = await sentinel.threat_stub.ReportSecurityEvent(
            ts.ReportSecurityEventRequest(kind=kind, source_address="192.0.2.1", fields=fields)
        )
        assert reply.event.kind == kind
        assert list(reply.event.fields) == fields
    stored, _ = await sentinel.service.store.list_security_events(EventFilter())
    assert {e.kind for e in stored} == set(EventKind)


async def test_bad_events_are_invalid_argument(sentinel: Sentinel) -> None:
    stub = sentinel.threat_stub
    await expect_code(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.ReportSecurityEvent(
            ts.ReportSecurityEventRequest(
                kind=tp.SECURITY_EVENT_KIND_LOGIN_FAILED, source_address="999.1.1.1"
            )
        ),
    )
    await expect_code(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.ReportSecurityEvent(ts.ReportSecurityEventRequest(source_address="192.0.2.1")),
    )
    stored, _ = await sentinel.service.store.list_security_events(EventFilter())
    assert stored == []


async def test_event_without_a_principal_is_unauthenticated(sentinel: Sentinel) -> None:
    await expect_code(
        grpc.StatusCode.UNAUTHENTICATED,
        sentinel.threat_stub.ReportSecurityEvent(
            ts.ReportSecurityEventRequest(
                kind=tp.SECURITY_EVENT_KIND_LOGIN_FAILED, source_address="192.0.2.1"
            ),
            metadata=(("x-anonymous", "1"),),
        ),
    )


def suspicious(*fields: tp.ScreenedField, kind: int = tp.SECURITY_EVENT_KIND_SUSPICIOUS_INPUT) -> Any:
    return ts.ReportSecurityEventRequest(kind=kind, source_address="192.0.2.1", fields=fields)


async def test_suspicious_input_fields_are_stored_and_read_back(sentinel: Sentinel) -> None:
    fields = [
        tp.ScreenedField(path="ticket.subject", excerpt="x'; DROP TABLE tickets;--"),
        tp.ScreenedField(path="labels[env]", excerpt="line\r\nSet-Cookie: a=b ——धर्म"),
    ]
    reply = await sentinel.threat_stub.ReportSecurityEvent(suspicious(*fields))
    assert list(reply.event.fields) == fields
    stored = await sentinel.service.store.get_security_event(reply.event.event_id)
    assert stored is not None and stored.kind is EventKind.SUSPICIOUS_INPUT
    assert stored.fields == tuple((f.path, f.excerpt) for f in fields)


async def test_hostile_suspicious_input_events_are_invalid_argument_with_violations(
    sentinel: Sentinel,
) -> None:
    stub = sentinel.threat_stub
    one = tp.ScreenedField(path="a", excerpt="<script>")
    cases = [
        (suspicious(*[one] * 17), {("fields", "TOO_MANY")}),
        (suspicious(tp.ScreenedField(path="p" * 257, excerpt="x")), {("fields[0].path", "TOO_LONG")}),
        (suspicious(tp.ScreenedField(path="a", excerpt="x" * 513)), {("fields[0].excerpt", "TOO_LONG")}),
        (
            suspicious(tp.ScreenedField(path="", excerpt="")),
            {("fields[0].path", "REQUIRED"), ("fields[0].excerpt", "REQUIRED")},
        ),
        (suspicious(), {("fields", "REQUIRED")}),
        (suspicious(one, kind=tp.SECURITY_EVENT_KIND_LOGIN_FAILED), {("fields", "UNEXPECTED")}),
        (suspicious(one, kind=99), {("kind", "UNDEFINED_ENUM")}),
    ]
    for request, expected in cases:
        err = await expect_code(grpc.StatusCode.INVALID_ARGUMENT, stub.ReportSecurityEvent(request))
        assert expected <= violations(err), (expected, violations(err))
    stored, _ = await sentinel.service.store.list_security_events(EventFilter())
    assert stored == []
