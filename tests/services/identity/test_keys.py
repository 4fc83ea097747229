from __future__ import annotations

import base64
import hashlib
import json
import math
import stat
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bhiv_core.runtime.config import ConfigError
from bhiv_core.runtime.errors import ResourceExhausted
from bhiv_core.services.identity.config import DEFAULT_MIN_ROTATION_SECONDS
from bhiv_core.services.identity.keys import (
    SigningKeyRing,
    decrypt_private_key,
    encrypt_private_key,
    jwk_of,
    kid_of,
    load_or_create_kek,
)
from bhiv_core.services.identity.store.sqlite import SqliteIdentityStore
from bhiv_core.services.identity.tokens import TokenIssuer, decode_access_token
from tests.services.identity.conftest import Clock

OVERLAP = 1800.0
MAX_AGE = 30 * 24 * 3600.0
INTERVAL = DEFAULT_MIN_ROTATION_SECONDS
BOUND = 1 + math.ceil(OVERLAP / INTERVAL)
"""The most keys published or stored: the current one and those retired within the overlap."""


@pytest.fixture
async def sqlite(tmp_path: Path):
    store = SqliteIdentityStore(tmp_path / "identity.db")
    await store.open()
    yield store
    await store.close()


def database_bytes(folder: Path) -> bytes:
    """Everything SQLite wrote: the database file with its WAL."""
    return b"".join(p.read_bytes() for p in folder.glob("identity.db*"))


def ring(store, kek: bytes, clock: Clock) -> SigningKeyRing:
    return SigningKeyRing(store, kek, max_age_seconds=MAX_AGE, overlap_seconds=OVERLAP, clock=clock)


def test_kid_is_base64url_of_the_first_12_bytes_of_the_sha256_of_the_raw_public_key() -> None:
    public = Ed25519PrivateKey.generate().public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    expected = base64.urlsafe_b64encode(hashlib.sha256(raw).digest()[:12]).decode().rstrip("=")
    assert kid_of(public) == expected
    assert len(expected) == 16


def test_jwk_is_an_okp_ed25519_key_for_eddsa_signatures() -> None:
    public = Ed25519PrivateKey.generate().public_key()
    jwk = jwk_of("kid-1", public)
    assert set(jwk) == {"kty", "crv", "x", "kid", "alg", "use"}
    assert (jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"], jwk["kid"]) == (
        "OKP",
        "Ed25519",
        "EdDSA",
        "sig",
        "kid-1",
    )
    assert base64.urlsafe_b64decode(jwk["x"] + "=") == public.public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def test_kek_file_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "identity-kek"
    kek = load_or_create_kek(path)
    assert len(kek) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_kek(path) == kek
    assert [p.name for p in path.parent.iterdir()] == ["identity-kek"]  # no temporary file left


def test_kek_of_the_wrong_size_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "identity-kek"
    path.write_bytes(b"short")
    with pytest.raises(ConfigError, match="32-byte key"):
        load_or_create_kek(path)


def test_private_key_needs_the_kek_to_decrypt() -> None:
    private = Ed25519PrivateKey.generate()
    pem = encrypt_private_key(private, b"k" * 32)
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert decrypt_private_key(pem, b"k" * 32).private_bytes_raw() == private.private_bytes_raw()
    with pytest.raises(ValueError):
        decrypt_private_key(pem, b"x" * 32)


async def test_private_key_at_rest_is_encrypted(sqlite, tmp_path: Path) -> None:
    kek = load_or_create_kek(tmp_path / "identity-kek")
    keys = ring(sqlite, kek, Clock())
    kid, private = await keys.signing_key()
    clear_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    body = b"".join(clear_pem.splitlines()[1:-1])
    on_disk = database_bytes(tmp_path)
    assert kid.encode() in on_disk  # the scan does see the key's row
    assert b"ENCRYPTED PRIVATE KEY" in on_disk
    assert body not in on_disk
    assert private.private_bytes_raw() not in on_disk


async def test_wrong_kek_fails_loudly(sqlite) -> None:
    await ring(sqlite, b"a" * 32, Clock()).reload()
    with pytest.raises(RuntimeError, match="BHIV_IDENTITY_KEK_FILE"):
        await ring(sqlite, b"b" * 32, Clock()).reload()


async def test_rotation_keeps_the_old_key_published_for_the_overlap_then_prunes_it(sqlite) -> None:
    clock = Clock()
    keys = ring(sqlite, b"k" * 32, clock)
    issuer = TokenIssuer(keys, issuer="iss", audience="aud", access_ttl_seconds=900, clock=clock)
    old_kid, _ = await keys.signing_key()
    old_token = (await issuer.mint_access_token(subject="users/u1", role="ops")).token

    new_kid = await keys.rotate()
    assert new_kid != old_kid
    assert (await keys.signing_key())[0] == new_kid
    assert [k["kid"] for k in (await keys.jwks())["keys"]] == [new_kid, old_kid]
    # A token signed before the rotation still verifies against the published keys.
    assert (
        decode_access_token(old_token, await keys.public_keys(), issuer="iss", audience="aud")["sub"]
        == "users/u1"
    )

    clock.advance(OVERLAP - 1)
    await keys.maintain()
    assert list(await keys.public_keys()) == [new_kid, old_kid]
    clock.advance(2)
    await keys.maintain()
    assert list(await keys.public_keys()) == [new_kid]
    assert [k.kid for k in await sqlite.signing_keys()] == [new_kid]


async def test_key_older_than_the_maximum_age_is_rotated_automatically(sqlite) -> None:
    clock = Clock()
    keys = ring(sqlite, b"k" * 32, clock)
    first, _ = await keys.signing_key()
    clock.advance(MAX_AGE - 10)
    await keys.maintain()
    assert (await keys.signing_key())[0] == first
    clock.advance(10)
    await keys.maintain()
    second, _ = await keys.signing_key()
    assert second != first
    assert list(await keys.public_keys()) == [second, first]


async def test_a_rotation_by_another_process_is_picked_up_on_reload(sqlite) -> None:
    clock = Clock()
    here, there = ring(sqlite, b"k" * 32, clock), ring(sqlite, b"k" * 32, clock)
    first, _ = await here.signing_key()
    assert (await there.signing_key())[0] == first  # one shared first key, not one per process
    rotated = await there.rotate()
    assert rotated not in await here.public_keys()
    assert rotated in await here.public_keys(refresh=True)
    assert (await here.signing_key())[0] == rotated


async def test_jwks_json_is_the_key_set_current_key_first(sqlite) -> None:
    keys = ring(sqlite, b"k" * 32, Clock())
    await keys.rotate()
    document = json.loads(await keys.jwks_json())
    assert document == await keys.jwks()
    current, _ = await keys.signing_key()
    assert document["keys"][0]["kid"] == current
    # PyJWT can verify with a key taken from the published set.
    token = jwt.encode(
        {"sub": "x"}, (await keys.signing_key())[1], algorithm="EdDSA", headers={"kid": current}
    )
    published = jwt.PyJWK(document["keys"][0])
    assert jwt.decode(token, published.key, algorithms=["EdDSA"]) == {"sub": "x"}


async def test_a_rotation_within_the_minimum_interval_is_refused_with_the_wait(sqlite) -> None:
    clock = Clock()
    clock.freeze()
    keys = ring(sqlite, b"k" * 32, clock)
    first = await keys.rotate()  # the first rotation of a new ring is never refused
    clock.advance(INTERVAL - 10)
    with pytest.raises(ResourceExhausted) as refused:
        await keys.rotate()
    assert refused.value.reason == "ROTATION_RATE_LIMITED"
    assert refused.value.metadata == {"retry_after_seconds": "10"}
    assert [v.subject for v in refused.value.quota_violations] == ["signing_key_rotation"]
    assert (await keys.signing_key())[0] == first
    assert len(await sqlite.signing_keys()) == 2
    clock.advance(10)
    assert await keys.rotate() != first


async def test_a_rotation_by_another_process_counts_toward_the_limit(sqlite) -> None:
    clock = Clock()
    clock.freeze()
    here, there = ring(sqlite, b"k" * 32, clock), ring(sqlite, b"k" * 32, clock)
    await here.signing_key()
    await there.rotate()
    with pytest.raises(ResourceExhausted):
        await here.rotate()


async def test_a_flood_of_rotations_publishes_and_stores_at_most_two_keys(sqlite) -> None:
    clock = Clock()
    clock.freeze()
    keys = ring(sqlite, b"k" * 32, clock)
    refused = 0
    for _ in range(100):
        try:
            await keys.rotate()
        except ResourceExhausted:
            refused += 1
        clock.advance(1)
    assert refused == 99
    assert len(await keys.public_keys()) == 2
    assert len((await keys.jwks())["keys"]) == 2
    assert len(await sqlite.signing_keys()) == 2


async def test_many_spaced_rotations_keep_only_the_keys_within_the_overlap(sqlite) -> None:
    clock = Clock()
    clock.freeze()
    keys = ring(sqlite, b"k" * 32, clock)
    for _ in range(50):
        clock.advance(INTERVAL)
        await keys.rotate()
    published = await keys.public_keys()
    assert len(published) <= BOUND
    # Deleted from the store too, as rotations go, not only at the hourly housekeeping.
    stored = await sqlite.signing_keys()
    assert [k.kid for k in stored] == list(published)
    now = clock()
    assert all(k.not_after is None or k.not_after > now for k in stored)


async def test_a_token_verifies_while_its_key_is_within_the_overlap_despite_rotations(sqlite) -> None:
    clock = Clock()
    clock.freeze()
    keys = ring(sqlite, b"k" * 32, clock)
    issuer = TokenIssuer(keys, issuer="iss", audience="aud", access_ttl_seconds=900, clock=clock)
    old_kid, _ = await keys.signing_key()
    token = (await issuer.mint_access_token(subject="users/u1", role="ops")).token
    await keys.rotate()  # retires the token's key now: published until OVERLAP from now
    rotations = 0
    while rotations * INTERVAL + INTERVAL < OVERLAP:
        clock.advance(INTERVAL)
        await keys.rotate()
        rotations += 1
        published = await keys.public_keys()
        assert old_kid in published
        claims = decode_access_token(token, published, issuer="iss", audience="aud")
        assert claims["sub"] == "users/u1"
    clock.advance(OVERLAP - rotations * INTERVAL)
    await keys.rotate()
    assert old_kid not in await keys.public_keys()
    assert old_kid not in [k.kid for k in await sqlite.signing_keys()]
