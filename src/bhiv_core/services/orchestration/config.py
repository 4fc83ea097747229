"""The orchestration service's settings, read once at start; a bad value fails fast with a ConfigError."""

from __future__ import annotations

from dataclasses import dataclass

from bhiv_core.runtime.config import RuntimeConfig
from bhiv_core.storage.mongo import mongo_url_setting

__all__ = ["OrchestrationConfig"]


@dataclass(frozen=True, slots=True)
class OrchestrationConfig:
    """What orchestration needs beyond the shared runtime.

    Attributes:
        sample_corpus: ``BHIV_KNOWLEDGE_SAMPLE_CORPUS`` (``on``/``off``, default ``on``): ingest the
            shipped sample corpus on the first start, when the knowledge base is empty.

        dense: ``BHIV_KNOWLEDGE_DENSE`` (``on``/``off``, default ``on``): dense embeddings
            (wordllama) fused with BM25 for hybrid search; ``off``: BM25 only.

        store_url: ``BHIV_ORCHESTRATION_STORE_URL``: a ``mongodb://`` URL selects MongoDB (database
            ``bhiv_orchestration``) for the documents and the passage index; unset means the SQLite
            files ``<data_dir>/orchestration.db`` and ``<data_dir>/orchestration-knowledge.db``.

    """

    sample_corpus: bool
    dense: bool
    store_url: str | None

    @classmethod
    def from_runtime(cls, config: RuntimeConfig) -> OrchestrationConfig:
        """Reads every orchestration setting once; raises ConfigError naming a bad one."""
        return cls(
            sample_corpus=config.settings.choice("KNOWLEDGE_SAMPLE_CORPUS", "on", ("on", "off")) == "on",
            dense=config.settings.choice("KNOWLEDGE_DENSE", "on", ("on", "off")) == "on",
            store_url=mongo_url_setting(
                config.settings, "ORCHESTRATION_STORE_URL", "the SQLite files of <data_dir>"
            ),
        )
