"""Auth and RBAC in a real server: codes, principals, public RPCs and service scopes."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from bhiv.identity.v1 import auth_service_pb2 as auth
from bhiv.identity.v1 import auth_service_pb2_grpc as auth_grpc
from bhiv.identity.v1 import user_pb2
from bhiv.identity.v1 import user_service_pb2 as us
from bhiv.identity.v1 import user_service_pb2_grpc as us_grpc
from bhiv_core.interceptors.auth import AuthInterceptor, bearer_token
from bhiv_core.interceptors.errors import ErrorMappingInterceptor
from bhiv_core.interceptors.rbac import RbacInterceptor, RolePolicy
from bhiv_core.runtime.chain import chain_order
from bhiv_core.security.principal import current_principal
from tests.harness import serving
from tests.security.tokens import Signer, unsigned_token, verifier_for

USERS = us.DESCRIPTOR.services_by_name["UserService"]
AUTH = auth.DESCRIPTOR.services_by_name["AuthService"]
SIGNER = Signer()


class Users:
    async def GetUser(self, request: Any, context: Any) -> us.GetUserResponse:
        principal = current_principal.get()
        assert principal is not None
        return us.GetUserResponse(user=user_pb2.User(name=principal.subject, display_name=principal.role))


class Auth:
    async def GetJwks(self, request: Any, context: Any) -> auth.GetJwksResponse:
        return auth.GetJwksResponse(jwks_json='{"keys": []}')


def chain(*_: Any) -> list[Any]:
    return chain_order(
        errors=ErrorMappingInterceptor("t"),
        auth=AuthInterceptor(verifier_for(SIGNER)),
        rbac=RbacInterceptor(RolePolicy()),
    )


async def call_get_user(token: str | None, name: str = "users/u1") -> grpc.StatusCode | us.GetUserResponse:
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    async with serving([(USERS, Users()), (AUTH, Auth())], chain=chain) as (_, channel):
        try:
            return await us_grpc.UserServiceStub(channel).GetUser(
                us.GetUserRequest(name=name), metadata=metadata
            )
        except grpc.aio.AioRpcError as err:
            assert err.details() in ("authentication required", "invalid or expired credentials") or (
                err.code() == grpc.StatusCode.PERMISSION_DENIED
            )
            return err.code()


def test_bearer_token_parsing() -> None:
    assert bearer_token((("authorization", "Bearer abc"),)) == "abc"
    assert bearer_token((("authorization", "bearer abc"),)) == "abc"
    assert bearer_token((("authorization", "Basic abc"),)) is None
    assert bearer_token(()) is None


async def test_missing_token_is_unauthenticated() -> None:
    assert await call_get_user(None) == grpc.StatusCode.UNAUTHENTICATED


async def test_alg_none_is_unauthenticated() -> None:
    assert await call_get_user(unsigned_token(SIGNER.claims(role="admin"))) == grpc.StatusCode.UNAUTHENTICATED


async def test_allowed_role_reaches_the_handler_with_its_principal() -> None:
    reply = await call_get_user(SIGNER.token(role="ops"))
    assert isinstance(reply, us.GetUserResponse)
    assert (reply.user.name, reply.user.display_name) == ("users/u1", "ops")


async def test_role_lacking_identity_read_is_denied_another_user() -> None:
    token = SIGNER.token(sub="users/u1", role="sales")
    assert await call_get_user(token, name="users/u2") == grpc.StatusCode.PERMISSION_DENIED


async def test_every_role_may_get_its_own_user_as_the_contract_says() -> None:
    for role in ("admin", "ops", "sales", "support", "customer"):
        reply = await call_get_user(SIGNER.token(sub="users/u1", role=role), name="users/u1")
        assert isinstance(reply, us.GetUserResponse), role
        assert (reply.user.name, reply.user.display_name) == ("users/u1", role)


async def test_the_self_case_still_needs_the_self_permission() -> None:
    # A role the matrix does not know holds no identity.self.read: naming itself does not help.
    token = SIGNER.token(sub="users/u1", role="nobody")
    assert await call_get_user(token, name="users/u1") == grpc.StatusCode.PERMISSION_DENIED


async def denial(token: str, request: us.DisableUserRequest) -> grpc.aio.AioRpcError:
    async with serving([(USERS, Users())], chain=chain) as (_, channel):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await us_grpc.UserServiceStub(channel).DisableUser(
                request, metadata=(("authorization", f"Bearer {token}"),)
            )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    return err.value


def error_info(err: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    status = status_pb2.Status.FromString(dict(err.trailing_metadata() or ())["grpc-status-details-bin"])
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info


async def test_a_customer_refused_learns_neither_its_role_nor_the_missing_permission() -> None:
    err = await denial(SIGNER.token(role="customer"), us.DisableUserRequest(name="users/u2"))
    assert err.details() == "you may not call this RPC"
    info = error_info(err)
    assert info.reason == "MISSING_PERMISSION"
    assert dict(info.metadata) == {}
    raw = dict(err.trailing_metadata() or ())["grpc-status-details-bin"]
    assert b"customer" not in raw and b"identity.users.write" not in raw


async def test_staff_refused_are_told_their_role_and_the_missing_permission() -> None:
    for role in ("ops", "sales", "support"):
        err = await denial(SIGNER.token(role=role), us.DisableUserRequest(name="users/u2"))
        assert err.details() == f"{role} may not call this RPC: it requires identity.users.write"
        assert dict(error_info(err).metadata) == {"permission": "identity.users.write"}


async def test_role_without_the_permission_is_denied() -> None:
    assert await call_get_user(SIGNER.token(role="nobody")) == grpc.StatusCode.PERMISSION_DENIED


async def test_service_token_gets_only_its_scope() -> None:
    token = SIGNER.token(sub="services/identity", role="admin", scope="sentinel.events.write")
    assert await call_get_user(token) == grpc.StatusCode.PERMISSION_DENIED


async def test_public_rpc_needs_no_token() -> None:
    async with serving([(USERS, Users()), (AUTH, Auth())], chain=chain) as (_, channel):
        reply = await auth_grpc.AuthServiceStub(channel).GetJwks(auth.GetJwksRequest())
    assert reply.jwks_json == '{"keys": []}'


async def test_permission_is_checked_before_existence() -> None:
    async with serving([(USERS, Users())], chain=chain) as (_, channel):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await us_grpc.UserServiceStub(channel).DisableUser(
                us.DisableUserRequest(name="users/nope"),
                metadata=(("authorization", f"Bearer {SIGNER.token(role='customer')}"),),
            )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_checks_are_bound_once_per_method_and_skipped_where_nothing_is_checked() -> None:
    from bhiv.identity.v1 import role_service_pb2 as rs
    from bhiv_core.interceptors.validation import ValidationInterceptor

    get_user = USERS.methods_by_name["GetUser"]
    get_jwks = AUTH.methods_by_name["GetJwks"]  # public
    list_roles = rs.DESCRIPTOR.services_by_name["RoleService"].methods_by_name["ListRoles"]
    auth_check = AuthInterceptor(verifier_for(SIGNER))
    rbac = RbacInterceptor(RolePolicy())
    validation = ValidationInterceptor()
    assert auth_check.bind("/x/GetJwks", get_jwks) is None
    assert auth_check.bind("/bhiv.scan.v1.Nothing/Probe", None) is not None  # unknown: a token first
    assert auth_check.bind("/x/GetUser", get_user) is not None
    assert rbac.bind("/x/GetJwks", get_jwks) is None
    assert rbac.bind("/bhiv.scan.v1.Nothing/Probe", None) is None  # answers UNIMPLEMENTED
    assert rbac.bind("/x/GetUser", get_user) is not None
    assert validation.bind("/x/GetJwks", get_jwks) is None  # GetJwksRequest carries no rules
    assert validation.bind("/x/ListRoles", list_roles) is not None  # page_size >= 0
    assert validation.bind("/bhiv.scan.v1.Nothing/Probe", None) is None


async def test_a_token_verified_once_is_admitted_from_the_cache_without_awaiting() -> None:
    from bhiv_core.runtime.chain import CallInfo

    verifier = verifier_for(SIGNER)
    interceptor = AuthInterceptor(verifier)
    check = interceptor.bind("/x/GetUser", USERS.methods_by_name["GetUser"])
    assert check is not None
    token = SIGNER.token(role="admin")
    call = CallInfo("/x/GetUser", None, "ipv4:127.0.0.1:1", {"authorization": f"Bearer {token}"}, 0.0)
    first = check(call, None, None)  # type: ignore[arg-type]
    assert first is not None  # not verified yet: it must await the signature check
    await first
    again = CallInfo("/x/GetUser", None, "ipv4:127.0.0.1:1", {"authorization": f"Bearer {token}"}, 0.0)
    assert check(again, None, None) is None  # type: ignore[arg-type]
    assert again.principal == call.principal and again.principal.role == "admin"
