"""The orchestration service's settings, read once at start; a bad value fails fast with a ConfigError."""

from __future__ import annotations

from dataclasses import dataclass

from bhiv_core.agents.base import AGENT_INTENTS
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
        agents_disabled: ``BHIV_AGENTS_DISABLED`` (comma-separated agent ids, default none): agents
            the router skips and InvokeAgent refuses (FAILED_PRECONDITION).
        agent_deadline: ``BHIV_AGENTS_DEADLINE_SECONDS`` (default 30): how long an agent may take
            to answer one request before DEADLINE_EXCEEDED.
        session_turns: ``BHIV_AGENTS_SESSION_TURNS`` (default 10): the earlier turns of a session
            kept and passed to agents as history.
        agents_llm: ``BHIV_AGENTS_LLM`` (``on``/``off``, default ``on``): agents may ask the llm
            service (``BHIV_LLM_ADDR``) to write answers; ``off``: every answer is extractive.

        tasks_concurrency: ``BHIV_TASKS_CONCURRENCY`` (default 4): tasks and workflows one process
            runs at once.
        tasks_queue: ``BHIV_TASKS_QUEUE`` (default 100): runs one process accepts beyond those,
            waiting for a free slot; ExecuteTask/ExecuteWorkflow past it is RESOURCE_EXHAUSTED.
        tasks_lease: ``BHIV_TASKS_LEASE_SECONDS`` (default 30): how long a worker's claim on a run
            lasts without renewal (renewed every third of it); a dead worker's runs are taken
            over after it.

        store_url: ``BHIV_ORCHESTRATION_STORE_URL``: a ``mongodb://`` URL selects MongoDB (database
            ``bhiv_orchestration``) for the documents and the passage index; unset means the SQLite
            files ``<data_dir>/orchestration.db`` and ``<data_dir>/orchestration-knowledge.db``.

    """

    sample_corpus: bool
    dense: bool
    store_url: str | None
    agents_disabled: frozenset[str] = frozenset()
    agent_deadline: float = 30.0
    session_turns: int = 10
    agents_llm: bool = True
    tasks_concurrency: int = 4
    tasks_queue: int = 100
    tasks_lease: float = 30.0

    @classmethod
    def from_runtime(cls, config: RuntimeConfig) -> OrchestrationConfig:
        """Reads every orchestration setting once; raises ConfigError naming a bad one."""
        return cls(
            sample_corpus=config.settings.choice("KNOWLEDGE_SAMPLE_CORPUS", "on", ("on", "off")) == "on",
            dense=config.settings.choice("KNOWLEDGE_DENSE", "on", ("on", "off")) == "on",
            agents_disabled=config.settings.get(
                "AGENTS_DISABLED",
                frozenset(),
                _agent_ids,
                "comma-separated agent ids (" + ", ".join(sorted(AGENT_INTENTS)) + ")",
            ),
            agent_deadline=config.settings.positive_float("AGENTS_DEADLINE_SECONDS", 30.0),
            session_turns=config.settings.positive_int("AGENTS_SESSION_TURNS", 10),
            agents_llm=config.settings.choice("AGENTS_LLM", "on", ("on", "off")) == "on",
            tasks_concurrency=config.settings.positive_int("TASKS_CONCURRENCY", 4),
            tasks_queue=config.settings.get("TASKS_QUEUE", 100, _count, "a whole number ≥ 0"),
            tasks_lease=config.settings.positive_float("TASKS_LEASE_SECONDS", 30.0),
            store_url=mongo_url_setting(
                config.settings, "ORCHESTRATION_STORE_URL", "the SQLite files of <data_dir>"
            ),
        )


def _agent_ids(raw: str) -> frozenset[str]:
    ids = frozenset(part.strip() for part in raw.split(",") if part.strip())
    unknown = ids - set(AGENT_INTENTS)
    if unknown:
        raise ValueError(", ".join(sorted(unknown)))
    return ids


def _count(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError(raw)
    return value
