"""The embedded database's files are owner-only, its -wal and -shm files included, whatever the umask."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import weakref
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bhiv_core.storage.sqlite import SqliteDatabase
from tests.harness import umask

SCHEMA = ["CREATE TABLE notes (body TEXT NOT NULL)"]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def modes(folder: Path) -> dict[str, int]:
    return {p.name: mode(p) for p in folder.iterdir()}


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.fixture
def umask_022() -> Iterator[None]:
    with umask(0o022):
        yield


async def write_a_note(db: SqliteDatabase) -> None:
    await db.write(lambda conn: conn.execute("INSERT INTO notes VALUES ('secret')"))


async def test_a_new_database_and_its_wal_and_shm_files_are_0600(tmp_path: Path, umask_022: None) -> None:
    db = SqliteDatabase(tmp_path / "data" / "notes.db", SCHEMA)
    await db.open()
    try:
        await write_a_note(db)
        files = modes(tmp_path / "data")
    finally:
        await db.close()
    assert files == {"notes.db": 0o600, "notes.db-wal": 0o600, "notes.db-shm": 0o600}
    assert mode(tmp_path / "data") == 0o700


async def test_files_an_earlier_run_left_readable_become_0600(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "notes.db"
    first = SqliteDatabase(path, SCHEMA, file_mode=0o644)  # as before owner-only was the default
    await first.open()
    await write_a_note(first)
    # A process killed outright leaves its -wal and -shm files behind.
    leftovers = contents(tmp_path)
    await first.close()
    for name, data in leftovers.items():
        (tmp_path / name).write_bytes(data)
        os.chmod(tmp_path / name, 0o644)
    db = SqliteDatabase(path, SCHEMA)
    await db.open()
    try:
        files = modes(tmp_path)
        notes = await db.read(lambda conn: conn.execute("SELECT count(*) FROM notes").fetchone()[0])
    finally:
        await db.close()
    assert files == {"notes.db": 0o600, "notes.db-wal": 0o600, "notes.db-shm": 0o600}
    assert notes == 1


# ----------------------------------------------------------------------- the connection's thread


@pytest.fixture
async def notes(tmp_path: Path) -> AsyncIterator[SqliteDatabase]:
    db = SqliteDatabase(tmp_path / "notes.db", SCHEMA)
    await db.open()
    try:
        await db.write(lambda conn: conn.executemany("INSERT INTO notes VALUES (?)", [("a",), ("b",)]))
        yield db
    finally:
        await db.close()


async def test_a_returned_cursor_is_closed_on_the_database_thread(notes: SqliteDatabase) -> None:
    # A cursor freed on another thread resets its cached statement there, under the feet of the
    # database thread running the same SQL ("bad parameter or other API misuse").
    read = await notes.read(lambda conn: conn.execute("SELECT body FROM notes"))
    written = await notes.write(lambda conn: conn.execute("DELETE FROM notes WHERE body = 'a'"))
    for cursor in (read, written):
        with pytest.raises(sqlite3.ProgrammingError, match="closed cursor"):
            cursor.fetchall()
    assert written.rowcount == 1  # what a caller may still want from a write's cursor


async def test_cursors_held_by_a_failed_function_are_freed_on_the_database_thread(
    notes: SqliteDatabase,
) -> None:
    held: list[weakref.ref[sqlite3.Cursor]] = []

    def fail(conn: sqlite3.Connection) -> None:
        cursor = conn.execute("SELECT body FROM notes")
        held.append(weakref.ref(cursor))
        raise LookupError("after a cursor was opened")

    for call in (notes.read, notes.write):
        with pytest.raises(LookupError) as err:
            await call(fail)
        # The exception (and its traceback) is alive here; the cursor in its frame must not be.
        assert err.value.__traceback__ is not None
        assert held.pop()() is None


async def test_concurrent_writes_returning_cursors_never_misuse_the_connection(notes: SqliteDatabase) -> None:
    # Many writes of the same two statements in flight at once, each returning its cursor: the
    # pattern that failed one call in a few hundred before returned cursors were closed in-thread.
    async def one(n: int) -> None:
        await notes.write(lambda conn: conn.execute("UPDATE notes SET body = ? WHERE body = ?", (n, n)))
        await notes.write(lambda conn: conn.executemany("INSERT INTO notes VALUES (?)", [(f"n{n}",)]))

    for _ in range(10):
        await asyncio.gather(*(one(n) for n in range(200)))
    assert await notes.read(lambda conn: conn.execute("SELECT count(*) FROM notes").fetchone()[0]) == 2002
