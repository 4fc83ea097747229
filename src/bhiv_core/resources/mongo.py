"""The resource kit on MongoDB (deployments), through PyMongo's async client.

One MongoDB collection per kit collection. A document is ``{_id, owner, etag, data, f_<field>…}``
— the same layout as the SQLite table — with a unique index per unique key, an index on the
list order and one per declared index, created on :meth:`MongoResourceStore.open`. Receipts live
in ``receipts`` (``_id`` = scope and request id) with a TTL index on their creation date.

Transactions are MongoDB multi-document transactions (a replica set is required; a single-node
one is enough), retried by the driver on transient conflicts, so a transaction function must be
safe to run again. Two concurrent inserts of the same unique key: one commits, the other gets a
duplicate-key error (:class:`UniqueViolation`); two conditional replaces of the same record: one
commits, the other sees a changed etag or a write conflict and runs again.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from bson import Binary
from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.errors import DuplicateKeyError

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
from bhiv_core.storage.mongo import MongoDatabase

__all__ = ["MongoResourceStore"]

T = TypeVar("T")

_OPS = {"<": "$lt", "<=": "$lte", ">": "$gt", ">=": "$gte"}


def _key(name: str) -> str:
    return {"id": "_id", "owner": "owner"}.get(name, f"f_{name}")


def _order(c: Collection) -> list[str]:
    return [_key(n) for n in (*c.order, "id")]


def _query(c: Collection, filters: Sequence[Filter]) -> dict[str, Any]:
    check_filters(c, filters)
    clauses: list[dict[str, Any]] = []
    for f in filters:
        key = _key(f.field)
        if isinstance(f, Eq):
            clauses.append({key: f.value})
        elif isinstance(f, In):
            clauses.append({key: {"$in": list(f.values)}})
        elif isinstance(f, Cmp):
            clauses.append({key: {_OPS[f.op]: f.value}})
        elif isinstance(f, FieldLe):
            clauses.append({"$expr": {"$lte": [f"${key}", f"${_key(f.other)}"]}})
        elif isinstance(f, Contains):
            clauses.append({key: {"$regex": re.escape(f.text)}})
        elif isinstance(f, HasItem):
            clauses.append({key: f.item})  # an array field matches any element equal to it
    return {"$and": clauses} if clauses else {}


def _after(c: Collection, after: Sequence[Value]) -> dict[str, Any]:
    """Records strictly after the order key ``after`` (before it for descending lists)."""
    keys = _order(c)
    op = "$lt" if c.descending else "$gt"
    alternatives = []
    for position, key in enumerate(keys):
        clause: dict[str, Any] = {keys[i]: after[i] for i in range(position)}
        clause[key] = {op: after[position]}
        alternatives.append(clause)
    return {"$or": alternatives}


def _document(c: Collection, record: Record) -> dict[str, Any]:
    defaults = c.defaults()
    unknown = set(record.fields) - set(defaults)
    if unknown:
        raise ValueError(f"{c.name} has no fields {sorted(unknown)}")
    doc: dict[str, Any] = {
        "_id": record.id,
        "owner": record.owner,
        "etag": record.etag,
        "data": Binary(record.data),
    }
    for f in c.fields:
        doc[f"f_{f.name}"] = record.fields.get(f.name, defaults[f.name])
    return doc


def _record(c: Collection, doc: dict[str, Any]) -> Record:
    fields: dict[str, Value] = {}
    for f in c.fields:
        value = doc.get(f"f_{f.name}")
        fields[f.name] = float(value) if f.kind == "real" and value is not None else value  # type: ignore[assignment]
    return Record(id=doc["_id"], owner=doc["owner"], etag=doc["etag"], data=bytes(doc["data"]), fields=fields)


def _violation(c: Collection, exc: DuplicateKeyError) -> UniqueViolation:
    pattern = (exc.details or {}).get("keyPattern") or {}
    fields = tuple("id" if k == "_id" else k.removeprefix("f_") for k in pattern) or ("id",)
    return UniqueViolation(c.name, fields)


class _MongoTransaction:
    def __init__(self, store: MongoResourceStore, session: AsyncClientSession):
        self._store = store
        self._session = session

    async def get(self, collection: Collection, id: str) -> Record | None:
        doc = await self._store.table(collection).find_one({"_id": id}, session=self._session)
        return None if doc is None else _record(collection, doc)

    async def find(
        self, collection: Collection, filters: Sequence[Filter], *, limit: int = 1
    ) -> list[Record]:
        return await self._store.find_in(collection, filters, None, limit, self._session)

    async def count(self, collection: Collection, filters: Sequence[Filter]) -> int:
        table = self._store.table(collection)
        return int(await table.count_documents(_query(collection, filters), session=self._session))

    async def insert(self, collection: Collection, record: Record) -> None:
        try:
            await self._store.table(collection).insert_one(
                _document(collection, record), session=self._session
            )
        except DuplicateKeyError as exc:
            raise _violation(collection, exc) from None

    async def replace(self, collection: Collection, record: Record, *, expected_etag: str) -> bool:
        try:
            result = await self._store.table(collection).replace_one(
                {"_id": record.id, "etag": expected_etag},
                _document(collection, record),
                session=self._session,
            )
        except DuplicateKeyError as exc:
            raise _violation(collection, exc) from None
        return bool(result.matched_count == 1)

    async def delete(self, collection: Collection, id: str, *, expected_etag: str) -> bool:
        result = await self._store.table(collection).delete_one(
            {"_id": id, "etag": expected_etag}, session=self._session
        )
        return bool(result.deleted_count == 1)

    async def recall(self, scope: str, request_id: str) -> Receipt | None:
        doc = await self._store.receipts.find_one(
            {"_id": {"scope": scope, "request_id": request_id}}, session=self._session
        )
        if doc is None:
            return None
        return Receipt(bytes(doc["request_hash"]), bytes(doc["response"]), float(doc["create_time"]))

    async def remember(self, scope: str, request_id: str, receipt: Receipt) -> None:
        await self._store.receipts.insert_one(
            {
                "_id": {"scope": scope, "request_id": request_id},
                "request_hash": Binary(receipt.request_hash),
                "response": Binary(receipt.response),
                "create_time": receipt.create_time,
                "create_at": datetime.fromtimestamp(receipt.create_time, UTC),
            },
            session=self._session,
        )


class MongoResourceStore:
    """The resource kit's store in one MongoDB database.

    Args:
        database: The service's database.
        collections: The collections it holds.
        receipt_ttl_seconds: How long MongoDB keeps receipts (its TTL monitor deletes them).
    """

    def __init__(
        self,
        database: MongoDatabase,
        collections: Sequence[Collection],
        *,
        receipt_ttl_seconds: float = 86400.0,
    ):
        self.database = database
        self._collections = {c.name: c for c in collections}
        self._receipt_ttl = int(receipt_ttl_seconds)
        self.receipts = database.db["receipts"]

    def table(self, c: Collection) -> Any:
        """The MongoDB collection of a kit collection."""
        if c.name not in self._collections:
            raise ValueError(f"{c.name} is not a collection of this store")
        return self.database.db[c.name]

    async def open(self) -> None:
        """Creates the indexes (idempotent)."""
        for c in self._collections.values():
            direction = DESCENDING if c.descending else ASCENDING
            order = [(k, direction) for k in _order(c)]
            table = self.database.db[c.name]
            await table.create_index(order, name="by_order")
            for number, unique in enumerate(c.unique):
                await table.create_index(
                    [(_key(n), ASCENDING) for n in unique], unique=True, name=f"unique_{number}"
                )
            for number, index in enumerate(c.indexes):
                keys = [(_key(n), ASCENDING) for n in index]
                keys += [k for k in order if k[0] not in {key for key, _ in keys}]
                await table.create_index(keys, name=f"by_{number}")
        await self.receipts.create_index("create_at", expireAfterSeconds=self._receipt_ttl, name="expiry")

    async def close(self) -> None:
        """Closes the client."""
        await self.database.close()

    async def ping(self) -> None:
        """Health check."""
        await self.database.ping()

    async def run(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """Runs ``fn(transaction)`` in a multi-document transaction (retried when transient)."""

        async def attempt(session: AsyncClientSession) -> T:
            return await fn(_MongoTransaction(self, session))

        async with self.database.client.start_session() as session:
            return await session.with_transaction(attempt)

    async def find_in(
        self,
        c: Collection,
        filters: Sequence[Filter],
        after: Sequence[Value] | None,
        limit: int,
        session: AsyncClientSession | None = None,
    ) -> list[Record]:
        """A page in the collection's order (inside ``session``'s transaction when given)."""
        query = _query(c, filters)
        if after is not None:
            query = {"$and": [query, _after(c, after)]} if query else _after(c, after)
        direction = DESCENDING if c.descending else ASCENDING
        cursor = (
            self.table(c).find(query, session=session).sort([(k, direction) for k in _order(c)]).limit(limit)
        )
        return [_record(c, doc) async for doc in cursor]

    async def get(self, collection: Collection, id: str) -> Record | None:
        """The committed record with this id."""
        doc = await self.table(collection).find_one({"_id": id})
        return None if doc is None else _record(collection, doc)

    async def find(
        self, collection: Collection, filters: Sequence[Filter], *, after: Sequence[Value] | None, limit: int
    ) -> list[Record]:
        """A page of records (see :meth:`ResourceStore.find`)."""
        return await self.find_in(collection, filters, after, max(0, limit)) if limit > 0 else []

    async def count(self, collection: Collection, filters: Sequence[Filter]) -> int:
        """How many records match."""
        return int(await self.table(collection).count_documents(_query(collection, filters)))

    async def aggregate(
        self,
        collection: Collection,
        filters: Sequence[Filter],
        *,
        group_by: str | None = None,
        sums: Sequence[str] = (),
    ) -> list[Group]:
        """Counts and sums computed by MongoDB's aggregation pipeline."""
        group: dict[str, Any] = {"_id": f"${_key(group_by)}" if group_by else None, "count": {"$sum": 1}}
        for number, name in enumerate(sums):
            group[f"s{number}"] = {"$sum": f"${_key(name)}"}
        pipeline = [{"$match": _query(collection, filters)}, {"$group": group}, {"$sort": {"_id": 1}}]
        cursor = await self.table(collection).aggregate(pipeline)
        groups = []
        async for doc in cursor:
            values = tuple(
                float(doc[f"s{n}"]) if collection.kind(name) == "real" else int(doc[f"s{n}"])
                for n, name in enumerate(sums)
            )
            groups.append(Group(doc["_id"], int(doc["count"]), values))
        return groups

    async def prune_receipts(self, *, before: float) -> int:
        """Deletes receipts older than ``before`` (the TTL index does it too, eventually)."""
        result = await self.receipts.delete_many({"create_time": {"$lt": before}})
        return int(result.deleted_count)
