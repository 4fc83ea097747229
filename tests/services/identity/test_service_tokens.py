"""IssueServiceToken, the client-credentials grant, on a served identity: the token, and every refusal.

Each refusal answers a clean code (never INTERNAL) and is reported as a TOKEN_INVALID event with
the reason and the service claimed, never the assertion.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import jwt
import pytest

from bhiv.identity.v1 import auth_service_pb2 as auth
from bhiv_core.runtime.security_events import SecurityEventKind
from bhiv_core.runtime.service_credentials import EVENTS_SCOPE, ServiceTokenSource, sign_assertion
from bhiv_core.services.identity.tokens import decode_access_token
from tests.services.identity.conftest import Served, serve_identity
from tests.services.identity.test_servicer import violations

SECRET = secrets.token_urlsafe(32).encode()
ISSUE = "/bhiv.identity.v1.AuthService/IssueServiceToken"


@pytest.fixture
async def identity(tmp_path: Path) -> AsyncIterator[Served]:
    async with serve_identity(tmp_path, service_secret=SECRET) as running:
        yield running


async def issue(
    identity: Served, assertion: str, scopes: tuple[str, ...] = (EVENTS_SCOPE,)
) -> auth.IssueServiceTokenResponse:
    return await identity.auth.IssueServiceToken(
        auth.IssueServiceTokenRequest(assertion=assertion, scopes=scopes)
    )


async def refused(
    identity: Served, assertion: str, scopes: tuple[str, ...] = (EVENTS_SCOPE,)
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await issue(identity, assertion, scopes)
    return caught.value


async def test_a_service_gets_a_five_minute_token_with_only_the_scopes_it_asked_for(identity: Served) -> None:
    reply = await issue(identity, sign_assertion(SECRET, "crm"))
    assert (reply.token_type, reply.expires_in, list(reply.scopes)) == ("Bearer", 300, [EVENTS_SCOPE])
    claims = decode_access_token(
        reply.access_token,
        await identity.service.public_keys(),
        issuer=identity.service.config.issuer,
        audience=identity.service.config.audience,
    )
    assert (claims["sub"], claims["scope"], "role" in claims) == ("services/crm", EVENTS_SCOPE, False)
    assert claims["exp"] - claims["iat"] == 300
    assert identity.reporter.events == []


@pytest.mark.parametrize(
    ("assertion", "reason", "principal"),
    [
        (lambda: sign_assertion(b"x" * 43, "crm"), "bad signature", "services/crm"),
        (lambda: sign_assertion(SECRET, "crm", now=1_000_000_000), "expired assertion", "services/crm"),
        (
            lambda: sign_assertion(SECRET, "crm", now=4_000_000_000),
            "assertion issued in the future",
            "services/crm",
        ),
        (
            lambda: sign_assertion(SECRET, "crm", lifetime_seconds=3600),
            "assertion lives longer than 60 s",
            "services/crm",
        ),
        (lambda: sign_assertion(SECRET, "crm", audience="sentinel"), "wrong audience", "services/crm"),
        (lambda: "not-a-jwt", "malformed assertion", ""),
        (lambda: "a.b.c", "malformed assertion", ""),
        # The right secret, the wrong kind of token: neither HS256 with another typ nor "none".
        (lambda: jwt.encode({"sub": "crm"}, SECRET, algorithm="HS256"), "not a service assertion", ""),
        (lambda: jwt.encode({"sub": "crm"}, None, algorithm="none"), "not a service assertion", ""),
        (
            lambda: jwt.encode(
                dict(iss="logistics", sub="logistics", aud="identity", iat=1, exp=2, jti="x" * 16),
                SECRET,
                algorithm="HS256",
                headers={"typ": "svc+jwt"},
            ),
            "expired assertion",
            "services/logistics",
        ),
    ],
    ids=[
        "forged",
        "expired",
        "future",
        "long-lived",
        "audience",
        "garbage",
        "dots",
        "untyped",
        "none",
        "old",
    ],
)
async def test_a_bad_assertion_is_unauthenticated_and_reported(
    identity: Served, assertion: object, reason: str, principal: str
) -> None:
    error = await refused(identity, assertion())  # type: ignore[operator]
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == "invalid service assertion"
    [event] = identity.reporter.events
    assert event.kind is SecurityEventKind.TOKEN_INVALID
    assert (event.source_address, event.method, event.principal) == ("127.0.0.1", ISSUE, principal)
    assert event.detail == f"service assertion refused: {reason}"


async def test_iss_and_sub_must_name_the_same_service(identity: Served) -> None:
    now = int(identity.clock())
    claims = {
        "iss": "crm",
        "sub": "logistics",
        "aud": "identity",
        "iat": now,
        "exp": now + 30,
        "jti": "j" * 16,
    }
    assertion = jwt.encode(claims, SECRET, algorithm="HS256", headers={"typ": "svc+jwt"})
    assert (await refused(identity, assertion)).code() is grpc.StatusCode.UNAUTHENTICATED
    assert (
        identity.reporter.events[0].detail
        == "service assertion refused: iss and sub must both name the service"
    )


async def test_an_assertion_is_accepted_once(identity: Served) -> None:
    assertion = sign_assertion(SECRET, "logistics")
    await issue(identity, assertion)
    error = await refused(identity, assertion)
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    [event] = identity.reporter.events
    assert (event.principal, event.detail) == (
        "services/logistics",
        "service assertion refused: assertion replayed",
    )


async def test_a_service_not_in_the_registry_is_denied(identity: Served) -> None:
    error = await refused(identity, sign_assertion(SECRET, "mallory"))
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    [event] = identity.reporter.events
    assert (event.kind, event.principal) == (SecurityEventKind.TOKEN_INVALID, "services/mallory")


async def test_a_scope_the_service_may_not_hold_is_denied(identity: Served) -> None:
    error = await refused(identity, sign_assertion(SECRET, "crm"), (EVENTS_SCOPE, "identity.users.write"))
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "identity.users.write" in (error.details() or "")
    [event] = identity.reporter.events
    assert event.detail == "service asked for scopes it may not hold: identity.users.write"


@pytest.mark.parametrize(
    ("assertion", "scopes", "field"),
    [
        ("", (EVENTS_SCOPE,), "assertion"),
        ("x", (), "scopes"),
        ("x" * 4097, (EVENTS_SCOPE,), "assertion"),
        ("x", tuple(f"scope.{i}" for i in range(33)), "scopes"),
        ("x", ("s" * 129,), "scopes[0]"),
    ],
    ids=["no-assertion", "no-scope", "long-assertion", "many-scopes", "long-scope"],
)
async def test_a_malformed_request_is_invalid_argument(
    identity: Served, assertion: str, scopes: tuple[str, ...], field: str
) -> None:
    error = await refused(identity, assertion, scopes)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field in {path for path, _ in violations(error)}
    assert identity.reporter.events == []


async def test_random_assertions_are_never_internal(identity: Served) -> None:
    rng = random.Random(11)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.=+/{}\"' \u00e9\u0915"
    for _ in range(50):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 300)))
        assert (await refused(identity, text)).code() is grpc.StatusCode.UNAUTHENTICATED


async def test_identity_without_a_service_secret_refuses_every_assertion(tmp_path: Path) -> None:
    async with serve_identity(tmp_path) as running:
        error = await refused(running, sign_assertion(SECRET, "crm"))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_the_token_source_asks_once_and_keeps_the_token(identity: Served) -> None:
    source = ServiceTokenSource("orchestration", SECRET, lambda: identity.channel)
    first, second = await source(), await source()
    assert first == second
    claims = jwt.decode(first, options={"verify_signature": False})
    assert claims["sub"] == "services/orchestration"


async def test_the_token_source_waits_before_asking_again_after_a_refusal(identity: Served) -> None:
    source = ServiceTokenSource("crm", b"w" * 43, lambda: identity.channel, retry_seconds=3600)
    with pytest.raises(grpc.aio.AioRpcError):
        await source()
    with pytest.raises(RuntimeError, match="a moment ago"):
        await source()
    assert len(identity.reporter.events) == 1  # the second attempt never reached identity
