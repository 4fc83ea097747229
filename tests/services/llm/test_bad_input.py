"""Hostile input to every built llm RPC answers INVALID_ARGUMENT with field violations, never INTERNAL."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from bhiv.llm.v1 import completion_service_pb2 as cs
from bhiv.llm.v1 import conversation_pb2
from bhiv.llm.v1 import model_service_pb2 as ms
from tests.services.crm.conftest import refused, violations
from tests.services.llm.conftest import ADMIN, Llm

USER = conversation_pb2.MESSAGE_ROLE_USER
HI = conversation_pb2.Message(role=USER, content="hi")

CHATS: list[tuple[dict[str, Any], str]] = [
    ({"messages": []}, "messages"),
    ({"messages": [conversation_pb2.Message(role=USER, content="")]}, "messages[0].content"),
    ({"messages": [conversation_pb2.Message(content="hi")]}, "messages[0].role"),
    ({"messages": [conversation_pb2.Message(role=99, content="hi")]}, "messages[0].role"),  # type: ignore[arg-type]
    ({"messages": [HI] * 101}, "messages"),
    ({"messages": [conversation_pb2.Message(role=USER, content="x" * 100_001)]}, "messages[0].content"),
    ({"messages": [HI], "model": "gpt 4; drop table"}, "model"),
    ({"messages": [HI], "model": "models/" + "a" * 200}, "model"),
    ({"messages": [HI], "max_output_tokens": -1}, "max_output_tokens"),
    ({"messages": [HI], "max_output_tokens": 8193}, "max_output_tokens"),
    ({"messages": [HI], "temperature": 2.5}, "temperature"),
    ({"messages": [HI], "temperature": -0.1}, "temperature"),
    ({"messages": [HI], "conversation": "conversations/../../etc"}, "conversation"),
]


@pytest.mark.parametrize(("fields", "field"), CHATS)
async def test_a_bad_complete_is_invalid_argument(offline: Llm, fields: dict[str, Any], field: str) -> None:
    err = await refused(offline.completions.Complete(cs.CompleteRequest(**fields), metadata=ADMIN))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in [f for f, _ in violations(err)]


@pytest.mark.parametrize(("fields", "field"), CHATS)
async def test_a_bad_stream_complete_is_invalid_argument(
    offline: Llm, fields: dict[str, Any], field: str
) -> None:
    call = offline.completions.StreamComplete(cs.StreamCompleteRequest(**fields), metadata=ADMIN)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in call:
            pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in [f for f, _ in violations(err.value)]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"page_size": -1}, "page_size"),
        ({"page_token": "not-a-token"}, "page_token"),
        ({"page_token": "bW9kZWxzOjk5"}, "page_token"),  # models:99, past the end
        ({"provider": 42}, "provider"),
    ],
)
async def test_a_bad_list_models_is_invalid_argument(
    offline: Llm, fields: dict[str, Any], field: str
) -> None:
    err = await refused(offline.models.ListModels(ms.ListModelsRequest(**fields), metadata=ADMIN))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in [f for f, _ in violations(err)]
