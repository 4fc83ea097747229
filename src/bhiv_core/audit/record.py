"""Audit records and their hash chain.

An :class:`AuditEntry` is what the audit interceptor knows about one finished call. The store seals
it into an :class:`AuditRecord` by assigning the next ``sequence`` and the ``prev_hash`` (the
``hash`` of the record before it), and hashing the whole record: ``hash`` is the SHA-256 of
:meth:`AuditRecord.canonical`, the JSON array of every field but ``hash`` in declaration order,
compact and ASCII-only (``json.dumps(fields, separators=(",", ":"))``). Changing, removing, inserting
or reordering a stored record therefore breaks either its own hash, the sequence, or the link to its
neighbour; :class:`ChainVerifier` finds the first such break.

Every text field is capped before it is sealed (:func:`bounded`): a caller chooses the method path
of an unknown method and the resource name it sends, and one 4 MiB name must not become a 4 MiB
record. A value over its cap (:data:`TEXT_LIMIT` UTF-8 bytes, :data:`RESOURCE_LIMIT` for the
resource) keeps its first bytes, cut at a character boundary, followed by
``…[truncated from N bytes]`` (``N`` its length in UTF-8 bytes), and fills the cap exactly. The
capped text is what is stored and hashed.

Entries and records are named tuples: one is built for every call of the mesh, and a tuple costs a
fraction of a frozen dataclass. Their order is the hashed order and the stored column order.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import NamedTuple

__all__ = [
    "GENESIS_HASH",
    "RESOURCE_LIMIT",
    "TEXT_LIMIT",
    "AuditEntry",
    "AuditRecord",
    "ChainBreak",
    "ChainVerifier",
    "VerifyResult",
    "bounded",
    "cap_text",
    "capped_for_display",
    "from_micros",
    "seal",
    "seal_batch",
    "to_micros",
]

GENESIS_HASH = "0" * 64
"""The ``prev_hash`` of the first record of the chain."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_ENCODER = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":"))


def _refuse(value: object) -> object:
    raise TypeError(f"{type(value).__name__} cannot be part of an audit record")


# JSONEncoder.encode builds a new C encoder on every call, which costs as much as the encoding of a
# record; the same C encoder, with the same options, is built once here. Its output is identical
# (a test compares them); an interpreter without it uses JSONEncoder.encode.
_chunks = (
    c_make_encoder(None, _refuse, encode_basestring_ascii, None, ":", ",", False, False, False)
    if c_make_encoder is not None
    else None
)


def _encode(fields: Sequence[object]) -> str:
    if _chunks is None:  # pragma: no cover - CPython has the C encoder
        return _ENCODER.encode(fields)
    return "".join(_chunks(fields, 0))


_sha256 = hashlib.sha256


def to_micros(moment: datetime) -> int:
    """Returns ``moment`` as whole microseconds since the Unix epoch (naive means UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(microseconds=1)


def from_micros(micros: int) -> datetime:
    """Returns the UTC datetime ``micros`` microseconds after the Unix epoch."""
    return _EPOCH + timedelta(microseconds=micros)


class AuditEntry(NamedTuple):
    """One finished call, before the store gives it a place in the chain.

    Attributes:
        time_us: When the call finished, in microseconds since the Unix epoch (UTC).
        service: The service that handled it, like ``crm``.
        principal: The caller's subject (``users/u1``, ``services/identity``); empty when
            unauthenticated.
        role: The caller's role (``admin``); empty when unauthenticated or for a service.
        method: The full method path, ``/bhiv.crm.v1.CustomerService/GetCustomer``.
        resource: The resource name the call addressed, like ``customers/c42``; empty when none.
        outcome_code: The gRPC status name, like ``OK`` or ``PERMISSION_DENIED``.
        outcome_code_number: The numeric gRPC status code (0-16).
        client_address: The client's IP address, without port.
        trace_id: The W3C trace id (32 lowercase hex characters), or empty.
        duration_ms: How long the call took in the service, in milliseconds.

    """

    time_us: int
    service: str
    principal: str
    role: str
    method: str
    resource: str
    outcome_code: str
    outcome_code_number: int
    client_address: str
    trace_id: str
    duration_ms: float

    @property
    def time(self) -> datetime:
        """:attr:`time_us` as a UTC datetime."""
        return from_micros(self.time_us)


class AuditRecord(NamedTuple):
    """One sealed link of the audit chain, as stored (fields in hashed and column order).

    Attributes:
        sequence: The position in the chain: 1, 2, 3, … with no gap.
        time_us: When the call finished, in microseconds since the Unix epoch (UTC).
        service: The service that handled the call.
        principal: The caller's subject; empty when unauthenticated.
        role: The caller's role; empty when unauthenticated or for a service.
        method: The full method path.
        resource: The resource name the call addressed; empty when none.
        outcome_code: The gRPC status name.
        outcome_code_number: The numeric gRPC status code.
        client_address: The client's IP address.
        trace_id: The W3C trace id, or empty.
        duration_ms: How long the call took, in milliseconds (rounded to microseconds).
        prev_hash: The ``hash`` of record ``sequence - 1``; :data:`GENESIS_HASH` for sequence 1.
        hash: The SHA-256 (lowercase hex) of :meth:`canonical`.

    """

    sequence: int
    time_us: int
    service: str
    principal: str
    role: str
    method: str
    resource: str
    outcome_code: str
    outcome_code_number: int
    client_address: str
    trace_id: str
    duration_ms: float
    prev_hash: str
    hash: str

    @property
    def time(self) -> datetime:
        """:attr:`time_us` as a UTC datetime."""
        return from_micros(self.time_us)

    @property
    def name(self) -> str:
        """The resource name, ``auditRecords/{sequence}``."""
        return f"auditRecords/{self.sequence}"

    def canonical(self) -> bytes:
        """The bytes the hash covers: every field but ``hash``, as a compact ASCII JSON array."""
        return _encode(self[:-1]).encode()

    def computed_hash(self) -> str:
        """The hash this record's content should have (compare with :attr:`hash`)."""
        return _sha256(self.canonical()).hexdigest()


TEXT_LIMIT = 256
"""The most UTF-8 bytes a text field of a record holds, the resource excepted (see :func:`bounded`)."""

RESOURCE_LIMIT = 512
"""The most UTF-8 bytes the ``resource`` of a record holds."""

# Field positions of AuditEntry's text fields (every one but the numbers), with their caps.
_TEXT_FIELDS = (
    (1, TEXT_LIMIT),  # service
    (2, TEXT_LIMIT),  # principal
    (3, TEXT_LIMIT),  # role
    (4, TEXT_LIMIT),  # method
    (5, RESOURCE_LIMIT),  # resource
    (6, TEXT_LIMIT),  # outcome_code
    (8, TEXT_LIMIT),  # client_address
    (9, TEXT_LIMIT),  # trace_id
)

# Lengths (in characters) that fit whatever the characters: at most 4 UTF-8 bytes each.
_QUICK = TEXT_LIMIT // 4
_QUICK_RESOURCE = RESOURCE_LIMIT // 4


def _fits(value: str, limit: int) -> bool:
    # No character takes more than 4 bytes in UTF-8, and an ASCII one takes 1: only a long
    # non-ASCII value is encoded to be measured.
    size = len(value)
    return size <= limit // 4 or (size <= limit and (value.isascii() or len(_utf8(value)) <= limit))


def _utf8(value: str) -> bytes:
    # surrogatepass: a lone surrogate is measured (and cut) like any other character, never an error.
    return value.encode("utf-8", "surrogatepass")


def cap_text(value: str, limit: int) -> str:
    """Returns ``value`` when it fits in ``limit`` UTF-8 bytes, else its capped form.

    The capped form is the longest prefix of ``value`` that ends on a character boundary and
    leaves room for the marker ``…[truncated from N bytes]`` (``N``: the UTF-8 length of
    ``value``), then the marker; it is ``limit`` bytes at most (and at least ``limit - 3``).
    The cost is linear in the length of ``value``, once.
    """
    if _fits(value, limit):
        return value
    size = len(value) if value.isascii() else len(_utf8(value))
    marker = f"\u2026[truncated from {size} bytes]"
    room = max(limit - len(_utf8(marker)), 0)
    # The first ``room`` characters hold at least ``room`` bytes (or are all of ``value``, which is
    # longer than ``limit``): only those are encoded.
    head = _utf8(value[:room])
    cut = room
    while 0 < cut < len(head) and head[cut] & 0xC0 == 0x80:  # the cut splits a character
        cut -= 1
    return head[:cut].decode("utf-8", "surrogatepass") + marker


def bounded(entry: AuditEntry) -> AuditEntry:
    """Returns ``entry`` with every text field capped (:func:`cap_text`); the same object when all fit.

    :func:`seal_batch` applies it to whatever it seals; the audit interceptor applies it as soon as
    it builds an entry, so a queued entry holds no more than the record will.
    """
    # The common case, decided by lengths alone (this runs on every call of the mesh).
    _, service, principal, role, method, resource, outcome, _, address, trace_id, _ = entry
    if (
        len(method) <= _QUICK
        and len(resource) <= _QUICK_RESOURCE
        and len(principal) <= _QUICK
        and len(address) <= _QUICK
        and len(service) <= _QUICK
        and len(role) <= _QUICK
        and len(outcome) <= _QUICK
        and len(trace_id) <= _QUICK
    ):
        return entry
    for index, limit in _TEXT_FIELDS:
        if not _fits(entry[index], limit):  # type: ignore[arg-type]  # the text fields' positions
            break
    else:
        return entry
    fields: list[object] = list(entry)
    for index, limit in _TEXT_FIELDS:
        fields[index] = cap_text(entry[index], limit)  # type: ignore[arg-type]
    return AuditEntry._make(fields)


def capped_for_display(record: AuditRecord) -> AuditRecord:
    """``record`` with its text capped like :func:`bounded`, and its stored ``hash``.

    For showing a record stored before the caps existed, which can be too large for a response;
    the result no longer hashes to its ``hash`` (verification reads the stored record instead).
    """
    fields: list[object] = list(record)
    for index, limit in _TEXT_FIELDS:
        fields[index + 1] = cap_text(record[index + 1], limit)  # type: ignore[arg-type]  # after sequence
    return AuditRecord._make(fields)


def seal(entry: AuditEntry, sequence: int, prev_hash: str) -> AuditRecord:
    """Places ``entry`` at ``sequence`` after the record whose hash is ``prev_hash``, and hashes it."""
    return seal_batch((entry,), sequence - 1, prev_hash)[0]


def seal_batch(entries: Sequence[AuditEntry], sequence: int, prev_hash: str) -> list[AuditRecord]:
    """Seals ``entries`` in order after record ``sequence``, whose hash is ``prev_hash``.

    Each entry's text is capped first (:func:`bounded`), so the hash covers exactly what is stored.
    """
    records: list[AuditRecord] = []
    for entry in entries:
        sequence += 1
        entry = bounded(entry)
        # Durations are rounded to microseconds, which every store keeps exactly as a double, so a
        # stored record re-hashes to the same value.
        fields = (sequence, *entry[:10], round(float(entry[10]), 3), prev_hash)
        prev_hash = _sha256(_encode(fields).encode()).hexdigest()
        records.append(AuditRecord._make((*fields, prev_hash)))
    return records


class ChainBreak(StrEnum):
    """Why a chain is broken."""

    HASH_MISMATCH = "hash_mismatch"
    """A record's stored hash differs from the hash of its content: the record was changed."""
    PREV_HASH_MISMATCH = "prev_hash_mismatch"
    """A record's ``prev_hash`` differs from the previous record's hash: inserted, replaced or moved."""
    SEQUENCE_GAP = "sequence_gap"
    """A sequence number is missing: a record was removed."""
    CHECKPOINT_MISMATCH = "checkpoint_mismatch"
    """A record's hash differs from the one a signed checkpoint recorded: the chain was rewritten."""
    CHECKPOINT_INVALID = "checkpoint_invalid"
    """A checkpoint fails its signature, its hash or its link to the previous one."""


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """The outcome of verifying a range of the chain.

    Attributes:
        ok: True when every record of the range is intact and linked to the one before.
        checked: Records checked; when broken, up to and including the first broken one.
        first_broken_sequence: The first broken record (for a gap, the first missing sequence);
            0 when ``ok``.
        reason: Why the chain is broken; None when ``ok``.
        detail: What differs, for a person (expected and found hashes); empty when ``ok``.
        start_sequence: The first sequence of the verified range.
        end_sequence: The last sequence of the verified range (0 for an empty log).
        checkpoint_sequence: The record of the checkpoint a verification started from (see
            :mod:`bhiv_core.audit.checkpoint`); 0 when it started from the first record.
        checkpoints_checked: Signed checkpoints whose signature and link were checked.

    """

    ok: bool
    checked: int
    first_broken_sequence: int = 0
    reason: ChainBreak | None = None
    detail: str = ""
    start_sequence: int = 0
    end_sequence: int = 0
    checkpoint_sequence: int = 0
    checkpoints_checked: int = 0


class ChainVerifier:
    """Checks stored records in sequence order, batch by batch, and stops at the first break.

    Both stores feed it, so the verification rules exist once. Usage: :meth:`feed` each record of
    ``start..end`` in ascending sequence order (or :meth:`feed_unreadable` for a row that cannot
    be read back) while it returns True, then :meth:`finish`.

    Args:
        start: The first sequence of the range.
        end: The last sequence of the range.
        prev_hash: The hash of record ``start - 1`` (:data:`GENESIS_HASH` when ``start`` is 1).
        head: The chain head the store keeps (the sequence and hash of its last append, written in
            the same transaction), given when ``end`` is the latest record: it catches a last
            record that was changed and re-hashed, or records added behind the store's back.
            None to skip that check (a range that ends before the latest record).
        anchors: Record hashes that signed checkpoints recorded, by sequence: a record whose hash
            differs is :attr:`ChainBreak.CHECKPOINT_MISMATCH` (the chain was rewritten and
            re-hashed up to there, which the links alone cannot show).

    """

    def __init__(
        self,
        start: int,
        end: int,
        prev_hash: str,
        head: tuple[int, str] | None = None,
        anchors: Mapping[int, str] | None = None,
    ):
        self._start = start
        self._end = end
        self._expected = start
        self._prev_hash = prev_hash
        self._head = head
        self._anchors = anchors or None
        self._checked = 0
        self._broken: VerifyResult | None = None

    def _break(self, sequence: int, reason: ChainBreak, detail: str) -> bool:
        self._broken = VerifyResult(
            ok=False,
            checked=self._checked,
            first_broken_sequence=sequence,
            reason=reason,
            detail=detail,
            start_sequence=self._start,
            end_sequence=self._end,
        )
        return False

    def _gap(self, found: int | None) -> bool:
        after = f"the next stored record is {found}" if found is not None else "no later record is stored"
        return self._break(
            self._expected,
            ChainBreak.SEQUENCE_GAP,
            f"record {self._expected} is missing ({after})",
        )

    def feed(self, record: AuditRecord) -> bool:
        """Checks the next record; returns False when the chain is broken (stop feeding)."""
        if self._broken is not None:
            return False
        if record.sequence != self._expected:
            return self._gap(record.sequence)
        self._checked += 1
        computed = record.computed_hash()
        if computed != record.hash:
            return self._break(
                record.sequence,
                ChainBreak.HASH_MISMATCH,
                f"record {record.sequence} stores hash {record.hash} but its content hashes to {computed}",
            )
        if record.prev_hash != self._prev_hash:
            return self._break(
                record.sequence,
                ChainBreak.PREV_HASH_MISMATCH,
                f"record {record.sequence} has prev_hash {record.prev_hash} but record "
                f"{record.sequence - 1} has hash {self._prev_hash}",
            )
        if self._anchors is not None:
            anchored = self._anchors.get(record.sequence)
            if anchored is not None and anchored != record.hash:
                return self._break(
                    record.sequence,
                    ChainBreak.CHECKPOINT_MISMATCH,
                    f"record {record.sequence} hashes to {record.hash} but the signed checkpoint at it "
                    f"recorded {anchored}: the chain was rewritten at or before record {record.sequence}",
                )
        self._prev_hash = record.hash
        self._expected += 1
        return True

    def feed_unreadable(self, sequence: int, error: str) -> bool:
        """Reports a stored row that no longer reads back as a record (a column was retyped)."""
        if self._broken is not None:
            return False
        if sequence != self._expected:
            return self._gap(sequence)
        self._checked += 1
        return self._break(sequence, ChainBreak.HASH_MISMATCH, f"record {sequence} is unreadable: {error}")

    def finish(self) -> VerifyResult:
        """Returns the result once every record of the range was fed (or a break was found)."""
        if self._broken is None and self._expected <= self._end:
            self._gap(None)
        if self._broken is None and self._head is not None and self._checked:
            head_sequence, head_hash = self._head
            if head_sequence < self._end:
                self._break(
                    head_sequence + 1,
                    ChainBreak.PREV_HASH_MISMATCH,
                    f"records {head_sequence + 1}..{self._end} were added behind the chain head, "
                    f"which ends at record {head_sequence}",
                )
            elif head_hash != self._prev_hash:
                # The last record has no successor whose prev_hash would catch a re-hashed edit.
                self._break(
                    self._end,
                    ChainBreak.HASH_MISMATCH,
                    f"record {self._end} has hash {self._prev_hash} but the chain head records {head_hash}",
                )
        if self._broken is not None:
            return self._broken
        return VerifyResult(
            ok=True, checked=self._checked, start_sequence=self._start, end_sequence=self._end
        )
