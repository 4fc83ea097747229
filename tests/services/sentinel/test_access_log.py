"""Sentinel's access-log port: entries mapped to observations, and the port's bounds, on a real server.

The server is the real grpclib one on a free loopback port; a grpcio client plays Envoy, sending
``StreamAccessLogsMessage`` bytes (or broken ones) on the access-log stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import grpc
import pytest
from envoy_data_plane.envoy.config.core.v3 import Address, Metadata, SocketAddress
from envoy_data_plane.envoy.data.accesslog.v3 import (
    AccessLogCommon,
    HttpAccessLogEntry,
    HttpRequestProperties,
    HttpResponseProperties,
    ResponseFlags,
)
from envoy_data_plane.envoy.service.accesslog.v3 import StreamAccessLogsMessage as TypedMessage
from envoy_data_plane.envoy.service.accesslog.v3 import (
    StreamAccessLogsMessageHttpAccessLogEntries,
    StreamAccessLogsMessageIdentifier,
)
from envoy_data_plane.google.protobuf import Struct

from bhiv_core.agents.threat_detection import Observation, ObservationKind
from bhiv_core.agents.threat_detection.detectors import ScanningDetector, TokenAbuseDetector
from bhiv_core.edge.envoy_config import JWKS_ROUTE
from bhiv_core.security.address import parse_edge_peers
from bhiv_core.services.sentinel.access_log import (
    ACCESS_LOG_METHOD,
    AccessLogServer,
    observations_of,
    status_of,
)
from bhiv_core.services.sentinel.access_log_wire import StreamAccessLogsMessage
from bhiv_core.services.sentinel.config import SentinelConfig
from tests.harness import config_for

GET_USER = "/bhiv.identity.v1.UserService/GetUser"
EDGE = parse_edge_peers("127.0.0.2")


def address(ip: str) -> Address:
    return Address(socket_address=SocketAddress(address=ip, port_value=40000))


def wire(built: HttpAccessLogEntry) -> Any:
    """``built`` as sentinel reads it: written by envoy-data-plane, decoded by the wire schema."""
    return StreamAccessLogsMessage.FromString(message([built])).http_logs.log_entry[0]


def status(**fields: Any) -> str:
    return status_of(wire(entry(**fields)))


def observe(edge: Sequence[Any] = (), **fields: Any) -> list[Observation]:
    return observations_of(wire(entry(**fields)), edge)


def entry(
    *,
    path: str = GET_USER,
    client: str = "203.0.113.9",
    direct: str = "",
    code: int = 200,
    details: str = "via_upstream",
    content_type: str = "application/grpc",
    headers: dict[str, str] | None = None,
    trailers: dict[str, str] | None = None,
    metadata: dict[str, dict[str, Any]] | None = None,
    route: str = "",
    flags: ResponseFlags | None = None,
) -> HttpAccessLogEntry:
    """An entry as Envoy's http_grpc logger sends it (the fields sentinel reads)."""
    return HttpAccessLogEntry(
        common_properties=AccessLogCommon(
            downstream_remote_address=address(client),
            downstream_direct_remote_address=address(direct or client),
            metadata=Metadata(filter_metadata={k: Struct.from_dict(v) for k, v in (metadata or {}).items()}),
            route_name=route,
            response_flags=flags,
        ),
        request=HttpRequestProperties(path=path, request_headers={"content-type": content_type}),
        response=HttpResponseProperties(
            response_code=code,
            response_code_details=details,
            response_headers=headers or {},
            response_trailers=trailers or {},
        ),
    )


def test_the_status_comes_from_the_trailers_the_headers_or_the_edges_status_step() -> None:
    assert status(trailers={"grpc-status": "5"}) == "NOT_FOUND"
    assert status(headers={"grpc-status": "8"}) == "RESOURCE_EXHAUSTED"  # trailers-only
    # A gRPC-web reply with a body: Envoy's log has no status at all (the grpc_web filter moved the
    # trailers into the body). Unknown, and not OK: a 200 says nothing in gRPC.
    assert status() == "UNKNOWN"
    # The status step recorded the upstream's: a success is a success.
    assert status(metadata={"bhiv.edge": {"grpc_status": "0"}}) == "OK"
    # JSON: the transcoder made NOT_FOUND a 404 and dropped the status; the step kept it.
    json_404 = entry(code=404, content_type="application/json", metadata={"bhiv.edge": {"grpc_status": "5"}})
    assert status_of(wire(json_404)) == "NOT_FOUND"
    assert status(code=405, content_type="text/html", details="lua_response") == "UNIMPLEMENTED"
    assert status(code=200, content_type="application/json") == "OK"
    assert status(code=429, content_type="application/json") == "RESOURCE_EXHAUSTED"
    assert status(flags=ResponseFlags(downstream_remote_reset=True)) == "CANCELLED"
    assert status(headers={"grpc-status": "99"}) == "UNKNOWN"


def test_an_entry_is_a_call_from_the_address_the_edge_trusts() -> None:
    payload = {"jwt_payload": {"sub": "users/42", "role": "admin"}}
    (call,) = observe(
        EDGE, client="198.51.100.7", direct="10.0.0.1", metadata={"envoy.filters.http.jwt_authn": payload}
    )
    assert call == Observation(
        kind=ObservationKind.CALL,
        source_address="198.51.100.7",  # not the load balancer that connected (direct)
        principal="users/42",
        method=GET_USER,
        status="UNKNOWN",
        detail="via_upstream",
    )
    (probe,) = observe(path="/wp-admin/setup.php?x=1", code=405, content_type="", details="lua")
    assert (probe.method, probe.status, probe.detail) == ("", "UNIMPLEMENTED", "lua path /wp-admin/setup.php")


def test_a_token_refused_at_the_edge_is_also_an_invalid_token_a_missing_one_is_not() -> None:
    def refused(reason: str) -> list[Observation]:
        return observe(
            code=401, headers={"grpc-status": "16"}, details=f"jwt_authn_access_denied{{{reason}}}"
        )

    call, forged = refused("Jwt_verification_fails")
    assert call.status == "UNAUTHENTICATED"
    assert forged.kind is ObservationKind.TOKEN_INVALID
    assert forged.detail == "bad signature at the edge (Jwt_verification_fails)"
    assert [o.kind for o in refused("Jwt_is_expired")] == [
        ObservationKind.CALL,
        ObservationKind.TOKEN_INVALID,
    ]
    assert [o.kind for o in refused("Jwt_is_missing")] == [ObservationKind.CALL]
    # The token abuse detector counts the edge's forgeries as forged tokens.
    detector = TokenAbuseDetector(forged=3)
    found = [
        d for now in range(3) for d in detector.observe(refused("Jwt_verification_fails")[1], float(now))
    ]
    assert [d.rule_id for d in found] == ["token.forged"]


def test_the_edges_own_jwks_fetch_is_not_observed_a_clients_is() -> None:
    assert observe(EDGE, client="127.0.0.2", route=JWKS_ROUTE) == []
    assert len(observe(EDGE, client="203.0.113.5", route=JWKS_ROUTE)) == 1


def test_a_burst_of_not_found_entries_is_scanning() -> None:
    detector = ScanningDetector()
    paths = [f"/bhiv.crm.v1.CustomerService/Get{n % 4}" for n in range(20)]
    found = [
        d
        for n, path in enumerate(paths)
        for o in observe(path=path, trailers={"grpc-status": "5"})
        for d in detector.observe(o, float(n))
    ]
    assert [d.rule_id for d in found] == ["scanning.address"]
    # OK calls, gRPC-web successes included, never count.
    ok = [o for n in range(100) for o in observe(metadata={"bhiv.edge": {"grpc_status": "0"}})]
    assert not [d for o in ok for d in detector.observe(o, 30.0)]


def message(entries: Iterable[HttpAccessLogEntry], *, identify: bool = True) -> bytes:
    return bytes(
        TypedMessage(
            identifier=StreamAccessLogsMessageIdentifier(log_name="bhiv-edge") if identify else None,
            http_logs=StreamAccessLogsMessageHttpAccessLogEntries(log_entry=list(entries)),
        )
    )


class Port:
    """A running access-log server and what it observed."""

    def __init__(self, **kwargs: Any):
        self.seen: list[Observation] = []
        kwargs.setdefault("edge", parse_edge_peers("127.0.0.1"))
        self.server = AccessLogServer(self._submit, host="127.0.0.1", port=0, **kwargs)

    def _submit(self, observation: Observation) -> bool:
        self.seen.append(observation)
        return True

    async def send(self, *messages: bytes) -> grpc.StatusCode:
        """One access-log stream carrying ``messages``; the status it ends with."""
        # A connection of its own (grpcio shares one between channels to the same target).
        own = [("grpc.use_local_subchannel_pool", 1)]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.server.port}", options=own) as channel:
            stream = channel.stream_unary(
                ACCESS_LOG_METHOD, request_serializer=lambda b: b, response_deserializer=lambda b: b
            )
            try:
                await stream(iter(messages), timeout=10)
            except grpc.aio.AioRpcError as error:
                return error.code()
        return grpc.StatusCode.OK


@pytest.fixture
async def port() -> AsyncIterator[Port]:
    serving = Port(max_message_bytes=4096)
    await serving.server.start()
    yield serving
    await serving.server.stop()


async def test_the_port_turns_each_entry_into_observations(port: Port) -> None:
    entries = [entry(client=f"203.0.113.{n}", trailers={"grpc-status": "0"}) for n in range(3)]
    assert await port.send(message(entries), message(entries[:1], identify=False)) == grpc.StatusCode.OK
    assert [(o.source_address, o.status) for o in port.seen] == [
        ("203.0.113.0", "OK"),
        ("203.0.113.1", "OK"),
        ("203.0.113.2", "OK"),
        ("203.0.113.0", "OK"),
    ]
    assert port.server.counters.entries == 4


async def test_malformed_and_oversized_messages_end_their_stream_not_the_server(port: Port) -> None:
    assert await port.send(b"\xff\xff\xff\xff") == grpc.StatusCode.INVALID_ARGUMENT
    # A valid message, then one cut short: the first is observed, the stream ends at the second.
    good = message([entry(client="203.0.113.1")])
    assert await port.send(good, good[: len(good) - 3]) == grpc.StatusCode.INVALID_ARGUMENT
    big = message([entry(path="/a.B/" + "C" * 8000)])
    assert await port.send(big) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (port.server.counters.malformed, port.server.counters.oversized) == (2, 1)
    # An entry whose fields make no sense is skipped, not fatal.
    odd = HttpAccessLogEntry(common_properties=AccessLogCommon(downstream_remote_address=Address()))
    assert await port.send(message([odd, entry()])) == grpc.StatusCode.OK
    assert [o.source_address for o in port.seen] == ["203.0.113.1", "", "203.0.113.9"]


async def test_entries_over_the_rate_of_one_edge_address_are_dropped() -> None:
    limited = Port(rate=5, clock=lambda: 100.0)
    await limited.server.start()
    try:
        assert await limited.send(message([entry()] * 20)) == grpc.StatusCode.OK
    finally:
        await limited.server.stop()
    assert len(limited.seen) == 5
    assert limited.server.counters.rate_dropped == 15


async def test_a_connection_from_outside_the_edge_is_closed_unread() -> None:
    edge_only = Port(edge=parse_edge_peers("127.0.0.2"))  # the client here is 127.0.0.1
    await edge_only.server.start()
    try:
        assert await edge_only.send(message([entry()])) == grpc.StatusCode.UNAVAILABLE
    finally:
        await edge_only.server.stop()
    assert edge_only.seen == []
    assert edge_only.server.counters.connections_refused >= 1
    assert edge_only.server.counters.streams == 0


async def test_connections_over_the_limit_are_closed() -> None:
    one = Port(max_connections=1)
    await one.server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{one.server.port}") as held:
            stream = held.stream_unary(ACCESS_LOG_METHOD, request_serializer=lambda b: b)
            call = stream()
            await call.write(message([entry()]))
            while not one.seen:
                await asyncio.sleep(0.01)
            assert await one.send(message([entry()])) == grpc.StatusCode.UNAVAILABLE
            await call.done_writing()
            await call
    finally:
        await one.server.stop()
    assert len(one.seen) == 1


def test_the_settings_and_their_defaults() -> None:
    default = SentinelConfig.from_runtime(config_for("sentinel", SENTINEL_ACCESS_LOG_PORT="50059"))
    assert (default.access_log_port, default.access_log_rate) == (50059, 5000)
    assert (default.access_log_max_message_bytes, default.access_log_max_connections) == (1024 * 1024, 64)
    custom = SentinelConfig.from_runtime(
        config_for(
            "sentinel",
            SENTINEL_ACCESS_LOG_RATE="7",
            SENTINEL_ACCESS_LOG_MAX_MESSAGE_BYTES="1000",
            SENTINEL_ACCESS_LOG_MAX_CONNECTIONS="2",
        )
    )
    assert (custom.access_log_port, custom.access_log_rate) == (0, 7)
    assert (custom.access_log_max_message_bytes, custom.access_log_max_connections) == (1000, 2)
