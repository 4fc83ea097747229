from __future__ import annotations

from typing import Any

import grpc
import pytest

from bhiv.crm.v1 import customer_service_pb2 as cust
from bhiv.identity.v1 import user_service_pb2 as us
from bhiv.identity.v1 import user_service_pb2_grpc as us_grpc
from bhiv_core.interceptors.errors import ErrorMappingInterceptor
from bhiv_core.interceptors.validation import ValidationInterceptor
from bhiv_core.runtime.chain import (
    DECODE,
    CallInfo,
    ChainedHandlers,
    Interceptor,
    PreCheckInterceptor,
    Selector,
    chain_order,
)
from bhiv_core.runtime.errors import NotFound, PermissionDenied
from tests.harness import serving
from tests.interceptors.test_audit import FakeSink
from tests.runtime.test_chain_decoding import (
    LOGIN,
    STREAM_COMPLETE,
    full_chain,
    server_stream,
    token_metadata,
    unary,
)

USER_SERVICE = us.DESCRIPTOR.services_by_name["UserService"]


class Recorder(PreCheckInterceptor):
    def __init__(self, name: str, log: list[str]):
        self.name, self.log = name, log

    async def check(self, call: CallInfo, request: Any, context: Any) -> None:
        self.log.append(self.name)


class Users:
    async def GetUser(self, request: us.GetUserRequest, context: Any) -> us.GetUserResponse:
        if request.name == "users/missing":
            raise NotFound(f"{request.name} does not exist")
        return us.GetUserResponse(user={"name": request.name, "username": "ada"})


def test_chain_order_is_declared_once_outermost_first() -> None:
    obs, audit, auth, rbac = Interceptor(), Interceptor(), Interceptor(), Interceptor()
    errors = ErrorMappingInterceptor("t")
    validation, screening = ValidationInterceptor(), Interceptor()
    chain = chain_order(
        observability=[obs],
        audit=audit,
        errors=errors,
        auth=auth,
        rbac=rbac,
        validation=validation,
        screening=screening,
    )
    flat = [c.inner if isinstance(c, Selector) else c for c in chain]
    assert flat == [obs, audit, errors, auth, DECODE, rbac, validation, screening]
    composed = ChainedHandlers(chain)
    assert composed.concerns_for("/bhiv.identity.v1.UserService/GetUser") == flat
    # Health and reflection bypass audit, auth, RBAC and screening; they are still observed (counted)
    # and decoded.
    assert composed.concerns_for("/grpc.health.v1.Health/Check") == [obs, errors, DECODE, validation]
    reflection = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    assert composed.concerns_for(reflection) == [obs, errors, DECODE, validation]


async def test_concerns_run_in_order_and_handler_answers() -> None:
    log: list[str] = []
    chain = lambda *_: [Recorder("outer", log), ErrorMappingInterceptor("t"), Recorder("inner", log)]
    async with serving([(USER_SERVICE, Users())], chain=chain) as (_, channel):
        reply = await us_grpc.UserServiceStub(channel).GetUser(us.GetUserRequest(name="users/u1"))
    assert reply.user.username == "ada"
    assert log == ["outer", "inner"]


class Refuser(PreCheckInterceptor):
    def __init__(self, log: list[str]):
        self.log = log

    async def check(self, call: CallInfo, request: Any, context: Any) -> None:
        self.log.append("refuser")
        if request.name == "users/refused":
            raise PermissionDenied("no")


class Wrapping(PreCheckInterceptor):
    """A pre-check that also wraps the call: it must keep its own intercept_unary."""

    def __init__(self, log: list[str]):
        self.log = log

    async def intercept_unary(self, call: CallInfo, request: Any, context: Any, proceed: Any) -> Any:
        self.log.append("wrap in")
        try:
            return await proceed(call, request, context)
        finally:
            self.log.append("wrap out")


async def test_consecutive_checks_run_in_order_and_a_refusal_stops_the_rest() -> None:
    log: list[str] = []

    def chain(*_: Any) -> list[Interceptor]:
        return [
            ErrorMappingInterceptor("t"),
            Recorder("a", log),
            Refuser(log),
            Recorder("b", log),
            Wrapping(log),
            Recorder("c", log),
        ]

    class Logged(Users):
        async def GetUser(self, request: us.GetUserRequest, context: Any) -> us.GetUserResponse:
            log.append("handler")
            return await super().GetUser(request, context)

    async with serving([(USER_SERVICE, Logged())], chain=chain) as (_, channel):
        stub = us_grpc.UserServiceStub(channel)
        await stub.GetUser(us.GetUserRequest(name="users/u1"))
        assert log == ["a", "refuser", "b", "wrap in", "c", "handler", "wrap out"]
        log.clear()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetUser(us.GetUserRequest(name="users/refused"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert log == ["a", "refuser"]


async def test_typed_error_becomes_its_status_code() -> None:
    async with serving([(USER_SERVICE, Users())]) as (_, channel):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await us_grpc.UserServiceStub(channel).GetUser(us.GetUserRequest(name="users/missing"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details() == "users/missing does not exist"


async def test_unbuilt_rpc_is_unimplemented_with_what_is_missing() -> None:
    async with serving([(USER_SERVICE, Users())]) as (_, channel):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await us_grpc.UserServiceStub(channel).ListUsers(us.ListUsersRequest())
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert err.value.details() == "bhiv.identity.v1.UserService/ListUsers is not implemented yet: test"


async def test_unknown_method_passes_the_chain_as_unimplemented() -> None:
    log: list[str] = []
    chain = lambda *_: [Recorder("seen", log), ErrorMappingInterceptor("t")]
    async with serving([(USER_SERVICE, Users())], chain=chain) as (_, channel):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await channel.unary_unary("/bhiv.nothing.v1.Nope/Call")(b"")
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert log == ["seen"]


async def test_rpc_another_service_serves_is_unimplemented_through_the_full_chain() -> None:
    # The descriptors of every service are in the process, but this server serves only UserService:
    # the concerns must treat another service's RPC as unknown, not bind to its request type (the
    # body is never decoded here) and read its fields from bytes (that was INTERNAL).
    sink = FakeSink()
    get_customer = "/bhiv.crm.v1.CustomerService/GetCustomer"
    body = cust.GetCustomerRequest(name="customers/c1").SerializeToString()
    async with serving([(USER_SERVICE, Users())], chain=full_chain(sink)) as (_, channel):
        for role in ("admin", "customer"):
            err = await unary(channel, get_customer, body, token_metadata(role))
            assert (err.code(), err.details()) == (
                grpc.StatusCode.UNIMPLEMENTED,
                "unknown method: no service of this server implements it",
            )
            err = await unary(channel, get_customer, b"\x80", token_metadata(role))
            assert err.code() == grpc.StatusCode.UNIMPLEMENTED
            err = await server_stream(channel, STREAM_COMPLETE, b"", token_metadata(role))
            assert err.code() == grpc.StatusCode.UNIMPLEMENTED
        # A public RPC elsewhere is no public RPC here: like any unknown name, it needs a token.
        assert (await unary(channel, LOGIN, b"")).code() == grpc.StatusCode.UNAUTHENTICATED
        err = await unary(channel, LOGIN, b"", token_metadata())
        assert err.code() == grpc.StatusCode.UNIMPLEMENTED
    assert [(e.method, e.outcome_code, e.resource) for e, _ in sink.records] == [
        (get_customer, "UNIMPLEMENTED", ""),
        (get_customer, "UNIMPLEMENTED", ""),
        (STREAM_COMPLETE, "UNIMPLEMENTED", ""),
    ] * 2 + [(LOGIN, "UNAUTHENTICATED", ""), (LOGIN, "UNIMPLEMENTED", "")]


async def test_unexpected_exception_is_internal_without_detail() -> None:
    class Broken:
        async def GetUser(self, request: Any, context: Any) -> Any:
            raise RuntimeError("secret detail")

    async with serving([(USER_SERVICE, Broken())]) as (_, channel):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await us_grpc.UserServiceStub(channel).GetUser(us.GetUserRequest(name="users/u1"))
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in (err.value.details() or "")


class Headers(PreCheckInterceptor):
    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    async def check(self, call: CallInfo, request: Any, context: Any) -> None:
        self.seen.append(dict(call.headers))


async def test_concerns_read_the_metadata_as_a_dict_keeping_the_first_of_repeated_keys() -> None:
    headers = Headers()
    async with serving([(USER_SERVICE, Users())], chain=lambda *_: [headers]) as (_, channel):
        await us_grpc.UserServiceStub(channel).GetUser(
            us.GetUserRequest(name="users/u1"),
            metadata=(("x-tenant", "first"), ("x-tenant", "second"), ("x-bin", b"\x00\x01")),
        )
    (seen,) = headers.seen
    assert seen["x-tenant"] == "first"
    assert seen["x-bin"] == b"\x00\x01"


class BindCounter(PreCheckInterceptor):
    """Counts how often the chain binds it, and refuses the model ``models/refused``."""

    def __init__(self, log: list[str]) -> None:
        self.log, self.binds = log, 0

    def bind(self, method: str, descriptor: Any) -> Any:
        self.binds += 1

        def check(call: CallInfo, request: Any, context: Any) -> None:
            self.log.append("check")
            if request.model == "models/refused":
                raise PermissionDenied("no")

        return check


async def test_stream_pre_checks_are_bound_once_per_method_and_run_before_the_first_item() -> None:
    from bhiv.llm.v1 import completion_service_pb2 as ccs
    from bhiv.llm.v1 import completion_service_pb2_grpc as ccs_grpc

    log: list[str] = []
    counter = BindCounter(log)

    class Completions:
        async def StreamComplete(self, request: Any, context: Any) -> Any:
            log.append("handler")
            yield ccs.StreamCompleteResponse(delta={"content": "a"})

    service = ccs.DESCRIPTOR.services_by_name["CompletionService"]
    chain = lambda *_: [ErrorMappingInterceptor("t"), Recorder("a", log), counter]
    async with serving([(service, Completions())], chain=chain) as (_, channel):
        stub = ccs_grpc.CompletionServiceStub(channel)
        for _ in range(2):
            replies = [r.delta.content async for r in stub.StreamComplete(ccs.StreamCompleteRequest())]
            assert replies == ["a"]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            _ = [r async for r in stub.StreamComplete(ccs.StreamCompleteRequest(model="models/refused"))]
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert log == ["a", "check", "handler"] * 2 + ["a", "check"]
    assert counter.binds == 1
