"""The planner agent: plans derived from the stated goal, grounded in the knowledge base when relevant."""

from __future__ import annotations

from bhiv_core.agents.base import AgentRequest, Method, Reply
from bhiv_core.agents.planner import PlannerAgent
from bhiv_core.knowledge import KnowledgeIndex
from tests.agents.text_tools import IndexTools, ScriptedLlm, corpus_text


async def text_of(reply: Reply) -> str:
    return "".join([piece async for piece in reply.chunks])


async def test_two_goals_give_plans_that_differ_in_goal_specific_content(
    sample_index: KnowledgeIndex,
) -> None:
    yoga = await PlannerAgent().answer(
        AgentRequest("Plan how to learn the eight limbs of yoga in four weeks"), IndexTools(sample_index)
    )
    store = await PlannerAgent().answer(
        AgentRequest("Make a plan to launch our online pottery store in 10 days with a budget of $500"),
        IndexTools(sample_index),
    )
    yoga_text, store_text = await text_of(yoga), await text_of(store)
    assert "eight limbs of yoga" in yoga_text and "pottery" not in yoga_text
    assert "online pottery store" in store_text and "yoga" not in store_text
    # The horizon paces the phases: four weeks, ten days (in groups).
    assert "Week 4" in yoga_text and "Week 5" not in yoga_text
    assert "Days 1-" in store_text and "Week" not in store_text
    assert "$500" in store_text
    # Different kinds of goal, different stages.
    assert "Study the core" in yoga_text and "Define and scope" in store_text


async def test_relevant_passages_ground_the_plan_and_are_cited_verbatim(sample_index: KnowledgeIndex) -> None:
    reply = await PlannerAgent().answer(
        AgentRequest("Plan how to learn the eight limbs of yoga in four weeks"), IndexTools(sample_index)
    )
    text = await text_of(reply)
    assert reply.sources, "the yoga document is in the corpus"
    corpus = corpus_text()
    for number, source in enumerate(reply.sources, start=1):
        assert corpus[source.document][source.span_start : source.span_end] == source.text
        assert f"[{number}]" in text
    assert any("yoga" in s.document for s in reply.sources)
    assert reply.method == Method.EXTRACTIVE


async def test_an_unrelated_goal_cites_nothing(sample_index: KnowledgeIndex) -> None:
    reply = await PlannerAgent().answer(
        AgentRequest("Plan my garage clean-out by Saturday"), IndexTools(sample_index)
    )
    text = await text_of(reply)
    assert reply.sources == [] and "[1]" not in text and "Sources:" not in text
    assert "garage clean-out" in text


async def test_constraints_and_an_unstated_horizon_are_reported(sample_index: KnowledgeIndex) -> None:
    reply = await PlannerAgent().answer(
        AgentRequest("Help me plan to study for my chemistry exam, 30 minutes a day, only on weekdays"),
        IndexTools(sample_index),
    )
    text = await text_of(reply)
    assert "30 minutes a day" in text and "only on weekdays" in text
    assert "Horizon: none stated" in text and "Phase 1" in text


async def test_the_model_gets_the_parsed_goal_and_the_passages(sample_index: KnowledgeIndex) -> None:
    """ScriptedLlm stands in for the model only to see the prompt and check the reply's method."""
    llm = ScriptedLlm(["1. Read about yama [1]."])
    reply = await PlannerAgent().answer(
        AgentRequest("Plan how to learn the eight limbs of yoga in four weeks"), IndexTools(sample_index, llm)
    )
    assert await text_of(reply) == "1. Read about yama [1]."
    assert reply.method == Method.LLM and reply.model == "models/scripted"
    user = llm.calls[0][1]
    assert "Goal: learn the eight limbs of yoga" in user and "in four weeks (about 28 days)" in user
    assert '<passage n="1"' in user and reply.sources[0].text in user


async def test_a_huge_goal_is_read_up_to_its_bound(sample_index: KnowledgeIndex) -> None:
    """ScriptedLlm stands in for the model only to see the size of the prompt the agent sends."""
    from bhiv_core.agents.planner import MAX_GOAL_CHARS

    llm = ScriptedLlm(["ok"])
    query = "Plan how to learn yoga in 6 weeks " + "and then some more breathing " * 4000
    reply = await PlannerAgent().answer(AgentRequest(query), IndexTools(sample_index, llm))
    await text_of(reply)
    assert len(llm.calls[0][1]) < MAX_GOAL_CHARS + 6000  # goal plus at most five passages
    offline = await text_of(await PlannerAgent().answer(AgentRequest(query), IndexTools(sample_index)))
    assert "Week 6" in offline and len(offline) < 3 * MAX_GOAL_CHARS + 6000
