"""The sentinel servicer: proto in, domain call, proto out.

Audit queries and verification (``AuditService``) and security-event intake
(``ThreatService.ReportSecurityEvent``) are served here; the rest of ``ThreatService`` by
:mod:`bhiv_core.services.sentinel.incidents`, ``AlertService`` by :mod:`bhiv_core.services.sentinel.alerts`,
``BlockService`` by :mod:`bhiv_core.services.sentinel.blocks`. Every sentinel RPC is served;
:data:`MISSING` names what the runtime would say of one that is not.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf import duration_pb2, timestamp_pb2

from bhiv.sentinel.v1 import audit_record_pb2, audit_service_pb2, threat_pb2, threat_service_pb2
from bhiv_core.audit.record import AuditRecord, ChainBreak, VerifyResult
from bhiv_core.audit.store import AuditFilter
from bhiv_core.runtime.errors import FieldViolation, InvalidArgument
from bhiv_core.security.principal import require_principal
from bhiv_core.services.sentinel.service import SentinelService, VerifyMode
from bhiv_core.services.sentinel.store import EventKind, SecurityEvent

__all__ = ["MISSING", "SentinelServicer", "audit_record_to_proto", "security_event_to_proto"]

MISSING = "every sentinel RPC is served; this one is not in the contracts sentinel was built from"

_BREAK_REASONS = {
    ChainBreak.HASH_MISMATCH: audit_record_pb2.CHAIN_BREAK_REASON_HASH_MISMATCH,
    ChainBreak.PREV_HASH_MISMATCH: audit_record_pb2.CHAIN_BREAK_REASON_PREV_HASH_MISMATCH,
    ChainBreak.SEQUENCE_GAP: audit_record_pb2.CHAIN_BREAK_REASON_SEQUENCE_GAP,
    ChainBreak.CHECKPOINT_MISMATCH: audit_record_pb2.CHAIN_BREAK_REASON_CHECKPOINT_MISMATCH,
    ChainBreak.CHECKPOINT_INVALID: audit_record_pb2.CHAIN_BREAK_REASON_CHECKPOINT_INVALID,
}
_MODES = {
    audit_service_pb2.AUDIT_VERIFY_MODE_UNSPECIFIED: VerifyMode.DEFAULT,
    audit_service_pb2.AUDIT_VERIFY_MODE_FROM_CHECKPOINT: VerifyMode.FROM_CHECKPOINT,
    audit_service_pb2.AUDIT_VERIFY_MODE_FULL: VerifyMode.FULL,
}
_MODE_NUMBERS: dict[VerifyMode, audit_service_pb2.AuditVerifyMode.ValueType] = {
    mode: number for number, mode in _MODES.items() if mode is not VerifyMode.DEFAULT
}
_PREFIX = "SECURITY_EVENT_KIND_"


def _timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _time_or_none(message: Any, field: str) -> datetime | None:
    if not message.HasField(field):
        return None
    value: datetime = getattr(message, field).ToDatetime(tzinfo=UTC)
    return value


def audit_record_to_proto(record: AuditRecord) -> audit_record_pb2.AuditRecord:
    """Maps a stored record to ``bhiv.sentinel.v1.AuditRecord``."""
    duration = duration_pb2.Duration()
    duration.FromMicroseconds(round(record.duration_ms * 1000))
    return audit_record_pb2.AuditRecord(
        name=record.name,
        sequence=record.sequence,
        time=_timestamp(record.time),
        principal=record.principal,
        # As stored and hashed: the principal's role (``admin``), not the identity enum name.
        role=record.role,
        method=record.method,
        resource=record.resource,
        outcome_code=record.outcome_code,
        outcome_code_number=record.outcome_code_number,
        client_address=record.client_address,
        trace_id=record.trace_id,
        duration=duration,
        service=record.service,
        prev_hash=record.prev_hash,
        hash=record.hash,
    )


def _verify_to_proto(
    mode: VerifyMode, result: VerifyResult, checkpoint_key: str
) -> audit_service_pb2.VerifyAuditChainResponse:
    return audit_service_pb2.VerifyAuditChainResponse(
        ok=result.ok,
        records_checked=result.checked,
        first_broken_sequence=result.first_broken_sequence,
        reason=(
            _BREAK_REASONS[result.reason]
            if result.reason is not None
            else audit_record_pb2.CHAIN_BREAK_REASON_UNSPECIFIED
        ),
        detail=result.detail,
        start_sequence=result.start_sequence,
        end_sequence=result.end_sequence,
        mode=_MODE_NUMBERS[mode],
        checkpoint_sequence=result.checkpoint_sequence,
        checkpoints_checked=result.checkpoints_checked,
        checkpoint_key=checkpoint_key,
    )


def _kind_from_proto(kind: int) -> EventKind:
    value = threat_pb2.SecurityEventKind.DESCRIPTOR.values_by_number.get(kind)
    try:
        return EventKind[value.name.removeprefix(_PREFIX) if value is not None else ""]
    except KeyError:
        raise InvalidArgument(
            violations=[FieldViolation("kind", "must be a defined SecurityEventKind", "UNDEFINED_ENUM")]
        ) from None


def security_event_to_proto(event: SecurityEvent) -> threat_pb2.SecurityEvent:
    """Maps a stored event to ``bhiv.sentinel.v1.SecurityEvent``."""
    return threat_pb2.SecurityEvent(
        event_id=event.event_id,
        kind=threat_pb2.SecurityEventKind.Value(_PREFIX + event.kind.name),
        source_address=event.source_address,
        principal=event.principal,
        method=event.method,
        detail=event.detail,
        reporter=event.reporter,
        event_time=_timestamp(event.event_time),
        receive_time=_timestamp(event.receive_time),
        fields=[threat_pb2.ScreenedField(path=path, excerpt=excerpt) for path, excerpt in event.fields],
    )


class SentinelServicer:
    """Implements the built RPCs of ``bhiv.sentinel.v1`` over a :class:`SentinelService`.

    Args:
        service: Sentinel's operations.

    """

    def __init__(self, service: SentinelService):
        self._service = service

    async def ListAuditRecords(
        self, request: audit_service_pb2.ListAuditRecordsRequest, context: Any
    ) -> audit_service_pb2.ListAuditRecordsResponse:
        """Lists audit records matching the request's filters, by ascending sequence."""
        query = AuditFilter(
            principal=request.principal,
            method=request.method,
            resource=request.resource,
            outcome_code=request.outcome_code,
            start_time=_time_or_none(request, "start_time"),
            end_time=_time_or_none(request, "end_time"),
        )
        records, token = await self._service.list_audit_records(query, request.page_size, request.page_token)
        return audit_service_pb2.ListAuditRecordsResponse(
            audit_records=[audit_record_to_proto(r) for r in records], next_page_token=token
        )

    async def GetAuditRecord(
        self, request: audit_service_pb2.GetAuditRecordRequest, context: Any
    ) -> audit_service_pb2.GetAuditRecordResponse:
        """Gets one audit record by name."""
        record = await self._service.get_audit_record(request.name)
        return audit_service_pb2.GetAuditRecordResponse(audit_record=audit_record_to_proto(record))

    async def VerifyAuditChain(
        self, request: audit_service_pb2.VerifyAuditChainRequest, context: Any
    ) -> audit_service_pb2.VerifyAuditChainResponse:
        """Verifies the chain (from the latest checkpoint, or a range) and reports the first break."""
        # The validation interceptor refuses undefined modes (defined_only) before this runs.
        mode, result = await self._service.verify_audit_chain(
            request.start_sequence, request.end_sequence, _MODES[request.mode]
        )
        return _verify_to_proto(mode, result, self._service.verifier.key.public)

    async def ReportSecurityEvent(
        self, request: threat_service_pb2.ReportSecurityEventRequest, context: Any
    ) -> threat_service_pb2.ReportSecurityEventResponse:
        """Stores a reported security event, with the caller as its reporter."""
        reporter = require_principal().subject
        event = await self._service.report_security_event(
            kind=_kind_from_proto(request.kind),
            source_address=request.source_address,
            principal=request.principal,
            method=request.method,
            detail=request.detail,
            event_time=_time_or_none(request, "event_time"),
            reporter=reporter,
            fields=tuple((field.path, field.excerpt) for field in request.fields),
        )
        return threat_service_pb2.ReportSecurityEventResponse(event=security_event_to_proto(event))
