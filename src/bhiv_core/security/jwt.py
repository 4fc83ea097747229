"""Access-token verification: EdDSA JWTs against identity's JWKS, with a verified-token cache.

Verifying a signature costs far more than the rest of a small RPC, so a verified token is cached
(bounded) until it expires; revocations are honoured on every call, cached or not, and identity
pushes them to every service over a stream as it commits them (:class:`RevocationSet`). An unknown
``kid`` refreshes the key set from identity at most once per cooldown, keeping the last good keys
when identity is unreachable.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bhiv_core.runtime.errors import Unauthenticated
from bhiv_core.security.principal import Principal

__all__ = [
    "ACCESS_TOKEN_TYPE",
    "ALLOWED_ALGORITHMS",
    "JwtVerifier",
    "KeySource",
    "RevocationFetch",
    "RevocationSet",
    "RevocationUpdate",
    "RevocationWatch",
    "TokenError",
    "TokenVerifier",
    "keys_from_jwks",
]

log = logging.getLogger(__name__)

ACCESS_TOKEN_TYPE = "at+jwt"  # noqa: S105 - a header value, not a secret
"""The ``typ`` header of access tokens (RFC 9068): identity signs it, every verifier requires it."""

ALLOWED_ALGORITHMS = ("EdDSA",)
"""Only EdDSA: never ``none``, never an HMAC algorithm that a public key could be abused as a secret for."""

_REQUIRED_CLAIMS = ["iss", "aud", "sub", "exp", "iat", "jti"]

_PRUNE_EVERY = 60.0
"""Seconds between sweeps of expired revocations out of a :class:`RevocationSet`."""


class TokenError(Unauthenticated):
    """A token was refused. ``reason`` is for metrics and logs only; the caller sees one message."""

    def __init__(self, reason: str):
        super().__init__("invalid or expired credentials", reason="INVALID_TOKEN")
        self.detail = reason


class TokenVerifier(Protocol):
    """Turns a bearer token into a principal, or raises Unauthenticated."""

    async def verify(self, token: str) -> Principal:
        """Returns the token's principal; raises :class:`TokenError` for any bad token."""
        ...

    def cached(self, token: str) -> Principal | None:
        """The principal of a token already verified and still valid, or None; raises when revoked."""
        ...


class KeySource(Protocol):
    """Where the public signing keys come from (identity's JWKS)."""

    async def fetch(self) -> Mapping[str, Ed25519PublicKey]:
        """Returns the current public keys by ``kid``."""
        ...


def _b64url_decode(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def keys_from_jwks(jwks: str | Mapping[str, Any]) -> dict[str, Ed25519PublicKey]:
    """Parses the Ed25519 keys of a JWKS document; other key types are ignored."""
    doc = json.loads(jwks) if isinstance(jwks, str) else jwks
    keys: dict[str, Ed25519PublicKey] = {}
    for jwk in doc.get("keys", []):
        if jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519" and jwk.get("kid"):
            keys[jwk["kid"]] = Ed25519PublicKey.from_public_bytes(_b64url_decode(jwk["x"]))
    return keys


@dataclass(frozen=True, slots=True)
class RevocationUpdate:
    """One message of identity's revocation stream, as a :class:`RevocationSet` applies it.

    Attributes:
        revoked: ``(jti, expires_at)`` pairs; empty in a keepalive.
        resume_time: The ``since`` that a reconnect passes to miss nothing (identity's clock).

    """

    revoked: Sequence[tuple[str, float]]
    resume_time: float


RevocationFetch = Callable[[float], Awaitable[Sequence[tuple[str, float]]]]
"""Returns ``(jti, expires_at)`` pairs revoked at or after a Unix time (``ListRevocations``)."""

RevocationWatch = Callable[[float], AsyncGenerator[RevocationUpdate, None]]
"""Opens identity's revocation stream from a ``since``: catch-up first, then each new revocation."""


class RevocationSet:
    """Revoked token ids until they expire, pushed by identity and checked on every call.

    With ``watch``, one background task keeps identity's revocation stream open: each revocation
    arrives as identity commits it. After a failure or the end of the stream it reconnects with
    exponential backoff (with jitter), passing the last ``resume_time`` so the stream first catches
    up on what happened in between. A stream silent for ``idle_timeout`` seconds is taken for dead
    (identity sends a keepalive every 15 s). ``fetch`` is the safety net: every ``interval``
    seconds the whole list is read once more. Without ``watch`` it is the only source: the first
    poll runs at once, and each reads what was revoked since the previous one.

    Args:
        fetch: Lists revocations made since a Unix time.
        interval: Seconds between polls of ``fetch``.
        watch: Opens the revocation stream.
        backoff: The first and the longest pause (seconds) before reconnecting the stream.
        idle_timeout: Seconds without any message after which the stream is reopened.
        warn_after: Seconds without a stream before a warning is logged (once per outage), so
            that identity starting after this service, or restarting, is no warning.
        clock: Returns the current Unix time (tests inject it).

    """

    def __init__(
        self,
        fetch: RevocationFetch | None = None,
        interval: float = 2.0,
        *,
        watch: RevocationWatch | None = None,
        backoff: tuple[float, float] = (0.1, 5.0),
        idle_timeout: float = 45.0,
        warn_after: float = 10.0,
        clock: Callable[[], float] = time.time,
    ):
        self._revoked: dict[str, float] = {}
        self._fetch = fetch
        self._interval = interval
        self._watch = watch
        self._backoff = backoff
        self._idle_timeout = idle_timeout
        self._clock = clock
        self._since = 0.0
        self._resume = 0.0
        self._received = 0  # stream messages applied, ever
        self._warned = False  # the current outage was reported
        self._warn_after = warn_after
        self._pruned_at = clock()
        self._tasks: list[asyncio.Task[None]] = []
        self.connected = asyncio.Event()
        """Set while the stream is open and has delivered its catch-up (for tests and operators)."""

    def add(self, jti: str, expires_at: float) -> None:
        """Marks ``jti`` revoked until ``expires_at``."""
        self._revoked[jti] = expires_at

    def add_all(self, revoked: Iterable[tuple[str, float]]) -> None:
        """Marks every ``(jti, expires_at)`` revoked; forgets expired ones about once a minute."""
        self._revoked.update(revoked)
        now = self._clock()
        if now - self._pruned_at > _PRUNE_EVERY:
            self.prune(now)

    def is_revoked(self, jti: str) -> bool:
        """True when ``jti`` is revoked."""
        return jti in self._revoked

    def prune(self, now: float | None = None) -> None:
        """Forgets revocations of tokens that expired anyway."""
        now = self._clock() if now is None else now
        self._pruned_at = now
        for jti in [j for j, exp in self._revoked.items() if exp < now]:
            del self._revoked[jti]

    async def poll_once(self) -> None:
        """Fetches the revocations made since the last poll (with a margin for clock skew), or all."""
        if self._fetch is None:
            return
        started = self._clock()
        # Beside a stream, the poll is the safety net: it re-reads the whole list, so even a
        # revocation committed long after its revoke time is found. Alone, it reads what is new.
        since = 0.0 if self._watch is not None else max(0.0, self._since - 5.0)
        for jti, expires_at in await self._fetch(since):
            self.add(jti, expires_at)
        self._since = started
        self.prune()

    async def _poll_loop(self, first_delay: float) -> None:
        await asyncio.sleep(first_delay)
        while True:
            try:
                await self.poll_once()
            except Exception as exc:  # identity down: keep the last known list and retry
                log.warning("revocation poll failed", extra={"error": str(exc)})
            await asyncio.sleep(self._interval)

    async def watch_once(self) -> None:
        """Reads the stream from the last resume point until it ends; raises when it fails.

        Raises:
            TimeoutError: No message for ``idle_timeout`` seconds.

        """
        if self._watch is None:
            return
        stream = self._watch(self._resume)
        try:
            while True:
                try:
                    # Not asyncio.wait_for: on 3.11 it can swallow a cancellation that arrives as
                    # the stream fails, and stop() would then wait for this task forever.
                    async with asyncio.timeout(self._idle_timeout):
                        update = await anext(stream)
                except StopAsyncIteration:
                    return
                self.add_all(update.revoked)
                self._resume = max(self._resume, update.resume_time)
                self._received += 1
                if self._warned:
                    log.warning("revocation stream from identity is back")
                    self._warned = False
                self.connected.set()
        finally:
            self.connected.clear()
            with contextlib.suppress(Exception):
                await stream.aclose()

    async def _watch_loop(self) -> None:
        first, longest = self._backoff
        delay = first
        down_since = time.monotonic()  # when the stream last stopped delivering
        while True:
            received = self._received
            try:
                await self.watch_once()
            except Exception as exc:
                error = str(exc)
            else:
                error = "the stream ended"
            now = time.monotonic()
            if self._received != received:  # it worked for a while: a new outage, a fresh backoff
                log.info("revocation stream lost; reconnecting", extra={"error": error})
                delay, down_since = first, now
            elif not self._warned and now - down_since >= self._warn_after:
                # Once per outage: identity starting or restarting is worth no warning per retry.
                log.warning(
                    "no revocation stream from identity; still retrying",
                    extra={"error": error, "down_seconds": round(now - down_since, 1)},
                )
                self._warned = True
            else:
                log.debug("revocation stream unavailable; retrying", extra={"error": error})
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311 - jitter, not crypto
            delay = min(longest, delay * 2)

    def start(self) -> None:
        """Starts watching (and the safety-net poll) in the background."""
        if self._tasks:
            return
        if self._watch is not None:
            self._tasks.append(asyncio.create_task(self._watch_loop(), name="revocation-watch"))
        if self._fetch is not None:
            first = self._interval if self._watch is not None else 0.0
            self._tasks.append(asyncio.create_task(self._poll_loop(first), name="revocation-poll"))

    async def stop(self) -> None:
        """Stops watching and polling."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []


class JwtVerifier:
    """Verifies BHIV access tokens.

    Args:
        keys: The JWKS source.
        revocations: Revoked token ids.
        issuer: The required ``iss``.
        audience: The required ``aud``.
        leeway: Seconds of clock skew allowed on ``exp``, ``nbf`` and ``iat``.
        cache_size: Verified tokens kept; the oldest is evicted beyond this.
        refresh_cooldown: Seconds to earn one key-set refresh caused by an unknown ``kid``.
        refresh_burst: Refreshes that may happen back to back (a token bucket): a rotation is seen
            at once, while made-up ``kid``s cannot make this process hammer identity.
        clock: Returns the current Unix time (injected by tests).
    """

    def __init__(
        self,
        keys: KeySource,
        revocations: RevocationSet,
        *,
        issuer: str,
        audience: str,
        leeway: float = 30.0,
        cache_size: int = 10_000,
        refresh_cooldown: float = 10.0,
        refresh_burst: int = 5,
        clock: Callable[[], float] = time.time,
    ):
        self._source = keys
        self._revocations = revocations
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway
        self._cache: OrderedDict[str, Principal] = OrderedDict()  # verified tokens
        self._cache_size = cache_size
        self._cooldown = refresh_cooldown
        self._clock = clock
        self._keys: dict[str, Ed25519PublicKey] = {}
        self._burst = float(refresh_burst)
        self._tokens = float(refresh_burst)
        self._tokens_at = time.monotonic()
        self._refresh_lock = asyncio.Lock()

    async def refresh_keys(self, *, force: bool = False) -> bool:
        """Re-reads the key set if the refresh budget allows; keeps the old keys on failure."""
        async with self._refresh_lock:
            if not force:
                now = time.monotonic()
                earned = (now - self._tokens_at) / self._cooldown if self._cooldown > 0 else self._burst
                self._tokens, self._tokens_at = min(self._burst, self._tokens + earned), now
                if self._tokens < 1:
                    return False
                self._tokens -= 1
            try:
                self._keys = dict(await self._source.fetch())
            except Exception as exc:
                log.warning("JWKS refresh failed; keeping the last good keys", extra={"error": str(exc)})
                return False
            return True

    def _check_revoked(self, principal: Principal) -> None:
        if self._revocations.is_revoked(principal.token_id):
            raise TokenError("revoked")

    def cached(self, token: str) -> Principal | None:
        """The principal of a token verified before and not yet expired, without awaiting.

        Returns None when the token must go through :meth:`verify`; raises :class:`TokenError`
        when it was revoked since.
        """
        cached = self._cache.get(token)
        if cached is None or cached.expires_at + self._leeway < self._clock():
            return None
        self._check_revoked(cached)
        return cached

    async def verify(self, token: str) -> Principal:
        """Returns the principal of a valid token; raises :class:`TokenError` otherwise."""
        principal = self.cached(token)
        if principal is not None:
            return principal
        now = self._clock()
        self._cache.pop(token, None)  # expired, if it was there
        principal = await self._verify_signature(token, now)
        self._check_revoked(principal)
        self._cache[token] = principal
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return principal

    async def _verify_signature(self, token: str, now: float) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenError("malformed") from None
        if header.get("alg") not in ALLOWED_ALGORITHMS:
            raise TokenError("algorithm not allowed")
        if header.get("typ") != ACCESS_TOKEN_TYPE:
            raise TokenError("not an access token")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise TokenError("no kid")
        key = self._keys.get(kid)
        if key is None and await self.refresh_keys():
            key = self._keys.get(kid)
        if key is None:
            raise TokenError("unknown kid")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=list(ALLOWED_ALGORITHMS),
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": _REQUIRED_CLAIMS},
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenError("not yet valid") from None
        except jwt.InvalidSignatureError:
            raise TokenError("bad signature") from None
        except jwt.PyJWTError as exc:
            raise TokenError(f"bad claims: {type(exc).__name__}") from None
        if float(claims["iat"]) > now + self._leeway:
            raise TokenError("issued in the future")
        if float(claims["exp"]) + self._leeway < now:
            raise TokenError("expired")
        scope = claims.get("scope")
        return Principal(
            subject=str(claims["sub"]),
            role=str(claims.get("role", "")),
            customer=str(claims.get("customer", "")),
            token_id=str(claims["jti"]),
            expires_at=float(claims["exp"]),
            scopes=frozenset(str(scope).split()) if scope is not None else None,
            token=token,
        )
