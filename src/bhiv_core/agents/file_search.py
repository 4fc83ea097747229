"""The file search agent: finds and ranks ingested documents.

The query (its document-finding words such as "find" or "documents" dropped) is searched for
passages; hits above the relevance floor of the grounded agents are grouped by document, and a
document ranks by its best passage's score plus a tenth of the others' (several good passages
beat one). The answer lists the documents, best first; its sources are each document's best
passage, so the caller gets the document name, title, section and span.
"""

from __future__ import annotations

import re

from bhiv_core.agents.base import AGENT_INTENTS, AgentRequest, AgentSpec, InputType, Reply, Tools
from bhiv_core.agents.grounded import is_relevant
from bhiv_core.knowledge.index import Passage

__all__ = ["SEARCH_DEPTH", "FileSearchAgent", "rank_documents"]

SEARCH_DEPTH = 50
"""How many passages are searched for to rank documents."""

_FILLER = re.compile(
    r"\b(?:find|search|look(?:ing)?|locate|show|list|get|which|documents?|files?|pdfs?|docs?|"
    r"papers?|anything|something|mentions?|mentioning|me|for|all)\b",
    re.IGNORECASE,
)


def rank_documents(passages: list[Passage]) -> list[tuple[float, int, Passage]]:
    """Per document: (rank score, passages found, best passage), best document first."""
    grouped: dict[str, list[Passage]] = {}
    for passage in passages:
        grouped.setdefault(passage.document, []).append(passage)
    ranked = []
    for found in grouped.values():
        found.sort(key=lambda p: -p.score)
        score = found[0].score + 0.1 * sum(p.score for p in found[1:])
        ranked.append((score, len(found), found[0]))
    ranked.sort(key=lambda r: (-r[0], r[2].document))
    return ranked


class FileSearchAgent:
    """Finds the ingested documents that best match a query."""

    spec = AgentSpec(
        id="file_search",
        display_name="File search",
        description="Finds and ranks the ingested documents matching a query; each source is a "
        "document's best passage.",
        input_types=(InputType.TEXT,),
        intents=AGENT_INTENTS["file_search"],
    )

    async def answer(self, request: AgentRequest, tools: Tools) -> Reply:
        """The matching documents, best first, with their best passage as the source."""
        query = _FILLER.sub(" ", request.query).strip() or request.query.strip()
        found = [p for p in await tools.search(query, limit=SEARCH_DEPTH) if is_relevant(query, p)]
        ranked = rank_documents(found)[: request.max_sources]
        if not ranked:
            return Reply.of_text("I found no ingested document matching that.")
        lines = [f"I found {len(ranked)} matching document{'s' if len(ranked) > 1 else ''}:"]
        for n, (_, count, best) in enumerate(ranked, start=1):
            where = f", section “{best.section}”" if best.section else ""
            hits = f"{count} matching passage{'s' if count > 1 else ''}"
            lines.append(f"{n}. {best.document_title} ({best.document}{where}; {hits}) [{n}]")
        return Reply.of_text("\n".join(lines), [best for _, _, best in ranked])
