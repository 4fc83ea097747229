"""The access-log messages sentinel reads, decoded by the protobuf runtime (C, upb), not in Python.

``envoy-data-plane``'s betterproto2 classes decode in pure Python with validation: about 600 µs of
CPU per access-log entry here, so a busy edge would hold sentinel's event loop. The protobuf runtime
decodes the same bytes in a few microseconds, but this environment has no compiled Envoy protos
for it (``xds-protos`` overwrites other packages' files: see PITFALLS). So this module declares the
few fields sentinel reads, with Envoy's field numbers (the wire contract of
``envoy.service.accesslog.v3`` / ``envoy.data.accesslog.v3``; the tests write entries with
envoy-data-plane's classes and read them with these), in a descriptor pool of its own; every other
field is skipped on decoding as an unknown one. Names are this module's; only numbers and types
count on the wire.
"""

from __future__ import annotations

from typing import Any, Final

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, struct_pb2, wrappers_pb2

__all__ = ["StreamAccessLogsMessage"]

_PACKAGE: Final = "bhiv.internal.envoy_als"
_F = descriptor_pb2.FieldDescriptorProto

# message -> [(field, number, type, message type or "", repeated)]
_MESSAGES: Final[dict[str, list[tuple[str, int, int, str, bool]]]] = {
    "StreamAccessLogsMessage": [("http_logs", 2, _F.TYPE_MESSAGE, "HTTPAccessLogEntries", False)],
    "HTTPAccessLogEntries": [("log_entry", 1, _F.TYPE_MESSAGE, "HTTPAccessLogEntry", True)],
    "HTTPAccessLogEntry": [
        ("common_properties", 1, _F.TYPE_MESSAGE, "AccessLogCommon", False),
        ("request", 3, _F.TYPE_MESSAGE, "HTTPRequestProperties", False),
        ("response", 4, _F.TYPE_MESSAGE, "HTTPResponseProperties", False),
    ],
    "AccessLogCommon": [
        ("downstream_remote_address", 2, _F.TYPE_MESSAGE, "Address", False),
        ("response_flags", 16, _F.TYPE_MESSAGE, "ResponseFlags", False),
        ("metadata", 17, _F.TYPE_MESSAGE, "Metadata", False),
        ("route_name", 19, _F.TYPE_STRING, "", False),
        ("downstream_direct_remote_address", 20, _F.TYPE_MESSAGE, "Address", False),
        ("intermediate_log_entry", 27, _F.TYPE_BOOL, "", False),
    ],
    "Address": [("socket_address", 1, _F.TYPE_MESSAGE, "SocketAddress", False)],
    "SocketAddress": [
        ("address", 2, _F.TYPE_STRING, "", False),
        ("port_value", 3, _F.TYPE_UINT32, "", False),
    ],
    "ResponseFlags": [
        ("upstream_remote_reset", 5, _F.TYPE_BOOL, "", False),
        ("upstream_connection_termination", 7, _F.TYPE_BOOL, "", False),
        ("downstream_connection_termination", 15, _F.TYPE_BOOL, "", False),
        ("downstream_remote_reset", 28, _F.TYPE_BOOL, "", False),
    ],
    "Metadata": [("filter_metadata", 1, _F.TYPE_MESSAGE, ".google.protobuf.Struct", False)],
    "HTTPRequestProperties": [
        ("path", 5, _F.TYPE_STRING, "", False),
        ("original_path", 10, _F.TYPE_STRING, "", False),
        ("request_headers", 13, _F.TYPE_STRING, "", False),
    ],
    "HTTPResponseProperties": [
        ("response_code", 1, _F.TYPE_MESSAGE, ".google.protobuf.UInt32Value", False),
        ("response_headers", 4, _F.TYPE_STRING, "", False),
        ("response_trailers", 5, _F.TYPE_STRING, "", False),
        ("response_code_details", 6, _F.TYPE_STRING, "", False),
    ],
}
_MAPS: Final = {
    ("Metadata", "filter_metadata"),
    ("HTTPRequestProperties", "request_headers"),
    ("HTTPResponseProperties", "response_headers"),
    ("HTTPResponseProperties", "response_trailers"),
}
"""Fields that are maps (``map<string, V>``, V the type given above)."""


def _file() -> descriptor_pb2.FileDescriptorProto:
    file = descriptor_pb2.FileDescriptorProto(
        name="bhiv/internal/envoy_als.proto",
        package=_PACKAGE,
        syntax="proto3",
        dependency=["google/protobuf/struct.proto", "google/protobuf/wrappers.proto"],
    )
    for name, fields in _MESSAGES.items():
        message = file.message_type.add(name=name)
        for field, number, kind, type_name, repeated in fields:
            target = (
                type_name if type_name.startswith(".") else f".{_PACKAGE}.{type_name}" if type_name else ""
            )
            label = _F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL
            if (name, field) in _MAPS:
                entry_name = "".join(part.title() for part in field.split("_")) + "Entry"
                entry = message.nested_type.add(name=entry_name)
                entry.options.map_entry = True
                entry.field.add(name="key", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
                value = entry.field.add(name="value", number=2, type=kind, label=_F.LABEL_OPTIONAL)
                if target:
                    value.type_name = target
                kind, target, label = _F.TYPE_MESSAGE, f".{_PACKAGE}.{name}.{entry_name}", _F.LABEL_REPEATED
            added = message.field.add(name=field, number=number, type=kind, label=label)
            if target:
                added.type_name = target
    return file


def _classes() -> dict[str, Any]:
    pool = descriptor_pool.DescriptorPool()
    for dependency in (struct_pb2, wrappers_pb2):
        pool.Add(descriptor_pb2.FileDescriptorProto.FromString(dependency.DESCRIPTOR.serialized_pb))
    pool.Add(_file())
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{name}"))
        for name in _MESSAGES
    }


StreamAccessLogsMessage: Final[Any] = _classes()["StreamAccessLogsMessage"]
"""``envoy.service.accesslog.v3.StreamAccessLogsMessage``, the fields sentinel reads (``FromString``)."""
