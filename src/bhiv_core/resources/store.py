"""The storage contract of the resource kit, and the factory that picks a backend.

:class:`ResourceStore` is what services program against; :class:`SqliteResourceStore` (the
embedded default, one file per service under the data directory) and
:class:`MongoResourceStore` (deployments, selected by a ``mongodb://`` URL) implement it, and one
contract test suite (``tests/resources``) runs against both.

Every change that touches several records runs in :meth:`ResourceStore.run`: the function gets a
:class:`Transaction` and everything it writes commits together or not at all (SQLite:
``BEGIN IMMEDIATE`` on the writer connection, serialised across processes by SQLite's lock;
MongoDB: a multi-document transaction, retried on transient conflicts, so the function must be
safe to run again). Nothing else may happen inside: no calls to other services, no sleeping (on
SQLite the whole function runs on the writer's thread, and awaiting anything but the
transaction's operations raises :class:`~bhiv_core.resources.sqlite.ForeignAwait`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

from bhiv_core.resources.model import Collection, Filter, Group, Receipt, Record, Value

__all__ = ["ResourceStore", "Transaction", "make_resource_store"]

T = TypeVar("T")


class Transaction(Protocol):
    """The reads and writes of one atomic step."""

    async def get(self, collection: Collection, id: str) -> Record | None:
        """The record with this id, or None."""
        ...

    async def find(
        self, collection: Collection, filters: Sequence[Filter], *, limit: int = 1
    ) -> list[Record]:
        """Up to ``limit`` records matching every filter, in the collection's order."""
        ...

    async def count(self, collection: Collection, filters: Sequence[Filter]) -> int:
        """How many records match every filter."""
        ...

    async def insert(self, collection: Collection, record: Record) -> None:
        """Adds a record; raises :class:`UniqueViolation` on a clash of a unique key or the id."""
        ...

    async def replace(self, collection: Collection, record: Record, *, expected_etag: str) -> bool:
        """Overwrites the record with ``record.id`` when its stored etag is ``expected_etag``.

        Returns False (and changes nothing) when the record is gone or its etag differs; raises
        :class:`UniqueViolation` on a clash of a unique key.
        """
        ...

    async def delete(self, collection: Collection, id: str, *, expected_etag: str) -> bool:
        """Deletes the record when its etag is ``expected_etag``; False when gone or changed."""
        ...

    async def recall(self, scope: str, request_id: str) -> Receipt | None:
        """The receipt of an earlier request with this key, or None."""
        ...

    async def remember(self, scope: str, request_id: str, receipt: Receipt) -> None:
        """Stores a receipt; commits with the transaction's writes."""
        ...


class ResourceStore(Protocol):
    """Where a service keeps its resources."""

    async def open(self) -> None:
        """Connects, creating or migrating the schema (tables, indexes)."""
        ...

    async def close(self) -> None:
        """Disconnects."""
        ...

    async def ping(self) -> None:
        """Health check: raises when the store does not answer."""
        ...

    async def run(self, fn: Callable[[Transaction], Awaitable[T]]) -> T:
        """Runs ``fn`` in one transaction and returns its result; an exception rolls it back."""
        ...

    async def get(self, collection: Collection, id: str) -> Record | None:
        """The committed record with this id, or None."""
        ...

    async def find(
        self,
        collection: Collection,
        filters: Sequence[Filter],
        *,
        after: Sequence[Value] | None,
        limit: int,
    ) -> list[Record]:
        """Up to ``limit`` records matching every filter, in the collection's order.

        Args:
            collection: What to list.
            filters: Conditions, all of which a record meets.
            after: The order key (the order fields' values, then the id) of the last record
                of the previous page; the list continues strictly after it. None from the start.
            limit: The most records to return.

        """
        ...

    async def count(self, collection: Collection, filters: Sequence[Filter]) -> int:
        """How many committed records match every filter."""
        ...

    async def aggregate(
        self,
        collection: Collection,
        filters: Sequence[Filter],
        *,
        group_by: str | None = None,
        sums: Sequence[str] = (),
    ) -> list[Group]:
        """Counts and sums over the records matching the filters, computed by the store.

        Args:
            collection: What to aggregate.
            filters: Conditions, all of which a counted record meets.
            group_by: A field to group by; None for one group over everything (key None).
            sums: Numeric fields to sum in each group (an int field sums to an int).

        Returns:
            One group per distinct value of ``group_by`` among the matching records (groups
            without records are absent), in ascending key order.

        """
        ...

    async def prune_receipts(self, *, before: float) -> int:
        """Deletes receipts created before ``before``; returns how many."""
        ...


def make_resource_store(
    *,
    name: str,
    collections: Sequence[Collection],
    migrations: Sequence[str],
    data_dir: Path,
    url: str | None,
) -> ResourceStore:
    """The store a service's settings select.

    Args:
        name: The service (``crm``): the SQLite file ``<data_dir>/<name>.db``, the MongoDB
            database ``bhiv_<name>``.
        collections: What the service stores.
        migrations: The service's SQLite schema scripts (see :func:`~bhiv_core.resources.sqlite.schema`).
        data_dir: The data directory.
        url: A ``mongodb://`` URL, or None for the embedded SQLite file.

    """
    if url is not None:
        from bhiv_core.resources.mongo import MongoResourceStore
        from bhiv_core.storage.mongo import MongoDatabase

        return MongoResourceStore(MongoDatabase(url, f"bhiv_{name}"), collections)
    from bhiv_core.resources.sqlite import SqliteResourceStore

    return SqliteResourceStore(data_dir / f"{name}.db", collections, migrations)
