"""Sentinel's access-log port: the edge streams its access log here, and every entry is observed.

Envoy's access-log service (``envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs``,
configured with the ``envoy.access_loggers.http_grpc`` logger by
:func:`bhiv_core.edge.envoy_config.build_bootstrap`) sends batches of HTTP log entries on a
long-lived stream. Each entry becomes one :attr:`~bhiv_core.agents.threat_detection.ObservationKind.CALL`
observation for the threat detection agent (floods, scanning), and an edge token refusal one
:attr:`~bhiv_core.agents.threat_detection.ObservationKind.TOKEN_INVALID` more (:func:`observations_of`).

The port is Envoy's alone, apart from sentinel's gRPC port (whose chain wants tokens Envoy does not
send), and everything on it is bounded:

* a connection from an address outside the trusted edge peers (``BHIV_EDGE_PEERS``, the rule that
  only the edge vouches for a client address) is closed before a byte is read: anyone else could
  feed fake traffic and have an innocent address blocked; so is one over the connection limit;
* a message (one batch) over the size limit ends its stream with RESOURCE_EXHAUSTED before it is
  read, a malformed one with INVALID_ARGUMENT (Envoy reconnects; sentinel goes on);
* entries over the per-edge-address rate are dropped and counted;
* the agent's queue is bounded and :meth:`ThreatDetectionAgent.submit` never waits.

Served with grpclib (``envoy-data-plane`` has grpclib service bases, no grpcio ones) on sentinel's
event loop; entries are decoded by the protobuf runtime (:mod:`.access_log_wire`), about 1 µs each.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import grpclib.const
import grpclib.server
from envoy_data_plane.envoy.service.accesslog.v3 import StreamAccessLogsResponse
from google.protobuf.message import DecodeError
from grpclib.exceptions import GRPCError

from bhiv_core.agents.threat_detection import Observation, ObservationKind
from bhiv_core.agents.threat_detection.detection import printable
from bhiv_core.registry import ACCESS_LOG_JWT_METADATA, ACCESS_LOG_STATUS_METADATA, EDGE_JWKS_ROUTE
from bhiv_core.security.address import Network
from bhiv_core.services.sentinel.access_log_wire import StreamAccessLogsMessage

__all__ = ["ACCESS_LOG_METHOD", "AccessLogServer", "observations_of", "status_of"]

log = logging.getLogger(__name__)

ACCESS_LOG_METHOD: Final = "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs"

_STATUS_NAMES: Final = {str(status.value): status.name for status in grpclib.const.Status}
_GRPC_METHOD: Final = re.compile(r"/[A-Za-z_][A-Za-z0-9_.]*/[A-Za-z_][A-Za-z0-9_]*")
_MAX_METHOD: Final = 256
_JWT_DENIED: Final = "jwt_authn_access_denied{"
_HTTP_STATUS: Final = {
    # An HTTP reply without a grpc-status: the edge's own refusals of what is not gRPC (405, 415),
    # a JSON caller's local replies, an upstream that never answered. The meaning the edge gives it.
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "UNIMPLEMENTED",
    405: "UNIMPLEMENTED",
    413: "RESOURCE_EXHAUSTED",
    415: "UNIMPLEMENTED",
    429: "RESOURCE_EXHAUSTED",
    431: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_FORGED_REASONS: Final = frozenset({"Jwt_verification_fails"})
"""jwt_authn's reasons that mean a signature did not verify (the token abuse detector counts forgeries)."""
_NO_TOKEN: Final = "Jwt_is_missing"  # noqa: S105 - a jwt_authn reason, not a secret


HttpAccessLogEntry = Any
"""An ``envoy.data.accesslog.v3.HTTPAccessLogEntry`` as :mod:`.access_log_wire` decodes it."""


def _metadata_value(entry: HttpAccessLogEntry, namespace: str, *keys: str) -> str:
    """A string from the entry's dynamic metadata (``namespace`` then nested ``keys``), or ``""``."""
    filter_metadata = entry.common_properties.metadata.filter_metadata
    if namespace not in filter_metadata:
        return ""
    struct_ = filter_metadata[namespace]
    for number, key in enumerate(keys):
        if key not in struct_.fields:
            return ""
        value = struct_.fields[key]
        if number == len(keys) - 1:
            return str(value.string_value)
        struct_ = value.struct_value
    return ""


def _status_name(raw: str | None) -> str:
    if not raw:
        return ""
    return _STATUS_NAMES.get(raw.strip(), "UNKNOWN")


def status_of(entry: HttpAccessLogEntry) -> str:
    """The gRPC status name a logged call ended with, taken from where it really is.

    In order: the upstream's ``grpc-status`` the edge's status step recorded (the one place the
    status of a gRPC-web or JSON reply with a body survives: the grpc_web filter moves trailers
    into the body, the transcoder into JSON); the response trailers (gRPC); the response headers
    (trailers-only replies, and every refusal of the edge itself); then the HTTP status
    (:data:`_HTTP_STATUS`; a stream the client reset, or no response at all, is CANCELLED, one the
    upstream reset UNAVAILABLE; any other 2xx is OK unless the request was gRPC, whose 200 says
    nothing, UNKNOWN like the rest).
    """
    response = entry.response
    upstream = _status_name(_metadata_value(entry, *ACCESS_LOG_STATUS_METADATA))
    if upstream:
        return upstream
    for found in (response.response_trailers, response.response_headers):
        name = _status_name(found.get("grpc-status"))
        if name:
            return name
    flags = entry.common_properties.response_flags
    if flags.downstream_remote_reset or flags.downstream_connection_termination:
        return "CANCELLED"  # the client went away before the call ended (a cancelled stream)
    if flags.upstream_remote_reset or flags.upstream_connection_termination:
        return "UNAVAILABLE"
    code = int(response.response_code.value)
    if code == 0:
        return "CANCELLED"
    grpc_request = str(entry.request.request_headers.get("content-type", "")).startswith("application/grpc")
    if 200 <= code < 300 and not grpc_request:
        return "OK"
    return _HTTP_STATUS.get(code, "UNKNOWN")


def _address(address: Any) -> str:
    """The IP of an Envoy ``Address`` (IPv4-mapped IPv6 as IPv4), or ``""``."""
    text = str(address.socket_address.address)
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return ""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def observations_of(entry: HttpAccessLogEntry, edge: Sequence[Network] = ()) -> list[Observation]:
    """What detection sees of one access-log entry: a CALL, and a TOKEN_INVALID for a bad token.

    * ``source_address``: the client address the edge trusts (``downstream_remote_address``: the
      TCP peer, or per the trusted ``x-forwarded-for`` hops);
    * ``method``: the path when it is a gRPC method path (``/pkg.Service/Method``), else empty and
      the path goes into ``detail``;
    * ``status``: :func:`status_of`;
    * ``principal``: the ``sub`` of a token the edge verified;
    * ``detail``: Envoy's response details (``via_upstream``, ``local_rate_limited``,
      ``jwt_authn_access_denied{...}``...), never a header value or a token.

    A token jwt_authn refused yields a TOKEN_INVALID with the reason as its detail (a forged
    signature says so); a call without a token does not (it is an UNAUTHENTICATED call, not a bad
    token). The edge's own JWKS fetches (from an ``edge`` address) and intermediate entries of
    long streams are not observed.
    """
    common = entry.common_properties
    if common.intermediate_log_entry:
        return []
    if common.route_name == EDGE_JWKS_ROUTE:
        direct = _address(common.downstream_direct_remote_address)
        if direct and any(ipaddress.ip_address(direct) in network for network in edge):
            return []  # Envoy fetching identity's keys through its own listener
    path = str(entry.request.original_path or entry.request.path).partition("?")[0]
    source = _address(common.downstream_remote_address)
    method = path if len(path) <= _MAX_METHOD and _GRPC_METHOD.fullmatch(path) else ""
    details = str(entry.response.response_code_details)
    detail = printable(details, 120)
    if not method and path:
        detail = f"{detail} path {printable(path, 120)}".strip()
    call = Observation(
        kind=ObservationKind.CALL,
        source_address=source,
        principal=printable(_metadata_value(entry, *ACCESS_LOG_JWT_METADATA, "sub"), 120),
        method=method,
        status=status_of(entry),
        detail=detail,
    )
    found = [call]
    if details.startswith(_JWT_DENIED):
        reason = details[len(_JWT_DENIED) :].rstrip("}")
        if reason != _NO_TOKEN:
            why = "bad signature" if reason in _FORGED_REASONS else "refused"
            found.append(
                Observation(
                    kind=ObservationKind.TOKEN_INVALID,
                    source_address=source,
                    method=method,
                    detail=f"{why} at the edge ({printable(reason, 80)})",
                )
            )
    return found


class _Bucket:
    """A token bucket: ``rate`` per second, as many at once."""

    def __init__(self, rate: int, now: float):
        self.rate = rate
        self.tokens = float(rate)
        self.time = now

    def take(self, now: float) -> bool:
        self.tokens = min(float(self.rate), self.tokens + (now - self.time) * self.rate)
        self.time = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


@dataclass
class AccessLogCounters:
    """What the access-log port did, for tests and logs.

    Attributes:
        connections_refused: Connections closed unread (not an edge address, or over the limit).
        streams: Access-log streams opened.
        entries: Entries received.
        observations: Observations handed to the agent (accepted or not by its queue).
        rate_dropped: Entries dropped over the per-edge-address rate.
        malformed: Messages or entries that did not decode.
        oversized: Messages over the size limit.

    """

    connections_refused: int = 0
    streams: int = 0
    entries: int = 0
    observations: int = 0
    rate_dropped: int = 0
    malformed: int = 0
    oversized: int = 0


class _Service:
    """The one method, as grpclib wants a servable (``__mapping__``)."""

    def __init__(self, handle: Callable[[grpclib.server.Stream[Any, Any]], Any]):
        self._handle = handle

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        return {
            ACCESS_LOG_METHOD: grpclib.const.Handler(
                self._handle,
                grpclib.const.Cardinality.STREAM_UNARY,
                StreamAccessLogsMessage,
                StreamAccessLogsResponse,
            )
        }


class _Guard(asyncio.Protocol):
    """Closes a connection the server does not admit before anything is read; else hands it on."""

    def __init__(self, make: Callable[[], asyncio.Protocol], owner: AccessLogServer):
        self._make = make
        self._owner = owner
        self._inner: asyncio.Protocol | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._owner._admit(transport):
            if isinstance(transport, asyncio.Transport):
                transport.abort()
            else:
                transport.close()
            return
        self._inner = self._make()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._inner is not None:
            self._owner._release()
            self._inner.connection_lost(exc)
            self._inner = None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


class _EdgeOnlyServer(grpclib.server.Server):
    """A grpclib server whose connections first pass :class:`_Guard`."""

    def __init__(self, handlers: Sequence[Any], owner: AccessLogServer):
        super().__init__(handlers)
        self._owner = owner

    def _protocol_factory(self) -> Any:
        # grpclib builds one protocol (and handler) per connection here; a refused connection
        # must not get one, or each would stay in the server's handler set.
        return _Guard(super()._protocol_factory, self._owner)


class AccessLogServer:
    """Serves Envoy's access-log service to the edge and feeds each entry to detection.

    Args:
        submit: Takes an observation without waiting (the agent's
            :meth:`~bhiv_core.agents.threat_detection.ThreatDetectionAgent.submit`).
        host: The address to bind.
        port: The port (0: any free one; see :attr:`port`).
        edge: The trusted edge peers, the only addresses whose connections are kept.
        rate: Entries per second taken from one edge address (a bucket as large).
        max_message_bytes: The largest message taken.
        max_connections: The most connections open at once.
        reuse_port: Bind with SO_REUSEPORT (several worker processes share the port; each keeps
            whole connections, so one Envoy's entries go to one worker's detectors).
        clock: Seconds, for the rate (monotonic by default).

    """

    def __init__(
        self,
        submit: Callable[[Observation], bool],
        *,
        host: str,
        port: int,
        edge: Sequence[Network],
        rate: int = 5000,
        max_message_bytes: int = 1024 * 1024,
        max_connections: int = 64,
        reuse_port: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._submit = submit
        self._host = host
        self._port = port
        self._edge = tuple(edge)
        self._rate = rate
        self._max_message_bytes = max_message_bytes
        self._max_connections = max_connections
        self._reuse_port = reuse_port
        self._clock = clock
        self._connections = 0
        self._buckets: dict[str, _Bucket] = {}
        self._server: _EdgeOnlyServer | None = None
        self.counters = AccessLogCounters()

    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        return self._port

    async def start(self) -> None:
        """Binds the port and starts serving."""
        server = _EdgeOnlyServer([_Service(self._handle)], self)
        await server.start(self._host, self._port, reuse_address=True, reuse_port=self._reuse_port or None)
        self._server = server
        sockets = getattr(server._server, "sockets", None) or ()
        if sockets:
            self._port = int(sockets[0].getsockname()[1])
        log.info("access-log port listening", extra={"address": f"{self._host}:{self._port}"})

    async def stop(self) -> None:
        """Closes the port and every stream."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 5.0)

    def _trusted(self, ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._edge)

    def _admit(self, transport: asyncio.BaseTransport) -> bool:
        peer = transport.get_extra_info("peername")
        ip = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        if not self._trusted(ip) or self._connections >= self._max_connections:
            self.counters.connections_refused += 1
            log.warning(
                "access-log connection refused",
                extra={"peer": ip, "reason": "not an edge address" if not self._trusted(ip) else "too many"},
            )
            return False
        self._connections += 1
        return True

    def _release(self) -> None:
        self._connections -= 1

    def _bucket(self, ip: str) -> _Bucket:
        bucket = self._buckets.get(ip)
        if bucket is None:
            if len(self._buckets) >= self._max_connections:
                self._buckets.clear()
            bucket = self._buckets[ip] = _Bucket(self._rate, self._clock())
        return bucket

    async def _handle(self, stream: grpclib.server.Stream[Any, Any]) -> None:
        self.counters.streams += 1
        peer = stream.peer.addr() if stream.peer is not None else None
        bucket = self._bucket(str(peer[0]) if peer else "")
        while True:
            data = await self._receive(stream)
            if data is None:
                break
            try:
                message = StreamAccessLogsMessage.FromString(data)
            except DecodeError as exc:
                self.counters.malformed += 1
                raise GRPCError(
                    grpclib.const.Status.INVALID_ARGUMENT, "malformed access-log message"
                ) from exc
            for entry in message.http_logs.log_entry:
                self.counters.entries += 1
                if not bucket.take(self._clock()):
                    self.counters.rate_dropped += 1
                    continue
                try:
                    observations = observations_of(entry, self._edge)
                except Exception:
                    self.counters.malformed += 1
                    log.exception("access-log entry not understood")
                    continue
                for observation in observations:
                    self.counters.observations += 1
                    self._submit(observation)
        await stream.send_message(StreamAccessLogsResponse())

    async def _receive(self, stream: grpclib.server.Stream[Any, Any]) -> bytes | None:
        """The next message's bytes, refused before it is read when over the limit; None at the end.

        grpclib's own reader takes any length a sender declares (up to 4 GiB, buffered whole), so
        the gRPC framing (a flag byte and a four-byte length) is read here.
        """
        raw = stream._stream  # grpclib's protocol stream: the only place to read the framing from
        prefix: bytes = await raw.recv_data(5)
        if not prefix:
            return None
        if len(prefix) < 5:
            self.counters.malformed += 1
            raise GRPCError(grpclib.const.Status.INVALID_ARGUMENT, "truncated access-log message")
        compressed, length = struct.unpack(">?I", prefix)
        if compressed:
            self.counters.malformed += 1
            raise GRPCError(
                grpclib.const.Status.UNIMPLEMENTED, "compressed access-log messages are not taken"
            )
        if length > self._max_message_bytes:
            self.counters.oversized += 1
            raise GRPCError(
                grpclib.const.Status.RESOURCE_EXHAUSTED,
                f"access-log message of {length} bytes; at most {self._max_message_bytes}",
            )
        data: bytes = await raw.recv_data(length)
        if len(data) != length:
            self.counters.malformed += 1
            raise GRPCError(grpclib.const.Status.INVALID_ARGUMENT, "truncated access-log message")
        return data
