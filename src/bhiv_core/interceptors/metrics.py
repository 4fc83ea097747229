"""Prometheus metrics of the gRPC server, and the security counters the other concerns share.

:class:`MetricsInterceptor` records, for every call — unary or streaming, allowed or denied — the
go-grpc-prometheus families ``grpc_server_started_total``, ``grpc_server_handled_total`` (with the
final status name as ``grpc_code``) and the ``grpc_server_handling_seconds`` histogram. It sits
outside the error mapper, so it reads ``call.code`` once the inner chain has finished, also when a
denial propagates as :class:`grpc.aio.AbortError`.

In a single-process service a call costs a few integer additions: each method's numbers are plain
attributes of a :class:`CallSeries`, changed only on the event loop's thread, and
:class:`GrpcServerMetrics` registers a collector that turns them into the three families when
``/metrics`` is scraped — exact, never stale, and without prometheus_client's lock and call layers
on every call (they cost more than the rest of the concern). Under several worker processes the
values must reach ``PROMETHEUS_MULTIPROC_DIR`` on every call, so each series then records into
prometheus_client's own (file-backed) children, and the parent serves the sum (see
:mod:`bhiv_core.runtime.telemetry`). Either way the exposition is the same, except that the
collected families carry no ``_created`` samples.

Series are resolved once per method and kept in a dictionary. Methods outside the contracts (a
scanner's guesses) share one ``unknown`` series, so callers cannot grow the label set or the cache.

:data:`REGISTRY` is this process's registry (:mod:`bhiv_core.runtime.telemetry` keeps and serves it);
:data:`auth_failures`, :data:`audit_records` and :data:`screening_outcomes` live in it for the auth,
audit and screening concerns.
"""

from __future__ import annotations

import os
import time
from bisect import bisect_left
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
from google.protobuf.descriptor import MethodDescriptor
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from bhiv_core.runtime.chain import (
    CallInfo,
    Context,
    Interceptor,
    StreamNext,
    UnaryNext,
    failure_code,
    is_infrastructure,
)
from bhiv_core.runtime.telemetry import MULTIPROC_ENV, REGISTRY

__all__ = [
    "HANDLING_BUCKETS",
    "MULTIPROC_ENV",
    "REGISTRY",
    "SERVER_METRICS",
    "CallSeries",
    "GrpcServerMetrics",
    "MetricsInterceptor",
    "audit_records",
    "auth_failures",
    "grpc_type",
    "screening_outcomes",
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


_LABELS = ("grpc_service", "grpc_method", "grpc_type")
_STARTED = ("grpc_server_started", "RPCs started on the server.")
_HANDLED = ("grpc_server_handled", "RPCs completed on the server, by final status code (denials included).")
_HANDLING = (
    "grpc_server_handling_seconds",
    "Time from the start of an RPC to its final status, in seconds (whole stream for streams).",
)
_OK = grpc.StatusCode.OK
# The `le` labels exactly as prometheus_client writes them for its own histograms.
_LE = (*(floatToGoString(bound) for bound in HANDLING_BUCKETS), "+Inf")  # type: ignore[no-untyped-call]


class CallSeries:
    """The calls of one method (or of every unknown method of one type), as plain numbers.

    Only the event loop's thread changes them; a scrape reads them from the endpoint's thread, and
    may see a call started but not yet handled, which is what it is.

    Attributes:
        labels: ``(grpc_service, grpc_method, grpc_type)``.
        started: Calls started.
        ok: Calls finished with OK.
        failed: Calls finished with another status, by status. (Hashing an Enum member runs
            Python code, so the common OK is a plain attribute; :meth:`handled` has them all.)
        buckets: Finished calls by the first :data:`HANDLING_BUCKETS` bound their duration does not
            exceed; the last slot counts those above every bound (not cumulative).
        seconds: The sum of their durations.

    """

    __slots__ = ("buckets", "failed", "labels", "ok", "seconds", "started")

    def __init__(self, labels: tuple[str, str, str]):
        self.labels = labels
        self.started = 0
        self.ok = 0
        self.failed: dict[grpc.StatusCode, int] = {}
        self.buckets = [0] * (len(HANDLING_BUCKETS) + 1)
        self.seconds = 0.0

    def start(self) -> None:
        """Counts a started call."""
        self.started += 1

    def finish(self, code: grpc.StatusCode, start: float) -> None:
        """Records the outcome of one call that started at ``start`` (``perf_counter``)."""
        elapsed = time.perf_counter() - start
        self.seconds += elapsed
        self.buckets[bisect_left(HANDLING_BUCKETS, elapsed)] += 1
        if code is _OK:
            self.ok += 1
        else:
            failed = self.failed
            failed[code] = failed.get(code, 0) + 1

    def handled(self) -> dict[grpc.StatusCode, int]:
        """Finished calls by final status (a copy)."""
        counts = dict(self.failed)
        if self.ok:
            counts[_OK] = self.ok
        return counts


class _CallSeriesCollector(Collector):
    """Exposes every :class:`CallSeries` of a registry as the three server families."""

    def __init__(self) -> None:
        self.series: dict[tuple[str, str, str], CallSeries] = {}

    def describe(self) -> Iterator[Metric]:
        """The families, without samples (for the registry's duplicate-name check)."""
        yield CounterMetricFamily(*_STARTED, labels=_LABELS)
        yield CounterMetricFamily(*_HANDLED, labels=(*_LABELS, "grpc_code"))
        yield HistogramMetricFamily(*_HANDLING, labels=_LABELS)

    def collect(self) -> Iterator[Metric]:
        """Reads every series once (copies, since the event loop keeps counting meanwhile)."""
        started = CounterMetricFamily(*_STARTED, labels=_LABELS)
        handled = CounterMetricFamily(*_HANDLED, labels=(*_LABELS, "grpc_code"))
        handling = HistogramMetricFamily(*_HANDLING, labels=_LABELS)
        for series in list(self.series.values()):
            labels = series.labels
            started.add_metric(labels, series.started)
            for code, count in series.handled().items():
                handled.add_metric((*labels, code.name), count)
            cumulative, total = [], 0
            for le, count in zip(_LE, list(series.buckets), strict=True):
                total += count
                cumulative.append((le, float(total)))
            handling.add_metric(labels, cumulative, series.seconds)
        yield started
        yield handled
        yield handling


class _SharedCallSeries:
    """A :class:`CallSeries` that records into prometheus_client's children (multiprocess mode)."""

    __slots__ = ("_handled", "_handled_family", "_labels", "_started", "handling")

    def __init__(self, metrics: GrpcServerMetrics, labels: tuple[str, str, str]):
        assert metrics.shared is not None
        started, handled, handling = metrics.shared
        self._labels = labels
        self._handled_family = handled
        self._handled: dict[grpc.StatusCode, Counter] = {}
        self._started = started.labels(*labels)
        self.handling = handling.labels(*labels)

    def start(self) -> None:
        self._started.inc()

    def finish(self, code: grpc.StatusCode, start: float) -> None:
        self.handling.observe(time.perf_counter() - start)
        handled = self._handled.get(code)
        if handled is None:
            handled = self._handled[code] = self._handled_family.labels(*self._labels, code.name)
        handled.inc()


class GrpcServerMetrics:
    """The server metric families of one registry.

    Tests create their own in a fresh registry; services use :data:`SERVER_METRICS`.

    Args:
        registry: Where the families are registered.
        multiprocess: Record into prometheus_client's file-backed children, for a parent to sum
            (default: when ``PROMETHEUS_MULTIPROC_DIR`` is set, as prometheus_client decides).

    Attributes:
        service_info: ``bhiv_service_info{service}``, 1 while a process of the service runs.
        shared: The started, handled and handling-seconds families in multiprocess mode, else None.

    """

    def __init__(self, registry: CollectorRegistry, *, multiprocess: bool | None = None):
        if multiprocess is None:
            multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        self._collector: _CallSeriesCollector | None = None
        self.shared: tuple[Counter, Counter, Histogram] | None = None
        if multiprocess:
            self.shared = (
                Counter(*_STARTED, _LABELS, registry=registry),
                Counter(*_HANDLED, (*_LABELS, "grpc_code"), registry=registry),
                Histogram(*_HANDLING, _LABELS, buckets=HANDLING_BUCKETS, registry=registry),
            )
        else:
            self._collector = _CallSeriesCollector()
            registry.register(self._collector)
        # livemax: the parent drops a dead worker's value (mark_worker_dead) and reports 1, not N.
        self.service_info = Gauge(
            "bhiv_service_info",
            "1 for each BHIV service this process (or process group) serves.",
            ("service",),
            registry=registry,
            multiprocess_mode="livemax",
        )

    def series(self, labels: tuple[str, str, str]) -> CallSeries | _SharedCallSeries:
        """The series of ``labels``, created on first use (one per label set)."""
        if self._collector is None:
            return _SharedCallSeries(self, labels)
        found = self._collector.series.get(labels)
        if found is None:
            found = self._collector.series[labels] = CallSeries(labels)
        return found


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

screening_outcomes = Counter(
    "bhiv_screening_requests",
    "Requests whose text screening did not end clean inline: hit (a rule matched), deferred (to the"
    " background worker), dropped (the background queue was full), failed (screening raised).",
    ("service", "outcome"),
    registry=REGISTRY,
)
"""``bhiv_screening_requests_total{service, outcome}``; a clean inline screening is not counted."""

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


class MetricsInterceptor(Interceptor):
    """Records the started, handled and handling-time metrics of every call.

    Args:
        service: The BHIV service name, exported as ``bhiv_service_info{service}``.
        metrics: The families to record into (default: :data:`SERVER_METRICS`).

    """

    def __init__(self, service: str, metrics: GrpcServerMetrics | None = None):
        self._metrics = metrics if metrics is not None else SERVER_METRICS
        self._metrics.service_info.labels(service).set(1)
        self._methods: dict[str, CallSeries | _SharedCallSeries] = {}
        self._unknown: dict[str, CallSeries | _SharedCallSeries] = {}

    def _resolve(self, call: CallInfo, streaming: bool) -> CallSeries | _SharedCallSeries:
        kind = grpc_type(call.descriptor, streaming)
        if call.descriptor is None and not is_infrastructure(call.method):
            # Not cached by name: callers choose unknown names, and series and cache must stay bounded.
            entry = self._unknown.get(kind)
            if entry is None:
                entry = self._unknown[kind] = self._metrics.series((_UNKNOWN, _UNKNOWN, kind))
            return entry
        service, _, method = call.method.lstrip("/").rpartition("/")
        entry = self._methods[call.method] = self._metrics.series((service, method, kind))
        return entry

    async def intercept_unary(
        self, call: CallInfo, request: Any, context: Context, proceed: UnaryNext
    ) -> Any:
        """Counts the call, runs the chain, and records its final code and duration."""
        entry = self._methods.get(call.method) or self._resolve(call, False)
        entry.start()
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
        entry.start()
        try:
            async for item in proceed(call, request, context):
                yield item
        except BaseException as exc:
            entry.finish(failure_code(call, exc), call.start)
            raise
        entry.finish(call.code, call.start)
