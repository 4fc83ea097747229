"""OpenTelemetry tracing of every call, continued across services with W3C trace context.

On the server, :class:`TracingInterceptor` extracts ``traceparent``/``tracestate`` from the incoming
metadata with the global propagator, starts a SERVER span named after the method
(``bhiv.crm.v1.CustomerService/GetCustomer``), and attaches it as the current context for the whole
handler, so logs, the audit record and outgoing calls see it. The trace id goes to
``call.trace_id`` even when the sampler drops the span: the SDK gives non-sampled spans real
ids too, so audit records and logs can always be correlated.

Trace context comes from callers, so it is bounded before OpenTelemetry's propagator reads it: a
``traceparent`` or ``tracestate`` longer than 512 characters (``baggage``: 8192), the propagator's own
limits, is dropped quietly, as if it had not been sent, and counted in
``bhiv_trace_context_dropped_total{header}``; the propagator would log a warning for each such call,
which lets any caller fill the logs. The call goes on, in a new trace.

On the client, :func:`client_interceptors` creates CLIENT spans and injects their context into the
outgoing metadata of service-to-service calls; :func:`outgoing_metadata` injects the current context
for code that builds metadata itself.

The tracer comes from an explicit ``TracerProvider`` when one is given (tests, which cannot replace
the global provider twice in one process) and from the global one otherwise.

When no span can go anywhere (no exporter is configured: ``recording=False``), the server side skips
OpenTelemetry's objects altogether: it continues the caller's trace, or starts one, by setting the
call's ids in :data:`bhiv_core.runtime.trace_context.UNRECORDED`, so trace ids still reach logs,
audit records and downstream calls (the client side and :func:`outgoing_metadata` read them through
:func:`~bhiv_core.runtime.trace_context.current_context`), for a fraction of the cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextvars import Token
from typing import TYPE_CHECKING, Any, Final, cast

import grpc
from opentelemetry import context as context_api
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue
from prometheus_client import Counter

from bhiv_core.runtime.chain import (
    CallInfo,
    Context,
    Interceptor,
    StreamNext,
    UnaryNext,
    failure_code,
    is_infrastructure,
)
from bhiv_core.runtime.telemetry import REGISTRY
from bhiv_core.runtime.trace_context import UNRECORDED, UnrecordedSpan, current_context, current_trace_id

__all__ = [
    "MAX_TRACE_HEADER_CHARS",
    "TracingInterceptor",
    "client_interceptors",
    "current_trace_id",
    "outgoing_metadata",
    "trace_context_dropped",
]

_SCOPE = "bhiv_core.interceptors.tracing"

if TYPE_CHECKING:  # grpc-stubs makes them generic; the runtime classes are not subscriptable
    _UnaryUnaryBase = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    _UnaryStreamBase = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
else:
    _UnaryUnaryBase = grpc.aio.UnaryUnaryClientInterceptor
    _UnaryStreamBase = grpc.aio.UnaryStreamClientInterceptor

_Attributes = dict[str, AttributeValue]

MAX_TRACE_HEADER_CHARS: Final = {"traceparent": 512, "tracestate": 512, "baggage": 8192}
"""The longest value of each header the propagator reads; the limits past which it warns instead."""

trace_context_dropped = Counter(
    "bhiv_trace_context_dropped",
    "Incoming trace context headers ignored for being longer than the propagator reads, by header.",
    ("header",),
    registry=REGISTRY,
)
"""``bhiv_trace_context_dropped_total{header}``: one sample per header of a call that was dropped."""


def _tracer(provider: trace.TracerProvider | None) -> trace.Tracer:
    # Without a provider this is the global proxy tracer, which follows a provider set later.
    return trace.get_tracer(_SCOPE, tracer_provider=provider)


def _span_name_and_attributes(method: str) -> tuple[str, _Attributes]:
    name = method.lstrip("/")
    service, _, rpc = name.rpartition("/")
    return name, {"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc}


def _end(span: trace.Span, code: grpc.StatusCode, message: str) -> None:
    if span.is_recording():
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code is not grpc.StatusCode.OK:
            span.set_status(Status(StatusCode.ERROR, message or code.name))
    span.end()


_getrandbits = random.getrandbits


def _random_id(bits: int) -> int:
    # What the SDK's RandomIdGenerator does: any non-zero value of the width is valid.
    value = _getrandbits(bits)
    while not value:
        value = _getrandbits(bits)
    return value


class TracingInterceptor(Interceptor):
    """Starts a SERVER span for every call, continuing the caller's trace when it sent one.

    Args:
        tracer_provider: Where spans go (default: the global provider).
        recording: False when no span could be exported: calls then get a non-recording span with
            real ids from a fast path that skips the SDK's span machinery.

    """

    def __init__(self, tracer_provider: trace.TracerProvider | None = None, *, recording: bool = True):
        self._tracer = _tracer(tracer_provider)
        self._fields = frozenset(propagate.get_global_textmap().fields)
        self._dropped = {key: trace_context_dropped.labels(key) for key in self._fields}
        self._methods: dict[str, tuple[str, _Attributes]] = {}
        self._recording = recording

    def _start(self, call: CallInfo, context: Context) -> tuple[trace.Span, Token[context_api.Context]]:
        named = self._methods.get(call.method)
        if named is None:
            named = _span_name_and_attributes(call.method)
            # Only contract methods are cached: callers choose unknown names.
            if call.descriptor is not None or is_infrastructure(call.method):
                self._methods[call.method] = named
        parent = self._caller_context(call.headers)
        span = self._tracer.start_span(named[0], parent, SpanKind.SERVER, named[1])
        token = context_api.attach(trace.set_span_in_context(span, parent))
        span_context = span.get_span_context()
        call.trace_id = format(span_context.trace_id, "032x") if span_context.is_valid else ""
        return span, token

    def _caller_context(self, headers: Mapping[str, Any]) -> context_api.Context:
        """The caller's trace context from the call's headers, in a fresh context.

        A server span's parent comes from the wire only, never from whatever context the task has.
        """
        parent = context_api.Context()
        if self._fields.isdisjoint(headers):
            return parent
        carrier = {}
        for key in self._fields:
            value = headers.get(key)
            if value is None:
                continue
            if len(value) > MAX_TRACE_HEADER_CHARS.get(key, len(value)):
                # Quietly: the propagator would log a warning, on every such call.
                self._dropped[key].inc()
                continue
            carrier[key] = value
        return propagate.extract(carrier, parent) if carrier else parent

    def _unrecorded_ids(self, call: CallInfo) -> UnrecordedSpan:
        headers = call.headers
        if not self._fields.isdisjoint(headers):  # the caller sent trace context
            remote = trace.get_current_span(self._caller_context(headers)).get_span_context()
            if remote.is_valid:
                call.trace_id = format(remote.trace_id, "032x")
                return (remote.trace_id, _random_id(64), remote.trace_flags, remote.trace_state)
        # Zero is invalid, and one draw in 2**128 (or 2**64) is zero: _random_id draws again.
        trace_id = _getrandbits(128) or _random_id(128)
        call.trace_id = format(trace_id, "032x")
        return (trace_id, _getrandbits(64) or _random_id(64), 0, None)

    async def intercept_unary(
        self, call: CallInfo, request: Any, context: Context, proceed: UnaryNext
    ) -> Any:
        """Runs the chain inside the call's SERVER span and records the final status on it."""
        if not self._recording:  # nothing to record: only the call's ids matter
            ids = UNRECORDED.set(self._unrecorded_ids(call))
            try:
                return await proceed(call, request, context)
            finally:
                UNRECORDED.reset(ids)
        span, token = self._start(call, context)
        try:
            response = await proceed(call, request, context)
        except BaseException as exc:
            _end(span, failure_code(call, exc), call.message)
            raise
        finally:
            context_api.detach(token)
        _end(span, call.code, call.message)
        return response

    async def intercept_stream(
        self, call: CallInfo, request: Any, context: Context, proceed: StreamNext
    ) -> AsyncIterator[Any]:
        """Streams the chain inside the call's SERVER span, which ends with the stream."""
        if not self._recording:
            ids = UNRECORDED.set(self._unrecorded_ids(call))
            try:
                async for item in proceed(call, request, context):
                    yield item
            finally:
                # A stream closed from another context (its finalizer) cannot reset; nothing to undo.
                with contextlib.suppress(ValueError):
                    UNRECORDED.reset(ids)
            return
        span, token = self._start(call, context)
        try:
            async for item in proceed(call, request, context):
                yield item
        except BaseException as exc:
            _end(span, failure_code(call, exc), call.message)
            raise
        finally:
            context_api.detach(token)
        _end(span, call.code, call.message)


def _inject(
    metadata: Sequence[tuple[str, str | bytes]] | None, span_context: context_api.Context | None
) -> list[tuple[str, str | bytes]]:
    """Returns ``metadata`` without stale trace headers, plus those of ``span_context``."""
    headers: dict[str, str] = {}
    propagate.inject(headers, context=span_context)
    fields = propagate.get_global_textmap().fields
    kept = [(key, value) for key, value in metadata or () if key not in fields]
    return [*kept, *headers.items()]


def outgoing_metadata(extra: Sequence[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    """Returns ``extra`` plus the trace headers of the current context, for hand-built metadata.

    Args:
        extra: Metadata the caller sends anyway (``authorization``, a request id...).

    """
    headers: dict[str, str] = {}
    propagate.inject(headers, context=current_context())
    return [*extra, *headers.items()]


def _client_failure(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """Returns the status a CLIENT span ends with when the call raised ``exc``."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code(), exc.details() or ""
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        # The caller gave up (or stopped reading a stream): the call is cancelled with it.
        return grpc.StatusCode.CANCELLED, "cancelled by the caller"
    return grpc.StatusCode.UNKNOWN, f"{type(exc).__name__}: {exc}"


class _ClientSpans:
    """Starts a CLIENT span for an outgoing call and puts its context into the call's metadata."""

    def __init__(self, tracer_provider: trace.TracerProvider | None):
        self._tracer = _tracer(tracer_provider)

    def start(self, details: grpc.aio.ClientCallDetails) -> tuple[trace.Span, grpc.aio.ClientCallDetails]:
        method: str | bytes = details.method
        # grpc.aio hands interceptors the method as bytes (grpc/grpc#31092); accept both.
        name, attributes = _span_name_and_attributes(method.decode() if isinstance(method, bytes) else method)
        span = self._tracer.start_span(name, current_context(), SpanKind.CLIENT, attributes)
        metadata = _inject(
            cast("Sequence[tuple[str, str | bytes]] | None", details.metadata),
            trace.set_span_in_context(span),
        )
        return span, grpc.aio.ClientCallDetails(
            details.method,
            details.timeout,
            grpc.aio.Metadata(*metadata),
            details.credentials,
            details.wait_for_ready,
        )


class _UnaryUnaryTracing(_UnaryUnaryBase, _ClientSpans):
    async def intercept_unary_unary(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        """Runs the call inside a CLIENT span that ends with the call's status."""
        span, details = self.start(client_call_details)
        try:
            call = await continuation(details, request)
            code: grpc.StatusCode = await call.code()
            message = "" if code is grpc.StatusCode.OK else (await call.details() or "")
        except BaseException as exc:
            _end(span, *_client_failure(exc))
            raise
        _end(span, code, message)
        return call


class _UnaryStreamTracing(_UnaryStreamBase, _ClientSpans):
    async def intercept_unary_stream(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        """Runs the call inside a CLIENT span that ends when the response stream does."""
        span, details = self.start(client_call_details)
        try:
            call = await continuation(details, request)
        except BaseException as exc:
            _end(span, *_client_failure(exc))
            raise
        return self._responses(span, call)

    async def _responses(self, span: trace.Span, call: Any) -> AsyncIterator[Any]:
        try:
            async for response in call:
                yield response
        except BaseException as exc:
            _end(span, *_client_failure(exc))
            raise
        _end(span, grpc.StatusCode.OK, "")


def client_interceptors(
    tracer_provider: trace.TracerProvider | None = None,
) -> list[grpc.aio.ClientInterceptor]:
    """Returns the client interceptors of a service-to-service channel (unary and server-streaming).

    Each outgoing call gets a CLIENT span, child of the current context, whose context travels in
    the call's ``traceparent``, so the callee's SERVER span is its child.

    Args:
        tracer_provider: Where spans go (default: the global provider).

    """
    return [
        cast("grpc.aio.ClientInterceptor", _UnaryUnaryTracing(tracer_provider)),
        cast("grpc.aio.ClientInterceptor", _UnaryStreamTracing(tracer_provider)),
    ]
