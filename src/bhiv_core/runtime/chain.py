"""The interceptor chain: our per-concern interceptors, composed around every handler of a server.

Each concern (metrics, audit, errors, auth, RBAC, validation) is one
:class:`Interceptor` subclass in :mod:`bhiv_core.interceptors`. :class:`ChainedHandlers` is the one
generic handler a server registers: it finds a method's handler among the services' own, composes
the concerns around it once — applying :class:`Selector` skip rules at that time — and caches the
result, so a call costs one dictionary lookup plus one coroutine frame per concern, and nothing is
re-wrapped per request. It is not a ``grpc.aio.ServerInterceptor``: grpc runs those on every call,
which cost more than some concerns themselves. :func:`chain_order` is the single place that
declares the order (outermost first).

The chain decodes the request body itself, at the :data:`DECODE` step: grpc would decode it before
any concern runs and answer a body that does not parse with UNKNOWN, unaudited, with an ERROR
traceback in the log. A method is registered with grpc without a request deserializer, so the body
enters the chain as ``bytes`` and is decoded once, with the method's own deserializer, where
:func:`chain_order` puts the step (after auth: no token is still UNAUTHENTICATED). A body that does
not decode is INVALID_ARGUMENT (``MALFORMED_REQUEST``), mapped, audited and logged as one WARNING.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import MethodDescriptor

from bhiv_core.runtime.errors import FieldViolation, InvalidArgument, Unimplemented
from bhiv_core.runtime.handlers import method_handler

__all__ = [
    "DECODE",
    "CallInfo",
    "ChainedHandlers",
    "Check",
    "Decode",
    "Interceptor",
    "PreCheckInterceptor",
    "Selector",
    "StreamNext",
    "UnaryNext",
    "chain_order",
    "failure_code",
    "is_infrastructure",
    "is_mutating",
    "run_bound",
]

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]
if TYPE_CHECKING:  # grpc-stubs makes it generic; the runtime class is not subscriptable
    Handler = grpc.RpcMethodHandler[Any, Any]
    GenericHandler = grpc.GenericRpcHandler[Any, Any]
else:
    Handler = grpc.RpcMethodHandler
    GenericHandler = grpc.GenericRpcHandler


@dataclass(slots=True)
class CallInfo:
    """What the chain knows about one call; each concern reads or fills its part.

    Attributes:
        method: The full method path, ``/bhiv.crm.v1.CustomerService/GetCustomer``.
        descriptor: The method's descriptor, or None for an unknown method or a non-proto service.
        peer: The transport peer, like ``ipv4:127.0.0.1:53312``.
        headers: The call's invocation metadata as a dictionary, read once for every concern; a
            key sent more than once keeps its first value.
        start: ``time.perf_counter()`` at entry.
        mutating: False when the contract marks the method ``NO_SIDE_EFFECTS`` (read once per
            method when the chain is composed, not per call).
        code: The outcome, set by the error mapper (OK on success).
        message: The status message sent with a non-OK code.
        resource: The resource name the call addresses, when known.
        principal: The authenticated principal, set by auth.
        trace_id: The W3C trace id (32 lowercase hex digits), set by tracing; empty without it.
        request: The decoded request message, set by the :data:`DECODE` step (None before it, and
            for a streamed request); concerns outside that step receive the body as ``bytes``.

    """

    method: str
    descriptor: MethodDescriptor | None
    peer: str
    headers: Mapping[str, Any]
    start: float
    mutating: bool = False
    code: grpc.StatusCode = grpc.StatusCode.OK
    message: str = ""
    resource: str = ""
    principal: Any = None
    trace_id: str = ""
    request: Any = None


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


UnaryNext = Callable[[CallInfo, Any, Context], Awaitable[Any]]
StreamNext = Callable[[CallInfo, Any, Context], AsyncIterator[Any]]


class Interceptor:
    """One concern of the chain. The defaults pass the call through untouched."""

    async def intercept_unary(
        self, call: CallInfo, request: Any, context: Context, proceed: UnaryNext
    ) -> Any:
        """Handles a call with a single response; must await ``proceed`` to continue the chain."""
        return await proceed(call, request, context)

    def intercept_stream(
        self, call: CallInfo, request: Any, context: Context, proceed: StreamNext
    ) -> AsyncIterator[Any]:
        """Handles a call with a streamed response; returns the (wrapped) response iterator."""
        return proceed(call, request, context)


Check = Callable[[CallInfo, Any, Context], Awaitable[None] | None]
"""A pre-check bound to one method: raises to refuse; returns None when done, or an awaitable to await."""


class PreCheckInterceptor(Interceptor):
    """A concern that only checks before the handler runs (auth, RBAC, validation).

    A subclass implements :meth:`check`, or :meth:`bind` when much of its work depends only on the
    method: the chain binds each check to each method once, when it is composed, skips the methods
    a check returns None for, and runs consecutive checks in one frame.
    """

    async def check(self, call: CallInfo, request: Any, context: Context) -> None:
        """Raises a :class:`~bhiv_core.runtime.errors.BhivError` to refuse the call."""

    def bind(self, method: str, descriptor: MethodDescriptor | None) -> Check | None:
        """Returns the check of ``method``, or None when it needs none (default: :meth:`check`)."""
        return self.check

    async def intercept_unary(
        self, call: CallInfo, request: Any, context: Context, proceed: UnaryNext
    ) -> Any:
        """Checks, then continues."""
        await self.check(call, request, context)
        return await proceed(call, request, context)

    async def intercept_stream(
        self, call: CallInfo, request: Any, context: Context, proceed: StreamNext
    ) -> AsyncIterator[Any]:
        """Checks, then streams."""
        await self.check(call, request, context)
        async for item in proceed(call, request, context):
            yield item


async def run_bound(check: Check | None, call: CallInfo, request: Any, context: Context) -> None:
    """Runs a check made by :meth:`PreCheckInterceptor.bind` (for a ``check`` built on ``bind``)."""
    if check is not None:
        pending = check(call, request, context)
        if pending is not None:
            await pending


class Decode(Interceptor):
    """The place in the chain where the request body is decoded (:data:`DECODE`).

    Not a concern of its own: :class:`ChainedHandlers` binds it to each method's deserializer when
    it composes the chain, and runs it in the same frame as the pre-checks around it. A chain
    without it leaves decoding to grpc, as before (a body that does not parse is then UNKNOWN).
    """


DECODE = Decode()
"""The decode step :func:`chain_order` places after auth."""


@dataclass(frozen=True, slots=True)
class Selector:
    """Applies ``inner`` only to methods for which ``match(method)`` is true.

    Evaluated once per method when the chain is composed, not per call.
    """

    inner: Interceptor
    match: Callable[[str], bool]


def is_infrastructure(method: str) -> bool:
    """True for the health and reflection services: no authentication, no audit record."""
    return method.startswith(("/grpc.health.v1.Health/", "/grpc.reflection."))


def chain_order(
    *,
    observability: Sequence[Interceptor | Selector] = (),
    audit: Interceptor | None = None,
    errors: Interceptor,
    auth: Interceptor | None = None,
    rbac: Interceptor | None = None,
    validation: Interceptor | None = None,
    screening: Interceptor | None = None,
) -> list[Interceptor | Selector]:
    """Returns the chain in its one declared order, outermost first.

    tracing/metrics → audit + request log → error mapper → auth → decode → RBAC → validation →
    screening → handler. Audit and metrics sit outside the error mapper so they see the final status of every
    call, denials included. Auth and RBAC skip health and reflection. So does audit: probes arrive
    every few seconds from every orchestrator and load balancer, carry no principal and change
    nothing, and would drown the records and the request log that matter; metrics still count them.
    The body is decoded after auth, so a caller without a valid token learns nothing about it, and
    before RBAC, whose self-rules read a request field. Screening (injection payloads in text
    fields) reads the decoded request once it is valid, and skips health and reflection.
    """
    chain: list[Interceptor | Selector] = [*observability]
    if audit is not None:
        chain.append(Selector(audit, lambda m: not is_infrastructure(m)))
    chain.append(errors)
    if auth is not None:
        chain.append(Selector(auth, lambda m: not is_infrastructure(m)))
    chain.append(DECODE)
    if rbac is not None:
        chain.append(Selector(rbac, lambda m: not is_infrastructure(m)))
    if validation is not None:
        chain.append(validation)
    if screening is not None:
        chain.append(Selector(screening, lambda m: not is_infrastructure(m)))
    return chain


def is_mutating(descriptor: MethodDescriptor | None) -> bool:
    """True unless the contract marks the method ``NO_SIDE_EFFECTS`` (unknown methods: False)."""
    if descriptor is None:
        return False
    return bool(descriptor.GetOptions().idempotency_level != 1)


def _method_descriptor(method: str) -> MethodDescriptor | None:
    service, _, name = method.lstrip("/").rpartition("/")
    try:
        return descriptor_pool.Default().FindMethodByName(f"{service}.{name}")
    except KeyError:
        return None


def _is_plain_check(concern: Interceptor, streaming: bool) -> bool:
    """True for a pre-check that keeps :class:`PreCheckInterceptor`'s own behaviour for the call kind."""
    name = "intercept_stream" if streaming else "intercept_unary"
    return isinstance(concern, PreCheckInterceptor) and getattr(type(concern), name) is getattr(
        PreCheckInterceptor, name
    )


Decoder = Callable[[CallInfo, Any], Any]
"""The :data:`DECODE` step bound to one method: returns the decoded request (or request stream)."""


def _malformed(call: CallInfo, body: Any) -> InvalidArgument:
    """The refusal of a body that does not decode; logs it as one WARNING line, no traceback."""
    descriptor = call.descriptor
    type_name = descriptor.input_type.full_name if descriptor is not None else "request message"
    size = len(body) if isinstance(body, bytes | bytearray | memoryview) else -1
    # The parser's own text ("Error parsing message with type ...") adds nothing for the caller.
    log.warning(
        "request body does not decode",
        extra={"method": call.method, "message_type": type_name, "body_bytes": size, "peer": call.peer},
    )
    return InvalidArgument(
        f"the request body is not a valid {type_name}",
        violations=[FieldViolation("", f"does not decode as {type_name}", "MALFORMED")],
        reason="MALFORMED_REQUEST",
    )


def _decoder(deserializer: Callable[[bytes], Any], request_streaming: bool) -> Decoder:
    """Binds the :data:`DECODE` step to a method's deserializer."""

    def decode(call: CallInfo, body: Any) -> Any:
        try:
            return deserializer(body)
        except Exception:  # any parse failure (DecodeError, invalid UTF-8, depth) is the body's
            raise _malformed(call, body) from None

    if request_streaming:

        async def each(call: CallInfo, bodies: AsyncIterator[Any]) -> AsyncIterator[Any]:
            async for body in bodies:
                yield decode(call, body)

        return each

    def decode_unary(call: CallInfo, body: Any) -> Any:
        # decode() inlined: this runs on every unary call.
        try:
            call.request = request = deserializer(body)
        except Exception:
            raise _malformed(call, body) from None
        return request

    return decode_unary


_Step = PreCheckInterceptor | Decode


def _bound(
    steps: Sequence[_Step], method: str, descriptor: MethodDescriptor | None
) -> tuple[tuple[Check, ...], tuple[Check, ...], bool]:
    """Binds consecutive steps: the checks before the decode step, those after it, and whether it is there."""
    at = next((i for i, step in enumerate(steps) if isinstance(step, Decode)), len(steps))

    def bind(part: Sequence[_Step]) -> tuple[Check, ...]:
        bound = (step.bind(method, descriptor) for step in part if isinstance(step, PreCheckInterceptor))
        return tuple(c for c in bound if c is not None)

    return bind(steps[:at]), bind(steps[at + 1 :]), at < len(steps)


def _checks_then(
    steps: Sequence[_Step],
    proceed: UnaryNext,
    method: str,
    descriptor: MethodDescriptor | None,
    decoder: Decoder | None,
) -> UnaryNext:
    """Runs consecutive pre-checks, bound to the method, in one frame, in order, then the rest.

    The same behaviour as binding each one, with one coroutine frame for the run instead of one per
    check, and none at all for a check that needs no await. The decode step, when among them, runs
    in the same frame: the checks after it and the rest of the chain get the decoded request.
    """
    before, after, decodes = _bound(steps, method, descriptor)
    decode = decoder if decodes else None
    if not before and not after and decode is None:
        return proceed

    async def run(call: CallInfo, request: Any, context: Context) -> Any:
        for check in before:
            pending = check(call, request, context)
            if pending is not None:
                await pending
        if decode is not None:
            request = decode(call, request)
        for check in after:
            pending = check(call, request, context)
            if pending is not None:
                await pending
        return await proceed(call, request, context)

    return run


def _checks_then_stream(
    steps: Sequence[_Step],
    proceed: StreamNext,
    method: str,
    descriptor: MethodDescriptor | None,
    decoder: Decoder | None,
) -> StreamNext:
    """:func:`_checks_then` for a streamed response: the checks run before the first item."""
    before, after, decodes = _bound(steps, method, descriptor)
    decode = decoder if decodes else None
    if not before and not after and decode is None:
        return proceed

    async def run(call: CallInfo, request: Any, context: Context) -> AsyncIterator[Any]:
        for check in before:
            pending = check(call, request, context)
            if pending is not None:
                await pending
        if decode is not None:
            request = decode(call, request)
        for check in after:
            pending = check(call, request, context)
            if pending is not None:
                await pending
        async for item in proceed(call, request, context):
            yield item

    return run


def _compose(
    concerns: Sequence[Interceptor],
    terminal: Any,
    method: str,
    descriptor: MethodDescriptor | None,
    *,
    streaming: bool,
    decoder: Decoder | None = None,
) -> Any:
    """Composes ``concerns`` around ``terminal``, outermost first, each bound once for ``method``.

    ``decoder`` is the :data:`DECODE` step bound to the method (None: grpc decodes the request).
    """
    checks_then: Any = _checks_then_stream if streaming else _checks_then
    bind: Any = _bind_stream if streaming else _bind_unary
    composed = terminal
    steps: list[_Step] = []  # consecutive plain checks and the decode step, innermost first
    for concern in reversed(concerns):
        if isinstance(concern, Decode) or _is_plain_check(concern, streaming):
            steps.insert(0, concern)  # type: ignore[arg-type]
            continue
        if steps:
            composed, steps = checks_then(steps, composed, method, descriptor, decoder), []
        composed = bind(concern, composed)
    return checks_then(steps, composed, method, descriptor, decoder) if steps else composed


def _bind_unary(interceptor: Interceptor, proceed: UnaryNext) -> UnaryNext:
    # A partial, not a wrapping coroutine: one frame per concern instead of two.
    return functools.partial(interceptor.intercept_unary, proceed=proceed)


def _bind_stream(interceptor: Interceptor, proceed: StreamNext) -> StreamNext:
    return functools.partial(interceptor.intercept_stream, proceed=proceed)


def _as_async_iterator(behavior: Callable[..., Any]) -> Callable[..., AsyncIterator[Any]]:
    """Adapts a streaming behavior to the async-iterator form the chain composes.

    grpcio's own aio services (health ``Watch``) write with ``context.write`` instead of yielding.
    """
    if inspect.isasyncgenfunction(behavior):
        return behavior

    async def adapted(request: Any, context: Context) -> AsyncIterator[Any]:
        result = behavior(request, context)
        if inspect.isawaitable(result):
            result = await result
        if result is not None:
            async for item in result:
                yield item

    return adapted


async def _unknown_method(request: bytes, context: Context) -> bytes:
    raise Unimplemented("unknown method: no service of this server implements it", reason="UNKNOWN_METHOD")


_UNKNOWN_HANDLER = grpc.unary_unary_rpc_method_handler(_unknown_method)


def _rewrapped(handler: Handler, behavior: Callable[..., Any], *, decodes: bool) -> Handler:
    """A handler like ``handler`` (same kind and serializer) that runs ``behavior``.

    When the chain ``decodes`` the request, grpc gets no request deserializer and hands it bytes.
    """
    return method_handler(
        behavior,
        request_streaming=handler.request_streaming,
        response_streaming=handler.response_streaming,
        request_deserializer=None if decodes else handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class ChainedHandlers(GenericHandler):
    """The one generic handler of a server: every method's handler with the chain composed around it.

    Unknown methods also pass through the chain (as UNIMPLEMENTED), so scanning is audited too; an
    RPC of the contracts that another service serves is unknown here, like any other name.

    Args:
        chain: The concerns, outermost first (:func:`chain_order`).
        handlers: The services' own generic handlers, asked in order.

    """

    def __init__(self, chain: Sequence[Interceptor | Selector], handlers: Sequence[Any] = ()):
        self._chain = tuple(chain)
        self._handlers = list(handlers)
        self._cache: dict[str, Handler] = {}

    def add(self, handlers: Sequence[Any]) -> None:
        """Adds services' generic handlers (before the server starts)."""
        self._handlers.extend(handlers)

    def concerns_for(self, method: str) -> list[Interceptor]:
        """The concerns that apply to ``method``, outermost first."""
        out: list[Interceptor] = []
        for item in self._chain:
            if isinstance(item, Selector):
                if item.match(method):
                    out.append(item.inner)
            else:
                out.append(item)
        return out

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Handler:
        """Returns the cached composed handler for the method, composing it on first use."""
        method: str = handler_call_details.method
        cached = self._cache.get(method)
        if cached is not None:
            return cached
        for generic in self._handlers:
            handler = generic.service(handler_call_details)
            if handler is not None:
                wrapped = self._wrap(method, handler)
                self._cache[method] = wrapped
                return wrapped
        # Not cached: callers choose unknown names, and the cache must stay bounded. No descriptor,
        # even for an RPC of the contracts that another service serves: the body stays bytes (no
        # deserializer here), so the concerns must not bind to that RPC's request type, its policy
        # or its resource fields (they read fields of the request: an AttributeError, INTERNAL).
        return self._wrap(method, _UNKNOWN_HANDLER, served=False)

    def _wrap(self, method: str, handler: Handler, *, served: bool = True) -> Handler:
        concerns = self.concerns_for(method)
        descriptor = _method_descriptor(method) if served else None
        mutating = is_mutating(descriptor)
        deserializer = handler.request_deserializer
        decoder = None
        if deserializer is not None and any(isinstance(c, Decode) for c in concerns):
            decoder = _decoder(deserializer, handler.request_streaming)

        def begin(context: Context) -> CallInfo:
            return CallInfo(
                method,
                descriptor,
                context.peer(),
                # Reversed, so the first of repeated keys is the one kept (C-level passes only;
                # tuple() of the tuple the server gives is the same object).
                dict(reversed(tuple(context.invocation_metadata() or ()))),
                time.perf_counter(),
                mutating,
            )

        if handler.response_streaming:
            behavior = _as_async_iterator(handler.unary_stream or handler.stream_stream)  # type: ignore[arg-type]

            def stream_terminal(call: CallInfo, request: Any, context: Context) -> AsyncIterator[Any]:
                return behavior(request, context)  # type: ignore[no-any-return]

            composed_stream: StreamNext = _compose(
                concerns, stream_terminal, method, descriptor, streaming=True, decoder=decoder
            )

            async def stream_entry(request: Any, context: Context) -> AsyncIterator[Any]:
                call = begin(context)
                async for item in composed_stream(call, request, context):
                    yield item

            return _rewrapped(handler, stream_entry, decodes=decoder is not None)

        unary_behavior: Any = handler.unary_unary or handler.stream_unary

        async def unary_terminal(call: CallInfo, request: Any, context: Context) -> Any:
            return await unary_behavior(request, context)

        composed_unary: UnaryNext = _compose(
            concerns, unary_terminal, method, descriptor, streaming=False, decoder=decoder
        )

        async def unary_entry(request: Any, context: Context) -> Any:
            call = begin(context)
            return await composed_unary(call, request, context)

        return _rewrapped(handler, unary_entry, decodes=decoder is not None)
