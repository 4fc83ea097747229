"""The shared service runtime: one way to build, run and stop every BHIV service.

A service contributes a :class:`ServiceDefinition` (its servicers, dependency checks, start/stop
hooks); the runtime adds everything else once: the interceptor chain it is given, health driven by the named
checks, reflection of the whole API, limits (message size, concurrency, keepalive enforcement),
JSON logs, graceful shutdown on SIGTERM and, optionally, several worker processes on one port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bhiv_core.runtime import telemetry
from bhiv_core.runtime.chain import ChainedHandlers, Interceptor, Selector
from bhiv_core.runtime.config import ConfigError, RuntimeConfig, load_config
from bhiv_core.runtime.contracts import all_services
from bhiv_core.runtime.handlers import service_handler
from bhiv_core.runtime.health import HealthServicer
from bhiv_core.runtime.lifetime import die_with_parent
from bhiv_core.runtime.limits import GRPC_MAX_METADATA_BYTES
from bhiv_core.runtime.process import prepare_process
from bhiv_core.runtime.reflection import add_reflection
from bhiv_core.runtime.security_events import SecurityEventReporter
from bhiv_core.security.jwt import KeySource, RevocationSet

__all__ = [
    "Chain",
    "ChainFactory",
    "HealthCheck",
    "RunningService",
    "ServiceDefinition",
    "bind_error",
    "package_definition",
    "serve",
    "start_service",
]

log = logging.getLogger(__name__)

HealthCheck = Callable[[], Awaitable[None]]
"""A named dependency check: returns when the dependency is usable, raises otherwise."""

Hook = Callable[[], Awaitable[None]]


@dataclass
class ServiceDefinition:
    """What one service contributes to the runtime.

    Attributes:
        name: The registry name (``crm``).
        servicers: Each service descriptor with the object implementing its RPCs.
        missing: What will implement the RPCs the servicers lack (for UNIMPLEMENTED messages).
        checks: Named dependency checks that drive the health status.
        on_start: Hooks run before the server accepts calls (open stores, and the like).
        on_stop: Hooks run after the server stopped (close stores).
        on_drain: Hooks run when a shutdown begins, before in-flight calls drain: they end
            long-lived streams, which would otherwise hold the grace period until it runs out.
        key_source: Where tokens' public keys come from; identity's JWKS over gRPC when None
            (identity itself reads its own key store).
        revocations: The revoked-token set; watched from identity when None (identity feeds its
            own directly).
        reporter: Where the chain reports security events (refused tokens, denied calls), started
            and stopped by the service itself; when None the chain builds and runs a
            :class:`~bhiv_core.runtime.security_events.SentinelReporter` with service credentials
            (identity lends its own reporter, sentinel one that records in process).

    """

    name: str
    servicers: Sequence[tuple[ServiceDescriptor, object]]
    missing: str = "planned for a later issue"
    checks: Mapping[str, HealthCheck] = field(default_factory=dict)
    on_start: Sequence[Hook] = ()
    on_stop: Sequence[Hook] = ()
    on_drain: Sequence[Hook] = ()
    key_source: KeySource | None = None
    revocations: RevocationSet | None = None
    reporter: SecurityEventReporter | None = None


def package_definition(name: str, servicer: object, missing: str) -> ServiceDefinition:
    """The definition of a service whose one servicer implements every service of its package.

    Args:
        name: The registry name; its proto package comes from the registry.
        servicer: The object with an ``async`` method per implemented RPC.
        missing: What will implement the rest (for UNIMPLEMENTED messages).
    """
    from bhiv_core.registry import by_name
    from bhiv_core.runtime.contracts import services_of_package

    services = services_of_package(by_name(name).package)
    return ServiceDefinition(name=name, servicers=[(s, servicer) for s in services], missing=missing)


@dataclass
class Chain:
    """A composed chain and what its concerns need started and stopped with the server.

    ``reporter`` is where the chain's concerns report security events: a concern added later
    (request-field screening) reports through the same one.
    """

    interceptors: Sequence[Interceptor | Selector]
    on_start: Sequence[Hook] = ()
    on_stop: Sequence[Hook] = ()
    checks: Mapping[str, HealthCheck] = field(default_factory=dict)
    reporter: SecurityEventReporter | None = None


ChainFactory = Callable[[RuntimeConfig, ServiceDefinition], "Chain | Sequence[Interceptor | Selector]"]


class _Registrar:
    """Takes the handlers that generated ``add_*_to_server`` functions register, for the chain."""

    def __init__(self, chained: ChainedHandlers):
        self._chained = chained

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler[Any, Any]]) -> None:
        self._chained.add(handlers)

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        # The same handlers also arrive through add_generic_rpc_handlers; registering them with
        # grpc core as well would bypass the chain.
        pass


def _server_options(config: RuntimeConfig) -> list[tuple[str, int]]:
    return [
        # Several workers share a port on purpose; otherwise a taken port must fail loudly.
        ("grpc.so_reuseport", 1 if config.workers > 1 else 0),
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        # Whatever the edge forwards, as gRPC sizes it (runtime.limits), never refused at random.
        ("grpc.max_metadata_size", GRPC_MAX_METADATA_BYTES),
        # Keepalive enforcement: clients may ping at most every 10 s, also between calls.
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.keepalive_time_ms", 300_000),
        ("grpc.keepalive_timeout_ms", 20_000),
    ]


class HealthMonitor:
    """Runs the named checks and sets the health status of the server and of each service."""

    def __init__(
        self,
        health: HealthServicer,
        service_names: Sequence[str],
        checks: Mapping[str, HealthCheck],
        interval: float,
    ):
        self._health = health
        self._names = ("", *service_names)
        self._checks = dict(checks)
        self._interval = interval
        self.failures: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> bool:
        """Runs every check once; returns True when all pass."""
        failures: dict[str, str] = {}
        for name, check in self._checks.items():
            try:
                await asyncio.wait_for(check(), timeout=self._interval)
            except Exception as exc:
                failures[name] = f"{type(exc).__name__}: {exc}"
        if failures != self.failures:
            if failures:
                log.warning("health checks failing", extra={"failures": failures})
            elif self.failures:
                log.info("health checks passing again")
        self.failures = failures
        status = (
            health_pb2.HealthCheckResponse.NOT_SERVING if failures else health_pb2.HealthCheckResponse.SERVING
        )
        for name in self._names:
            await self._health.set(name, status)
        return not failures

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.run_once()

    def start(self) -> None:
        """Starts the periodic checks."""
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Stops the periodic checks."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


@dataclass
class RunningService:
    """A started service: its server, health and bound port."""

    config: RuntimeConfig
    definition: ServiceDefinition
    server: grpc.aio.Server
    health: HealthServicer
    monitor: HealthMonitor
    port: int

    @property
    def address(self) -> str:
        """``host:port`` where the service listens."""
        return f"{self.config.host}:{self.port}"

    chain_stop: Sequence[Hook] = ()

    async def stop(self, grace: float | None = None) -> None:
        """Stops gracefully: health goes NOT_SERVING, streams end, in-flight calls drain, hooks run."""
        await self.monitor.stop()
        await self.health.enter_graceful_shutdown()
        for hook in self.definition.on_drain:
            await hook()
        await self.server.stop(self.config.grace_seconds if grace is None else grace)
        # The chain's hooks (audit flush) run before the service's own (close stores).
        for hook in (*self.chain_stop, *self.definition.on_stop):
            await hook()
        telemetry.stop_metrics_servers()


async def start_service(
    config: RuntimeConfig,
    definition: ServiceDefinition,
    chain: ChainFactory,
) -> RunningService:
    """Builds and starts the server of one service; raises ConfigError when its port is taken.

    Args:
        config: The service's runtime configuration.
        definition: What the service contributes.
        chain: Builds the interceptor chain (:func:`bhiv_core.standard_chain.standard_chain` for a
            service); required, so no service starts without auth by omission.

    """
    for hook in definition.on_start:
        await hook()
    built = chain(config, definition)
    composed = built if isinstance(built, Chain) else Chain(built)
    for hook in composed.on_start:
        await hook()
    server = grpc.aio.server(
        options=_server_options(config), maximum_concurrent_rpcs=config.max_concurrent_rpcs
    )
    # With a chain, every handler (health and reflection too) is registered through ChainedHandlers,
    # which composes the chain around it once; without one, handlers go to the server as they are.
    chained = ChainedHandlers(composed.interceptors) if composed.interceptors else None
    registrar: _Registrar | grpc.aio.Server = _Registrar(chained) if chained is not None else server
    for descriptor, servicer in definition.servicers:
        registrar.add_generic_rpc_handlers((service_handler(descriptor, servicer, definition.missing),))
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, registrar)
    # Reflection describes the whole API of the mesh, so grpcurl through the edge sees every service.
    add_reflection(registrar, [*(s.full_name for s in all_services()), "grpc.health.v1.Health"])
    if chained is not None:
        server.add_generic_rpc_handlers((chained,))
    try:
        port = server.add_insecure_port(f"{config.host}:{config.port}")
    except RuntimeError as exc:
        raise ConfigError(
            f"cannot listen on {config.host}:{config.port} "
            f"(BHIV_{config.service.upper()}_PORT): the port is taken or the address is invalid"
        ) from exc
    monitor = HealthMonitor(
        health,
        [d.full_name for d, _ in definition.servicers],
        {**definition.checks, **composed.checks},
        config.health_interval_seconds,
    )
    await monitor.run_once()
    await server.start()
    try:
        telemetry.start_metrics_server(config.host, config.metrics_port)
    except OSError as exc:
        await server.stop(0)
        raise ConfigError(
            f"cannot serve metrics on {config.host}:{config.metrics_port} "
            f"(BHIV_{config.service.upper()}_METRICS_PORT): {exc.strerror}"
        ) from exc
    monitor.start()
    return RunningService(config, definition, server, health, monitor, port, composed.on_stop)


DefinitionFactory = Callable[[RuntimeConfig], ServiceDefinition]


async def _run(config: RuntimeConfig, make_definition: DefinitionFactory, chain: ChainFactory) -> None:
    telemetry.configure_tracing(config.service, config.settings)
    running = await start_service(config, make_definition(config), chain)
    log.info("serving", extra={"address": running.address, "pid": os.getpid()})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down", extra={"grace_seconds": config.grace_seconds})
    await running.stop()
    await asyncio.to_thread(telemetry.shutdown_tracing)
    log.info("stopped")


def _worker(
    service: str, make_definition: DefinitionFactory, chain: ChainFactory, number: int, parent_pid: int
) -> None:
    # A worker stops (SIGTERM) when its parent dies, even by SIGKILL; the parent forwards the rest.
    die_with_parent(parent_pid)
    config = load_config(service)
    prepare_process(config, worker=number)
    asyncio.run(_run(config, make_definition, chain))


def bind_error(host: str, port: int) -> OSError | None:
    """Why a server could not listen on ``host:port`` right now, or None when it could.

    The probe binds as the servers do (grpc, Envoy and the metrics server all set SO_REUSEADDR), so
    connections left in TIME_WAIT by a server that just stopped do not count, while a listener does.
    It does not set SO_REUSEPORT: a listener that allows sharing its port (grpc's default) would let
    such a probe bind beside it.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc
    return None


def _check_port_free(config: RuntimeConfig) -> None:
    """Probes the port before the workers share it, so a port taken by anything else fails loudly."""
    error = bind_error(config.host, config.port)
    if error is not None:
        raise ConfigError(
            f"cannot listen on {config.address} (BHIV_{config.service.upper()}_PORT): {error.strerror}"
        ) from error


def serve(service: str, make_definition: DefinitionFactory, chain: ChainFactory) -> None:
    """Runs ``service`` until SIGTERM/SIGINT, in ``workers`` processes when configured.

    ``make_definition`` and ``chain`` must be module-level functions: workers are spawned.
    """
    try:
        config = load_config(service)
        prepare_process(config)
        for setting in config.settings.unknown():
            log.warning("unknown setting, ignored: %s", setting)
        if config.workers == 1:
            asyncio.run(_run(config, make_definition, chain))
            return
        if config.port == 0:
            raise ConfigError(f"BHIV_{service.upper()}_WORKERS > 1 needs a fixed BHIV_{service.upper()}_PORT")
        _check_port_free(config)
        # Workers record metrics into shared files; this process serves their sum.
        telemetry.prepare_multiprocess_metrics(config.data_dir / "metrics" / service)
        try:
            telemetry.start_multiprocess_metrics_server(config.host, config.metrics_port)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {config.host}:{config.metrics_port} "
                f"(BHIV_{service.upper()}_METRICS_PORT): {exc.strerror}"
            ) from exc
    except ConfigError as exc:
        print(f"{service}: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    ctx = multiprocessing.get_context("spawn")
    # Started from this (main) thread, which lives as long as the process: see runtime.lifetime.
    parent_pid = os.getpid()
    workers = [
        ctx.Process(target=_worker, args=(service, make_definition, chain, number, parent_pid))
        for number in range(1, config.workers + 1)
    ]
    for proc in workers:
        proc.start()
    log.info("started workers", extra={"workers": config.workers, "address": config.address})

    def forward(signum: int, _frame: FrameType | None) -> None:
        for proc in workers:
            if proc.pid is not None and proc.is_alive():
                os.kill(proc.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for proc in workers:
        proc.join()
        if proc.pid is not None:
            telemetry.mark_worker_dead(proc.pid)
    telemetry.stop_metrics_servers()
