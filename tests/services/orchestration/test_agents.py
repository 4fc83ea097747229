"""AgentService against a served orchestration: the catalog, Ask, StreamAsk, InvokeAgent, sessions.

The orchestration runs its real definition (kit store, knowledge index with the sample corpus,
the twelve agents) behind the real error mapper, RBAC (from the contracts) and validation; the
principal comes from test headers. ``BHIV_AGENTS_LLM=off``: every answer is extractive (the llm
path is tested in ``test_agents_llm.py``).
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from bhiv.orchestration.v1 import agent_pb2, agent_service_pb2_grpc, task_service_pb2, task_service_pb2_grpc
from bhiv.orchestration.v1 import agent_service_pb2 as asv
from bhiv.orchestration.v1 import knowledge_service_pb2 as ks
from bhiv_core.agents.base import AGENT_INTENTS, AgentRequest, AgentSpec, InputType, Reply, Tools
from bhiv_core.agents.catalog import build_catalog
from bhiv_core.knowledge.corpus import SAMPLES, read_sample
from bhiv_core.knowledge.index import KnowledgeIndex
from bhiv_core.resources import ResourceStore, make_resource_store
from bhiv_core.runtime.errors import InvalidArgument
from bhiv_core.security.principal import Principal
from bhiv_core.services.orchestration.agents import Agents
from bhiv_core.services.orchestration.resources import COLLECTIONS, MIGRATIONS
from bhiv_core.services.orchestration.servicer import AgentServicer
from bhiv_core.services.orchestration.sessions import Sessions
from tests.harness import config_for, serving
from tests.services.crm.conftest import as_, reason, refused, violations
from tests.services.orchestration.conftest import Orchestration, chain, serve_orchestration

ADMIN = as_("admin")
OPS = as_("ops")
SUPPORT = as_("support")
CUSTOMER = as_("customer", subject="users/cu", customer="customers/c1")
OTHER_CUSTOMER = as_("customer", subject="users/cv", customer="customers/c2")

GITA = "What does the Gita say about acting without attachment to results?"
CORPUS = {sample.title: read_sample(sample) for sample in SAMPLES}

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Orchestration]:
    """An orchestration with the sample corpus, BM25 only (fast to start), offline agents."""
    async with serve_orchestration(tmp_path, KNOWLEDGE_DENSE="off", AGENTS_LLM="off") as orchestration:
        yield orchestration


def stub(orchestration: Orchestration) -> Any:
    return agent_service_pb2_grpc.AgentServiceStub(orchestration.channel)


def assert_grounded(answer: Any) -> None:
    """Every source is verbatim in its corpus document, and every cited sentence in its source."""
    assert answer.sources
    for source in answer.sources:
        assert CORPUS[source.document_title][source.span_start : source.span_end] == source.text
        assert 0 < source.score <= 1
    cited = re.findall(r"([^\[\]]+?) \[(\d+)\]", answer.text)
    assert cited, answer.text
    for sentence, number in cited:
        claim = sentence.strip().split(": ", 1)[-1].strip()
        assert claim in answer.sources[int(number) - 1].text, (claim, number)


# ---- the catalog ------------------------------------------------------------------------------


async def test_list_agents_pages_filters_and_reports_disabled_agents(tmp_path: Path) -> None:
    async with serve_orchestration(
        tmp_path, KNOWLEDGE_SAMPLE_CORPUS="off", KNOWLEDGE_DENSE="off", AGENTS_DISABLED="image,audio"
    ) as orchestration:
        agents = stub(orchestration)
        listed = await agents.ListAgents(asv.ListAgentsRequest(), metadata=CUSTOMER)
        names = [a.name for a in listed.agents]
        assert names == [f"agents/{id}" for id in sorted(AGENT_INTENTS)]
        assert listed.next_page_token == ""
        by_name = {a.name: a for a in listed.agents}
        assert not by_name["agents/image"].enabled and by_name["agents/vedas"].enabled
        assert list(by_name["agents/qna"].intents) == ["question", "greeting", "small_talk"]

        seen, token = [], ""
        while True:
            page = await agents.ListAgents(asv.ListAgentsRequest(page_size=5, page_token=token), metadata=OPS)
            assert len(page.agents) <= 5
            seen += [a.name for a in page.agents]
            token = page.next_page_token
            if not token:
                break
        assert seen == names

        images = await agents.ListAgents(
            asv.ListAgentsRequest(input_type=agent_pb2.INPUT_TYPE_IMAGE), metadata=OPS
        )
        assert [a.name for a in images.agents] == ["agents/image"]
        enabled = await agents.ListAgents(asv.ListAgentsRequest(enabled_only=True), metadata=OPS)
        assert {a.name for a in enabled.agents} == set(names) - {"agents/image", "agents/audio"}

        err = await refused(agents.ListAgents(asv.ListAgentsRequest(page_token="nope"), metadata=OPS))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert ("page_token", "INVALID_PAGE_TOKEN") in violations(err)
        err = await refused(agents.ListAgents(asv.ListAgentsRequest(page_size=-1), metadata=OPS))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT

        got = await agents.GetAgent(asv.GetAgentRequest(name="agents/vedas"), metadata=CUSTOMER)
        assert got.agent == by_name["agents/vedas"]
        err = await refused(agents.GetAgent(asv.GetAgentRequest(name="agents/oracle"), metadata=OPS))
        assert err.code() == grpc.StatusCode.NOT_FOUND


# ---- Ask: routing and grounded answers ---------------------------------------------------------


async def test_the_gita_question_goes_to_vedas_with_real_sources(served: Orchestration) -> None:
    started = time.perf_counter()
    answer = (await stub(served).Ask(asv.AskRequest(query=GITA), metadata=CUSTOMER)).answer
    elapsed = time.perf_counter() - started
    print(f"\nAsk (offline, BM25, sample corpus): {elapsed * 1000:.1f} ms")
    assert (answer.agent, answer.intent, answer.input_type) == (
        "agents/vedas",
        "vedic_knowledge",
        agent_pb2.INPUT_TYPE_TEXT,
    )
    assert 0 < answer.confidence <= 1
    assert (answer.method, answer.model) == (agent_pb2.ANSWER_METHOD_EXTRACTIVE, "")
    assert (answer.sources[0].document_title, answer.sources[0].section) == (
        "The Bhagavad Gita on Action",
        "Acting Without Attachment to Results",
    )
    assert "right to your work but never to its fruits" in answer.text
    assert_grounded(answer)
    assert len(answer.sources) <= 5


async def test_each_grounded_persona_answers_from_its_material(served: Orchestration) -> None:
    cases = {
        "How does spaced repetition help me study for an exam?": (
            "agents/edumentor",
            "Study Skills That Work",
        ),
        "What is the pitta dosha in Ayurveda?": ("agents/wellness", "Ayurveda and the Three Doshas"),
        "How long do I have to ask for a refund?": ("agents/knowledge", "BHIV Platform Policies"),
    }
    for query, (agent, title) in cases.items():
        answer = (await stub(served).Ask(asv.AskRequest(query=query, max_sources=2), metadata=SUPPORT)).answer
        assert answer.agent == agent, query
        assert answer.sources[0].document_title.startswith(title), query
        assert len(answer.sources) <= 2
        assert_grounded(answer)
    wellness = (await stub(served).Ask(asv.AskRequest(query="What is the pitta dosha?"), metadata=OPS)).answer
    assert "not medical advice" in wellness.text


async def test_hello_goes_to_qna_without_sources(served: Orchestration) -> None:
    answer = (await stub(served).Ask(asv.AskRequest(query="hello"), metadata=CUSTOMER)).answer
    assert (answer.agent, answer.intent) == ("agents/qna", "greeting")
    assert list(answer.sources) == []
    assert answer.text.startswith("Hello")


async def test_nothing_above_the_floor_is_i_dont_know_with_no_sources(served: Orchestration) -> None:
    grounded = {"agents/vedas", "agents/edumentor", "agents/wellness", "agents/knowledge", "agents/qna"}
    for query in (
        "What is the boiling point of mercury?",
        "Explain kubernetes pods",
        "How many moons has Jupiter?",
    ):
        answer = (await stub(served).Ask(asv.AskRequest(query=query), metadata=CUSTOMER)).answer
        assert answer.agent in grounded, query
        assert list(answer.sources) == [], query
        assert "don't know" in answer.text, query


async def test_file_search_ranks_documents_with_their_best_passage(served: Orchestration) -> None:
    ops = served.knowledge
    doc = (
        await ops.IngestDocument(
            ks.IngestDocumentRequest(
                title="Monsoon logistics",
                mime_type="text/plain",
                text="# Monsoon\n\nShipping during the monsoon takes longer; late refunds are automatic.",
            ),
            metadata=OPS,
        )
    ).document
    answer = (
        await stub(served).Ask(asv.AskRequest(query="find documents about monsoon shipping"), metadata=OPS)
    ).answer
    assert answer.agent == "agents/file_search"
    assert answer.sources[0].document == doc.name
    assert {s.document for s in answer.sources} >= {doc.name}
    assert len({s.document for s in answer.sources}) == len(answer.sources)  # one per document
    assert "Monsoon logistics" in answer.text


# ---- StreamAsk ---------------------------------------------------------------------------------


async def test_stream_ask_sends_routing_chunks_sources_then_done(served: Orchestration) -> None:
    agents = stub(served)
    events = [e async for e in agents.StreamAsk(asv.StreamAskRequest(query=GITA), metadata=CUSTOMER)]
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "routing" and kinds[-2:] == ["sources", "done"]
    assert set(kinds[1:-2]) == {"chunk"} and len(kinds) > 4  # several pieces
    assert events[0].routing.agent == "agents/vedas"
    whole = (await agents.Ask(asv.AskRequest(query=GITA), metadata=CUSTOMER)).answer
    assert "".join(e.chunk.text for e in events[1:-2]) == whole.text
    assert list(events[-2].sources.sources) == list(whole.sources)
    assert events[-1].done.method == agent_pb2.ANSWER_METHOD_EXTRACTIVE


async def test_stream_ask_errors_come_before_any_event(served: Orchestration) -> None:
    call = stub(served).StreamAsk(asv.StreamAskRequest(query="  "), metadata=CUSTOMER)
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for event in call:
            received.append(event)
    assert received == []
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert ("query", "REQUIRED") in violations(caught.value)


# ---- bad input and routing failures ------------------------------------------------------------


async def test_malformed_attachments_are_invalid_argument_with_their_field(served: Orchestration) -> None:
    agents = stub(served)
    cases = [
        (agent_pb2.Attachment(mime_type="text/plain"), ("attachments[0].content", "REQUIRED")),
        (
            agent_pb2.Attachment(input_type=agent_pb2.INPUT_TYPE_IMAGE, text="not an image"),
            ("attachments[0].input_type", "TYPE_MISMATCH"),
        ),
        (
            agent_pb2.Attachment(input_type=agent_pb2.INPUT_TYPE_IMAGE, data=PDF),
            ("attachments[0].input_type", "TYPE_MISMATCH"),
        ),
        (
            agent_pb2.Attachment(data=b"\x00\x01\x02garbage\x81"),
            ("attachments[0].data", "UNSUPPORTED_MEDIA_TYPE"),
        ),
        (
            agent_pb2.Attachment(mime_type="image/png", data=PDF),
            ("attachments[0].mime_type", "MEDIA_TYPE_MISMATCH"),
        ),
    ]
    for attachment, expected in cases:
        for call in (
            agents.Ask(asv.AskRequest(query="what is this?", attachments=[attachment]), metadata=OPS),
            agents.InvokeAgent(
                asv.InvokeAgentRequest(name="agents/qna", query="what?", attachments=[attachment]),
                metadata=OPS,
            ),
        ):
            err = await refused(call)
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, expected
            assert expected in violations(err)
    err = await refused(agents.Ask(asv.AskRequest(), metadata=OPS))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert ("query", "REQUIRED") in violations(err)


async def test_invoke_agent_checks_the_agent_and_its_input_types(tmp_path: Path) -> None:
    async with serve_orchestration(
        tmp_path, KNOWLEDGE_DENSE="off", AGENTS_LLM="off", AGENTS_DISABLED="wellness"
    ) as s:
        agents = stub(s)
        answer = (
            await agents.InvokeAgent(
                asv.InvokeAgentRequest(name="agents/vedas", query=GITA), metadata=CUSTOMER
            )
        ).answer
        assert (answer.agent, answer.intent, answer.confidence) == ("agents/vedas", "vedic_knowledge", 1.0)
        assert_grounded(answer)

        keywords = (
            await agents.InvokeAgent(
                asv.InvokeAgentRequest(
                    name="agents/text", query="Extract the keywords: saffron harvest in Kashmir"
                ),
                metadata=OPS,
            )
        ).answer
        assert (keywords.intent, keywords.confidence) == ("extract_keywords", 1.0)
        err = await refused(
            agents.InvokeAgent(asv.InvokeAgentRequest(name="agents/oracle", query="x"), metadata=OPS)
        )
        assert err.code() == grpc.StatusCode.NOT_FOUND
        err = await refused(
            agents.InvokeAgent(asv.InvokeAgentRequest(name="agents/wellness", query="yoga?"), metadata=OPS)
        )
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert reason(err) == "AGENT_DISABLED"
        image = agent_pb2.Attachment(data=PNG, mime_type="image/png")
        err = await refused(
            agents.InvokeAgent(asv.InvokeAgentRequest(name="agents/vedas", attachments=[image]), metadata=OPS)
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert ("attachments[0].input_type", "TYPE_NOT_ACCEPTED") in violations(err)
        err = await refused(agents.InvokeAgent(asv.InvokeAgentRequest(name="agents/vedas"), metadata=OPS))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        err = await refused(agents.InvokeAgent(asv.InvokeAgentRequest(name="agents/image"), metadata=OPS))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        # Routed wellness questions go to a general agent while wellness is off, never to wellness.
        routed = (await agents.Ask(asv.AskRequest(query="What is the pitta dosha?"), metadata=OPS)).answer
        assert routed.agent == "agents/qna"


async def test_no_enabled_agent_for_the_input_type_is_failed_precondition(tmp_path: Path) -> None:
    async with serve_orchestration(
        tmp_path, KNOWLEDGE_SAMPLE_CORPUS="off", KNOWLEDGE_DENSE="off", AGENTS_DISABLED="image"
    ) as s:
        image = agent_pb2.Attachment(data=PNG)
        for call in (
            stub(s).Ask(asv.AskRequest(attachments=[image]), metadata=OPS),
            stub(s).StreamAsk(asv.StreamAskRequest(attachments=[image]), metadata=OPS),
        ):
            err = await refused(call) if not hasattr(call, "__aiter__") else await _stream_error(call)
            assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert reason(err) == "NO_AGENT_FOR_INPUT_TYPE"


async def _stream_error(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            raise AssertionError("an event before the error")
    return caught.value


async def test_customer_may_ask_but_not_ingest(served: Orchestration) -> None:
    answer = (await stub(served).Ask(asv.AskRequest(query=GITA), metadata=CUSTOMER)).answer
    assert answer.sources
    request = ks.IngestDocumentRequest(title="Mine", mime_type="text/plain", text="# A\n\nText.")
    err = await refused(served.knowledge.IngestDocument(request, metadata=CUSTOMER))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_tasks_are_served_beside_the_agents(served: Orchestration) -> None:
    tasks = task_service_pb2_grpc.TaskServiceStub(served.channel)
    listed = await tasks.ListTasks(task_service_pb2.ListTasksRequest(), metadata=ADMIN)
    assert list(listed.tasks) == []  # the RPCs themselves: tests/services/orchestration/test_tasks.py


# ---- sessions ----------------------------------------------------------------------------------


async def test_session_turns_are_kept_per_principal_and_bounded(tmp_path: Path) -> None:
    async with serve_orchestration(
        tmp_path, KNOWLEDGE_DENSE="off", AGENTS_LLM="off", AGENTS_SESSION_TURNS="2"
    ) as s:
        agents = stub(s)
        for query in ("hello", GITA, "What is karma?"):
            await agents.Ask(asv.AskRequest(query=query, session_id="s-1"), metadata=CUSTOMER)
        await agents.InvokeAgent(
            asv.InvokeAgentRequest(name="agents/qna", query="hi there", session_id="s-1"),
            metadata=OTHER_CUSTOMER,
        )
        _ = [
            e
            async for e in agents.StreamAsk(
                asv.StreamAskRequest(query="hello", session_id="s-2"), metadata=CUSTOMER
            )
        ]
    store = _store(tmp_path, "orchestration")
    await store.open()
    try:
        sessions = Sessions(store, 2)
        mine = await sessions.history(Principal("users/cu", "customer", "customers/c1"), "s-1")
        assert [t.query for t in mine] == [GITA, "What is karma?"]  # the oldest dropped
        assert "fruits" in mine[0].answer
        theirs = await sessions.history(Principal("users/cv", "customer", "customers/c2"), "s-1")
        assert [t.query for t in theirs] == ["hi there"]
        streamed = await sessions.history(Principal("users/cu", "customer", "customers/c1"), "s-2")
        assert [t.query for t in streamed] == ["hello"] and streamed[0].answer.startswith("Hello")
        assert await sessions.history(Principal("users/cu", "customer", "customers/c1"), "s-3") == []
    finally:
        await store.close()


def _store(data_dir: Path, name: str) -> ResourceStore:
    return make_resource_store(
        name=name, collections=COLLECTIONS, migrations=MIGRATIONS, data_dir=data_dir, url=None
    )


# ---- the servicer's handling of agents' failures and deadlines ---------------------------------


class _Scripted:
    """A stand-in agent with the spec of ``qna`` that sleeps, raises or answers as told."""

    def __init__(self, behaviour: str):
        self.spec = AgentSpec("qna", "Q&A", "scripted", (InputType.TEXT,), AGENT_INTENTS["qna"])
        self.behaviour = behaviour
        self.seen: list[AgentRequest] = []

    async def answer(self, request: AgentRequest, tools: Tools) -> Reply:
        import asyncio

        self.seen.append(request)
        if self.behaviour == "slow":
            await asyncio.sleep(30)
        if self.behaviour == "slow-stream":

            async def chunks() -> AsyncIterator[str]:
                yield "first piece. "
                await asyncio.sleep(30)
                yield "never"

            return Reply(chunks=chunks())
        if self.behaviour == "bad-input":
            raise InvalidArgument(violations=[])
        if self.behaviour == "crash":
            raise ZeroDivisionError("boom")
        return Reply.of_text(f"turns seen: {len(request.history)}")


async def _serve_with(tmp_path: Path, agent: _Scripted, **options: Any) -> Any:
    tmp_path.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - a test's temporary folder
    store = _store(tmp_path, "o")
    index = KnowledgeIndex(tmp_path / "k.db")
    catalog = dict(build_catalog())
    catalog["qna"] = agent
    domain = Agents(catalog, index, Sessions(store, 5), **options)
    descriptor = asv.DESCRIPTOR.services_by_name["AgentService"]
    return (
        store,
        index,
        serving([(descriptor, AgentServicer(domain))], chain=chain, config=config_for("orchestration")),
    )


async def test_an_agent_past_its_deadline_is_deadline_exceeded(tmp_path: Path) -> None:
    for behaviour in ("slow", "slow-stream"):
        store, index, server = await _serve_with(tmp_path / behaviour, _Scripted(behaviour), deadline=0.2)
        await store.open()
        await index.open()
        try:
            async with server as (_, channel):
                agents = agent_service_pb2_grpc.AgentServiceStub(channel)
                err = await refused(agents.Ask(asv.AskRequest(query="hello"), metadata=OPS))
                assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, behaviour
                assert reason(err) == "AGENT_DEADLINE_EXCEEDED"
        finally:
            await index.close()
            await store.close()


async def test_agent_errors_keep_clear_statuses_and_history_reaches_the_agent(tmp_path: Path) -> None:
    expected = {"bad-input": grpc.StatusCode.INVALID_ARGUMENT, "crash": grpc.StatusCode.INTERNAL}
    for behaviour, code in expected.items():
        store, index, server = await _serve_with(tmp_path / behaviour, _Scripted(behaviour))
        await store.open()
        await index.open()
        try:
            async with server as (_, channel):
                agents = agent_service_pb2_grpc.AgentServiceStub(channel)
                err = await refused(agents.Ask(asv.AskRequest(query="hello"), metadata=OPS))
                assert err.code() == code, behaviour
                if behaviour == "crash":
                    assert reason(err) == "AGENT_FAILED"
        finally:
            await index.close()
            await store.close()
    agent = _Scripted("ok")
    store, index, server = await _serve_with(tmp_path / "ok", agent)
    await store.open()
    await index.open()
    try:
        async with server as (_, channel):
            agents = agent_service_pb2_grpc.AgentServiceStub(channel)
            for n in range(3):
                answer = (
                    await agents.Ask(asv.AskRequest(query=f"q{n}", session_id="abc"), metadata=OPS)
                ).answer
                assert answer.text == f"turns seen: {n}"
            assert [t.query for t in agent.seen[-1].history] == ["q0", "q1"]
    finally:
        await index.close()
        await store.close()
