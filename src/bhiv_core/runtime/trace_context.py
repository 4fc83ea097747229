"""The trace a call belongs to, also when no span of it is recorded.

When spans are exported, the tracing interceptor attaches each call's SDK span as OpenTelemetry's
current context, as usual. When nothing could be exported, it builds no OpenTelemetry object at all
on the call's path: it sets :data:`UNRECORDED` to the call's ids (a tuple), which costs a fraction of
a ``SpanContext``, a ``NonRecordingSpan`` and an attached ``Context``. The functions here read
whichever of the two is set, and build the OpenTelemetry form only when something asks for it —
an outgoing call, a log line, an explicit lookup.

Code that reads ``opentelemetry.trace.get_current_span()`` directly sees no span inside an
unrecorded call: use :func:`current_span_context` or :func:`current_context` instead.
"""

from __future__ import annotations

from contextvars import ContextVar

from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.trace import INVALID_SPAN_CONTEXT, NonRecordingSpan, SpanContext, TraceFlags, TraceState

__all__ = [
    "UNRECORDED",
    "UnrecordedSpan",
    "current_context",
    "current_span_context",
    "current_trace_id",
]

UnrecordedSpan = tuple[int, int, int, TraceState | None]
"""``(trace_id, span_id, trace_flags, trace_state)`` of a call whose span is not recorded."""

UNRECORDED: ContextVar[UnrecordedSpan | None] = ContextVar("bhiv_unrecorded_span", default=None)
"""The current call's ids when its span is not recorded; None otherwise."""


def _span_context(ids: UnrecordedSpan) -> SpanContext:
    return SpanContext(ids[0], ids[1], False, TraceFlags(ids[2]), ids[3])


def current_span_context() -> SpanContext:
    """The span context work continues: OpenTelemetry's current span, else the unrecorded call's."""
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        return span_context
    ids = UNRECORDED.get()
    return INVALID_SPAN_CONTEXT if ids is None else _span_context(ids)


def current_context() -> context_api.Context:
    """OpenTelemetry's current context, holding the unrecorded call's span when no span is current.

    Pass it where a span starts or trace headers are injected, so outgoing calls continue the trace.
    """
    context = context_api.get_current()
    ids = UNRECORDED.get()
    if ids is None or trace.get_current_span(context).get_span_context().is_valid:
        return context
    return trace.set_span_in_context(NonRecordingSpan(_span_context(ids)), context)


def current_trace_id() -> str:
    """Returns the trace id of the current call or span as 32 hex digits, or "" outside any trace."""
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        return format(span_context.trace_id, "032x")
    ids = UNRECORDED.get()
    return "" if ids is None else format(ids[0], "032x")
