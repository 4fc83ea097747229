"""The audit chain in MongoDB (a replica set, for transactions): records plus a head document."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.errors import DuplicateKeyError
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

from bhiv_core.audit.checkpoint import Checkpoint
from bhiv_core.audit.record import GENESIS_HASH, AuditEntry, AuditRecord, VerifyResult, seal_batch, to_micros
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
from bhiv_core.storage.mongo import MongoDatabase
from bhiv_core.storage.pagination import page_size_of

__all__ = ["MongoAuditStore"]

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
        self._checkpoints = database.db["audit_checkpoints"]
        self._durable = WriteConcern("majority", j=True)

    async def open(self) -> None:
        """Creates the indexes (sequence unique) and the head document when missing."""
        await self._records.create_index([("sequence", ASCENDING)], unique=True, name="sequence_unique")
        for field in ("principal", "method", "resource", "outcome_code"):
            await self._records.create_index(
                [(field, ASCENDING), ("sequence", ASCENDING)], name=f"by_{field}"
            )
        await self._records.create_index([("time_us", ASCENDING)], name="by_time")
        # The number is the _id, so two writers cannot store the same one.
        await self._checkpoints.create_index([("sequence", ASCENDING)], name="by_sequence")
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
        self, query: AuditFilter, page_size: int = 0, page_token: str = "", *, max_bytes: int = PAGE_BYTES
    ) -> tuple[builtins.list[AuditRecord], str]:
        """Returns one page of records matching ``query``, by ascending sequence, within ``max_bytes``."""
        size = page_size_of(page_size)
        after = decode_token(page_token, query)
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
        page = Page(size, max_bytes, query)
        try:
            async for doc in cursor:
                if not page.add(record_from_row(doc)):
                    break
        finally:
            await cursor.close()
        return page.result()

    async def get(self, sequence: int) -> AuditRecord | None:
        """Returns the record at ``sequence``, or None."""
        if not 1 <= sequence <= MAX_SEQUENCE:
            return None
        doc = await self._records.find_one({"sequence": sequence}, {"_id": False})
        return None if doc is None else record_from_row(doc)

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

    async def verify(
        self,
        start_seq: int | None = None,
        end_seq: int | None = None,
        *,
        anchors: Mapping[int, str] | None = None,
    ) -> VerifyResult:
        """Verifies the range in one cursor, ordered by sequence."""
        begun = await begin_verify(await self._head(), start_seq, end_seq, self._hash_at, anchors)
        if isinstance(begun, VerifyResult):
            return begun
        start, end, verifier = begun
        cursor = (
            self._records.find({"sequence": {"$gte": start, "$lte": end}}, {"_id": False})
            .sort("sequence", ASCENDING)
            .batch_size(VERIFY_BATCH)
        )
        batch: builtins.list[dict[str, Any]] = []
        try:
            async for doc in cursor:
                batch.append(doc)
                if len(batch) >= VERIFY_BATCH:
                    # Hashing off the event loop, like the SQLite store.
                    if not await asyncio.to_thread(verify_rows, verifier, batch):
                        break
                    batch = []
            else:
                await asyncio.to_thread(verify_rows, verifier, batch)
        finally:
            await cursor.close()
        return verifier.finish()

    async def add_checkpoint(self, checkpoint: Checkpoint) -> bool:
        """Inserts ``checkpoint`` if it extends the latest one (its number is the ``_id``)."""
        latest = await self.latest_checkpoint()
        number, prev_hash = (0, GENESIS_HASH) if latest is None else (latest.number, latest.hash)
        if checkpoint.number != number + 1 or checkpoint.prev_hash != prev_hash:
            return False
        try:
            # A writer that read the same latest checkpoint inserts the same _id: one of the two fails.
            await self._checkpoints.with_options(write_concern=self._durable).insert_one(
                {"_id": checkpoint.number, **checkpoint._asdict()}
            )
        except DuplicateKeyError:
            return False
        return True

    async def latest_checkpoint(self, at_or_before: int | None = None) -> Checkpoint | None:
        """The checkpoint with the highest number (at a record up to ``at_or_before``, when given)."""
        selector: dict[str, Any] = {} if at_or_before is None else {"sequence": {"$lte": at_or_before}}
        doc = await self._checkpoints.find_one(selector, {"_id": False}, sort=[("_id", DESCENDING)])
        return None if doc is None else checkpoint_from_row(doc)

    async def get_checkpoint(self, number: int) -> Checkpoint | None:
        """The checkpoint ``number``, or None."""
        if not 1 <= number <= MAX_SEQUENCE:
            return None
        doc = await self._checkpoints.find_one({"_id": number}, {"_id": False})
        return None if doc is None else checkpoint_from_row(doc)

    async def checkpoints(
        self, *, after_number: int = 0, min_sequence: int = 0, limit: int = 1000
    ) -> builtins.list[Checkpoint]:
        """Checkpoints numbered above ``after_number`` at records from ``min_sequence`` on, by number."""
        cursor = (
            self._checkpoints.find(
                {"_id": {"$gt": after_number}, "sequence": {"$gte": min_sequence}}, {"_id": False}
            )
            .sort("_id", ASCENDING)
            .limit(limit)
        )
        return [checkpoint_from_row(doc) async for doc in cursor]


def _document(record: AuditRecord) -> dict[str, Any]:
    return record._asdict()
