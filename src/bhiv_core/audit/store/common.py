"""What both audit stores share: pages and their tokens, reading stored rows back, setting up a verification.

Used by :mod:`~bhiv_core.audit.store.sqlite` and :mod:`~bhiv_core.audit.store.mongo` only.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, get_type_hints

from bhiv_core.audit.checkpoint import Checkpoint
from bhiv_core.audit.record import (
    GENESIS_HASH,
    AuditRecord,
    ChainBreak,
    ChainVerifier,
    VerifyResult,
    capped_for_display,
)
from bhiv_core.audit.store import AuditFilter
from bhiv_core.storage.pagination import bad_page_token, decode_page_token, encode_page_token

__all__ = [
    "MAX_SEQUENCE",
    "VERIFY_BATCH",
    "Page",
    "begin_verify",
    "checkpoint_from_row",
    "decode_token",
    "record_from_row",
    "verify_rows",
]

MAX_SEQUENCE = 2**63 - 1
"""The highest sequence a record can have: the largest 64-bit integer both stores hold."""

VERIFY_BATCH = 2000
"""Records read and hashed per step of a verification."""


def decode_token(token: str, query: AuditFilter) -> int:
    """Returns the sequence a page token continues after (0 for the first page)."""
    if not token:
        return 0
    after = decode_page_token(token, query.fingerprint())
    if type(after) is not int or not 0 <= after <= MAX_SEQUENCE:
        raise bad_page_token()
    return after


RECORD_OVERHEAD = 512
"""What a record's response encoding adds to its canonical form, at most (tags, lengths, its name).

A record's canonical form is never shorter than its fields in a response: it holds every field,
its text as JSON (one byte per ASCII character, an escape of six or twelve for any other, which
UTF-8 writes in two to four). The rest (field tags and lengths, the name, the time and duration
as messages, the repeated field's own tag and length) is a few dozen bytes.
"""


def record_bytes(record: AuditRecord) -> int:
    """An upper bound of the bytes ``record`` takes in a ``ListAuditRecordsResponse``."""
    return len(record.canonical()) + RECORD_OVERHEAD


class Page:
    """One page of records, cut by count and by bytes, and the token of the next.

    The store reads up to ``size + 1`` matching records in order and calls :meth:`add` for each
    until it answers False. A page ends after ``size`` records, or before the record that would
    take it past ``max_bytes`` (:func:`record_bytes`), so a page always fits in a response. It
    holds at least one record: a record larger than ``max_bytes`` on its own (only one stored
    before the text caps can be) is shown with its text capped.

    Args:
        size: The most records (from ``page_size_of``).
        max_bytes: The most bytes of records in the response.
        query: The filters the next page token is bound to.

    """

    def __init__(self, size: int, max_bytes: int, query: AuditFilter):
        self._size = size
        self._max_bytes = max_bytes
        self._query = query
        self._records: list[AuditRecord] = []
        self._bytes = 0
        self._more = False

    def add(self, record: AuditRecord) -> bool:
        """Adds the next record read; False when the page is full (it then has a next page)."""
        if len(self._records) >= self._size:
            self._more = True
            return False
        cost = record_bytes(record)
        if self._records and self._bytes + cost > self._max_bytes:
            self._more = True
            return False
        if cost > self._max_bytes:
            record = capped_for_display(record)
            cost = record_bytes(record)
        self._records.append(record)
        self._bytes += cost
        return True

    def result(self) -> tuple[list[AuditRecord], str]:
        """The page and the next page's token (empty on the last page)."""
        if not self._more:
            return self._records, ""
        return self._records, encode_page_token(self._records[-1].sequence, self._query.fingerprint())


def record_from_row(row: sqlite3.Row | dict[str, Any]) -> AuditRecord:
    """Reads a stored row back; raises TypeError/ValueError when a column holds the wrong type."""

    def text(key: str) -> str:
        value = row[key]
        if not isinstance(value, str):
            raise TypeError(f"{key} is {type(value).__name__}, not text")
        return value

    def integer(key: str) -> int:
        value = row[key]
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{key} is {type(value).__name__}, not an integer")
        return value

    duration = row["duration_ms"]
    if not isinstance(duration, int | float) or isinstance(duration, bool):
        raise TypeError(f"duration_ms is {type(duration).__name__}, not a number")
    return AuditRecord(
        sequence=integer("sequence"),
        time_us=integer("time_us"),
        service=text("service"),
        principal=text("principal"),
        role=text("role"),
        method=text("method"),
        resource=text("resource"),
        outcome_code=text("outcome_code"),
        outcome_code_number=integer("outcome_code_number"),
        client_address=text("client_address"),
        trace_id=text("trace_id"),
        duration_ms=float(duration),
        prev_hash=text("prev_hash"),
        hash=text("hash"),
    )


def checkpoint_from_row(row: sqlite3.Row | dict[str, Any]) -> Checkpoint:
    """Reads a stored checkpoint back; raises TypeError when a column holds the wrong type.

    A retyped column is reported by the caller as an invalid checkpoint, never raised to a client.
    """
    values = [row[field] for field in Checkpoint._fields]
    for field, value in zip(Checkpoint._fields, values, strict=True):
        wanted = int if field in ("number", "sequence", "time_us") else str
        if type(value) is not wanted:
            raise TypeError(f"checkpoint {field} is {type(value).__name__}, not {wanted.__name__}")
    return Checkpoint._make(values)


_RECORD_TYPES = tuple(get_type_hints(AuditRecord).values())
"""The exact type of each stored column of a sound record, in column order."""


def verify_rows(verifier: ChainVerifier, rows: Sequence[sqlite3.Row | dict[str, Any]]) -> bool:
    """Feeds stored rows to ``verifier``; returns False once it found a break."""
    for row in rows:
        if isinstance(row, sqlite3.Row):
            # A full walk reads every record: one type comparison of the whole row costs far less than
            # :func:`record_from_row`'s check of each column by name, which stays for any other row.
            values = tuple(row)
            if tuple(map(type, values)) == _RECORD_TYPES:
                if not verifier.feed(AuditRecord._make(values)):
                    return False
                continue
        try:
            record = record_from_row(row)
        except (TypeError, ValueError, OverflowError, KeyError) as exc:
            sequence = row["sequence"]
            if not verifier.feed_unreadable(sequence if isinstance(sequence, int) else -1, str(exc)):
                return False
            continue
        if not verifier.feed(record):
            return False
    return True


def _missing_before(start: int, end: int) -> VerifyResult:
    """The result when the record a range must link to (``start - 1``) is gone."""
    return VerifyResult(
        ok=False,
        checked=0,
        first_broken_sequence=start - 1,
        reason=ChainBreak.SEQUENCE_GAP,
        detail=f"record {start - 1}, which record {start} must link to, is missing",
        start_sequence=start,
        end_sequence=end,
    )


async def begin_verify(
    head: tuple[int, str, int],
    start_seq: int | None,
    end_seq: int | None,
    hash_at: Callable[[int], Awaitable[str | None]],
    anchors: Mapping[int, str] | None = None,
) -> tuple[int, int, ChainVerifier] | VerifyResult:
    """Clamps a range to the chain and sets up its verifier; both stores only feed it.

    Args:
        head: The store's head sequence and hash, and its highest stored sequence.
        start_seq: The first sequence asked for (None or 0: 1).
        end_seq: The last sequence asked for (None or 0: the latest).
        hash_at: Reads the stored hash of one record, None when it is missing.
        anchors: Record hashes that signed checkpoints recorded, by sequence (see
            :class:`~bhiv_core.audit.record.ChainVerifier`).

    Returns:
        ``(start, end, verifier)``, or the result itself when there is nothing to feed: an empty
        range, or a missing record ``start - 1``.

    """
    head_sequence, head_hash, top = head
    latest = max(head_sequence, top)
    start = max(start_seq or 1, 1)
    end = latest if not end_seq else min(end_seq, latest)
    if start > end:
        return VerifyResult(ok=True, checked=0, start_sequence=start, end_sequence=max(end, 0))
    prev_hash = GENESIS_HASH
    if start > 1:
        found = await hash_at(start - 1)
        if found is None:
            return _missing_before(start, end)
        prev_hash = found
    return (
        start,
        end,
        ChainVerifier(start, end, prev_hash, (head_sequence, head_hash) if end == latest else None, anchors),
    )
