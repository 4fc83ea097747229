"""The passage index: SQLite FTS5 with BM25 ranking, in one 0600 file of the data directory.

Each passage is a row of ``passages`` (its document, title, section, span, tags and text) and a
row of the FTS5 table ``passages_fts`` (title, section, text; Porter stemming, diacritics folded)
with the same rowid. A query is reduced to at most :data:`MAX_QUERY_TERMS` distinct words, each
quoted, joined with OR, and ranked by ``bm25()`` with the section title weighted above the text,
so work per search is bounded whatever the query holds. Scores are mapped into 0-1 by
``s / (1 + s)`` of the (positive) BM25 relevance, which keeps the order.

With an :class:`~bhiv_core.knowledge.dense.Embedder` (``BHIV_KNOWLEDGE_DENSE=on``), each passage
also gets a unit vector (table ``vectors``, embedded at ingestion; passages ingested while dense
retrieval was off are embedded when the index opens), and a search is **hybrid**: the top
:data:`CANDIDATES` of BM25 and of cosine similarity (an exact scan of the vectors, kept in memory
and reloaded when another process changed the index; at least :data:`DENSE_FLOOR`) are fused by
reciprocal rank (``1 / (60 + rank)`` summed; the score is that sum over its maximum, 0-1).
``mode`` selects one ranking alone, for the evaluation.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from bhiv_core.knowledge.chunking import Chunk
from bhiv_core.knowledge.dense import DIMENSIONS, Embedder
from bhiv_core.storage.sqlite import SqliteDatabase

__all__ = ["CANDIDATES", "MAX_QUERY_TERMS", "KnowledgeIndex", "Mode", "Passage", "query_terms"]

Mode = Literal["bm25", "dense", "hybrid"]

CANDIDATES = 50
"""How many passages each ranking contributes to a hybrid search."""

RRF_K = 60
"""The constant of reciprocal-rank fusion (Cormack et al.)."""

DENSE_FLOOR = 0.3
"""The least cosine similarity for a passage to count as a dense match: below it, unrelated text."""

MAX_QUERY_TERMS = 64
"""The most distinct words of a query that are searched for."""

_WORD = re.compile(r"\w+")
_STOPWORDS = frozenset(
    [
        "a",
        "about",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "can",
        "do",
        "does",
        "for",
        "from",
        "how",
        "i",
        "if",
        "in",
        "is",
        "it",
        "its",
        "me",
        "my",
        "of",
        "on",
        "or",
        "our",
        "so",
        "than",
        "that",
        "the",
        "their",
        "them",
        "there",
        "these",
        "they",
        "this",
        "to",
        "was",
        "we",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "will",
        "with",
        "you",
        "your",
    ]
)

_MIGRATIONS = (
    """
    CREATE TABLE passages (
        rowid INTEGER PRIMARY KEY,
        document TEXT NOT NULL,
        seq INTEGER NOT NULL,
        title TEXT NOT NULL,
        section TEXT NOT NULL,
        span_start INTEGER NOT NULL,
        span_end INTEGER NOT NULL,
        tags TEXT NOT NULL,
        text TEXT NOT NULL
    );
    CREATE UNIQUE INDEX passages_document ON passages (document, seq);
    CREATE VIRTUAL TABLE passages_fts USING fts5 (
        title, section, text,
        tokenize='porter unicode61 remove_diacritics 2'
    );
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    """
    CREATE TABLE vectors (rowid INTEGER PRIMARY KEY, vector BLOB NOT NULL);
    INSERT INTO meta (key, value) VALUES ('generation', '0');
    """,
)

_BUMP = "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'"
_COLUMNS = "p.rowid, p.document, p.seq, p.title, p.section, p.span_start, p.span_end, p.text"


def _embedded(section: str, text: str) -> str:
    return f"{section}. {text}" if section else text


@dataclass(frozen=True, slots=True)
class Passage:
    """A search result: a span of a document's extracted text.

    Attributes:
        id: Stable within the knowledge base: ``documents/{id}#{n}`` for the n-th passage (0-based).
        document: The document's resource name, ``documents/{id}``.
        document_title: The document's title.
        section: The section title (a heading or ``Page N``); empty when untitled.
        span_start: The offset of the first character in the document's extracted text.
        span_end: The offset just past the last character (exclusive).
        score: The relevance to the query, 0-1, higher is better.
        text: The passage text, exactly ``extracted_text[span_start:span_end]``.

    """

    id: str
    document: str
    document_title: str
    section: str
    span_start: int
    span_end: int
    score: float
    text: str


def query_terms(query: str) -> list[str]:
    """The distinct searchable words of a query, lower-cased, stop words dropped, at most 64."""
    terms: list[str] = []
    seen: set[str] = set()
    for match in _WORD.finditer(query.lower()):
        word = match.group(0)
        if word in seen or word in _STOPWORDS or len(word) > 64:
            continue
        seen.add(word)
        terms.append(word)
        if len(terms) == MAX_QUERY_TERMS:
            break
    return terms


def _tag_text(tags: Sequence[str]) -> str:
    return " " + " ".join(tags) + " "


class KnowledgeIndex:
    """The FTS5 passage index in ``path`` (created 0600), with dense vectors when given an embedder.

    Args:
        path: The SQLite file, such as ``<data_dir>/orchestration-knowledge.db``.
        embedder: Dense embeddings for hybrid search; None: BM25 only.

    """

    def __init__(self, path: Path, embedder: Embedder | None = None):
        self._db = SqliteDatabase(path, _MIGRATIONS)
        self.embedder = embedder
        self._generation = -1
        self._rowids = np.zeros(0, dtype=np.int64)
        self._matrix = np.zeros((0, DIMENSIONS), dtype=np.float32)
        self._tags: list[str] = []

    async def open(self) -> None:
        """Opens the file, creating or migrating its schema; embeds passages that have no vector."""
        await self._db.open()
        if self.embedder is not None:
            await self._embed_missing(self.embedder)

    async def _embed_missing(self, embedder: Embedder) -> None:
        while True:
            rows = await self._db.read(
                lambda c: c.execute(
                    "SELECT p.rowid, p.section, p.text FROM passages p"
                    " LEFT JOIN vectors v ON v.rowid = p.rowid WHERE v.rowid IS NULL LIMIT 512"
                ).fetchall()
            )
            if not rows:
                return
            vectors = await asyncio.to_thread(embedder.embed, [_embedded(r[1], r[2]) for r in rows])
            pairs = [(r[0], v.tobytes()) for r, v in zip(rows, vectors, strict=True)]

            def write(conn: sqlite3.Connection, pairs: list[tuple[int, bytes]] = pairs) -> None:
                conn.executemany("INSERT OR REPLACE INTO vectors (rowid, vector) VALUES (?, ?)", pairs)
                conn.execute(_BUMP)

            await self._db.write(write)

    async def close(self) -> None:
        """Closes the file."""
        await self._db.close()

    async def ping(self) -> None:
        """Raises when the file cannot be read."""
        await self._db.ping()

    async def add(
        self, document: str, title: str, tags: Sequence[str], text: str, chunks: Sequence[Chunk]
    ) -> None:
        """Indexes the passages ``chunks`` of ``text`` for ``document``, in one transaction."""
        rows = [
            (document, seq, title, c.section, c.start, c.end, _tag_text(tags), text[c.start : c.end])
            for seq, c in enumerate(chunks)
        ]
        vectors = None
        if self.embedder is not None:
            vectors = await asyncio.to_thread(self.embedder.embed, [_embedded(r[3], r[7]) for r in rows])

        def write(conn: sqlite3.Connection) -> None:
            for i, row in enumerate(rows):
                cursor = conn.execute(
                    "INSERT INTO passages (document, seq, title, section, span_start, span_end, tags, text)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    row,
                )
                conn.execute(
                    "INSERT INTO passages_fts (rowid, title, section, text) VALUES (?, ?, ?, ?)",
                    (cursor.lastrowid, row[2], row[3], row[7]),
                )
                if vectors is not None:
                    conn.execute(
                        "INSERT INTO vectors (rowid, vector) VALUES (?, ?)",
                        (cursor.lastrowid, vectors[i].tobytes()),
                    )
            conn.execute(_BUMP)

        await self._db.write(write)

    async def remove(self, document: str) -> int:
        """Removes every passage of ``document``; returns how many there were."""

        def write(conn: sqlite3.Connection) -> int:
            chosen = "SELECT rowid FROM passages WHERE document = ?"
            conn.execute(f"DELETE FROM passages_fts WHERE rowid IN ({chosen})", (document,))  # noqa: S608
            conn.execute(f"DELETE FROM vectors WHERE rowid IN ({chosen})", (document,))  # noqa: S608
            conn.execute(_BUMP)
            return int(conn.execute("DELETE FROM passages WHERE document = ?", (document,)).rowcount)

        return await self._db.write(write)

    async def documents(self) -> list[str]:
        """The names of the documents that have passages."""
        rows = await self._db.read(lambda c: c.execute("SELECT DISTINCT document FROM passages").fetchall())
        return [row[0] for row in rows]

    async def get_meta(self, key: str) -> str | None:
        """A stored marker (such as whether the sample corpus was ingested)."""
        row = await self._db.read(
            lambda c: c.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        )
        return None if row is None else str(row[0])

    async def set_meta(self, key: str, value: str) -> None:
        """Stores a marker."""
        await self._db.write(
            lambda c: c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))
        )

    async def search(
        self, query: str, *, tags: Sequence[str] = (), limit: int = 5, mode: Mode | None = None
    ) -> list[Passage]:
        """The passages best matching ``query``, most relevant first.

        Args:
            query: Free text; for BM25 only its words count (at most 64 distinct ones).
            tags: Only passages of documents carrying every one of these tags.
            limit: The most passages to return.
            mode: ``bm25``, ``dense`` or ``hybrid``; None: hybrid with an embedder, else bm25.

        """
        mode = mode or ("hybrid" if self.embedder is not None else "bm25")
        if limit <= 0:
            return []
        if mode == "bm25":
            return [_passage(row, _bm25_score(row[-1])) for row in await self._bm25(query, tags, limit)]
        dense = await self._dense(query, tags, limit if mode == "dense" else CANDIDATES)
        if mode == "dense":
            rows = await self._rows([rowid for rowid, _ in dense])
            return [_passage(rows[rowid], max(0.0, score)) for rowid, score in dense if rowid in rows]
        lexical = await self._bm25(query, tags, CANDIDATES)
        fused: dict[int, float] = {}
        for ranking in ([row[0] for row in lexical], [rowid for rowid, _ in dense]):
            for rank, rowid in enumerate(ranking, start=1):
                fused[rowid] = fused.get(rowid, 0.0) + 1.0 / (RRF_K + rank)
        best = sorted(fused.items(), key=lambda item: (-item[1], item[0]))[:limit]
        rows = {row[0]: row for row in lexical}
        rows.update(await self._rows([rowid for rowid, _ in best if rowid not in rows]))
        top = 2.0 / (RRF_K + 1)
        return [_passage(rows[rowid], score / top) for rowid, score in best if rowid in rows]

    async def _bm25(self, query: str, tags: Sequence[str], limit: int) -> list[tuple[Any, ...]]:
        terms = query_terms(query)
        if not terms:
            return []
        match = " OR ".join(f'"{term}"' for term in terms)
        sql = (
            # bm25() weights: document title 1, section title 2, passage text 1.
            f"SELECT {_COLUMNS}, bm25(passages_fts, 1.0, 2.0, 1.0) AS rank"  # noqa: S608
            " FROM passages_fts JOIN passages p ON p.rowid = passages_fts.rowid"
            " WHERE passages_fts MATCH ?"
        )
        params: list[object] = [match]
        for tag in tags:
            sql += " AND instr(p.tags, ?) > 0"
            params.append(f" {tag} ")
        sql += " ORDER BY rank LIMIT ?"
        params.append(limit)
        rows = await self._db.read(lambda c: c.execute(sql, params).fetchall())
        return [tuple(row) for row in rows]

    async def _rows(self, rowids: Sequence[int]) -> dict[int, tuple[Any, ...]]:
        if not rowids:
            return {}
        marks = ", ".join("?" * len(rowids))
        sql = f"SELECT {_COLUMNS}, 0 FROM passages p WHERE p.rowid IN ({marks})"  # noqa: S608
        rows = await self._db.read(lambda c: c.execute(sql, list(rowids)).fetchall())
        return {int(row[0]): tuple(row) for row in rows}

    async def _dense(self, query: str, tags: Sequence[str], limit: int) -> list[tuple[int, float]]:
        """The ``limit`` passages of highest cosine similarity to the query, with it."""
        if self.embedder is None or not query.strip():
            return []
        await self._refresh()
        vector = (await asyncio.to_thread(self.embedder.embed, [query[:10_000]]))[0]
        if not vector.any() or not len(self._rowids):
            return []
        similarity = self._matrix @ vector
        if tags:
            keep = np.array([all(f" {t} " in tagged for t in tags) for tagged in self._tags], dtype=bool)
            similarity = np.where(keep, similarity, -np.inf)
        similarity = np.where(similarity >= DENSE_FLOOR, similarity, -np.inf)
        count = min(limit, int(np.isfinite(similarity).sum()))
        if count <= 0:
            return []
        top = np.argpartition(-similarity, count - 1)[:count]
        top = top[np.argsort(-similarity[top], kind="stable")]
        return [(int(self._rowids[i]), float(similarity[i])) for i in top]

    async def _refresh(self) -> None:
        """Reloads the vectors when the index changed since they were loaded (by any process)."""
        generation = int(await self.get_meta("generation") or 0)
        if generation == self._generation:
            return
        rows = await self._db.read(
            lambda c: c.execute(
                "SELECT v.rowid, v.vector, p.tags FROM vectors v JOIN passages p ON p.rowid = v.rowid"
            ).fetchall()
        )
        self._rowids = np.array([row[0] for row in rows], dtype=np.int64)
        self._matrix = (
            np.frombuffer(b"".join(row[1] for row in rows), dtype=np.float32).reshape(len(rows), DIMENSIONS)
            if rows
            else np.zeros((0, DIMENSIONS), dtype=np.float32)
        )
        self._tags = [row[2] for row in rows]
        self._generation = generation


def _bm25_score(rank: float) -> float:
    relevance = max(0.0, -float(rank))
    return relevance / (1.0 + relevance)


def _passage(row: tuple[Any, ...], score: float) -> Passage:
    _, document, seq, title, section, start, end, text = row[:8]
    return Passage(
        id=f"{document}#{seq}",
        document=document,
        document_title=title,
        section=section,
        span_start=int(start),
        span_end=int(end),
        score=min(1.0, score),
        text=text,
    )
