"""The served identity process: first-start admin, health, store selection, the KEK file."""

from __future__ import annotations

import asyncio
import stat
import time
from pathlib import Path

import grpc
import jwt
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bhiv.identity.v1 import auth_service_pb2 as auth
from bhiv.identity.v1 import auth_service_pb2_grpc as auth_grpc
from bhiv_core.audit.store import AuditFilter, make_audit_store
from bhiv_core.runtime.errors import Unauthenticated
from bhiv_core.runtime.server import start_service
from bhiv_core.security.principal import Principal
from bhiv_core.services.identity.server import definition, identity_service
from bhiv_core.services.identity.service import ClientInfo, SentinelReporter, TokenPair, UserFields
from bhiv_core.services.identity.store.mongo import MongoIdentityStore
from bhiv_core.services.identity.store.sqlite import SqliteIdentityStore
from bhiv_core.standard_chain import standard_chain
from tests.harness import config_for
from tests.services.identity.conftest import (
    TEST_ENV,
    Clock,
    FakeReporter,
    admin_password,
    identity_config,
    make_service,
    serve_identity,
)


def hidden_files(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


async def test_first_start_creates_the_admin_credentials_file_0600_with_a_working_password(
    tmp_path: Path,
) -> None:
    async with serve_identity(tmp_path) as served:
        path = tmp_path / "admin-credentials"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        lines = path.read_text().splitlines()
        assert lines[0] == "username=admin"
        assert lines[1].startswith("password=") and len(lines[1]) == len("password=") + 24
        reply = await served.login("admin", admin_password(tmp_path))
        assert reply.user.username == "admin"
        assert hidden_files(tmp_path) == []  # nothing staged left behind
    content, mtime = path.read_text(), path.stat().st_mtime_ns

    async with serve_identity(tmp_path) as served:
        assert (path.read_text(), path.stat().st_mtime_ns) == (content, mtime)
        assert [u.username for u in await served.service.store.list_users(limit=10)] == ["admin"]
        await served.login("admin", admin_password(tmp_path))


async def test_no_admin_is_bootstrapped_when_users_exist(tmp_path: Path) -> None:
    async with serve_identity(tmp_path):
        pass
    (tmp_path / "admin-credentials").unlink()
    async with serve_identity(tmp_path) as served:
        assert not (tmp_path / "admin-credentials").exists()
        assert await served.service.bootstrap_admin() is False


async def test_kek_and_database_are_private_to_the_owner(tmp_path: Path) -> None:
    async with serve_identity(tmp_path):
        pass
    assert stat.S_IMODE((tmp_path / "identity-kek").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "identity.db").stat().st_mode) == 0o600


async def test_definition_serves_all_three_services_and_checks_the_store(tmp_path: Path) -> None:
    runtime = config_for(DATA_DIR=str(tmp_path), **TEST_ENV)
    service = identity_service(runtime, reporter=FakeReporter())
    running = await start_service(runtime, definition(runtime, service=service), standard_chain)
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="bhiv.identity.v1.UserService")
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            jwks = await auth_grpc.AuthServiceStub(channel).GetJwks(auth.GetJwksRequest())
            assert len(jwks.keys) == 1
        assert running.monitor.failures == {}
        assert set(running.definition.checks) == {"store"}
        assert {d.full_name for d, _ in running.definition.servicers} == {
            "bhiv.identity.v1.AuthService",
            "bhiv.identity.v1.UserService",
            "bhiv.identity.v1.RoleService",
        }
    finally:
        await running.stop(grace=0.5)


def test_sqlite_is_the_default_store_and_a_mongodb_url_selects_mongo(tmp_path: Path) -> None:
    default = identity_service(config_for(DATA_DIR=str(tmp_path)))
    assert isinstance(default.store, SqliteIdentityStore)
    assert default.store.db.path == tmp_path / "identity.db"
    assert isinstance(default.reporter, SentinelReporter)
    _, settings = identity_config(tmp_path, IDENTITY_STORE_URL="mongodb://db.invalid:27017/?replicaSet=rs0")
    mongo = identity_service(
        config_for(DATA_DIR=str(tmp_path), IDENTITY_STORE_URL="mongodb://db.invalid:27017/?replicaSet=rs0")
    )
    assert isinstance(mongo.store, MongoIdentityStore)
    assert mongo.store.database.name == settings.mongo_database == "bhiv_identity"


async def test_housekeeping_rotates_an_over_age_key_while_running(tmp_path: Path) -> None:
    env = {"SIGNING_KEY_CHECK_SECONDS": "0.05", "SIGNING_KEY_MAX_AGE_SECONDS": "3600"}
    async with serve_identity(tmp_path, **env) as served:
        first = (await served.auth.GetJwks(auth.GetJwksRequest())).keys[0].kid
        served.clock.advance(3600)
        for _ in range(100):
            await asyncio.sleep(0.02)
            kids = [k.kid for k in (await served.auth.GetJwks(auth.GetJwksRequest())).keys]
            if kids[0] != first:
                break
        assert len(kids) == 2 and kids[1] == first


async def test_an_over_age_key_is_rotated_on_start(tmp_path: Path) -> None:
    async with serve_identity(tmp_path) as served:
        first = (await served.auth.GetJwks(auth.GetJwksRequest())).keys[0].kid
    clock = Clock()
    clock.advance(31 * 24 * 3600)
    async with serve_identity(tmp_path, clock=clock) as served:
        kids = [k.kid for k in (await served.auth.GetJwks(auth.GetJwksRequest())).keys]
    # Rotated at start; the old key stays published for the overlap window from now.
    assert kids[0] != first
    assert kids[1:] == [first]


async def test_definition_feeds_this_process_verifier_keys_and_immediate_revocations(tmp_path: Path) -> None:
    runtime, service = make_service(tmp_path)
    built = definition(runtime, service=service)
    for hook in built.on_start:
        await hook()
    try:
        assert list(await built.key_source.fetch()) == list(await service.public_keys())
        pair, user = await service.login(
            "admin", admin_password(tmp_path), ClientInfo("127.0.0.1", "/t/Login")
        )
        principal = Principal(
            subject=user.name, role="admin", token_id=pair.access_jti, expires_at=time.time() + 900
        )
        await service.logout(principal)
        # Applied without waiting for the poll.
        assert built.revocations.is_revoked(pair.access_jti)
    finally:
        for hook in built.on_stop:
            await hook()


async def test_every_revoke_path_reaches_this_process_verifier_before_it_returns(tmp_path: Path) -> None:
    runtime, service = make_service(tmp_path)
    built = definition(runtime, service=service)
    assert built.revocations is not None
    revoked = built.revocations.is_revoked
    for hook in built.on_start:
        await hook()
    try:
        client = ClientInfo("127.0.0.1", "/t/Login")
        admin_pair, admin = await service.login("admin", admin_password(tmp_path), client)
        boss = Principal(subject=admin.name, role="admin", token_id=admin_pair.access_jti)
        fields = UserFields(username="sam", role="sales")
        sam = await service.create_user(boss, fields, "a long enough password")

        async def sam_logs_in() -> TokenPair:
            return (await service.login("sam", "a long enough password", client))[0]

        # A role change (a demotion here) revokes the sessions.
        pair = await sam_logs_in()
        await service.update_user(boss, sam.name, UserFields(role="support"), ["role"])
        assert revoked(pair.access_jti)
        # A reused refresh token revokes its family.
        pair = await sam_logs_in()
        await service.refresh(pair.refresh_token, client)
        with pytest.raises(Unauthenticated):
            await service.refresh(pair.refresh_token, client)
        assert revoked(pair.access_jti)
        # Disabling the user revokes everything it holds.
        pair = await sam_logs_in()
        await service.disable_user(boss, sam.name)
        assert revoked(pair.access_jti)
        # Logout.
        await service.logout(boss)
        assert revoked(admin_pair.access_jti)
    finally:
        for hook in built.on_stop:
            await hook()


async def test_watch_revocations_streams_a_logout_to_a_watcher_and_is_audited_once(tmp_path: Path) -> None:
    runtime = config_for(DATA_DIR=str(tmp_path), **TEST_ENV)
    service = identity_service(runtime, reporter=FakeReporter())
    running = await start_service(runtime, definition(runtime, service=service), standard_chain)
    stopped = False
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            stub = auth_grpc.AuthServiceStub(channel)
            watch = stub.WatchRevocations(auth.WatchRevocationsRequest())
            first = await asyncio.wait_for(watch.read(), 10)
            assert list(first.revocations) == []
            assert first.resume_time.seconds > 0
            login = await stub.Login(auth.LoginRequest(username="admin", password=admin_password(tmp_path)))
            await stub.Logout(
                auth.LogoutRequest(refresh_token=login.tokens.refresh_token),
                metadata=(("authorization", f"Bearer {login.tokens.access_token}"),),
            )
            while not (reply := await asyncio.wait_for(watch.read(), 10)).revocations:
                pass  # a keepalive
            [revoked] = reply.revocations
            claims = jwt.decode(login.tokens.access_token, options={"verify_signature": False})
            assert revoked.jti == claims["jti"]
            stopped = True
            await running.stop(grace=0.5)  # ends the stream, flushes the audit sink
            assert await watch.code() == grpc.StatusCode.OK
    finally:
        if not stopped:
            await running.stop(grace=0.5)
    store = make_audit_store(runtime)
    await store.open()
    try:
        method = "/bhiv.identity.v1.AuthService/WatchRevocations"
        records, _ = await store.list(AuditFilter(method=method))
    finally:
        await store.close()
    assert [r.outcome_code for r in records] == ["OK"]


async def test_stopping_with_open_watch_streams_ends_them_instead_of_waiting_out_the_grace(
    tmp_path: Path,
) -> None:
    runtime = config_for(DATA_DIR=str(tmp_path), **TEST_ENV)
    service = identity_service(runtime, reporter=FakeReporter())
    running = await start_service(runtime, definition(runtime, service=service), standard_chain)
    async with grpc.aio.insecure_channel(running.address) as channel:
        stub = auth_grpc.AuthServiceStub(channel)
        watches = [stub.WatchRevocations(auth.WatchRevocationsRequest()) for _ in range(3)]
        for watch in watches:
            await asyncio.wait_for(watch.read(), 10)
        started = time.monotonic()
        await running.stop(grace=120)
        # Far below the grace period: the streams ended at once rather than being cut off by it.
        assert time.monotonic() - started < 60
        for watch in watches:
            assert await watch.read() is grpc.aio.EOF
            assert await watch.code() == grpc.StatusCode.OK
