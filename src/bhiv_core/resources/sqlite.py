"""The resource kit on SQLite: the embedded default, one file per service.

Each collection is a table: ``id``, ``owner``, ``etag``, ``data`` (the serialized message) and one
column ``f_<field>`` per declared field (a list field is a JSON array), with a unique index per
unique key, an index on the list order and one per declared index (each followed by the order, so
a filtered page is read in index order and stops after ``limit`` rows). Receipts of idempotent
requests live in ``receipts``.

Two connections, each on its own thread: the writer runs transactions (``BEGIN IMMEDIATE``,
which also serialises writers of other processes on the same file), the reader serves plain reads
from the last committed state, so a read never sees another coroutine's uncommitted transaction
and never waits for one. Commits are durable when :meth:`SqliteResourceStore.run` returns
(``synchronous=FULL``).

SQL here is composed only from identifiers of the collections' declarations (checked to be
lower_snake names by :class:`~bhiv_core.resources.model.Collection`), never from request
data, which is always a bound parameter: ruff's S608 is a false positive in this file.
"""

# ruff: noqa: S608

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

from bhiv_core.resources.model import (
    Cmp,
    Collection,
    Contains,
    Eq,
    FieldLe,
    Filter,
    Group,
    HasItem,
    In,
    Receipt,
    Record,
    UniqueViolation,
    Value,
    check_filters,
)
from bhiv_core.storage.sqlite import SqliteDatabase

__all__ = ["ForeignAwait", "SqliteResourceStore", "schema"]

T = TypeVar("T")

_SQL_TYPE = {"text": "TEXT", "int": "INTEGER", "real": "REAL", "bool": "INTEGER", "list": "TEXT"}
_UNIQUE_FAILED = re.compile(r"UNIQUE constraint failed: (.*)")

RECEIPTS = """
CREATE TABLE receipts (
    scope TEXT NOT NULL,
    request_id TEXT NOT NULL,
    request_hash BLOB NOT NULL,
    response BLOB NOT NULL,
    create_time REAL NOT NULL,
    PRIMARY KEY (scope, request_id)
);
CREATE INDEX receipts_by_time ON receipts (create_time)
"""


def _column(name: str) -> str:
    return name if name in ("id", "owner") else f"f_{name}"


def _order_columns(c: Collection) -> list[str]:
    return [_column(n) for n in (*c.order, "id")]


def schema(collections: Sequence[Collection]) -> str:
    """The SQL creating the tables and indexes of ``collections`` and the receipts table.

    A service's first migration is ``schema(its collections)``; later migrations are scripts of
    their own (``ALTER TABLE``, ``CREATE INDEX``), so an existing database moves forward.
    """
    parts: list[str] = []
    for c in collections:
        columns = [
            "id TEXT PRIMARY KEY",
            "owner TEXT NOT NULL DEFAULT ''",
            "etag TEXT NOT NULL",
            "data BLOB NOT NULL",
        ]
        columns += [f"f_{f.name} {_SQL_TYPE[f.kind]} NOT NULL" for f in c.fields]
        parts.append(f"CREATE TABLE {c.name} ({', '.join(columns)})")
        order = _order_columns(c)
        parts.append(f"CREATE INDEX {c.name}_by_order ON {c.name} ({', '.join(order)})")
        for number, unique in enumerate(c.unique):
            cols = ", ".join(_column(n) for n in unique)
            parts.append(f"CREATE UNIQUE INDEX {c.name}_unique_{number} ON {c.name} ({cols})")
        for number, index in enumerate(c.indexes):
            names = [_column(n) for n in index]
            names += [col for col in order if col not in names]
            parts.append(f"CREATE INDEX {c.name}_by_{number} ON {c.name} ({', '.join(names)})")
    parts.append(RECEIPTS)
    return ";\n".join(parts)


def _param(kind: str, value: Value) -> object:
    if kind == "list":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"a list field takes a list of strings, not {value!r}")
        return json.dumps(value, ensure_ascii=False)
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"a bool field takes a bool, not {value!r}")
        return int(value)
    if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"an int field takes an int, not {value!r}")
    if kind == "real" and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ValueError(f"a real field takes a number, not {value!r}")
    if kind == "text" and not isinstance(value, str):
        raise ValueError(f"a text field takes a str, not {value!r}")
    return value


def _scalar(value: object) -> object:
    return int(value) if isinstance(value, bool) else value


def _where(c: Collection, filters: Sequence[Filter]) -> tuple[str, list[object]]:
    check_filters(c, filters)
    clauses: list[str] = []
    params: list[object] = []
    for f in filters:
        col = _column(f.field)
        if isinstance(f, Eq):
            clauses.append(f"{col} = ?")
            params.append(_scalar(f.value))
        elif isinstance(f, In):
            if not f.values:
                clauses.append("0")
            else:
                clauses.append(f"{col} IN ({', '.join('?' * len(f.values))})")
                params.extend(_scalar(v) for v in f.values)
        elif isinstance(f, Cmp):
            clauses.append(f"{col} {f.op} ?")
            params.append(f.value)
        elif isinstance(f, FieldLe):
            clauses.append(f"{col} <= {_column(f.other)}")
        elif isinstance(f, Contains):
            clauses.append(f"instr({col}, ?) > 0")
            params.append(f.text)
        elif isinstance(f, HasItem):
            clauses.append(f"EXISTS (SELECT 1 FROM json_each({col}) WHERE json_each.value = ?)")
            params.append(f.item)
    return (" AND ".join(clauses) or "1"), params


class _Tables:
    """The SQL of one store's collections, shared by its transactions and its reads."""

    def __init__(self, collections: Sequence[Collection]):
        self.collections = {c.name: c for c in collections}

    def check(self, c: Collection) -> None:
        if self.collections.get(c.name) is not c and self.collections.get(c.name) != c:
            raise ValueError(f"{c.name} is not a collection of this store")

    def select(self, c: Collection) -> str:
        cols = ", ".join(["id", "owner", "etag", "data", *(f"f_{f.name}" for f in c.fields)])
        return f"SELECT {cols} FROM {c.name}"

    def record(self, c: Collection, row: sqlite3.Row) -> Record:
        fields: dict[str, Value] = {}
        for f in c.fields:
            value = row[f"f_{f.name}"]
            if f.kind == "list":
                value = json.loads(value)
            elif f.kind == "bool":
                value = bool(value)
            elif f.kind == "real":
                value = float(value)
            fields[f.name] = value
        return Record(
            id=row["id"], owner=row["owner"], etag=row["etag"], data=bytes(row["data"]), fields=fields
        )

    def values(self, c: Collection, record: Record) -> list[object]:
        defaults = c.defaults()
        unknown = set(record.fields) - set(defaults)
        if unknown:
            raise ValueError(f"{c.name} has no fields {sorted(unknown)}")
        return [_param(f.kind, record.fields.get(f.name, defaults[f.name])) for f in c.fields]

    def find(
        self,
        conn: sqlite3.Connection,
        c: Collection,
        filters: Sequence[Filter],
        after: Sequence[Value] | None,
        limit: int,
    ) -> list[Record]:
        self.check(c)
        where, params = _where(c, filters)
        order = _order_columns(c)
        direction = "DESC" if c.descending else "ASC"
        if after is not None:
            if len(after) != len(order):
                raise ValueError(f"{c.name}: a page key has {len(order)} values")
            where += (
                f" AND ({', '.join(order)}) {'<' if c.descending else '>'} ({', '.join('?' * len(order))})"
            )
            params += [_scalar(v) for v in after]
        sql = (
            f"{self.select(c)} WHERE {where} ORDER BY {', '.join(f'{o} {direction}' for o in order)} LIMIT ?"
        )
        return [self.record(c, row) for row in conn.execute(sql, [*params, max(0, limit)]).fetchall()]

    def count(self, conn: sqlite3.Connection, c: Collection, filters: Sequence[Filter]) -> int:
        self.check(c)
        where, params = _where(c, filters)
        return int(conn.execute(f"SELECT COUNT(*) FROM {c.name} WHERE {where}", params).fetchone()[0])

    def unique_violation(self, c: Collection, exc: sqlite3.IntegrityError) -> UniqueViolation | None:
        match = _UNIQUE_FAILED.match(str(exc))
        if match is None:
            return None
        columns = tuple(part.strip().split(".", 1)[-1] for part in match.group(1).split(","))
        return UniqueViolation(c.name, tuple(col.removeprefix("f_") for col in columns))


class _SqliteTransaction:
    """The operations of one transaction, run synchronously on the writer's thread.

    The methods are coroutines only to share :class:`~bhiv_core.resources.store.Transaction`
    with MongoDB; here none of them suspends, so :func:`_drive` runs the whole transaction
    function in one call on the writer's thread.
    """

    def __init__(self, conn: sqlite3.Connection, tables: _Tables):
        self._conn = conn
        self._tables = tables

    async def get(self, collection: Collection, id: str) -> Record | None:
        found = self._tables.find(self._conn, collection, [Eq("id", id)], None, 1)
        return found[0] if found else None

    async def find(
        self, collection: Collection, filters: Sequence[Filter], *, limit: int = 1
    ) -> list[Record]:
        return self._tables.find(self._conn, collection, filters, None, limit)

    async def count(self, collection: Collection, filters: Sequence[Filter]) -> int:
        return self._tables.count(self._conn, collection, filters)

    def _write(self, collection: Collection, sql: str, values: Sequence[object]) -> int:
        try:
            cursor = self._conn.execute(sql, values)
        except sqlite3.IntegrityError as exc:
            violation = self._tables.unique_violation(collection, exc)
            if violation is None:
                raise
            raise violation from None
        changed = cursor.rowcount
        cursor.close()
        return changed

    async def insert(self, collection: Collection, record: Record) -> None:
        t = self._tables
        t.check(collection)
        values = [record.id, record.owner, record.etag, record.data, *t.values(collection, record)]
        self._write(
            collection, f"INSERT INTO {collection.name} VALUES ({', '.join('?' * len(values))})", values
        )

    async def replace(self, collection: Collection, record: Record, *, expected_etag: str) -> bool:
        t = self._tables
        t.check(collection)
        names = ["owner", "etag", "data", *(f"f_{f.name}" for f in collection.fields)]
        values = [record.owner, record.etag, record.data, *t.values(collection, record)]
        sql = f"UPDATE {collection.name} SET {', '.join(f'{n} = ?' for n in names)} WHERE id = ? AND etag = ?"
        return self._write(collection, sql, [*values, record.id, expected_etag]) == 1

    async def delete(self, collection: Collection, id: str, *, expected_etag: str) -> bool:
        self._tables.check(collection)
        sql = f"DELETE FROM {collection.name} WHERE id = ? AND etag = ?"
        return self._write(collection, sql, (id, expected_etag)) == 1

    async def recall(self, scope: str, request_id: str) -> Receipt | None:
        cursor = self._conn.execute(
            "SELECT request_hash, response, create_time FROM receipts WHERE scope = ? AND request_id = ?",
            (scope, request_id),
        )
        row = cursor.fetchone()
        cursor.close()
        return None if row is None else Receipt(bytes(row[0]), bytes(row[1]), float(row[2]))

    async def remember(self, scope: str, request_id: str, receipt: Receipt) -> None:
        self._conn.execute(
            "INSERT INTO receipts VALUES (?, ?, ?, ?, ?)",
            (scope, request_id, receipt.request_hash, receipt.response, receipt.create_time),
        ).close()


class ForeignAwait(RuntimeError):
    """A transaction function awaited something other than its transaction's operations."""


def _drive(coroutine: Coroutine[Any, Any, T]) -> T:
    """Runs a transaction function to its end on this thread, without an event loop.

    The transaction's operations never suspend, and ``asyncio.sleep(0)`` only yields ``None``;
    anything that hands a future to a loop (a call to another service, a lock, a real sleep) has
    no place inside a transaction and is refused, which rolls the transaction back.
    """
    try:
        while True:
            if coroutine.send(None) is not None:
                raise ForeignAwait(
                    "a transaction function may await only its transaction's operations "
                    "(call other services and wait before or after the transaction)"
                )
    except StopIteration as done:
        return cast(T, done.value)
    except RuntimeError as exc:
        if "no running event loop" in str(exc):  # asyncio.sleep, a lock, a channel: the same misuse
            raise ForeignAwait(f"a transaction function needs the event loop: {exc}") from exc
        raise
    finally:
        coroutine.close()


class SqliteResourceStore:
    """The resource kit's store in one SQLite file.

    Args:
        path: The database file.
        collections: The collections it holds.
        migrations: The schema scripts (the first is usually :func:`schema` of the collections).
    """

    def __init__(self, path: Path, collections: Sequence[Collection], migrations: Sequence[str]):
        self.path = path
        self._tables = _Tables(collections)
        self._writer = SqliteDatabase(path, migrations)
        self._reader = SqliteDatabase(path, migrations)

    async def open(self) -> None:
        """Opens the writer (applying pending migrations), then the reader."""
        await self._writer.open()
        await self._reader.open()

    async def close(self) -> None:
        """Closes both connections."""
        await self._reader.close()
        await self._writer.close()

    async def ping(self) -> None:
        """Health check: the reader answers."""
        await self._reader.ping()

    async def run(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """Runs ``fn(transaction)`` in one ``BEGIN IMMEDIATE`` … ``COMMIT`` on the writer's thread.

        The whole function runs in a single hop to the writer's thread (the transaction's
        operations are plain SQLite calls there), so a transaction of ten reads and writes costs
        one thread hand-off, not twenty; the thread serialises the transactions of this process
        and SQLite's lock those of other processes. Durable on return.
        """
        tables = self._tables
        return await self._writer.write(
            lambda conn: _drive(cast(Coroutine[Any, Any, T], fn(_SqliteTransaction(conn, tables))))
        )

    async def get(self, collection: Collection, id: str) -> Record | None:
        """The committed record with this id."""
        found = await self.find(collection, [Eq("id", id)], after=None, limit=1)
        return found[0] if found else None

    async def find(
        self, collection: Collection, filters: Sequence[Filter], *, after: Sequence[Value] | None, limit: int
    ) -> list[Record]:
        """A page of committed records (see :meth:`ResourceStore.list`)."""
        return await self._reader.read(
            lambda conn: self._tables.find(conn, collection, filters, after, limit)
        )

    async def count(self, collection: Collection, filters: Sequence[Filter]) -> int:
        """How many committed records match."""
        return await self._reader.read(lambda conn: self._tables.count(conn, collection, filters))

    async def aggregate(
        self,
        collection: Collection,
        filters: Sequence[Filter],
        *,
        group_by: str | None = None,
        sums: Sequence[str] = (),
    ) -> list[Group]:
        """Counts and sums computed by SQLite (see :meth:`ResourceStore.aggregate`)."""
        self._tables.check(collection)
        where, params = _where(collection, filters)
        for name in (*sums, *([group_by] if group_by else [])):
            if collection.kind(name) == "list":
                raise ValueError(f"{collection.name}: cannot group by or sum the list field {name!r}")
        totals = [f"{'SUM' if collection.kind(n) == 'int' else 'TOTAL'}({_column(n)})" for n in sums]
        key = _column(group_by) if group_by else "NULL"
        sql = f"SELECT {key}, COUNT(*), {', '.join([*totals, '0'])} FROM {collection.name} WHERE {where}"
        if group_by:
            sql += f" GROUP BY {key} ORDER BY {key}"
        kind = collection.kind(group_by) if group_by else None

        def aggregate(conn: sqlite3.Connection) -> list[Group]:
            groups = []
            for row in conn.execute(sql, params).fetchall():
                if row[1] == 0:
                    continue
                key_value = bool(row[0]) if kind == "bool" else row[0]
                groups.append(Group(key_value, int(row[1]), tuple(v or 0 for v in row[2 : 2 + len(sums)])))
            return groups

        return await self._reader.read(aggregate)

    async def prune_receipts(self, *, before: float) -> int:
        """Deletes receipts older than ``before``."""

        def prune(conn: sqlite3.Connection) -> int:
            cursor = conn.execute("DELETE FROM receipts WHERE create_time < ?", (before,))
            deleted = cursor.rowcount
            cursor.close()
            return deleted

        return await self._writer.write(prune)
