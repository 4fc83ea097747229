"""An embedded SQLite database: WAL, durable commits, versioned migrations, one writer thread.

All access goes through one dedicated thread per database, so the ``sqlite3`` connection is never
shared across threads and the event loop never blocks on disk. Nothing of the connection leaves
that thread either: a cursor a function returns is closed there, and the frames of an exception
are cleared there, so no cursor is ever freed (which resets its statement) on another thread.
Writes run inside ``BEGIN IMMEDIATE`` … ``COMMIT`` and are durable when
:meth:`SqliteDatabase.write` returns (``synchronous=FULL``), or batched by the caller for records
that need not be.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import stat
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from bhiv_core.runtime.files import PRIVATE_FILE_MODE, private_dir

__all__ = ["SqliteDatabase"]

T = TypeVar("T")


class SqliteDatabase:
    """One SQLite file with its schema migrations.

    Args:
        path: The database file; its folder is created.
        migrations: SQL scripts; script ``i`` moves the schema from version ``i`` to ``i + 1``
            (``PRAGMA user_version``). Applied in order on :meth:`open`, each in a transaction.
        busy_timeout_ms: How long a writer waits for another process's lock.
        file_mode: The permissions of the file, set when it is created or opened (SQLite creates
            its -wal and -shm files with the same); owner-only by default, whatever the umask.
    """

    def __init__(
        self,
        path: Path,
        migrations: Sequence[str],
        *,
        busy_timeout_ms: int = 10_000,
        file_mode: int = PRIVATE_FILE_MODE,
    ):
        self.path = path
        self._migrations = tuple(migrations)
        self._busy_timeout_ms = busy_timeout_ms
        self._file_mode = file_mode
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    def _open(self) -> None:
        private_dir(self.path.parent)
        # SQLite creates the -wal and -shm files with the mode of the database file, so the
        # database gets its mode before SQLite opens it; files an earlier run left get it too.
        os.close(os.open(self.path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, self._file_mode))
        for path in (self.path, _beside(self.path, "-wal"), _beside(self.path, "-shm")):
            with contextlib.suppress(FileNotFoundError):
                if stat.S_IMODE(path.stat().st_mode) != self._file_mode:
                    os.chmod(path, self._file_mode)  # the umask took bits from the new file
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > len(self._migrations):
                raise RuntimeError(
                    f"{self.path} has schema version {version}, newer than this code's "
                    f"{len(self._migrations)}: refusing to run an older release against it"
                )
            for number in range(version, len(self._migrations)):
                for statement in _statements(self._migrations[number]):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={number + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            conn.close()
            raise
        self._conn = conn

    async def open(self) -> None:
        """Opens the file, enables WAL and applies pending migrations."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sqlite-{self.path.stem}")
        await asyncio.get_running_loop().run_in_executor(self._executor, self._open)

    async def close(self) -> None:
        """Closes the connection and its thread."""
        if self._executor is None:
            return
        conn = self._conn
        if conn is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, conn.close)
        self._executor.shutdown(wait=True)
        self._executor, self._conn = None, None

    def _run(self, fn: Callable[[sqlite3.Connection], T], transaction: bool) -> T:
        conn = self._conn
        if conn is None:
            raise RuntimeError(f"{self.path} is not open")
        try:
            if not transaction:
                return _on_this_thread(fn, conn)
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = _on_this_thread(fn, conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result
        except BaseException as exc:
            # The traceback travels to the event loop's thread and its frames hold fn's locals,
            # cursors among them: a cursor freed there would reset its statement off this thread.
            traceback.clear_frames(exc.__traceback__)
            raise

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Runs ``fn(connection)`` on the database thread and returns its result."""
        if self._executor is None:
            raise RuntimeError(f"{self.path} is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._run, fn, False)

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Runs ``fn(connection)`` in one transaction; durable on disk when this returns.

        An exception inside ``fn`` rolls the whole transaction back, so nothing is half-written.
        """
        if self._executor is None:
            raise RuntimeError(f"{self.path} is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._run, fn, True)

    async def ping(self) -> None:
        """Health check: the database answers a query."""
        await self.read(lambda conn: conn.execute("SELECT 1").fetchone())


def _on_this_thread(fn: Callable[[sqlite3.Connection], T], conn: sqlite3.Connection) -> T:
    """``fn(conn)``, with a cursor it returns closed here, on the database thread.

    A ``sqlite3.Cursor`` resets its prepared statement when it is closed or freed, and the
    connection caches statements by SQL text: a cursor handed to the event loop's thread and
    freed there resets a statement the database thread may be running at that moment for the
    same SQL, which fails with ``InterfaceError: bad parameter or other API misuse`` (found
    under concurrent logouts). Closed here, the cursor touches nothing later; ``rowcount`` and
    ``lastrowid`` still read.
    """
    result = fn(conn)
    if isinstance(result, sqlite3.Cursor):
        result.close()
    return result


def _beside(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]
