"""The knowledge base's passage index: one ``Protocol``, two backends, one hybrid ranking.

- :class:`~.base.PassageIndex`: what the knowledge service and the agents use.
- :class:`~.sqlite.KnowledgeIndex`: SQLite FTS5 with BM25, the embedded default
  (``<data_dir>/orchestration-knowledge.db``).
- :class:`~.mongo.MongoKnowledgeIndex`: MongoDB with a ``$text`` index, for deployments
  (``BHIV_ORCHESTRATION_STORE_URL``; imported only when selected).
- :func:`make_knowledge_index` picks one from the service's settings.

Both rank lexically in their own engine and share the dense scan and the reciprocal-rank fusion
(:class:`~.base.HybridIndex`).
"""

from __future__ import annotations

from pathlib import Path

from bhiv_core.knowledge.dense import Embedder
from bhiv_core.knowledge.index.base import (
    CANDIDATES,
    DENSE_FLOOR,
    MAX_QUERY_TERMS,
    RRF_K,
    HybridIndex,
    Mode,
    Passage,
    PassageIndex,
    VectorSet,
    fuse,
    query_terms,
)
from bhiv_core.knowledge.index.sqlite import KnowledgeIndex

__all__ = [
    "CANDIDATES",
    "DENSE_FLOOR",
    "MAX_QUERY_TERMS",
    "RRF_K",
    "HybridIndex",
    "KnowledgeIndex",
    "Mode",
    "Passage",
    "PassageIndex",
    "VectorSet",
    "fuse",
    "make_knowledge_index",
    "query_terms",
]


def make_knowledge_index(
    *, name: str, data_dir: Path, url: str | None, embedder: Embedder | None = None
) -> PassageIndex:
    """The passage index a service's settings select.

    Args:
        name: The service (``orchestration``): the SQLite file ``<data_dir>/<name>-knowledge.db``,
            or the MongoDB database ``bhiv_<name>`` (collections ``knowledge_passages`` and
            ``knowledge_meta``, beside the service's kit collections).
        data_dir: The data directory.
        url: A ``mongodb://`` URL, or None for the embedded SQLite file.
        embedder: Dense embeddings (hybrid search), or None.

    """
    if url is not None:
        from bhiv_core.knowledge.index.mongo import MongoKnowledgeIndex
        from bhiv_core.storage.mongo import MongoDatabase

        return MongoKnowledgeIndex(MongoDatabase(url, f"bhiv_{name}"), embedder)
    return KnowledgeIndex(data_dir / f"{name}-knowledge.db", embedder)
