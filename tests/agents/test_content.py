"""The content agent: posts per platform within limits, grounded briefs, and a model's posts re-checked."""

from __future__ import annotations

from bhiv_core.agents.base import AgentRequest, Attachment, InputType, Method, Reply
from bhiv_core.agents.content import ContentAgent, platforms_named
from bhiv_core.knowledge import KnowledgeIndex
from bhiv_core.text.social import LIMITS, Platform
from bhiv_core.text.x_length import weighted_length
from tests.agents.text_tools import IndexTools, ScriptedLlm, corpus_text


async def text_of(reply: Reply) -> str:
    return "".join([piece async for piece in reply.chunks])


def posts_of(text: str) -> dict[str, str]:
    """The rendered posts by platform name (``Name (n/limit):`` headers)."""
    posts: dict[str, str] = {}
    for block in text.split("\n\n"):
        head = block.split("\n", 1)[0]
        name = head.split(" (", 1)[0]
        if head.endswith("):") and name in {r.name for r in LIMITS.values()}:
            posts[name] = block.split("\n", 1)[1]
            current = name
        else:
            posts[current] += "\n\n" + block
    return posts


async def test_a_brief_gives_four_posts_within_limits_grounded_in_the_corpus(
    sample_index: KnowledgeIndex,
) -> None:
    reply = await ContentAgent().answer(
        AgentRequest("Write a social post announcing our new guide to Ayurveda"), IndexTools(sample_index)
    )
    text = await text_of(reply)
    posts = posts_of(text)
    assert set(posts) == {"X", "LinkedIn", "Instagram", "Facebook"}
    for name, post in posts.items():
        assert post.startswith("Announcing our new guide to Ayurveda.")
        assert "#Ayurveda" in post
        limit = next(r.max_length for r in LIMITS.values() if r.name == name)
        assert (weighted_length(post) if name == "X" else len(post)) <= limit
        assert f"({weighted_length(post) if name == 'X' else len(post)}/{limit}):" in text
    assert reply.sources and "ayurveda" in reply.sources[0].document
    source = reply.sources[0]
    assert corpus_text()[source.document][source.span_start : source.span_end] == source.text
    assert reply.method == Method.EXTRACTIVE


async def test_the_platforms_named_are_the_ones_drafted(sample_index: KnowledgeIndex) -> None:
    assert platforms_named("Draft a tweet and a LinkedIn post") == [Platform.X, Platform.LINKEDIN]
    assert platforms_named("Write an Instagram caption") == [Platform.INSTAGRAM]
    reply = await ContentAgent().answer(
        AgentRequest("Write a tweet about our refund policy"), IndexTools(sample_index)
    )
    assert list(posts_of(await text_of(reply))) == ["X"]


async def test_a_long_cjk_text_becomes_an_x_post_within_the_weighted_limit(
    sample_index: KnowledgeIndex,
) -> None:
    body = (
        "新しい倉庫は三月に完成しました。" * 20
        + " 詳細は https://example.com/news/warehouse-opening-2026 をご覧ください。"
    )
    attachment = Attachment(0, InputType.TEXT, "text/plain", "", body.encode(), body)
    reply = await ContentAgent().answer(
        AgentRequest("Write a post for X", attachments=[attachment]), IndexTools(sample_index)
    )
    post = posts_of(await text_of(reply))["X"]
    assert weighted_length(post) <= 280
    assert len(post) < 280  # CJK counts double: fewer code points than a Latin post
    assert "新しい倉庫" in post


async def test_the_models_posts_are_rechecked_and_a_missing_one_drafted_offline(
    sample_index: KnowledgeIndex,
) -> None:
    """ScriptedLlm stands in for the model only to check how the agent handles its posts."""
    too_long = "Our warehouse story " + "continues " * 40 + "#Logistics"
    llm = ScriptedLlm(
        [f"[X]\n{too_long}\n\n[LinkedIn]\nWe moved our warehouse. Four trucks dock at once now.\n"]
    )
    reply = await ContentAgent().answer(
        AgentRequest(
            "Write posts for X, LinkedIn and Facebook about our warehouse move to a bigger building"
        ),
        IndexTools(sample_index, llm),
    )
    posts = posts_of(await text_of(reply))
    assert weighted_length(posts["X"]) <= 280 and posts["X"].endswith("…")
    assert posts["X"].startswith("Our warehouse story continues")
    assert posts["LinkedIn"] == "We moved our warehouse. Four trucks dock at once now."
    assert posts["Facebook"].startswith("Our warehouse move to a bigger building.")  # drafted offline
    assert reply.method == Method.LLM and reply.model == "models/scripted"


async def test_an_unavailable_model_leaves_offline_drafts(sample_index: KnowledgeIndex) -> None:
    """ScriptedLlm stands in for the model only to check the fallback when it is unavailable."""
    reply = await ContentAgent().answer(
        AgentRequest("Write a LinkedIn post about our new study skills guide"),
        IndexTools(sample_index, ScriptedLlm(unavailable=True)),
    )
    posts = posts_of(await text_of(reply))
    assert posts["LinkedIn"].startswith("Our new study skills guide.")
    assert reply.method == Method.EXTRACTIVE and reply.model == ""


async def test_every_kind_of_post_asked_for_is_left_out_of_the_brief(sample_index: KnowledgeIndex) -> None:
    reply = await ContentAgent().answer(
        AgentRequest("Write a tweet and a LinkedIn post announcing our new guide to Ayurveda"),
        IndexTools(sample_index),
    )
    posts = posts_of(await text_of(reply))
    assert list(posts) == ["X", "LinkedIn"]
    assert all(post.startswith("Announcing our new guide to Ayurveda.") for post in posts.values())
