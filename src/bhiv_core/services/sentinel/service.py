"""What sentinel does, independent of protos: query and verify the audit chain, take security events.

The servicer maps protos to these calls; the rules (argument checks, defaults, ids, times) live here.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum

from bhiv_core.audit.checkpointing import AuditVerifier
from bhiv_core.audit.record import RESOURCE_LIMIT, TEXT_LIMIT, AuditRecord, VerifyResult, cap_text, to_micros
from bhiv_core.audit.store import PAGE_BYTES, AuditFilter, AuditStore
from bhiv_core.runtime.errors import FieldViolation, InvalidArgument, NotFound, OutOfRange
from bhiv_core.services.sentinel.store import EventFilter, EventKind, SecurityEvent, SentinelStore
from bhiv_core.storage.pagination import page_size_of

__all__ = ["SentinelService", "VerifyMode", "audit_page_bytes", "new_event_id", "parse_audit_record_name"]

_RESPONSE_ROOM = 64 * 1024
"""What a ListAuditRecords response needs besides its records (the page token), with room to spare."""


def audit_page_bytes(max_message_bytes: int) -> int:
    """The byte budget of a ListAuditRecords page in responses of at most ``max_message_bytes``."""
    return max(max_message_bytes - _RESPONSE_ROOM, max_message_bytes // 2)


_AUDIT_NAME = re.compile(r"auditRecords/([1-9][0-9]{0,18})")


def parse_audit_record_name(name: str) -> int:
    """Returns the sequence of ``auditRecords/{sequence}``.

    Raises:
        InvalidArgument: ``name`` is not an audit record name.

    """
    match = _AUDIT_NAME.fullmatch(name)
    if match is None:
        raise InvalidArgument(
            violations=[FieldViolation("name", "must be auditRecords/{sequence}", "BAD_FORMAT")]
        )
    return int(match.group(1))


def new_event_id(received: datetime) -> str:
    """A new event id: the receive time in milliseconds (12 hex digits), then 80 random bits."""
    return f"{to_micros(received) // 1000:012x}{secrets.token_hex(10)}"


class VerifyMode(StrEnum):
    """How :meth:`SentinelService.verify_audit_chain` verifies (``bhiv.sentinel.v1.AuditVerifyMode``)."""

    DEFAULT = "default"
    """From the latest checkpoint when no start is given, otherwise the range record by record."""
    FROM_CHECKPOINT = "from_checkpoint"
    """From the latest checkpoint (at or before the end) to the end."""
    FULL = "full"
    """Every record of the range, and every checkpoint at a record in it."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _check_time_range(start: datetime | None, end: datetime | None) -> None:
    if start is not None and end is not None and end <= start:
        raise InvalidArgument(
            violations=[FieldViolation("end_time", "must be after start_time", "BAD_RANGE")]
        )


class SentinelService:
    """Sentinel's operations.

    Args:
        audit: The mesh's audit chain (read and verified; only its checkpoints are written, by
            sentinel's :class:`~bhiv_core.audit.checkpointing.CheckpointWriter`).
        store: Sentinel's own store.
        verifier: Verifies the chain against its signed checkpoints.
        clock: Returns the current UTC time (injected by tests).
        observe: Called with every stored security event (sentinel hands it to threat detection);
            must return at once and never raise.
        page_bytes: The most bytes of audit records a ListAuditRecords page holds
            (:func:`audit_page_bytes` of the server's message limit).

    """

    def __init__(
        self,
        audit: AuditStore,
        store: SentinelStore,
        verifier: AuditVerifier,
        clock: Callable[[], datetime] = _utc_now,
        *,
        observe: Callable[[SecurityEvent], object] | None = None,
        page_bytes: int = PAGE_BYTES,
    ):
        self.audit = audit
        self._observe = observe
        self.store = store
        self.verifier = verifier
        self._clock = clock
        self._page_bytes = page_bytes

    async def list_audit_records(
        self, query: AuditFilter, page_size: int, page_token: str
    ) -> tuple[list[AuditRecord], str]:
        """Returns one page of matching records by ascending sequence, and the next page token.

        A page ends at ``page_size`` records or at the byte budget, whichever comes first, so it
        always fits in a response.

        Raises:
            InvalidArgument: A negative ``page_size``, ``end_time`` not after ``start_time``, or a
                page token of another query.

        """
        page_size_of(page_size)
        _check_time_range(query.start_time, query.end_time)
        # Stored text is capped (audit.record.cap_text): a filter value is capped alike, so the
        # value a call sent finds that call's record.
        query = dataclasses.replace(
            query,
            principal=cap_text(query.principal, TEXT_LIMIT),
            resource=cap_text(query.resource, RESOURCE_LIMIT),
        )
        return await self.audit.list(query, page_size, page_token, max_bytes=self._page_bytes)

    async def get_audit_record(self, name: str) -> AuditRecord:
        """Returns the record named ``auditRecords/{sequence}``.

        Raises:
            InvalidArgument: A malformed name.
            NotFound: No such record.

        """
        sequence = parse_audit_record_name(name)
        record = await self.audit.get(sequence)  # None for a sequence no store can hold, too
        if record is None:
            raise NotFound(f"{name} does not exist")
        return record

    async def verify_audit_chain(
        self, start_sequence: int, end_sequence: int, mode: VerifyMode = VerifyMode.DEFAULT
    ) -> tuple[VerifyMode, VerifyResult]:
        """Verifies the chain up to ``end_sequence`` (0 means the latest), as ``mode`` says.

        By default (no ``start_sequence``) from the latest checkpoint, which costs the records since
        that checkpoint; with a ``start_sequence`` or :attr:`VerifyMode.FULL`, every record from
        ``start_sequence`` (0 means 1). A broken chain is a result with ``ok`` False, not an error.

        Returns:
            The mode used (:attr:`VerifyMode.FROM_CHECKPOINT` or :attr:`VerifyMode.FULL`) and the result.

        Raises:
            InvalidArgument: A negative bound, ``end_sequence`` set and below ``start_sequence``, or
                a ``start_sequence`` with :attr:`VerifyMode.FROM_CHECKPOINT`.
            OutOfRange: ``start_sequence`` is beyond the latest record.

        """
        violations = [
            FieldViolation(field, "must be at least 0", "OUT_OF_RANGE")
            for field, value in (("start_sequence", start_sequence), ("end_sequence", end_sequence))
            if value < 0
        ]
        if mode is VerifyMode.FROM_CHECKPOINT and start_sequence:
            violations.append(
                FieldViolation(
                    "start_sequence",
                    "must be 0 with AUDIT_VERIFY_MODE_FROM_CHECKPOINT, which starts at the latest checkpoint",
                    "CONFLICT",
                )
            )
        if violations:
            raise InvalidArgument(violations=violations)
        start = start_sequence or 1
        if end_sequence and end_sequence < start:
            raise InvalidArgument(
                violations=[FieldViolation("end_sequence", "must not be below start_sequence", "BAD_RANGE")]
            )
        latest = await self.audit.latest_sequence()
        if start > max(latest, 1):
            raise OutOfRange(f"start_sequence {start} is beyond the latest audit record ({latest})")
        if mode is VerifyMode.FULL or (mode is VerifyMode.DEFAULT and start_sequence):
            return VerifyMode.FULL, await self.verifier.walk(start, end_sequence or None)
        return VerifyMode.FROM_CHECKPOINT, await self.verifier.from_checkpoint(end_sequence or None)

    async def report_security_event(
        self,
        *,
        kind: EventKind,
        source_address: str,
        principal: str,
        method: str,
        detail: str,
        event_time: datetime | None,
        reporter: str,
        fields: tuple[tuple[str, str], ...] = (),
    ) -> SecurityEvent:
        """Stores a reported security event with a new id and the receive time, and returns it.

        Once stored, the event goes to ``observe`` (threat detection's queue).

        Args:
            kind: What happened.
            source_address: The client address involved; parsed strictly and normalised.
            principal: The principal involved, or the username tried; may be empty.
            method: The full gRPC method involved; may be empty.
            detail: Context for a person; never a secret.
            event_time: When it happened; None means now.
            reporter: The subject of the reporting principal.
            fields: The matched request fields, ``(path, excerpt)``: at least one for
                :attr:`EventKind.SUSPICIOUS_INPUT`, none for the other kinds (their counts and
                lengths are bounded by the contract's rules, checked before this runs).

        Raises:
            InvalidArgument: ``source_address`` is not an IP address, or ``fields`` does not fit
                the kind.

        """
        if kind is EventKind.SUSPICIOUS_INPUT and not fields:
            raise InvalidArgument(
                violations=[FieldViolation("fields", "is required for SUSPICIOUS_INPUT events", "REQUIRED")]
            )
        if kind is not EventKind.SUSPICIOUS_INPUT and fields:
            raise InvalidArgument(
                violations=[
                    FieldViolation(
                        "fields", "must be empty unless the kind is SUSPICIOUS_INPUT", "UNEXPECTED"
                    )
                ]
            )
        try:
            address = ipaddress.ip_address(source_address)
        except ValueError:
            raise InvalidArgument(
                violations=[
                    FieldViolation("source_address", "must be an IPv4 or IPv6 address", "BAD_ADDRESS")
                ]
            ) from None
        received = self._clock()
        event = SecurityEvent(
            event_id=new_event_id(received),
            kind=kind,
            source_address=address.compressed,
            principal=principal,
            method=method,
            detail=detail,
            reporter=reporter,
            event_time=event_time or received,
            receive_time=received,
            fields=fields,
        )
        stored = await self.store.add_security_event(event)
        if self._observe is not None:
            self._observe(stored)  # queued for detection, after the event is durable
        return stored

    async def list_security_events(
        self, query: EventFilter, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[SecurityEvent], str]:
        """Returns one page of reported events in receive order (for detection and tests).

        Raises:
            InvalidArgument: A negative ``page_size``, a bad time range or a foreign page token.

        """
        _check_time_range(query.start_time, query.end_time)
        return await self.store.list_security_events(query, page_size, page_token)
