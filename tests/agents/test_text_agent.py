"""The text agent: keywords, language, rewrite and translate, offline and with a model's reply."""

from __future__ import annotations

import pytest

from bhiv_core.agents.base import AgentRequest, Attachment, InputType, Method, Reply
from bhiv_core.agents.text import TextAgent
from bhiv_core.knowledge import KnowledgeIndex
from bhiv_core.runtime.errors import InvalidArgument
from tests.agents.text_tools import IndexTools, ScriptedLlm


async def text_of(reply: Reply) -> str:
    return "".join([piece async for piece in reply.chunks])


async def ask(
    index: KnowledgeIndex, query: str, *, intent: str = "", llm: ScriptedLlm | None = None, **kw: object
) -> tuple[Reply, str]:
    reply = await TextAgent().answer(AgentRequest(query, intent=intent, **kw), IndexTools(index, llm))  # type: ignore[arg-type]
    return reply, await text_of(reply)


async def test_keywords_are_extracted_from_the_payload(sample_index: KnowledgeIndex) -> None:
    # Invoked directly the intent is the agent's first (translate): the instruction decides.
    _, text = await ask(
        sample_index,
        "Extract the keywords: the monsoon trucks leave the north dock at night",
        intent="translate",
    )
    assert text.startswith("Keywords: ")
    assert "monsoon" in text and "north dock" in text
    assert "extract" not in text.lower().removeprefix("keywords:")


async def test_the_language_of_a_short_text_is_detected(sample_index: KnowledgeIndex) -> None:
    _, text = await ask(sample_index, "What language is this? Où est la gare, s'il vous plaît ?")
    assert "French (fr)" in text
    _, text = await ask(sample_index, "Detect the language: Wo ist der Bahnhof?")
    assert "German (de)" in text


async def test_too_short_a_text_is_not_judged(sample_index: KnowledgeIndex) -> None:
    _, text = await ask(sample_index, "Detect the language: 42 !")
    assert "too short" in text


async def test_the_offline_rewrite_is_a_clean_up_that_says_so(sample_index: KnowledgeIndex) -> None:
    reply, text = await ask(
        sample_index, "Rewrite: i think  the the report is ready .it was hard,but we did it!!!"
    )
    assert text.startswith("I think the report is ready. It was hard, but we did it!")
    assert "not a rewording" in text and "removed 1 repeated word" in text
    assert reply.method == Method.EXTRACTIVE


async def test_offline_translation_is_refused_without_inventing_one(sample_index: KnowledgeIndex) -> None:
    reply, text = await ask(sample_index, "Translate to French: Good morning, friends")
    assert "needs an LLM" in text and "not configured" in text
    assert "Bonjour" not in text and "Good morning" not in text
    assert reply.method == Method.EXTRACTIVE and reply.model == ""


async def test_a_translation_without_a_target_asks_for_one(sample_index: KnowledgeIndex) -> None:
    _, text = await ask(sample_index, "Translate this: good morning")
    assert "target language" in text


async def test_the_model_translates_when_available(sample_index: KnowledgeIndex) -> None:
    """ScriptedLlm stands in for the model only to check the prompt and the reply's method."""
    llm = ScriptedLlm(["Bonjour, ", "les amis"])
    reply, text = await ask(sample_index, 'Translate "Good morning, friends" into French', llm=llm)
    assert text == "Bonjour, les amis"
    assert reply.method == Method.LLM and reply.model == "models/scripted"
    system, user = llm.calls[0]
    assert "into French" in system and "Good morning, friends" in user and "Translate" not in user


async def test_without_an_instruction_the_routed_intent_decides(sample_index: KnowledgeIndex) -> None:
    _, text = await ask(
        sample_index, "the monsoon trucks leave the north dock at night", intent="extract_keywords"
    )
    assert text.startswith("Keywords:") and "monsoon" in text
    _, text = await ask(sample_index, "Der Zug fährt um neun Uhr ab.")
    assert "German" in text  # no instruction, no intent: the language is detected


async def test_a_text_attachment_is_the_payload(sample_index: KnowledgeIndex) -> None:
    body = "Las naranjas de Valencia se venden en el mercado central cada mañana."
    attachment = Attachment(0, InputType.TEXT, "text/plain", "", body.encode(), body)
    _, text = await ask(sample_index, "Which language is the attachment in?", attachments=[attachment])
    assert "Spanish (es)" in text


async def test_nothing_to_work_on_is_invalid(sample_index: KnowledgeIndex) -> None:
    with pytest.raises(InvalidArgument):
        await ask(sample_index, "Extract the keywords:")


async def test_a_text_too_long_for_the_model_is_cut_and_the_answer_says_so(
    sample_index: KnowledgeIndex,
) -> None:
    """ScriptedLlm stands in for the model only to see the prompt and the note after its answer."""
    from bhiv_core.agents.text import MAX_LLM_INPUT_CHARS

    llm = ScriptedLlm(["Traduit."])
    body = "The trucks leave at night. " * 2000
    _, text = await ask(sample_index, f"Translate to French: {body}", llm=llm)
    assert len(llm.calls[0][1]) <= MAX_LLM_INPUT_CHARS + 40
    assert text.startswith("Traduit.") and "characters were sent to the model" in text
