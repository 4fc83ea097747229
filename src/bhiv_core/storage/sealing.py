"""Small secrets encrypted at rest: AES-256-GCM under a key-encryption key kept outside the store.

Shared by every service that stores a secret it must use later: sentinel's alert channels (a
webhook URL, an HMAC key), integrations' credentials and webhook signing secrets. Identity protects
its signing keys the same way (a KEK file beside the data, never in the store), but with PKCS#8
encryption, which only fits private keys; these secrets are arbitrary text, so they are sealed with
AES-GCM. The KEK file is created 0600 with :func:`~bhiv_core.runtime.files.create_once`,
atomically, so replicas sharing a data directory share one key. Each sealed value is bound to its
record (associated data, such as a channel's name): a ciphertext copied onto another record does
not open.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bhiv_core.runtime.config import ConfigError
from bhiv_core.runtime.files import create_once

__all__ = ["SecretBox"]

log = logging.getLogger(__name__)

_KEY_BYTES = 32
_NONCE_BYTES = 12


class SecretBox:
    """Seals and opens small secrets with one AES-256-GCM key.

    Args:
        key: 32 random bytes.

    """

    def __init__(self, key: bytes):
        if len(key) != _KEY_BYTES:
            raise ValueError(f"the key must be {_KEY_BYTES} bytes")
        self._aead = AESGCM(key)
        # A separate key for fingerprints, derived so that a fingerprint reveals nothing of the KEK.
        # The label predates the move out of sentinel; changing it would orphan stored fingerprints.
        self._mac_key = hashlib.sha256(b"bhiv-alert-fingerprint\x00" + key).digest()

    @classmethod
    def load_or_create(cls, path: Path, setting: str = "BHIV_ALERT_KEK_FILE") -> SecretBox:
        """The box of the key in ``path``, generating the key (0600) when the file is missing.

        ``setting`` names the setting that chose the path, for the error message.

        Raises:
            ConfigError: The file does not hold a 32-byte key.

        """
        data, created = create_once(path, secrets.token_bytes(_KEY_BYTES))
        if created:
            log.info("generated a secret-encryption key", extra={"path": str(path)})
        if len(data) != _KEY_BYTES:
            raise ConfigError(
                f"{path} ({setting}) must hold a {_KEY_BYTES}-byte key, it has {len(data)} bytes"
            )
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            log.warning(
                "a secret-encryption key is readable by other users: chmod 600 it", extra={"path": str(path)}
            )
        return cls(data)

    def seal(self, plaintext: bytes, context: str) -> str:
        """``plaintext`` encrypted and bound to ``context``, as base64 text."""
        nonce = secrets.token_bytes(_NONCE_BYTES)
        sealed = nonce + self._aead.encrypt(nonce, plaintext, context.encode())
        return base64.b64encode(sealed).decode("ascii")

    def open(self, sealed: str, context: str) -> bytes:
        """The plaintext of :meth:`seal`'s output for the same ``context``.

        Raises:
            ValueError: The value was not sealed with this key for this context, or was altered.

        """
        try:
            raw = base64.b64decode(sealed, validate=True)
            return self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], context.encode())
        except (InvalidTag, ValueError) as exc:
            raise ValueError("the sealed secret does not open with this key") from exc

    def fingerprint(self, value: str) -> str:
        """A keyed digest of ``value``, which cannot be brute-forced offline.

        Idempotency receipts keep it instead of the secret: equal values still compare equal.
        """
        return hmac.new(self._mac_key, value.encode(), hashlib.sha256).hexdigest()
