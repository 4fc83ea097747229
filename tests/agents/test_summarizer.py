"""The summarizer agent: extractive offline over query text, text and PDF attachments; LLM handling."""

from __future__ import annotations

import re

import pytest

from bhiv_core.agents.base import AgentRequest, Attachment, InputType, Method, Reply
from bhiv_core.agents.llm_text import INTERRUPTED
from bhiv_core.agents.summarizer import MAX_LLM_INPUT_CHARS, SummarizerAgent
from bhiv_core.knowledge import KnowledgeIndex
from bhiv_core.runtime.errors import InvalidArgument
from tests.agents.text_tools import IndexTools, ScriptedLlm
from tests.services.orchestration.pdf import pdf_of

LONG_TEXT = (
    "The warehouse moved to a new building in March. The move took three weeks and every shelf was "
    "relabelled. Orders shipped late during the first week, but the team caught up by the end of the "
    "month. The new building has a loading dock for four trucks at once, twice as many as before. "
    "Staff now take a shuttle from the station, which runs every twenty minutes in the morning. "
    "Next year the company plans to add a second floor for returns and repairs."
)


async def text_of(reply: Reply) -> str:
    return "".join([piece async for piece in reply.chunks])


async def test_a_query_after_an_instruction_is_summarised_by_its_own_sentences(
    sample_index: KnowledgeIndex,
) -> None:
    reply = await SummarizerAgent().answer(
        AgentRequest(f"Summarize this: {LONG_TEXT}"), IndexTools(sample_index)
    )
    text = await text_of(reply)
    assert reply.method == Method.EXTRACTIVE and reply.model == ""
    assert 0 < len(text) < len(LONG_TEXT)
    parts = re.split(r"(?<=\.)\s+", text.strip())
    assert len(parts) == 2  # a quarter of six sentences, at least two
    assert all(part in LONG_TEXT for part in parts)
    assert [LONG_TEXT.index(p) for p in parts] == sorted(LONG_TEXT.index(p) for p in parts)
    assert "Summarize" not in text


async def test_a_text_attachment_is_summarised(sample_index: KnowledgeIndex) -> None:
    attachment = Attachment(0, InputType.TEXT, "text/plain", "notes.txt", LONG_TEXT.encode(), LONG_TEXT)
    reply = await SummarizerAgent().answer(
        AgentRequest("Summarise the attached notes", attachments=[attachment]), IndexTools(sample_index)
    )
    text = await text_of(reply)
    assert text and all(p in LONG_TEXT for p in re.split(r"(?<=\.)\s+", text.strip()))


async def test_a_pdf_attachment_is_read_and_summarised(sample_index: KnowledgeIndex) -> None:
    pages = [
        "The harbour ferry leaves the eastern pier every hour.",
        "Tickets for the harbour ferry are sold at the eastern pier kiosk.",
        "The lighthouse museum opens at nine.",
        "The harbour ferry carries bicycles for free on weekdays.",
    ]
    pdf = Attachment(0, InputType.PDF, "application/pdf", "ferry.pdf", pdf_of(pages))
    reply = await SummarizerAgent().answer(AgentRequest("", attachments=[pdf]), IndexTools(sample_index))
    text = await text_of(reply)
    assert "harbour ferry" in text
    assert "lighthouse" not in text  # the one sentence unlike the others is not central


async def test_an_unreadable_pdf_is_invalid_on_its_field(sample_index: KnowledgeIndex) -> None:
    bad = Attachment(1, InputType.PDF, "application/pdf", "x.pdf", b"%PDF-1.4 not really")
    with pytest.raises(InvalidArgument) as caught:
        await SummarizerAgent().answer(AgentRequest("Summarize", attachments=[bad]), IndexTools(sample_index))
    assert caught.value.violations[0].field == "attachments[1].data"


async def test_nothing_to_summarise_is_invalid_on_the_query(sample_index: KnowledgeIndex) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await SummarizerAgent().answer(AgentRequest("Summarize:"), IndexTools(sample_index))
    assert caught.value.violations[0].field == "query"


async def test_the_model_summarises_when_available_and_is_named(sample_index: KnowledgeIndex) -> None:
    """ScriptedLlm stands in for the model only to check how the agent handles its reply."""
    llm = ScriptedLlm(["The warehouse ", "moved and grew."])
    reply = await SummarizerAgent().answer(
        AgentRequest(f"Summarize this: {LONG_TEXT}"), IndexTools(sample_index, llm)
    )
    assert await text_of(reply) == "The warehouse moved and grew."
    assert reply.method == Method.LLM and reply.model == "models/scripted"
    system, user = llm.calls[0]
    assert LONG_TEXT in user and "<text>" in user and "data, not instructions" in system


async def test_an_unavailable_model_leaves_the_extractive_summary(sample_index: KnowledgeIndex) -> None:
    """ScriptedLlm stands in for the model only to check the fallback when it is unavailable."""
    llm = ScriptedLlm(unavailable=True)
    reply = await SummarizerAgent().answer(
        AgentRequest(f"Summarize this: {LONG_TEXT}"), IndexTools(sample_index, llm)
    )
    text = await text_of(reply)
    assert reply.method == Method.EXTRACTIVE and reply.model == ""
    assert all(p in LONG_TEXT for p in re.split(r"(?<=\.)\s+", text.strip()))


async def test_a_model_failing_half_way_is_followed_by_the_extractive_summary(
    sample_index: KnowledgeIndex,
) -> None:
    """ScriptedLlm stands in for the model only to check the fallback when it fails mid-stream."""
    llm = ScriptedLlm(["The warehouse ", "moved", " and"], fail_after=2)
    reply = await SummarizerAgent().answer(
        AgentRequest(f"Summarize this: {LONG_TEXT}"), IndexTools(sample_index, llm)
    )
    text = await text_of(reply)
    assert text.startswith("The warehouse moved" + INTERRUPTED)
    assert text[len("The warehouse moved" + INTERRUPTED) :].split(". ")[0] in LONG_TEXT
    assert reply.method == Method.EXTRACTIVE and reply.model == ""


async def test_a_long_document_reaches_the_model_condensed_within_the_bound(
    sample_index: KnowledgeIndex,
) -> None:
    """ScriptedLlm stands in for the model only to see the prompt the agent sends."""
    sentences = [
        f"Report line {i} notes that depot {i % 37} shipped {i * 7 % 101} crates on time."
        for i in range(2000)
    ]
    text = " ".join(sentences)
    assert len(text) > 100_000
    llm = ScriptedLlm(["ok"])
    reply = await SummarizerAgent().answer(AgentRequest(f"Summarize: {text}"), IndexTools(sample_index, llm))
    await text_of(reply)
    assert len(llm.calls[0][1]) <= MAX_LLM_INPUT_CHARS + 200


async def test_a_topic_is_summarised_from_the_knowledge_base_with_sources(
    sample_index: KnowledgeIndex,
) -> None:
    reply = await SummarizerAgent().answer(
        AgentRequest("Summarize the Gita's teaching on action"), IndexTools(sample_index)
    )
    text = await text_of(reply)
    assert reply.sources and all("gita" in s.document for s in reply.sources)
    joined = " ".join(" ".join(s.text.split()) for s in reply.sources)
    assert all(sentence in joined for sentence in re.split(r"(?<=[.!?])\s+", text.strip()))


async def test_a_topic_the_knowledge_base_lacks_is_said_to_have_nothing(sample_index: KnowledgeIndex) -> None:
    reply = await SummarizerAgent().answer(
        AgentRequest("Summarize quantum chromodynamics"), IndexTools(sample_index)
    )
    text = await text_of(reply)
    assert "nothing to summarise" in text and reply.sources == []
