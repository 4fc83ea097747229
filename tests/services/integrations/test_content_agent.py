"""The orchestrator's content agent writes through integrations' GenerateSocialContent, as the caller.

Orchestration (sample corpus, BM25) and integrations run their real definitions behind the real
chain. Integrations' auth stand-in accepts only the caller's token and records every call, so the
test sees that the agent's request reached integrations, as the caller, in the caller's trace.
When integrations is down or refuses the caller, the agent drafts the posts itself and says so.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from bhiv.orchestration.v1 import agent_pb2, agent_service_pb2_grpc
from bhiv.orchestration.v1 import agent_service_pb2 as asv
from bhiv_core.mesh import free_port
from bhiv_core.runtime.server import start_service
from bhiv_core.security.principal import Principal
from bhiv_core.services.integrations import server as integrations_server
from bhiv_core.services.llm import server as llm_server
from bhiv_core.services.orchestration import server as orchestration_server
from tests.harness import config_for
from tests.services.integrations.content_served import SALLY, SALLY_TOKEN, TRACE_ID, groq_env
from tests.services.llm.conftest import FakeGroq, fake_groq  # noqa: F401 - the fixture
from tests.services.logistics.conftest import HeaderAuth, role
from tests.services.orchestration.test_agents_llm import BearerAuth, _chain

ASK = asv.InvokeAgentRequest(
    name="agents/content", query="Write a social post announcing our new guide to Ayurveda"
)
GENERATE = "/bhiv.integrations.v1.ContentService/GenerateSocialContent"
SUPPORT = role("support", subject="users/sam")
SAM_TOKEN = "token-of-users-sam"


@contextlib.asynccontextmanager
async def agents(
    tmp_path: Path, *, integrations_up: bool = True, groq: FakeGroq | None = None
) -> AsyncIterator[tuple[agent_service_pb2_grpc.AgentServiceAsyncStub, BearerAuth]]:
    """Orchestration whose content agent asks integrations, and the auth of integrations (and llm).

    Integrations writes offline; with ``groq``, it asks an llm keyed to it (the same auth stand-in).
    """
    (tmp_path / "orchestration").mkdir(parents=True)
    (tmp_path / "integrations").mkdir(parents=True)
    auth = BearerAuth(
        {
            SALLY_TOKEN: Principal("users/sally", "sales", token=SALLY_TOKEN),
            SAM_TOKEN: Principal("users/sam", "support", token=SAM_TOKEN),
        }
    )
    integrations = llm = None
    peers = {"CONTENT_LLM": "off"}
    if groq is not None:
        (tmp_path / "llm").mkdir(parents=True)
        llm_config = config_for("llm", DATA_DIR=str(tmp_path / "llm"), **groq_env(tmp_path / "llm", groq))
        llm = await start_service(
            llm_config, llm_server.definition(llm_config, environ={}), _chain("llm.bhiv.core", auth)
        )
        peers = {"CONTENT_LLM": "auto", "LLM_ADDR": llm.address}
    if integrations_up:
        config = config_for("integrations", DATA_DIR=str(tmp_path / "integrations"), **peers)
        integrations = await start_service(
            config, integrations_server.definition(config), _chain("integrations.bhiv.core", auth)
        )
    config = config_for(
        "orchestration",
        DATA_DIR=str(tmp_path / "orchestration"),
        INTEGRATIONS_ADDR=integrations.address if integrations else f"127.0.0.1:{free_port()}",
        KNOWLEDGE_DENSE="off",
        AGENTS_LLM="off",
    )
    orchestration = await start_service(
        config, orchestration_server.definition(config), _chain("orchestration.bhiv.core", HeaderAuth())
    )
    channel = grpc.aio.insecure_channel(orchestration.address)
    try:
        yield agent_service_pb2_grpc.AgentServiceStub(channel), auth
    finally:
        await channel.close()
        await orchestration.stop(grace=0.5)
        if integrations is not None:
            await integrations.stop(grace=0.5)
        if llm is not None:
            await llm.stop(grace=0.5)


async def test_the_agents_posts_come_from_integrations_for_the_caller(tmp_path: Path) -> None:
    async with agents(tmp_path) as (stub, integrations_auth):
        answer = (await stub.InvokeAgent(ASK, metadata=SALLY)).answer
    [headers] = [h for m, h in integrations_auth.calls if m == GENERATE]
    assert headers["authorization"] == f"Bearer {SALLY_TOKEN}"  # the caller, not orchestration
    assert headers["traceparent"].split("-")[1] == TRACE_ID
    assert answer.text.endswith("(Written by the integrations service: offline template-extract.)")
    assert answer.method == agent_pb2.ANSWER_METHOD_EXTRACTIVE and answer.model == ""
    for name in ("X", "LinkedIn", "Instagram", "Facebook"):
        assert f"\n{name} (" in f"\n{answer.text}"
    assert "Announcing our new guide to Ayurveda." in answer.text and "#Ayurveda" in answer.text
    assert answer.sources and "Ayurveda" in answer.sources[0].document_title


async def test_the_models_posts_reach_the_agent_through_integrations_with_the_callers_token(
    tmp_path: Path,
    fake_groq: FakeGroq,  # noqa: F811 - the fixture
) -> None:
    fake_groq.replies.append(["[X]\nOur Ayurveda guide is here: three doshas, one balance. #Ayurveda"])
    request = asv.InvokeAgentRequest(
        name="agents/content", query="Write a tweet announcing our new guide to Ayurveda"
    )
    async with agents(tmp_path, groq=fake_groq) as (stub, auth):
        answer = (await stub.InvokeAgent(request, metadata=SALLY)).answer
    assert (answer.method, answer.model) == (agent_pb2.ANSWER_METHOD_LLM, "models/llama-3.1-8b-instant")
    assert answer.text.startswith("X (")
    assert "Our Ayurveda guide is here: three doshas, one balance. #Ayurveda" in answer.text
    assert answer.text.endswith("(Written by the integrations service: groq llama-3.1-8b-instant.)")
    # Two hops, one caller: orchestration → integrations → llm, each with sally's token and trace.
    hops = [(m, h) for m, h in auth.calls if m == GENERATE or m.endswith("/StreamComplete")]
    assert [m.rsplit("/", 1)[1] for m, _ in hops] == ["GenerateSocialContent", "StreamComplete"]
    for _, headers in hops:
        assert headers["authorization"] == f"Bearer {SALLY_TOKEN}"
        assert headers["traceparent"].split("-")[1] == TRACE_ID


async def test_a_long_attachment_is_cut_to_the_topics_limit_not_refused(tmp_path: Path) -> None:
    text = " ".join(
        f"The warehouse in district {n} now ships orders {n} hours faster than last year."
        for n in range(1, 80)
    )
    assert len(text) > 5000
    request = asv.InvokeAgentRequest(
        name="agents/content",
        query="Write a LinkedIn post about this",
        attachments=[agent_pb2.Attachment(mime_type="text/plain", text=text)],
    )
    async with agents(tmp_path) as (stub, integrations_auth):
        answer = (await stub.InvokeAgent(request, metadata=SALLY)).answer
    assert answer.text.endswith("(Written by the integrations service: offline template-extract.)")
    assert answer.text.startswith("LinkedIn (") and "warehouse in district" in answer.text
    assert [m for m, _ in integrations_auth.calls if m == GENERATE] == [GENERATE]


async def test_the_agent_drafts_itself_and_says_so_when_integrations_cannot(tmp_path: Path) -> None:
    async with agents(tmp_path / "down", integrations_up=False) as (stub, _):
        down = (await stub.InvokeAgent(ASK, metadata=SALLY)).answer
    assert "The integrations service did not write these posts: UNAVAILABLE" in down.text
    assert "The content agent drafted them itself." in down.text
    assert down.text.startswith("X (") and "Announcing our new guide to Ayurveda." in down.text
    async with agents(tmp_path / "refused") as (stub, integrations_auth):
        refused = (await stub.InvokeAgent(ASK, metadata=SUPPORT)).answer
    assert [h["authorization"] for m, h in integrations_auth.calls if m == GENERATE] == [
        f"Bearer {SAM_TOKEN}"
    ]
    assert "did not write these posts: PERMISSION_DENIED" in refused.text
    assert "Announcing our new guide to Ayurveda." in refused.text
