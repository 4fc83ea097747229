"""The twelve agents of the orchestrator, built once per process.

Agents are built with no arguments (their engines load lazily on first use), so building the
catalog is cheap. An agent whose module is not part of this build is a :class:`NotBuilt`
stand-in that ListAgents still shows and that answers FAILED_PRECONDITION, honestly.
"""

from __future__ import annotations

from collections.abc import Mapping

from bhiv_core.agents.base import AGENT_INTENTS, Agent, AgentRequest, AgentSpec, InputType, Reply, Tools
from bhiv_core.agents.file_search import FileSearchAgent
from bhiv_core.agents.grounded import EdumentorAgent, KnowledgeAgent, QnaAgent, VedasAgent, WellnessAgent
from bhiv_core.runtime.errors import FailedPrecondition

__all__ = ["AGENT_IDS", "NotBuilt", "build_catalog"]

AGENT_IDS: tuple[str, ...] = tuple(sorted(AGENT_INTENTS))
"""The twelve agent ids, sorted (ListAgents' order)."""


class NotBuilt:
    """An agent of the contract whose module is not in this build: it refuses every request."""

    def __init__(self, spec: AgentSpec):
        self.spec = spec

    async def answer(self, request: AgentRequest, tools: Tools) -> Reply:
        """Raises FAILED_PRECONDITION: the agent is not built."""
        raise FailedPrecondition(
            f"agents/{self.spec.id} is not built in this version", reason="AGENT_NOT_BUILT"
        )


def _not_built(id: str, display_name: str, description: str, *types: InputType) -> NotBuilt:
    return NotBuilt(AgentSpec(id, display_name, description, types, AGENT_INTENTS[id]))


def build_catalog() -> Mapping[str, Agent]:
    """The twelve agents by id, sorted by id."""
    agents: list[Agent] = [
        VedasAgent(),
        EdumentorAgent(),
        WellnessAgent(),
        KnowledgeAgent(),
        QnaAgent(),
        FileSearchAgent(),
        _not_built(
            "summarizer",
            "Summarizer",
            "Summarises text or a document (not built yet).",
            InputType.TEXT,
            InputType.PDF,
        ),
        _not_built(
            "planner", "Planner", "Plans the steps toward a stated goal (not built yet).", InputType.TEXT
        ),
        _not_built(
            "text",
            "Text",
            "Translates, rewrites, extracts keywords, detects language (not built yet).",
            InputType.TEXT,
        ),
        _not_built("content", "Content", "Drafts social posts (not built yet).", InputType.TEXT),
        _not_built(
            "image",
            "Image",
            "Reports an image's format, size, metadata and text (not built yet).",
            InputType.IMAGE,
        ),
        _not_built("audio", "Audio", "Decodes and transcribes recordings (not built yet).", InputType.AUDIO),
    ]
    by_id = {agent.spec.id: agent for agent in agents}
    if sorted(by_id) != list(AGENT_IDS):
        raise RuntimeError(f"the catalog holds {sorted(by_id)}, not the twelve agents")
    return {id: by_id[id] for id in AGENT_IDS}
