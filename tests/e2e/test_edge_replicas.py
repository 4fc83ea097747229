"""Several Envoy replicas of one edge: each serves the same generated config with its own ports,
node id and logs, routes calls to the same services, and enforces the same blocks, which they all
receive from sentinel, their one control plane.

``Mesh(edge_replicas=...)`` is what ``make run`` starts with ``BHIV_EDGE_REPLICAS``; a replica added
to a running mesh (:meth:`Mesh.add_edge_replica`) is one joining a deployment.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from bhiv.identity.v1 import auth_service_pb2 as auth
from bhiv.identity.v1 import auth_service_pb2_grpc as auth_grpc
from bhiv.sentinel.v1 import block_service_pb2 as bs
from bhiv_core.mesh import Mesh
from tests.e2e.client import CALL_TIMEOUT, Session, admin_credentials, admin_session
from tests.e2e.conftest import Collector, mesh_env
from tests.e2e.edge_probe import BLOCKED, block_address, block_stub, probe, refused, served, unblock, until
from tests.e2e.launcher import Launcher, start_launcher, stop_launcher
from tests.harness import OWN_CONNECTION, Relay
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


@pytest.fixture(scope="module")
async def replicated_admin(replicated: Mesh) -> Session:
    return await admin_session(replicated)


async def test_a_block_is_applied_by_both_replicas_on_open_and_new_connections(
    replicated: Mesh, replicated_admin: Session, capsys: pytest.CaptureFixture[str]
) -> None:
    attacker, bystander = "127.0.0.61", "127.0.0.62"
    first, second = replicated.edge_addresses
    async with contextlib.AsyncExitStack() as stack:
        # One connection from the attacker to each replica, open before the block.
        relays = [await stack.enter_async_context(Relay(edge, attacker)) for edge in (first, second)]
        open_channels = [
            await stack.enter_async_context(grpc.aio.insecure_channel(r.address, options=OWN_CONNECTION))
            for r in relays
        ]
        for channel in open_channels:
            assert await served(channel)
        created = await block_address(first, replicated_admin, attacker, "two replicas, one control plane")
        try:
            took = await asyncio.gather(
                *(until(lambda c=c: refused(c), f"replica {i} refuses") for i, c in enumerate(open_channels))
            )
            with capsys.disabled():
                print(
                    f"\nthe block reached the open connections of replica 0 after {took[0]:.3f} s, "
                    f"of replica 1 after {took[1]:.3f} s"
                )
            assert [r.connections for r in relays] == [1, 1]  # the already-open connections, refused
            for relay in relays:
                async with grpc.aio.insecure_channel(relay.address, options=OWN_CONNECTION) as fresh:
                    code, message = await probe(fresh)
                assert code == grpc.StatusCode.PERMISSION_DENIED and BLOCKED in message
                assert "blocked-until-lifted" in message
            assert [r.connections for r in relays] == [2, 2]  # and new ones
            for edge in (first, second):
                async with (
                    Relay(edge, bystander) as other,
                    grpc.aio.insecure_channel(other.address, options=OWN_CONNECTION) as channel,
                ):
                    assert await served(channel)
        finally:
            lifted = await unblock(second, replicated_admin, created.name)  # through the other replica
        assert not lifted.active
        for i, channel in enumerate(open_channels):
            await until(lambda c=channel: served(c), f"replica {i} serves the lifted address again")


async def test_a_replica_that_joins_enforces_the_blocks_already_made(
    replicated: Mesh, replicated_admin: Session
) -> None:
    attacker = "127.0.0.63"
    created = await block_address(
        replicated.edge_address, replicated_admin, attacker, "made before the replica"
    )
    try:
        joined = await replicated.add_edge_replica()
        try:
            async with (
                Relay(joined, attacker) as relay,
                grpc.aio.insecure_channel(relay.address, options=OWN_CONNECTION) as channel,
            ):
                await until(lambda: refused(channel), "the new replica refuses the blocked address")
                await unblock(joined, replicated_admin, created.name)
                await until(lambda: served(channel), "the new replica follows the unblock")
        finally:
            envoy = replicated.envoys.pop()
            replicated.edge_replica_ports.pop()
            await envoy.astop()
    finally:
        if await _is_active(replicated, replicated_admin, created.name):
            await unblock(replicated.edge_address, replicated_admin, created.name)


async def _is_active(mesh: Mesh, admin: Session, name: str) -> bool:

    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        got = await block_stub(channel).GetBlock(bs.GetBlockRequest(name=name), metadata=admin.metadata)
    return bool(got.block.active)


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
