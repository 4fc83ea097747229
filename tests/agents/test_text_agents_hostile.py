"""Odd and hostile input never crashes the text agents: an answer, or INVALID_ARGUMENT on a field."""

from __future__ import annotations

import random

import pytest

from bhiv_core.agents.base import AgentRequest
from bhiv_core.agents.content import ContentAgent
from bhiv_core.agents.planner import PlannerAgent
from bhiv_core.agents.summarizer import SummarizerAgent
from bhiv_core.agents.text import TextAgent
from bhiv_core.knowledge import KnowledgeIndex
from bhiv_core.runtime.errors import InvalidArgument
from tests.agents.text_tools import IndexTools

PIECES = [
    "Summarize:", "Translate to French:", "Plan", "in 3 weeks", "by Friday", "Write a tweet", "#", "@",
    "https://example.com/a?b=(c)", "a.a.a.a.", "…", "...", "?", ":", '"', "'", "«", "»", "\u200d", "\ufe0f",
    "👨‍👩‍👧‍👦", "🇮🇳", "日本語の文。", "مرحبا", "e\u0301", "\x00", "\t", "\n\n", "# Heading\n", "- item\n",
    "the the", "i", "Mr.", "3.5", "$500", "30 minutes a day", "yoga", "refund", " ", "word",
]  # fmt: skip
AGENTS = [SummarizerAgent, PlannerAgent, TextAgent, ContentAgent]


@pytest.mark.parametrize("agent", AGENTS, ids=lambda a: a.__name__)
async def test_random_mixtures_are_answered_or_refused_cleanly(
    sample_index: KnowledgeIndex, agent: type
) -> None:
    generator = random.Random(12)
    tools = IndexTools(sample_index)
    for _ in range(150):
        query = "".join(generator.choice(PIECES) for _ in range(generator.randint(0, 14)))
        try:
            reply = await agent().answer(AgentRequest(query), tools)
        except InvalidArgument as err:
            assert err.violations and err.violations[0].field.startswith(("query", "attachments["))
            continue
        text = "".join([piece async for piece in reply.chunks])
        assert text.strip(), query
