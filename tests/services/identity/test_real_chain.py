"""Identity behind the shared auth and RBAC interceptors, fed locally by the identity service itself.

Checks the wiring the identity process needs: the verifier takes its keys from
``IdentityService.key_source()`` and its revocations from ``IdentityService.revoked_since``; RBAC
checks the contract permission first and identity checks ownership after it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

# Plain imports: a broken module must fail these tests, not skip them.
import bhiv_core.interceptors.auth as auth_interceptors
import bhiv_core.interceptors.rbac as rbac
import bhiv_core.security.jwt as security_jwt
from bhiv.identity.v1 import auth_service_pb2 as auth
from bhiv.identity.v1 import auth_service_pb2_grpc as auth_grpc
from bhiv.identity.v1 import user_pb2
from bhiv.identity.v1 import user_service_pb2 as us
from bhiv.identity.v1 import user_service_pb2_grpc as us_grpc
from bhiv_core.interceptors.errors import ErrorMappingInterceptor
from bhiv_core.interceptors.validation import ValidationInterceptor
from bhiv_core.services.identity.server import definition
from bhiv_core.services.identity.service import IdentityService
from tests.harness import serving
from tests.services.identity.conftest import admin_password, bearer, make_service

PASSWORD = "a long enough password"


@dataclass
class Chained:
    service: IdentityService
    revocations: object
    auth: auth_grpc.AuthServiceAsyncStub
    users: us_grpc.UserServiceAsyncStub


@pytest.fixture
async def chained(tmp_path: Path) -> AsyncIterator[Chained]:
    runtime, service = make_service(tmp_path)
    built = definition(runtime, service=service)
    for hook in built.on_start:
        await hook()
    revocations = security_jwt.RevocationSet(service.revoked_since)
    # No refresh cooldown: the tests rotate within seconds of the verifier's first key fetch.
    verifier = security_jwt.JwtVerifier(
        service.key_source(),
        revocations,
        issuer=service.config.issuer,
        audience=service.config.audience,
        refresh_cooldown=0.0,
    )
    chain = lambda *_: [
        ErrorMappingInterceptor("identity.bhiv.core"),
        auth_interceptors.AuthInterceptor(verifier),
        rbac.RbacInterceptor(rbac.RolePolicy()),
        ValidationInterceptor(),
    ]
    try:
        async with serving(built.servicers, chain=chain, config=runtime) as (_, channel):
            yield Chained(
                service, revocations, auth_grpc.AuthServiceStub(channel), us_grpc.UserServiceStub(channel)
            )
    finally:
        for hook in built.on_stop:
            await hook()


async def login(chained: Chained, username: str, password: str) -> auth.LoginResponse:
    return await chained.auth.Login(auth.LoginRequest(username=username, password=password))


async def test_tokens_verify_with_local_keys_and_logout_revokes_through_the_poll(
    chained: Chained, tmp_path
) -> None:
    tokens = (await login(chained, "admin", admin_password(tmp_path))).tokens
    me = await chained.auth.GetCurrentUser(auth.GetCurrentUserRequest(), metadata=bearer(tokens.access_token))
    assert me.user.username == "admin"
    await chained.auth.Logout(auth.LogoutRequest(), metadata=bearer(tokens.access_token))
    await chained.revocations.poll_once()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await chained.auth.GetCurrentUser(auth.GetCurrentUserRequest(), metadata=bearer(tokens.access_token))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_rbac_denies_first_and_ownership_hides_other_users(chained: Chained, tmp_path) -> None:
    admin = (await login(chained, "admin", admin_password(tmp_path))).tokens.access_token
    for username, role, customer in [
        ("carl", user_pb2.ROLE_CUSTOMER, "customers/c1"),
        ("sam", user_pb2.ROLE_SALES, ""),
    ]:
        await chained.users.CreateUser(
            us.CreateUserRequest(
                user=user_pb2.User(username=username, role=role, customer=customer), password=PASSWORD
            ),
            metadata=bearer(admin),
        )
    carl = (await login(chained, "carl", PASSWORD)).tokens.access_token
    sam = await login(chained, "sam", PASSWORD)

    # Customers hold identity.users.read, so RBAC lets them through; identity hides other users.
    with pytest.raises(grpc.aio.AioRpcError) as hidden:
        await chained.users.GetUser(us.GetUserRequest(name=sam.user.name), metadata=bearer(carl))
    assert hidden.value.code() == grpc.StatusCode.NOT_FOUND
    # Sales does not hold identity.users.read: RBAC refuses before identity runs.
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await chained.users.ListUsers(us.ListUsersRequest(), metadata=bearer(sam.tokens.access_token))
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # Customers may not create users at all.
    with pytest.raises(grpc.aio.AioRpcError) as create:
        await chained.users.CreateUser(
            us.CreateUserRequest(
                user=user_pb2.User(username="x-y-z", role=user_pb2.ROLE_ADMIN), password=PASSWORD
            ),
            metadata=bearer(carl),
        )
    assert create.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_rotated_key_is_picked_up_by_the_local_verifier(chained: Chained, tmp_path) -> None:
    admin = (await login(chained, "admin", admin_password(tmp_path))).tokens.access_token
    await chained.auth.RotateSigningKey(auth.RotateSigningKeyRequest(), metadata=bearer(admin))
    fresh = (await login(chained, "admin", admin_password(tmp_path))).tokens.access_token
    me = await chained.auth.GetCurrentUser(auth.GetCurrentUserRequest(), metadata=bearer(fresh))
    assert me.user.username == "admin"
    again = await chained.auth.GetCurrentUser(auth.GetCurrentUserRequest(), metadata=bearer(admin))
    assert again.user.username == "admin"


async def test_staff_without_users_read_get_themselves_and_are_refused_others_whether_or_not_they_exist(
    chained: Chained, tmp_path
) -> None:
    admin = await login(chained, "admin", admin_password(tmp_path))
    for username, role in [("sam", user_pb2.ROLE_SALES), ("sue", user_pb2.ROLE_SUPPORT)]:
        await chained.users.CreateUser(
            us.CreateUserRequest(user=user_pb2.User(username=username, role=role), password=PASSWORD),
            metadata=bearer(admin.tokens.access_token),
        )
        me = await login(chained, username, PASSWORD)
        own = await chained.users.GetUser(
            us.GetUserRequest(name=me.user.name), metadata=bearer(me.tokens.access_token)
        )
        assert own.user == me.user
        refusals = []
        for other in (admin.user.name, "users/doesnotexist"):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await chained.users.GetUser(
                    us.GetUserRequest(name=other), metadata=bearer(me.tokens.access_token)
                )
            refusals.append((err.value.code(), err.value.details()))
        assert refusals[0] == refusals[1]
        assert refusals[0][0] == grpc.StatusCode.PERMISSION_DENIED
