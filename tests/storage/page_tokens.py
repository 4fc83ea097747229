"""Page tokens no store ever wrote, for the tests of every List RPC: each must be BAD_PAGE_TOKEN."""

from __future__ import annotations

import base64
import random


def b64(raw: bytes) -> str:
    """``raw`` as a page token would carry it: base64url without padding."""
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def hostile_page_tokens() -> dict[str, str]:
    """Tokens by what is wrong with them: nesting, size, garbage, the old JSON format."""
    rng = random.Random(9)  # fixed: a failure names its case and reproduces
    tokens = {
        "deep json": b64(b"[" * 1000),
        "deep json, closed": b64(b'{"after":' + b"[" * 5000 + b"]" * 5000 + b',"filter":"x"}'),
        "old json format": b64(b'{"after":"zzz","filter":"users role="}'),
        "huge": "A" * 1_000_000,
        "just over the limit": "A" * 516,
        "not base64url": "%%%",
        "padding only": "====",
        "non-ascii": "tökén",
        "one character": "A",
        "empty after decoding": "AA",
    }
    for n in range(8):
        tokens[f"random bytes {n}"] = b64(rng.randbytes(rng.randrange(1, 300)))
    return tokens


def damaged(token: str) -> dict[str, str]:
    """A real token, cut short or with a byte added: neither may decode as some other key."""
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    return {
        "truncated": b64(raw[:-1]),
        "extended": b64(raw + b"\x00"),
        "another version": b64(bytes([raw[0] + 1]) + raw[1:]),
    }
