"""The grounded agents and file search on a real knowledge index holding the sample corpus.

Tools wrap a real :class:`KnowledgeIndex` (hybrid, as the service runs by default); ``llm`` is None
for the offline path, or :class:`ScriptedLlm`, a stand-in of the LLM service (the agent is under
test, not the model) that records what it was sent.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bhiv_core.agents.base import AgentRequest, Llm, LlmReply, LlmUnavailable, Method, Reply, Turn
from bhiv_core.agents.file_search import FileSearchAgent, rank_documents
from bhiv_core.agents.grounded import (
    EdumentorAgent,
    KnowledgeAgent,
    QnaAgent,
    VedasAgent,
    WellnessAgent,
    extractive_answer,
    is_relevant,
)
from bhiv_core.knowledge import KnowledgeIndex, chunk, extract_text, load_embedder
from bhiv_core.knowledge.corpus import SAMPLES, read_sample
from bhiv_core.knowledge.index import Passage
from tests.knowledge.eval_set import EVAL

GITA = "What does the Gita say about acting without attachment to results?"
OFF_TOPIC = (
    "What is the capital of France?",
    "quantum chromodynamics gluon confinement",
    "How do I bake sourdough bread?",
    "Who won the football world cup in 2018?",
    "What is the boiling point of mercury?",
    "Explain kubernetes pods",
    "tell me a joke",
    "What is the price of bitcoin today?",
    "How many moons does Jupiter have?",
    "What is the best programming language?",
    "How do I change a car tyre?",
    "What time is it in Tokyo?",
    "Recommend a good movie",
    "What is the GDP of India?",
    "Who painted the Mona Lisa?",
)
TEXTS = {f"documents/{s.file}": read_sample(s) for s in SAMPLES}


@dataclass
class CorpusTools:
    index: KnowledgeIndex
    llm_client: Llm | None = None

    async def search(self, query: str, *, limit: int, tags: Sequence[str] = ()) -> list[Passage]:
        return await self.index.search(query, tags=tags, limit=limit)

    @property
    def llm(self) -> Llm | None:
        return self.llm_client


@dataclass
class ScriptedLlm:
    """Answers with ``pieces`` as model ``model``; ``fail`` = "start" or "middle" makes it fail."""

    pieces: list[str] = field(default_factory=lambda: ["Act without ", "clinging to results [1]."])
    model: str = "models/llama-3.3-70b-versatile"
    fail: str = ""
    sent: list[tuple[str, str]] = field(default_factory=list)

    async def stream(self, system: str, user: str, *, max_output_tokens: int = 1024) -> LlmReply:
        self.sent.append((system, user))
        if self.fail == "start":
            raise LlmUnavailable("budget spent")

        async def pieces() -> AsyncIterator[str]:
            for n, piece in enumerate(self.pieces):
                if self.fail == "middle" and n == 1:
                    raise LlmUnavailable("provider down")
                yield piece

        return LlmReply(pieces=pieces(), model=self.model)


@pytest.fixture(scope="module")
def embedder():  # type: ignore[no-untyped-def]
    return load_embedder()


@pytest.fixture
async def index(tmp_path: Path, embedder) -> AsyncIterator[KnowledgeIndex]:  # type: ignore[no-untyped-def]
    index = KnowledgeIndex(tmp_path / "knowledge.db", embedder)
    await index.open()
    for sample in SAMPLES:
        extracted = extract_text(read_sample(sample), field="text")
        chunks = chunk(extracted.text, extracted.sections)
        await index.add(f"documents/{sample.file}", sample.title, sample.tags, extracted.text, chunks)
    yield index
    await index.close()


async def text_of(reply: Reply) -> str:
    return "".join([piece async for piece in reply.chunks])


def assert_traceable(text: str, sources: Sequence[Passage], *, all_cited: bool = True) -> None:
    """Every source is verbatim in its document; every ``sentence [n]`` is verbatim in source n."""
    for source in sources:
        assert TEXTS[source.document][source.span_start : source.span_end] == source.text
    cited = re.findall(r"([^\[\]]+?) \[(\d+)\]", text)
    assert cited
    for sentence, number in cited:
        claim = sentence.strip().split(": ", 1)[-1].strip()
        assert claim in sources[int(number) - 1].text, (claim, number)
    if all_cited:
        assert {int(n) for _, n in cited} == set(range(1, len(sources) + 1))


async def test_the_floor_keeps_labelled_passages_and_drops_off_topic_ones(index: KnowledgeIndex) -> None:
    first = kept_nothing = 0
    for question, file, section in EVAL:
        kept = [p for p in await index.search(question, limit=5) if is_relevant(question, p)]
        kept_nothing += not kept
        first += bool(kept) and (kept[0].document, kept[0].section) == (f"documents/{file}", section)
    off_kept = [q for q in OFF_TOPIC if any([is_relevant(q, p) for p in await index.search(q, limit=5)])]
    print(
        f"\nrelevance floor (hybrid): {first}/{len(EVAL)} labelled passages kept first, "
        f"{kept_nothing} labelled questions kept nothing, {len(off_kept)}/{len(OFF_TOPIC)} off-topic kept"
    )
    assert first >= len(EVAL) - 2
    assert off_kept == []


async def test_vedas_answers_the_gita_question_from_verbatim_passages(index: KnowledgeIndex) -> None:
    reply = await VedasAgent().answer(AgentRequest(query=GITA, intent="vedic_knowledge"), CorpusTools(index))
    text = await text_of(reply)
    assert (reply.method, reply.model) == (Method.EXTRACTIVE, "")
    assert reply.sources[0].section == "Acting Without Attachment to Results"
    assert "right to your work but never to its fruits" in text
    assert_traceable(text, reply.sources)


async def test_each_persona_prefers_its_material_and_keeps_max_sources(index: KnowledgeIndex) -> None:
    cases = [
        (EdumentorAgent(), "How should I review material before an exam?", "documents/study-skills.md"),
        (WellnessAgent(), "What foods calm an excess of pitta?", "documents/ayurveda-doshas.md"),
        (KnowledgeAgent(), "How much does express shipping cost?", "documents/platform-policies.md"),
        (QnaAgent(), "What are the eight limbs of yoga?", "documents/yoga-basics.md"),
    ]
    for agent, query, document in cases:
        reply = await agent.answer(AgentRequest(query=query, max_sources=1), CorpusTools(index))
        text = await text_of(reply)
        assert [s.document for s in reply.sources] == [document], query
        assert_traceable(text, reply.sources)


async def test_nothing_relevant_is_i_dont_know_without_sources(index: KnowledgeIndex) -> None:
    for agent in (VedasAgent(), EdumentorAgent(), WellnessAgent(), KnowledgeAgent(), QnaAgent()):
        reply = await agent.answer(
            AgentRequest(query="What is the boiling point of mercury?"), CorpusTools(index)
        )
        assert "don't know" in await text_of(reply)
        assert reply.sources == []


async def test_qna_greets_without_searching(tmp_path: Path) -> None:
    empty = KnowledgeIndex(tmp_path / "empty.db")  # never opened: a search would fail
    for intent in ("greeting", "small_talk"):
        reply = await QnaAgent().answer(AgentRequest(query="hello", intent=intent), CorpusTools(empty))
        assert (await text_of(reply)) and reply.sources == []


async def test_the_llm_gets_numbered_passages_and_history_and_its_answer_is_streamed(
    index: KnowledgeIndex,
) -> None:
    llm = ScriptedLlm()
    history = [Turn("Who is Arjuna?", "A prince of the Mahabharata.")]
    reply = await VedasAgent().answer(AgentRequest(query=GITA, history=history), CorpusTools(index, llm))
    assert await text_of(reply) == "Act without clinging to results [1]."
    assert (reply.method, reply.model) == (Method.LLM, "models/llama-3.3-70b-versatile")
    system, user = llm.sent[0]
    assert "Vedic" in system and "cite" in system
    assert user == GITA  # the question alone; passages and history are context
    assert "User: Who is Arjuna?\nAssistant: A prince of the Mahabharata." in system
    for n, source in enumerate(reply.sources, start=1):
        assert f"[{n}] (The Bhagavad Gita on Action — {source.section}) {source.text}" in system


async def test_an_unavailable_or_failing_llm_leaves_the_extractive_answer(index: KnowledgeIndex) -> None:
    offline = await VedasAgent().answer(AgentRequest(query=GITA), CorpusTools(index))
    offline_text = await text_of(offline)

    refused = await VedasAgent().answer(
        AgentRequest(query=GITA), CorpusTools(index, ScriptedLlm(fail="start"))
    )
    assert (await text_of(refused), refused.method, refused.sources) == (
        offline_text,
        Method.EXTRACTIVE,
        offline.sources,
    )

    broken = await VedasAgent().answer(
        AgentRequest(query=GITA), CorpusTools(index, ScriptedLlm(fail="middle"))
    )
    assert broken.method == Method.LLM  # not final before the stream ends
    text = await text_of(broken)
    assert (broken.method, broken.model) == (Method.EXTRACTIVE, "")
    first, rest = text.split("\n\n", 1)
    assert first == "Act without "
    assert_traceable(rest, broken.sources, all_cited=False)  # numbered like the model's context

    served_offline = await VedasAgent().answer(
        AgentRequest(query=GITA), CorpusTools(index, ScriptedLlm(model=""))
    )
    await text_of(served_offline)
    assert (served_offline.method, served_offline.model) == (Method.EXTRACTIVE, "")


def test_extractive_sentences_are_verbatim_and_numbered_by_cited_passage() -> None:
    def passage(n: int, text: str, section: str = "S") -> Passage:
        return Passage(f"documents/d#{n}", "documents/d", "D", section, 0, len(text), 0.9, text)

    passages = [
        passage(0, "An opening about nothing in particular."),
        passage(1, "Saffron is kept cold. It stays fresh for months. Cardamom too."),
        passage(2, "Unrelated words here."),
        passage(3, "Keep saffron cold and dry in the storage room."),
    ]
    text, cited = extractive_answer("How is saffron kept in storage?", passages)
    assert cited == [passages[1], passages[3]]
    assert text == (
        "Saffron is kept cold. [1] It stays fresh for months. [1] Cardamom too. [1] "
        "Keep saffron cold and dry in the storage room. [2]"
    )


async def test_file_search_ranks_documents_by_their_passages(index: KnowledgeIndex) -> None:
    reply = await FileSearchAgent().answer(
        AgentRequest(query="find documents about yoga breathing and meditation", max_sources=3),
        CorpusTools(index),
    )
    text = await text_of(reply)
    assert reply.sources[0].document == "documents/yoga-basics.md"
    assert len({s.document for s in reply.sources}) == len(reply.sources) <= 3
    assert text.splitlines()[1].startswith("1. Yoga: The Eight Limbs and Daily Practice")
    nothing = await FileSearchAgent().answer(
        AgentRequest(query="find files about gluons"), CorpusTools(index)
    )
    assert nothing.sources == [] and "no ingested document" in await text_of(nothing)

    def hit(document: str, score: float) -> Passage:
        return Passage(f"{document}#0", document, document, "", 0, 1, score, "x")

    ranked = rank_documents([hit("documents/a", 0.85), hit("documents/b", 0.8), hit("documents/b", 0.8)])
    assert [(best.document, count) for _, count, best in ranked] == [("documents/b", 2), ("documents/a", 1)]
