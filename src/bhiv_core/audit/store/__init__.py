"""Where audit records live: the :class:`AuditStore` protocol, its query, and the factory of the store.

Every service of the mesh appends to ONE chain: by default the SQLite file ``<data_dir>/audit.db``,
shared by all service processes (and their workers), or a MongoDB database when
``BHIV_AUDIT_STORE_URL`` is a ``mongodb://`` URL. Appending reads the chain head and inserts in a
single write transaction (SQLite ``BEGIN IMMEDIATE``; a MongoDB transaction on a head document),
so concurrent appenders in any number of processes produce one unbroken chain.

One backend per module: :mod:`~bhiv_core.audit.store.sqlite` (``SqliteAuditStore``, the embedded
default) and :mod:`~bhiv_core.audit.store.mongo` (``MongoAuditStore``);
:mod:`~bhiv_core.audit.store.common` holds what both share (page tokens, reading stored rows back,
setting up a verification). The batching sink in front of the store is :mod:`bhiv_core.audit.sink`.
"""

from __future__ import annotations

import builtins
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from bhiv_core.audit.checkpoint import Checkpoint
from bhiv_core.audit.record import AuditEntry, AuditRecord, VerifyResult, to_micros
from bhiv_core.runtime.config import RuntimeConfig
from bhiv_core.storage.mongo import MongoDatabase, mongo_url_setting

__all__ = ["PAGE_BYTES", "AuditFilter", "AuditStore", "make_audit_store"]

PAGE_BYTES = 4 * 1024 * 1024 - 64 * 1024
"""The most bytes of records a page of :meth:`AuditStore.list` holds by default: the default
message limit (4 MiB) less room for the rest of the response."""


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """Which records :meth:`AuditStore.list` returns; every set field must match (exactly).

    Attributes:
        principal: Only this principal's records, when set.
        method: Only this full method path, when set.
        resource: Only records naming this resource, when set.
        outcome_code: Only this outcome (a gRPC status name like ``PERMISSION_DENIED``), when set.
        start_time: Only records at or after this time, when set.
        end_time: Only records before this time, when set.

    """

    principal: str = ""
    method: str = ""
    resource: str = ""
    outcome_code: str = ""
    start_time: datetime | None = None
    end_time: datetime | None = None

    def fingerprint(self) -> str:
        """A short digest of the filter, so a page token cannot be replayed with other filters."""
        parts = [
            self.principal,
            self.method,
            self.resource,
            self.outcome_code,
            "" if self.start_time is None else str(to_micros(self.start_time)),
            "" if self.end_time is None else str(to_micros(self.end_time)),
        ]
        return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]


class AuditStore(Protocol):
    """The audit chain: append-only, hash-chained, shared by every service of the mesh."""

    async def open(self) -> None:
        """Opens the store (creates the schema when missing)."""

    async def close(self) -> None:
        """Closes the store."""

    async def ping(self) -> None:
        """Health check: returns when the store answers, raises otherwise."""

    async def append(self, entries: Sequence[AuditEntry]) -> builtins.list[AuditRecord]:
        """Seals ``entries`` in order at the end of the chain, atomically; durable when it returns.

        Assigns consecutive sequences and chains the hashes inside one transaction, so appenders in
        other processes never interleave with or duplicate them.
        """

    async def list(
        self, query: AuditFilter, page_size: int = 0, page_token: str = "", *, max_bytes: int = PAGE_BYTES
    ) -> tuple[builtins.list[AuditRecord], str]:
        """Returns one page of matching records by ascending sequence, and the next page token.

        A page ends after ``page_size`` records or before ``max_bytes`` of them in a response,
        whichever comes first (:class:`~bhiv_core.audit.store.common.Page`).

        Raises:
            InvalidArgument: A negative ``page_size`` or a token of another query.

        """

    async def get(self, sequence: int) -> AuditRecord | None:
        """Returns the record at ``sequence``, or None (also for any sequence outside 1..2**63-1)."""

    async def latest_sequence(self) -> int:
        """The sequence of the latest record; 0 for an empty chain."""

    async def verify(
        self,
        start_seq: int | None = None,
        end_seq: int | None = None,
        *,
        anchors: Mapping[int, str] | None = None,
    ) -> VerifyResult:
        """Checks the chain from ``start_seq`` (default 1) to ``end_seq`` (default the latest).

        ``end_seq`` beyond the latest record is clamped to it. When ``start_seq`` is above 1, its
        ``prev_hash`` is checked against record ``start_seq - 1``. Stops at the first break.
        ``anchors`` are record hashes signed checkpoints recorded, by sequence: a record of the range
        whose hash differs is a break too.
        """

    # Checkpoints (bhiv_core.audit.checkpoint): their own append-only chain beside the records.

    async def add_checkpoint(self, checkpoint: Checkpoint) -> bool:
        """Stores ``checkpoint`` if it extends the latest one; durable when it returns.

        It extends the latest when its ``number`` is the next one and its ``prev_hash`` is the
        latest's ``hash`` (number 1 when there is none), checked in the same transaction as the
        insert. Returns False, storing nothing, when another writer stored that number first.
        """

    async def latest_checkpoint(self, at_or_before: int | None = None) -> Checkpoint | None:
        """Returns the checkpoint with the highest number, or None when there is none.

        Args:
            at_or_before: Only checkpoints at a record sequence up to this one, when given.

        """

    async def get_checkpoint(self, number: int) -> Checkpoint | None:
        """Returns the checkpoint ``number``, or None (also for any number outside 1..2**63-1)."""

    async def checkpoints(
        self, *, after_number: int = 0, min_sequence: int = 0, limit: int = 1000
    ) -> builtins.list[Checkpoint]:
        """Returns checkpoints by ascending number, for walking them in pages.

        Args:
            after_number: Only checkpoints numbered above this one.
            min_sequence: Only checkpoints at this record sequence or later.
            limit: The most to return.

        """


def make_audit_store(config: RuntimeConfig) -> AuditStore:
    """Returns the mesh's audit store: ``<data_dir>/audit.db``, or MongoDB by ``BHIV_AUDIT_STORE_URL``.

    Raises:
        ConfigError: ``BHIV_AUDIT_STORE_URL`` is set but is not a MongoDB URL.

    """
    # The backends import this package (its query type), so they are imported once one is chosen.
    from bhiv_core.audit.store.mongo import MongoAuditStore
    from bhiv_core.audit.store.sqlite import SqliteAuditStore

    url = mongo_url_setting(config.settings, "AUDIT_STORE_URL", "the SQLite file <data_dir>/audit.db")
    if url is None:
        return SqliteAuditStore(config.data_dir / "audit.db")
    return MongoAuditStore(MongoDatabase(url, "bhiv_audit"))
