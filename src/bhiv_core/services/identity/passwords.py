"""Password hashing with scrypt, a memory-hard KDF, off the event loop.

Hashes are self-describing, ``scrypt$<log2 n>$<r>$<p>$<salt b64>$<hash b64>``, so a stored hash
verifies with the parameters it was made with even after the cost setting changes. Each hash costs
``128 * r * n`` bytes of memory (32 MiB at the default n = 2**15, r = 8), so at most a few run at
once, each in a worker thread, and the event loop never blocks on one.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import os
import secrets
from collections.abc import Callable
from typing import TypeVar

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

__all__ = ["PasswordHasher"]

T = TypeVar("T")

_SALT_BYTES = 16
_HASH_BYTES = 32
_SCHEME = "scrypt"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


class PasswordHasher:
    """Hashes and verifies passwords.

    Args:
        log_n: log2 of the scrypt cost n for new hashes (15 in production; 12 in tests).
        r: The scrypt block size.
        p: The scrypt parallelism.
        max_concurrent: How many hashes may run at once (each holds ``128 * r * n`` bytes);
            defaults to the number of CPUs.

    """

    def __init__(self, log_n: int = 15, r: int = 8, p: int = 1, *, max_concurrent: int | None = None):
        if not 1 <= log_n <= 20 or not 1 <= r <= 32 or not 1 <= p <= 16:
            raise ValueError(f"unsupported scrypt parameters log_n={log_n} r={r} p={p}")
        self.log_n, self.r, self.p = log_n, r, p
        self._limit = max_concurrent or os.cpu_count() or 2
        self._slots: asyncio.Semaphore | None = None
        self._dummy: str | None = None

    @staticmethod
    def _derive(password: str, salt: bytes, log_n: int, r: int, p: int) -> bytes:
        kdf = Scrypt(salt=salt, length=_HASH_BYTES, n=2**log_n, r=r, p=p)
        return kdf.derive(password.encode("utf-8"))

    def hash_sync(self, password: str) -> str:
        """Returns the encoded hash of ``password`` with a fresh salt (blocking)."""
        salt = secrets.token_bytes(_SALT_BYTES)
        digest = self._derive(password, salt, self.log_n, self.r, self.p)
        return f"{_SCHEME}${self.log_n}${self.r}${self.p}${_b64(salt)}${_b64(digest)}"

    def verify_sync(self, password: str, encoded: str) -> bool:
        """True when ``password`` matches ``encoded`` (blocking; constant-time comparison).

        A malformed or tampered hash verifies as False rather than raising.
        """
        try:
            scheme, log_n_s, r_s, p_s, salt_s, digest_s = encoded.split("$")
            log_n, r, p = int(log_n_s), int(r_s), int(p_s)
            salt, expected = _unb64(salt_s), _unb64(digest_s)
        except (ValueError, binascii.Error):
            return False
        # Bounds keep a corrupted hash from asking for gigabytes of memory.
        if scheme != _SCHEME or not (1 <= log_n <= 20 and 1 <= r <= 32 and 1 <= p <= 16):
            return False
        if len(salt) < 8 or len(expected) != _HASH_BYTES:
            return False
        actual = self._derive(password, salt, log_n, r, p)
        return hmac.compare_digest(actual, expected)

    def needs_rehash(self, encoded: str) -> bool:
        """True when ``encoded`` was made with other parameters than the current ones."""
        return not encoded.startswith(f"{_SCHEME}${self.log_n}${self.r}${self.p}$")

    async def _in_thread(self, fn: Callable[..., T], *args: str) -> T:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._limit)
        async with self._slots:
            return await asyncio.to_thread(fn, *args)

    async def hash(self, password: str) -> str:
        """Returns the encoded hash of ``password``, computed in a worker thread."""
        return await self._in_thread(self.hash_sync, password)

    async def verify(self, password: str, encoded: str) -> bool:
        """True when ``password`` matches ``encoded``, computed in a worker thread."""
        return await self._in_thread(self.verify_sync, password, encoded)

    async def spend(self, password: str) -> None:
        """Spends as much as one verification, for an unknown user.

        Login of a username that does not exist then takes as long as a wrong password, so timing
        does not tell which usernames exist.
        """
        if self._dummy is None:
            self._dummy = await self.hash(secrets.token_urlsafe(16))
        await self.verify(password, self._dummy)
