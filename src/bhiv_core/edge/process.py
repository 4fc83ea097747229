"""Runs Envoy: validates a bootstrap, starts the edge, waits until it is ready, and stops it.

Several Envoys may run on one host at once (the tests start one per case), so hot restart, whose
shared memory and domain socket would collide, is disabled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Final, Self

from bhiv_core.edge.binaries import find_tool
from bhiv_core.edge.envoy_config import ADMIN_HOST, EdgeSettings
from bhiv_core.runtime.files import PRIVATE_UMASK, open_private
from bhiv_core.runtime.lifetime import bound_command

__all__ = ["EnvoyError", "EnvoyProcess", "validate_config"]

_DEPRECATED_MARKER: Final = "Deprecated field"
_STDERR_TAIL_LINES: Final = 40
_POLL_INTERVAL_S: Final = 0.05


class EnvoyError(RuntimeError):
    """Envoy rejected a config, exited, or did not become ready; the message carries its output."""


def validate_config(
    path: Path, *, envoy: Path | None = None, allow_deprecated: bool = False, timeout_s: float = 60.0
) -> None:
    """Check a bootstrap with ``envoy --mode validate`` (offline: nothing is bound or dialled).

    Args:
        path: The bootstrap file.
        envoy: The Envoy binary; :func:`~bhiv_core.edge.binaries.find_tool` finds it when ``None``.
        allow_deprecated: Whether a deprecated field is acceptable. Envoy only warns about them,
            but they are removed in a later release, so by default they fail validation.
        timeout_s: How long validation may take.

    Raises:
        EnvoyError: When Envoy rejects the config (or uses a deprecated field); the message holds
            Envoy's output.
        FileNotFoundError: When Envoy is not installed.

    """
    binary = envoy or find_tool("envoy")
    result = subprocess.run(
        [str(binary), "--mode", "validate", "-c", str(path), "--log-level", "warn", "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0:
        raise EnvoyError(f"envoy rejected {path} (exit {result.returncode}):\n{output}")
    if not allow_deprecated and _DEPRECATED_MARKER in output:
        raise EnvoyError(f"{path} uses deprecated fields:\n{output}")


class EnvoyProcess:
    """One Envoy process serving a bootstrap, as a sync or an async context manager.

    Example::

        async with EnvoyProcess(config_path, settings) as edge:
            channel = grpc.aio.insecure_channel(edge.address)

    Envoy's own log (stderr) goes to ``log_path``; its access log goes wherever the bootstrap says
    (stdout by default, inherited from this process unless ``stdout_path`` is given).
    """

    def __init__(
        self,
        config_path: Path,
        settings: EdgeSettings,
        *,
        envoy: Path | None = None,
        log_level: str = "warn",
        concurrency: int | None = None,
        startup_timeout_s: float = 30.0,
        log_path: Path | None = None,
        stdout_path: Path | None = None,
        extra_args: Sequence[str] = (),
        bound_to_owner: bool = False,
    ) -> None:
        """Prepare (not start) an Envoy.

        Args:
            config_path: The bootstrap, as written by :func:`~bhiv_core.edge.envoy_config.write_bootstrap`.
            settings: The settings the bootstrap was built with (for the listener and admin ports).
            envoy: The Envoy binary; found with :func:`~bhiv_core.edge.binaries.find_tool` when ``None``.
            log_level: Envoy's log level.
            concurrency: Worker threads; Envoy's default (one per core) when ``None``.
            startup_timeout_s: How long :meth:`start` waits for the admin to report Envoy LIVE.
            log_path: Where Envoy's stderr goes; ``<config stem>.envoy.log`` beside the config by default.
            stdout_path: Where Envoy's stdout (the default access log) goes; inherited when ``None``.
            extra_args: More command-line arguments, appended last.
            bound_to_owner: Run Envoy in its own session (a terminal's Ctrl-C reaches only the
                owner, which stops Envoy in its turn) and stop it when the thread that starts it
                ends, even if the owner is killed outright (see :mod:`bhiv_core.runtime.lifetime`).

        """
        self._config_path = config_path
        self._settings = settings
        self._envoy = envoy
        self._log_level = log_level
        self._concurrency = concurrency
        self._startup_timeout_s = startup_timeout_s
        self.log_path = log_path or config_path.with_name(f"{config_path.stem}.envoy.log")
        self._stdout_path = stdout_path
        self._extra_args = tuple(extra_args)
        self._bound_to_owner = bound_to_owner
        self._process: subprocess.Popen[bytes] | None = None
        self._files: list[IO[bytes]] = []
        # start() may run in a worker thread (async use) while stop() is called from the loop.
        self._lock = threading.Lock()
        self._stopped = False

    @property
    def address(self) -> str:
        """``host:port`` a local client dials for gRPC or gRPC-web."""
        return _host_port(self._settings.connect_host, self._settings.listen_port)

    @property
    def admin_address(self) -> str:
        """``host:port`` of the admin interface (always on 127.0.0.1)."""
        return _host_port(ADMIN_HOST, self._settings.admin_port)

    @property
    def pid(self) -> int | None:
        """The process id while running, else ``None``."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        """Whether the process was started and has not exited."""
        return self._process is not None and self._process.poll() is None

    def command(self) -> list[str]:
        """Return the command line :meth:`start` runs."""
        binary = self._envoy or find_tool("envoy")
        args = [str(binary), "-c", str(self._config_path), "--log-level", self._log_level]
        # Hot restart shares memory and a domain socket keyed by a base id; with several Envoys
        # on one host they collide, and nothing here restarts Envoy in place anyway.
        args.append("--disable-hot-restart")
        if self._concurrency is not None:
            args += ["--concurrency", str(self._concurrency)]
        return [*args, *self._extra_args]

    def start(self) -> None:
        """Start Envoy and block until its admin reports it LIVE.

        Raises:
            EnvoyError: When it was already started (or stopped), exits, or is not ready in time
                (it is then killed); the message carries the tail of Envoy's log.
            FileNotFoundError: When Envoy is not installed.

        """
        self._wait_or_stop(*self._spawn())

    def _spawn(self) -> tuple[subprocess.Popen[bytes], list[str]]:
        """Start the Envoy process (without waiting for it) in the calling thread."""
        command = self.command()
        argv = bound_command(command) if self._bound_to_owner else command
        with self._lock:
            if self._process is not None or self._stopped:
                raise EnvoyError("an EnvoyProcess starts once; make a new one to start again")
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._files.append(stderr := open_private(self.log_path, "wb"))
            stdout: IO[bytes] | None = None
            if self._stdout_path is not None:
                self._files.append(stdout := open_private(self._stdout_path, "ab"))
            try:
                # Envoy creates its access log itself (0644 less the umask): owner-only.
                self._process = process = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=stdout,
                    stderr=stderr,
                    start_new_session=self._bound_to_owner,
                    umask=PRIVATE_UMASK,
                )
            except BaseException:
                self._close_files()
                raise
        return process, command

    def _wait_or_stop(self, process: subprocess.Popen[bytes], command: Sequence[str]) -> None:
        """Wait until Envoy is LIVE; stop it when it does not get there."""
        try:
            self._wait_until_live(process, command)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """Stop Envoy: SIGTERM, then SIGKILL if it has not exited within ``timeout_s``.

        Safe to call twice, when never started, and from another thread while :meth:`start` waits
        (that start then fails).

        Returns:
            Envoy's exit code, or ``None`` when it was never started.

        """
        with self._lock:
            self._stopped = True
            process = self._process
        if process is None:
            return None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._close_files()
        return process.returncode

    async def astart(self) -> None:
        """Start Envoy without blocking the event loop; see :meth:`start`.

        The process is spawned in the calling thread (the loop's, which lives as long as the owner:
        a bound Envoy ends with the thread that started it); readiness polling blocks, so it runs in
        a thread. If the awaiting task is cancelled meanwhile, the thread runs on: Envoy is stopped
        and that start fails, so no Envoy outlives its owner.

        Raises:
            EnvoyError: As :meth:`start`.

        """
        process, command = self._spawn()
        starting = asyncio.ensure_future(asyncio.to_thread(self._wait_or_stop, process, command))
        try:
            await asyncio.shield(starting)
        except asyncio.CancelledError:
            await asyncio.to_thread(self.stop)
            with contextlib.suppress(Exception):
                await starting
            raise

    async def astop(self, timeout_s: float = 10.0) -> int | None:
        """Stop Envoy without blocking the event loop; see :meth:`stop`."""
        return await asyncio.to_thread(self.stop, timeout_s)

    def _wait_until_live(self, process: subprocess.Popen[bytes], command: Sequence[str]) -> None:
        """Poll until Envoy is LIVE; raise EnvoyError when it exits or the startup timeout passes."""
        deadline = time.monotonic() + self._startup_timeout_s
        while True:
            code = process.poll()
            if code is not None:
                raise EnvoyError(
                    f"envoy exited with {code} while starting ({' '.join(command)}):\n{self._tail()}"
                )
            if self._is_live():
                return
            if time.monotonic() > deadline:
                raise EnvoyError(
                    f"envoy was not LIVE within {self._startup_timeout_s:g}s "
                    f"(admin {self.admin_address}):\n{self._tail()}"
                )
            time.sleep(_POLL_INTERVAL_S)

    def _is_live(self) -> bool:
        """Ask admin ``/server_info`` whether this Envoy is LIVE (listeners up, clusters initialised).

        ``/server_info`` rather than ``/ready`` because it also echoes the config path: another Envoy
        already holding the admin port must not pass for this one while this one fails to bind.
        """
        url = f"http://{self.admin_address}/server_info"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                info = json.loads(response.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
            return False
        options = info.get("command_line_options", {})
        return bool(info.get("state") == "LIVE" and options.get("config_path") == str(self._config_path))

    def _tail(self) -> str:
        """Return the last lines of Envoy's log."""
        try:
            lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError as error:
            return f"(no log: {error})"
        return "\n".join(lines[-_STDERR_TAIL_LINES:]) or "(empty log)"

    def _close_files(self) -> None:
        """Close the log files this object opened."""
        for handle in self._files:
            with contextlib.suppress(OSError):
                handle.close()
        self._files.clear()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        await self.astart()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.astop()


def _host_port(host: str, port: int) -> str:
    """``host:port``, with brackets around an IPv6 host."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
