"""The audit chain in one SQLite file (WAL, ``synchronous=FULL``), shared by every process of the mesh."""

from __future__ import annotations

import builtins
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bhiv_core.audit.checkpoint import Checkpoint
from bhiv_core.audit.record import (
    GENESIS_HASH,
    AuditEntry,
    AuditRecord,
    ChainVerifier,
    VerifyResult,
    seal_batch,
    to_micros,
)
from bhiv_core.audit.store import PAGE_BYTES, AuditFilter
from bhiv_core.audit.store.common import (
    MAX_SEQUENCE,
    VERIFY_BATCH,
    Page,
    begin_verify,
    checkpoint_from_row,
    decode_token,
    record_from_row,
    verify_rows,
)
from bhiv_core.storage.pagination import page_size_of
from bhiv_core.storage.sqlite import SqliteDatabase

__all__ = ["SqliteAuditStore"]

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
    # Signed checkpoints (bhiv_core.audit.checkpoint), a chain of their own beside the records.
    """
    CREATE TABLE audit_checkpoints (
        number INTEGER PRIMARY KEY,
        sequence INTEGER NOT NULL,
        record_hash TEXT NOT NULL,
        time_us INTEGER NOT NULL,
        prev_hash TEXT NOT NULL,
        key TEXT NOT NULL,
        signature TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    CREATE INDEX audit_checkpoints_by_sequence ON audit_checkpoints (sequence);
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
    "CREATE TRIGGER IF NOT EXISTS audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints "
    "BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints "
    "BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END",
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
_CHECKPOINT_COLUMNS = ", ".join(Checkpoint._fields)
_SELECT_CHECKPOINT = "SELECT " + _CHECKPOINT_COLUMNS + " FROM audit_checkpoints"  # noqa: S608
_INSERT_CHECKPOINT = (
    "INSERT INTO audit_checkpoints (" + _CHECKPOINT_COLUMNS + ") VALUES (" + ", ".join("?" * 8) + ")"  # noqa: S608
)
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
            (after, end, VERIFY_BATCH),
        ).fetchall()
        if not rows or not verify_rows(verifier, rows):
            return None
        return int(rows[-1]["sequence"])

    return run


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
        self, query: AuditFilter, page_size: int = 0, page_token: str = "", *, max_bytes: int = PAGE_BYTES
    ) -> tuple[builtins.list[AuditRecord], str]:
        """Returns one page of records matching ``query``, by ascending sequence, within ``max_bytes``."""
        size = page_size_of(page_size)
        after = decode_token(page_token, query)
        where, params = _where(query)
        sql = f"{_SELECT} WHERE sequence > ?{' AND ' + where if where else ''} ORDER BY sequence LIMIT ?"

        def read(conn: sqlite3.Connection) -> tuple[builtins.list[AuditRecord], str]:
            # Row by row, so a page of large records stops reading at its byte budget.
            page = Page(size, max_bytes, query)
            cursor = conn.execute(sql, (after, *params, size + 1))
            try:
                for row in cursor:
                    if not page.add(record_from_row(row)):
                        break
            finally:
                cursor.close()  # ends the read transaction of a statement left unfinished
            return page.result()

        return await self._db.read(read)

    async def get(self, sequence: int) -> AuditRecord | None:
        """Returns the record at ``sequence``, or None."""
        if not 1 <= sequence <= MAX_SEQUENCE:
            return None

        def read(conn: sqlite3.Connection) -> AuditRecord | None:
            row = conn.execute(f"{_SELECT} WHERE sequence = ?", (sequence,)).fetchone()
            return None if row is None else record_from_row(row)

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

    async def verify(
        self,
        start_seq: int | None = None,
        end_seq: int | None = None,
        *,
        anchors: Mapping[int, str] | None = None,
    ) -> VerifyResult:
        """Verifies the range batch by batch, in short read transactions."""
        begun = await begin_verify(await self._head(), start_seq, end_seq, self._hash_at, anchors)
        if isinstance(begun, VerifyResult):
            return begun
        start, end, verifier = begun
        after: int | None = start - 1
        while after is not None:
            after = await self._db.read(_batch_verifier(verifier, after, end))
        return verifier.finish()

    async def add_checkpoint(self, checkpoint: Checkpoint) -> bool:
        """Inserts ``checkpoint`` if it extends the latest one, in one ``BEGIN IMMEDIATE`` transaction."""

        def write(conn: sqlite3.Connection) -> bool:
            latest = conn.execute(
                "SELECT number, hash FROM audit_checkpoints ORDER BY number DESC LIMIT 1"
            ).fetchone()
            number, prev_hash = (0, GENESIS_HASH) if latest is None else (latest["number"], latest["hash"])
            if checkpoint.number != number + 1 or checkpoint.prev_hash != prev_hash:
                return False
            conn.execute(_INSERT_CHECKPOINT, tuple(checkpoint))
            return True

        return await self._db.write(write)

    async def latest_checkpoint(self, at_or_before: int | None = None) -> Checkpoint | None:
        """The checkpoint with the highest number (at a record up to ``at_or_before``, when given)."""
        where, params = ("", ()) if at_or_before is None else (" WHERE sequence <= ?", (at_or_before,))
        sql = f"{_SELECT_CHECKPOINT}{where} ORDER BY number DESC LIMIT 1"
        row = await self._db.read(lambda conn: conn.execute(sql, params).fetchone())
        return None if row is None else checkpoint_from_row(row)

    async def get_checkpoint(self, number: int) -> Checkpoint | None:
        """The checkpoint ``number``, or None."""
        if not 1 <= number <= MAX_SEQUENCE:
            return None
        row = await self._db.read(
            lambda conn: conn.execute(f"{_SELECT_CHECKPOINT} WHERE number = ?", (number,)).fetchone()
        )
        return None if row is None else checkpoint_from_row(row)

    async def checkpoints(
        self, *, after_number: int = 0, min_sequence: int = 0, limit: int = 1000
    ) -> builtins.list[Checkpoint]:
        """Checkpoints numbered above ``after_number`` at records from ``min_sequence`` on, by number."""
        sql = f"{_SELECT_CHECKPOINT} WHERE number > ? AND sequence >= ? ORDER BY number LIMIT ?"
        rows = await self._db.read(
            lambda conn: conn.execute(sql, (after_number, min_sequence, limit)).fetchall()
        )
        return [checkpoint_from_row(row) for row in rows]
