"""``make run``'s launcher: settings reach the services, stopping leaves nothing, a restart works.

Each launcher here is the real one (``python -m bhiv_core.mesh``) started as ``make run`` starts
it, with settings in its environment or in a TOML file, on free ports.
"""

from __future__ import annotations

import signal
import socket
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import jwt
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bhiv_core.mesh import Mesh
from bhiv_core.registry import SERVICES
from tests.e2e.client import CALL_TIMEOUT, admin_credentials, login
from tests.e2e.launcher import START_TIMEOUT, Launcher, start_launcher, stop_launcher
from tests.procfs import TCP_TIME_WAIT, Proc, alive, cmdline, listening_pids, parent, tcp_sockets, wait_until

pytestmark = pytest.mark.e2e

STOP_TIMEOUT = 60.0
"""Seconds every child may take to drain and exit (the default grace is 10 s)."""


@pytest.fixture(scope="module")
def env_launcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    settings = {
        "BHIV_ACCESS_TOKEN_TTL_SECONDS": "60",
        "BHIV_CRM_WORKERS": "2",
        "BHIV_ACCESS_TOKEN_TTL": "60",  # a typo: nothing reads it
    }
    launcher = start_launcher(tmp_path_factory.mktemp("env-launcher"), settings)
    children = launcher.children()
    yield launcher
    stop_launcher(launcher, children)


async def access_token_lifetime(mesh: Mesh) -> int:
    session = await login(mesh, *admin_credentials(mesh))
    claims = jwt.decode(session.access_token, options={"verify_signature": False})
    return int(claims["exp"]) - int(claims["iat"])


def kinds(children: set[Proc]) -> Counter[str]:
    """How many processes of each kind ``children`` holds (service name, envoy, worker, ...)."""
    found: Counter[str] = Counter()
    for pid, _ in children:
        command = " ".join(cmdline(pid))
        if "bhiv_core.services." in command:
            found[command.rsplit(".", 1)[1]] += 1
        elif "envoy" in command:
            found["envoy"] += 1
        elif "spawn_main" in command:
            found["worker"] += 1
        elif "resource_tracker" in command:  # multiprocessing's helper beside spawned workers
            found["resource_tracker"] += 1
        else:
            found[command] += 1
    return found


# The services, CRM's two workers with multiprocessing's helper, and Envoy.
WITH_TWO_CRM_WORKERS = Counter(
    {**{s.name: 1 for s in SERVICES}, "worker": 2, "resource_tracker": 1, "envoy": 1}
)


def with_every_worker(launcher: Launcher) -> set[Proc]:
    """The launcher's processes once both crm workers run.

    The mesh is healthy as soon as one crm worker answers on the shared port; the second may still
    be starting on a loaded host, so wait for it (a worker that never comes fails here).
    """
    wait_until(
        lambda: kinds(launcher.children()) == WITH_TWO_CRM_WORKERS,
        START_TIMEOUT,
        "every service, both crm workers and Envoy run",
    )
    return launcher.children()


def crm_listeners(launcher: Launcher) -> set[int]:
    """The processes listening on CRM's port, each checked to be a worker of the CRM service."""
    (crm,) = (pid for pid, _ in launcher.children() if cmdline(pid)[-1:] == ["bhiv_core.services.crm"])
    pids = listening_pids(launcher.mesh.ports["crm"])
    assert {parent(pid) for pid in pids} == {crm}
    return pids


async def test_token_ttl_from_the_environment_is_honoured(env_launcher: Launcher) -> None:
    assert await access_token_lifetime(env_launcher.mesh) == 60


async def test_two_crm_workers_are_two_processes_on_one_port(env_launcher: Launcher) -> None:
    assert len(crm_listeners(env_launcher)) == 2
    async with grpc.aio.insecure_channel(env_launcher.mesh.edge_address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="bhiv.crm.v1.CustomerService"),
            metadata=(("x-bhiv-service", "crm"),),
            timeout=CALL_TIMEOUT,
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_an_unknown_setting_is_reported_by_name(env_launcher: Launcher) -> None:
    warning = "BHIV_ACCESS_TOKEN_TTL in the environment (did you mean BHIV_ACCESS_TOKEN_TTL_SECONDS?)"
    assert f"warning: unknown setting, ignored: {warning}\n" in env_launcher.text
    # Each service says so in its own log too (it may run without the launcher).
    for spec in SERVICES:
        log = (env_launcher.mesh.log_dir / f"{spec.name}.log").read_text()
        assert f"unknown setting, ignored: {warning}" in log, spec.name


async def test_settings_from_the_config_file_reach_the_services(tmp_path: Path) -> None:
    config = tmp_path / "bhiv.toml"
    config.write_text("access_token_ttl_seconds = 60\ncrm_workers = 2\n")
    launcher = start_launcher(tmp_path / "data", {"BHIV_CONFIG_FILE": str(config)})
    children = launcher.children()
    try:
        assert await access_token_lifetime(launcher.mesh) == 60
        assert len(crm_listeners(launcher)) == 2
        assert "unknown setting" not in launcher.text
    finally:
        stop_launcher(launcher, children)


def test_ctrl_c_with_the_output_gone_stops_every_child(tmp_path: Path) -> None:
    # `make run | tee run.log`, then Ctrl-C: tee dies first, and the launcher's prints fail.
    launcher = start_launcher(tmp_path, {"BHIV_CRM_WORKERS": "2"})
    children = with_every_worker(launcher)
    try:
        launcher.close_output()
        launcher.proc.send_signal(signal.SIGINT)
        assert launcher.proc.wait(timeout=STOP_TIMEOUT) == 0
        wait_until(lambda: not alive(children), STOP_TIMEOUT, f"every child exits: {children}")
    finally:
        stop_launcher(launcher, children)


def test_children_stop_when_the_launcher_is_killed(tmp_path: Path) -> None:
    launcher = start_launcher(tmp_path, {"BHIV_CRM_WORKERS": "2"})
    children = with_every_worker(launcher)
    try:
        launcher.proc.send_signal(signal.SIGKILL)
        launcher.proc.wait(timeout=STOP_TIMEOUT)
        wait_until(lambda: not alive(children), STOP_TIMEOUT, f"every child exits: {children}")
    finally:
        stop_launcher(launcher, children)


async def test_a_mesh_restarts_on_its_ports_right_after_a_stop(tmp_path: Path) -> None:
    # A connection that never speaks HTTP/2 holds a stopping service for its whole grace period.
    mesh = Mesh.with_free_ports(tmp_path, env={"BHIV_SCRYPT_LOG_N": "12", "BHIV_GRACE_SECONDS": "1"})
    await mesh.start()
    try:
        await login(mesh, *admin_credentials(mesh))
        # Clients still connected when the mesh stops: the servers hang up first, which leaves
        # their side of each connection in TIME_WAIT for a minute, on the ports to bind again.
        ports = [*mesh.ports.values(), mesh.edge_port]
        clients = [socket.create_connection((mesh.host, port), timeout=CALL_TIMEOUT) for port in ports]
        await mesh.stop()
        for client in clients:
            while client.recv(65536):  # up to the server's FIN; then ours ends the connection
                pass
            client.close()
        assert all(tcp_sockets(port, TCP_TIME_WAIT) for port in ports), "no TIME_WAIT to test with"
        await mesh.start()
        await login(mesh, *admin_credentials(mesh))
    finally:
        await mesh.stop()
