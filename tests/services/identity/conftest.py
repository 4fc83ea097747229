"""Fixtures for the identity tests: a fake clock, a fake reporter, stores, and a served identity.

The served identity runs behind a small test auth interceptor that verifies the bearer token with
the service's own keys and revocations and sets the principal, standing in for the real auth
interceptor (built elsewhere).
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest

from bhiv.identity.v1 import auth_service_pb2 as auth
from bhiv.identity.v1 import auth_service_pb2_grpc as auth_grpc
from bhiv.identity.v1 import role_service_pb2_grpc as roles_grpc
from bhiv.identity.v1 import user_service_pb2_grpc as users_grpc
from bhiv_core.interceptors.errors import ErrorMappingInterceptor
from bhiv_core.interceptors.validation import ValidationInterceptor
from bhiv_core.runtime.chain import CallInfo, Interceptor, UnaryNext
from bhiv_core.runtime.errors import Unauthenticated
from bhiv_core.security.principal import Principal, current_principal
from bhiv_core.services.identity.config import IdentityConfig
from bhiv_core.services.identity.server import definition
from bhiv_core.services.identity.service import IdentityService, SecurityEvent
from bhiv_core.services.identity.store import IdentityStore, make_identity_store
from bhiv_core.services.identity.store.mongo import MongoIdentityStore
from bhiv_core.services.identity.store.sqlite import SqliteIdentityStore
from bhiv_core.services.identity.tokens import decode_access_token
from bhiv_core.storage.mongo import MongoDatabase
from tests.harness import config_for, serving

MONGO_URL = os.environ.get("BHIV_TEST_MONGODB_URL", "")
MONGO_SKIP = "BHIV_TEST_MONGODB_URL is not set: no MongoDB replica set to run the store contract against"

# Scrypt at n = 2**12 keeps the tests fast; production uses 2**15.
TEST_ENV = {"SCRYPT_LOG_N": "12"}


class Clock:
    """Real time plus an offset the test can advance; or frozen, for timing-sensitive cases."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.frozen: float | None = None

    def __call__(self) -> float:
        return (time.time() if self.frozen is None else self.frozen) + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds

    def freeze(self) -> None:
        """Stops time (tokens stay valid: issued now, expiring minutes later)."""
        self.frozen = time.time()


@dataclass
class FakeReporter:
    """Records reported security events."""

    events: list[SecurityEvent] = field(default_factory=list)
    metadata: list[tuple[tuple[str, str], ...]] = field(default_factory=list)

    def report(self, event: SecurityEvent, *, metadata: Any = ()) -> None:
        self.events.append(event)
        self.metadata.append(tuple(metadata))


class TokenAuth(Interceptor):
    """Test stand-in for the auth interceptor: verifies ``authorization: Bearer`` with the service's keys."""

    def __init__(self, service: IdentityService):
        self.service = service

    async def intercept_unary(self, call: CallInfo, request: Any, context: Any, proceed: UnaryNext) -> Any:
        metadata = dict(context.invocation_metadata() or ())
        header = metadata.get("authorization", "")
        if not header:
            return await proceed(call, request, context)
        token = header.removeprefix("Bearer ")
        try:
            claims = decode_access_token(
                token,
                await self.service.public_keys(),
                issuer=self.service.config.issuer,
                audience=self.service.config.audience,
            )
        except jwt.InvalidTokenError:
            raise Unauthenticated("invalid token") from None
        if claims["jti"] in {jti for jti, _ in await self.service.revoked_since(0)}:
            raise Unauthenticated("invalid token")
        principal = Principal(
            subject=claims["sub"],
            role=claims.get("role", ""),
            customer=claims.get("customer", ""),
            token_id=claims["jti"],
            expires_at=float(claims["exp"]),
            token=token,
        )
        call.principal = principal
        reset = current_principal.set(principal)
        try:
            return await proceed(call, request, context)
        finally:
            current_principal.reset(reset)


def identity_config(data_dir: Path, **env: str) -> tuple[Any, IdentityConfig]:
    runtime = config_for(DATA_DIR=str(data_dir), **(TEST_ENV | env))
    return runtime, IdentityConfig.from_runtime(runtime)


def make_service(
    data_dir: Path, *, clock: Clock | None = None, service_secret: bytes | None = None, **env: str
) -> tuple[Any, IdentityService]:
    runtime, settings = identity_config(data_dir, **env)
    service = IdentityService(
        settings,
        make_identity_store(settings),
        reporter=FakeReporter(),
        clock=clock or Clock(),
        service_secret=service_secret,
    )
    return runtime, service


def admin_password(data_dir: Path) -> str:
    lines = dict(line.split("=", 1) for line in (data_dir / "admin-credentials").read_text().splitlines())
    return lines["password"]


@dataclass
class Served:
    """A served identity and stubs to it."""

    service: IdentityService
    channel: grpc.aio.Channel
    clock: Clock
    data_dir: Path

    @property
    def reporter(self) -> FakeReporter:
        assert isinstance(self.service.reporter, FakeReporter)
        return self.service.reporter

    @property
    def auth(self) -> auth_grpc.AuthServiceAsyncStub:
        return auth_grpc.AuthServiceStub(self.channel)

    @property
    def users(self) -> users_grpc.UserServiceAsyncStub:
        return users_grpc.UserServiceStub(self.channel)

    @property
    def roles(self) -> roles_grpc.RoleServiceAsyncStub:
        return roles_grpc.RoleServiceStub(self.channel)

    async def login(self, username: str, password: str) -> auth.LoginResponse:
        return await self.auth.Login(auth.LoginRequest(username=username, password=password))

    async def admin_token(self) -> str:
        reply = await self.login("admin", admin_password(self.data_dir))
        return reply.tokens.access_token


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@contextlib.asynccontextmanager
async def serve_identity(
    data_dir: Path, *, clock: Clock | None = None, service_secret: bytes | None = None, **env: str
) -> AsyncIterator[Served]:
    """Starts identity (store, keys, admin bootstrap) and serves it through the harness."""
    clock = clock or Clock()
    runtime, service = make_service(data_dir, clock=clock, service_secret=service_secret, **env)
    built = definition(runtime, service=service)
    for hook in built.on_start:
        await hook()
    # Takes any arguments: the runtime's chain factory signature is growing (config, definition).
    chain = lambda *_: [
        ErrorMappingInterceptor("identity.bhiv.core"),
        TokenAuth(service),
        ValidationInterceptor(),
    ]
    try:
        async with serving(built.servicers, chain=chain, config=runtime, checks=dict(built.checks)) as (
            _,
            channel,
        ):
            yield Served(service, channel, clock, data_dir)
    finally:
        for hook in built.on_stop:
            await hook()


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    async with serve_identity(tmp_path) as running:
        yield running


@pytest.fixture(params=["sqlite", "mongo"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[IdentityStore]:
    """An opened store of each kind; MongoDB only when BHIV_TEST_MONGODB_URL is set."""
    if request.param == "sqlite":
        opened: IdentityStore = SqliteIdentityStore(tmp_path / "identity.db")
        await opened.open()
        try:
            yield opened
        finally:
            await opened.close()
        return
    if not MONGO_URL:
        pytest.skip(MONGO_SKIP)
    database = MongoDatabase(MONGO_URL, f"bhiv_identity_test_{uuid.uuid4().hex[:12]}")
    mongo = MongoIdentityStore(database)
    await mongo.open()
    try:
        yield mongo
    finally:
        await database.client.drop_database(database.name)
        await mongo.close()
