"""The identity servicers: proto in, domain call, proto out.

Each RPC reads its request, calls :class:`~bhiv_core.services.identity.service.IdentityService`,
and builds the response. Errors are the domain's typed exceptions, mapped by the error interceptor.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from google.protobuf.timestamp_pb2 import Timestamp

from bhiv.identity.v1 import auth_service_pb2 as auth
from bhiv.identity.v1 import role_service_pb2 as roles
from bhiv.identity.v1 import user_pb2
from bhiv.identity.v1 import user_service_pb2 as users
from bhiv_core.runtime.chain import Context
from bhiv_core.security.address import client_address
from bhiv_core.security.principal import require_principal
from bhiv_core.services.identity.revocation_feed import RevocationFeed
from bhiv_core.services.identity.service import (
    ClientInfo,
    IdentityService,
    TokenPair,
    UserFields,
    to_timestamp,
)
from bhiv_core.services.identity.store import Revocation, UserRecord

__all__ = ["AuthServicer", "RoleServicer", "UserServicer", "role_name", "role_value", "user_proto"]

_AUTH = "/bhiv.identity.v1.AuthService"
_USERS = "/bhiv.identity.v1.UserService"


def _seconds(stamp: Timestamp) -> float:
    return stamp.seconds + stamp.nanos / 1e9


def role_name(value: int) -> str:
    """The lower-case role of a ``Role`` enum value: ``""`` when unset, ``#<n>`` when undefined."""
    if value == user_pb2.ROLE_UNSPECIFIED:
        return ""
    if value not in user_pb2.Role.values():
        return f"#{value}"
    return user_pb2.Role.Name(value).removeprefix("ROLE_").lower()  # type: ignore[arg-type]


def role_value(role: str) -> user_pb2.Role.ValueType:
    """The ``Role`` enum value of a lower-case role (ROLE_UNSPECIFIED for an unknown one)."""
    try:
        return user_pb2.Role.Value(f"ROLE_{role.upper()}")
    except ValueError:
        return user_pb2.ROLE_UNSPECIFIED


def user_proto(user: UserRecord) -> user_pb2.User:
    """The ``User`` message of a stored user (never its password hash)."""
    return user_pb2.User(
        name=user.name,
        username=user.username,
        display_name=user.display_name,
        email=user.email,
        role=role_value(user.role),
        customer=user.customer,
        disabled=user.disabled,
        create_time=to_timestamp(user.create_time),
        update_time=to_timestamp(user.update_time),
        etag=user.etag,
    )


def _fields(user: user_pb2.User) -> UserFields:
    return UserFields(
        username=user.username,
        display_name=user.display_name,
        email=user.email,
        role=role_name(user.role),
        customer=user.customer,
    )


def _pair(pair: TokenPair) -> auth.TokenPair:
    return auth.TokenPair(
        access_token=pair.access_token,
        token_type="Bearer",  # noqa: S106 - the token type, not a secret
        expires_in=pair.expires_in,
        refresh_token=pair.refresh_token,
        refresh_expire_time=to_timestamp(pair.refresh_expire_time),
    )


def _revocation(r: Revocation) -> auth.Revocation:
    return auth.Revocation(
        jti=r.jti, expire_time=to_timestamp(r.expire_time), revoke_time=to_timestamp(r.revoke_time)
    )


def _client(context: Context, method: str) -> ClientInfo:
    return ClientInfo(client_address(context.invocation_metadata(), context.peer()), method)


class AuthServicer:
    """Implements ``bhiv.identity.v1.AuthService``.

    Args:
        service: The identity domain.
        feed: Where ``WatchRevocations`` streams read revocations from.

    """

    def __init__(self, service: IdentityService, feed: RevocationFeed):
        self._service = service
        self._feed = feed

    async def Login(self, request: auth.LoginRequest, context: Context) -> auth.LoginResponse:
        """Logs in with a username and password."""
        pair, user = await self._service.login(
            request.username, request.password, _client(context, f"{_AUTH}/Login")
        )
        return auth.LoginResponse(tokens=_pair(pair), user=user_proto(user))

    async def RefreshToken(
        self, request: auth.RefreshTokenRequest, context: Context
    ) -> auth.RefreshTokenResponse:
        """Exchanges a refresh token for a new pair."""
        pair = await self._service.refresh(request.refresh_token, _client(context, f"{_AUTH}/RefreshToken"))
        return auth.RefreshTokenResponse(tokens=_pair(pair))

    async def Logout(self, request: auth.LogoutRequest, context: Context) -> auth.LogoutResponse:
        """Revokes the caller's session."""
        await self._service.logout(require_principal(), request.refresh_token)
        return auth.LogoutResponse()

    async def GetJwks(self, request: auth.GetJwksRequest, context: Context) -> auth.GetJwksResponse:
        """Returns the published signing keys."""
        jwks = await self._service.jwks()
        # One read serves both forms, so the list and the JSON never disagree across a rotation.
        return auth.GetJwksResponse(
            keys=[auth.Jwk(**key) for key in jwks["keys"]],
            jwks_json=json.dumps(jwks, separators=(",", ":")),
        )

    async def RotateSigningKey(
        self, request: auth.RotateSigningKeyRequest, context: Context
    ) -> auth.RotateSigningKeyResponse:
        """Rotates the signing key."""
        return auth.RotateSigningKeyResponse(kid=await self._service.rotate_signing_key())

    async def GetCurrentUser(
        self, request: auth.GetCurrentUserRequest, context: Context
    ) -> auth.GetCurrentUserResponse:
        """Returns the caller's own user."""
        return auth.GetCurrentUserResponse(
            user=user_proto(await self._service.current_user(require_principal()))
        )

    async def ListRevocations(
        self, request: auth.ListRevocationsRequest, context: Context
    ) -> auth.ListRevocationsResponse:
        """Lists the unexpired revocations."""
        since = _seconds(request.since) if request.HasField("since") else 0.0
        page, token = await self._service.list_revocations(
            since=since, page_size=request.page_size, page_token=request.page_token
        )
        return auth.ListRevocationsResponse(revocations=[_revocation(r) for r in page], next_page_token=token)

    async def IssueServiceToken(
        self, request: auth.IssueServiceTokenRequest, context: Context
    ) -> auth.IssueServiceTokenResponse:
        """Exchanges a service's signed assertion for a short-lived service token."""
        issued = await self._service.issue_service_token(
            request.assertion, list(request.scopes), _client(context, f"{_AUTH}/IssueServiceToken")
        )
        return auth.IssueServiceTokenResponse(
            access_token=issued.access_token,
            token_type="Bearer",  # noqa: S106 - the token type, not a secret
            expires_in=issued.expires_in,
            scopes=issued.scopes,
        )

    async def WatchRevocations(
        self, request: auth.WatchRevocationsRequest, context: Context
    ) -> AsyncIterator[auth.WatchRevocationsResponse]:
        """Streams the revocations made since ``since``, then each new one as it is committed."""
        since = _seconds(request.since) if request.HasField("since") else 0.0
        async for batch in self._feed.watch(since):
            yield auth.WatchRevocationsResponse(
                revocations=[_revocation(r) for r in batch.revocations],
                resume_time=to_timestamp(batch.resume_time),
            )


class UserServicer:
    """Implements ``bhiv.identity.v1.UserService``."""

    def __init__(self, service: IdentityService):
        self._service = service

    async def CreateUser(
        self, request: users.CreateUserRequest, context: Context
    ) -> users.CreateUserResponse:
        """Creates a user."""
        user = await self._service.create_user(
            require_principal(), _fields(request.user), request.password, request_id=request.request_id
        )
        return users.CreateUserResponse(user=user_proto(user))

    async def GetUser(self, request: users.GetUserRequest, context: Context) -> users.GetUserResponse:
        """Gets a user."""
        return users.GetUserResponse(
            user=user_proto(await self._service.get_user(require_principal(), request.name))
        )

    async def ListUsers(self, request: users.ListUsersRequest, context: Context) -> users.ListUsersResponse:
        """Lists users by username."""
        page, token = await self._service.list_users(
            require_principal(),
            page_size=request.page_size,
            page_token=request.page_token,
            role=role_name(request.role),
        )
        return users.ListUsersResponse(users=[user_proto(u) for u in page], next_page_token=token)

    async def UpdateUser(
        self, request: users.UpdateUserRequest, context: Context
    ) -> users.UpdateUserResponse:
        """Updates the masked fields of a user."""
        user = await self._service.update_user(
            require_principal(),
            request.user.name,
            _fields(request.user),
            list(request.update_mask.paths),
            etag=request.user.etag,
        )
        return users.UpdateUserResponse(user=user_proto(user))

    async def DisableUser(
        self, request: users.DisableUserRequest, context: Context
    ) -> users.DisableUserResponse:
        """Disables a user and revokes its sessions."""
        user = await self._service.disable_user(require_principal(), request.name)
        return users.DisableUserResponse(user=user_proto(user))

    async def ChangePassword(
        self, request: users.ChangePasswordRequest, context: Context
    ) -> users.ChangePasswordResponse:
        """Changes the caller's password."""
        await self._service.change_password(
            require_principal(),
            request.current_password,
            request.new_password,
            _client(context, f"{_USERS}/ChangePassword"),
        )
        return users.ChangePasswordResponse()


class RoleServicer:
    """Implements ``bhiv.identity.v1.RoleService``."""

    def __init__(self, service: IdentityService):
        self._service = service

    async def ListRoles(self, request: roles.ListRolesRequest, context: Context) -> roles.ListRolesResponse:
        """Lists the roles with their permissions."""
        page, token = await self._service.list_roles(
            page_size=request.page_size, page_token=request.page_token
        )
        return roles.ListRolesResponse(
            roles=[
                roles.RoleInfo(
                    role=role_value(r.role), permissions=list(r.permissions), description=r.description
                )
                for r in page
            ],
            next_page_token=token,
        )
