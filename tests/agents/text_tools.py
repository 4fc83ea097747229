"""Tools for the text agents' tests: a real knowledge index of the sample corpus, and a scripted model.

:class:`IndexTools` searches a real :class:`~bhiv_core.knowledge.KnowledgeIndex` (SQLite FTS5 on
a temporary directory, the sample corpus ingested through extract and chunk as the service does).

:class:`ScriptedLlm` is NOT a model and tests nothing about models: it implements the ``Llm``
protocol with a fixed stream (or a failure) ONLY so that tests can check how an agent handles a
model's reply — method and model reported, limits re-checked, fallback to the offline answer when
the model is unavailable before or during its stream. Every test of what the agents produce runs
the offline path, with ``llm=None``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bhiv_core.agents.base import Llm, LlmReply, LlmUnavailable
from bhiv_core.knowledge import KnowledgeIndex, chunk, extract_text
from bhiv_core.knowledge.corpus import SAMPLES, read_sample
from bhiv_core.knowledge.index import Passage


async def corpus_index(directory: Path) -> KnowledgeIndex:
    """A BM25 index of the sample corpus in ``directory`` (opened; close it)."""
    index = KnowledgeIndex(directory / "knowledge.db")
    await index.open()
    for sample in SAMPLES:
        extracted = extract_text(read_sample(sample), field="text")
        chunks = chunk(extracted.text, extracted.sections)
        await index.add(f"documents/{sample.file}", sample.title, sample.tags, extracted.text, chunks)
    return index


def corpus_text() -> dict[str, str]:
    """The sample documents' extracted text by document name, to check sources verbatim."""
    return {f"documents/{s.file}": extract_text(read_sample(s), field="text").text for s in SAMPLES}


@dataclass
class IndexTools:
    """The ``Tools`` an agent gets: search over a real index, and an optional LLM."""

    index: KnowledgeIndex
    llm: Llm | None = None
    searches: list[str] = field(default_factory=list)

    async def search(self, query: str, *, limit: int, tags: Sequence[str] = ()) -> list[Passage]:
        self.searches.append(query)
        return await self.index.search(query, limit=limit, tags=tags)


@dataclass
class ScriptedLlm:
    """A fixed stream in the ``Llm`` protocol, to test the agents' handling of replies (see module doc).

    Attributes:
        pieces: What the stream yields, in order.
        unavailable: Raise LlmUnavailable when the stream is started (no model).
        fail_after: Raise LlmUnavailable after yielding this many pieces (a model failing half-way).
        calls: The (system, user) prompts received.

    """

    pieces: list[str] = field(default_factory=list)
    unavailable: bool = False
    fail_after: int | None = None
    model: str = "models/scripted"
    calls: list[tuple[str, str]] = field(default_factory=list)

    async def stream(self, system: str, user: str, *, max_output_tokens: int = 1024) -> LlmReply:
        self.calls.append((system, user))
        if self.unavailable:
            raise LlmUnavailable("no model configured")

        async def run() -> AsyncIterator[str]:
            for n, piece in enumerate(self.pieces):
                if self.fail_after is not None and n >= self.fail_after:
                    raise LlmUnavailable("the provider went away")
                yield piece

        return LlmReply(pieces=run(), model=self.model)
