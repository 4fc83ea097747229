"""The JWT attack list against the verifier: each is refused with one undetailed message."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncGenerator, Callable

import grpc
import jwt
import pytest

from bhiv_core.security.jwt import JwtVerifier, RevocationSet, RevocationUpdate, TokenError, keys_from_jwks
from tests.security.tokens import AUDIENCE, ISSUER, Signer, StaticKeys, unsigned_token, verifier_for


@pytest.fixture
def signer() -> Signer:
    return Signer()


async def test_valid_token_yields_its_principal(signer: Signer) -> None:
    principal = await verifier_for(signer).verify(signer.token(role="ops", customer=None))
    assert (principal.subject, principal.role, principal.scopes) == ("users/u1", "ops", None)


async def test_service_token_carries_its_scope(signer: Signer) -> None:
    principal = await verifier_for(signer).verify(
        signer.token(sub="services/identity", role=None, scope="sentinel.events.write")
    )
    assert principal.scopes == frozenset({"sentinel.events.write"})


def _tamper(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["role"] = "admin"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


ATTACKS = {
    "malformed": lambda s: "not.a.jwt",
    "garbage": lambda s: "x" * 40,
    "alg none": lambda s: unsigned_token(s.claims(role="admin")),
    "hs256 with the public key": lambda s: jwt.encode(
        s.claims(role="admin"), s.public_raw(), algorithm="HS256", headers={"typ": "at+jwt", "kid": s.kid}
    ),
    "expired": lambda s: s.token(exp=int(time.time()) - 120, iat=int(time.time()) - 600),
    "nbf in the future": lambda s: s.token(nbf=int(time.time()) + 600),
    "iat in the future": lambda s: s.token(iat=int(time.time()) + 600),
    "wrong issuer": lambda s: s.token(iss="evil"),
    "wrong audience": lambda s: s.token(aud="other-service"),
    "unknown kid": lambda s: s.token(headers={"kid": "nope"}),
    "missing kid": lambda s: jwt.encode(s.claims(), s.key, algorithm="EdDSA", headers={"typ": "at+jwt"}),
    "not an access token": lambda s: s.token(headers={"typ": "JWT"}),
    "missing jti": lambda s: s.token(jti=None),
    "tampered payload": lambda s: _tamper(s.token()),
    "signed by another key": lambda s: Signer(kid=s.kid).token(),
}


@pytest.mark.parametrize("attack", ATTACKS)
async def test_attack_is_refused_without_detail(signer: Signer, attack: str) -> None:
    token = ATTACKS[attack](signer)
    with pytest.raises(TokenError) as err:
        await verifier_for(signer).verify(token)
    assert err.value.message == "invalid or expired credentials"


async def test_revoked_token_is_refused_even_when_cached(signer: Signer) -> None:
    revocations = RevocationSet()
    verifier = verifier_for(signer, revocations)
    token = signer.token()
    principal = await verifier.verify(token)
    revocations.add(principal.token_id, principal.expires_at)
    with pytest.raises(TokenError) as err:
        await verifier.verify(token)
    assert err.value.detail == "revoked"


async def test_cached_token_still_expires() -> None:
    signer = Signer()
    now = [time.time()]
    verifier = verifier_for(signer, clock=lambda: now[0], leeway=0)
    token = signer.token(exp=int(now[0]) + 5)
    await verifier.verify(token)
    now[0] += 10
    with pytest.raises(TokenError):
        await verifier.verify(token)


async def test_rotated_key_is_seen_at_once_but_made_up_kids_cannot_hammer_identity() -> None:
    old, new = Signer("old"), Signer("new")
    source = StaticKeys({old.kid: old.public})
    verifier = JwtVerifier(
        source, RevocationSet(), issuer=ISSUER, audience=AUDIENCE, refresh_cooldown=60, refresh_burst=3
    )
    await verifier.refresh_keys(force=True)
    assert (await verifier.verify(old.token())).subject == "users/u1"
    assert source.fetches == 1
    source.keys[new.kid] = new.public  # identity rotated right after our last fetch
    assert (await verifier.verify(new.token())).subject == "users/u1"
    assert source.fetches == 2
    for i in range(20):  # a flood of made-up kids spends the small budget, then nothing
        with pytest.raises(TokenError):
            await verifier.verify(new.token(headers={"kid": f"bogus-{i}"}))
    assert source.fetches == 4


async def test_failed_refresh_keeps_the_last_good_keys() -> None:
    signer = Signer()

    class Flaky(StaticKeys):
        fail = False

        async def fetch(self):  # type: ignore[override]
            if self.fail:
                raise ConnectionError("identity down")
            return await super().fetch()

    source = Flaky({signer.kid: signer.public})
    verifier = JwtVerifier(source, RevocationSet(), issuer=ISSUER, audience=AUDIENCE, refresh_cooldown=0)
    await verifier.refresh_keys(force=True)
    source.fail = True
    assert not await verifier.refresh_keys(force=True)
    assert (await verifier.verify(signer.token())).role == "sales"


async def test_revocations_are_polled_and_pruned() -> None:
    now = time.time()

    async def fetch(since: float):
        return [("live", now + 100), ("dead", now - 100)]

    revocations = RevocationSet(fetch)
    await revocations.poll_once()
    assert revocations.is_revoked("live")
    assert not revocations.is_revoked("dead")


def test_jwks_parsing_keeps_only_ed25519_keys() -> None:
    signer = Signer("k9")
    x = base64.urlsafe_b64encode(signer.public_raw()).rstrip(b"=").decode()
    doc = {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "k9"}, {"kty": "RSA", "kid": "r"}]}
    assert list(keys_from_jwks(json.dumps(doc))) == ["k9"]


async def test_cached_answers_without_awaiting_only_what_verify_admitted_before() -> None:
    signer = Signer()
    revocations = RevocationSet()
    now = [time.time()]
    verifier = verifier_for(signer, revocations, clock=lambda: now[0], leeway=0)
    token = signer.token(exp=int(now[0]) + 5)
    assert verifier.cached(token) is None  # never verified: the caller must await verify()
    principal = await verifier.verify(token)
    assert verifier.cached(token) == principal
    now[0] += 10
    assert verifier.cached(token) is None  # expired: verify() decides (and refuses)
    with pytest.raises(TokenError):
        await verifier.verify(token)
    fresh = signer.token()
    revocations.add((await verifier.verify(fresh)).token_id, now[0] + 60)
    with pytest.raises(TokenError) as err:
        verifier.cached(fresh)
    assert err.value.detail == "revoked"


DEADLINE = 10.0
"""Seconds a test waits for what takes milliseconds, so a loaded machine does not fail it."""


class FakeStream:
    """identity's WatchRevocations seen from a service: each open stream reads from its own queue.

    Putting an exception into a stream's queue makes it fail; putting None ends it.
    """

    def __init__(self) -> None:
        self.opened: list[float] = []  # the `since` of every (re)connection
        self.streams: list[asyncio.Queue[RevocationUpdate | BaseException | None]] = []
        self.connected = asyncio.Event()

    async def __call__(self, since: float) -> AsyncGenerator[RevocationUpdate, None]:
        queue: asyncio.Queue[RevocationUpdate | BaseException | None] = asyncio.Queue()
        self.opened.append(since)
        self.streams.append(queue)
        self.connected.set()
        while (item := await queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item

    async def next_connection(self, count: int) -> asyncio.Queue[RevocationUpdate | BaseException | None]:
        while len(self.streams) < count:
            self.connected.clear()
            await asyncio.wait_for(self.connected.wait(), DEADLINE)
        return self.streams[count - 1]


async def until(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(DEADLINE):
        while not predicate():
            await asyncio.sleep(0.005)


async def test_a_pushed_revocation_applies_to_a_cached_token_without_any_poll(signer: Signer) -> None:
    stream = FakeStream()
    # The poll is hours away: only the push can explain the refusal.
    revocations = RevocationSet(fetch=None, interval=3600, watch=stream)
    verifier = verifier_for(signer, revocations)
    token = signer.token()
    principal = await verifier.verify(token)
    assert verifier.cached(token) == principal
    revocations.start()
    try:
        connection = await stream.next_connection(1)
        connection.put_nowait(RevocationUpdate([], 100.0))  # caught up: nothing revoked yet
        await asyncio.wait_for(revocations.connected.wait(), DEADLINE)
        connection.put_nowait(RevocationUpdate([(principal.token_id, principal.expires_at)], 101.0))
        await until(lambda: revocations.is_revoked(principal.token_id))
        with pytest.raises(TokenError) as err:
            verifier.cached(token)
        assert err.value.detail == "revoked"
    finally:
        await revocations.stop()


async def test_the_watch_reconnects_after_a_failure_and_resumes_where_it_left_off() -> None:
    stream = FakeStream()
    revocations = RevocationSet(watch=stream, backoff=(0.01, 0.05))
    revocations.start()
    try:
        first = await stream.next_connection(1)
        first.put_nowait(RevocationUpdate([("a", time.time() + 60)], 100.0))
        first.put_nowait(RevocationUpdate([], 150.0))  # a keepalive moves the resume point too
        first.put_nowait(grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, None, None, "identity restarted"))
        second = await stream.next_connection(2)
        second.put_nowait(None)  # the stream ends (identity shut down): reconnect again
        await stream.next_connection(3)
        assert stream.opened == [0.0, 150.0, 150.0]
        assert revocations.is_revoked("a")
    finally:
        await revocations.stop()


async def test_a_silent_stream_is_taken_for_dead_and_reopened() -> None:
    stream = FakeStream()
    revocations = RevocationSet(watch=stream, backoff=(0.01, 0.05), idle_timeout=0.05)
    revocations.start()
    try:
        (await stream.next_connection(1)).put_nowait(RevocationUpdate([], 7.0))
        await stream.next_connection(2)  # nothing more on the first: reopened from its resume time
        assert stream.opened[1] == 7.0
    finally:
        await revocations.stop()


async def test_beside_a_watch_the_safety_net_poll_rereads_the_whole_list() -> None:
    asked: list[float] = []

    async def fetch(since: float) -> list[tuple[str, float]]:
        asked.append(since)
        return [("late", time.time() + 60)]

    revocations = RevocationSet(fetch, interval=0.01, watch=FakeStream())
    revocations.start()
    try:
        await until(lambda: len(asked) >= 2)
    finally:
        await revocations.stop()
    assert set(asked) == {0.0}
    assert revocations.is_revoked("late")


@pytest.mark.parametrize(("warn_after", "warnings"), [(3600.0, 0), (0.02, 1)])
async def test_an_outage_is_warned_about_once_and_only_when_it_lasts(
    caplog: pytest.LogCaptureFixture, warn_after: float, warnings: int
) -> None:
    attempts: list[float] = []

    async def unreachable(since: float) -> AsyncGenerator[RevocationUpdate, None]:
        attempts.append(since)
        raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, None, None, "connection refused")
        yield  # pragma: no cover - makes this an async generator

    revocations = RevocationSet(watch=unreachable, backoff=(0.001, 0.005), warn_after=warn_after)
    with caplog.at_level(logging.DEBUG, logger="bhiv_core.security.jwt"):
        revocations.start()
        try:
            started = time.monotonic()
            await until(lambda: len(attempts) >= 20 and time.monotonic() - started > 0.1)
        finally:
            await revocations.stop()
    warned = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == warnings
