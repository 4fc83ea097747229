from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import jwt
import pytest

from bhiv_core.services.identity.keys import SigningKeyRing
from bhiv_core.services.identity.store.sqlite import SqliteIdentityStore
from bhiv_core.services.identity.tokens import (
    TokenIssuer,
    decode_access_token,
    hash_refresh_token,
    new_refresh_token,
)
from tests.services.identity.conftest import Clock


@pytest.fixture
async def issuer(tmp_path: Path):
    store = SqliteIdentityStore(tmp_path / "identity.db")
    await store.open()
    clock = Clock()
    keys = SigningKeyRing(store, b"k" * 32, max_age_seconds=3600, overlap_seconds=1800, clock=clock)
    yield TokenIssuer(keys, issuer="bhiv-identity", audience="bhiv-core", access_ttl_seconds=900, clock=clock)
    await store.close()


async def published_key(issuer: TokenIssuer, kid: str):
    """The public key for ``kid`` as a verifier gets it: from the JWKS document."""
    document = json.loads(await issuer.keys.jwks_json())
    (jwk,) = [k for k in document["keys"] if k["kid"] == kid]
    return jwt.PyJWK(jwk).key


async def test_access_token_has_exactly_the_specified_header_and_claims(issuer: TokenIssuer) -> None:
    issued = await issuer.mint_access_token(subject="users/u1", role="ops")
    header = jwt.get_unverified_header(issued.token)
    kid, _ = await issuer.keys.signing_key()
    assert header == {"alg": "EdDSA", "typ": "at+jwt", "kid": kid}
    claims = jwt.decode(
        issued.token,
        await published_key(issuer, kid),
        algorithms=["EdDSA"],
        audience="bhiv-core",
        issuer="bhiv-identity",
    )
    assert set(claims) == {"iss", "aud", "sub", "role", "iat", "nbf", "exp", "jti"}
    assert (claims["iss"], claims["aud"], claims["sub"], claims["role"]) == (
        "bhiv-identity",
        "bhiv-core",
        "users/u1",
        "ops",
    )
    assert claims["nbf"] == claims["iat"] and claims["exp"] == claims["iat"] + 900
    assert re.fullmatch(r"[0-9a-f]{32}", claims["jti"]) and claims["jti"] == issued.jti
    assert (issued.expires_at, issued.expires_in) == (claims["exp"], 900)


async def test_customer_claim_is_only_on_customer_tokens(issuer: TokenIssuer) -> None:
    keys = await issuer.keys.public_keys()
    customer = await issuer.mint_access_token(subject="users/c1", role="customer", customer="customers/42")
    claims = decode_access_token(customer.token, keys, issuer="bhiv-identity", audience="bhiv-core")
    assert (claims["role"], claims["customer"]) == ("customer", "customers/42")
    staff = await issuer.mint_access_token(subject="users/s1", role="sales", customer="customers/42")
    assert "customer" not in decode_access_token(
        staff.token, keys, issuer="bhiv-identity", audience="bhiv-core"
    )


async def test_service_token_has_a_scope_no_role_and_lives_five_minutes(issuer: TokenIssuer) -> None:
    token = await issuer.mint_service_token("identity", ["sentinel.events.write", "sentinel.audit.read"])
    claims = decode_access_token(
        token, await issuer.keys.public_keys(), issuer="bhiv-identity", audience="bhiv-core"
    )
    assert claims["sub"] == "services/identity"
    assert claims["scope"] == "sentinel.events.write sentinel.audit.read"
    assert "role" not in claims
    assert claims["exp"] - claims["iat"] == 300
    assert jwt.get_unverified_header(token)["typ"] == "at+jwt"


async def test_decode_refuses_wrong_audience_issuer_unknown_kid_and_other_types(issuer: TokenIssuer) -> None:
    keys = await issuer.keys.public_keys()
    token = (await issuer.mint_access_token(subject="users/u1", role="ops")).token
    with pytest.raises(jwt.InvalidAudienceError):
        decode_access_token(token, keys, issuer="bhiv-identity", audience="elsewhere")
    with pytest.raises(jwt.InvalidIssuerError):
        decode_access_token(token, keys, issuer="someone", audience="bhiv-core")
    with pytest.raises(jwt.InvalidTokenError, match="unknown signing key"):
        decode_access_token(token, {}, issuer="bhiv-identity", audience="bhiv-core")
    _, private = await issuer.keys.signing_key()
    plain = jwt.encode({"sub": "users/u1"}, private, algorithm="EdDSA", headers={"kid": next(iter(keys))})
    with pytest.raises(jwt.InvalidTokenError, match="not an access token"):
        decode_access_token(plain, keys, issuer="bhiv-identity", audience="bhiv-core")


async def test_expired_token_does_not_verify(issuer: TokenIssuer) -> None:
    token = (await issuer.mint_access_token(subject="users/u1", role="ops", now=1_000_000)).token
    with pytest.raises(jwt.ExpiredSignatureError):
        decode_access_token(
            token, await issuer.keys.public_keys(), issuer="bhiv-identity", audience="bhiv-core"
        )


def test_refresh_tokens_are_random_and_stored_as_sha256_hex() -> None:
    token = new_refresh_token()
    assert len(token) == 43 and token != new_refresh_token()
    assert hash_refresh_token(token) == hashlib.sha256(token.encode()).hexdigest()
