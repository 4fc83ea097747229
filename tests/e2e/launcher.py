"""``make run``'s launcher (``python -m bhiv_core.mesh``) as a child of the test, on free ports.

The test reads the launcher's output (stdout and stderr) through a pipe it may close, and knows
every process below the launcher, so it can check that none is left behind.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bhiv_core.mesh import Mesh
from tests.procfs import Proc, alive, descendants

READY = b"All healthy"
START_TIMEOUT = 120.0
"""Seconds the launcher may take to report the mesh healthy on a loaded machine."""


@dataclass
class Launcher:
    """A running launcher and the mesh it was told to start (ports, data directory)."""

    proc: subprocess.Popen[bytes]
    mesh: Mesh
    output: bytearray = field(default_factory=bytearray)

    @property
    def text(self) -> str:
        """What the launcher printed so far (stdout and stderr)."""
        return self.output.decode(errors="replace")

    def children(self) -> set[Proc]:
        """Every living process below the launcher: services, their workers, Envoy."""
        return descendants(self.proc.pid)

    def close_output(self) -> None:
        """Closes the read end of the launcher's output, as a ``tee`` killed by Ctrl-C does."""
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def start_launcher(data_dir: Path, settings: dict[str, str]) -> Launcher:
    """Starts the launcher with ``settings`` (environment) on free ports; returns once it is healthy."""
    mesh = Mesh.with_free_ports(data_dir)
    env = mesh.service_env()  # this environment without its BHIV_*, plus host, data dir and ports
    env |= {
        "BHIV_EDGE_PORT": str(mesh.edge_port),
        "BHIV_EDGE_ADMIN_PORT": str(mesh.admin_port),
        "BHIV_SCRYPT_LOG_N": "12",
        **settings,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "bhiv_core.mesh"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    launcher = Launcher(proc, mesh)
    assert proc.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT
    while READY not in launcher.output:
        readable, _, _ = select.select([proc.stdout], [], [], 0.5)
        if readable:
            chunk = os.read(proc.stdout.fileno(), 65536)
            launcher.output += chunk
            if chunk:
                continue
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_launcher(launcher, launcher.children())
            raise AssertionError(f"the launcher did not report the mesh healthy:\n{launcher.text}")
    return launcher


def stop_launcher(launcher: Launcher, children: set[Proc]) -> None:
    """Cleans up after a test: stops the launcher, then kills whatever of ``children`` is left."""
    if launcher.proc.poll() is None:
        launcher.proc.send_signal(signal.SIGTERM)
        try:
            launcher.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            launcher.proc.kill()
            launcher.proc.wait()
    for pid, _ in alive(children):
        os.kill(pid, signal.SIGKILL)
    if launcher.proc.stdout is not None:
        launcher.proc.stdout.close()
