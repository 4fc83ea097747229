"""The embedded database's files are owner-only, its -wal and -shm files included, whatever the umask."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
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
