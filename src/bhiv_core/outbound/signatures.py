"""The signature of every webhook BHIV sends: HMAC-SHA256 over a timestamp and the raw body.

``X-BHIV-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + raw body)>``

The timestamp is inside the MAC, so a receiver that refuses a ``t`` more than
:data:`SIGNATURE_TOLERANCE_SECONDS` from its clock cannot be fed a captured request later (the
replay window). A header may carry several ``v1=`` entries (one per secret while a secret is
being rotated); a receiver accepts the request when any of them matches. This is the scheme
Stripe made common, so receivers' existing verifiers work with a changed header name.
:func:`verify_signature` is the reference implementation; the README shows the same in a few
lines for receivers.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["SIGNATURE_HEADER", "SIGNATURE_TOLERANCE_SECONDS", "sign", "signature_digest", "verify_signature"]

SIGNATURE_HEADER = "X-BHIV-Signature"
SIGNATURE_TOLERANCE_SECONDS = 300
"""How far a signature's timestamp may be from the receiver's clock before it is refused."""
_MAX_HEADER_CHARS = 4096


def signature_digest(secret: bytes, timestamp: int, body: bytes) -> str:
    """The lowercase hex HMAC-SHA256 of ``"<timestamp>." + body`` keyed with ``secret``."""
    return hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The ``X-BHIV-Signature`` value of ``body`` sent at ``timestamp`` (Unix seconds)."""
    return f"t={timestamp},v1={signature_digest(secret, timestamp, body)}"


def verify_signature(
    secret: bytes, header: str, body: bytes, now: float, tolerance: float = SIGNATURE_TOLERANCE_SECONDS
) -> bool:
    """True when ``header`` signs ``body`` with ``secret`` and its timestamp is within ``tolerance``.

    Every ``v1`` entry is compared in constant time; unknown schemes (``v0=``) are ignored.
    """
    if len(header) > _MAX_HEADER_CHARS:
        return False
    timestamp: int | None = None
    candidates: list[str] = []
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                return False
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or abs(now - timestamp) > tolerance:
        return False
    expected = signature_digest(secret, timestamp, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in candidates)
