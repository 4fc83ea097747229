"""The passage index: SQLite FTS5 with BM25 ranking, in one 0600 file of the data directory.

Each passage is a row of ``passages`` (its document, title, section, span, tags and text) and a
row of the FTS5 table ``passages_fts`` (title, section, text; Porter stemming, diacritics folded)
with the same rowid. A query is reduced to at most :data:`MAX_QUERY_TERMS` distinct words, each
quoted, joined with OR, and ranked by ``bm25()`` with the section title weighted above the text,
so work per search is bounded whatever the query holds. Scores are mapped into 0-1 by
``s / (1 + s)`` of the (positive) BM25 relevance, which keeps the order.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bhiv_core.knowledge.chunking import Chunk
from bhiv_core.storage.sqlite import SqliteDatabase

__all__ = ["MAX_QUERY_TERMS", "KnowledgeIndex", "Passage", "query_terms"]

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
)


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
    """The FTS5 passage index in ``path`` (created 0600).

    Args:
        path: The SQLite file, such as ``<data_dir>/orchestration-knowledge.db``.

    """

    def __init__(self, path: Path):
        self._db = SqliteDatabase(path, _MIGRATIONS)

    async def open(self) -> None:
        """Opens the file, creating or migrating its schema."""
        await self._db.open()

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

        def write(conn: sqlite3.Connection) -> None:
            for row in rows:
                cursor = conn.execute(
                    "INSERT INTO passages (document, seq, title, section, span_start, span_end, tags, text)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    row,
                )
                conn.execute(
                    "INSERT INTO passages_fts (rowid, title, section, text) VALUES (?, ?, ?, ?)",
                    (cursor.lastrowid, row[2], row[3], row[7]),
                )

        await self._db.write(write)

    async def remove(self, document: str) -> int:
        """Removes every passage of ``document``; returns how many there were."""

        def write(conn: sqlite3.Connection) -> int:
            conn.execute(
                "DELETE FROM passages_fts WHERE rowid IN (SELECT rowid FROM passages WHERE document = ?)",
                (document,),
            )
            return conn.execute("DELETE FROM passages WHERE document = ?", (document,)).rowcount

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

    async def search(self, query: str, *, tags: Sequence[str] = (), limit: int = 5) -> list[Passage]:
        """The passages best matching ``query`` by BM25, most relevant first.

        Args:
            query: Free text; only its words count (at most 64 distinct ones).
            tags: Only passages of documents carrying every one of these tags.
            limit: The most passages to return.

        """
        terms = query_terms(query)
        if not terms or limit <= 0:
            return []
        match = " OR ".join(f'"{term}"' for term in terms)
        sql = (
            # bm25() weights: document title 1, section title 2, passage text 1.
            "SELECT p.document, p.seq, p.title, p.section, p.span_start, p.span_end, p.text,"
            " bm25(passages_fts, 1.0, 2.0, 1.0) AS rank"
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
        passages = []
        for document, seq, title, section, start, end, text, rank in rows:
            relevance = max(0.0, -float(rank))
            passages.append(
                Passage(
                    id=f"{document}#{seq}",
                    document=document,
                    document_title=title,
                    section=section,
                    span_start=int(start),
                    span_end=int(end),
                    score=relevance / (1.0 + relevance),
                    text=text,
                )
            )
        return passages
