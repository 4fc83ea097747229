"""The orchestrator's agents through the real edge: grpcurl, generated stubs and gRPC-web.

One mesh (seven services and Envoy) with the sample corpus ingested on its first start, offline (no
``GROQ_API_KEY``): every answer is extractive, and every source it cites must be a span of one of
the corpus files shipped in ``bhiv_core.knowledge.corpus`` (or of a document the test ingested).
"""

from __future__ import annotations

import asyncio
import http.client
import io
import json
import math
import re
import secrets
import struct
import time
import wave
from pathlib import Path
from typing import Any

import grpc
import pytest

from bhiv.orchestration.v1 import agent_pb2
from bhiv.orchestration.v1 import agent_service_pb2 as ags
from bhiv.orchestration.v1 import agent_service_pb2_grpc as ags_grpc
from bhiv.orchestration.v1 import knowledge_service_pb2 as ks
from bhiv.orchestration.v1 import knowledge_service_pb2_grpc as ks_grpc
from bhiv_core.agents.base import AGENT_INTENTS
from bhiv_core.knowledge.corpus import SAMPLES, read_sample
from bhiv_core.mesh import Mesh
from tests.e2e.client import CALL_TIMEOUT, Session, create_user
from tests.e2e.test_crm import create_customer, unique_email
from tests.e2e.test_edge import grpcurl, parse_frames
from tests.services.orchestration.pdf import pdf_of

pytestmark = pytest.mark.e2e

GITA_QUESTION = "What does the Gita say about acting without attachment to results?"
CORPUS = {sample.title: read_sample(sample) for sample in SAMPLES}
"""The sample corpus as shipped, by document title: every source of a corpus answer is a span of one."""
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
ASK_TIMEOUT = 60.0
"""Seconds an agent call may take: the first OCR or transcription loads its model."""


def field_of(source: Any, name: str) -> Any:
    """A Passage field from a message or grpcurl's JSON (which omits zero values)."""
    if isinstance(source, dict):
        return source.get(name, 0 if name.startswith("span") else "")
    return getattr(source, name)


def assert_verbatim_in_corpus(source: Any) -> None:
    """The source names a corpus document, a section, and a span whose text is the source's text."""
    title = field_of(source, "document_title")
    assert title in CORPUS, f"{title!r} is not a sample corpus document"
    start, end = int(field_of(source, "span_start")), int(field_of(source, "span_end"))
    assert 0 <= start < end
    assert CORPUS[title][start:end] == field_of(source, "text")
    assert field_of(source, "document").startswith("documents/")
    assert field_of(source, "section")
    assert 0 < float(field_of(source, "score")) <= 1


def png_with_text(text: str, size: tuple[int, int] = (640, 160)) -> bytes:
    """A PNG showing ``text`` in black on white, large enough to read (Pillow)."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", size, "white")
    font = ImageFont.load_default(size=56)
    ImageDraw.Draw(image).text((24, 40), text, fill="black", font=font)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def tone_wav(seconds: float = 1.5, rate: int = 16000, hz: float = 440.0) -> bytes:
    """A mono 16-bit PCM WAV of a sine tone (no speech: the audio agent still reports its duration)."""
    frames = b"".join(
        struct.pack("<h", int(12000 * math.sin(2 * math.pi * hz * i / rate)))
        for i in range(int(seconds * rate))
    )
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(frames)
    return out.getvalue()


def speech_fixture() -> Path | None:
    """Synthesised speech committed with the audio agent (tests/fixtures), when it exists."""
    path = FIXTURES / "speech_meeting.wav"
    return path if path.exists() else None


async def ask(channel: grpc.aio.Channel, session: Session, query: str, **fields: Any) -> agent_pb2.Answer:
    reply = await ags_grpc.AgentServiceStub(channel).Ask(
        ags.AskRequest(query=query, **fields), metadata=session.metadata, timeout=ASK_TIMEOUT
    )
    return reply.answer


async def invoke(channel: grpc.aio.Channel, session: Session, agent: str, **fields: Any) -> agent_pb2.Answer:
    reply = await ags_grpc.AgentServiceStub(channel).InvokeAgent(
        ags.InvokeAgentRequest(name=f"agents/{agent}", **fields),
        metadata=session.metadata,
        timeout=ASK_TIMEOUT,
    )
    return reply.answer


def check_stream_order(events: list[ags.StreamAskResponse]) -> tuple[ags.RoutingDecision, str, list[Any]]:
    """Asserts the contract's event order (routing, chunks, sources, done); returns the parts."""
    kinds = [event.WhichOneof("event") for event in events]
    assert kinds[0] == "routing", kinds
    assert kinds[-2:] == ["sources", "done"], kinds
    assert kinds[1:-2] and set(kinds[1:-2]) == {"chunk"}, kinds
    text = "".join(event.chunk.text for event in events[1:-2])
    return events[0].routing, text, list(events[-2].sources.sources)


# --- Ask through grpcurl: the newcomer's question ---------------------------------------------


def test_grpcurl_asks_the_gita_question_and_gets_a_grounded_answer_from_the_corpus(
    mesh: Mesh, admin: Session
) -> None:
    started = time.perf_counter()
    out = grpcurl(
        mesh,
        "-H",
        f"authorization: Bearer {admin.access_token}",
        "-d",
        json.dumps({"query": GITA_QUESTION}),
        "bhiv.orchestration.v1.AgentService/Ask",
    )
    elapsed = time.perf_counter() - started
    print(f"\nAsk (grpcurl through the edge, offline, process start included): {elapsed * 1000:.0f} ms")
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)["answer"]
    assert answer["agent"] == "agents/vedas"
    assert answer["intent"] in AGENT_INTENTS["vedas"]
    assert 0 < answer["confidence"] <= 1
    assert answer["input_type"] == "INPUT_TYPE_TEXT"
    assert answer["method"] == "ANSWER_METHOD_EXTRACTIVE" and not answer.get("model")
    sources = answer["sources"]
    assert sources
    for source in sources:
        assert_verbatim_in_corpus(source)
    top = sources[0]
    assert top["document_title"] == "The Bhagavad Gita on Action"
    assert top["section"] == "Acting Without Attachment to Results"
    assert "right to your work but never to its fruits" in answer["text"]


# --- StreamAsk over native gRPC and gRPC-web --------------------------------------------------


async def test_stream_ask_streams_routing_chunks_sources_done_and_the_chunks_are_the_answer(
    mesh: Mesh, admin: Session
) -> None:
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        whole = await ask(channel, admin, GITA_QUESTION)
        call = ags_grpc.AgentServiceStub(channel).StreamAsk(
            ags.StreamAskRequest(query=GITA_QUESTION), metadata=admin.metadata, timeout=ASK_TIMEOUT
        )
        events = [event async for event in call]
    routing, text, sources = check_stream_order(events)
    assert routing.agent == whole.agent == "agents/vedas"
    assert routing.intent == whole.intent
    assert routing.confidence == pytest.approx(whole.confidence)
    assert routing.input_type == agent_pb2.INPUT_TYPE_TEXT
    assert text == whole.text and text
    assert sources == list(whole.sources)
    for source in sources:
        assert_verbatim_in_corpus(source)
    assert events[-1].done.method == agent_pb2.ANSWER_METHOD_EXTRACTIVE


def stream_ask_over_grpc_web(
    mesh: Mesh, session: Session, request: ags.StreamAskRequest
) -> tuple[int, bytes]:
    """A hand-framed gRPC-web StreamAsk through the edge; returns the HTTP status and the whole body."""
    message = request.SerializeToString()
    conn = http.client.HTTPConnection(mesh.host, mesh.edge_port, timeout=ASK_TIMEOUT)
    try:
        conn.request(
            "POST",
            "/bhiv.orchestration.v1.AgentService/StreamAsk",
            body=struct.pack(">BI", 0, len(message)) + message,
            headers={
                "content-type": "application/grpc-web+proto",
                "x-grpc-web": "1",
                "accept": "application/grpc-web",
                "origin": "http://localhost:3000",
                "authorization": f"Bearer {session.access_token}",
            },
        )
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


async def test_stream_ask_works_over_grpc_web_through_the_edge(mesh: Mesh, admin: Session) -> None:
    request = ags.StreamAskRequest(query=GITA_QUESTION)
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        native = [
            event
            async for event in ags_grpc.AgentServiceStub(channel).StreamAsk(
                request, metadata=admin.metadata, timeout=ASK_TIMEOUT
            )
        ]
    status, body = await asyncio.to_thread(stream_ask_over_grpc_web, mesh, admin, request)
    assert status == 200
    messages, trailers = parse_frames(body)
    assert trailers["grpc-status"] == "0", trailers
    web = [ags.StreamAskResponse.FromString(message) for message in messages]
    routing, text, sources = check_stream_order(web)
    native_routing, native_text, native_sources = check_stream_order(native)
    assert routing == native_routing
    assert text == native_text
    assert sources == native_sources
    for source in sources:
        assert_verbatim_in_corpus(source)


# --- A PDF ingested, then found by search and by the file search agent ------------------------


async def test_an_ingested_pdf_is_found_by_search_by_file_search_and_by_a_routed_ask(
    mesh: Mesh, admin: Session
) -> None:
    word = f"zyl{secrets.token_hex(3)}"  # a word no other document has
    line = f"The {word} heliotrope turbine is oiled every ninety days by the harbour crew."
    title = f"Heliotrope turbine manual {word}"
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        knowledge = ks_grpc.KnowledgeServiceStub(channel)
        document = (
            await knowledge.IngestDocument(
                ks.IngestDocumentRequest(
                    title=title,
                    mime_type="application/pdf",
                    data=pdf_of([line, "Spare turbine blades are kept in the east shed."]),
                    tags=["e2e", "manuals"],
                ),
                metadata=admin.metadata,
                timeout=CALL_TIMEOUT,
            )
        ).document
        try:
            assert document.mime_type == "application/pdf"
            found = await knowledge.SearchKnowledge(
                ks.SearchKnowledgeRequest(query=f"how often is the {word} turbine oiled?", top_k=3),
                metadata=admin.metadata,
                timeout=CALL_TIMEOUT,
            )
            top = found.passages[0]
            assert top.document == document.name
            assert top.section == "Page 1"
            assert top.text == line

            by_agent = await invoke(channel, admin, "file_search", query=f"{word} turbine manual")
            assert by_agent.agent == "agents/file_search" and by_agent.confidence == 1
            assert by_agent.sources and by_agent.sources[0].document == document.name
            assert title in by_agent.text

            routed = await ask(channel, admin, f"find the document about the {word} heliotrope turbine")
            assert routed.agent == "agents/file_search"
            assert routed.intent == "find_documents"
            assert routed.sources and routed.sources[0].document == document.name
            assert title in routed.text
        finally:
            await knowledge.DeleteDocument(
                ks.DeleteDocumentRequest(name=document.name), metadata=admin.metadata, timeout=CALL_TIMEOUT
            )


# --- Media: an image and a recording ----------------------------------------------------------


async def test_an_image_is_read_by_the_image_agent_invoked_or_routed(mesh: Mesh, admin: Session) -> None:
    png = png_with_text("LOTUS 2026")
    attachment = agent_pb2.Attachment(mime_type="image/png", file_name="sign.png", data=png)
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        invoked = await invoke(channel, admin, "image", attachments=[attachment])
        routed = await ask(channel, admin, "", attachments=[attachment])
    for answer in (invoked, routed):
        assert answer.agent == "agents/image"
        assert answer.input_type == agent_pb2.INPUT_TYPE_IMAGE
        assert "PNG" in answer.text and "640x160" in answer.text
        assert "LOTUS" in answer.text.upper() and "2026" in answer.text
    assert invoked.confidence == 1
    assert routed.intent == "describe_image"


async def test_a_recording_is_handled_by_the_audio_agent_with_its_duration(
    mesh: Mesh, admin: Session
) -> None:
    speech = speech_fixture()
    if speech is not None:  # "The meeting is tomorrow morning at the office." (tests/fixtures/README.md)
        data = speech.read_bytes()
        with wave.open(io.BytesIO(data)) as wav:
            seconds = wav.getnframes() / wav.getframerate()
        words = ("tomorrow", "morning")
    else:
        seconds, data, words = 1.5, tone_wav(1.5), ()
    attachment = agent_pb2.Attachment(mime_type="audio/wav", file_name="clip.wav", data=data)
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        invoked = await invoke(channel, admin, "audio", attachments=[attachment])
        routed = await ask(channel, admin, "", attachments=[attachment])
    for answer in (invoked, routed):
        assert answer.agent == "agents/audio"
        assert answer.input_type == agent_pb2.INPUT_TYPE_AUDIO
        assert f"{seconds:.1f} seconds" in answer.text, answer.text
        assert all(word in answer.text.lower() for word in words), answer.text
    assert routed.intent == "transcribe_audio"
    print(f"\naudio agent on {speech or 'a generated tone'}: {invoked.text!r}")


# --- What a customer may do -------------------------------------------------------------------


async def test_a_customer_may_ask_but_not_ingest_or_delete_documents(mesh: Mesh, admin: Session) -> None:
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        own = await create_customer(channel, admin, first_name="Mira", email=unique_email("agents"))
        customer = await create_user(mesh, admin, "customer", customer=own.name)
        answer = await ask(channel, customer, GITA_QUESTION)
        assert answer.agent == "agents/vedas" and answer.sources
        knowledge = ks_grpc.KnowledgeServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as ingest:
            await knowledge.IngestDocument(
                ks.IngestDocumentRequest(title="Mine", mime_type="text/plain", text="# Mine\n\nA note."),
                metadata=customer.metadata,
                timeout=CALL_TIMEOUT,
            )
        assert ingest.value.code() == grpc.StatusCode.PERMISSION_DENIED
        existing = answer.sources[0].document
        with pytest.raises(grpc.aio.AioRpcError) as delete:
            await knowledge.DeleteDocument(
                ks.DeleteDocumentRequest(name=existing), metadata=customer.metadata, timeout=CALL_TIMEOUT
            )
        assert delete.value.code() == grpc.StatusCode.PERMISSION_DENIED
        still = await knowledge.GetDocument(
            ks.GetDocumentRequest(name=existing), metadata=admin.metadata, timeout=CALL_TIMEOUT
        )
        assert still.document.name == existing


# --- The twelve ------------------------------------------------------------------------------


async def test_list_agents_lists_the_twelve_enabled_in_id_order(mesh: Mesh, admin: Session) -> None:
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        listed = await ags_grpc.AgentServiceStub(channel).ListAgents(
            ags.ListAgentsRequest(), metadata=admin.metadata, timeout=CALL_TIMEOUT
        )
    names = [agent.name for agent in listed.agents]
    assert names == sorted(f"agents/{agent}" for agent in AGENT_INTENTS)
    assert not listed.next_page_token
    for agent in listed.agents:
        assert agent.enabled and agent.display_name and agent.description and agent.input_types
        assert tuple(agent.intents) == AGENT_INTENTS[agent.name.removeprefix("agents/")]


LONG_TEXT = (
    "The warehouse moved to a new building in March. The move took three weeks and every shelf was "
    "relabelled. Orders shipped late during the first week, but the team caught up by the end of the "
    "month. The new building has a loading dock for four trucks at once, twice as many as before. "
    "Staff now take a shuttle from the station, which runs every twenty minutes in the morning. "
    "Next year the company plans to add a second floor for returns and repairs."
)


def invocation(agent: str) -> tuple[dict[str, Any], str | None]:
    """A suitable request for ``agent`` and a word its answer must contain (case-insensitive)."""
    text = {
        "vedas": ("What is dharma in the Vedic tradition?", "dharma"),
        "edumentor": ("How should I revise so that I remember what I study?", None),
        "wellness": ("What is the vata dosha?", "vata"),
        "knowledge": ("How long do refunds take?", "refund"),
        "qna": ("When is support open?", None),
        "summarizer": (f"Summarize this: {LONG_TEXT}", None),
        "planner": ("Plan how to learn the eight limbs of yoga in four weeks", None),
        "file_search": ("find the documents about refunds and shipping", "BHIV Platform Policies"),
        "text": ("Extract the keywords: the monsoon trucks leave the north dock at night", "monsoon"),
        "content": ("Write a social post announcing our new guide to Ayurveda", "ayurveda"),
    }
    if agent in text:
        query, expected = text[agent]
        return {"query": query}, expected
    if agent == "image":
        png = png_with_text("OM 108")
        return {"attachments": [agent_pb2.Attachment(mime_type="image/png", data=png)]}, "108"
    return {"attachments": [agent_pb2.Attachment(mime_type="audio/wav", data=tone_wav(2.0))]}, "2.0 seconds"


GROUNDED = ("vedas", "edumentor", "wellness", "knowledge", "qna")


@pytest.mark.parametrize("agent", sorted(AGENT_INTENTS))
async def test_every_agent_answers_when_invoked_through_the_edge(
    mesh: Mesh, admin: Session, agent: str
) -> None:
    fields, expected = invocation(agent)
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        answer = await invoke(channel, admin, agent, **fields)
    assert answer.agent == f"agents/{agent}"
    assert answer.confidence == 1
    assert answer.intent in AGENT_INTENTS[agent]
    assert answer.text.strip()
    assert answer.method == agent_pb2.ANSWER_METHOD_EXTRACTIVE
    if expected is not None:
        assert expected.lower() in answer.text.lower(), answer.text
    if agent in GROUNDED:
        assert answer.sources
        for source in answer.sources:
            assert_verbatim_in_corpus(source)
    if agent == "summarizer":
        assert len(answer.text) < len(LONG_TEXT)
        assert all(sentence in LONG_TEXT for sentence in re.split(r"(?<=\.)\s+", answer.text.strip()))


ROUTED = {
    "qna": "hello there!",  # a greeting: qna answers it without searching
    "file_search": "find the documents about refunds and shipping",
}
"""A routed query for the agents whose ``invocation`` query the router sends elsewhere."""


@pytest.mark.parametrize("agent", sorted(AGENT_INTENTS))
async def test_every_agent_is_reached_by_a_routed_ask_through_the_edge(
    mesh: Mesh, admin: Session, agent: str
) -> None:
    fields, _ = invocation(agent)
    if agent in ROUTED:
        fields = {"query": ROUTED[agent]}
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        answer = (
            await ags_grpc.AgentServiceStub(channel).Ask(
                ags.AskRequest(**fields), metadata=admin.metadata, timeout=ASK_TIMEOUT
            )
        ).answer
    assert answer.agent == f"agents/{agent}"
    assert answer.intent in AGENT_INTENTS[agent]
    assert 0 < answer.confidence <= 1
    assert answer.text.strip()
    for source in answer.sources:
        if source.document_title in CORPUS:
            assert_verbatim_in_corpus(source)


async def test_an_unknown_agent_is_not_found_and_empty_input_is_invalid(mesh: Mesh, admin: Session) -> None:
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await invoke(channel, admin, "oracle", query="Will it rain?")
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as empty:
            await ask(channel, admin, "")
        assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
