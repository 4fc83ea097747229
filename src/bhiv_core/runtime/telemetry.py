"""Telemetry setup of a service process: the ``/metrics`` endpoint and the OpenTelemetry tracer provider.

Metrics: a single-process service serves :data:`REGISTRY` (where the concerns register theirs) with
:func:`start_metrics_server`. A service run as several worker processes uses prometheus_client's
multiprocess mode instead: the parent calls :func:`prepare_multiprocess_metrics` before it spawns the
workers (the variable must be in their environment before they import prometheus_client), serves the
sum of every worker's values with :func:`start_multiprocess_metrics_server`, and calls
:func:`mark_worker_dead` when a worker exits. The workers then record into files and serve nothing.

Tracing: :func:`configure_tracing` builds the SDK ``TracerProvider`` (``bhiv-<service>`` resource,
parent-based ratio sampling from ``BHIV_TRACE_SAMPLE_RATIO``, OTLP/gRPC export to
``BHIV_OTLP_ENDPOINT`` when set) and :func:`shutdown_tracing` flushes it.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
from pathlib import Path
from urllib.parse import urlsplit
from wsgiref.simple_server import WSGIServer

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    multiprocess,
    start_http_server,
)

from bhiv_core.runtime.config import Settings
from bhiv_core.runtime.files import private_dir

__all__ = [
    "MULTIPROC_ENV",
    "REGISTRY",
    "configure_tracing",
    "mark_worker_dead",
    "multiprocess_metrics_enabled",
    "otlp_target",
    "prepare_multiprocess_metrics",
    "sample_ratio",
    "shutdown_tracing",
    "spans_exported",
    "start_metrics_server",
    "start_multiprocess_metrics_server",
    "stop_metrics_servers",
]

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""The variable that switches prometheus_client to multiprocess mode when it is imported."""

REGISTRY = CollectorRegistry(auto_describe=True)
"""The registry ``/metrics`` serves in a single-process service."""

# The process, platform and GC collectors describe this process only; they are registered here so
# a single-process service exports them, and are meaningless (so absent) from the multiprocess sum.
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    REGISTRY.register(_collector)

_servers: list[WSGIServer] = []
_servers_lock = threading.Lock()
_provider: TracerProvider | None = None
_exporting = False


def multiprocess_metrics_enabled() -> bool:
    """True when this process records into ``PROMETHEUS_MULTIPROC_DIR`` (a worker, or its parent)."""
    return bool(os.environ.get(MULTIPROC_ENV))


def _serve(host: str, port: int, registry: CollectorRegistry) -> int:
    server, _thread = start_http_server(port, addr=host, registry=registry)
    with _servers_lock:
        _servers.append(server)
    bound = int(server.server_port)
    log.info("serving metrics", extra={"metrics_address": f"{host}:{bound}"})
    return bound


def start_metrics_server(
    host: str = "127.0.0.1", port: int = 0, registry: CollectorRegistry | None = None
) -> int:
    """Serves ``/metrics`` of this process on ``host:port`` in a daemon thread.

    Args:
        host: The address to bind; keep loopback unless a scraper must reach it from elsewhere.
        port: The port; 0 disables the endpoint.
        registry: What to serve (default: :data:`REGISTRY`).

    Returns:
        The bound port, or 0 when disabled — also in a multiprocess worker, whose parent serves
        the sum of all workers.

    Raises:
        OSError: The address cannot be bound (the port is taken).

    """
    if port == 0:
        return 0
    if multiprocess_metrics_enabled():
        log.info("metrics are served by the parent process", extra={"pid": os.getpid()})
        return 0
    return _serve(host, port, REGISTRY if registry is None else registry)


def stop_metrics_servers() -> None:
    """Stops every endpoint this process started."""
    with _servers_lock:
        servers, _servers[:] = list(_servers), []
    for server in servers:
        server.shutdown()
        server.server_close()


def prepare_multiprocess_metrics(directory: Path) -> None:
    """Prepares multiprocess mode: an empty ``directory``, named by ``PROMETHEUS_MULTIPROC_DIR``.

    The parent calls it before spawning workers: a spawned worker inherits the variable and so
    imports prometheus_client in multiprocess mode. Files of an earlier run are removed, as
    prometheus_client requires, or their counts would be added to this run's.

    Args:
        directory: A directory for this service alone (created when missing).

    """
    private_dir(directory)
    for stale in directory.glob("*.db"):
        stale.unlink()
    os.environ[MULTIPROC_ENV] = str(directory)


def start_multiprocess_metrics_server(host: str = "127.0.0.1", port: int = 0) -> int:
    """Serves, from the parent, the sum of every worker's metrics on ``host:port``.

    Call :func:`prepare_multiprocess_metrics` first.

    Args:
        host: The address to bind.
        port: The port; 0 disables the endpoint.

    Returns:
        The bound port, or 0 when disabled.

    Raises:
        ValueError: Multiprocess mode is not prepared.
        OSError: The address cannot be bound.

    """
    if port == 0:
        return 0
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        raise ValueError(f"{MULTIPROC_ENV} is not set: call prepare_multiprocess_metrics first")
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return _serve(host, port, registry)


def mark_worker_dead(pid: int) -> None:
    """Drops the live gauges (``bhiv_service_info``) of a worker that exited; counters stay summed."""
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def sample_ratio(settings: Settings) -> float:
    """Returns ``BHIV_TRACE_SAMPLE_RATIO``: the share of new traces recorded, 0 to 1.

    The default is 1 when spans are exported (``BHIV_OTLP_ENDPOINT`` set) and 0 otherwise: spans
    that go nowhere are not worth recording (~15 µs each), while every call still gets a trace id
    for its logs and audit record, and callers' sampled traces are still honoured (parent-based).
    """

    def parse(raw: str) -> float:
        value = float(raw)
        if not 0.0 <= value <= 1.0:
            raise ValueError(raw)
        return value

    default = 1.0 if settings.raw("OTLP_ENDPOINT") else 0.0
    return settings.get("TRACE_SAMPLE_RATIO", default, parse, "a number from 0 to 1")


def otlp_target(endpoint: str) -> tuple[str, bool]:
    """Returns the ``host:port`` of an OTLP endpoint and whether to connect without TLS.

    ``http://`` means plaintext and ``https://`` TLS; without a scheme, loopback hosts are reached
    in plaintext and anything else with TLS.

    Args:
        endpoint: ``BHIV_OTLP_ENDPOINT``, like ``127.0.0.1:4317`` or ``http://collector:4317``.

    """
    if "://" in endpoint:
        parts = urlsplit(endpoint)
        return parts.netloc, parts.scheme == "http"
    host = urlsplit(f"//{endpoint}").hostname or ""
    if host == "localhost":
        return endpoint, True
    try:
        return endpoint, ipaddress.ip_address(host).is_loopback
    except ValueError:
        return endpoint, False


def configure_tracing(service: str, settings: Settings, *, set_global: bool = True) -> TracerProvider:
    """Builds the tracer provider of ``service`` and, by default, makes it the global one.

    Args:
        service: The registry name; the resource's ``service.name`` is ``bhiv-<service>``.
        settings: Read for ``BHIV_TRACE_SAMPLE_RATIO`` and ``BHIV_OTLP_ENDPOINT``.
        set_global: False leaves the global provider alone (tests pass the provider to the
            interceptors instead; OpenTelemetry allows setting the global one once per process).

    Returns:
        The provider; :func:`shutdown_tracing` flushes and closes the last one configured.

    Raises:
        ConfigError: A setting is malformed.

    """
    global _provider, _exporting
    resource = Resource.create({"service.name": f"bhiv-{service}", "service.namespace": "bhiv"})
    provider = TracerProvider(
        resource=resource, sampler=ParentBased(TraceIdRatioBased(sample_ratio(settings)))
    )
    endpoint = settings.raw("OTLP_ENDPOINT")
    if endpoint is not None:
        # Imported only when used: the exporter pulls in its own gRPC channel machinery.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        target, insecure = otlp_target(endpoint)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=target, insecure=insecure)))
        log.info("exporting traces", extra={"otlp_endpoint": target, "otlp_insecure": insecure})
    if set_global:
        trace.set_tracer_provider(provider)
    _provider = provider
    _exporting = endpoint is not None
    return provider


def spans_exported() -> bool:
    """True when the last :func:`configure_tracing` set up an exporter, so recorded spans go somewhere."""
    return _exporting


def shutdown_tracing(provider: TracerProvider | None = None) -> None:
    """Exports the spans still buffered and closes the provider (default: the last configured).

    It blocks while the exporter sends; from a running event loop, call it through
    ``asyncio.to_thread``.
    """
    global _provider, _exporting
    target = provider if provider is not None else _provider
    if target is None:
        return
    target.force_flush()
    target.shutdown()
    if target is _provider:
        _provider, _exporting = None, False
