"""What every passage index shares: the records, the storage ``Protocol``, and hybrid ranking.

A backend (SQLite FTS5 in :mod:`.sqlite`, MongoDB ``$text`` in :mod:`.mongo`) supplies three
things to :class:`HybridIndex`: its lexical ranking (:meth:`HybridIndex._lexical`), the rows of
chosen passages (:meth:`HybridIndex._rows`) and its stored vectors when they changed
(:meth:`HybridIndex._vector_rows`). The dense scan (:class:`VectorSet`, exact cosine over a matrix
kept in memory) and the reciprocal-rank fusion (:func:`fuse`) are this module's, one
implementation for every backend.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Literal, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from bhiv_core.knowledge.chunking import Chunk
from bhiv_core.knowledge.dense import DIMENSIONS, Embedder

__all__ = [
    "CANDIDATES",
    "DENSE_FLOOR",
    "MAX_QUERY_TERMS",
    "RRF_K",
    "HybridIndex",
    "Mode",
    "Passage",
    "PassageIndex",
    "Row",
    "VectorSet",
    "embedded_text",
    "fuse",
    "query_terms",
    "relevance_score",
]

Mode = Literal["bm25", "dense", "hybrid"]

CANDIDATES = 50
"""How many passages each ranking contributes to a hybrid search."""

RRF_K = 60
"""The constant of reciprocal-rank fusion (Cormack et al.)."""

DENSE_FLOOR = 0.3
"""The least cosine similarity for a passage to count as a dense match: below it, unrelated text."""

MAX_QUERY_TERMS = 64
"""The most distinct words of a query that are searched for."""

K = TypeVar("K", int, str)
"""A backend's passage key: SQLite's rowid, MongoDB's ``_id``."""

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


@dataclass(frozen=True, slots=True)
class Row(Generic[K]):
    """A stored passage as a backend reads it: its key and everything but a score."""

    key: K
    document: str
    seq: int
    title: str
    section: str
    span_start: int
    span_end: int
    text: str

    def passage(self, score: float) -> Passage:
        """The search result of this row with ``score`` (capped at 1)."""
        return Passage(
            id=f"{self.document}#{self.seq}",
            document=self.document,
            document_title=self.title,
            section=self.section,
            span_start=self.span_start,
            span_end=self.span_end,
            score=min(1.0, score),
            text=self.text,
        )


class PassageIndex(Protocol):
    """The passage index of the knowledge base, whatever stores it.

    Implementations: :class:`~bhiv_core.knowledge.index.sqlite.KnowledgeIndex` (SQLite FTS5, the
    embedded default) and :class:`~bhiv_core.knowledge.index.mongo.MongoKnowledgeIndex` (MongoDB
    ``$text``, for deployments). One contract test suite runs against both.

    Attributes:
        embedder: Dense embeddings for hybrid search; None: lexical ranking only. Set it before
            :meth:`open` (the service loads the model off the event loop first).

    """

    embedder: Embedder | None

    async def open(self) -> None:
        """Opens the store, creating its schema; embeds passages that have no vector."""

    async def close(self) -> None:
        """Closes the store."""

    async def ping(self) -> None:
        """Raises when the store cannot be read."""

    async def add(
        self, document: str, title: str, tags: Sequence[str], text: str, chunks: Sequence[Chunk]
    ) -> None:
        """Indexes the passages ``chunks`` of ``text`` for ``document``, all or none."""

    async def remove(self, document: str) -> int:
        """Removes every passage of ``document``; returns how many there were."""

    async def documents(self) -> list[str]:
        """The names of the documents that have passages."""

    async def get_meta(self, key: str) -> str | None:
        """A stored marker (such as whether the sample corpus was ingested)."""

    async def set_meta(self, key: str, value: str) -> None:
        """Stores a marker."""

    async def search(
        self, query: str, *, tags: Sequence[str] = (), limit: int = 5, mode: Mode | None = None
    ) -> list[Passage]:
        """The passages best matching ``query``, most relevant first (see :meth:`HybridIndex.search`)."""


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


def embedded_text(section: str, text: str) -> str:
    """What is embedded for a passage: its section title, then its text."""
    return f"{section}. {text}" if section else text


def relevance_score(relevance: float) -> float:
    """A positive lexical relevance (BM25, textScore) mapped into 0-1 by ``s / (1 + s)``, order kept."""
    relevance = max(0.0, relevance)
    return relevance / (1.0 + relevance)


def fuse(rankings: Sequence[Sequence[K]], limit: int) -> list[tuple[K, float]]:
    """Reciprocal-rank fusion: the ``limit`` best keys by ``1 / (RRF_K + rank)`` summed over rankings.

    Returns the keys with their score over the best possible one (first in two rankings), 0-1;
    ties go to the lower key (SQLite: the earlier ingested).
    """
    fused: dict[K, float] = {}
    for ranking in rankings:
        for rank, key in enumerate(ranking, start=1):
            fused[key] = fused.get(key, 0.0) + 1.0 / (RRF_K + rank)
    best = sorted(fused.items(), key=lambda item: (-item[1], item[0]))[:limit]
    top = 2.0 / (RRF_K + 1)
    return [(key, score / top) for key, score in best]


class VectorSet(Generic[K]):
    """Every stored passage vector in one float32 matrix, scanned exactly (a product per search).

    10,000 passages of 256 dimensions are 10 MB and about half a millisecond of one core per query.
    """

    def __init__(self) -> None:
        self._keys: list[K] = []
        self._matrix: npt.NDArray[np.float32] = np.zeros((0, DIMENSIONS), dtype=np.float32)
        self._tags: list[frozenset[str]] = []

    def __len__(self) -> int:
        return len(self._keys)

    def load(self, rows: Sequence[tuple[K, bytes, Sequence[str]]]) -> None:
        """Replaces the set with ``rows`` of (key, the vector's float32 bytes, the passage's tags)."""
        self._keys = [row[0] for row in rows]
        self._matrix = (
            np.frombuffer(b"".join(row[1] for row in rows), dtype=np.float32).reshape(len(rows), DIMENSIONS)
            if rows
            else np.zeros((0, DIMENSIONS), dtype=np.float32)
        )
        self._tags = [frozenset(row[2]) for row in rows]

    def nearest(
        self, vector: npt.NDArray[np.float32], tags: Sequence[str], limit: int
    ) -> list[tuple[K, float]]:
        """The ``limit`` keys of highest cosine similarity (at least :data:`DENSE_FLOOR`), with it."""
        if not vector.any() or not self._keys:
            return []
        # Not ``self._matrix @ vector``: OpenBLAS runs a product this size on every core and its
        # threads then spin for a while, which cost five times the product's own CPU per search
        # (2.6 ms against 0.5 ms for 10,000 passages, measured by bench.knowledge). einsum's loop
        # stays on this thread.
        similarity = np.einsum("ij,j->i", self._matrix, vector)
        if tags:
            wanted = frozenset(tags)
            keep = np.array([wanted <= tagged for tagged in self._tags], dtype=bool)
            similarity = np.where(keep, similarity, -np.inf)
        similarity = np.where(similarity >= DENSE_FLOOR, similarity, -np.inf)
        count = min(limit, int(np.isfinite(similarity).sum()))
        if count <= 0:
            return []
        top = np.argpartition(-similarity, count - 1)[:count]
        top = top[np.argsort(-similarity[top], kind="stable")]
        return [(self._keys[i], float(similarity[i])) for i in top]


class HybridIndex(Generic[K]):
    """Search over a backend's lexical ranking, fused with the dense scan when there is an embedder.

    Subclasses implement :meth:`_lexical`, :meth:`_rows`, :meth:`_generation` and
    :meth:`_vector_rows`; the vectors are reloaded when the stored generation (bumped by every
    change, by any process) differs from the one loaded.
    """

    embedder: Embedder | None

    def __init__(self, embedder: Embedder | None) -> None:
        self.embedder = embedder
        self._vectors: VectorSet[K] = VectorSet()
        self._loaded_generation = -1

    async def _lexical(self, terms: list[str], tags: Sequence[str], limit: int) -> list[tuple[Row[K], float]]:
        """The ``limit`` best rows for the query ``terms`` (any of them), with a 0-1 score."""
        raise NotImplementedError

    async def _rows(self, keys: Sequence[K]) -> dict[K, Row[K]]:
        """The rows of ``keys`` that still exist."""
        raise NotImplementedError

    async def _generation(self) -> int:
        """The stored change counter."""
        raise NotImplementedError

    async def _vector_rows(self) -> list[tuple[K, bytes, list[str]]]:
        """Every stored vector: (key, float32 bytes, the passage's tags)."""
        raise NotImplementedError

    async def search(
        self, query: str, *, tags: Sequence[str] = (), limit: int = 5, mode: Mode | None = None
    ) -> list[Passage]:
        """The passages best matching ``query``, most relevant first.

        Args:
            query: Free text; for the lexical ranking only its words count (at most 64 distinct ones).
            tags: Only passages of documents carrying every one of these tags.
            limit: The most passages to return.
            mode: ``bm25``, ``dense`` or ``hybrid``; None: hybrid with an embedder, else bm25.

        """
        mode = mode or ("hybrid" if self.embedder is not None else "bm25")
        if limit <= 0:
            return []
        terms = query_terms(query)
        if mode == "bm25":
            return (
                [row.passage(score) for row, score in await self._lexical(terms, tags, limit)]
                if terms
                else []
            )
        dense = await self._dense(query, tags, limit if mode == "dense" else CANDIDATES)
        if mode == "dense":
            rows = await self._rows([key for key, _ in dense])
            return [rows[key].passage(max(0.0, score)) for key, score in dense if key in rows]
        lexical = await self._lexical(terms, tags, CANDIDATES) if terms else []
        best = fuse([[row.key for row, _ in lexical], [key for key, _ in dense]], limit)
        rows = {row.key: row for row, _ in lexical}
        rows.update(await self._rows([key for key, _ in best if key not in rows]))
        return [rows[key].passage(score) for key, score in best if key in rows]

    async def _dense(self, query: str, tags: Sequence[str], limit: int) -> list[tuple[K, float]]:
        """The ``limit`` passages of highest cosine similarity to the query, with it."""
        if self.embedder is None or not query.strip():
            return []
        generation = await self._generation()
        if generation != self._loaded_generation:
            self._vectors.load(await self._vector_rows())
            self._loaded_generation = generation
        if not len(self._vectors):
            return []
        vector = (await asyncio.to_thread(self.embedder.embed, [query[:10_000]]))[0]
        return self._vectors.nearest(vector, tags, limit)
