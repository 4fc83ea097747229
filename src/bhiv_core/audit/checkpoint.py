"""Signed checkpoints of the audit chain, in the manner of AWS CloudTrail's digest files.

A :class:`Checkpoint` states "at ``time_us``, record ``sequence`` of the chain had hash
``record_hash``", is numbered 1, 2, 3, … and carries the hash of the checkpoint before it
(``prev_hash``), so checkpoints form a hash chain of their own. Each is signed with Ed25519 by the
checkpoint key (:class:`CheckpointKey`), whose public key (base64url, 43 characters) is part of
what is signed, so a checkpoint names the key that verifies it.

What this adds to the records' own hash chain: SHA-256 needs no key, so anyone who can write the
audit store can rewrite a record and re-hash every record after it, and the links alone would not
show it. A rewrite of any record up to a checkpoint changes the hash at the checkpoint's record,
which no longer matches what was signed; without the private key, the checkpoint cannot be signed
again. The trust model is spelled out in the README (Audit checkpoints).

The hashed and signed bytes are :meth:`Checkpoint.canonical`: the compact ASCII JSON array
``["bhiv.audit.checkpoint.v1", number, sequence, record_hash, time_us, prev_hash, key]``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bhiv_core.audit.record import GENESIS_HASH
from bhiv_core.runtime.config import ConfigError
from bhiv_core.runtime.files import create_once

__all__ = [
    "CHECKPOINT_FORMAT",
    "Checkpoint",
    "CheckpointKey",
    "checkpoint_problem",
    "link_problem",
    "load_or_create_checkpoint_key",
]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "bhiv.audit.checkpoint.v1"
"""The first element of every checkpoint's canonical form (a version of the format)."""

_SEED_BYTES = 32


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class Checkpoint(NamedTuple):
    """One signed checkpoint of the audit chain (fields in canonical and column order).

    Attributes:
        number: The checkpoint's position among checkpoints: 1, 2, 3, … with no gap.
        sequence: The audit record it vouches for (every record up to it, through the links).
        record_hash: The ``hash`` of record ``sequence`` when the checkpoint was written.
        time_us: When it was written, in microseconds since the Unix epoch (UTC).
        prev_hash: The ``hash`` of checkpoint ``number - 1``; all zeros for the first.
        key: The Ed25519 public key that signed it, base64url without padding.
        signature: The Ed25519 signature of :meth:`canonical`, lowercase hex.
        hash: The SHA-256 (lowercase hex) of :meth:`canonical`.

    """

    number: int
    sequence: int
    record_hash: str
    time_us: int
    prev_hash: str
    key: str
    signature: str
    hash: str

    def canonical(self) -> bytes:
        """The bytes that are hashed and signed: every field but ``signature`` and ``hash``."""
        return canonical_bytes(
            self.number, self.sequence, self.record_hash, self.time_us, self.prev_hash, self.key
        )


def canonical_bytes(
    number: int, sequence: int, record_hash: str, time_us: int, prev_hash: str, key: str
) -> bytes:
    """The canonical form of a checkpoint with these fields (see the module docstring)."""
    fields = [CHECKPOINT_FORMAT, number, sequence, record_hash, time_us, prev_hash, key]
    return json.dumps(fields, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class CheckpointKey:
    """The Ed25519 key that signs checkpoints.

    Attributes:
        private_key: The signing key; only the checkpoint writer needs it.
        public: The public key, base64url without padding, as checkpoints name it.

    """

    private_key: Ed25519PrivateKey
    public: str

    @classmethod
    def from_seed(cls, seed: bytes) -> CheckpointKey:
        """The key whose 32-byte Ed25519 private seed is ``seed``."""
        private = Ed25519PrivateKey.from_private_bytes(seed)
        raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return cls(private, _b64url(raw))

    def sign(
        self, *, number: int, sequence: int, record_hash: str, time_us: int, prev_hash: str
    ) -> Checkpoint:
        """A new checkpoint with these fields, signed with this key."""
        canonical = canonical_bytes(number, sequence, record_hash, time_us, prev_hash, self.public)
        return Checkpoint(
            number=number,
            sequence=sequence,
            record_hash=record_hash,
            time_us=time_us,
            prev_hash=prev_hash,
            key=self.public,
            signature=self.private_key.sign(canonical).hex(),
            hash=hashlib.sha256(canonical).hexdigest(),
        )

    def verifies(self, checkpoint: Checkpoint) -> bool:
        """True when ``checkpoint`` names this key and carries its valid signature."""
        if checkpoint.key != self.public:
            return False
        try:
            signature = bytes.fromhex(checkpoint.signature)
            self.private_key.public_key().verify(signature, checkpoint.canonical())
        except (ValueError, InvalidSignature):
            return False
        return True


def checkpoint_problem(checkpoint: Checkpoint, key: CheckpointKey) -> str:
    """What is wrong with ``checkpoint`` itself (hash, key, signature), for a person; empty when sound."""
    number = checkpoint.number
    computed = hashlib.sha256(checkpoint.canonical()).hexdigest()
    if computed != checkpoint.hash:
        return f"checkpoint {number} stores hash {checkpoint.hash} but its content hashes to {computed}"
    if checkpoint.key != key.public:
        return (
            f"checkpoint {number} is signed by key {checkpoint.key}, not by this sentinel's checkpoint "
            f"key {key.public}"
        )
    if not key.verifies(checkpoint):
        return f"checkpoint {number} has a signature that does not verify"
    return ""


def link_problem(checkpoint: Checkpoint, previous: Checkpoint | None) -> str:
    """What is wrong with the link of ``checkpoint`` to the one before it; empty when sound.

    Args:
        checkpoint: The checkpoint whose link is checked.
        previous: Checkpoint ``number - 1`` as stored; None when there is none (then ``checkpoint``
            must be the first, linking to the genesis hash).

    """
    number = checkpoint.number
    if previous is None:
        if number != 1:
            return f"checkpoint {number - 1}, which checkpoint {number} must link to, is missing"
        if checkpoint.prev_hash != GENESIS_HASH:
            return f"checkpoint 1 has prev_hash {checkpoint.prev_hash}, not the genesis hash"
        return ""
    if previous.number != number - 1:
        return f"checkpoint {number - 1}, which checkpoint {number} must link to, is missing"
    if checkpoint.prev_hash != previous.hash:
        return (
            f"checkpoint {number} has prev_hash {checkpoint.prev_hash} but checkpoint {number - 1} "
            f"has hash {previous.hash}"
        )
    if checkpoint.sequence <= previous.sequence:
        return (
            f"checkpoint {number} is at record {checkpoint.sequence}, not after checkpoint "
            f"{number - 1}'s record {previous.sequence}"
        )
    return ""


def load_or_create_checkpoint_key(path: Path) -> CheckpointKey:
    """Returns the checkpoint key in ``path``, generating it (a 32-byte seed, mode 0600) if absent.

    Creation is atomic (see :func:`~bhiv_core.runtime.files.create_once`), so several sentinel
    workers starting together end up with one key.

    Raises:
        ConfigError: The file exists but does not hold a 32-byte Ed25519 seed.

    """
    seed, created = create_once(path, secrets.token_bytes(_SEED_BYTES))
    if len(seed) != _SEED_BYTES:
        raise ConfigError(
            f"{path} (BHIV_AUDIT_CHECKPOINT_KEY_FILE) must hold a {_SEED_BYTES}-byte Ed25519 seed, "
            f"it has {len(seed)} bytes"
        )
    key = CheckpointKey.from_seed(seed)
    if created:
        log.info("generated the audit checkpoint key", extra={"path": str(path), "public_key": key.public})
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        log.warning(
            "the audit checkpoint key is readable by other users: chmod 600 it", extra={"path": str(path)}
        )
    return key
