"""Service-to-service calls carry the caller's identity: the callee sees the original principal."""

from __future__ import annotations

from typing import Any

from bhiv.identity.v1 import auth_service_pb2 as auth
from bhiv.identity.v1 import auth_service_pb2_grpc as auth_grpc
from bhiv.identity.v1 import user_pb2
from bhiv.identity.v1 import user_service_pb2 as us
from bhiv.identity.v1 import user_service_pb2_grpc as us_grpc
from bhiv_core.interceptors.auth import bearer_token
from bhiv_core.runtime.chain import CallInfo, PreCheckInterceptor
from bhiv_core.runtime.clients import PeerChannels
from bhiv_core.security.principal import Principal, current_principal
from tests.harness import serving

AUTH = auth.DESCRIPTOR.services_by_name["AuthService"]
USERS = us.DESCRIPTOR.services_by_name["UserService"]


class TokenIsPrincipal(PreCheckInterceptor):
    """A stand-in for auth: the bearer token's text becomes the subject."""

    async def check(self, call: CallInfo, request: Any, context: Any) -> None:
        token = bearer_token(context.invocation_metadata())
        if token:
            principal = Principal(subject=f"users/{token}", role="ops", token=token)
            call.principal = principal
            current_principal.set(principal)


class Downstream:
    """Service B: answers with the subject it sees."""

    async def GetCurrentUser(self, request: Any, context: Any) -> auth.GetCurrentUserResponse:
        principal = current_principal.get()
        return auth.GetCurrentUserResponse(user=user_pb2.User(name=principal.subject if principal else ""))


class Upstream:
    """Service A: calls B while handling a request, with the shared channel pool."""

    def __init__(self, channels: PeerChannels):
        self.channels = channels

    async def GetUser(self, request: Any, context: Any) -> us.GetUserResponse:
        stub = auth_grpc.AuthServiceStub(self.channels.channel("identity"))
        reply = await stub.GetCurrentUser(auth.GetCurrentUserRequest())
        return us.GetUserResponse(user=reply.user)


def chain(*_: Any) -> list[Any]:
    return [TokenIsPrincipal()]


async def test_a_call_made_while_handling_a_request_forwards_the_callers_token() -> None:
    async with serving([(AUTH, Downstream())], chain=chain) as (b, _):
        channels = PeerChannels({"identity": b.address})
        try:
            async with serving([(USERS, Upstream(channels))], chain=chain) as (_, channel):
                reply = await us_grpc.UserServiceStub(channel).GetUser(
                    us.GetUserRequest(name="users/x"), metadata=(("authorization", "Bearer alice"),)
                )
                anonymous = await us_grpc.UserServiceStub(channel).GetUser(us.GetUserRequest(name="users/x"))
        finally:
            await channels.close()
    assert reply.user.name == "users/alice"
    assert anonymous.user.name == ""
