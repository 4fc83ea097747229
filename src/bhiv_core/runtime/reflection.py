"""Server reflection in both protocol versions: ``grpc.reflection.v1`` and ``grpc.reflection.v1alpha``.

grpcurl (1.8.8 and later), ``buf curl``, Postman and other newer tools ask ``grpc.reflection.v1``
first; older ones only know ``v1alpha``. grpcio-reflection (1.85) ships only ``v1alpha``.

The two protocols are the same messages, field for field, in two packages: ``v1`` is ``v1alpha``
promoted unchanged (grpc/grpc-proto ``grpc/reflection/v1/reflection.proto``). Their wire format is
therefore identical, so one servicer serves both: the ``v1`` method is registered with the
``v1alpha`` (de)serializers. What differs is the descriptor a client may ask for by reflection
itself (``describe grpc.reflection.v1.ServerReflection``); :func:`v1_file` builds it from the
``v1alpha`` descriptor with the package, file name and language options of the canonical ``v1``
file, and adds it to the default pool, where the servicer looks symbols up.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from typing import Any, Final, Protocol

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import FileDescriptor
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

__all__ = ["V1ALPHA_SERVICE", "V1_SERVICE", "add_reflection", "v1_file", "v1_messages"]

V1_PACKAGE: Final = "grpc.reflection.v1"
V1_SERVICE: Final = f"{V1_PACKAGE}.ServerReflection"
V1ALPHA_SERVICE: Final[str] = reflection.SERVICE_NAME
_V1_FILE_NAME: Final = "grpc/reflection/v1/reflection.proto"
_METHOD: Final = "ServerReflectionInfo"


class _Registrar(Protocol):
    """A server, or the runtime's registrar that takes handlers the way a server does.

    (The generated ``add_*_to_server`` also calls ``add_registered_method_handlers``, which both have
    but grpc-stubs does not declare.)
    """

    def add_generic_rpc_handlers(self, handlers: Any, /) -> None: ...  # pragma: no cover


@cache
def v1_file() -> FileDescriptor:
    """Returns the ``grpc/reflection/v1/reflection.proto`` descriptor, added to the default pool once.

    When the pool already has ``grpc.reflection.v1`` (a later grpcio-reflection may ship it), that
    one is used.
    """
    pool = descriptor_pool.Default()
    try:
        return pool.FindFileContainingSymbol(V1_SERVICE)
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    old, new = f".{proto.package}.", f".{V1_PACKAGE}."
    proto.name = _V1_FILE_NAME
    proto.package = V1_PACKAGE
    for message in proto.message_type:
        for field in message.field:
            if field.type_name.startswith(old):
                field.type_name = new + field.type_name[len(old) :]
    for service in proto.service:
        for method in service.method:
            method.input_type = new + method.input_type[len(old) :]
            method.output_type = new + method.output_type[len(old) :]
    # v1alpha is marked deprecated; v1 is not. The language options are the canonical file's.
    proto.options.ClearField("deprecated")
    proto.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    proto.options.java_package = "io.grpc.reflection.v1"
    pool.Add(proto)
    return pool.FindFileByName(_V1_FILE_NAME)


def v1_messages() -> tuple[type[Any], type[Any]]:
    """The ``v1`` request and response classes, for clients (``ServerReflectionRequest``, ``...Response``)."""
    file = v1_file()
    return (
        message_factory.GetMessageClass(file.message_types_by_name["ServerReflectionRequest"]),
        message_factory.GetMessageClass(file.message_types_by_name["ServerReflectionResponse"]),
    )


def add_reflection(registrar: _Registrar, service_names: Iterable[str]) -> None:
    """Serves reflection of ``service_names`` (plus both reflection services) in both versions.

    Args:
        registrar: The server, or the runtime's registrar that composes the chain around handlers.
        service_names: The full names of the services to list, like ``bhiv.crm.v1.CustomerService``.
    """
    v1_file()
    names = [*service_names, V1_SERVICE, V1ALPHA_SERVICE]
    # The aio servicer that enable_server_reflection picks for an aio server (public as reflection.aio).
    servicer = reflection.aio.ReflectionServicer(names)  # type: ignore[attr-defined]
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, registrar)
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        # Same wire format as v1alpha (see the module docstring).
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    registrar.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(V1_SERVICE, {_METHOD: v1}),))
