"""The passage index on MongoDB (deployments): a ``$text`` index, vectors stored as binary.

Collections of the service's database (``bhiv_orchestration`` by ``BHIV_ORCHESTRATION_STORE_URL``):

- ``knowledge_passages``: one document per passage, ``_id`` its stable id (``documents/{id}#{n}``),
  with ``document``, ``seq``, ``title``, ``section``, ``span_start``, ``span_end``, ``tags`` (an
  array), ``text`` and, once embedded, ``vector`` (the float32 unit vector as BSON binary). Indexes:
  a **text index** over title, section and text with the section weighted above the rest (weights
  1, 2, 1, as the SQLite backend's ``bm25()`` weights), English stemming and stop words; a unique
  (document, seq) index; a multikey index on tags.
- ``knowledge_meta``: markers (``_id`` the key, ``value``) and the change counter ``generation``.

Lexical ranking is MongoDB's ``textScore``, not BM25: the query's words (the same at most 64 as
the SQLite backend's, none of ``$text``'s phrase or negation syntax can get through) are ORed,
and a passage scores the sum over matched terms and fields of the field's weight times a
term-frequency factor damped by the field's length. There is **no inverse document frequency**:
a common word counts as much as a rare one, which BM25 discounts. Rankings therefore differ from
the SQLite backend on the same corpus (hybrid fusion, which only uses ranks, narrows the gap).
For BM25 at scale, Atlas Search (``$search``, Lucene) is the deployment option, documented in the
README; it is not implemented here.

The dense half is the shared :class:`~bhiv_core.knowledge.index.base.HybridIndex`: every vector is
loaded into memory when ``generation`` moved, scanned exactly and fused by reciprocal rank.
``add`` and ``remove`` are multi-document transactions (a replica set, as the resource kit needs).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from bson import Binary
from pymongo import ASCENDING, TEXT, IndexModel, UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection

from bhiv_core.knowledge.chunking import Chunk
from bhiv_core.knowledge.dense import Embedder
from bhiv_core.knowledge.index.base import HybridIndex, Row, embedded_text, relevance_score
from bhiv_core.storage.mongo import MongoDatabase

__all__ = ["PASSAGE_INDEXES", "MongoKnowledgeIndex", "text_query"]

PASSAGE_INDEXES = (
    IndexModel(
        [("title", TEXT), ("section", TEXT), ("text", TEXT)],
        name="passages_text",
        weights={"title": 1, "section": 2, "text": 1},
        default_language="english",
        # Documents carry no language field; a field named like the default ("language") must
        # never switch a passage's stemming.
        language_override="text_language_never_set",
    ),
    IndexModel([("document", ASCENDING), ("seq", ASCENDING)], name="by_document", unique=True),
    IndexModel([("tags", ASCENDING)], name="by_tags"),
)
"""The indexes of ``knowledge_passages``, created on open."""

_FIELDS = ("document", "seq", "title", "section", "span_start", "span_end", "text")
_GENERATION = "generation"


def text_query(terms: Sequence[str], tags: Sequence[str]) -> dict[str, Any]:
    """The ``find`` filter for passages matching any of ``terms`` and carrying every one of ``tags``.

    ``terms`` are words (:func:`~bhiv_core.knowledge.index.base.query_terms`): joined by spaces,
    ``$text`` ORs them; no quote or leading minus reaches it, so no phrase or negation.
    """
    query: dict[str, Any] = {"$text": {"$search": " ".join(terms), "$caseSensitive": False}}
    if tags:
        query["tags"] = {"$all": list(tags)}
    return query


def _row(doc: dict[str, Any]) -> Row[str]:
    return Row(
        str(doc["_id"]),
        doc["document"],
        int(doc["seq"]),
        doc["title"],
        doc["section"],
        int(doc["span_start"]),
        int(doc["span_end"]),
        doc["text"],
    )


class MongoKnowledgeIndex(HybridIndex[str]):
    """The passage index in MongoDB, with dense vectors when given an embedder.

    Args:
        database: The service's database (the client is closed with the index).
        embedder: Dense embeddings for hybrid search; None: ``textScore`` ranking only.

    """

    def __init__(self, database: MongoDatabase, embedder: Embedder | None = None):
        super().__init__(embedder)
        self.database = database
        self.passages: AsyncCollection[dict[str, Any]] = database.db["knowledge_passages"]
        self.meta: AsyncCollection[dict[str, Any]] = database.db["knowledge_meta"]

    async def open(self) -> None:
        """Creates the indexes (idempotent); embeds passages that have no vector."""
        await self.passages.create_indexes(list(PASSAGE_INDEXES))
        await self.meta.update_one({"_id": _GENERATION}, {"$setOnInsert": {"value": 0}}, upsert=True)
        if self.embedder is not None:
            await self._embed_missing(self.embedder)

    async def _embed_missing(self, embedder: Embedder) -> None:
        while True:
            docs = await self.passages.find(
                {"vector": {"$exists": False}}, {"section": 1, "text": 1}, limit=512
            ).to_list()
            if not docs:
                return
            vectors = await asyncio.to_thread(
                embedder.embed, [embedded_text(d["section"], d["text"]) for d in docs]
            )
            await self.passages.bulk_write(
                [
                    UpdateOne({"_id": d["_id"]}, {"$set": {"vector": Binary(v.tobytes())}})
                    for d, v in zip(docs, vectors, strict=True)
                ]
            )
            await self._bump(None)

    async def close(self) -> None:
        """Closes the client."""
        await self.database.close()

    async def ping(self) -> None:
        """Raises when the server does not answer."""
        await self.database.ping()

    async def _bump(self, session: AsyncClientSession | None) -> None:
        await self.meta.update_one({"_id": _GENERATION}, {"$inc": {"value": 1}}, upsert=True, session=session)

    async def add(
        self, document: str, title: str, tags: Sequence[str], text: str, chunks: Sequence[Chunk]
    ) -> None:
        """Indexes the passages ``chunks`` of ``text`` for ``document``, in one transaction."""
        docs: list[dict[str, Any]] = [
            {
                "_id": f"{document}#{seq}",
                "document": document,
                "seq": seq,
                "title": title,
                "section": c.section,
                "span_start": c.start,
                "span_end": c.end,
                "tags": list(tags),
                "text": text[c.start : c.end],
            }
            for seq, c in enumerate(chunks)
        ]
        if self.embedder is not None and docs:
            vectors = await asyncio.to_thread(
                self.embedder.embed, [embedded_text(d["section"], d["text"]) for d in docs]
            )
            for d, v in zip(docs, vectors, strict=True):
                d["vector"] = Binary(v.tobytes())

        async def write(session: AsyncClientSession) -> None:
            if docs:
                await self.passages.insert_many(docs, session=session)
            await self._bump(session)

        async with self.database.client.start_session() as session:
            await session.with_transaction(write)

    async def remove(self, document: str) -> int:
        """Removes every passage of ``document``; returns how many there were."""

        async def write(session: AsyncClientSession) -> int:
            deleted = await self.passages.delete_many({"document": document}, session=session)
            await self._bump(session)
            return int(deleted.deleted_count)

        async with self.database.client.start_session() as session:
            return await session.with_transaction(write)

    async def documents(self) -> list[str]:
        """The names of the documents that have passages."""
        return [str(name) for name in await self.passages.distinct("document")]

    async def get_meta(self, key: str) -> str | None:
        """A stored marker (such as whether the sample corpus was ingested)."""
        doc = await self.meta.find_one({"_id": key})
        return None if doc is None else str(doc["value"])

    async def set_meta(self, key: str, value: str) -> None:
        """Stores a marker."""
        await self.meta.replace_one({"_id": key}, {"_id": key, "value": value}, upsert=True)

    async def _lexical(
        self, terms: list[str], tags: Sequence[str], limit: int
    ) -> list[tuple[Row[str], float]]:
        projection: dict[str, Any] = dict.fromkeys(_FIELDS, 1)
        projection["score"] = {"$meta": "textScore"}
        cursor = self.passages.find(
            text_query(terms, tags),
            projection,
            sort=[("score", {"$meta": "textScore"}), ("_id", ASCENDING)],
            limit=limit,
        )
        return [(_row(doc), relevance_score(float(doc["score"]))) for doc in await cursor.to_list()]

    async def _rows(self, keys: Sequence[str]) -> dict[str, Row[str]]:
        if not keys:
            return {}
        docs = await self.passages.find({"_id": {"$in": list(keys)}}, dict.fromkeys(_FIELDS, 1)).to_list()
        return {str(doc["_id"]): _row(doc) for doc in docs}

    async def _generation(self) -> int:
        doc = await self.meta.find_one({"_id": _GENERATION})
        return 0 if doc is None else int(doc["value"])

    async def _vector_rows(self) -> list[tuple[str, bytes, list[str]]]:
        docs = await self.passages.find(
            {"vector": {"$exists": True}}, {"vector": 1, "tags": 1}, sort=[("_id", ASCENDING)]
        ).to_list()
        return [(str(doc["_id"]), bytes(doc["vector"]), list(doc["tags"])) for doc in docs]
