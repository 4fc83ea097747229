"""The identity RPCs through a real server, with a test auth interceptor that sets the principal."""

from __future__ import annotations

import asyncio
import json

import grpc
import jwt
import pytest
from google.protobuf import field_mask_pb2, timestamp_pb2
from google.rpc import error_details_pb2, status_pb2

from bhiv.identity.v1 import auth_service_pb2 as auth
from bhiv.identity.v1 import role_service_pb2 as roles
from bhiv.identity.v1 import user_pb2
from bhiv.identity.v1 import user_service_pb2 as us
from bhiv_core.services.identity.config import DEFAULT_MIN_ROTATION_SECONDS
from bhiv_core.services.identity.service import SecurityEventKind
from bhiv_core.services.identity.tokens import decode_access_token, hash_refresh_token
from tests.harness import trusting_edge
from tests.services.identity.conftest import Served, admin_password, bearer
from tests.storage.page_tokens import damaged, hostile_page_tokens

PASSWORD = "a long enough password"


def details(err: grpc.aio.AioRpcError) -> tuple[error_details_pb2.ErrorInfo, list]:
    raw = dict(err.trailing_metadata() or ())["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(raw)
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    extra = []
    for packed in status.details[1:]:
        for kind in (error_details_pb2.BadRequest, error_details_pb2.QuotaFailure):
            message = kind()
            if packed.Unpack(message):
                extra.append(message)
    return info, extra


def violations(err: grpc.aio.AioRpcError) -> set[tuple[str, str]]:
    _, extra = details(err)
    (bad,) = [m for m in extra if isinstance(m, error_details_pb2.BadRequest)]
    return {(v.field, v.reason) for v in bad.field_violations}


async def create(
    served: Served, token: str, username: str, role=user_pb2.ROLE_OPS, **fields
) -> user_pb2.User:
    reply = await served.users.CreateUser(
        us.CreateUserRequest(user=user_pb2.User(username=username, role=role, **fields), password=PASSWORD),
        metadata=bearer(token),
    )
    return reply.user


async def claims_of(served: Served, token: str) -> dict:
    config = served.service.config
    return decode_access_token(
        token, await served.service.public_keys(), issuer=config.issuer, audience=config.audience
    )


# ------------------------------------------------------------------------------------------ login


async def test_login_returns_a_token_pair_and_the_user(served: Served) -> None:
    reply = await served.login("admin", admin_password(served.data_dir))
    assert reply.tokens.token_type == "Bearer"
    assert reply.tokens.expires_in == 900
    assert reply.tokens.refresh_token and reply.tokens.refresh_expire_time.seconds > 0
    assert (reply.user.username, reply.user.role) == ("admin", user_pb2.ROLE_ADMIN)
    claims = await claims_of(served, reply.tokens.access_token)
    assert (claims["sub"], claims["role"]) == (reply.user.name, "admin")
    me = await served.auth.GetCurrentUser(
        auth.GetCurrentUserRequest(), metadata=bearer(reply.tokens.access_token)
    )
    assert me.user == reply.user


async def test_wrong_password_and_unknown_user_are_unauthenticated_with_one_message(served: Served) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as wrong:
        await served.login("admin", "not the password")
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await served.login("nobody", "not the password")
    for err in (wrong.value, unknown.value):
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert err.details() == "invalid username or password"
        assert details(err)[0].reason == "INVALID_CREDENTIALS"


async def test_five_failures_back_a_username_off_with_a_refusal_that_names_no_user_and_no_count(
    served: Served,
) -> None:
    served.clock.freeze()  # the first backoff lasts 1 s: a slow machine must not see it lift
    password = admin_password(served.data_dir)
    for _ in range(5):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await served.login("admin", "wrong password")
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # Backing off now (1 s after the fifth failure): even the right password is refused.
    with pytest.raises(grpc.aio.AioRpcError) as locked:
        await served.login("admin", password)
    assert locked.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert locked.value.details() == "too many failed logins: try again in 1 s"
    info, extra = details(locked.value)
    assert (info.reason, dict(info.metadata)) == ("LOGIN_BACKOFF", {"retry_after_seconds": "1"})
    (quota,) = [m for m in extra if isinstance(m, error_details_pb2.QuotaFailure)]
    assert [(v.subject, v.description) for v in quota.violations] == [
        ("login", "too many failed logins; wait before trying again")
    ]
    admin = await served.service.store.get_user_by_username("admin")
    assert admin is not None
    raw = dict(locked.value.trailing_metadata() or ())["grpc-status-details-bin"]
    assert admin.id.encode() not in raw and b"5" not in raw  # neither the id nor the count

    served.clock.advance(1.5)
    await served.login("admin", password)
    # The success forgot the failures of admin from this address: five more before a backoff.
    for _ in range(4):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await served.login("admin", "wrong password")
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_backoff_doubles_with_each_further_failure(served: Served) -> None:
    served.clock.freeze()
    for _ in range(5):
        with pytest.raises(grpc.aio.AioRpcError):
            await served.login("admin", "wrong password")
    served.clock.advance(1.5)
    with pytest.raises(grpc.aio.AioRpcError) as sixth:
        await served.login("admin", "wrong password")
    assert sixth.value.code() == grpc.StatusCode.UNAUTHENTICATED
    served.clock.advance(1.5)  # the sixth failure locked for 2 s
    with pytest.raises(grpc.aio.AioRpcError) as locked:
        await served.login("admin", admin_password(served.data_dir))
    assert locked.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_failed_logins_are_reported_with_the_client_address(served: Served) -> None:
    with pytest.raises(grpc.aio.AioRpcError):
        await served.login("admin", "wrong password")
    forwarded = (("x-envoy-external-address", "203.0.113.7"),)
    with pytest.raises(grpc.aio.AioRpcError):  # a direct caller's claim is ignored
        await served.auth.Login(auth.LoginRequest(username="trudy", password="guess"), metadata=forwarded)
    with trusting_edge("127.0.0.1"), pytest.raises(grpc.aio.AioRpcError):  # the edge's is believed
        await served.auth.Login(auth.LoginRequest(username="mallory", password="guess"), metadata=forwarded)
    failed = [e for e in served.reporter.events if e.kind is SecurityEventKind.LOGIN_FAILED]
    assert [(e.source_address, e.principal, e.method) for e in failed] == [
        ("127.0.0.1", "admin", "/bhiv.identity.v1.AuthService/Login"),
        ("127.0.0.1", "trudy", "/bhiv.identity.v1.AuthService/Login"),
        ("203.0.113.7", "mallory", "/bhiv.identity.v1.AuthService/Login"),
    ]
    assert all("wrong password" not in e.detail or "guess" not in e.detail for e in failed)


# ---------------------------------------------------------------------------------------- refresh


async def test_refresh_spends_the_token_and_returns_a_new_pair(served: Served) -> None:
    first = (await served.login("admin", admin_password(served.data_dir))).tokens
    second = (
        await served.auth.RefreshToken(auth.RefreshTokenRequest(refresh_token=first.refresh_token))
    ).tokens
    assert second.refresh_token != first.refresh_token
    assert second.access_token != first.access_token
    me = await served.auth.GetCurrentUser(auth.GetCurrentUserRequest(), metadata=bearer(second.access_token))
    assert me.user.username == "admin"
    third = (
        await served.auth.RefreshToken(auth.RefreshTokenRequest(refresh_token=second.refresh_token))
    ).tokens
    assert third.refresh_token not in (first.refresh_token, second.refresh_token)


async def test_reused_refresh_token_revokes_the_whole_family(served: Served) -> None:
    first = (await served.login("admin", admin_password(served.data_dir))).tokens
    second = (
        await served.auth.RefreshToken(auth.RefreshTokenRequest(refresh_token=first.refresh_token))
    ).tokens
    with pytest.raises(grpc.aio.AioRpcError) as replay:
        await served.auth.RefreshToken(auth.RefreshTokenRequest(refresh_token=first.refresh_token))
    assert replay.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # The successor stops working too …
    with pytest.raises(grpc.aio.AioRpcError) as successor:
        await served.auth.RefreshToken(auth.RefreshTokenRequest(refresh_token=second.refresh_token))
    assert successor.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # … and the access tokens issued from the family are listed as revoked.
    listed = await served.auth.ListRevocations(auth.ListRevocationsRequest())
    jtis = {r.jti for r in listed.revocations}
    assert (await claims_of(served, second.access_token))["jti"] in jtis
    assert (await claims_of(served, first.access_token))["jti"] in jtis
    with pytest.raises(grpc.aio.AioRpcError) as revoked:
        await served.auth.GetCurrentUser(auth.GetCurrentUserRequest(), metadata=bearer(second.access_token))
    assert revoked.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert [e.kind for e in served.reporter.events][-1] is SecurityEventKind.TOKEN_REPLAYED


async def test_unknown_and_expired_refresh_tokens_are_unauthenticated(served: Served) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await served.auth.RefreshToken(auth.RefreshTokenRequest(refresh_token="made-up"))
    assert unknown.value.code() == grpc.StatusCode.UNAUTHENTICATED
    tokens = (await served.login("admin", admin_password(served.data_dir))).tokens
    served.clock.advance(served.service.config.refresh_ttl_seconds + 1)
    with pytest.raises(grpc.aio.AioRpcError) as expired:
        await served.auth.RefreshToken(auth.RefreshTokenRequest(refresh_token=tokens.refresh_token))
    assert expired.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert expired.value.details() == unknown.value.details() == "invalid refresh token"


async def test_rotation_never_extends_a_session_past_its_maximum(served: Served) -> None:
    config = served.service.config
    start = served.clock()
    tokens = (await served.login("admin", admin_password(served.data_dir))).tokens
    session_end = start + config.session_max_seconds
    # Refresh just often enough to keep each token alive, until the session's end is reached.
    while served.clock() + config.refresh_ttl_seconds < session_end:
        served.clock.advance(config.refresh_ttl_seconds - 60)
        tokens = (
            await served.auth.RefreshToken(auth.RefreshTokenRequest(refresh_token=tokens.refresh_token))
        ).tokens
    assert tokens.refresh_expire_time.seconds <= int(session_end) + 1  # capped, not a full TTL
    served.clock.advance(session_end - served.clock() + 1)
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await served.auth.RefreshToken(auth.RefreshTokenRequest(refresh_token=tokens.refresh_token))
    assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert ended.value.details() == "invalid refresh token"
    # A new login starts a new session.
    assert (await served.login("admin", admin_password(served.data_dir))).tokens.refresh_token


# ----------------------------------------------------------------------------------------- logout


async def test_logout_revokes_the_family_and_the_callers_access_token(served: Served) -> None:
    tokens = (await served.login("admin", admin_password(served.data_dir))).tokens
    await served.auth.Logout(
        auth.LogoutRequest(refresh_token=tokens.refresh_token), metadata=bearer(tokens.access_token)
    )
    with pytest.raises(grpc.aio.AioRpcError) as refresh:
        await served.auth.RefreshToken(auth.RefreshTokenRequest(refresh_token=tokens.refresh_token))
    assert refresh.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as access:
        await served.auth.GetCurrentUser(auth.GetCurrentUserRequest(), metadata=bearer(tokens.access_token))
    assert access.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_storm_of_concurrent_logouts_never_errors_and_revokes_every_session(served: Served) -> None:
    # Each logout is two writes on the store's one SQLite thread; with many in flight, a cursor
    # returned from one write and freed on the event loop broke the next ("bad parameter or
    # other API misuse", INTERNAL) about once in a few hundred logouts.
    password = admin_password(served.data_dir)
    for _ in range(5):
        sessions = await asyncio.gather(*(served.login("admin", password) for _ in range(100)))
        outcomes = await asyncio.gather(
            *(
                served.auth.Logout(
                    auth.LogoutRequest(refresh_token=s.tokens.refresh_token),
                    metadata=bearer(s.tokens.access_token),
                )
                for s in sessions
            ),
            return_exceptions=True,
        )
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        assert failed == []
        revoked = {
            r.jti for r in (await served.auth.ListRevocations(auth.ListRevocationsRequest())).revocations
        }
        for s in sessions:
            assert (await claims_of(served, s.tokens.access_token))["jti"] in revoked
            stored = await served.service.store.get_refresh_token(hash_refresh_token(s.tokens.refresh_token))
            assert stored is not None and stored.revoked


async def test_logout_ignores_a_refresh_token_of_someone_else(served: Served) -> None:
    admin = (await served.login("admin", admin_password(served.data_dir))).tokens
    await create(served, admin.access_token, "olivia")
    olivia = (await served.login("olivia", PASSWORD)).tokens
    await served.auth.Logout(
        auth.LogoutRequest(refresh_token=admin.refresh_token), metadata=bearer(olivia.access_token)
    )
    again = await served.auth.RefreshToken(auth.RefreshTokenRequest(refresh_token=admin.refresh_token))
    assert again.tokens.access_token


# --------------------------------------------------------------------------------------- ownership


async def test_customer_cannot_read_another_user_and_lists_only_itself(served: Served) -> None:
    admin = await served.admin_token()
    await create(served, admin, "carl", user_pb2.ROLE_CUSTOMER, customer="customers/c1")
    other = await create(served, admin, "cora", user_pb2.ROLE_CUSTOMER, customer="customers/c2")
    staff = await create(served, admin, "sam", user_pb2.ROLE_SALES)
    login = await served.login("carl", PASSWORD)
    carl = login.tokens.access_token
    assert (await claims_of(served, carl))["customer"] == "customers/c1"

    for name in (other.name, staff.name, "users/doesnotexist"):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await served.users.GetUser(us.GetUserRequest(name=name), metadata=bearer(carl))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert err.value.details() == f"{name} not found"
    own = await served.users.GetUser(us.GetUserRequest(name=login.user.name), metadata=bearer(carl))
    assert own.user.username == "carl"

    listed = await served.users.ListUsers(us.ListUsersRequest(), metadata=bearer(carl))
    assert [u.username for u in listed.users] == ["carl"]
    assert listed.next_page_token == ""
    everyone = await served.users.ListUsers(us.ListUsersRequest(), metadata=bearer(admin))
    assert [u.username for u in everyone.users] == ["admin", "carl", "cora", "sam"]


# ------------------------------------------------------------------------------------------ users


async def test_create_user_validation_errors_are_invalid_argument_with_field_violations(
    served: Served,
) -> None:
    admin = await served.admin_token()
    cases = [
        (user_pb2.User(username="ab", role=user_pb2.ROLE_OPS), {("user.username", "BAD_FORMAT")}),
        (user_pb2.User(username="has space", role=user_pb2.ROLE_OPS), {("user.username", "BAD_FORMAT")}),
        (user_pb2.User(username="nora"), {("user.role", "REQUIRED")}),
        (user_pb2.User(username="nora", role=user_pb2.ROLE_CUSTOMER), {("user.customer", "REQUIRED")}),
        (
            user_pb2.User(username="nora", role=user_pb2.ROLE_SALES, customer="customers/c1"),
            {("user.customer", "NOT_ALLOWED")},
        ),
        (
            user_pb2.User(username="nora", role=user_pb2.ROLE_CUSTOMER, customer="accounts/1"),
            {("user.customer", "BAD_FORMAT")},
        ),
        (
            user_pb2.User(username="nora", role=user_pb2.ROLE_OPS, email="nope"),
            {("user.email", "BAD_FORMAT")},
        ),
        (
            user_pb2.User(username="nora", role=user_pb2.ROLE_OPS, display_name="x" * 201),
            {("user.display_name", "TOO_LONG")},
        ),
    ]
    for user, expected in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await served.users.CreateUser(
                us.CreateUserRequest(user=user, password=PASSWORD), metadata=bearer(admin)
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, user
        assert violations(err.value) == expected, user


async def test_taken_username_is_already_exists_regardless_of_case(served: Served) -> None:
    admin = await served.admin_token()
    await create(served, admin, "olivia")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create(served, admin, "Olivia")
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_create_user_with_a_repeated_request_id_returns_the_first_user(served: Served) -> None:
    admin = await served.admin_token()
    request = us.CreateUserRequest(
        user=user_pb2.User(username="olivia", role=user_pb2.ROLE_OPS), password=PASSWORD, request_id="req-1"
    )
    first = await served.users.CreateUser(request, metadata=bearer(admin))
    again = await served.users.CreateUser(request, metadata=bearer(admin))
    assert again.user == first.user
    assert first.user.name.startswith("users/") and len(first.user.etag) > 0


async def test_list_users_paginates_by_username_and_filters_by_role(served: Served) -> None:
    admin = await served.admin_token()
    for name in ("dora", "bea", "cleo"):
        await create(served, admin, name, user_pb2.ROLE_SALES)
    first = await served.users.ListUsers(us.ListUsersRequest(page_size=2), metadata=bearer(admin))
    assert [u.username for u in first.users] == ["admin", "bea"]
    rest = await served.users.ListUsers(
        us.ListUsersRequest(page_size=2, page_token=first.next_page_token), metadata=bearer(admin)
    )
    assert [u.username for u in rest.users] == ["cleo", "dora"]
    assert rest.next_page_token == ""
    sales = await served.users.ListUsers(
        us.ListUsersRequest(role=user_pb2.ROLE_SALES), metadata=bearer(admin)
    )
    assert [u.username for u in sales.users] == ["bea", "cleo", "dora"]
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await served.users.ListUsers(us.ListUsersRequest(page_token="%%%"), metadata=bearer(admin))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # A token continues only the query that issued it: with another role filter it is refused.
    with pytest.raises(grpc.aio.AioRpcError) as foreign:
        await served.users.ListUsers(
            us.ListUsersRequest(role=user_pb2.ROLE_SALES, page_token=first.next_page_token),
            metadata=bearer(admin),
        )
    assert foreign.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(foreign.value) == {("page_token", "BAD_PAGE_TOKEN")}


async def test_update_user_applies_the_mask_and_checks_the_etag(served: Served) -> None:
    admin = await served.admin_token()
    olivia = await create(served, admin, "olivia", display_name="Olivia")
    mask = field_mask_pb2.FieldMask(paths=["email"])
    change = user_pb2.User(
        name=olivia.name, email="olivia@example.com", display_name="ignored", etag=olivia.etag
    )
    updated = (
        await served.users.UpdateUser(
            us.UpdateUserRequest(user=change, update_mask=mask), metadata=bearer(admin)
        )
    ).user
    assert (updated.email, updated.display_name) == ("olivia@example.com", "Olivia")
    assert updated.etag != olivia.etag

    with pytest.raises(grpc.aio.AioRpcError) as stale:
        await served.users.UpdateUser(
            us.UpdateUserRequest(user=change, update_mask=mask), metadata=bearer(admin)
        )
    assert stale.value.code() == grpc.StatusCode.ABORTED

    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await served.users.UpdateUser(
            us.UpdateUserRequest(
                user=user_pb2.User(name=olivia.name, username="renamed"),
                update_mask=field_mask_pb2.FieldMask(paths=["email", "username"]),
            ),
            metadata=bearer(admin),
        )
    assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(unknown.value) == {("update_mask.paths[1]", "UNKNOWN_PATH")}

    with pytest.raises(grpc.aio.AioRpcError) as mismatch:
        await served.users.UpdateUser(
            us.UpdateUserRequest(
                user=user_pb2.User(name=olivia.name, role=user_pb2.ROLE_CUSTOMER),
                update_mask=field_mask_pb2.FieldMask(paths=["role"]),
            ),
            metadata=bearer(admin),
        )
    assert violations(mismatch.value) == {("user.customer", "REQUIRED")}

    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await served.users.UpdateUser(
            us.UpdateUserRequest(user=user_pb2.User(name="users/nobody"), update_mask=mask),
            metadata=bearer(admin),
        )
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_role_change_revokes_the_users_sessions(served: Served) -> None:
    admin = await served.admin_token()
    olivia = await create(served, admin, "olivia")
    tokens = (await served.login("olivia", PASSWORD)).tokens
    await served.users.UpdateUser(
        us.UpdateUserRequest(
            user=user_pb2.User(name=olivia.name, role=user_pb2.ROLE_SALES),
            update_mask=field_mask_pb2.FieldMask(paths=["role"]),
        ),
        metadata=bearer(admin),
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await served.auth.RefreshToken(auth.RefreshTokenRequest(refresh_token=tokens.refresh_token))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    fresh = await served.login("olivia", PASSWORD)
    assert (await claims_of(served, fresh.tokens.access_token))["role"] == "sales"


async def test_admin_cannot_change_its_own_role_or_disable_itself(served: Served) -> None:
    login = await served.login("admin", admin_password(served.data_dir))
    admin = login.tokens.access_token
    with pytest.raises(grpc.aio.AioRpcError) as role:
        await served.users.UpdateUser(
            us.UpdateUserRequest(
                user=user_pb2.User(name=login.user.name, role=user_pb2.ROLE_OPS),
                update_mask=field_mask_pb2.FieldMask(paths=["role"]),
            ),
            metadata=bearer(admin),
        )
    assert role.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as disable:
        await served.users.DisableUser(us.DisableUserRequest(name=login.user.name), metadata=bearer(admin))
    assert disable.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_disable_user_revokes_its_sessions_and_blocks_login(served: Served) -> None:
    admin = await served.admin_token()
    olivia = await create(served, admin, "olivia")
    tokens = (await served.login("olivia", PASSWORD)).tokens
    disabled = await served.users.DisableUser(us.DisableUserRequest(name=olivia.name), metadata=bearer(admin))
    assert disabled.user.disabled is True
    with pytest.raises(grpc.aio.AioRpcError) as refresh:
        await served.auth.RefreshToken(auth.RefreshTokenRequest(refresh_token=tokens.refresh_token))
    assert refresh.value.code() == grpc.StatusCode.UNAUTHENTICATED
    listed = await served.auth.ListRevocations(auth.ListRevocationsRequest())
    assert (await claims_of(served, tokens.access_token))["jti"] in {r.jti for r in listed.revocations}
    with pytest.raises(grpc.aio.AioRpcError) as login:
        await served.login("olivia", PASSWORD)
    assert login.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert login.value.details() == "invalid username or password"


async def test_change_password_checks_the_current_one_and_revokes_other_sessions(served: Served) -> None:
    admin = await served.admin_token()
    await create(served, admin, "olivia")
    laptop = (await served.login("olivia", PASSWORD)).tokens
    phone = (await served.login("olivia", PASSWORD)).tokens

    with pytest.raises(grpc.aio.AioRpcError) as wrong:
        await served.users.ChangePassword(
            us.ChangePasswordRequest(current_password="not my password", new_password="a brand new password"),
            metadata=bearer(laptop.access_token),
        )
    assert wrong.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(wrong.value) == {("current_password", "INCORRECT")}

    await served.users.ChangePassword(
        us.ChangePasswordRequest(current_password=PASSWORD, new_password="a brand new password"),
        metadata=bearer(laptop.access_token),
    )
    with pytest.raises(grpc.aio.AioRpcError) as old:
        await served.login("olivia", PASSWORD)
    assert old.value.code() == grpc.StatusCode.UNAUTHENTICATED
    await served.login("olivia", "a brand new password")
    # The phone's session is revoked; the laptop's (the caller's) goes on.
    with pytest.raises(grpc.aio.AioRpcError) as other:
        await served.auth.RefreshToken(auth.RefreshTokenRequest(refresh_token=phone.refresh_token))
    assert other.value.code() == grpc.StatusCode.UNAUTHENTICATED
    await served.auth.RefreshToken(auth.RefreshTokenRequest(refresh_token=laptop.refresh_token))


# ------------------------------------------------------------------------------------- keys, roles


async def test_jwks_lists_the_keys_and_verifies_issued_tokens(served: Served) -> None:
    reply = await served.auth.GetJwks(auth.GetJwksRequest())
    document = json.loads(reply.jwks_json)
    assert [
        dict(kty=k.kty, crv=k.crv, x=k.x, kid=k.kid, alg=k.alg, use=k.use) for k in reply.keys
    ] == document["keys"]
    token = await served.admin_token()
    assert jwt.get_unverified_header(token)["kid"] == reply.keys[0].kid
    key = jwt.PyJWK(document["keys"][0]).key
    claims = jwt.decode(token, key, algorithms=["EdDSA"], audience="bhiv-core", issuer="bhiv-identity")
    assert claims["role"] == "admin"


async def test_rotate_signing_key_signs_with_the_new_key_and_keeps_the_old_one_published(
    served: Served,
) -> None:
    admin = await served.admin_token()
    before = (await served.auth.GetJwks(auth.GetJwksRequest())).keys[0].kid
    rotated = await served.auth.RotateSigningKey(auth.RotateSigningKeyRequest(), metadata=bearer(admin))
    assert [k.kid for k in (await served.auth.GetJwks(auth.GetJwksRequest())).keys] == [rotated.kid, before]
    assert jwt.get_unverified_header(await served.admin_token())["kid"] == rotated.kid
    # The token signed with the old key still works.
    await served.auth.GetCurrentUser(auth.GetCurrentUserRequest(), metadata=bearer(admin))


async def test_a_second_rotation_right_after_the_first_is_resource_exhausted_and_changes_nothing(
    served: Served,
) -> None:
    admin = await served.admin_token()
    rotated = await served.auth.RotateSigningKey(auth.RotateSigningKeyRequest(), metadata=bearer(admin))
    published = [k.kid for k in (await served.auth.GetJwks(auth.GetJwksRequest())).keys]
    served.clock.advance(DEFAULT_MIN_ROTATION_SECONDS - 100)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await served.auth.RotateSigningKey(auth.RotateSigningKeyRequest(), metadata=bearer(admin))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info, extra = details(refused.value)
    assert info.reason == "ROTATION_RATE_LIMITED"
    assert 99 <= int(info.metadata["retry_after_seconds"]) <= 100
    (quota,) = [m for m in extra if isinstance(m, error_details_pb2.QuotaFailure)]
    assert [v.subject for v in quota.violations] == ["signing_key_rotation"]
    assert [k.kid for k in (await served.auth.GetJwks(auth.GetJwksRequest())).keys] == published
    assert published[0] == rotated.kid
    served.clock.advance(100)
    again = await served.auth.RotateSigningKey(auth.RotateSigningKeyRequest(), metadata=bearer(admin))
    assert [k.kid for k in (await served.auth.GetJwks(auth.GetJwksRequest())).keys] == [again.kid, *published]


async def test_list_revocations_filters_by_time_and_paginates(served: Served) -> None:
    jtis = []
    for _ in range(3):
        pair = (await served.login("admin", admin_password(served.data_dir))).tokens
        jtis.append((await claims_of(served, pair.access_token))["jti"])
        await served.auth.Logout(auth.LogoutRequest(), metadata=bearer(pair.access_token))
    first = await served.auth.ListRevocations(auth.ListRevocationsRequest(page_size=2))
    rest = await served.auth.ListRevocations(
        auth.ListRevocationsRequest(page_size=2, page_token=first.next_page_token)
    )
    listed = [*first.revocations, *rest.revocations]
    assert [r.jti for r in listed] == jtis
    assert rest.next_page_token == ""
    assert all(r.expire_time.seconds > r.revoke_time.seconds for r in listed)
    recent = await served.auth.ListRevocations(auth.ListRevocationsRequest(since=listed[2].revoke_time))
    assert [r.jti for r in recent.revocations] == jtis[2:]
    with pytest.raises(grpc.aio.AioRpcError) as foreign:
        await served.auth.ListRevocations(
            auth.ListRevocationsRequest(since=listed[1].revoke_time, page_token=first.next_page_token)
        )
    assert violations(foreign.value) == {("page_token", "BAD_PAGE_TOKEN")}


async def test_list_revocations_since_a_time_out_of_range_is_invalid_argument(served: Served) -> None:
    since = timestamp_pb2.Timestamp(seconds=-(2**62), nanos=-1)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await served.auth.ListRevocations(auth.ListRevocationsRequest(since=since))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(err.value) == {("since.seconds", "OUT_OF_RANGE"), ("since.nanos", "OUT_OF_RANGE")}


async def test_list_roles_returns_the_five_roles_with_sorted_permissions(served: Served) -> None:
    from bhiv_core.security.roles import ROLE_DESCRIPTIONS, ROLE_PERMISSIONS

    admin = await served.admin_token()
    reply = await served.roles.ListRoles(roles.ListRolesRequest(), metadata=bearer(admin))
    assert [r.role for r in reply.roles] == [
        user_pb2.ROLE_ADMIN,
        user_pb2.ROLE_OPS,
        user_pb2.ROLE_SALES,
        user_pb2.ROLE_SUPPORT,
        user_pb2.ROLE_CUSTOMER,
    ]
    ops = reply.roles[1]
    assert list(ops.permissions) == sorted(ROLE_PERMISSIONS["ops"])
    assert ops.description == ROLE_DESCRIPTIONS["ops"]
    page = await served.roles.ListRoles(roles.ListRolesRequest(page_size=2), metadata=bearer(admin))
    nxt = await served.roles.ListRoles(
        roles.ListRolesRequest(page_size=2, page_token=page.next_page_token), metadata=bearer(admin)
    )
    assert [r.role for r in nxt.roles] == [user_pb2.ROLE_SALES, user_pb2.ROLE_SUPPORT]


async def test_every_list_rpc_answers_a_token_it_did_not_issue_with_bad_page_token(served: Served) -> None:
    admin = await served.admin_token()
    for name in ("bea", "cleo"):
        await create(served, admin, name)
    await served.auth.Logout(auth.LogoutRequest(), metadata=bearer(await served.admin_token()))
    await served.auth.Logout(auth.LogoutRequest(), metadata=bearer(await served.admin_token()))
    lists = {
        "ListUsers": lambda token: served.users.ListUsers(
            us.ListUsersRequest(page_size=1, page_token=token), metadata=bearer(admin)
        ),
        "ListRoles": lambda token: served.roles.ListRoles(
            roles.ListRolesRequest(page_size=1, page_token=token), metadata=bearer(admin)
        ),
        # Public: anyone can send it a token.
        "ListRevocations": lambda token: served.auth.ListRevocations(
            auth.ListRevocationsRequest(page_size=1, page_token=token)
        ),
    }
    issued = {rpc: (await call("")).next_page_token for rpc, call in lists.items()}
    assert all(issued.values())
    for rpc, call in lists.items():
        bad = hostile_page_tokens() | damaged(issued[rpc])
        bad |= {f"a token of {other}": token for other, token in issued.items() if other != rpc}
        for case, token in bad.items():
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(token)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (rpc, case, err.value.details())
            assert violations(err.value) == {("page_token", "BAD_PAGE_TOKEN")}, (rpc, case)
        await call(issued[rpc])  # the token it issued still works


async def test_calls_that_need_a_principal_without_one_are_unauthenticated(served: Served) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await served.auth.GetCurrentUser(auth.GetCurrentUserRequest())
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
