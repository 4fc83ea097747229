"""Children do not outlive a parent killed outright: bound children, and a service's workers."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

from grpc_health.v1 import health_pb2, health_pb2_grpc

from bhiv.identity.v1 import user_service_pb2 as us
from bhiv_core.mesh import free_port
from bhiv_core.runtime.lifetime import bound_command
from tests.harness import serving
from tests.procfs import Proc, alive, descendants, listening_pids, wait_until

USER_SERVICE = us.DESCRIPTOR.services_by_name["UserService"]
TIMEOUT = 60.0
"""Seconds a process may take to start, or to drain and exit (on a loaded machine)."""


def _python(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


# A parent that starts one bound child, says so, and waits.
BOUND_PARENT = """
import subprocess, sys, time
from bhiv_core.runtime.lifetime import bound_command
child = [sys.executable, "-c", "import time; time.sleep(600)"]
subprocess.Popen(bound_command(child), start_new_session=True)
print("started", flush=True)
time.sleep(600)
"""

# A child whose parent died between the fork and its request: its parent is another process.
ORPHANED_CHILD = """
import os, time
from bhiv_core.runtime.lifetime import die_with_parent
die_with_parent(os.getppid() + 1)
time.sleep(600)
"""


def _kill_all(procs: set[Proc]) -> None:
    for pid, _ in alive(procs):
        os.kill(pid, signal.SIGKILL)


def test_a_bound_child_stops_when_its_parent_is_killed() -> None:
    parent = _python("-c", BOUND_PARENT)
    assert parent.stdout is not None
    assert parent.stdout.readline() == b"started\n"
    children = descendants(parent.pid)
    try:
        assert len(children) == 1
        parent.kill()
        parent.wait(timeout=TIMEOUT)
        wait_until(lambda: not alive(children), TIMEOUT, "the child of a killed parent exits")
    finally:
        parent.kill()
        _kill_all(children)


def test_a_child_whose_parent_is_already_gone_stops_at_once() -> None:
    child = _python("-c", ORPHANED_CHILD)
    try:
        assert child.wait(timeout=TIMEOUT) == -signal.SIGTERM
    finally:
        child.kill()


async def test_bound_children_start_cleanly_while_grpc_is_busy_in_the_parent() -> None:
    # A preexec_fn would make subprocess fork() and run grpc's fork handlers: with calls in
    # flight, about a third of such children crashed (SIGSEGV, SIGABRT) before running anything.
    async with serving([(USER_SERVICE, object())]) as (_, channel):
        stub = health_pb2_grpc.HealthStub(channel)
        busy = True

        async def load() -> None:
            while busy:
                await stub.Check(health_pb2.HealthCheckRequest())

        loads = [asyncio.create_task(load()) for _ in range(4)]
        try:
            for _ in range(16):
                child = await asyncio.create_subprocess_exec(
                    *bound_command([sys.executable, "-c", "print('ran')"]),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
                out, err = await asyncio.wait_for(child.communicate(), TIMEOUT)
                assert (child.returncode, out, err) == (0, b"ran\n", b"")
        finally:
            busy = False
            await asyncio.gather(*loads)


def test_workers_stop_when_their_service_process_is_killed(tmp_path) -> None:
    port = free_port()
    env = {
        "BHIV_CRM_PORT": str(port),
        "BHIV_CRM_WORKERS": "2",
        "BHIV_DATA_DIR": str(tmp_path),
        "BHIV_CRM_METRICS_PORT": "0",
    }
    service = _python("-m", "bhiv_core.services.crm", env=env)
    children: set[Proc] = set()
    try:
        wait_until(lambda: len(listening_pids(port)) == 2, TIMEOUT, "two workers listen")
        children = descendants(service.pid)
        service.kill()
        service.wait(timeout=TIMEOUT)
        wait_until(lambda: not alive(children), TIMEOUT, f"the workers of a killed service exit: {children}")
        assert listening_pids(port) == set()
    finally:
        service.kill()
        _kill_all(children)
