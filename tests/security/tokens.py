"""Test helpers: a signing key, a key source, and a token minter with every knob an attacker has."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Mapping
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bhiv_core.security.jwt import JwtVerifier, RevocationSet

ISSUER, AUDIENCE = "bhiv-identity", "bhiv-core"


class StaticKeys:
    def __init__(self, keys: Mapping[str, Ed25519PublicKey]):
        self.keys = dict(keys)
        self.fetches = 0

    async def fetch(self) -> Mapping[str, Ed25519PublicKey]:
        self.fetches += 1
        return dict(self.keys)


class Signer:
    def __init__(self, kid: str = "k1"):
        self.kid = kid
        self.key = Ed25519PrivateKey.generate()

    @property
    def public(self) -> Ed25519PublicKey:
        return self.key.public_key()

    def public_raw(self) -> bytes:
        return self.public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "users/u1",
            "role": "sales",
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "jti": uuid.uuid4().hex,
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, headers: Mapping[str, Any] | None = None, **claims: Any) -> str:
        header = {"typ": "at+jwt", "kid": self.kid, **(headers or {})}
        return jwt.encode(self.claims(**claims), self.key, algorithm="EdDSA", headers=header)


def unsigned_token(claims: Mapping[str, Any], kid: str = "k1") -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    import json

    header = b64(json.dumps({"alg": "none", "typ": "at+jwt", "kid": kid}).encode())
    return f"{header}.{b64(json.dumps(dict(claims)).encode())}."


def verifier_for(signer: Signer, revocations: RevocationSet | None = None, **kwargs: Any) -> JwtVerifier:
    return JwtVerifier(
        StaticKeys({signer.kid: signer.public}),
        revocations or RevocationSet(),
        issuer=ISSUER,
        audience=AUDIENCE,
        **kwargs,
    )
