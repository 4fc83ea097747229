"""The offline path: no key, the local extractive responder answers from the given context only."""

from __future__ import annotations

import grpc
import pytest

from bhiv.llm.v1 import completion_pb2, conversation_pb2, model_pb2
from bhiv.llm.v1 import completion_service_pb2 as cs
from bhiv.llm.v1 import model_service_pb2 as ms
from bhiv_core.services.llm.extractive import NO_ANSWER
from tests.services.crm.conftest import reason, refused, violations
from tests.services.llm.conftest import ADMIN, CUSTOMER, Llm

SYSTEM = conversation_pb2.MESSAGE_ROLE_SYSTEM
USER = conversation_pb2.MESSAGE_ROLE_USER
ASSISTANT = conversation_pb2.MESSAGE_ROLE_ASSISTANT

PASSAGES = (
    "The Gita teaches acting without attachment to the results of action. "
    "Ayurveda describes three doshas: vata, pitta and kapha. "
    "Refunds are paid within 14 days of receiving the returned item. "
    "Support is open from 9:00 to 17:00 UTC on weekdays."
)


def message(role: conversation_pb2.MessageRole.ValueType, content: str) -> conversation_pb2.Message:
    return conversation_pb2.Message(role=role, content=content)


async def test_without_a_key_the_local_responder_picks_the_sentence_that_answers(offline: Llm) -> None:
    request = cs.CompleteRequest(
        messages=[message(SYSTEM, PASSAGES), message(USER, "How many days until a refund is paid?")]
    )
    reply = (await offline.completions.Complete(request, metadata=CUSTOMER)).completion
    assert reply.message.content == "Refunds are paid within 14 days of receiving the returned item."
    assert reply.message.role == ASSISTANT
    assert reply.model == "models/local-extractive"
    assert reply.provider == model_pb2.PROVIDER_LOCAL_EXTRACTIVE
    assert not reply.fallback
    assert reply.usage.cost_micros == 0
    assert reply.usage.total_tokens == reply.usage.input_tokens + reply.usage.output_tokens > 0


async def test_every_sentence_of_a_reply_is_verbatim_from_the_context(offline: Llm) -> None:
    question = "What do the Gita and Ayurveda teach about action and doshas?"
    request = cs.CompleteRequest(messages=[message(SYSTEM, PASSAGES), message(USER, question)])
    reply = (await offline.completions.Complete(request, metadata=ADMIN)).completion
    assert "Gita teaches acting" in reply.message.content
    assert "three doshas" in reply.message.content
    for sentence in reply.message.content.split(". "):
        assert sentence.rstrip(".") in PASSAGES


async def test_context_inside_the_user_message_is_used_too(offline: Llm) -> None:
    request = cs.CompleteRequest(messages=[message(USER, f"{PASSAGES} When is support open?")])
    reply = (await offline.completions.Complete(request, metadata=ADMIN)).completion
    assert reply.message.content == "Support is open from 9:00 to 17:00 UTC on weekdays."


async def test_nothing_relevant_in_the_context_says_so_instead_of_inventing(offline: Llm) -> None:
    request = cs.CompleteRequest(
        messages=[message(SYSTEM, PASSAGES), message(USER, "Who won the 1998 World Cup?")]
    )
    reply = (await offline.completions.Complete(request, metadata=ADMIN)).completion
    assert reply.message.content == NO_ANSWER


async def test_the_reply_is_deterministic(offline: Llm) -> None:
    request = cs.CompleteRequest(messages=[message(SYSTEM, PASSAGES), message(USER, "Tell me about doshas")])
    first = await offline.completions.Complete(request, metadata=ADMIN)
    second = await offline.completions.Complete(request, metadata=ADMIN)
    assert first == second


async def test_max_output_tokens_cuts_the_reply_and_says_length(offline: Llm) -> None:
    question = "What do the Gita and Ayurveda teach about action and doshas?"
    request = cs.CompleteRequest(
        messages=[message(SYSTEM, PASSAGES), message(USER, question)], max_output_tokens=14
    )
    reply = (await offline.completions.Complete(request, metadata=ADMIN)).completion
    assert reply.finish_reason == completion_pb2.FINISH_REASON_LENGTH
    assert reply.usage.output_tokens <= 14


async def test_asking_for_a_groq_model_without_a_key_falls_back_and_says_why(offline: Llm) -> None:
    request = cs.CompleteRequest(
        model="models/llama-3.3-70b-versatile",
        messages=[message(SYSTEM, PASSAGES), message(USER, "When is support open?")],
    )
    reply = (await offline.completions.Complete(request, metadata=ADMIN)).completion
    assert reply.fallback
    assert reply.fallback_reason == completion_pb2.FALLBACK_REASON_MODEL_UNAVAILABLE
    assert "GROQ_API_KEY is not set" in reply.fallback_detail
    assert reply.model == "models/local-extractive"


async def test_a_stream_sends_deltas_that_add_up_to_the_completion(offline: Llm) -> None:
    question = "What do the Gita and Ayurveda teach about action and doshas?"
    request = cs.StreamCompleteRequest(messages=[message(SYSTEM, PASSAGES), message(USER, question)])
    events = [e async for e in offline.completions.StreamComplete(request, metadata=CUSTOMER)]
    assert all(e.WhichOneof("event") == "delta" for e in events[:-1])
    assert len(events) >= 3
    final = events[-1].completion
    assert "".join(e.delta.content for e in events[:-1]) == final.message.content
    assert final.provider == model_pb2.PROVIDER_LOCAL_EXTRACTIVE


async def test_list_models_without_a_key_marks_groq_unavailable(offline: Llm) -> None:
    models = (await offline.models.ListModels(ms.ListModelsRequest(), metadata=CUSTOMER)).models
    assert models[0].name == "models/local-extractive"
    assert models[0].is_default and models[0].available
    groq = [m for m in models if m.provider == model_pb2.PROVIDER_GROQ]
    assert groq
    assert all(not m.available and m.unavailable_reason == "GROQ_API_KEY is not set" for m in groq)
    available = await offline.models.ListModels(ms.ListModelsRequest(available_only=True), metadata=CUSTOMER)
    assert [m.name for m in available.models] == ["models/local-extractive"]


async def test_list_models_pages(offline: Llm) -> None:
    first = await offline.models.ListModels(ms.ListModelsRequest(page_size=1), metadata=ADMIN)
    assert len(first.models) == 1 and first.next_page_token
    rest = await offline.models.ListModels(
        ms.ListModelsRequest(page_size=500, page_token=first.next_page_token), metadata=ADMIN
    )
    assert rest.next_page_token == ""
    assert first.models[0].name not in [m.name for m in rest.models]


async def test_an_unknown_model_is_not_found(offline: Llm) -> None:
    request = cs.CompleteRequest(model="models/gpt-99", messages=[message(USER, "hi")])
    err = await refused(offline.completions.Complete(request, metadata=ADMIN))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert reason(err) == "MODEL_NOT_FOUND"


@pytest.mark.parametrize(
    ("messages", "field", "why"),
    [
        (
            [message(USER, "a"), message(SYSTEM, "b"), message(USER, "c")],
            "messages[1].role",
            "SYSTEM_NOT_FIRST",
        ),
        ([message(SYSTEM, "a"), message(ASSISTANT, "b")], "messages[1].role", "NOT_USER"),
    ],
)
async def test_a_malformed_chat_is_invalid_argument(
    offline: Llm, messages: list[conversation_pb2.Message], field: str, why: str
) -> None:
    err = await refused(offline.completions.Complete(cs.CompleteRequest(messages=messages), metadata=ADMIN))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (field, why) in violations(err)


async def test_an_input_larger_than_the_context_window_is_invalid_argument(offline: Llm) -> None:
    huge = [message(SYSTEM, "word " * 20_000)] * 7 + [message(USER, "and?")]
    err = await refused(offline.completions.Complete(cs.CompleteRequest(messages=huge), metadata=ADMIN))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert ("messages", "TOO_LONG") in violations(err)
