"""Several Envoy replicas of one edge: each serves the same generated config with its own ports,
node id and logs, and routes calls to the same services.

``Mesh(edge_replicas=...)`` is what ``make run`` starts with ``BHIV_EDGE_REPLICAS``; a replica added
to a running mesh (:meth:`Mesh.add_edge_replica`) is one joining a deployment.
"""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from bhiv.identity.v1 import auth_service_pb2 as auth
from bhiv.identity.v1 import auth_service_pb2_grpc as auth_grpc
from bhiv_core.mesh import Mesh
from tests.e2e.client import CALL_TIMEOUT, admin_credentials
from tests.e2e.conftest import Collector, mesh_env
from tests.e2e.launcher import Launcher, start_launcher, stop_launcher
from tests.procfs import cmdline

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
async def replicated(
    tmp_path_factory: pytest.TempPathFactory, collector: tuple[Collector, str]
) -> AsyncIterator[Mesh]:
    """A mesh whose edge has two Envoy replicas from the start."""
    started = Mesh.with_free_ports(
        tmp_path_factory.mktemp("replicated"),
        edge_replicas=2,
        env=mesh_env(collector[1]),
        edge_rate_limit=100_000,
    )
    async with started:
        yield started


async def whoami(mesh: Mesh, edge: str) -> str:
    """Logs in as the admin through ``edge`` and asks identity who that is, through ``edge`` too."""
    async with grpc.aio.insecure_channel(edge) as channel:
        stub = auth_grpc.AuthServiceStub(channel)
        username, password = admin_credentials(mesh)
        tokens = (
            await stub.Login(auth.LoginRequest(username=username, password=password), timeout=CALL_TIMEOUT)
        ).tokens
        me = await stub.GetCurrentUser(
            auth.GetCurrentUserRequest(),
            metadata=(("authorization", f"Bearer {tokens.access_token}"),),
            timeout=CALL_TIMEOUT,
        )
    return str(me.user.username)


def server_info(admin_port: int) -> dict:
    """Envoy admin's ``/server_info`` (node, command line, state)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/server_info", timeout=10) as response:
        info: dict = json.loads(response.read())
    return info


async def test_each_replica_routes_calls_to_the_same_services(replicated: Mesh) -> None:
    assert len(replicated.edge_addresses) == len(replicated.envoys) == 2
    assert len(set(replicated.edge_addresses)) == 2
    users = await asyncio.gather(*(whoami(replicated, edge) for edge in replicated.edge_addresses))
    assert users == ["admin", "admin"]


def test_each_replica_has_its_own_node_id_admin_config_and_logs(replicated: Mesh) -> None:
    admins = [
        admin for _, admin in [(replicated.edge_port, replicated.admin_port), *replicated.edge_replica_ports]
    ]
    infos = [server_info(port) for port in admins]
    assert [info["node"]["id"] for info in infos] == ["bhiv-edge", "bhiv-edge-1"]
    assert {info["node"]["cluster"] for info in infos} == {"bhiv-edge"}
    assert [Path(info["command_line_options"]["config_path"]).name for info in infos] == [
        "envoy.json",
        "envoy-1.json",
    ]
    assert all(info["state"] == "LIVE" for info in infos)
    logs = replicated.log_dir
    assert (logs / "envoy.log").exists() and (logs / "envoy-1.log").exists()
    assert (logs / "edge-access.log").exists() and (logs / "edge-access-1.log").exists()


async def test_a_replica_added_to_a_running_mesh_routes_calls(replicated: Mesh) -> None:
    added = await replicated.add_edge_replica()
    try:
        assert replicated.edge_addresses[-1] == added
        assert await whoami(replicated, added) == "admin"
        assert server_info(replicated.edge_replica_ports[-1][1])["node"]["id"] == "bhiv-edge-2"
    finally:
        envoy = replicated.envoys.pop()
        replicated.edge_replica_ports.pop()
        await envoy.astop()


def consecutive_free_ports(count: int) -> int:
    """The first of ``count`` consecutive ports of 127.0.0.1 that were all free a moment ago."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = int(probe.getsockname()[1])
        if first + count > 65535:
            continue
        socks: list[socket.socket] = []
        try:
            for port in range(first, first + count):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise AssertionError(f"no {count} consecutive free ports found")


@pytest.fixture(scope="module")
def replicas_launcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Launcher, int, int]]:
    """``make run`` with ``BHIV_EDGE_REPLICAS=2``; yields it with the edge and admin ports it got.

    Replica 1 listens on both plus one.
    """
    edge_port, admin_port = consecutive_free_ports(2), consecutive_free_ports(2)
    settings = {
        "BHIV_EDGE_REPLICAS": "2",
        "BHIV_EDGE_PORT": str(edge_port),
        "BHIV_EDGE_ADMIN_PORT": str(admin_port),
    }
    launcher = start_launcher(tmp_path_factory.mktemp("replicas-launcher"), settings)
    children = launcher.children()
    yield launcher, edge_port, admin_port
    stop_launcher(launcher, children)


async def test_make_run_starts_the_replicas_it_is_told_to(
    replicas_launcher: tuple[Launcher, int, int],
) -> None:
    launcher, edge_port, admin_port = replicas_launcher
    assert f"edge replica 1: 127.0.0.1:{edge_port + 1} (admin 127.0.0.1:{admin_port + 1})" in launcher.text
    envoys = [pid for pid, _ in launcher.children() if "envoy" in " ".join(cmdline(pid))]
    assert len(envoys) == 2
    assert [server_info(port)["node"]["id"] for port in (admin_port, admin_port + 1)] == [
        "bhiv-edge",
        "bhiv-edge-1",
    ]
    for port in (edge_port, edge_port + 1):
        assert await whoami(launcher.mesh, f"127.0.0.1:{port}") == "admin"
