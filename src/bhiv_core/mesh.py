"""Starts the whole mesh — the seven services and the Envoy edge — on one host.

``make run`` calls :func:`main`; the end-to-end tests use :class:`Mesh` with free ports. Each
service is its own process (``python -m bhiv_core.services.<name>``); the edge configuration is
generated from the registry; the mesh is up when every service and the edge answer health SERVING.
Every ``BHIV_*`` setting of the launcher (environment, and the TOML file of ``BHIV_CONFIG_FILE``)
reaches the services; one that nothing reads is reported at start. SIGINT, SIGTERM or SIGHUP stops
everything, the edge first, services drained, leaving no process behind, whatever happened to the
launcher's output; a launcher killed outright takes its children with it (``runtime.lifetime``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bhiv_core.edge.envoy_config import NODE_CLUSTER, EdgeSettings, Upstream, write_bootstrap
from bhiv_core.edge.process import EnvoyProcess
from bhiv_core.registry import (
    EDGE_ADMIN_PORT,
    EDGE_PORT,
    EDGE_SOURCE_ADDRESS,
    SENTINEL_ACCESS_LOG_PORT,
    SENTINEL_XDS_PORT,
    SERVICES,
    ServiceSpec,
)
from bhiv_core.runtime.config import ConfigError, RuntimeConfig, Settings, load_config
from bhiv_core.runtime.files import PRIVATE_UMASK, open_private, private_dir, tighten_tree
from bhiv_core.runtime.lifetime import bound_command
from bhiv_core.runtime.server import bind_error
from bhiv_core.runtime.service_credentials import load_service_secret, service_secret_path

__all__ = ["Mesh", "MeshError", "free_port", "free_ports", "main"]

ROOT = Path(__file__).resolve().parents[2]


class MeshError(Exception):
    """The mesh could not start; the message says which part and why."""


def free_port(host: str = "127.0.0.1") -> int:
    """Returns a port that was free a moment ago (for tests)."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Returns ``count`` distinct ports that were free a moment ago.

    The sockets stay bound until all are chosen: one at a time, the kernel may hand out the same
    port twice.
    """
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in socks]


@dataclass
class Mesh:
    """The services and the edge, started as child processes.

    Attributes:
        data_dir: Where stores, logs and the generated Envoy config live.
        host: The loopback address everything binds.
        ports: The gRPC port of each service by name.
        metrics_ports: The Prometheus port of each service by name.
        edge_port: The edge's listener.
        admin_port: Envoy's admin interface (bound to 127.0.0.1 only).
        edge_replica_ports: The listener and admin ports of each further Envoy replica of the edge
            (``BHIV_EDGE_REPLICAS``): every replica serves the same generated configuration, with
            its own ports, logs and node id, and subscribes to the same control plane.
        access_log_port: Sentinel's access-log port, where Envoy streams its access log
            (``BHIV_SENTINEL_ACCESS_LOG_PORT``).
        xds_port: Sentinel's xDS port, from which the edge receives the deny list
            (``BHIV_SENTINEL_XDS_PORT``).
        env: Settings (``BHIV_*``) and other environment for the services; the mesh's own host,
            data directory and ports override the same names.
        edge_rate_limit: Requests per second the edge admits (``BHIV_EDGE_RATE_LIMIT``).
        edge_source_address: Where Envoy connects to the services from; the services believe the
            client address the edge forwards only from there (``BHIV_EDGE_PEERS``' default).
        startup_timeout: Seconds to wait for everything to be healthy.

    """

    data_dir: Path
    host: str = "127.0.0.1"
    ports: dict[str, int] = field(default_factory=lambda: {s.name: s.port for s in SERVICES})
    metrics_ports: dict[str, int] = field(default_factory=lambda: {s.name: s.metrics_port for s in SERVICES})
    edge_port: int = EDGE_PORT
    admin_port: int = EDGE_ADMIN_PORT
    edge_replica_ports: list[tuple[int, int]] = field(default_factory=list)
    access_log_port: int = SENTINEL_ACCESS_LOG_PORT
    xds_port: int = SENTINEL_XDS_PORT
    env: Mapping[str, str] = field(default_factory=dict)
    edge_rate_limit: int = 1000
    edge_source_address: str = EDGE_SOURCE_ADDRESS
    startup_timeout: float = 60.0
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, init=False)
    configs: dict[str, RuntimeConfig] = field(default_factory=dict, init=False)
    envoys: list[EnvoyProcess] = field(default_factory=list, init=False)

    @classmethod
    def with_free_ports(cls, data_dir: Path, *, edge_replicas: int = 1, **kwargs: object) -> Mesh:
        """A mesh on free ports, for tests, with ``edge_replicas`` Envoys."""
        ports = free_ports(2 * len(SERVICES) + 2 * edge_replicas + 2)
        return cls(
            data_dir=data_dir,
            ports={s.name: ports.pop() for s in SERVICES},
            metrics_ports={s.name: ports.pop() for s in SERVICES},
            edge_port=ports.pop(),
            admin_port=ports.pop(),
            access_log_port=ports.pop(),
            xds_port=ports.pop(),
            edge_replica_ports=[(ports.pop(), ports.pop()) for _ in range(edge_replicas - 1)],
            **kwargs,  # type: ignore[arg-type]
        )

    @property
    def envoy(self) -> EnvoyProcess | None:
        """The first Envoy replica of the edge while it runs (the one at :attr:`edge_address`)."""
        return self.envoys[0] if self.envoys else None

    @property
    def edge_address(self) -> str:
        """``host:port`` of the edge (its first replica)."""
        return f"{self.host}:{self.edge_port}"

    @property
    def edge_addresses(self) -> list[str]:
        """``host:port`` of every Envoy replica of the edge, the first one first."""
        return [f"{self.host}:{port}" for port, _ in self._edge_ports()]

    def _edge_ports(self) -> list[tuple[int, int]]:
        """The listener and admin ports of every replica, the first one first."""
        return [(self.edge_port, self.admin_port), *self.edge_replica_ports]

    def address(self, service: str) -> str:
        """``host:port`` of one service, direct (not through the edge)."""
        return f"{self.host}:{self.ports[service]}"

    @property
    def log_dir(self) -> Path:
        """Where each process writes its log.

        A service writes ``<service>.log`` itself (rotating, ``BHIV_LOG_DIR``); whatever it prints
        to stdout or stderr (a crash before its logging starts) goes to ``<service>.stderr.log``,
        emptied at each start.
        """
        return self.data_dir / "logs"

    def _check_ports(self) -> None:
        wanted = {f"BHIV_{n.upper()}_PORT": p for n, p in self.ports.items()}
        wanted |= {f"BHIV_{n.upper()}_METRICS_PORT": p for n, p in self.metrics_ports.items() if p}
        wanted |= {
            "BHIV_EDGE_PORT": self.edge_port,
            "BHIV_EDGE_ADMIN_PORT": self.admin_port,
            "BHIV_SENTINEL_XDS_PORT": self.xds_port,
        }
        wanted["BHIV_SENTINEL_ACCESS_LOG_PORT"] = self.access_log_port
        for replica, (port, admin) in enumerate(self.edge_replica_ports, start=1):
            wanted |= {f"edge replica {replica}": port, f"edge replica {replica} admin": admin}
        seen: dict[int, str] = {}
        for setting, port in wanted.items():
            if port in seen:
                raise MeshError(f"{setting} and {seen[port]} are both {port}")
            seen[port] = setting
            if bind_error(self.host, port) is not None:
                raise MeshError(f"port {port} ({setting}) on {self.host} is already in use")

    def _check_edge_trusted(self, configs: Mapping[str, RuntimeConfig]) -> None:
        """Fails when the services would not believe the client addresses this mesh's Envoy forwards.

        Every call through the edge would then be audited at the edge's own address.

        Args:
            configs: Each service's configuration, as :meth:`_load_configs` read it.

        """
        source = ipaddress.ip_address(self.edge_source_address)
        for config in configs.values():
            peers = config.edge_peers
            if not any(source in network for network in peers):
                raise MeshError(
                    f"BHIV_EDGE_PEERS ({', '.join(map(str, peers))}) leaves out {source}, where this "
                    "mesh's Envoy connects from: the services would record every client at the edge's address"
                )

    def service_env(self) -> dict[str, str]:
        """The environment every service process gets: no ``BHIV_*`` of this process but ``env``'s."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("BHIV_")}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT / "gen" / "python")])
        env.update(self.env)
        # What the mesh checked and waits on wins over the same settings given otherwise.
        env["BHIV_HOST"] = self.host
        env["BHIV_DATA_DIR"] = str(self.data_dir)
        env["BHIV_LOG_DIR"] = str(self.log_dir)
        for name, port in self.ports.items():
            env[f"BHIV_{name.upper()}_PORT"] = str(port)
        for name, port in self.metrics_ports.items():
            env[f"BHIV_{name.upper()}_METRICS_PORT"] = str(port)
        env["BHIV_SENTINEL_ACCESS_LOG_PORT"] = str(self.access_log_port)
        env["BHIV_SENTINEL_XDS_PORT"] = str(self.xds_port)
        return env

    def _load_configs(self, env: Mapping[str, str]) -> dict[str, RuntimeConfig]:
        """Each service's runtime configuration, as it will read it: a bad setting fails here."""
        try:
            return {spec.name: load_config(spec.name, env) for spec in SERVICES}
        except ConfigError as exc:
            raise MeshError(f"configuration error: {exc}") from exc

    def _log_tail(self, name: str, lines: int = 20) -> str:
        """The last lines of a service's log, then of its stderr (where a crash at start lands)."""
        parts = []
        for path in (self.log_dir / f"{name}.log", self.log_dir / f"{name}.stderr.log"):
            try:
                tail = path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            if tail:
                parts.append("\n".join([f"--- {path.name}", *tail]))
        return "\n".join(parts) or "(no log)"

    async def _wait_serving(self, name: str, address: str, deadline: float, proc: object = None) -> None:
        request = health_pb2.HealthCheckRequest(service="")
        metadata = (("x-bhiv-service", name),)
        async with grpc.aio.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if isinstance(proc, subprocess.Popen) and proc.poll() is not None:
                    raise MeshError(f"{name} exited with {proc.returncode}:\n{self._log_tail(name)}")
                with contextlib.suppress(grpc.aio.AioRpcError):
                    reply = await stub.Check(request, timeout=1.0, metadata=metadata)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                if time.monotonic() > deadline:
                    raise MeshError(f"{name} at {address} was not healthy in time:\n{self._log_tail(name)}")
                await asyncio.sleep(0.1)

    async def start(self) -> None:
        """Starts every service, then the edge, and waits until all are healthy."""
        env = self.service_env()
        self.configs = self._load_configs(env)
        self._check_ports()
        self._check_edge_trusted(self.configs)
        for replica in range(len(self._edge_ports())):
            self.edge_settings(replica)  # a bad edge setting fails before anything starts
        # Owner-only from the first byte, whatever this process's umask: the audit trail and the
        # security events hold usernames (and, now and then, a password typed as one). Whatever
        # an earlier release left readable by others is tightened first.
        try:
            private_dir(self.data_dir)
            tighten_tree(self.data_dir)
            private_dir(self.log_dir)
        except OSError as exc:
            raise MeshError(f"the data directory {self.data_dir} cannot be made private: {exc}") from exc
        # The service secret every service signs its credentials with: created here, before any
        # service starts (they would agree on one anyway), so a bad file fails before anything runs.
        try:
            for service_config in self.configs.values():
                load_service_secret(service_secret_path(service_config))
        except ConfigError as exc:
            raise MeshError(str(exc)) from exc
        for spec in SERVICES:
            self._spawn(spec.name, env)
        deadline = time.monotonic() + self.startup_timeout
        try:
            await asyncio.gather(
                *(self._wait_serving(n, self.address(n), deadline, self.procs[n]) for n in self.procs)
            )
            await asyncio.gather(
                *(self._start_edge(replica, deadline) for replica in range(len(self._edge_ports())))
            )
        except BaseException:
            await self.stop()
            raise

    async def _start_edge(self, replica: int, deadline: float) -> EnvoyProcess:
        """Starts one Envoy replica and waits until it routes a health check to every service."""
        edge = self.edge_settings(replica)
        suffix = f"-{replica}" if replica else ""
        config = write_bootstrap(
            private_dir(self.data_dir / "envoy") / f"envoy{suffix}.json", self.upstreams(), edge
        )
        envoy = EnvoyProcess(config, edge, log_path=self.log_dir / f"envoy{suffix}.log", bound_to_owner=True)
        self.envoys.append(envoy)  # stopped by stop() from here on, even if it never gets ready
        await envoy.astart()
        await asyncio.gather(*(self._wait_serving(s.name, envoy.address, deadline) for s in SERVICES))
        return envoy

    async def add_edge_replica(self, listen_port: int | None = None, admin_port: int | None = None) -> str:
        """Starts one more Envoy replica of the running mesh's edge (free ports by default).

        It serves the same generated configuration as the others, with its own ports, logs and node
        id, and subscribes to the same control plane: what it enforces it learns from there, as a
        replica that joins a deployment does.

        Args:
            listen_port: Its listener's port; a free one when ``None``.
            admin_port: Its admin port; a free one when ``None``.

        Returns:
            ``host:port`` of its listener, once it routes a health check to every service.

        Raises:
            MeshError: The mesh is not running, or a port is taken.
            EnvoyError: The replica did not start (it is stopped).

        """
        if not self.envoys:
            raise MeshError("the mesh is not running: start it before adding an edge replica")
        if listen_port is None or admin_port is None:
            free = free_ports(2, self.host)
            listen_port, admin_port = listen_port or free[0], admin_port or free[1]
        for port in (listen_port, admin_port):
            if bind_error(self.host, port) is not None:
                raise MeshError(
                    f"port {port} (edge replica {len(self.envoys)}) on {self.host} is already in use"
                )
        self.edge_replica_ports.append((listen_port, admin_port))
        replica = len(self.edge_replica_ports)
        envoy = await self._start_edge(replica, time.monotonic() + self.startup_timeout)
        return envoy.address

    def _spawn(self, name: str, env: Mapping[str, str]) -> None:
        # In its own session, a terminal's Ctrl-C reaches only the launcher, which stops the
        # services in order; bound (SIGTERM when the thread that starts it ends: this, the
        # loop's, which lives as long as the mesh), it stops with a launcher killed outright.
        with open_private(self.log_dir / f"{name}.stderr.log", "wb") as output:
            self.procs[name] = subprocess.Popen(
                bound_command([sys.executable, "-m", f"bhiv_core.services.{name}"]),
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                umask=PRIVATE_UMASK,
            )

    def kill(self, name: str) -> None:
        """SIGKILLs one service with all its worker processes (a crash, for durability tests)."""
        proc = self.procs[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the group is it and its workers
        proc.wait()

    async def restart(self, name: str) -> None:
        """Starts one service again (after :meth:`kill`) and waits until it serves.

        Serving both directly and through the edge, whose connections to it were cut.
        """
        if self.procs[name].poll() is None:
            raise MeshError(f"{name} is still running")
        self._spawn(name, self.service_env())
        deadline = time.monotonic() + self.startup_timeout
        await self._wait_serving(name, self.address(name), deadline, self.procs[name])
        await asyncio.gather(
            *(self._wait_serving(name, address, deadline) for address in self.edge_addresses)
        )

    def upstreams(self) -> list[Upstream]:
        """The edge's upstreams, from the registry."""
        return [Upstream.from_spec(s, host=self.host, port=self.ports[s.name]) for s in SERVICES]

    def edge_settings(self, replica: int = 0) -> EdgeSettings:
        """The settings of one Envoy replica of this mesh's edge.

        Its limits come from the ``BHIV_EDGE_*`` settings of ``env``; its ports, access log and
        node id are its own.

        Args:
            replica: Which replica: 0 is the first (:attr:`edge_port`), then
                :attr:`edge_replica_ports` in order.

        Raises:
            MeshError: A setting is malformed or the limits are inconsistent.

        """
        try:
            return self._edge_settings(replica)
        except (ConfigError, ValueError) as exc:
            raise MeshError(f"edge configuration error: {exc}") from exc

    def _edge_settings(self, replica: int) -> EdgeSettings:
        listen_port, admin_port = self._edge_ports()[replica]
        suffix = f"-{replica}" if replica else ""
        return EdgeSettings.from_settings(
            Settings(self.env),
            listen_host=self.host,
            listen_port=listen_port,
            admin_port=admin_port,
            node_id=f"{NODE_CLUSTER}{suffix}",
            access_log_path=str(self.log_dir / f"edge-access{suffix}.log"),
            upstream_source_address=self.edge_source_address,
            # Sentinel takes the stream from upstream_source_address, a trusted edge peer.
            access_log_service=f"{self.host}:{self.access_log_port}",
            block_xds=f"{self.host}:{self.xds_port}",
            rate_limit_tokens_per_fill=self.edge_rate_limit,
            # The edge admits what the services accept (BHIV_MAX_MESSAGE_BYTES), no more, no less.
            max_request_bytes=max(
                (c.max_message_bytes for c in self.configs.values()), default=EdgeSettings().max_request_bytes
            ),
        )

    async def stop(self) -> None:
        """Stops the edge, then the services (SIGTERM, then SIGKILL when their drain overruns).

        The services are stopped even when stopping the edge fails.
        """
        try:
            envoys, self.envoys = self.envoys, []
            await asyncio.gather(*(envoy.astop() for envoy in envoys))
        finally:
            await self._stop_services()

    async def _stop_services(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        # Each service drains for up to its BHIV_GRACE_SECONDS, then needs a moment to close.
        grace = max((c.grace_seconds for c in self.configs.values()), default=10.0)
        deadline = time.monotonic() + grace + 5
        for proc in self.procs.values():
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.procs.clear()

    async def __aenter__(self) -> Mesh:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


def _from_settings(settings: Settings, environ: Mapping[str, str]) -> Mesh:
    """The mesh ``settings`` describe; every ``BHIV_*`` of ``environ`` goes on to the services."""
    env = {k: v for k, v in environ.items() if k.startswith("BHIV_")}
    if env.get("BHIV_CONFIG_FILE"):
        # The services read the same file (the environment still wins over it, as here).
        env["BHIV_CONFIG_FILE"] = str(Path(env["BHIV_CONFIG_FILE"]).resolve())
    host = settings.raw("HOST") or "127.0.0.1"
    edge_port = settings.port("EDGE_PORT", EDGE_PORT)
    admin_port = settings.port("EDGE_ADMIN_PORT", EDGE_ADMIN_PORT)
    # Replica i (from 1) listens on BHIV_EDGE_PORT + i, its admin on BHIV_EDGE_ADMIN_PORT + i.
    replicas = settings.positive_int("EDGE_REPLICAS", 1)
    if max(edge_port, admin_port) + replicas - 1 > 65535:
        raise ConfigError(f"BHIV_EDGE_REPLICAS={replicas} puts an edge replica's port past 65535")
    spec_ports = {s.name: settings.port(f"{s.name.upper()}_PORT", s.port) for s in SERVICES}
    metrics = {s.name: settings.port(f"{s.name.upper()}_METRICS_PORT", s.metrics_port) for s in SERVICES}
    return Mesh(
        data_dir=Path(settings.raw("DATA_DIR") or ROOT / ".data").resolve(),
        host=host,
        ports=spec_ports,
        metrics_ports=metrics,
        edge_port=edge_port,
        admin_port=admin_port,
        edge_replica_ports=[(edge_port + i, admin_port + i) for i in range(1, replicas)],
        access_log_port=settings.port("SENTINEL_ACCESS_LOG_PORT", SENTINEL_ACCESS_LOG_PORT),
        xds_port=settings.port("SENTINEL_XDS_PORT", SENTINEL_XDS_PORT),
        env=env,
        edge_rate_limit=settings.positive_int("EDGE_RATE_LIMIT", 1000),
    )


@contextlib.contextmanager
def _output_may_be_gone() -> Iterator[None]:
    """Lets the launcher go on when its output is gone; what it prints from then on goes nowhere.

    After ``make run | tee run.log`` and Ctrl-C, tee dies of the same SIGINT and writing to its pipe
    fails (BrokenPipeError). The launcher must still stop every child, so a stream that cannot be
    written any more is pointed at /dev/null (later lines, and the flush at exit, then succeed).
    """
    try:
        yield
    except OSError:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except OSError:
                with contextlib.suppress(OSError, ValueError):
                    devnull = os.open(os.devnull, os.O_WRONLY)
                    os.dup2(devnull, stream.fileno())
                    os.close(devnull)


def _say(text: str, *, error: bool = False) -> None:
    """Prints a line for the user, on stderr when ``error``; a gone output is not an error."""
    with _output_may_be_gone():
        print(text, file=sys.stderr if error else sys.stdout, flush=True)


def _print_banner(mesh: Mesh, specs: tuple[ServiceSpec, ...]) -> None:
    print(f"BHIV Core is up. Edge (gRPC and gRPC-web): {mesh.edge_address}")
    print(f"  Envoy admin: 127.0.0.1:{mesh.admin_port}")
    for replica, (port, admin) in enumerate(mesh.edge_replica_ports, start=1):
        print(f"  edge replica {replica}: {mesh.host}:{port} (admin 127.0.0.1:{admin})")
    for spec in specs:
        print(f"  {spec.name:<14} {mesh.address(spec.name):<22} {spec.package}")
    print(f"  data: {mesh.data_dir}   logs: {mesh.log_dir}")
    credentials = mesh.data_dir / "admin-credentials"
    if credentials.exists():
        print(f"  admin credentials (generated on first start, mode 0600): {credentials}")
    metrics = ", ".join(f"{n}:{p}" for n, p in mesh.metrics_ports.items() if p)
    print(f"  metrics (/metrics on 127.0.0.1): {metrics}")
    print(f"Try: .tools/bin/grpcurl -plaintext {mesh.edge_address} list")
    print("All healthy. Ctrl-C stops everything.", flush=True)


async def _run(mesh: Mesh, stop: asyncio.Event) -> int:
    _say(f"starting {len(SERVICES)} services and the edge...")
    starting = asyncio.create_task(mesh.start())
    waiting = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({starting, waiting}, return_when=asyncio.FIRST_COMPLETED)
    if starting not in done:
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError, MeshError):
            await starting
        return 130
    try:
        starting.result()
    except MeshError as exc:
        _say(f"mesh failed to start: {exc}", error=True)
        return 1
    with _output_may_be_gone():
        _print_banner(mesh, SERVICES)
    await waiting
    _say("stopping...")
    await mesh.stop()
    _say("stopped.")
    return 0


async def _amain() -> int:
    try:
        settings = Settings()
        mesh = _from_settings(settings, os.environ)
    except ConfigError as exc:
        _say(f"configuration error: {exc}", error=True)
        return 2
    for setting in settings.unknown():
        _say(f"warning: unknown setting, ignored: {setting}", error=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # SIGHUP too: a closed terminal stops the mesh like Ctrl-C does.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    try:
        return await _run(mesh, stop)
    finally:
        # Whatever failed above, no child outlives the launcher (stopping twice is harmless).
        await mesh.stop()


def main() -> None:
    """Entry point of ``make run``."""
    os.umask(PRIVATE_UMASK)  # everything the launcher and its children write is owner-only
    raise SystemExit(asyncio.run(_amain()))


if __name__ == "__main__":
    main()
