"""The passage index on SQLite: FTS5 with BM25 ranking, in one 0600 file of the data directory.

Each passage is a row of ``passages`` (its document, title, section, span, tags and text) and a
row of the FTS5 table ``passages_fts`` (title, section, text; Porter stemming, diacritics folded)
with the same rowid. A query is reduced to at most :data:`~.base.MAX_QUERY_TERMS` distinct words,
each quoted, joined with OR, and ranked by ``bm25()`` with the section title weighted above the
text, so work per search is bounded whatever the query holds. Scores are mapped into 0-1 by
``s / (1 + s)`` of the (positive) BM25 relevance, which keeps the order.

With an :class:`~bhiv_core.knowledge.dense.Embedder` (``BHIV_KNOWLEDGE_DENSE=on``), each passage
also gets a unit vector (table ``vectors``, embedded at ingestion; passages ingested while dense
retrieval was off are embedded when the index opens), and a search is **hybrid**: the top
:data:`~.base.CANDIDATES` of BM25 and of the exact cosine scan are fused by reciprocal rank
(:class:`~.base.HybridIndex`, shared with the MongoDB backend). ``mode`` selects one ranking alone,
for the evaluation.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bhiv_core.knowledge.chunking import Chunk
from bhiv_core.knowledge.dense import Embedder
from bhiv_core.knowledge.index.base import HybridIndex, Row, embedded_text, relevance_score
from bhiv_core.storage.sqlite import SqliteDatabase

__all__ = ["KnowledgeIndex"]

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


def _tag_text(tags: Sequence[str]) -> str:
    return " " + " ".join(tags) + " "


def _row(values: Sequence[Any]) -> Row[int]:
    key, document, seq, title, section, start, end, text = values[:8]
    return Row(int(key), document, int(seq), title, section, int(start), int(end), text)


class KnowledgeIndex(HybridIndex[int]):
    """The FTS5 passage index in ``path`` (created 0600), with dense vectors when given an embedder.

    Args:
        path: The SQLite file, such as ``<data_dir>/orchestration-knowledge.db``.
        embedder: Dense embeddings for hybrid search; None: BM25 only.

    """

    def __init__(self, path: Path, embedder: Embedder | None = None):
        super().__init__(embedder)
        self._db = SqliteDatabase(path, _MIGRATIONS)

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
            vectors = await asyncio.to_thread(embedder.embed, [embedded_text(r[1], r[2]) for r in rows])
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
            vectors = await asyncio.to_thread(self.embedder.embed, [embedded_text(r[3], r[7]) for r in rows])

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

    async def _lexical(
        self, terms: list[str], tags: Sequence[str], limit: int
    ) -> list[tuple[Row[int], float]]:
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
        # bm25() is negative, more negative is more relevant.
        return [(_row(row), relevance_score(-float(row[-1]))) for row in rows]

    async def _rows(self, keys: Sequence[int]) -> dict[int, Row[int]]:
        if not keys:
            return {}
        marks = ", ".join("?" * len(keys))
        sql = f"SELECT {_COLUMNS} FROM passages p WHERE p.rowid IN ({marks})"  # noqa: S608
        rows = await self._db.read(lambda c: c.execute(sql, list(keys)).fetchall())
        return {int(row[0]): _row(row) for row in rows}

    async def _generation(self) -> int:
        return int(await self.get_meta("generation") or 0)

    async def _vector_rows(self) -> list[tuple[int, bytes, list[str]]]:
        rows = await self._db.read(
            lambda c: c.execute(
                "SELECT v.rowid, v.vector, p.tags FROM vectors v JOIN passages p ON p.rowid = v.rowid"
            ).fetchall()
        )
        return [(int(row[0]), bytes(row[1]), str(row[2]).split()) for row in rows]
