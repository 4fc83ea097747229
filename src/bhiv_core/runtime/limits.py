"""Limits on request headers, shared by the edge and the services and set here once.

The edge refuses a request whose header block is larger than :data:`MAX_REQUEST_HEADER_BYTES` or has
more than :data:`MAX_REQUEST_HEADERS` fields (RESOURCE_EXHAUSTED for gRPC, HTTP 431 for gRPC-web),
so what it forwards is always something a service accepts: the services' gRPC servers take up to
:data:`GRPC_MAX_METADATA_BYTES` (``grpc.max_metadata_size``).

The two numbers differ only because the two count differently. Envoy counts the names and values of
every field, the pseudo-headers (``:path``...) and the ones it adds itself (``x-request-id``,
``x-forwarded-for``, ``x-envoy-external-address``...) included. gRPC counts each field as HPACK does
(RFC 7541, section 4.1): its name, its value and 32 bytes more. So a block the edge admits costs a
service at most the edge's limit, plus 32 bytes for each of its fields, plus the few bytes the edge
adds after its check (the health router's ``x-bhiv-service``); below
:data:`GRPC_MAX_METADATA_BYTES` gRPC never refuses, not even at random (above its ``max_metadata_size``
it refuses a growing share of calls, all of them past 1.25 times that).
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "GRPC_MAX_METADATA_BYTES",
    "HPACK_FIELD_OVERHEAD",
    "MAX_REQUEST_HEADERS",
    "MAX_REQUEST_HEADER_BYTES",
]

MAX_REQUEST_HEADER_BYTES: Final = 8 * 1024
"""The largest request header block the edge forwards: names plus values of every field, counted as
Envoy counts them (pseudo-headers and the edge's own headers included). 8 KiB is what gRPC's
specification suggests as a default and what grpc's servers accept by default without refusing any."""

MAX_REQUEST_HEADERS: Final = 100
"""The most request header fields the edge forwards, counted the same way (Envoy's default)."""

HPACK_FIELD_OVERHEAD: Final = 32
"""What gRPC (like HPACK's dynamic table) adds to each field's name and value when it sizes metadata."""

_ADDED_AFTER_THE_CHECK: Final = 1024
# What the edge may add once it has checked the limits: the health router's x-bhiv-service header,
# with its 32 bytes, is the only one today; the rest is room for another without a silent overlap.

GRPC_MAX_METADATA_BYTES: Final = (
    MAX_REQUEST_HEADER_BYTES + MAX_REQUEST_HEADERS * HPACK_FIELD_OVERHEAD + _ADDED_AFTER_THE_CHECK
)
"""The services' ``grpc.max_metadata_size``: everything the edge forwards, as gRPC sizes it."""
