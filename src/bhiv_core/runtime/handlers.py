"""Registers a servicer against its service descriptor.

Servicers are plain classes with ``async`` methods named after the RPCs. Every RPC of the contract
gets a handler: the servicer's method when it has one, otherwise a handler that answers
UNIMPLEMENTED saying what is missing. No RPC ever returns placeholder data.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from bhiv_core.runtime.errors import Unimplemented

__all__ = ["method_handler", "service_handler"]


def method_handler(
    behavior: Callable[..., Any],
    *,
    request_streaming: bool,
    response_streaming: bool,
    request_deserializer: Callable[[bytes], Any] | None,
    response_serializer: Callable[[Any], bytes] | None,
) -> grpc.RpcMethodHandler[Any, Any]:
    """The gRPC handler of ``behavior`` for the method's kind (unary or streaming, each way)."""
    if request_streaming and response_streaming:
        factory: Callable[..., grpc.RpcMethodHandler[Any, Any]] = grpc.stream_stream_rpc_method_handler
    elif request_streaming:
        factory = grpc.stream_unary_rpc_method_handler
    elif response_streaming:
        factory = grpc.unary_stream_rpc_method_handler
    else:
        factory = grpc.unary_unary_rpc_method_handler
    return factory(
        behavior, request_deserializer=request_deserializer, response_serializer=response_serializer
    )


def _unimplemented(method: MethodDescriptor, missing: str) -> Callable[..., Any]:
    message = f"{method.containing_service.full_name}/{method.name} is not implemented yet: {missing}"
    if method.server_streaming:

        async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
            raise Unimplemented(message)
            yield  # pragma: no cover - makes this an async generator

        return stream

    async def unary(request: Any, context: Any) -> Any:
        raise Unimplemented(message)

    return unary


def service_handler(
    service: ServiceDescriptor, servicer: object, missing: str
) -> grpc.GenericRpcHandler[Any, Any]:
    """Builds the handler of every RPC of ``service``.

    Args:
        service: The service descriptor from the generated code.
        servicer: An object with an ``async`` method per implemented RPC.
        missing: Says what will implement the rest, for the UNIMPLEMENTED message.

    """
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        request_cls = message_factory.GetMessageClass(method.input_type)
        response_cls = message_factory.GetMessageClass(method.output_type)
        behavior = getattr(servicer, method.name, None)
        if not callable(behavior):
            behavior = _unimplemented(method, missing)
        handlers[method.name] = method_handler(
            behavior,
            request_streaming=method.client_streaming,
            response_streaming=method.server_streaming,
            request_deserializer=request_cls.FromString,
            response_serializer=response_cls.SerializeToString,
        )
    return grpc.method_handlers_generic_handler(service.full_name, handlers)
