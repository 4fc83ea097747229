"""What the image and audio agent tests share: a real Tools over a temporary knowledge index, fixtures."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from bhiv_core.agents.base import Llm, Reply
from bhiv_core.knowledge import KnowledgeIndex
from bhiv_core.knowledge.index import Passage

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@dataclass
class IndexTools:
    """Tools over a real (empty) knowledge index and no LLM: the offline path."""

    index: KnowledgeIndex

    async def search(self, query: str, *, limit: int, tags: Sequence[str] = ()) -> list[Passage]:
        return await self.index.search(query, limit=limit, tags=tags)

    @property
    def llm(self) -> Llm | None:
        return None


@asynccontextmanager
async def index_tools(folder: Path) -> AsyncIterator[IndexTools]:
    """Tools over a fresh knowledge index in ``folder``, closed on exit."""
    index = KnowledgeIndex(folder / "knowledge.db")
    await index.open()
    try:
        yield IndexTools(index)
    finally:
        await index.close()


async def text_of(reply: Reply) -> str:
    return "".join([piece async for piece in reply.chunks])
