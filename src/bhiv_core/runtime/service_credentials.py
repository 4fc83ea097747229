"""Service credentials: how a service of the mesh proves who it is to identity and gets a token.

The OAuth client-credentials grant with a signed client assertion (RFC 7523): a service signs a
short JWT with the deployment's service secret and exchanges it at identity
(``AuthService/IssueServiceToken``) for a five-minute service token (``sub: services/<name>``)
carrying only the scopes it asked for, each of which :data:`SERVICE_SCOPES` allows it.

The assertion is HS256 with the header ``typ: svc+jwt`` (so neither kind of token passes for the
other), ``iss`` and ``sub`` the service's name, ``aud`` :data:`ASSERTION_AUDIENCE`, ``iat``, an
``exp`` at most :data:`MAX_ASSERTION_LIFETIME_SECONDS` later, and a random ``jti`` that identity
accepts once (:class:`ReplayGuard`).

The secret is one file per deployment (``BHIV_SERVICE_SECRET_FILE``, by default
``<data_dir>/service-secret``), 0600, created atomically by whichever process needs it first
(:func:`~bhiv_core.runtime.files.create_once`: several processes starting at once agree on one
secret); a deployment provides it as a secret mounted into every service. A file that other users
may read is refused.

:class:`ServiceTokenSource` is the client side: it signs an assertion, calls identity and keeps the
token until a minute before it expires.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import stat
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import grpc
import jwt

from bhiv.identity.v1 import auth_service_pb2, auth_service_pb2_grpc
from bhiv_core.registry import SERVICES
from bhiv_core.runtime.config import ConfigError, RuntimeConfig
from bhiv_core.runtime.files import create_once

__all__ = [
    "ASSERTION_AUDIENCE",
    "ASSERTION_TYPE",
    "EVENTS_SCOPE",
    "MAX_ASSERTION_LIFETIME_SECONDS",
    "PUBLISHERS",
    "PUBLISH_SCOPE",
    "SERVICE_SCOPES",
    "AssertionClaims",
    "AssertionRefused",
    "RenewingToken",
    "ReplayGuard",
    "ServiceTokenSource",
    "load_service_secret",
    "service_secret_path",
    "sign_assertion",
    "verify_assertion",
]

log = logging.getLogger(__name__)

ASSERTION_TYPE: Final = "svc+jwt"
"""The ``typ`` header of a client assertion."""

ASSERTION_AUDIENCE: Final = "identity"
"""The ``aud`` of a client assertion: only identity takes them."""

MAX_ASSERTION_LIFETIME_SECONDS: Final = 60
"""The longest an assertion may live (``exp - iat``)."""

ASSERTION_LIFETIME_SECONDS: Final = 30
"""How long the assertions :func:`sign_assertion` makes live."""

ASSERTION_LEEWAY_SECONDS: Final = 5
"""Clock skew tolerated between a service and identity."""

EVENTS_SCOPE: Final = "sentinel.events.write"
"""The scope that lets a service report security events to sentinel."""

PUBLISH_SCOPE: Final = "integrations.events.publish"
"""The scope that lets a service relay its outbox's platform events to integrations."""

PUBLISHERS: Final = frozenset({"crm", "logistics", "orchestration", "sentinel"})
"""The services that publish platform events (``protos/bhiv/integrations/v1/event.proto``)."""

SERVICE_SCOPES: Final[Mapping[str, frozenset[str]]] = {
    spec.name: frozenset({EVENTS_SCOPE, *((PUBLISH_SCOPE,) if spec.name in PUBLISHERS else ())})
    for spec in SERVICES
}
"""The one table of what each service of the registry may hold in a service token.

Every service may report security events; the publishers may also relay platform events. A
service that is not a key here gets no token at all.
"""

SECRET_FILE_NAME: Final = "service-secret"  # noqa: S105 - a file name, not a secret
_SECRET_BYTES: Final = 32
_ALGORITHM: Final = "HS256"
_MAX_ASSERTION_CHARS: Final = 4096


class AssertionRefused(Exception):
    """A client assertion identity does not accept.

    Attributes:
        reason: What was wrong, for logs and security events (never the assertion itself).
        service: The service the assertion claimed to be, when it could be read.

    """

    def __init__(self, reason: str, service: str = ""):
        super().__init__(reason)
        self.reason = reason
        self.service = service


@dataclass(frozen=True, slots=True)
class AssertionClaims:
    """The verified claims of a client assertion.

    Attributes:
        service: The service's name (``iss`` and ``sub``).
        jti: The assertion's id.
        expires_at: Its ``exp`` (Unix seconds).

    """

    service: str
    jti: str
    expires_at: float


def service_secret_path(config: RuntimeConfig) -> Path:
    """``BHIV_SERVICE_SECRET_FILE``, or ``<data_dir>/service-secret``."""
    raw = config.settings.raw("SERVICE_SECRET_FILE")
    return Path(raw).resolve() if raw else config.data_dir / SECRET_FILE_NAME


def load_service_secret(path: Path) -> bytes:
    """Returns the deployment's service secret, creating the file (0600) when it does not exist.

    Raises:
        ConfigError: The file is readable or writable by other users, holds fewer than 32 bytes,
            or cannot be read or created.

    """
    try:
        data, created = create_once(path, secrets.token_urlsafe(_SECRET_BYTES).encode() + b"\n")
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(f"the service secret {path} cannot be read or created: {exc}") from exc
    if created:
        log.info("created the service secret", extra={"path": str(path)})
    if mode & (stat.S_IRWXO | stat.S_IWGRP):
        raise ConfigError(
            f"the service secret {path} is open to other users (mode {stat.S_IMODE(mode):o}): "
            "make it 0600 (or 0400/0440 when mounted from a secret)"
        )
    secret = data.strip()
    if len(secret) < _SECRET_BYTES:
        raise ConfigError(f"the service secret {path} is too short: it needs at least {_SECRET_BYTES} bytes")
    return secret


def sign_assertion(
    secret: bytes,
    service: str,
    *,
    now: float | None = None,
    lifetime_seconds: int = ASSERTION_LIFETIME_SECONDS,
    audience: str = ASSERTION_AUDIENCE,
    jti: str | None = None,
) -> str:
    """Signs a client assertion for ``service`` (the other arguments are for tests)."""
    issued = int(time.time() if now is None else now)
    claims = {
        "iss": service,
        "sub": service,
        "aud": audience,
        "iat": issued,
        "exp": issued + lifetime_seconds,
        "jti": jti or uuid.uuid4().hex,
    }
    return jwt.encode(claims, secret, algorithm=_ALGORITHM, headers={"typ": ASSERTION_TYPE})


def verify_assertion(
    assertion: str, secret: bytes, *, now: float | None = None, leeway: float = ASSERTION_LEEWAY_SECONDS
) -> AssertionClaims:
    """Checks a client assertion's form, signature and claims (not its ``jti``: see :class:`ReplayGuard`).

    Raises:
        AssertionRefused: For any failed check, with the reason.

    """
    if len(assertion) > _MAX_ASSERTION_CHARS:
        raise AssertionRefused("assertion too long")
    try:
        header = jwt.get_unverified_header(assertion)
    except jwt.InvalidTokenError:
        raise AssertionRefused("malformed assertion") from None
    if header.get("typ") != ASSERTION_TYPE or header.get("alg") != _ALGORITHM:
        raise AssertionRefused("not a service assertion")
    current = time.time() if now is None else now
    try:
        claims: dict[str, Any] = jwt.decode(
            assertion,
            secret,
            algorithms=[_ALGORITHM],
            audience=ASSERTION_AUDIENCE,
            # The times are checked below against the caller's clock, not PyJWT's.
            options={
                "require": ["iss", "sub", "aud", "iat", "exp", "jti"],
                "verify_iat": False,
                "verify_exp": False,
                "verify_nbf": False,
            },
        )
    except jwt.InvalidSignatureError:
        raise AssertionRefused("bad signature", _claimed(assertion)) from None
    except jwt.InvalidAudienceError:
        raise AssertionRefused("wrong audience", _claimed(assertion)) from None
    except jwt.InvalidTokenError:
        raise AssertionRefused("malformed assertion", _claimed(assertion)) from None
    service, subject, jti = claims["iss"], claims["sub"], claims["jti"]
    if not isinstance(service, str) or service != subject or not service:
        raise AssertionRefused("iss and sub must both name the service", _printable(service))
    if not isinstance(jti, str) or not 8 <= len(jti) <= 128:
        raise AssertionRefused("bad jti", service)
    issued, expires = claims["iat"], claims["exp"]
    if not isinstance(issued, int | float) or not isinstance(expires, int | float):
        raise AssertionRefused("malformed assertion", service)
    if expires <= current - leeway:
        raise AssertionRefused("expired assertion", service)
    if issued > current + leeway:
        raise AssertionRefused("assertion issued in the future", service)
    if expires - issued > MAX_ASSERTION_LIFETIME_SECONDS:
        raise AssertionRefused(f"assertion lives longer than {MAX_ASSERTION_LIFETIME_SECONDS} s", service)
    return AssertionClaims(service, jti, float(expires))


def _claimed(assertion: str) -> str:
    """The service an unverified assertion claims to be (for the event), or empty."""
    try:
        claims = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return ""
    return _printable(claims.get("sub", ""))


def _printable(value: object) -> str:
    text = value if isinstance(value, str) else ""
    return "".join(c for c in text[:64] if c.isprintable())


class ReplayGuard:
    """Remembers the ``jti`` of each accepted assertion until it expires, and refuses a second use.

    Bounded: at most ``capacity`` live ids (expired ones are forgotten first); when every slot holds
    a live id, new assertions are refused until one expires — refusing is the safe side. Per
    process: identity runs one process (a deployment with several would share this in its store).

    Args:
        capacity: The most live ids kept.
        clock: Returns the time in Unix seconds.

    """

    def __init__(self, capacity: int = 100_000, clock: Callable[[], float] = time.time):
        self._capacity = capacity
        self._clock = clock
        self._seen: dict[str, float] = {}

    def accept(self, claims: AssertionClaims) -> None:
        """Records ``claims.jti``.

        Raises:
            AssertionRefused: The id was used before, or too many live ids are remembered.

        """
        now = self._clock()
        if claims.jti in self._seen:
            raise AssertionRefused("assertion replayed", claims.service)
        if len(self._seen) >= self._capacity:
            self._forget_expired(now)
            if len(self._seen) >= self._capacity:
                raise AssertionRefused("too many assertions in flight", claims.service)
        self._seen[claims.jti] = claims.expires_at

    def _forget_expired(self, now: float) -> None:
        cutoff = now - ASSERTION_LEEWAY_SECONDS
        for jti in [jti for jti, expires in self._seen.items() if expires < cutoff]:
            del self._seen[jti]


class ServiceTokenSource:
    """Gets and keeps a service token for ``service`` from identity's ``IssueServiceToken``.

    The token is reused until a minute before it expires. After a failure the source waits
    ``retry_seconds`` before asking again (the callers' events are dropped meanwhile), so a
    misconfigured service does not hammer identity.

    Args:
        service: This service's name.
        secret: The deployment's service secret.
        channel: Returns the channel to identity.
        scopes: The scopes to ask for.
        timeout_seconds: Deadline of each call.
        retry_seconds: The pause after a failed call.
        clock: Returns the time in Unix seconds.

    """

    def __init__(
        self,
        service: str,
        secret: bytes,
        channel: Callable[[], grpc.aio.Channel],
        *,
        scopes: Iterable[str] = (EVENTS_SCOPE,),
        timeout_seconds: float = 3.0,
        retry_seconds: float = 5.0,
        clock: Callable[[], float] = time.time,
    ):
        self.service = service
        self._secret = secret
        self._channel = channel
        self._scopes = tuple(scopes)
        self._timeout = timeout_seconds
        self._retry = retry_seconds
        self._clock = clock
        self._token = ""
        self._renew_at = 0.0
        self._next_try = 0.0
        self._lock = asyncio.Lock()

    async def __call__(self) -> str:
        """Returns a valid service token, asking identity when the kept one is due.

        Raises:
            grpc.aio.AioRpcError: Identity refused or could not be reached.
            RuntimeError: The last attempt failed less than ``retry_seconds`` ago.

        """
        async with self._lock:
            now = self._clock()
            if self._token and now < self._renew_at:
                return self._token
            if now < self._next_try:
                raise RuntimeError("no service token: identity refused or was unreachable a moment ago")
            try:
                reply = await auth_service_pb2_grpc.AuthServiceStub(self._channel()).IssueServiceToken(
                    auth_service_pb2.IssueServiceTokenRequest(
                        assertion=sign_assertion(self._secret, self.service, now=now),
                        scopes=self._scopes,
                    ),
                    timeout=self._timeout,
                )
            except BaseException:
                self._next_try = now + self._retry
                raise
            self._token = reply.access_token
            # Renewed a minute early (or halfway, for a short one), so it never expires in flight.
            self._renew_at = now + max(reply.expires_in - 60, reply.expires_in / 2)
            return self._token


class RenewingToken:
    """Keeps a token minted in process (identity's own) until a minute before it expires.

    Args:
        mint: Signs a new token.
        lifetime_seconds: How long a minted token lives.
        clock: Returns the time in Unix seconds.

    """

    def __init__(
        self,
        mint: Callable[[], Awaitable[str]],
        lifetime_seconds: int,
        clock: Callable[[], float] = time.time,
    ):
        self._mint = mint
        self._lifetime = lifetime_seconds
        self._clock = clock
        self._token = ""
        self._renew_at = 0.0

    async def __call__(self) -> str:
        """Returns the kept token, or a new one when it is due."""
        now = self._clock()
        if not self._token or now >= self._renew_at:
            self._token = await self._mint()
            self._renew_at = now + max(self._lifetime - 60, self._lifetime / 2)
        return self._token
