from __future__ import annotations

import asyncio
import base64
import re

import pytest

from bhiv_core.services.identity.passwords import PasswordHasher

HASHER = PasswordHasher(12)
ENCODED = re.compile(r"scrypt\$12\$8\$1\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)")


def test_hash_is_self_describing_with_a_16_byte_salt_and_a_32_byte_hash() -> None:
    match = ENCODED.fullmatch(HASHER.hash_sync("correct horse battery"))
    assert match is not None
    assert len(base64.b64decode(match.group(1))) == 16
    assert len(base64.b64decode(match.group(2))) == 32


def test_same_password_hashes_differently_each_time() -> None:
    assert HASHER.hash_sync("correct horse battery") != HASHER.hash_sync("correct horse battery")


async def test_right_password_verifies_and_wrong_one_does_not() -> None:
    encoded = await HASHER.hash("correct horse battery")
    assert await HASHER.verify("correct horse battery", encoded) is True
    assert await HASHER.verify("correct horse batterY", encoded) is False
    assert await HASHER.verify("", encoded) is False


def _flip_last_char(part: str) -> str:
    raw = bytearray(base64.b64decode(part))
    raw[-1] ^= 1
    return base64.b64encode(bytes(raw)).decode()


@pytest.mark.parametrize(
    "tamper",
    [
        lambda p: [*p[:5], _flip_last_char(p[5])],  # the hash
        lambda p: [*p[:4], _flip_last_char(p[4]), p[5]],  # the salt
        lambda p: [p[0], "13", *p[2:]],  # the cost
        lambda p: ["bcrypt", *p[1:]],  # the scheme
        lambda p: [*p[:5], "not base64!"],
        lambda p: [*p[:5]],  # a part missing
        lambda p: [p[0], "40", *p[2:]],  # a cost that would need terabytes
    ],
    ids=["hash", "salt", "cost", "scheme", "encoding", "truncated", "huge-cost"],
)
def test_tampered_hash_does_not_verify(tamper) -> None:
    parts = HASHER.hash_sync("correct horse battery").split("$")
    assert HASHER.verify_sync("correct horse battery", "$".join(tamper(parts))) is False


def test_hash_verifies_with_its_own_parameters_after_the_cost_changes() -> None:
    old = HASHER.hash_sync("correct horse battery")
    stronger = PasswordHasher(13)
    assert stronger.verify_sync("correct horse battery", old) is True
    assert stronger.needs_rehash(old) is True
    assert HASHER.needs_rehash(old) is False


def test_unsupported_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="unsupported scrypt parameters"):
        PasswordHasher(21)


async def test_hashing_runs_off_the_event_loop() -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.001)
            ticks += 1

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    # n = 2**16 takes tens of milliseconds; the loop keeps ticking meanwhile.
    await PasswordHasher(16).hash("correct horse battery")
    task.cancel()
    assert ticks >= 3


async def test_spend_costs_a_verification_and_never_matches() -> None:
    hasher = PasswordHasher(12)
    await hasher.spend("anything at all")
    assert hasher._dummy is not None and hasher._dummy.startswith("scrypt$12$")
