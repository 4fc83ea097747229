"""Access tokens (EdDSA JWTs), service tokens, and opaque refresh tokens.

Access tokens carry ``iss``, ``aud``, ``sub`` (``users/{id}``), ``role``, ``customer`` (customer
accounts only), ``iat``, ``nbf``, ``exp`` and ``jti``, with the header ``typ: at+jwt`` and the
``kid`` of the signing key. Service tokens are the same shape with ``sub: services/<name>``, no
role, and a ``scope`` claim listing the only permissions they carry; identity uses one to report
security events to sentinel. Refresh tokens are random strings, stored only as their SHA-256.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bhiv_core.security.jwt import ACCESS_TOKEN_TYPE
from bhiv_core.services.identity.keys import SigningKeyRing

__all__ = [
    "ACCESS_TOKEN_TYPE",
    "SERVICE_TOKEN_TTL_SECONDS",
    "IssuedAccessToken",
    "TokenIssuer",
    "decode_access_token",
    "hash_refresh_token",
    "new_refresh_token",
]

SERVICE_TOKEN_TTL_SECONDS = 300
"""Lifetime of service tokens."""

_ALGORITHM = "EdDSA"


def new_refresh_token() -> str:
    """A new opaque refresh token (256 random bits)."""
    return secrets.token_urlsafe(32)


def hash_refresh_token(token: str) -> str:
    """The SHA-256 hex digest under which a refresh token is stored."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token_id() -> str:
    """A new ``jti``."""
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class IssuedAccessToken:
    """A signed access token and what the store needs to know about it.

    Attributes:
        token: The compact JWT.
        jti: Its ``jti``.
        expires_at: Its ``exp`` (Unix seconds).
        expires_in: Its lifetime in seconds.

    """

    token: str
    jti: str
    expires_at: int
    expires_in: int


class TokenIssuer:
    """Signs access and service tokens with the current key of a :class:`SigningKeyRing`.

    Args:
        keys: The key ring.
        issuer: The ``iss`` claim.
        audience: The ``aud`` claim.
        access_ttl_seconds: Access-token lifetime.
        clock: Returns the time in Unix seconds.

    """

    def __init__(
        self,
        keys: SigningKeyRing,
        *,
        issuer: str,
        audience: str,
        access_ttl_seconds: int,
        clock: Callable[[], float] = time.time,
    ):
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.access_ttl_seconds = access_ttl_seconds
        self._clock = clock

    async def _sign(self, claims: dict[str, Any]) -> str:
        kid, private = await self.keys.signing_key()
        # The key object, not PEM: PyJWT would parse PEM again on every call.
        return jwt.encode(
            claims, private, algorithm=_ALGORITHM, headers={"typ": ACCESS_TOKEN_TYPE, "kid": kid}
        )

    async def mint_access_token(
        self, *, subject: str, role: str, customer: str = "", jti: str | None = None, now: float | None = None
    ) -> IssuedAccessToken:
        """Signs an access token for a user.

        Args:
            subject: ``users/{id}``.
            role: The role, lower case.
            customer: ``customers/{id}`` for customer accounts (the claim is left out otherwise).
            jti: The token id, when the caller already recorded it; a new one otherwise.
            now: The issue time (defaults to the clock).

        """
        issued = int(self._clock() if now is None else now)
        expires = self.access_expiry(issued)
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": subject,
            "role": role.lower(),
            "iat": issued,
            "nbf": issued,
            "exp": expires,
            "jti": jti or new_token_id(),
        }
        if role.lower() == "customer" and customer:
            claims["customer"] = customer
        token = await self._sign(claims)
        return IssuedAccessToken(token, claims["jti"], expires, self.access_ttl_seconds)

    def access_expiry(self, now: float) -> int:
        """The ``exp`` an access token issued at ``now`` gets."""
        return int(now) + self.access_ttl_seconds

    async def mint_service_token(self, name: str, scopes: Iterable[str]) -> str:
        """Signs a five-minute token for the service ``name`` carrying only ``scopes``.

        Args:
            name: The service, giving ``sub: services/<name>``.
            scopes: The permissions the token carries, joined into the ``scope`` claim.

        """
        issued = int(self._clock())
        return await self._sign(
            {
                "iss": self.issuer,
                "aud": self.audience,
                "sub": f"services/{name}",
                "scope": " ".join(scopes),
                "iat": issued,
                "nbf": issued,
                "exp": issued + SERVICE_TOKEN_TTL_SECONDS,
                "jti": new_token_id(),
            }
        )


def decode_access_token(
    token: str,
    public_keys: Mapping[str, Ed25519PublicKey],
    *,
    issuer: str,
    audience: str,
    leeway: float = 0,
) -> dict[str, Any]:
    """Verifies an access or service token against ``public_keys`` and returns its claims.

    Checks the ``typ`` header, the ``kid``, the EdDSA signature, ``iss``, ``aud``, ``exp``, ``nbf``
    and that ``sub``, ``iat`` and ``jti`` are present. Revocation is the caller's business.

    Raises:
        jwt.InvalidTokenError: For any failed check (unknown kid included).

    """
    header = jwt.get_unverified_header(token)
    if header.get("typ") != ACCESS_TOKEN_TYPE:
        raise jwt.InvalidTokenError("not an access token")
    key = public_keys.get(str(header.get("kid", "")))
    if key is None:
        raise jwt.InvalidTokenError("unknown signing key")
    claims: dict[str, Any] = jwt.decode(
        token,
        key,
        algorithms=[_ALGORITHM],
        issuer=issuer,
        audience=audience,
        leeway=leeway,
        options={"require": ["iss", "aud", "sub", "iat", "nbf", "exp", "jti"]},
    )
    return claims
