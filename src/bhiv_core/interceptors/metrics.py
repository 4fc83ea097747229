"""Prometheus metrics of the gRPC server, and the security counters the other concerns share.

:class:`MetricsInterceptor` records, for every call — unary or streaming, allowed or denied — the
go-grpc-prometheus families ``grpc_server_started_total``, ``grpc_server_handled_total`` (with the
final status name as ``grpc_code``) and the ``grpc_server_handling_seconds`` histogram. It sits
outside the error mapper, so it reads ``call.code`` once the inner chain has finished, also when a
denial propagates as :class:`grpc.aio.AbortError`.

The labelled children are resolved once per method and status and kept in dictionaries: on the hot
path a call costs two dictionary lookups, two counter increments and one histogram observation.
Methods outside the contracts (a scanner's guesses) share one ``unknown`` series, so callers cannot
grow the label set or the caches.

:data:`REGISTRY` is this process's registry; :data:`auth_failures` and :data:`audit_records` live
in it for the auth and audit concerns. Under several worker processes the values go to
``PROMETHEUS_MULTIPROC_DIR`` instead and the parent serves their sum (see
:mod:`bhiv_core.runtime.telemetry`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.descriptor import MethodDescriptor
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)

from bhiv_core.runtime.chain import CallInfo, Context, Interceptor, StreamNext, UnaryNext, is_infrastructure

__all__ = [
    "HANDLING_BUCKETS",
    "REGISTRY",
    "SERVER_METRICS",
    "GrpcServerMetrics",
    "MetricsInterceptor",
    "audit_records",
    "auth_failures",
    "failure_code",
    "grpc_type",
]

HANDLING_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Upper bounds of ``grpc_server_handling_seconds``: 0.5 ms (a cached read) to 10 s (an LLM call)."""

REGISTRY = CollectorRegistry(auto_describe=True)
"""The registry ``/metrics`` serves in a single-process service."""

# The process, platform and GC collectors describe this process only; they are registered here so
# a single-process service exports them, and are meaningless (so absent) from the multiprocess sum.
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    REGISTRY.register(_collector)


class GrpcServerMetrics:
    """The server metric families, created in one registry.

    Tests create their own in a fresh registry; services use :data:`SERVER_METRICS`.

    Args:
        registry: Where the families are registered.

    Attributes:
        started: ``grpc_server_started_total{grpc_service, grpc_method, grpc_type}``.
        handled: ``grpc_server_handled_total{grpc_service, grpc_method, grpc_type, grpc_code}``.
        handling_seconds: ``grpc_server_handling_seconds{grpc_service, grpc_method, grpc_type}``.
        service_info: ``bhiv_service_info{service}``, 1 while a process of the service runs.

    """

    def __init__(self, registry: CollectorRegistry):
        labels = ("grpc_service", "grpc_method", "grpc_type")
        self.started = Counter(
            "grpc_server_started",
            "RPCs started on the server.",
            labels,
            registry=registry,
        )
        self.handled = Counter(
            "grpc_server_handled",
            "RPCs completed on the server, by final status code (denials included).",
            (*labels, "grpc_code"),
            registry=registry,
        )
        self.handling_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its final status, in seconds (whole stream for streams).",
            labels,
            buckets=HANDLING_BUCKETS,
            registry=registry,
        )
        # livemax: the parent drops a dead worker's value (mark_worker_dead) and reports 1, not N.
        self.service_info = Gauge(
            "bhiv_service_info",
            "1 for each BHIV service this process (or process group) serves.",
            ("service",),
            registry=registry,
            multiprocess_mode="livemax",
        )


SERVER_METRICS = GrpcServerMetrics(REGISTRY)
"""The server families every service records into."""

auth_failures = Counter(
    "bhiv_auth_failures",
    "Calls refused by authentication, by reason (MISSING_TOKEN, TOKEN_EXPIRED, BAD_SIGNATURE...).",
    ("service", "reason"),
    registry=REGISTRY,
)
"""``bhiv_auth_failures_total{service, reason}``: use ``auth_failures.labels(service, reason).inc()``."""

audit_records = Counter(
    "bhiv_audit_records",
    "Audit records written, by durability (durable: stored before the response; buffered: after).",
    ("service", "durability"),
    registry=REGISTRY,
)
"""``bhiv_audit_records_total{service, durability}``; cache ``.labels(...)`` on a per-call path."""

_UNKNOWN = "unknown"

_TYPES = {
    (False, False): "unary",
    (False, True): "server_stream",
    (True, False): "client_stream",
    (True, True): "bidi_stream",
}


def grpc_type(descriptor: MethodDescriptor | None, streaming: bool) -> str:
    """Returns the ``grpc_type`` label: unary, server_stream, client_stream or bidi_stream.

    Args:
        descriptor: The method's descriptor, when the contracts know it.
        streaming: Whether the chain handles the response as a stream (used without a descriptor).

    """
    if descriptor is not None:
        return _TYPES[bool(descriptor.client_streaming), bool(descriptor.server_streaming)]
    return "server_stream" if streaming else "unary"


def failure_code(call: CallInfo, exc: BaseException) -> grpc.StatusCode:
    """Returns the final status of a call whose inner chain raised ``exc``.

    The error mapper records the code before it aborts, so a non-OK ``call.code`` is the answer;
    otherwise a cancellation (or a stream the client stopped reading) is CANCELLED, and anything
    else reaches gRPC as UNKNOWN.
    """
    if call.code is not grpc.StatusCode.OK:
        return call.code
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


class _MethodMetrics:
    """The resolved children of one method (or of every unknown method of one type)."""

    __slots__ = ("_handled", "_handled_family", "_labels", "handling", "started")

    def __init__(self, metrics: GrpcServerMetrics, labels: tuple[str, str, str]):
        self._labels = labels
        self._handled_family = metrics.handled
        self._handled: dict[grpc.StatusCode, Counter] = {}
        self.started = metrics.started.labels(*labels)
        self.handling = metrics.handling_seconds.labels(*labels)

    def finish(self, code: grpc.StatusCode, start: float) -> None:
        """Records the outcome of one call that started at ``start`` (``perf_counter``)."""
        self.handling.observe(time.perf_counter() - start)
        handled = self._handled.get(code)
        if handled is None:
            handled = self._handled[code] = self._handled_family.labels(*self._labels, code.name)
        handled.inc()


class MetricsInterceptor(Interceptor):
    """Records the started, handled and handling-time metrics of every call.

    Args:
        service: The BHIV service name, exported as ``bhiv_service_info{service}``.
        metrics: The families to record into (default: :data:`SERVER_METRICS`).

    """

    def __init__(self, service: str, metrics: GrpcServerMetrics | None = None):
        self._metrics = metrics if metrics is not None else SERVER_METRICS
        self._metrics.service_info.labels(service).set(1)
        self._methods: dict[str, _MethodMetrics] = {}
        self._unknown: dict[str, _MethodMetrics] = {}

    def _resolve(self, call: CallInfo, streaming: bool) -> _MethodMetrics:
        kind = grpc_type(call.descriptor, streaming)
        if call.descriptor is None and not is_infrastructure(call.method):
            # Not cached by name: callers choose unknown names, and series and cache must stay bounded.
            entry = self._unknown.get(kind)
            if entry is None:
                entry = self._unknown[kind] = _MethodMetrics(self._metrics, (_UNKNOWN, _UNKNOWN, kind))
            return entry
        service, _, method = call.method.lstrip("/").rpartition("/")
        entry = self._methods[call.method] = _MethodMetrics(self._metrics, (service, method, kind))
        return entry

    async def intercept_unary(
        self, call: CallInfo, request: Any, context: Context, proceed: UnaryNext
    ) -> Any:
        """Counts the call, runs the chain, and records its final code and duration."""
        entry = self._methods.get(call.method) or self._resolve(call, False)
        entry.started.inc()
        try:
            response = await proceed(call, request, context)
        except BaseException as exc:
            entry.finish(failure_code(call, exc), call.start)
            raise
        entry.finish(call.code, call.start)
        return response

    async def intercept_stream(
        self, call: CallInfo, request: Any, context: Context, proceed: StreamNext
    ) -> AsyncIterator[Any]:
        """Counts the call, streams the chain, and records its final code and whole duration."""
        entry = self._methods.get(call.method) or self._resolve(call, True)
        entry.started.inc()
        try:
            async for item in proceed(call, request, context):
                yield item
        except BaseException as exc:
            entry.finish(failure_code(call, exc), call.start)
            raise
        entry.finish(call.code, call.start)
