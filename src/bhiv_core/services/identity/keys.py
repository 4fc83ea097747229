"""Ed25519 signing keys: generation, encryption at rest, rotation, and the published JWKS.

One key signs at a time (the current key). Rotation makes a new key current and retires the old
one, which stays published for the overlap window so the tokens it signed keep verifying, and is
deleted after. Rotation on request is rate-limited (at most one per ``min_rotation_seconds``), so the
published set holds at most the current key and ``overlap / min_rotation_seconds`` retired ones,
however often someone asks. Private keys are stored only as PKCS#8 PEM encrypted with a
key-encryption key (KEK) kept outside the store, in ``<data_dir>/identity-kek``: a copy of the
database alone cannot sign.

Several processes (workers, replicas) share one store: rotation is a compare-and-set on the current
key id, and each process re-reads the key set every :data:`RELOAD_SECONDS`, so a rotation done by
one is picked up by all well within the overlap window.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import math
import secrets
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bhiv_core.runtime.config import ConfigError
from bhiv_core.runtime.errors import QuotaViolation, ResourceExhausted
from bhiv_core.runtime.files import create_once, fsync_directory, write_private_beside
from bhiv_core.services.identity.config import DEFAULT_MIN_ROTATION_SECONDS
from bhiv_core.services.identity.store import IdentityStore, SigningKeyRecord

__all__ = [
    "RELOAD_SECONDS",
    "SigningKeyRing",
    "decrypt_private_key",
    "encrypt_private_key",
    "fsync_directory",
    "jwk_of",
    "kid_of",
    "load_or_create_kek",
    "raw_public_key",
    "write_private_beside",
]

log = logging.getLogger(__name__)

KEK_BYTES = 32

RELOAD_SECONDS = 30.0
"""How stale the in-memory key set may get before it is re-read from the store."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def raw_public_key(public_key: Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of an Ed25519 public key."""
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def kid_of(public_key: Ed25519PublicKey) -> str:
    """The key id: base64url (no padding) of the first 12 bytes of SHA-256 of the raw public key."""
    return _b64url(hashlib.sha256(raw_public_key(public_key)).digest()[:12])


def jwk_of(kid: str, public_key: Ed25519PublicKey) -> dict[str, str]:
    """The public JSON Web Key of an Ed25519 key (RFC 8037)."""
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": _b64url(raw_public_key(public_key)),
        "kid": kid,
        "alg": "EdDSA",
        "use": "sig",
    }


def encrypt_private_key(private_key: Ed25519PrivateKey, kek: bytes) -> bytes:
    """The PKCS#8 PEM of ``private_key``, encrypted with ``kek``."""
    return private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(kek),
    )


def decrypt_private_key(pem: bytes, kek: bytes) -> Ed25519PrivateKey:
    """Decrypts a private key stored by :func:`encrypt_private_key`.

    Raises:
        ValueError: The KEK does not match or the PEM is not an Ed25519 key.

    """
    key = serialization.load_pem_private_key(pem, password=kek)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("the stored signing key is not an Ed25519 key")
    return key


def load_or_create_kek(path: Path) -> bytes:
    """Returns the key-encryption key in ``path``, generating it (32 random bytes, mode 0600) if absent.

    Creation is atomic: the key is written to a private temporary file and hard-linked into place,
    which fails if another process got there first (then its key is used), so a reader never sees a
    partial file and two processes never end up with different keys.

    Raises:
        ConfigError: The file exists but does not hold a 32-byte key.

    """
    data, created = create_once(path, secrets.token_bytes(KEK_BYTES))
    if created:
        log.info("generated the signing-key encryption key", extra={"path": str(path)})
    if len(data) != KEK_BYTES:
        raise ConfigError(
            f"{path} (BHIV_IDENTITY_KEK_FILE) must hold a {KEK_BYTES}-byte key, it has {len(data)} bytes"
        )
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        log.warning(
            "the key-encryption key is readable by other users: chmod 600 it", extra={"path": str(path)}
        )
    return data


@dataclass(frozen=True, slots=True)
class _Loaded:
    """The key set as last read from the store."""

    current_kid: str
    current_private: Ed25519PrivateKey
    published: tuple[tuple[str, Ed25519PublicKey, float | None], ...]
    loaded_at: float


class SigningKeyRing:
    """The signing keys of identity, cached in memory and shared through the store.

    Args:
        store: The identity store (opened).
        kek: The key-encryption key.
        max_age_seconds: Age at which :meth:`maintain` rotates the current key.
        overlap_seconds: How long a retired key stays published.
        min_rotation_seconds: The shortest time between a rotation and a rotation on request
            (:meth:`rotate`); the automatic rotation at maximum age is not limited.
        clock: Returns the time in Unix seconds (tests pass a fake).
        reload_seconds: How stale the cached key set may get.

    """

    def __init__(
        self,
        store: IdentityStore,
        kek: bytes,
        *,
        max_age_seconds: float,
        overlap_seconds: float,
        min_rotation_seconds: float = DEFAULT_MIN_ROTATION_SECONDS,
        clock: Callable[[], float] = time.time,
        reload_seconds: float = RELOAD_SECONDS,
    ):
        self._store = store
        self._kek = kek
        self._max_age = max_age_seconds
        self._overlap = overlap_seconds
        self._min_rotation = min_rotation_seconds
        self._clock = clock
        self._reload = reload_seconds
        self._loaded: _Loaded | None = None
        self._private: dict[str, Ed25519PrivateKey] = {}
        self._lock = asyncio.Lock()

    def _new_record(self, now: float) -> SigningKeyRecord:
        private = Ed25519PrivateKey.generate()
        public = private.public_key()
        kid = kid_of(public)
        self._private[kid] = private
        return SigningKeyRecord(
            kid=kid,
            private_key_pem=encrypt_private_key(private, self._kek),
            public_key=raw_public_key(public),
            create_time=now,
        )

    def _decrypt(self, record: SigningKeyRecord) -> Ed25519PrivateKey:
        cached = self._private.get(record.kid)
        if cached is not None:
            return cached
        try:
            private = decrypt_private_key(record.private_key_pem, self._kek)
        except ValueError as exc:
            raise RuntimeError(
                f"cannot decrypt signing key {record.kid}: the key-encryption key (BHIV_IDENTITY_KEK_FILE) "
                "is not the one it was encrypted with"
            ) from exc
        self._private = {record.kid: private}  # only the current key is ever needed in clear
        return private

    async def _read(self) -> list[SigningKeyRecord]:
        """Reads the keys, creating the first one when the store has none."""
        records = await self._store.signing_keys()
        while not records or records[0].retire_time is not None:
            await self._rotate_from(None, self._clock())
            records = await self._store.signing_keys()
        return records

    async def _rotate_from(self, expected_current: str | None, now: float) -> str | None:
        """Makes a new key current if ``expected_current`` still is; returns its kid, or None if not.

        The key it replaces stays published for the overlap window.
        """
        new = self._new_record(now)
        rotated = await self._store.rotate_signing_key(
            new, expected_current=expected_current, retire_time=now, not_after=now + self._overlap
        )
        return new.kid if rotated else None

    async def reload(self) -> None:
        """Re-reads the key set from the store (creating the first key if there is none)."""
        async with self._lock:
            records = await self._read()
            now = self._clock()
            current = records[0]
            published = tuple(
                (r.kid, Ed25519PublicKey.from_public_bytes(r.public_key), r.not_after)
                for r in records
                if r.retire_time is None or (r.not_after is not None and r.not_after > now)
            )
            self._loaded = _Loaded(current.kid, self._decrypt(current), published, now)

    async def _fresh(self) -> _Loaded:
        loaded = self._loaded
        if loaded is None or self._clock() - loaded.loaded_at >= self._reload:
            await self.reload()
            loaded = self._loaded
        assert loaded is not None
        return loaded

    async def signing_key(self) -> tuple[str, Ed25519PrivateKey]:
        """The current key id and private key, for signing."""
        loaded = await self._fresh()
        return loaded.current_kid, loaded.current_private

    async def public_keys(self, *, refresh: bool = False) -> dict[str, Ed25519PublicKey]:
        """The published public keys by kid, the current one first.

        Args:
            refresh: Re-reads the store first (a verifier that met an unknown kid passes True).

        """
        if refresh:
            await self.reload()
        loaded = await self._fresh()
        now = self._clock()
        return {kid: key for kid, key, not_after in loaded.published if not_after is None or not_after > now}

    async def jwks(self) -> dict[str, Any]:
        """The JSON Web Key Set of the published keys, the current key first."""
        return {"keys": [jwk_of(kid, key) for kid, key in (await self.public_keys()).items()]}

    async def jwks_json(self) -> str:
        """:meth:`jwks` as compact JSON."""
        return json.dumps(await self.jwks(), separators=(",", ":"))

    def _rotation_wait(self, records: list[SigningKeyRecord], now: float) -> float:
        """Seconds until a rotation on request is allowed again; 0 or less when it is allowed now.

        The last rotation is the latest ``retire_time`` in the store, so every process and replica
        sharing it sees the same limit. Never more than the interval, whatever a skewed clock wrote.
        """
        retired = [r.retire_time for r in records if r.retire_time is not None]
        if not retired:
            return 0.0  # the first key was created, never rotated: nothing to wait for
        return min(self._min_rotation, max(retired) + self._min_rotation - now)

    async def rotate(self) -> str:
        """Makes a new key current now; the previous one stays published for the overlap window.

        Keys whose overlap window has ended are deleted at the same time, so neither the published
        set nor the store keeps more than the keys that can still verify a token.

        Returns:
            The kid of the new key.

        Raises:
            ResourceExhausted: The key was rotated less than ``min_rotation_seconds`` ago (also when
                another process rotated it a moment before this call).

        """
        while True:
            records = await self._read()
            now = self._clock()
            wait = self._rotation_wait(records, now)
            if wait > 0:
                raise _rotation_refused(wait, self._min_rotation)
            kid = await self._rotate_from(records[0].kid, now)
            if kid is not None:
                log.info("rotated the signing key", extra={"kid": kid, "retired": records[0].kid})
                await self._prune(now)
                await self.reload()
                return kid
            # Another process rotated first: read again, which now finds its rotation too recent.

    async def _prune(self, now: float) -> None:
        pruned = await self._store.prune_signing_keys(now)
        if pruned:
            log.info("deleted retired signing keys", extra={"kids": pruned})

    async def maintain(self) -> None:
        """Rotates the current key when it is older than the maximum age, and prunes expired keys.

        Safe to run in several processes at once: only one rotation wins the compare-and-set.
        """
        records = await self._read()
        now = self._clock()
        current = records[0]
        if now - current.create_time >= self._max_age:
            kid = await self._rotate_from(current.kid, now)
            if kid is not None:
                log.info("rotated the signing key (maximum age)", extra={"kid": kid, "retired": current.kid})
        await self._prune(now)
        await self.reload()


def _rotation_refused(wait_seconds: float, interval: float) -> ResourceExhausted:
    """The refusal of a rotation asked for too soon after the previous one."""
    wait = max(1, math.ceil(wait_seconds))
    return ResourceExhausted(
        f"the signing key was rotated less than {interval:g} s ago: try again in {wait} s",
        violations=[
            QuotaViolation("signing_key_rotation", f"at most one rotation on request per {interval:g} s")
        ],
        reason="ROTATION_RATE_LIMITED",
        metadata={"retry_after_seconds": str(wait)},
    )
