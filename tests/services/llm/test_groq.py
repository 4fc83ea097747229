"""The Groq path: the real ``groq`` SDK against a fake OpenAI-compatible server on loopback."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from bhiv.llm.v1 import completion_pb2, conversation_pb2, model_pb2
from bhiv.llm.v1 import completion_service_pb2 as cs
from bhiv.llm.v1 import model_service_pb2 as ms
from tests.services.crm.conftest import reason, refused
from tests.services.llm.conftest import ADMIN, REPLY, FakeGroq, Llm, serve_llm

CONTEXT = "Refunds are paid within 14 days of the return. Support answers from 9 to 5."


def chat(question: str = "When are refunds paid?", **fields: object) -> cs.CompleteRequest:
    return cs.CompleteRequest(
        messages=[
            conversation_pb2.Message(role=conversation_pb2.MESSAGE_ROLE_SYSTEM, content=CONTEXT),
            conversation_pb2.Message(role=conversation_pb2.MESSAGE_ROLE_USER, content=question),
        ],
        **fields,  # type: ignore[arg-type]
    )


async def test_a_keyed_service_answers_through_groq_and_names_model_and_provider(
    keyed: Llm, fake_groq: FakeGroq
) -> None:
    reply = (await keyed.completions.Complete(chat(temperature=0.0), metadata=ADMIN)).completion
    assert reply.message.content == "".join(REPLY)
    assert reply.model == "models/llama-3.1-8b-instant"
    assert reply.provider == model_pb2.PROVIDER_GROQ
    assert not reply.fallback
    assert reply.finish_reason == completion_pb2.FINISH_REASON_STOP
    # 1M input tokens at 0.05 USD and 0.5M output tokens at 0.08 USD: 0.09 USD.
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (1_000_000, 500_000)
    assert reply.usage.cost_micros == 90_000
    sent = fake_groq.requests[0]
    assert sent["model"] == "llama-3.1-8b-instant"
    assert sent["temperature"] == 0.0
    assert [m["role"] for m in sent["messages"]] == ["system", "user"]
    assert fake_groq.headers[0]["authorization"] == "Bearer gsk_test_not_a_real_key"


async def test_a_stream_relays_groq_pieces_then_the_whole_completion(keyed: Llm) -> None:
    request = cs.StreamCompleteRequest(messages=chat().messages)
    events = [e async for e in keyed.completions.StreamComplete(request, metadata=ADMIN)]
    assert [e.delta.content for e in events[:-1]] == REPLY
    final = events[-1].completion
    assert final.message.content == "".join(REPLY)
    assert final.provider == model_pb2.PROVIDER_GROQ
    assert (final.usage.input_tokens, final.usage.output_tokens) == (11, 3)


async def test_a_429_is_retried_and_then_succeeds(keyed: Llm, fake_groq: FakeGroq) -> None:
    fake_groq.script[:] = ["429"]
    reply = (await keyed.completions.Complete(chat(), metadata=ADMIN)).completion
    assert reply.provider == model_pb2.PROVIDER_GROQ
    assert not reply.fallback
    assert len(fake_groq.requests) == 2


async def test_a_5xx_is_retried_and_then_succeeds(keyed: Llm, fake_groq: FakeGroq) -> None:
    fake_groq.script[:] = ["500"]
    reply = (await keyed.completions.Complete(chat(), metadata=ADMIN)).completion
    assert reply.provider == model_pb2.PROVIDER_GROQ
    assert len(fake_groq.requests) == 2


async def test_429_on_every_retry_falls_back_to_the_local_responder(keyed: Llm, fake_groq: FakeGroq) -> None:
    fake_groq.script[:] = ["429", "429"]
    reply = (await keyed.completions.Complete(chat(), metadata=ADMIN)).completion
    assert reply.fallback
    assert reply.fallback_reason == completion_pb2.FALLBACK_REASON_RATE_LIMITED
    assert reply.provider == model_pb2.PROVIDER_LOCAL_EXTRACTIVE
    assert reply.model == "models/local-extractive"
    assert reply.message.content == "Refunds are paid within 14 days of the return."
    assert reply.usage.cost_micros == 0


async def test_a_timeout_falls_back_with_the_timeout_reason(keyed: Llm, fake_groq: FakeGroq) -> None:
    fake_groq.script[:] = ["slow", "slow"]
    reply = (await keyed.completions.Complete(chat(), metadata=ADMIN)).completion
    assert reply.fallback
    assert reply.fallback_reason == completion_pb2.FALLBACK_REASON_PROVIDER_TIMEOUT
    assert "in time" in reply.fallback_detail


@pytest.mark.parametrize("behaviour", ["malformed", "garbage"])
async def test_a_malformed_reply_falls_back_as_a_provider_error(
    keyed: Llm, fake_groq: FakeGroq, behaviour: str
) -> None:
    fake_groq.script[:] = [behaviour]
    reply = (await keyed.completions.Complete(chat(), metadata=ADMIN)).completion
    assert reply.fallback
    assert reply.fallback_reason == completion_pb2.FALLBACK_REASON_PROVIDER_ERROR
    assert reply.provider == model_pb2.PROVIDER_LOCAL_EXTRACTIVE


async def test_a_stream_whose_provider_fails_first_falls_back_before_any_delta(
    keyed: Llm, fake_groq: FakeGroq
) -> None:
    fake_groq.script[:] = ["500", "500"]
    request = cs.StreamCompleteRequest(messages=chat().messages)
    events = [e async for e in keyed.completions.StreamComplete(request, metadata=ADMIN)]
    final = events[-1].completion
    assert final.fallback
    assert final.fallback_reason == completion_pb2.FALLBACK_REASON_PROVIDER_ERROR
    assert "".join(e.delta.content for e in events[:-1]) == final.message.content


@pytest.mark.parametrize(
    ("script", "code_reason"),
    [
        (["slow", "slow"], "PROVIDER_TIMEOUT"),
        (["429", "429"], "PROVIDER_RATE_LIMITED"),
        (["malformed"], "PROVIDER_ERROR"),
    ],
)
async def test_without_fallback_a_provider_failure_is_unavailable(
    tmp_path: Path, fake_groq: FakeGroq, script: list[str], code_reason: str
) -> None:
    fake_groq.script[:] = script
    async with serve_llm(tmp_path, groq=fake_groq, LLM_FALLBACK="off") as llm:
        err = await refused(llm.completions.Complete(chat(), metadata=ADMIN))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert reason(err) == code_reason


async def test_list_models_shows_groq_models_available_with_a_key(keyed: Llm) -> None:
    models = (await keyed.models.ListModels(ms.ListModelsRequest(), metadata=ADMIN)).models
    assert models[0].name == "models/llama-3.1-8b-instant"
    assert models[0].is_default
    assert all(m.available for m in models)
