"""Data at rest is private: on a mesh of its own started under umask 022, from a data directory an
earlier run left world-readable, every directory is 0700 and every file 0600 once traffic flowed,
and the services' log files rotate at the configured size."""

from __future__ import annotations

import asyncio
import os
import secrets
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from bhiv.identity.v1 import auth_service_pb2 as auth
from bhiv.identity.v1 import auth_service_pb2_grpc as auth_grpc
from bhiv.identity.v1 import role_service_pb2 as rs
from bhiv.identity.v1 import role_service_pb2_grpc as rs_grpc
from bhiv_core.mesh import Mesh
from tests.e2e.client import CALL_TIMEOUT, Session, admin_session
from tests.e2e.conftest import mesh_env
from tests.harness import umask

pytestmark = pytest.mark.e2e

LOG_MAX_BYTES = 16_384
LOG_BACKUPS = 2


def loose(path: Path, mode: int) -> Path:
    """Gives ``path`` the mode an earlier release left (0755 folders, 0644 files)."""
    os.chmod(path, mode)
    return path


@pytest.fixture(scope="module")
def umask_022() -> Iterator[None]:
    with umask(0o022):
        yield


@pytest.fixture(scope="module")
async def private_mesh(
    tmp_path_factory: pytest.TempPathFactory, collector: tuple[object, str], umask_022: None
) -> AsyncIterator[Mesh]:
    data = tmp_path_factory.mktemp("at-rest") / "data"
    # What an earlier run left behind: readable by every local user.
    (data / "logs").mkdir(parents=True)
    loose(data, 0o755)
    loose(data / "logs", 0o755)
    (data / "logs" / "crm.log").write_text('{"msg": "from an earlier run"}\n')
    loose(data / "logs" / "crm.log", 0o644)
    (data / "audit.db").touch()
    loose(data / "audit.db", 0o644)
    env = mesh_env(collector[1]) | {
        "BHIV_LOG_MAX_BYTES": str(LOG_MAX_BYTES),
        "BHIV_LOG_BACKUPS": str(LOG_BACKUPS),
    }
    started = Mesh.with_free_ports(data, env=env)
    async with started:
        yield started


@pytest.fixture(scope="module")
async def traffic(private_mesh: Mesh) -> Session:
    """Logins (one failing, reported to sentinel), then enough calls for identity's log to rotate."""
    admin = await admin_session(private_mesh)
    async with grpc.aio.insecure_channel(private_mesh.edge_address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await auth_grpc.AuthServiceStub(channel).Login(
                auth.LoginRequest(username="admin", password=secrets.token_urlsafe(12)), timeout=CALL_TIMEOUT
            )
        assert failed.value.code() == grpc.StatusCode.UNAUTHENTICATED
        roles = rs_grpc.RoleServiceStub(channel)
        # One request-log line per call is about 300 bytes: 250 calls fill three 16 KiB files.
        for _ in range(250):
            await roles.ListRoles(rs.ListRolesRequest(), metadata=admin.metadata, timeout=CALL_TIMEOUT)
    return admin


def modes(root: Path) -> dict[str, int]:
    """The permission bits of ``root`` and of everything under it, by path relative to ``root``."""
    found = {".": stat.S_IMODE(root.lstat().st_mode)}
    for folder, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            path = Path(folder, name)
            found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


async def eventually(predicate: object, timeout: float = 30.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.1)
    return False


async def test_every_folder_is_0700_and_every_file_0600_under_umask_022(
    private_mesh: Mesh, traffic: Session
) -> None:
    data = private_mesh.data_dir
    expected = {
        "admin-credentials",
        "identity-kek",
        "audit-checkpoint-key",
        "service-secret",
        "identity.db",
        "audit.db",
        "audit.db-wal",
        "audit.db-shm",
        "sentinel.db",
        "sentinel.db-wal",
        "envoy/envoy.json",
        "logs/identity.log",
        "logs/sentinel.log",
        "logs/crm.log",
        "logs/envoy.log",
        "logs/edge-access.log",
    }
    # Envoy flushes its access log on its own schedule: wait for the first lines.
    access_log = data / "logs" / "edge-access.log"
    assert await eventually(lambda: access_log.exists() and access_log.stat().st_size > 0)
    found = modes(data)
    assert expected <= set(found), sorted(expected - set(found))
    folders = {path: mode for path, mode in found.items() if (data / path).is_dir()}
    files = {path: mode for path, mode in found.items() if path not in folders}
    assert {path: oct(mode) for path, mode in folders.items() if mode != 0o700} == {}
    assert {path: oct(mode) for path, mode in files.items() if mode != 0o600} == {}


async def test_a_service_log_rotates_at_the_configured_size_keeping_the_configured_backups(
    private_mesh: Mesh, traffic: Session
) -> None:
    logs = private_mesh.log_dir
    identity = sorted(path.name for path in logs.glob("identity.log*"))
    assert identity == ["identity.log", "identity.log.1", "identity.log.2"]
    for name in identity:
        assert (logs / name).stat().st_size <= LOG_MAX_BYTES
    assert stat.S_IMODE((logs / "identity.log.2").stat().st_mode) == 0o600
