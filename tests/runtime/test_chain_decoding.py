"""Request bodies that do not decode: answered by the chain (auth first), audited, one WARNING.

grpc would decode a body before any concern runs and answer one that does not parse with UNKNOWN,
unaudited, logging an ERROR traceback. The chain decodes it itself, after auth.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from bhiv.identity.v1 import auth_service_pb2 as auth
from bhiv.identity.v1 import user_service_pb2 as us
from bhiv.llm.v1 import completion_service_pb2 as cs
from bhiv_core.interceptors.audit import AuditInterceptor
from bhiv_core.interceptors.auth import AuthInterceptor
from bhiv_core.interceptors.errors import ErrorMappingInterceptor
from bhiv_core.interceptors.rbac import RbacInterceptor, RolePolicy
from bhiv_core.interceptors.validation import ValidationInterceptor
from bhiv_core.runtime.chain import ChainedHandlers, chain_order
from tests.harness import serving
from tests.interceptors.test_audit import FakeSink
from tests.security.tokens import Signer, verifier_for

USERS = us.DESCRIPTOR.services_by_name["UserService"]
AUTH = auth.DESCRIPTOR.services_by_name["AuthService"]
COMPLETIONS = cs.DESCRIPTOR.services_by_name["CompletionService"]
SIGNER = Signer()

LOGIN = "/bhiv.identity.v1.AuthService/Login"  # public
UPDATE_USER = "/bhiv.identity.v1.UserService/UpdateUser"  # needs a token
STREAM_COMPLETE = "/bhiv.llm.v1.CompletionService/StreamComplete"  # server streaming, needs a token
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
HEALTH_WATCH = "/grpc.health.v1.Health/Watch"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
REFLECTION_V1 = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"

# A group that is never closed, a cut-off varint, and (as field 2, a string or message in every
# request type it is sent to) two bytes of invalid UTF-8 / a cut-off tag.
BODIES = [bytes.fromhex(h) for h in ("3b", "80", "1202c080")]
# The same for messages whose string is field 1 (health's service name).
FIELD1_BODIES = [bytes.fromhex(h) for h in ("3b", "80", "0a02c080")]


class Servicer:
    """Answers every RPC used here; a decoded request reaching it is a bug of the test."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def Login(self, request: Any, context: Any) -> auth.LoginResponse:
        self.calls.append("Login")
        return auth.LoginResponse()

    async def UpdateUser(self, request: Any, context: Any) -> us.UpdateUserResponse:
        self.calls.append("UpdateUser")
        return us.UpdateUserResponse(user=request.user)

    async def StreamComplete(self, request: Any, context: Any) -> AsyncIterator[cs.StreamCompleteResponse]:
        self.calls.append("StreamComplete")
        yield cs.StreamCompleteResponse()


def full_chain(sink: FakeSink) -> Any:
    def chain(*_: Any) -> list[Any]:
        return chain_order(
            audit=AuditInterceptor(sink, "identity"),
            errors=ErrorMappingInterceptor("identity.bhiv.core"),
            auth=AuthInterceptor(verifier_for(SIGNER)),
            rbac=RbacInterceptor(RolePolicy()),
            validation=ValidationInterceptor(),
        )

    return chain


def token_metadata(role: str = "admin") -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {SIGNER.token(role=role)}"),)


async def unary(
    channel: grpc.aio.Channel, method: str, body: bytes, metadata: Any = ()
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await channel.unary_unary(method)(body, metadata=metadata, timeout=10)
    return err.value


async def server_stream(
    channel: grpc.aio.Channel, method: str, body: bytes, metadata: Any = ()
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in channel.unary_stream(method)(body, metadata=metadata, timeout=10):
            pass
    return err.value


def reason_of(err: grpc.aio.AioRpcError) -> str:
    raw = dict(err.trailing_metadata() or ()).get("grpc-status-details-bin")
    assert isinstance(raw, bytes), "no status details"
    status = status_pb2.Status.FromString(raw)
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info.reason


def assert_malformed(err: grpc.aio.AioRpcError, type_name: str) -> None:
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    assert err.details() == f"the request body is not a valid {type_name}"
    assert reason_of(err) == "MALFORMED_REQUEST"


@pytest.fixture
def warnings(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO)
    return caplog


def decode_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == "request body does not decode"]


def assert_one_warning_each_and_no_error(caplog: pytest.LogCaptureFixture, count: int) -> None:
    found = decode_warnings(caplog)
    assert len(found) == count
    assert all(r.levelno == logging.WARNING and r.exc_info is None for r in found)
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_undecodable_body_on_a_public_rpc_is_invalid_argument_audited_and_warned(
    warnings: pytest.LogCaptureFixture,
) -> None:
    sink, servicer = FakeSink(), Servicer()
    async with serving([(AUTH, servicer)], chain=full_chain(sink)) as (_, channel):
        for body in BODIES:
            assert_malformed(await unary(channel, LOGIN, body), "bhiv.identity.v1.LoginRequest")
    assert servicer.calls == []
    assert [(e.method, e.outcome_code, e.principal) for e, _ in sink.records] == [
        (LOGIN, "INVALID_ARGUMENT", "")
    ] * len(BODIES)
    assert_one_warning_each_and_no_error(warnings, len(BODIES))
    assert decode_warnings(warnings)[0].__dict__["method"] == LOGIN


async def test_undecodable_body_without_a_token_is_unauthenticated(
    warnings: pytest.LogCaptureFixture,
) -> None:
    sink, servicer = FakeSink(), Servicer()
    async with serving([(USERS, servicer), (COMPLETIONS, servicer)], chain=full_chain(sink)) as (_, channel):
        for body in BODIES:
            assert (await unary(channel, UPDATE_USER, body)).code() == grpc.StatusCode.UNAUTHENTICATED
            assert (await server_stream(channel, STREAM_COMPLETE, body)).code() == (
                grpc.StatusCode.UNAUTHENTICATED
            )
    assert {(e.method, e.outcome_code) for e, _ in sink.records} == {
        (UPDATE_USER, "UNAUTHENTICATED"),
        (STREAM_COMPLETE, "UNAUTHENTICATED"),
    }
    assert len(sink.records) == 2 * len(BODIES)
    # Nothing was decoded, so there is nothing to warn about.
    assert_one_warning_each_and_no_error(warnings, 0)


async def test_undecodable_body_with_a_valid_token_is_invalid_argument_whatever_the_role(
    warnings: pytest.LogCaptureFixture,
) -> None:
    sink, servicer = FakeSink(), Servicer()
    async with serving([(USERS, servicer), (COMPLETIONS, servicer)], chain=full_chain(sink)) as (_, channel):
        for role in ("admin", "customer"):
            for body in BODIES:
                err = await unary(channel, UPDATE_USER, body, token_metadata(role))
                assert_malformed(err, "bhiv.identity.v1.UpdateUserRequest")
                err = await server_stream(channel, STREAM_COMPLETE, body, token_metadata(role))
                assert_malformed(err, "bhiv.llm.v1.StreamCompleteRequest")
    assert servicer.calls == []
    assert {(e.method, e.outcome_code, e.principal) for e, _ in sink.records} == {
        (UPDATE_USER, "INVALID_ARGUMENT", "users/u1"),
        (STREAM_COMPLETE, "INVALID_ARGUMENT", "users/u1"),
    }
    assert len(sink.records) == 2 * 2 * len(BODIES)
    assert_one_warning_each_and_no_error(warnings, 2 * 2 * len(BODIES))


async def test_undecodable_body_to_health_and_reflection_is_invalid_argument(
    warnings: pytest.LogCaptureFixture,
) -> None:
    sink = FakeSink()
    async with serving([(USERS, Servicer())], chain=full_chain(sink)) as (_, channel):
        for body in FIELD1_BODIES:
            assert_malformed(await unary(channel, HEALTH_CHECK, body), "grpc.health.v1.HealthCheckRequest")
            err = await server_stream(channel, HEALTH_WATCH, body)
            assert_malformed(err, "grpc.health.v1.HealthCheckRequest")
        for method in (REFLECTION, REFLECTION_V1):
            # A client stream: the first message is good and answered, the second does not decode.
            good = reflection_pb2.ServerReflectionRequest(list_services="").SerializeToString()
            call = channel.stream_stream(method)(iter([good, bytes.fromhex("3b")]), timeout=10)
            replies = []
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for reply in call:
                    replies.append(reply)
            assert len(replies) == 1
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert reason_of(err.value) == "MALFORMED_REQUEST"
    # Probes are never audited (only counted), malformed or not; each still logs its one WARNING.
    assert sink.records == []
    assert_one_warning_each_and_no_error(warnings, 2 * len(FIELD1_BODIES) + 2)


async def test_a_good_request_is_decoded_once_and_reaches_audit_and_the_handler() -> None:
    sink, servicer = FakeSink(), Servicer()
    async with serving([(USERS, servicer)], chain=full_chain(sink)) as (_, channel):
        request = us.UpdateUserRequest(
            user={"name": "users/u7", "display_name": "Ada"}, update_mask={"paths": ["display_name"]}
        )
        reply = await channel.unary_unary(UPDATE_USER)(
            request.SerializeToString(), metadata=token_metadata(), timeout=10
        )
        health = health_pb2.HealthCheckRequest().SerializeToString()
        await channel.unary_unary(HEALTH_CHECK)(health, timeout=10)
    assert us.UpdateUserResponse.FromString(reply).user.display_name == "Ada"
    assert servicer.calls == ["UpdateUser"]
    # The audit concern runs before decoding and still names the resource of the decoded request.
    first, _ = sink.records[0]
    assert (first.method, first.resource, first.outcome_code) == (UPDATE_USER, "users/u7", "OK")


async def test_the_chain_decodes_each_request_exactly_once() -> None:
    decoded: list[bytes] = []

    def deserializer(body: bytes) -> health_pb2.HealthCheckRequest:
        decoded.append(body)
        return health_pb2.HealthCheckRequest.FromString(body)

    async def check(request: health_pb2.HealthCheckRequest, context: Any) -> health_pb2.HealthCheckResponse:
        assert isinstance(request, health_pb2.HealthCheckRequest)
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    handler = grpc.unary_unary_rpc_method_handler(
        check,
        request_deserializer=deserializer,
        response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
    )
    generic = grpc.method_handlers_generic_handler("grpc.health.v1.Health", {"Check": handler})
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (ChainedHandlers(chain_order(errors=ErrorMappingInterceptor("t")), [generic]),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            body = health_pb2.HealthCheckRequest(service="x").SerializeToString()
            await channel.unary_unary(HEALTH_CHECK)(body, timeout=10)
            assert_malformed(await unary(channel, HEALTH_CHECK, b"\x80"), "grpc.health.v1.HealthCheckRequest")
    finally:
        await server.stop(0)
    assert decoded == [body, b"\x80"]
