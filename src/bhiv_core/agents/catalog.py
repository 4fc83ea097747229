"""The twelve agents of the orchestrator, built once per process.

Agents are built with no arguments (their engines and models load lazily on first use, off the
event loop), so building the catalog is cheap.
"""

from __future__ import annotations

from collections.abc import Mapping

from bhiv_core.agents.audio import AudioAgent
from bhiv_core.agents.base import AGENT_INTENTS, Agent
from bhiv_core.agents.content import ContentAgent, SocialWriter
from bhiv_core.agents.file_search import FileSearchAgent
from bhiv_core.agents.grounded import EdumentorAgent, KnowledgeAgent, QnaAgent, VedasAgent, WellnessAgent
from bhiv_core.agents.image import ImageAgent
from bhiv_core.agents.planner import PlannerAgent
from bhiv_core.agents.summarizer import SummarizerAgent
from bhiv_core.agents.text import TextAgent

__all__ = ["AGENT_IDS", "build_catalog"]

AGENT_IDS: tuple[str, ...] = tuple(sorted(AGENT_INTENTS))
"""The twelve agent ids, sorted (ListAgents' order)."""


def build_catalog(*, social: SocialWriter | None = None) -> Mapping[str, Agent]:
    """The twelve agents by id, sorted by id; ``social`` writes the content agent's posts when it answers."""
    agents: list[Agent] = [
        VedasAgent(),
        EdumentorAgent(),
        WellnessAgent(),
        KnowledgeAgent(),
        QnaAgent(),
        SummarizerAgent(),
        PlannerAgent(),
        FileSearchAgent(),
        TextAgent(),
        ContentAgent(social),
        ImageAgent(),
        AudioAgent(),
    ]
    by_id = {agent.spec.id: agent for agent in agents}
    if sorted(by_id) != list(AGENT_IDS):
        raise RuntimeError(f"the catalog holds {sorted(by_id)}, not the twelve agents")
    return {id: by_id[id] for id in AGENT_IDS}
