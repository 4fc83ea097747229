"""Builds and serves the orchestration service on the shared runtime."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

from bhiv.orchestration.v1 import knowledge_service_pb2 as ks
from bhiv_core.agents.base import Agent
from bhiv_core.agents.catalog import build_catalog
from bhiv_core.agents.llm_client import LlmClient
from bhiv_core.agents.router import min_confidence_setting
from bhiv_core.events.relay import outbox_relay
from bhiv_core.interceptors.tracing import client_interceptors
from bhiv_core.knowledge.corpus import SAMPLES, read_sample
from bhiv_core.knowledge.dense import load_embedder
from bhiv_core.knowledge.index import PassageIndex, make_knowledge_index
from bhiv_core.resources import ResourceStore, make_resource_store
from bhiv_core.runtime import server as runtime
from bhiv_core.runtime.clients import PeerChannels
from bhiv_core.runtime.config import RuntimeConfig
from bhiv_core.runtime.contracts import services_of_package
from bhiv_core.security.principal import Principal
from bhiv_core.services.orchestration.agents import Agents
from bhiv_core.services.orchestration.config import OrchestrationConfig
from bhiv_core.services.orchestration.content_client import ContentClient
from bhiv_core.services.orchestration.knowledge import Knowledge
from bhiv_core.services.orchestration.resources import COLLECTIONS, MIGRATIONS
from bhiv_core.services.orchestration.runs import Runner
from bhiv_core.services.orchestration.servicer import (
    MISSING,
    AgentServicer,
    KnowledgeServicer,
    OrchestrationServicer,
    TaskServicer,
    WorkflowServicer,
)
from bhiv_core.services.orchestration.sessions import Sessions
from bhiv_core.services.orchestration.tasks import Tasks
from bhiv_core.services.orchestration.workflows import Workflows
from bhiv_core.standard_chain import standard_chain

__all__ = [
    "NAME",
    "SAMPLE_CORPUS_KEY",
    "build_server",
    "definition",
    "make_orchestration_index",
    "make_orchestration_store",
    "seed_sample_corpus",
    "serve",
]

NAME = "orchestration"
SAMPLE_CORPUS_KEY = "sample_corpus"
"""The index's marker that the sample corpus was ingested once (never again, even if deleted)."""

_SYSTEM = Principal(subject="services/orchestration", role="")

log = logging.getLogger(__name__)


def make_orchestration_store(config: RuntimeConfig) -> ResourceStore:
    """Orchestration's kit store: ``<data_dir>/orchestration.db``, or ``BHIV_ORCHESTRATION_STORE_URL``."""
    return make_resource_store(
        name=NAME,
        collections=COLLECTIONS,
        migrations=MIGRATIONS,
        data_dir=config.data_dir,
        url=OrchestrationConfig.from_runtime(config).store_url,
    )


def make_orchestration_index(config: RuntimeConfig) -> PassageIndex:
    """The passage index: ``<data_dir>/orchestration-knowledge.db``, or the same MongoDB as the store."""
    return make_knowledge_index(
        name=NAME, data_dir=config.data_dir, url=OrchestrationConfig.from_runtime(config).store_url
    )


async def seed_sample_corpus(knowledge: Knowledge) -> int:
    """Ingests the sample corpus once, when the knowledge base is empty; returns how many documents.

    Idempotent: a marker in the index records that it ran, so a restart (or an operator who
    deleted the samples) never ingests them again.
    """
    if await knowledge.index.get_meta(SAMPLE_CORPUS_KEY) is not None:
        return 0
    ingested = 0
    if await knowledge.count() == 0:
        for sample in SAMPLES:
            request = ks.IngestDocumentRequest(
                title=sample.title,
                source=f"bhiv_core/knowledge/corpus/{sample.file}",
                mime_type="text/plain",
                text=read_sample(sample),
                tags=sample.tags,
                # Two workers starting together both ingest: the receipts keep one of each.
                request_id=f"sample-corpus:{sample.file}",
            )
            await knowledge.ingest(request, _SYSTEM)
            ingested += 1
        log.info("ingested the sample corpus: %d documents", ingested)
    await knowledge.index.set_meta(SAMPLE_CORPUS_KEY, "done")
    return ingested


def definition(
    config: RuntimeConfig,
    *,
    clock: Callable[[], float] = time.time,
    catalog: Mapping[str, Agent] | None = None,
) -> runtime.ServiceDefinition:
    """Returns what the orchestration service contributes to the runtime.

    Its kit store (``<data_dir>/orchestration.db``) and passage index
    (``<data_dir>/orchestration-knowledge.db``), or both in MongoDB by
    ``BHIV_ORCHESTRATION_STORE_URL``, open before the server accepts calls, with the
    dense model when ``BHIV_KNOWLEDGE_DENSE`` is on; orphaned passages are removed and, on the
    first start, the sample corpus is ingested. The agents call the llm service
    (``BHIV_LLM_ADDR``) through the generated stubs over a peer channel that forwards the caller's
    token and trace context, unless ``BHIV_AGENTS_LLM=off``. Tasks and workflows run in a pool of
    ``BHIV_TASKS_CONCURRENCY`` with ``BHIV_TASKS_QUEUE`` waiting; at start, runs whose worker died
    are resumed (:mod:`~bhiv_core.services.orchestration.runs`). ``catalog`` replaces the twelve
    agents (tests register a scripted one).
    """
    settings = OrchestrationConfig.from_runtime(config)
    store = make_orchestration_store(config)
    index = make_orchestration_index(config)
    knowledge = Knowledge(store, index, clock)
    relay = outbox_relay(config, store)  # documents ingested, to integrations

    async def load_model() -> None:
        if settings.dense:  # about two seconds, once per process: not on the event loop
            index.embedder = await asyncio.to_thread(load_embedder)

    async def prepare() -> None:
        await knowledge.reconcile()
        if settings.sample_corpus:
            await seed_sample_corpus(knowledge)

    channels = PeerChannels(config.peers, extra_interceptors=client_interceptors)
    agents = Agents(
        # The content agent asks integrations (BHIV_INTEGRATIONS_ADDR) the same way, drafting itself
        # only when integrations cannot answer.
        catalog
        if catalog is not None
        else build_catalog(social=ContentClient(lambda: channels.channel("integrations"))),
        index,
        Sessions(store, settings.session_turns, clock),
        disabled=settings.agents_disabled,
        deadline=settings.agent_deadline,
        llm=LlmClient(lambda: channels.channel("llm")) if settings.agents_llm else None,
        min_confidence=min_confidence_setting(config.settings),
    )

    async def load_router() -> None:
        await agents.load_router()  # trained once, in a worker thread, before calls are accepted

    runner = Runner(
        store,
        concurrency=settings.tasks_concurrency,
        queue=settings.tasks_queue,
        lease=settings.tasks_lease,
        clock=clock,
    )
    tasks = Tasks(store, agents, runner, clock)
    workflows = Workflows(store, agents, runner, clock)

    rest = OrchestrationServicer()
    servicers: dict[str, object] = {
        "KnowledgeService": KnowledgeServicer(knowledge),
        "AgentService": AgentServicer(agents),
        "TaskService": TaskServicer(tasks),
        "WorkflowService": WorkflowServicer(workflows),
    }
    return runtime.ServiceDefinition(
        name=NAME,
        servicers=[(s, servicers.get(s.name, rest)) for s in services_of_package("bhiv.orchestration.v1")],
        missing=MISSING,
        checks={"store": store.ping, "index": index.ping},
        on_start=[store.open, load_model, index.open, prepare, load_router, relay.start, runner.start_loop],
        on_stop=[runner.stop, relay.stop, channels.close, index.close, store.close],
    )


async def build_server(config: RuntimeConfig) -> runtime.RunningService:
    """Builds and starts the orchestration server."""
    return await runtime.start_service(config, definition(config), standard_chain)


def serve() -> None:
    """Runs the orchestration service until SIGTERM."""
    runtime.serve(NAME, definition, chain=standard_chain)
