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
from bhiv_core.runtime.errors import (
    MAX_DETAILS_BYTES,
    MAX_MESSAGE_BYTES,
    MAX_TEXT_BYTES,
    MAX_VIOLATIONS,
    FieldViolation,
    InvalidArgument,
    NotFound,
    QuotaViolation,
    ResourceExhausted,
)
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


def trailer_bytes(error: grpc.aio.AioRpcError) -> int:
    """What the status costs on the wire: the message as sent, and every trailer."""
    sent = sum(len(k) + len(v) for k, v in error.trailing_metadata() or ())
    return sent + len((error.details() or "").encode())


def details_of(error: grpc.aio.AioRpcError) -> tuple[bytes, status_pb2.Status]:
    raw = dict(error.trailing_metadata() or ())["grpc-status-details-bin"]
    return raw, status_pb2.Status.FromString(raw)


async def raising(error: Exception) -> grpc.aio.AioRpcError:
    class Stub:
        async def GetUser(self, request: Any, context: Any) -> Any:
            raise error

    async with serving([(USER_SERVICE, Stub())], chain=mapper_only) as (_, channel):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await us_grpc.UserServiceStub(channel).GetUser(us.GetUserRequest(name="users/u1"))
    return err.value


async def test_hundreds_of_long_violations_make_a_bounded_status() -> None:
    # What UpdateUser answered 300 bogus mask paths: each echoed, 98 KB of trailer in all.
    violations = [
        FieldViolation(f"update_mask.paths[{i}]", f"{'x' * 10_000!r} cannot be updated", "UNKNOWN_PATH")
        for i in range(300)
    ]
    err = await raising(InvalidArgument(violations=violations))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    raw, status = details_of(err)
    assert len(raw) <= MAX_DETAILS_BYTES
    assert len((err.details() or "").encode()) <= MAX_MESSAGE_BYTES
    assert trailer_bytes(err) <= 8 * 1024
    info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    assert status.details[0].Unpack(info) and status.details[1].Unpack(bad)
    listed = len(bad.field_violations)
    assert 1 <= listed <= MAX_VIOLATIONS
    assert int(info.metadata["omitted_violations"]) == 300 - listed
    first = bad.field_violations[0]
    assert (first.field, first.reason) == ("update_mask.paths[0]", "UNKNOWN_PATH")
    assert len(first.description.encode()) <= MAX_TEXT_BYTES and first.description.endswith("…")
    assert (err.details() or "").endswith("…")


async def test_counted_violations_a_validator_did_not_keep_are_reported() -> None:
    kept = [FieldViolation(f"items[{i}]", "is required", "REQUIRED") for i in range(3)]
    err = await raising(InvalidArgument(violations=kept, omitted=1_000_000))
    _, status = details_of(err)
    info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    assert status.details[0].Unpack(info) and status.details[1].Unpack(bad)
    assert [v.field for v in bad.field_violations] == ["items[0]", "items[1]", "items[2]"]
    assert info.metadata["omitted_violations"] == "1000000"
    assert err.details() == (
        "items[0]: is required; items[1]: is required; items[2]: is required; and 1000000 more"
    )


async def test_any_error_is_bounded_not_only_validation() -> None:
    # Multi-byte characters: the cap is in bytes, and a cut never splits a character.
    err = await raising(NotFound("é" * 1_000_000, metadata={"name": "n" * 1_000_000}))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    message = err.details() or ""
    assert len(message.encode()) <= MAX_MESSAGE_BYTES and message.endswith("é…")
    raw, status = details_of(err)
    assert len(raw) <= MAX_DETAILS_BYTES
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert len(info.metadata["name"].encode()) <= MAX_TEXT_BYTES
    assert trailer_bytes(err) <= 8 * 1024

    quota = [QuotaViolation(f"subject-{i}-{'s' * 1000}", "d" * 1000) for i in range(500)]
    err = await raising(ResourceExhausted("slow down", violations=quota))
    raw, status = details_of(err)
    failure = error_details_pb2.QuotaFailure()
    assert status.details[1].Unpack(failure)
    assert len(raw) <= MAX_DETAILS_BYTES and 1 <= len(failure.violations) <= MAX_VIOLATIONS
    assert all(len(v.subject.encode()) <= MAX_TEXT_BYTES for v in failure.violations)
