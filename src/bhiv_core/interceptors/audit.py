"""Records every call, allowed or denied, in the audit chain, and writes one request-log line per call.

The interceptor sits outside the error mapper, so when the inner chain finishes — normally, or by
the ``AbortError`` the mapper raises for a refused call — ``call.code`` already holds the final
status. A mutation that succeeded is recorded durably before its response leaves the handler; every
other call (reads, refusals, failures) is queued and written in batches, so a read pays one enqueue.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from bhiv_core.audit.record import AuditEntry, bounded
from bhiv_core.runtime.chain import (
    CallInfo,
    Context,
    Interceptor,
    StreamNext,
    UnaryNext,
    failure_code,
    is_infrastructure,
)
from bhiv_core.security.address import client_address_of

__all__ = ["AuditInterceptor", "AuditRecorder", "resource_of"]

log = logging.getLogger(__name__)
requests_log = logging.getLogger("bhiv.requests")


class AuditRecorder(Protocol):
    """Where the interceptor sends entries (:class:`~bhiv_core.audit.sink.AuditSink`)."""

    async def record(self, entry: AuditEntry, durable: bool) -> None:
        """Records ``entry``; when ``durable``, returns only once it is committed."""

    def offer(self, entry: AuditEntry) -> bool:
        """Queues a non-durable ``entry`` without waiting; False when it must wait for room."""


_ResourcePlan = tuple[tuple[str, ...], tuple[str, ...]]
_plans: dict[type, _ResourcePlan] = {}

# The name and number of every status, looked up once per call instead of through Enum properties.
# (Hashing an Enum member runs Python code, so the common OK skips the lookup.)
_CODES = {code: (code.name, int(code.value[0])) for code in grpc.StatusCode}
_OK = grpc.StatusCode.OK


def _is_string(field: FieldDescriptor | None) -> bool:
    return field is not None and field.type == FieldDescriptor.TYPE_STRING and not field.is_repeated


def _plan_for(descriptor: Descriptor) -> _ResourcePlan:
    """Which fields of a request type can carry the resource name (cached per type by the caller)."""
    direct = tuple(n for n in ("name", "parent") if _is_string(descriptor.fields_by_name.get(n)))
    nested = tuple(
        f.name
        for f in descriptor.fields
        if f.message_type is not None
        and not f.is_repeated
        and _is_string(f.message_type.fields_by_name.get("name"))
    )
    return direct, nested


def resource_of(request: Any) -> str:
    """The resource name a request addresses.

    Its ``name``, else its ``parent``, else the ``name`` of its first set message field that has a
    non-empty one (``UpdateCustomerRequest.customer.name``), else empty.
    """
    plan = _plans.get(type(request))
    if plan is None:
        if not isinstance(request, Message):
            return ""
        plan = _plans[type(request)] = _plan_for(request.DESCRIPTOR)  # type: ignore[arg-type]
    direct, nested = plan
    for field in direct:
        value = getattr(request, field)
        if value:
            return str(value)
    for field in nested:
        if request.HasField(field):
            value = getattr(request, field).name
            if value:
                return str(value)
    return ""


class AuditInterceptor(Interceptor):
    """Audits every call and logs it on ``bhiv.requests``.

    Args:
        sink: Where entries go; mutations that succeeded are recorded with ``durable=True``.
        service: The service name written in each record (``crm``).

    """

    def __init__(self, sink: AuditRecorder, service: str):
        self._sink = sink
        self._service = service

    def _entry(self, call: CallInfo, request: Any, code: grpc.StatusCode) -> AuditEntry:
        principal = call.principal
        name, number = ("OK", 0) if code is _OK else _CODES[code]
        # Positional, in field order: this runs on every call of the mesh.
        return AuditEntry(
            time.time_ns() // 1000,
            self._service,
            "" if principal is None else principal.subject,
            "" if principal is None else principal.role,
            call.method,
            # The chain decodes the body after this concern: ``request`` is bytes, the message is
            # on the call (None when the call was refused before decoding, or did not decode).
            call.resource or resource_of(request if call.request is None else call.request),
            name,
            number,
            client_address_of(call.headers, call.peer),
            call.trace_id,
            (time.perf_counter() - call.start) * 1000.0,
        )

    def _queue(self, call: CallInfo, request: Any, code: grpc.StatusCode) -> tuple[AuditEntry, bool] | None:
        """Builds and logs the call's entry and queues it when nothing needs to wait.

        Returns the entry and its durability when the caller must await :meth:`_wait` (a mutation
        that succeeded, or a full queue); None otherwise. Never raises.
        """
        try:
            # Capped at once (the caller chose the resource, and an unknown method's path), so
            # neither the queue nor the request log holds more than the record will.
            entry = bounded(self._entry(call, request, code))
        except Exception:  # a bug here must not fail the call; it is loud in the log
            log.exception("cannot build the audit entry of %s", call.method)
            return None
        if requests_log.isEnabledFor(logging.INFO):
            requests_log.info(
                "%s %s",
                entry.method,
                entry.outcome_code,
                extra={
                    "method": entry.method,
                    "code": entry.outcome_code,
                    "duration_ms": round(entry.duration_ms, 3),
                    "principal": entry.principal,
                    "client_address": entry.client_address,
                    "trace_id": entry.trace_id,
                },
            )
        # Health and reflection carry no NO_SIDE_EFFECTS option but never mutate: probes must not
        # cost a commit each.
        durable = call.mutating and code is _OK and not is_infrastructure(call.method)
        if durable:
            return entry, True
        try:
            return None if self._sink.offer(entry) else (entry, False)
        except Exception:
            log.exception("audit record of %s %s was not written", entry.method, entry.outcome_code)
            return None

    async def _wait(self, entry: AuditEntry, durable: bool) -> None:
        """Records ``entry`` through the sink, waiting as it needs; never raises."""
        try:
            await self._sink.record(entry, durable)
        except Exception:
            # The sink has logged the record itself at ERROR; the mutation already happened, so
            # failing the call now would only invite a retry that repeats it.
            log.exception("audit record of %s %s was not written", entry.method, entry.outcome_code)

    async def _finish(self, call: CallInfo, request: Any, code: grpc.StatusCode) -> None:
        """Records the call (durably for a mutation that succeeded) and logs it; never raises."""
        waiting = self._queue(call, request, code)
        if waiting is not None:
            await self._wait(*waiting)

    async def intercept_unary(
        self, call: CallInfo, request: Any, context: Context, proceed: UnaryNext
    ) -> Any:
        """Runs the chain, then records the call before the response is returned."""
        try:
            response = await proceed(call, request, context)
        except BaseException as exc:
            await self._finish(call, request, failure_code(call, exc))
            raise
        # A read costs no coroutine here: its entry is queued, and only a mutation waits.
        waiting = self._queue(call, request, call.code)
        if waiting is not None:
            await self._wait(*waiting)
        return response

    async def intercept_stream(
        self, call: CallInfo, request: Any, context: Context, proceed: StreamNext
    ) -> AsyncIterator[Any]:
        """Streams the chain's responses, then records the call when the stream ends."""
        code: grpc.StatusCode | None = None
        try:
            async for item in proceed(call, request, context):
                yield item
        except BaseException as exc:
            code = failure_code(call, exc)
            raise
        finally:
            await self._finish(call, request, call.code if code is None else code)
