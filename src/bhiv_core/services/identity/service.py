"""The identity domain: logins, token rotation and revocation, signing keys, users and roles.

:class:`IdentityService` has plain ``async`` methods taking and returning plain values and raising
the typed errors of :mod:`bhiv_core.runtime.errors`; the servicer only translates protos. Ownership
is checked here (the RBAC interceptor checks the contract permission first): a customer sees only
its own user, and another user is NOT_FOUND to it, never PERMISSION_DENIED.

Security events (failed logins, lockouts, replayed refresh tokens) go to a
:class:`~bhiv_core.runtime.security_events.SecurityEventReporter`, the mesh's shared reporter
(see that module); so do refused service-credential assertions (``IssueServiceToken``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bhiv_core.runtime.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from bhiv_core.runtime.security_events import (
    NullReporter,
    SecurityEvent,
    SecurityEventKind,
    SecurityEventReporter,
    SentinelReporter,
)
from bhiv_core.runtime.service_credentials import (
    SERVICE_SCOPES,
    AssertionRefused,
    ReplayGuard,
    verify_assertion,
)
from bhiv_core.runtime.times import to_timestamp
from bhiv_core.security.principal import Principal
from bhiv_core.security.roles import ROLE_DESCRIPTIONS, ROLE_PERMISSIONS, ROLES
from bhiv_core.services.identity.config import IdentityConfig
from bhiv_core.services.identity.keys import (
    SigningKeyRing,
    fsync_directory,
    load_or_create_kek,
    write_private_beside,
)
from bhiv_core.services.identity.passwords import PasswordHasher
from bhiv_core.services.identity.revocation_feed import revocations_since
from bhiv_core.services.identity.store import (
    IdentityStore,
    RefreshTokenRecord,
    Revocation,
    SpendOutcome,
    UsernameTaken,
    UserRecord,
    capped_expiry,
)
from bhiv_core.services.identity.throttle import LoginThrottle, ThrottleCheck, describe, login_throttled
from bhiv_core.services.identity.tokens import (
    SERVICE_TOKEN_TTL_SECONDS,
    TokenIssuer,
    hash_refresh_token,
    new_refresh_token,
    new_token_id,
)
from bhiv_core.storage.pagination import (
    bad_page_token,
    cut_page,
    decode_page_token,
    encode_page_token,
    page_size_of,
)

__all__ = [
    "ROLES",
    "ClientInfo",
    "IdentityService",
    "LocalKeySource",
    "NullReporter",
    "RoleInfo",
    "SecurityEvent",
    "SecurityEventKind",
    "SecurityEventReporter",
    "SentinelReporter",
    "ServiceToken",
    "TokenPair",
    "UserFields",
    "to_timestamp",
]

log = logging.getLogger(__name__)

IDEMPOTENCY_TTL_SECONDS = 24 * 3600
"""How long a CreateUser ``request_id`` is remembered."""

INVALID_CREDENTIALS = "invalid username or password"
INVALID_ASSERTION = "invalid service assertion"
INVALID_REFRESH = "invalid refresh token"

_USERNAME = re.compile(r"[A-Za-z0-9._-]{3,64}")
_USER_NAME = re.compile(r"users/([A-Za-z0-9_-]{1,64})")
_CUSTOMER_NAME = re.compile(r"customers/[A-Za-z0-9_-]{1,64}")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_MAX_DISPLAY_NAME = 200
_MAX_EMAIL = 254
_MIN_PASSWORD, _MAX_PASSWORD = 12, 256
_UPDATABLE = ("display_name", "email", "role", "customer")

_USERS_DEFAULT_PAGE, _USERS_MAX_PAGE = 50, 500
_REVOCATIONS_DEFAULT_PAGE, _REVOCATIONS_MAX_PAGE = 500, 5000


# --------------------------------------------------------------------------------- security events


class LocalKeySource:
    """The public keys for a token verifier inside the identity process: read from the store, no RPC.

    Has the shape of :class:`bhiv_core.security.jwt.KeySource`; every fetch re-reads the store, as
    a verifier fetches only at start and when it meets an unknown ``kid``.
    """

    def __init__(self, service: IdentityService):
        self._service = service

    async def fetch(self) -> Mapping[str, Ed25519PublicKey]:
        """Returns the published keys by kid, the current one first."""
        return await self._service.public_keys(refresh=True)


# --------------------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """Who is on the other end of a call, for security events.

    Attributes:
        address: The client's IP (:func:`bhiv_core.security.address.client_address`).
        method: The full gRPC method.

    """

    address: str
    method: str


@dataclass(frozen=True, slots=True)
class TokenPair:
    """Tokens issued by a login or refresh.

    Attributes:
        access_token: The signed JWT.
        expires_in: Its lifetime in seconds.
        refresh_token: The opaque, single-use refresh token.
        refresh_expire_time: When the refresh token expires (Unix seconds).
        access_jti: The ``jti`` of the access token.

    """

    access_token: str
    expires_in: int
    refresh_token: str
    refresh_expire_time: float
    access_jti: str


@dataclass(frozen=True, slots=True)
class ServiceToken:
    """A service token issued by :meth:`IdentityService.issue_service_token`.

    Attributes:
        access_token: The signed JWT (``sub: services/<name>``).
        expires_in: Its lifetime in seconds.
        scopes: The scopes it carries, sorted.

    """

    access_token: str
    expires_in: int
    scopes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class UserFields:
    """The client-settable fields of a user, as given in a request.

    Attributes:
        username: The login name.
        display_name: The display name.
        email: The e-mail address.
        role: The role in lower case; empty when unset; anything else that is not one of
            :data:`ROLES` is invalid (the servicer passes ``#<number>`` for an undefined enum value).
        customer: ``customers/{id}`` for customer accounts.

    """

    username: str = ""
    display_name: str = ""
    email: str = ""
    role: str = ""
    customer: str = ""


@dataclass(frozen=True, slots=True)
class RoleInfo:
    """A role and its permissions (sorted)."""

    role: str
    permissions: tuple[str, ...]
    description: str


# --------------------------------------------------------------------------------------- helpers


def _new_id() -> str:
    return uuid.uuid4().hex[:16]


def _new_etag() -> str:
    return secrets.token_hex(8)


def _user_id(name: str, field: str = "name") -> str:
    match = _USER_NAME.fullmatch(name)
    if match is None:
        raise InvalidArgument(
            violations=[FieldViolation(field, "must look like users/{user_id}", "BAD_FORMAT")]
        )
    return match.group(1)


def _check_field(field: str, value: str, out: list[FieldViolation]) -> None:
    """Appends the violations of one user field (``field`` without the ``user.`` prefix)."""
    path = f"user.{field}"
    if field == "username":
        if not value:
            out.append(FieldViolation(path, "is required", "REQUIRED"))
        elif not _USERNAME.fullmatch(value):
            out.append(FieldViolation(path, "must be 3-64 letters, digits, '.', '_' or '-'", "BAD_FORMAT"))
    elif field == "display_name":
        if len(value) > _MAX_DISPLAY_NAME:
            out.append(FieldViolation(path, f"must be at most {_MAX_DISPLAY_NAME} characters", "TOO_LONG"))
    elif field == "email":
        if len(value) > _MAX_EMAIL:
            out.append(FieldViolation(path, f"must be at most {_MAX_EMAIL} characters", "TOO_LONG"))
        elif value and not _EMAIL.fullmatch(value):
            out.append(FieldViolation(path, "must be an e-mail address", "BAD_FORMAT"))
    elif field == "role":
        if not value:
            out.append(FieldViolation(path, "is required", "REQUIRED"))
        elif value not in ROLES:
            out.append(FieldViolation(path, "must be one of the defined roles", "UNDEFINED_ENUM"))
    elif field == "customer" and value and not _CUSTOMER_NAME.fullmatch(value):
        out.append(FieldViolation(path, "must look like customers/{customer_id}", "BAD_FORMAT"))


def _check_role_customer(role: str, customer: str, out: list[FieldViolation]) -> None:
    """A customer account names its customer; no other account does."""
    if role == "customer" and not customer:
        out.append(FieldViolation("user.customer", "is required for a customer account", "REQUIRED"))
    elif role in ROLES and role != "customer" and customer:
        out.append(
            FieldViolation("user.customer", "must be empty unless the role is customer", "NOT_ALLOWED")
        )


def _check_password(field: str, value: str, out: list[FieldViolation]) -> None:
    if len(value) < _MIN_PASSWORD:
        out.append(FieldViolation(field, f"must be at least {_MIN_PASSWORD} characters", "TOO_SHORT"))
    elif len(value) > _MAX_PASSWORD:
        out.append(FieldViolation(field, f"must be at most {_MAX_PASSWORD} characters", "TOO_LONG"))


# --------------------------------------------------------------------------------------- service


class IdentityService:
    """The identity domain over an :class:`~bhiv_core.services.identity.store.IdentityStore`.

    Args:
        config: The identity settings.
        store: The store (opened by :meth:`start`).
        reporter: Where security events go (a :class:`SentinelReporter` in production).
        clock: Returns the time in Unix seconds (tests pass a fake).
        hasher: The password hasher (defaults to scrypt at ``config.scrypt_log_n``).
        service_secret: The deployment's service secret, which verifies the assertions of
            :meth:`issue_service_token`; None refuses every assertion.
        outgoing_metadata: Called when an event is reported; its pairs travel with the event to
            sentinel (the hook for trace-context propagation).

    Attributes:
        on_revoked: Awaited after every change that revokes access tokens (logout, refresh-token
            reuse, disable, role change, password change) has committed: the served identity
            pushes the new revocations to every watcher and to its own token verifier from there
            (:meth:`~bhiv_core.services.identity.revocation_feed.RevocationFeed.poke`).

    """

    def __init__(
        self,
        config: IdentityConfig,
        store: IdentityStore,
        *,
        reporter: SecurityEventReporter | None = None,
        clock: Callable[[], float] = time.time,
        hasher: PasswordHasher | None = None,
        service_secret: bytes | None = None,
        outgoing_metadata: Callable[[], Sequence[tuple[str, str]]] | None = None,
    ):
        self.config = config
        self.store = store
        self.reporter: SecurityEventReporter = reporter or NullReporter()
        self.hasher = hasher or PasswordHasher(config.scrypt_log_n)
        self.throttle = LoginThrottle(store, config.login_throttle)
        self._service_secret = service_secret
        self._assertions = ReplayGuard(clock=clock)
        self._clock = clock
        self._outgoing_metadata = outgoing_metadata
        self._keys: SigningKeyRing | None = None
        self._issuer: TokenIssuer | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        self.on_revoked: Callable[[], Awaitable[None]] | None = None

    # ----------------------------------------------------------------------------- lifecycle

    @property
    def clock(self) -> Callable[[], float]:
        """The clock every record of this service is stamped with (revocations included)."""
        return self._clock

    @property
    def keys(self) -> SigningKeyRing:
        """The signing keys (available after :meth:`start`)."""
        if self._keys is None:
            raise RuntimeError("the identity service is not started")
        return self._keys

    @property
    def issuer(self) -> TokenIssuer:
        """The token issuer (available after :meth:`start`)."""
        if self._issuer is None:
            raise RuntimeError("the identity service is not started")
        return self._issuer

    async def start(self) -> None:
        """Opens the store, loads (or creates) the signing keys, creates the first admin if needed.

        Also starts the housekeeping task: key rotation at maximum age, pruning of retired keys,
        expired revocations and refresh tokens, every ``key_check_interval_seconds``.
        """
        await self.store.open()
        kek = await asyncio.to_thread(load_or_create_kek, self.config.kek_path)
        self._keys = SigningKeyRing(
            self.store,
            kek,
            max_age_seconds=self.config.signing_key_max_age_seconds,
            overlap_seconds=self.config.signing_key_overlap_seconds,
            min_rotation_seconds=self.config.signing_key_min_rotation_seconds,
            clock=self._clock,
        )
        self._issuer = TokenIssuer(
            self._keys,
            issuer=self.config.issuer,
            audience=self.config.audience,
            access_ttl_seconds=self.config.access_ttl_seconds,
            clock=self._clock,
        )
        await self.housekeep()
        await self.bootstrap_admin()
        # Makes the unknown-username hash now, so even the first such login costs one hash, as a
        # known username's does.
        await self.hasher.spend("")
        self._housekeeping = asyncio.create_task(self._housekeep_loop(), name="identity-housekeeping")

    async def stop(self) -> None:
        """Stops housekeeping and closes the store."""
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeping
            self._housekeeping = None
        await self.store.close()

    async def ping(self) -> None:
        """Health check: the store answers."""
        await self.store.ping()

    async def housekeep(self) -> None:
        """Rotates an over-age signing key, deletes retired keys past the overlap, prunes expired records."""
        await self.keys.maintain()
        await self.store.prune(now=self._clock(), idempotency_ttl=IDEMPOTENCY_TTL_SECONDS)

    async def _housekeep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.key_check_interval_seconds)
            try:
                await self.housekeep()
            except Exception:
                log.exception("identity housekeeping failed; retrying at the next interval")

    async def bootstrap_admin(self) -> bool:
        """Creates the user ``admin`` with a generated password when there are no users at all.

        The password goes only to ``<data_dir>/admin-credentials`` (mode 0600); the log names the
        file, never the password. Returns True when the admin was created now.
        """
        if await self.store.has_users():
            return False
        password = secrets.token_urlsafe(18)
        now = self._clock()
        admin = UserRecord(
            id=_new_id(),
            username="admin",
            display_name="Administrator",
            email="",
            role="admin",
            customer="",
            disabled=False,
            password_hash=await self.hasher.hash(password),
            create_time=now,
            update_time=now,
            etag=_new_etag(),
        )
        path = self.config.admin_credentials_path
        # Written before the user exists, so a crash never leaves an admin nobody knows the password of.
        staged = write_private_beside(path, f"username=admin\npassword={password}\n".encode(), "staged")
        try:
            await self.store.create_user(admin, now=now)
        except UsernameTaken:
            staged.unlink()  # another process bootstrapped first
            return False
        except BaseException:
            staged.unlink()
            raise
        os.replace(staged, path)
        fsync_directory(path.parent)  # the rename survives a power loss too
        log.warning(
            "created the first admin user; its password is in the credentials file", extra={"path": str(path)}
        )
        return True

    # ----------------------------------------------------------------------------- events

    def _report(self, kind: SecurityEventKind, client: ClientInfo, principal: str, detail: str) -> None:
        metadata: Sequence[tuple[str, str]] = ()
        try:
            if self._outgoing_metadata is not None:
                metadata = tuple(self._outgoing_metadata())
            self.reporter.report(
                SecurityEvent(kind, client.address, principal, client.method, detail, self._clock()),
                metadata=metadata,
            )
        except Exception:
            log.exception("cannot queue a security event")

    async def _revoked(self) -> None:
        """Tells :attr:`on_revoked` that access tokens were just revoked; never fails the call."""
        if self.on_revoked is None:
            return
        try:
            await self.on_revoked()
        except Exception:
            log.exception("cannot push new revocations now; the feed's next read will")

    # ----------------------------------------------------------------------------- tokens

    async def _issue(
        self, user: UserRecord, family_id: str, family_expire_time: float, now: float
    ) -> tuple[TokenPair, RefreshTokenRecord]:
        """Mints an access token and a refresh token that expires with its family at the latest."""
        jti = new_token_id()
        refresh = new_refresh_token()
        record = RefreshTokenRecord(
            token_hash=hash_refresh_token(refresh),
            family_id=family_id,
            user_id=user.id,
            access_jti=jti,
            access_expire_time=float(self.issuer.access_expiry(now)),
            create_time=now,
            expire_time=capped_expiry(now + self.config.refresh_ttl_seconds, family_expire_time),
            family_expire_time=family_expire_time,
        )
        access = await self.issuer.mint_access_token(
            subject=user.name, role=user.role, customer=user.customer, jti=jti, now=now
        )
        return TokenPair(access.token, access.expires_in, refresh, record.expire_time, jti), record

    def _refuse_if_throttled(self, check: ThrottleCheck, client: ClientInfo, username: str) -> None:
        """Raises the throttled refusal (reported to sentinel) when a counter of ``check`` backs off."""
        if check.wait_seconds > 0:
            self._report(
                SecurityEventKind.LOGIN_FAILED,
                client,
                username,
                f"throttled for {math.ceil(check.wait_seconds)} s "
                f"(backing off: {', '.join(check.backing_off)})",
            )
            raise login_throttled(check.wait_seconds)

    async def _failed(self, check: ThrottleCheck, client: ClientInfo, username: str, why: str) -> None:
        """Counts a failed login on its throttle counters and reports it with the counts to sentinel."""
        now = self._clock()
        counted = await self.throttle.failed(check.keys, now=now)
        self._report(SecurityEventKind.LOGIN_FAILED, client, username, f"{why}; {describe(counted, now)}")

    async def login(self, username: str, password: str, client: ClientInfo) -> tuple[TokenPair, UserRecord]:
        """Checks a username and password and issues a token pair in a new refresh family.

        A known and an unknown username go through the same steps (a throttle read, a user read,
        one password hash, one throttle write on failure) and get the same answers, so neither the
        reply nor its timing tells which usernames exist (see
        :mod:`bhiv_core.services.identity.throttle`).

        Raises:
            Unauthenticated: Unknown user, wrong password or disabled account (one message for all).
            ResourceExhausted: This username from this address, this address, or this username from
                everywhere is backing off after repeated failures.

        """
        now = self._clock()
        check = await self.throttle.check(username, client.address, now=now)
        self._refuse_if_throttled(check, client, username)
        user = await self.store.get_user_by_username(username) if _USERNAME.fullmatch(username) else None
        if user is None:
            # Spends one hash, so an unknown user takes as long as a wrong password.
            await self.hasher.spend(password)
            why = "unknown username"
        elif not await self.hasher.verify(password, user.password_hash):
            why = "wrong password"
        elif user.disabled:
            why = "account disabled"
        else:
            why = ""
        if user is None or why:
            await self._failed(check, client, username, why)
            raise Unauthenticated(INVALID_CREDENTIALS, reason="INVALID_CREDENTIALS")
        await self.throttle.succeeded(check)
        pair, record = await self._issue(
            user,
            family_id=uuid.uuid4().hex,
            family_expire_time=now + self.config.session_max_seconds,
            now=now,
        )
        await self.store.insert_refresh_token(record)
        self._report(SecurityEventKind.LOGIN_SUCCEEDED, client, username, "")
        return pair, user

    async def refresh(self, refresh_token: str, client: ClientInfo) -> TokenPair:
        """Spends a refresh token and issues a new pair in the same family.

        A spent token presented again revokes its whole family (every refresh token and the access
        tokens issued from them). The new refresh token never outlives the family: once
        ``BHIV_SESSION_MAX_SECONDS`` have passed since the login, the user must log in again.

        Raises:
            Unauthenticated: Unknown, expired, revoked or reused token, or a disabled user.

        """
        now = self._clock()
        token_hash = hash_refresh_token(refresh_token)
        record = await self.store.get_refresh_token(token_hash)
        if record is None:
            raise Unauthenticated(INVALID_REFRESH, reason="INVALID_REFRESH_TOKEN")
        user = await self.store.get_user(record.user_id)
        if user is None or user.disabled:
            raise Unauthenticated(INVALID_REFRESH, reason="INVALID_REFRESH_TOKEN")
        pair, successor = await self._issue(
            user, family_id=record.family_id, family_expire_time=record.family_expire_time, now=now
        )
        outcome = await self.store.spend_refresh_token(token_hash, successor, now=now)
        if outcome is SpendOutcome.REUSED:
            log.warning("refresh token reused: revoked its family", extra={"user": user.name})
            await self._revoked()
            self._report(
                SecurityEventKind.TOKEN_REPLAYED, client, user.name, "spent refresh token presented again"
            )
        if outcome is not SpendOutcome.SPENT:
            raise Unauthenticated(INVALID_REFRESH, reason="INVALID_REFRESH_TOKEN")
        return pair

    async def logout(self, principal: Principal, refresh_token: str = "") -> None:
        """Revokes the caller's session: the refresh token's family and the caller's access token.

        A refresh token of someone else is ignored (revoking it would let anyone log others out).
        """
        now = self._clock()
        families: set[str] = set()
        if refresh_token:
            record = await self.store.get_refresh_token(hash_refresh_token(refresh_token))
            if record is not None and f"users/{record.user_id}" == principal.subject:
                families.add(record.family_id)
        if principal.token_id:
            own = await self.store.family_of_access_token(principal.token_id)
            if own is not None:
                families.add(own)
        revoked: list[Revocation] = []
        if principal.token_id:
            expires = principal.expires_at or float(self.issuer.access_expiry(now))
            revoked.append(Revocation(principal.token_id, expires, now))
        # One transaction: a failure cannot leave the session half logged out.
        await self.store.revoke_sessions(sorted(families), revoked, now=now)
        await self._revoked()

    async def mint_service_token(self, name: str, scopes: Sequence[str]) -> str:
        """A five-minute token for ``services/<name>`` carrying only ``scopes``."""
        return await self.issuer.mint_service_token(name, scopes)

    async def issue_service_token(
        self, assertion: str, scopes: Sequence[str], client: ClientInfo
    ) -> ServiceToken:
        """The client-credentials grant: a service token for the service that signed ``assertion``.

        The assertion is checked (:func:`~bhiv_core.runtime.service_credentials.verify_assertion`)
        and its ``jti`` spent before anything else, then the service must be one of
        :data:`~bhiv_core.runtime.service_credentials.SERVICE_SCOPES` and every scope one it may
        hold. Every refusal is reported to sentinel as a ``TOKEN_INVALID`` event.

        Args:
            assertion: The signed client assertion.
            scopes: The scopes asked for (at least one).
            client: The caller, for the security event of a refusal.

        Raises:
            InvalidArgument: No scope.
            Unauthenticated: The assertion is malformed, forged, expired, replayed... (one message).
            PermissionDenied: The service is not in the registry, or a scope is not its to hold.

        """
        wanted = tuple(sorted(set(scopes)))
        if not wanted:
            raise InvalidArgument(violations=[FieldViolation("scopes", "is required", "REQUIRED")])
        try:
            if self._service_secret is None:
                raise AssertionRefused("this identity has no service secret")
            claims = verify_assertion(assertion, self._service_secret, now=self._clock())
            self._assertions.accept(claims)
        except AssertionRefused as exc:
            principal = f"services/{exc.service}" if exc.service else ""
            self._report(
                SecurityEventKind.TOKEN_INVALID, client, principal, f"service assertion refused: {exc.reason}"
            )
            raise Unauthenticated(INVALID_ASSERTION, reason="INVALID_ASSERTION") from None
        principal = f"services/{claims.service}"
        allowed = SERVICE_SCOPES.get(claims.service)
        if allowed is None:
            self._report(
                SecurityEventKind.TOKEN_INVALID,
                client,
                principal,
                "service assertion of a service not in the registry",
            )
            raise PermissionDenied("no such service in the mesh's registry", reason="UNKNOWN_SERVICE")
        refused = [scope for scope in wanted if scope not in allowed]
        if refused:
            self._report(
                SecurityEventKind.TOKEN_INVALID,
                client,
                principal,
                f"service asked for scopes it may not hold: {', '.join(refused)[:500]}",
            )
            raise PermissionDenied(
                f"{principal} may not hold {', '.join(refused)[:500]}",
                reason="SCOPE_NOT_ALLOWED",
                metadata={"service": claims.service},
            )
        token = await self.issuer.mint_service_token(claims.service, wanted)
        return ServiceToken(token, SERVICE_TOKEN_TTL_SECONDS, wanted)

    async def jwks(self) -> dict[str, Any]:
        """The published keys as a JWKS document, the current key first."""
        return await self.keys.jwks()

    async def rotate_signing_key(self) -> str:
        """Makes a new signing key current; returns its kid.

        Raises:
            ResourceExhausted: The key was rotated less than ``signing_key_min_rotation_seconds`` ago.

        """
        return await self.keys.rotate()

    async def public_keys(self, *, refresh: bool = False) -> dict[str, Ed25519PublicKey]:
        """The published verification keys by kid, for a local token verifier.

        Args:
            refresh: Re-reads the store first (for a kid the verifier does not know).

        """
        return await self.keys.public_keys(refresh=refresh)

    def key_source(self) -> LocalKeySource:
        """A key source for the auth interceptor of this process (no call to itself)."""
        return LocalKeySource(self)

    async def revoked_since(self, since: float) -> list[tuple[str, float]]:
        """Every unexpired revocation made at or after ``since``, as (jti, exp), for a local verifier."""
        revoked = await revocations_since(self.store, now=self._clock(), since=since)
        return [(r.jti, r.expire_time) for r in revoked]

    async def list_revocations(
        self, *, since: float = 0.0, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[Revocation], str]:
        """A page of unexpired revocations made at or after ``since``, oldest first, and the next token."""
        limit = page_size_of(page_size, _REVOCATIONS_DEFAULT_PAGE, _REVOCATIONS_MAX_PAGE)
        query = f"revocations since={since!r}"
        after: tuple[float, str] | None = None
        if page_token:
            cursor = decode_page_token(page_token, query)
            if not (
                isinstance(cursor, list)
                and len(cursor) == 2
                and isinstance(cursor[0], int | float)
                and isinstance(cursor[1], str)
            ):
                raise bad_page_token()
            after = (float(cursor[0]), cursor[1])
        page = await self.store.list_revocations(now=self._clock(), since=since, after=after, limit=limit + 1)
        return cut_page(page, limit, lambda r: [r.revoke_time, r.jti], query)

    # ----------------------------------------------------------------------------- users

    async def _user_of(self, principal: Principal) -> UserRecord:
        match = _USER_NAME.fullmatch(principal.subject)
        user = await self.store.get_user(match.group(1)) if match else None
        if user is None:
            raise NotFound(f"{principal.subject} has no user account")
        return user

    async def _visible_user(self, principal: Principal, name: str) -> UserRecord:
        """The user ``name`` if the caller may see it; NOT_FOUND otherwise, as if it did not exist."""
        user_id = _user_id(name)
        if principal.is_customer and principal.subject != name:
            raise NotFound(f"{name} not found")
        user = await self.store.get_user(user_id)
        if user is None:
            raise NotFound(f"{name} not found")
        return user

    async def current_user(self, principal: Principal) -> UserRecord:
        """The caller's own user."""
        return await self._user_of(principal)

    async def create_user(
        self, principal: Principal, fields: UserFields, password: str, *, request_id: str = ""
    ) -> UserRecord:
        """Creates a user.

        Raises:
            InvalidArgument: A bad field (with field violations).
            AlreadyExists: The username is taken (regardless of case).

        """
        violations: list[FieldViolation] = []
        for field in ("username", "display_name", "email", "role", "customer"):
            _check_field(field, getattr(fields, field), violations)
        _check_role_customer(fields.role, fields.customer, violations)
        _check_password("password", password, violations)
        if len(request_id) > 64:
            violations.append(FieldViolation("request_id", "must be at most 64 characters", "TOO_LONG"))
        if violations:
            raise InvalidArgument(violations=violations)
        now = self._clock()
        user = UserRecord(
            id=_new_id(),
            username=fields.username,
            display_name=fields.display_name,
            email=fields.email,
            role=fields.role,
            customer=fields.customer,
            disabled=False,
            password_hash=await self.hasher.hash(password),
            create_time=now,
            update_time=now,
            etag=_new_etag(),
        )
        try:
            created, fresh = await self.store.create_user(user, request_id=request_id, now=now)
        except UsernameTaken:
            raise AlreadyExists(
                f"the username {fields.username!r} is taken", reason="USERNAME_TAKEN"
            ) from None
        if fresh:
            log.info(
                "created a user", extra={"user": created.name, "role": created.role, "by": principal.subject}
            )
        return created

    async def get_user(self, principal: Principal, name: str) -> UserRecord:
        """The user ``name``; NOT_FOUND when it does not exist or the caller may not see it."""
        return await self._visible_user(principal, name)

    async def list_users(
        self, principal: Principal, *, page_size: int = 0, page_token: str = "", role: str = ""
    ) -> tuple[list[UserRecord], str]:
        """A page of users ordered by username, and the next page token; a customer sees only itself."""
        limit = page_size_of(page_size, _USERS_DEFAULT_PAGE, _USERS_MAX_PAGE)
        if role and role not in ROLES:
            raise InvalidArgument(
                violations=[FieldViolation("role", "must be a defined role", "UNDEFINED_ENUM")]
            )
        query = f"users role={role}"
        after = ""
        if page_token:
            cursor = decode_page_token(page_token, query)
            if not isinstance(cursor, str):
                raise bad_page_token()
            after = cursor
        if principal.is_customer:
            own = await self._user_of(principal)
            matches = own.username_key > after and (not role or own.role == role)
            return ([own] if matches else []), ""
        page = await self.store.list_users(after=after, limit=limit + 1, role=role)
        return cut_page(page, limit, lambda user: user.username_key, query)

    async def update_user(
        self,
        principal: Principal,
        name: str,
        fields: UserFields,
        paths: Sequence[str],
        *,
        etag: str = "",
    ) -> UserRecord:
        """Changes the fields named in ``paths`` (display_name, email, role, customer).

        A change of role or customer revokes the user's sessions, so the new role applies at once.

        Raises:
            InvalidArgument: An unknown path, a bad value, or a role/customer mismatch.
            NotFound: No such user (or not visible to the caller).
            Aborted: ``etag`` is stale, or the user changed concurrently.
            FailedPrecondition: The caller tried to change its own role or customer.

        """
        violations: list[FieldViolation] = []
        if not paths:
            violations.append(FieldViolation("update_mask", "name at least one field to change", "REQUIRED"))
        for index, path in enumerate(paths):
            if path not in _UPDATABLE:
                violations.append(
                    FieldViolation(
                        f"update_mask.paths[{index}]",
                        f"{path!r} cannot be updated; updatable: {', '.join(_UPDATABLE)}",
                        "UNKNOWN_PATH",
                    )
                )
        if violations:
            raise InvalidArgument(violations=violations)
        user = await self._visible_user(principal, name)
        if etag and etag != user.etag:
            raise Aborted(
                f"{name} changed since it was read (stale etag): re-read and retry", reason="STALE_ETAG"
            )
        changes = {path: getattr(fields, path) for path in paths}
        for path, value in changes.items():
            _check_field(path, value, violations)
        updated = replace(user, **changes)
        _check_role_customer(updated.role, updated.customer, violations)
        if violations:
            raise InvalidArgument(violations=violations)
        privileges_changed = (updated.role, updated.customer) != (user.role, user.customer)
        if privileges_changed and principal.subject == user.name:
            # Nobody raises or re-links their own account, and the last admin cannot demote itself.
            raise FailedPrecondition(
                "you cannot change your own role or customer", reason="SELF_PRIVILEGE_CHANGE"
            )
        if updated == user:
            return user
        now = self._clock()
        updated = replace(updated, update_time=now, etag=_new_etag())
        if not await self.store.update_user(
            updated, expected_etag=user.etag, revoke_sessions=privileges_changed, now=now
        ):
            raise Aborted(f"{name} changed concurrently: re-read and retry", reason="CONCURRENT_UPDATE")
        if privileges_changed:
            await self._revoked()
        return updated

    async def disable_user(self, principal: Principal, name: str) -> UserRecord:
        """Disables a user and revokes all its sessions (refresh families and their access tokens).

        Raises:
            NotFound: No such user (or not visible to the caller).
            FailedPrecondition: The caller tried to disable itself.

        """
        if principal.subject == name:
            raise FailedPrecondition("you cannot disable your own account", reason="SELF_DISABLE")
        for _ in range(5):
            user = await self._visible_user(principal, name)
            now = self._clock()
            updated = replace(user, disabled=True, update_time=now, etag=_new_etag())
            if await self.store.update_user(updated, expected_etag=user.etag, revoke_sessions=True, now=now):
                log.info("disabled a user", extra={"user": name, "by": principal.subject})
                await self._revoked()
                return updated
        raise Aborted(f"{name} keeps changing concurrently: retry", reason="CONCURRENT_UPDATE")

    async def change_password(
        self, principal: Principal, current_password: str, new_password: str, client: ClientInfo
    ) -> None:
        """Changes the caller's password and revokes its other sessions (this one stays).

        A wrong current password counts as a failed login of the caller's username from its address
        (the same counters and backoff as :meth:`login`).

        Raises:
            InvalidArgument: Wrong current password, or a bad new one (field violations).
            ResourceExhausted: The caller's login is backing off after repeated failures.

        """
        violations: list[FieldViolation] = []
        _check_password("new_password", new_password, violations)
        if violations:
            raise InvalidArgument(violations=violations)
        user = await self._user_of(principal)
        check = await self.throttle.check(user.username, client.address, now=self._clock())
        self._refuse_if_throttled(check, client, user.username)
        if not await self.hasher.verify(current_password, user.password_hash):
            await self._failed(check, client, user.username, "wrong current password")
            raise InvalidArgument(
                violations=[FieldViolation("current_password", "is not the current password", "INCORRECT")]
            )
        if new_password == current_password:
            raise InvalidArgument(
                violations=[
                    FieldViolation("new_password", "must differ from the current password", "UNCHANGED")
                ]
            )
        password_hash = await self.hasher.hash(new_password)
        keep = await self.store.family_of_access_token(principal.token_id) if principal.token_id else None
        for _ in range(5):
            now = self._clock()
            updated = replace(user, password_hash=password_hash, update_time=now, etag=_new_etag())
            if await self.store.update_user(
                updated, expected_etag=user.etag, revoke_sessions=True, keep_family=keep or "", now=now
            ):
                await self.throttle.succeeded(check)
                log.info("changed a password", extra={"user": user.name})
                await self._revoked()
                return
            user = await self._user_of(principal)
        raise Aborted(f"{user.name} keeps changing concurrently: retry", reason="CONCURRENT_UPDATE")

    # ----------------------------------------------------------------------------- roles

    async def list_roles(self, *, page_size: int = 0, page_token: str = "") -> tuple[list[RoleInfo], str]:
        """The roles with their permissions, in the order of the ``Role`` enum, and the next page token."""
        infos = [
            RoleInfo(role, tuple(sorted(ROLE_PERMISSIONS[role])), ROLE_DESCRIPTIONS.get(role, ""))
            for role in ROLES
        ]
        page_size_of(page_size)  # only the check: 0 means every role
        start = 0
        if page_token:
            cursor = decode_page_token(page_token, "roles")
            if not isinstance(cursor, int) or isinstance(cursor, bool) or not 0 <= cursor <= len(infos):
                raise bad_page_token()
            start = cursor
        end = len(infos) if page_size == 0 else min(len(infos), start + page_size)
        return infos[start:end], (encode_page_token(end, "roles") if end < len(infos) else "")
