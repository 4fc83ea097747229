"""The error mapper: NotImplementedError is UNIMPLEMENTED, for unary and streaming RPCs alike."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from bhiv.identity.v1 import user_service_pb2 as us
from bhiv.identity.v1 import user_service_pb2_grpc as us_grpc
from bhiv.llm.v1 import completion_service_pb2 as cs
from bhiv.llm.v1 import completion_service_pb2_grpc as cs_grpc
from bhiv_core.interceptors.errors import ErrorMappingInterceptor
from tests.harness import serving

USER_SERVICE = us.DESCRIPTOR.services_by_name["UserService"]
COMPLETION_SERVICE = cs.DESCRIPTOR.services_by_name["CompletionService"]


def mapper_only(*_: Any) -> list[ErrorMappingInterceptor]:
    return [ErrorMappingInterceptor("identity.bhiv.core")]


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    trailers = dict(error.trailing_metadata() or ())
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info


async def test_not_implemented_error_in_a_unary_rpc_is_unimplemented() -> None:
    class Stub:
        async def GetUser(self, request: Any, context: Any) -> Any:
            raise NotImplementedError("GetUser comes later")

    async with serving([(USER_SERVICE, Stub())], chain=mapper_only) as (_, channel):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await us_grpc.UserServiceStub(channel).GetUser(us.GetUserRequest(name="users/u1"))
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert err.value.details() == "bhiv.identity.v1.UserService/GetUser is not implemented"
    assert (error_info(err.value).reason, error_info(err.value).domain) == (
        "NOT_IMPLEMENTED",
        "identity.bhiv.core",
    )


async def test_generated_base_method_is_unimplemented_not_internal() -> None:
    # The generated base sets UNIMPLEMENTED on the context and raises NotImplementedError.
    async with serving([(USER_SERVICE, us_grpc.UserServiceServicer())], chain=mapper_only) as (_, channel):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await us_grpc.UserServiceStub(channel).GetUser(us.GetUserRequest(name="users/u1"))
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_not_implemented_error_in_a_stream_is_unimplemented() -> None:
    class Stub:
        async def StreamComplete(self, request: Any, context: Any) -> AsyncIterator[Any]:
            yield cs.StreamCompleteResponse()
            raise NotImplementedError("the rest comes later")

    async with serving([(COMPLETION_SERVICE, Stub())], chain=mapper_only) as (_, channel):
        call = cs_grpc.CompletionServiceStub(channel).StreamComplete(cs.StreamCompleteRequest())
        received = []
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for item in call:
                received.append(item)
    assert len(received) == 1
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert err.value.details() == "bhiv.llm.v1.CompletionService/StreamComplete is not implemented"
