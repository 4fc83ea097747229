"""Where audit records live: the :class:`AuditStore` protocol, its SQLite and MongoDB stores, and the sink.

Every service of the mesh appends to ONE chain: by default the SQLite file ``<data_dir>/audit.db``,
shared by all service processes (and their workers), or a MongoDB database when
``BHIV_AUDIT_STORE_URL`` is a ``mongodb://`` URL. Appending reads the chain head and inserts in a
single write transaction (SQLite ``BEGIN IMMEDIATE``; a MongoDB transaction on a head document),
so concurrent appenders in any number of processes produce one unbroken chain.

:class:`AuditSink` sits between the audit interceptor and the store: a durable record (a mutation)
is committed before :meth:`AuditSink.record` returns; other records are queued and written in
batches by a background task. Both go through one queue, so the chain keeps the order of the
``record`` calls, and concurrent durable records share a commit.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
import logging
import sqlite3
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.errors import DuplicateKeyError
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

from bhiv_core.audit.record import (
    GENESIS_HASH,
    AuditEntry,
    AuditRecord,
    ChainBreak,
    ChainVerifier,
    VerifyResult,
    seal_batch,
    to_micros,
)
from bhiv_core.runtime.config import RuntimeConfig
from bhiv_core.storage.mongo import MongoDatabase, mongo_url_setting
from bhiv_core.storage.pagination import bad_page_token, cut_page, decode_page_token, page_size_of
from bhiv_core.storage.sqlite import SqliteDatabase

__all__ = [
    "AuditFilter",
    "AuditSink",
    "AuditStore",
    "AuditWriteError",
    "MongoAuditStore",
    "SqliteAuditStore",
    "make_audit_store",
]

log = logging.getLogger(__name__)

_MAX_SEQUENCE = 2**63 - 1
_VERIFY_BATCH = 2000


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


def _decode_token(token: str, query: AuditFilter) -> int:
    """Returns the sequence a page token continues after (0 for the first page)."""
    if not token:
        return 0
    after = decode_page_token(token, query.fingerprint())
    if type(after) is not int or not 0 <= after <= _MAX_SEQUENCE:
        raise bad_page_token()
    return after


def _page(
    records: builtins.list[AuditRecord], size: int, query: AuditFilter
) -> tuple[builtins.list[AuditRecord], str]:
    return cut_page(records, size, lambda record: record.sequence, query.fingerprint())


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
        self, query: AuditFilter, page_size: int = 0, page_token: str = ""
    ) -> tuple[builtins.list[AuditRecord], str]:
        """Returns one page of matching records by ascending sequence, and the next page token.

        Raises:
            InvalidArgument: A negative ``page_size`` or a token of another query.

        """

    async def get(self, sequence: int) -> AuditRecord | None:
        """Returns the record at ``sequence``, or None (also for any sequence outside 1..2**63-1)."""

    async def latest_sequence(self) -> int:
        """The sequence of the latest record; 0 for an empty chain."""

    async def verify(self, start_seq: int | None = None, end_seq: int | None = None) -> VerifyResult:
        """Checks the chain from ``start_seq`` (default 1) to ``end_seq`` (default the latest).

        ``end_seq`` beyond the latest record is clamped to it. When ``start_seq`` is above 1, its
        ``prev_hash`` is checked against record ``start_seq - 1``. Stops at the first break.
        """


class AuditWriteError(RuntimeError):
    """The audit store refused records after retries; the records were logged at ERROR instead."""


# --- SQLite ---------------------------------------------------------------------------------------

_SQLITE_MIGRATIONS = (
    """
    CREATE TABLE audit_records (
        sequence INTEGER PRIMARY KEY,
        time_us INTEGER NOT NULL,
        service TEXT NOT NULL,
        principal TEXT NOT NULL,
        role TEXT NOT NULL,
        method TEXT NOT NULL,
        resource TEXT NOT NULL,
        outcome_code TEXT NOT NULL,
        outcome_code_number INTEGER NOT NULL,
        client_address TEXT NOT NULL,
        trace_id TEXT NOT NULL,
        duration_ms REAL NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    CREATE INDEX audit_records_by_principal ON audit_records (principal, sequence);
    CREATE INDEX audit_records_by_method ON audit_records (method, sequence);
    CREATE INDEX audit_records_by_resource ON audit_records (resource, sequence);
    CREATE INDEX audit_records_by_outcome ON audit_records (outcome_code, sequence);
    CREATE INDEX audit_records_by_time ON audit_records (time_us);
    CREATE TABLE audit_head (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        sequence INTEGER NOT NULL,
        hash TEXT NOT NULL
    );
    INSERT INTO audit_head (id, sequence, hash)
        VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');
    """,
)

# Trigger bodies contain ';', which the migration runner splits on, so they are created on open.
# They stop accidental edits through SQL; deliberate ones (dropping them first) are what the hash
# chain detects.
_SQLITE_GUARDS = (
    "CREATE TRIGGER IF NOT EXISTS audit_records_no_update BEFORE UPDATE ON audit_records "
    "BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_records_no_delete BEFORE DELETE ON audit_records "
    "BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END",
)

_COLUMNS = (
    "sequence, time_us, service, principal, role, method, resource, outcome_code, "
    "outcome_code_number, client_address, trace_id, duration_ms, prev_hash, hash"
)
# SQL below is composed only from these fixed column names and clauses (S608 is a false positive);
# every value is a bound parameter.
_SELECT = "SELECT " + _COLUMNS + " FROM audit_records"  # noqa: S608
# A batch goes in as a few multi-row INSERTs of fixed sizes (so the statements stay cached): one
# sqlite3 step per chunk, not per row, because sqlite3 releases and retakes the GIL around every
# step and a step per row made the writer thread fight the event loop for it. Binding values
# directly costs about half of what decoding the same rows from JSON inside SQLite did.
_CHUNKS = (64, 8, 1)
_ROW_PARAMS = "(" + ", ".join("?" * 14) + ")"
_INSERT_ROWS = {
    size: "INSERT INTO audit_records (" + _COLUMNS + ") VALUES " + ", ".join([_ROW_PARAMS] * size)  # noqa: S608
    for size in _CHUNKS
}


def _insert_records(conn: sqlite3.Connection, records: Sequence[AuditRecord]) -> None:
    start = 0
    for size in _CHUNKS:
        statement = _INSERT_ROWS[size]
        while len(records) - start >= size:
            conn.execute(statement, [value for record in records[start : start + size] for value in record])
            start += size


def _record_from_row(row: sqlite3.Row | dict[str, Any]) -> AuditRecord:
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


def _verify_rows(verifier: ChainVerifier, rows: Sequence[sqlite3.Row | dict[str, Any]]) -> bool:
    """Feeds stored rows to ``verifier``; returns False once it found a break."""
    for row in rows:
        try:
            record = _record_from_row(row)
        except (TypeError, ValueError, OverflowError, KeyError) as exc:
            sequence = row["sequence"]
            if not verifier.feed_unreadable(sequence if isinstance(sequence, int) else -1, str(exc)):
                return False
            continue
        if not verifier.feed(record):
            return False
    return True


def _batch_verifier(
    verifier: ChainVerifier, after: int, end: int
) -> Callable[[sqlite3.Connection], int | None]:
    """Reads the next batch (records ``after + 1 .. end``) and feeds it to ``verifier``.

    Runs on the database thread, so hashing a long chain does not stall the event loop. Returns the
    last sequence read, or None when the range is exhausted or the chain is broken.
    """

    def run(conn: sqlite3.Connection) -> int | None:
        rows = conn.execute(
            f"{_SELECT} WHERE sequence > ? AND sequence <= ? ORDER BY sequence LIMIT ?",
            (after, end, _VERIFY_BATCH),
        ).fetchall()
        if not rows or not _verify_rows(verifier, rows):
            return None
        return int(rows[-1]["sequence"])

    return run


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


async def _begin_verify(
    head: tuple[int, str, int],
    start_seq: int | None,
    end_seq: int | None,
    hash_at: Callable[[int], Awaitable[str | None]],
) -> tuple[int, int, ChainVerifier] | VerifyResult:
    """Clamps a range to the chain and sets up its verifier; both stores only feed it.

    Args:
        head: The store's head sequence and hash, and its highest stored sequence.
        start_seq: The first sequence asked for (None or 0: 1).
        end_seq: The last sequence asked for (None or 0: the latest).
        hash_at: Reads the stored hash of one record, None when it is missing.

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
        ChainVerifier(start, end, prev_hash, (head_sequence, head_hash) if end == latest else None),
    )


def _where(query: AuditFilter) -> tuple[str, builtins.list[Any]]:
    clauses: builtins.list[str] = []
    params: builtins.list[Any] = []
    for column in ("principal", "method", "resource", "outcome_code"):
        value = getattr(query, column)
        if value:
            clauses.append(f"{column} = ?")
            params.append(value)
    if query.start_time is not None:
        clauses.append("time_us >= ?")
        params.append(to_micros(query.start_time))
    if query.end_time is not None:
        clauses.append("time_us < ?")
        params.append(to_micros(query.end_time))
    return " AND ".join(clauses), params


class SqliteAuditStore:
    """The audit chain in one SQLite file (WAL, ``synchronous=FULL``), shared by every process.

    Args:
        path: The database file, ``<data_dir>/audit.db`` for the mesh.
        busy_timeout_ms: How long an append waits for another process's write lock.

    """

    def __init__(self, path: Path, *, busy_timeout_ms: int = 30_000):
        self.path = path
        self._db = SqliteDatabase(path, _SQLITE_MIGRATIONS, busy_timeout_ms=busy_timeout_ms)

    async def open(self) -> None:
        """Opens the file, applies migrations and installs the append-only guards."""
        await self._db.open()

        def guard(conn: sqlite3.Connection) -> None:
            for statement in _SQLITE_GUARDS:
                conn.execute(statement)

        await self._db.write(guard)

    async def close(self) -> None:
        """Closes the file."""
        await self._db.close()

    async def ping(self) -> None:
        """Health check: the file answers a query."""
        await self._db.ping()

    async def append(self, entries: Sequence[AuditEntry]) -> builtins.list[AuditRecord]:
        """Seals and inserts ``entries`` in one ``BEGIN IMMEDIATE`` transaction with the head update."""
        if not entries:
            return []

        def write(conn: sqlite3.Connection) -> builtins.list[AuditRecord]:
            # BEGIN IMMEDIATE (taken by SqliteDatabase.write) holds the file's write lock from here
            # to COMMIT, so no other process can read the same head and append beside us.
            head = conn.execute("SELECT sequence, hash FROM audit_head WHERE id = 1").fetchone()
            records = seal_batch(entries, int(head["sequence"]), str(head["hash"]))
            _insert_records(conn, records)
            conn.execute(
                "UPDATE audit_head SET sequence = ?, hash = ? WHERE id = 1",
                (records[-1].sequence, records[-1].hash),
            )
            return records

        return await self._db.write(write)

    async def list(
        self, query: AuditFilter, page_size: int = 0, page_token: str = ""
    ) -> tuple[builtins.list[AuditRecord], str]:
        """Returns one page of records matching ``query``, by ascending sequence."""
        size = page_size_of(page_size)
        after = _decode_token(page_token, query)
        where, params = _where(query)
        sql = f"{_SELECT} WHERE sequence > ?{' AND ' + where if where else ''} ORDER BY sequence LIMIT ?"

        def read(conn: sqlite3.Connection) -> builtins.list[AuditRecord]:
            rows = conn.execute(sql, (after, *params, size + 1)).fetchall()
            return [_record_from_row(row) for row in rows]

        return _page(await self._db.read(read), size, query)

    async def get(self, sequence: int) -> AuditRecord | None:
        """Returns the record at ``sequence``, or None."""
        if not 1 <= sequence <= _MAX_SEQUENCE:
            return None

        def read(conn: sqlite3.Connection) -> AuditRecord | None:
            row = conn.execute(f"{_SELECT} WHERE sequence = ?", (sequence,)).fetchone()
            return None if row is None else _record_from_row(row)

        return await self._db.read(read)

    async def _head(self) -> tuple[int, str, int]:
        """The head's sequence and hash, and the highest stored sequence."""

        def read(conn: sqlite3.Connection) -> tuple[int, str, int]:
            head = conn.execute("SELECT sequence, hash FROM audit_head WHERE id = 1").fetchone()
            top = conn.execute("SELECT MAX(sequence) FROM audit_records").fetchone()[0]
            if head is None:  # the head row was deleted: every stored record is "behind" it
                return 0, GENESIS_HASH, int(top or 0)
            return int(head["sequence"]), str(head["hash"]), int(top or 0)

        return await self._db.read(read)

    async def latest_sequence(self) -> int:
        """The sequence of the latest record (the head, or a higher stored row); 0 when empty."""
        head_sequence, _, top = await self._head()
        return max(head_sequence, top)

    async def _hash_at(self, sequence: int) -> str | None:
        row = await self._db.read(
            lambda conn: conn.execute(
                "SELECT hash FROM audit_records WHERE sequence = ?", (sequence,)
            ).fetchone()
        )
        return None if row is None else str(row["hash"])

    async def verify(self, start_seq: int | None = None, end_seq: int | None = None) -> VerifyResult:
        """Verifies the range batch by batch, in short read transactions."""
        begun = await _begin_verify(await self._head(), start_seq, end_seq, self._hash_at)
        if isinstance(begun, VerifyResult):
            return begun
        start, end, verifier = begun
        after: int | None = start - 1
        while after is not None:
            after = await self._db.read(_batch_verifier(verifier, after, end))
        return verifier.finish()


# --- MongoDB --------------------------------------------------------------------------------------

_HEAD_ID = "chain"


class MongoAuditStore:
    """The audit chain in MongoDB: one ``audit_records`` collection plus a head (counter) document.

    Appends run in a transaction that first increments the head (so concurrent appenders conflict
    on it and MongoDB retries the loser), inserts the sealed records, and stores the new head hash.
    Needs a replica set (a single-node one is enough) for transactions.

    Args:
        database: The database holding the chain (``bhiv_audit``).

    """

    def __init__(self, database: MongoDatabase):
        self._database = database
        self._records = database.db["audit_records"]
        self._heads = database.db["audit_head"]
        self._durable = WriteConcern("majority", j=True)

    async def open(self) -> None:
        """Creates the indexes (sequence unique) and the head document when missing."""
        await self._records.create_index([("sequence", ASCENDING)], unique=True, name="sequence_unique")
        for field in ("principal", "method", "resource", "outcome_code"):
            await self._records.create_index(
                [(field, ASCENDING), ("sequence", ASCENDING)], name=f"by_{field}"
            )
        await self._records.create_index([("time_us", ASCENDING)], name="by_time")
        with contextlib.suppress(DuplicateKeyError):  # another process created it first
            await self._heads.update_one(
                {"_id": _HEAD_ID},
                {"$setOnInsert": {"sequence": 0, "hash": GENESIS_HASH}},
                upsert=True,
            )

    async def close(self) -> None:
        """Closes the client."""
        await self._database.close()

    async def ping(self) -> None:
        """Health check: the server answers ``ping``."""
        await self._database.ping()

    async def append(self, entries: Sequence[AuditEntry]) -> builtins.list[AuditRecord]:
        """Seals and inserts ``entries`` in one transaction with the head update."""
        if not entries:
            return []
        count = len(entries)

        async def transaction(session: AsyncClientSession) -> builtins.list[AuditRecord]:
            head = await self._heads.find_one_and_update(
                {"_id": _HEAD_ID},
                {"$inc": {"sequence": count}},
                return_document=ReturnDocument.BEFORE,
                session=session,
            )
            if head is None:
                raise RuntimeError("the audit chain head is missing: open() the store first")
            records = seal_batch(entries, int(head["sequence"]), str(head["hash"]))
            await self._records.insert_many([_document(r) for r in records], ordered=True, session=session)
            await self._heads.update_one(
                {"_id": _HEAD_ID}, {"$set": {"hash": records[-1].hash}}, session=session
            )
            return records

        async with self._database.client.start_session() as session:
            return await session.with_transaction(
                transaction, read_concern=ReadConcern("snapshot"), write_concern=self._durable
            )

    async def list(
        self, query: AuditFilter, page_size: int = 0, page_token: str = ""
    ) -> tuple[builtins.list[AuditRecord], str]:
        """Returns one page of records matching ``query``, by ascending sequence."""
        size = page_size_of(page_size)
        after = _decode_token(page_token, query)
        selector: dict[str, Any] = {"sequence": {"$gt": after}}
        for field in ("principal", "method", "resource", "outcome_code"):
            value = getattr(query, field)
            if value:
                selector[field] = value
        time_range: dict[str, int] = {}
        if query.start_time is not None:
            time_range["$gte"] = to_micros(query.start_time)
        if query.end_time is not None:
            time_range["$lt"] = to_micros(query.end_time)
        if time_range:
            selector["time_us"] = time_range
        cursor = self._records.find(selector, {"_id": False}).sort("sequence", ASCENDING).limit(size + 1)
        return _page([_record_from_row(doc) async for doc in cursor], size, query)

    async def get(self, sequence: int) -> AuditRecord | None:
        """Returns the record at ``sequence``, or None."""
        if not 1 <= sequence <= _MAX_SEQUENCE:
            return None
        doc = await self._records.find_one({"sequence": sequence}, {"_id": False})
        return None if doc is None else _record_from_row(doc)

    async def _head(self) -> tuple[int, str, int]:
        head = await self._heads.find_one({"_id": _HEAD_ID})
        top_doc = await self._records.find_one({}, {"sequence": True}, sort=[("sequence", DESCENDING)])
        top = int(top_doc["sequence"]) if top_doc is not None else 0
        if head is None:
            return 0, GENESIS_HASH, top
        return int(head["sequence"]), str(head.get("hash", GENESIS_HASH)), top

    async def latest_sequence(self) -> int:
        """The sequence of the latest record (the head, or a higher stored one); 0 when empty."""
        head_sequence, _, top = await self._head()
        return max(head_sequence, top)

    async def _hash_at(self, sequence: int) -> str | None:
        doc = await self._records.find_one({"sequence": sequence}, {"hash": True})
        return None if doc is None else str(doc["hash"])

    async def verify(self, start_seq: int | None = None, end_seq: int | None = None) -> VerifyResult:
        """Verifies the range in one cursor, ordered by sequence."""
        begun = await _begin_verify(await self._head(), start_seq, end_seq, self._hash_at)
        if isinstance(begun, VerifyResult):
            return begun
        start, end, verifier = begun
        cursor = (
            self._records.find({"sequence": {"$gte": start, "$lte": end}}, {"_id": False})
            .sort("sequence", ASCENDING)
            .batch_size(_VERIFY_BATCH)
        )
        batch: builtins.list[dict[str, Any]] = []
        try:
            async for doc in cursor:
                batch.append(doc)
                if len(batch) >= _VERIFY_BATCH:
                    # Hashing off the event loop, like the SQLite store.
                    if not await asyncio.to_thread(_verify_rows, verifier, batch):
                        break
                    batch = []
            else:
                await asyncio.to_thread(_verify_rows, verifier, batch)
        finally:
            await cursor.close()
        return verifier.finish()


def _document(record: AuditRecord) -> dict[str, Any]:
    return record._asdict()


def make_audit_store(config: RuntimeConfig) -> AuditStore:
    """Returns the mesh's audit store: ``<data_dir>/audit.db``, or MongoDB by ``BHIV_AUDIT_STORE_URL``.

    Raises:
        ConfigError: ``BHIV_AUDIT_STORE_URL`` is set but is not a MongoDB URL.

    """
    url = mongo_url_setting(config.settings, "AUDIT_STORE_URL", "the SQLite file <data_dir>/audit.db")
    if url is None:
        return SqliteAuditStore(config.data_dir / "audit.db")
    return MongoAuditStore(MongoDatabase(url, "bhiv_audit"))


# --- The sink -------------------------------------------------------------------------------------


_Pending = tuple[AuditEntry, "asyncio.Future[None] | None"]
"""An entry waiting for the writer, with the future of a caller who waits for it to be written."""


class AuditSink:
    """Writes audit entries to a store: durable ones before returning, the rest in batches.

    One background task writes everything, in the order entries were queued. It writes a batch as
    soon as a durable entry is waiting or ``batch_size`` entries are, and otherwise
    ``flush_interval`` seconds after the first waiting entry. The queue is bounded: when it is full,
    :meth:`record` waits (backpressure) instead of dropping. A batch the store refuses is retried;
    after the last retry its entries are logged at ERROR (logger ``bhiv_core.audit.store``), durable
    callers get :class:`AuditWriteError`, and :meth:`check` fails until a write succeeds again.

    The queue is a plain deque, not an ``asyncio.Queue``: every call of the mesh queues an entry,
    and :meth:`offer` costs an append and a length check.

    The sink owns the store: :meth:`start` opens it and :meth:`close` flushes and closes it.

    Args:
        store: Where records go.
        batch_size: The most entries per write (and the queue length that triggers one).
        flush_interval: The longest a batched entry waits, in seconds.
        max_pending: Queue bound; :meth:`record` waits while it is full.
        retry_delays: Pauses between attempts of a refused batch, in seconds.

    """

    def __init__(
        self,
        store: AuditStore,
        *,
        batch_size: int = 256,
        flush_interval: float = 0.05,
        max_pending: int = 8192,
        retry_delays: Sequence[float] = (0.05, 0.5, 2.0),
    ):
        self.store = store
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._max_pending = max_pending
        self._retry_delays = tuple(retry_delays)
        self._pending: deque[_Pending] = deque()
        self._wake = asyncio.Event()  # for the writer: something to write, or to write now
        self._room = asyncio.Event()  # for callers waiting on a full queue: the writer took a batch
        self._durable_waiting = 0
        self._task: asyncio.Task[None] | None = None
        self._accepting = False  # started, not closing, and the writer alive
        self._closing = False
        self._failure: str | None = None

    async def start(self) -> None:
        """Opens the store and starts the writer."""
        await self.store.open()
        self._pending.clear()
        self._closing = False
        self._task = asyncio.create_task(self._run(), name="audit-sink")
        self._task.add_done_callback(self._stopped)
        self._accepting = True

    def _stopped(self, task: asyncio.Task[None]) -> None:
        self._accepting = False
        self._room.set()  # callers waiting for room find out

    def _check_running(self) -> None:
        if self._task is None or self._closing:
            raise RuntimeError("the audit sink is not running (start() it, and record before close())")
        if self._task.done():
            raise RuntimeError("the audit sink's writer stopped; see the error logged by the writer")

    async def _put(self, item: _Pending) -> None:
        """Queues ``item``, waiting while the queue is full."""
        self._check_running()
        pending = self._pending
        while len(pending) >= self._max_pending:
            self._room.clear()
            await self._room.wait()
            self._check_running()
        pending.append(item)
        self._wake.set()

    async def record(self, entry: AuditEntry, durable: bool) -> None:
        """Records ``entry``.

        Args:
            entry: The finished call.
            durable: True to return only once the record is committed (mutations); False to
                return once it is queued (reads, refusals).

        Raises:
            AuditWriteError: ``durable`` and the store refused the record.
            RuntimeError: The sink is not running.

        """
        if not durable:
            if not self.offer(entry):
                await self._put((entry, None))
            return
        self._check_running()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._durable_waiting += 1
        try:
            await self._put((entry, done))
        except BaseException:
            self._durable_waiting -= 1
            raise
        await done

    def offer(self, entry: AuditEntry) -> bool:
        """Queues a non-durable ``entry`` without waiting; False when the queue is full.

        The per-call path of reads and refusals: no coroutine, no await. A caller that gets False
        awaits :meth:`record` instead, which waits for room (backpressure, never a drop).

        Raises:
            RuntimeError: The sink is not running.

        """
        if not self._accepting:
            self._check_running()
        pending = self._pending
        size = len(pending)
        if size >= self._max_pending:
            return False
        pending.append((entry, None))
        # The writer sleeps until the first entry arrives, then until a batch is full.
        if size == 0 or size + 1 >= self._batch_size:
            self._wake.set()
        return True

    async def flush(self) -> None:
        """Returns once every entry recorded before the call is written."""
        # A durable marker: the writer writes everything queued before it, then answers it.
        await self.record(_FLUSH, durable=True)

    async def check(self) -> None:
        """Health check: fails while the latest write was refused, else pings the store."""
        if self._failure is not None:
            raise AuditWriteError(self._failure)
        await self.store.ping()

    async def close(self) -> None:
        """Writes everything queued, stops the writer and closes the store."""
        if self._task is None:
            return
        if not self._closing:
            self._closing = True
            self._accepting = False
            self._wake.set()
            # The writer drains everything queued before close, then exits.
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None
        await self.store.close()

    def _write_now(self) -> bool:
        return self._closing or self._durable_waiting > 0 or len(self._pending) >= self._batch_size

    async def _run(self) -> None:
        pending = self._pending
        while True:
            if not pending:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if not self._write_now():
                # Wait for more, unless something (a durable entry, a full batch, close) wakes us.
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._flush_interval)
            batch = [pending.popleft() for _ in range(min(len(pending), self._batch_size))]
            self._room.set()
            await self._write(batch)

    async def _write(self, batch: list[_Pending]) -> None:
        entries = [entry for entry, _ in batch if entry is not _FLUSH]
        error: Exception | None = None
        for delay in (*self._retry_delays, None) if entries else ():
            try:
                await self.store.append(entries)
            except Exception as exc:
                error = exc
                if delay is None:
                    break
                log.warning("audit append failed; retrying in %.2f s: %s", delay, exc)
                await asyncio.sleep(delay)
            else:
                error = None
                break
        if not entries:
            pass  # only flush markers: nothing was written, the health state stands
        elif error is None:
            self._failure = None
        else:
            self._failure = f"{type(error).__name__}: {error}"
            # Never silently: the records go to the log, the only place left to keep them.
            log.error(
                "audit store refused %d records; they are logged here instead",
                len(entries),
                extra={"audit_records": [e._asdict() for e in entries], "error": self._failure},
            )
        for entry, done in batch:
            if done is None:
                continue
            self._durable_waiting -= 1
            if done.done():  # the caller was cancelled; the record was still written
                continue
            if error is None or entry is _FLUSH:
                done.set_result(None)
            else:
                done.set_exception(AuditWriteError(self._failure or "audit write failed"))


_FLUSH = AuditEntry(
    time_us=0,
    service="",
    principal="",
    role="",
    method="",
    resource="",
    outcome_code="",
    outcome_code_number=0,
    client_address="",
    trace_id="",
    duration_ms=0.0,
)
"""A marker entry :meth:`AuditSink.flush` queues; never written."""
