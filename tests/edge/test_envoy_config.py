"""Tests of the edge's Envoy config: its shape, Envoy's validation, and a real Envoy routing real calls.

The live tests start tiny ``grpc.aio`` servers on loopback (health, reflection and a raw-bytes echo
under ``/bhiv.<name>.v1.``) and a real Envoy in front of them, then call through it with grpcio
(HTTP/2), a hand-framed gRPC-web POST (HTTP/1.1), CORS preflights and grpcurl.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import socket
import stat
import subprocess
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import pytest
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import HttpFilter
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from bhiv_core.edge.binaries import find_tool
from bhiv_core.edge.envoy_config import (
    ACCESS_LOG_CLUSTER,
    ADMIN_HOST,
    EDGE_SETTINGS,
    GRPC_STATUS_FILTER,
    HEADER_LIMITS_FILTER,
    HEADERS_TOO_LARGE,
    HEALTH_ROUTER,
    JWKS_CLUSTER,
    JWT_PAYLOAD_METADATA,
    LOGIN_METHODS,
    MESH_ONLY_METHODS,
    PROTOCOL_HINT,
    RATE_LIMITED_MESSAGE,
    REFLECTION_CLUSTER,
    REFLECTION_PREFIXES,
    SERVICE_HEADER,
    TOO_MANY_HEADERS,
    EdgeSettings,
    Upstream,
    build_bootstrap,
    rate_limit_service_config,
    write_bootstrap,
)
from bhiv_core.edge.lua_scripts import NOT_SERVING_HEADER, PROBE_USER_AGENT, health_router_script
from bhiv_core.edge.process import EnvoyError, EnvoyProcess, validate_config
from bhiv_core.mesh import free_ports
from bhiv_core.registry import SERVICES
from bhiv_core.runtime.config import ConfigError, Settings
from bhiv_core.runtime.contracts import all_services, method_path
from bhiv_core.runtime.health import HealthServicer
from bhiv_core.runtime.limits import GRPC_MAX_METADATA_BYTES, MAX_REQUEST_HEADER_BYTES, MAX_REQUEST_HEADERS
from tests.harness import Relay

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pydantic")

ALLOWED_ORIGIN = "http://localhost:3000"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"


# ----------------------------------------------------------------------------- helpers


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def free_settings(**overrides: Any) -> EdgeSettings:
    listen, admin = free_ports(2)  # chosen together: one at a time they may coincide
    return EdgeSettings(listen_port=listen, admin_port=admin, **overrides)


def registry_upstreams() -> list[Upstream]:
    return [Upstream.from_spec(spec) for spec in SERVICES]


def dead_upstream() -> list[Upstream]:
    """An upstream nobody listens on, for tests that only need Envoy itself."""
    return [Upstream(name="alpha", host="127.0.0.1", port=free_port(), route_prefix="/bhiv.alpha.v1.")]


def hcm(bootstrap: Mapping[str, Any]) -> dict[str, Any]:
    listener = bootstrap["static_resources"]["listeners"][0]
    config: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return config


def virtual_host(bootstrap: Mapping[str, Any]) -> dict[str, Any]:
    vhost: dict[str, Any] = hcm(bootstrap)["route_config"]["virtual_hosts"][0]
    return vhost


def grpc_frame(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


@dataclass(frozen=True)
class GrpcWebReply:
    http_status: int
    headers: dict[str, str]
    messages: list[bytes]
    grpc_status: int | None
    grpc_message: str


def grpc_web_call(address: str, path: str, message: bytes, headers: Mapping[str, str] = {}) -> GrpcWebReply:
    """One unary gRPC-web call over HTTP/1.1, framed by hand (blocking; run it in a thread)."""
    host, port = address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request(
            "POST",
            path,
            body=grpc_frame(message),
            headers={"content-type": "application/grpc-web+proto", "x-grpc-web": "1", **headers},
        )
        response = connection.getresponse()
        body = response.read()
        reply_headers = {key.lower(): value for key, value in response.getheaders()}
    finally:
        connection.close()
    messages: list[bytes] = []
    trailers: dict[str, str] = {}
    offset = 0
    while offset < len(body):
        flags, length = body[offset], int.from_bytes(body[offset + 1 : offset + 5], "big")
        payload = body[offset + 5 : offset + 5 + length]
        offset += 5 + length
        if flags & 0x80:  # the trailer frame: HTTP/1-style header lines
            for line in payload.decode().split("\r\n"):
                if line:
                    key, _, value = line.partition(":")
                    trailers[key.strip().lower()] = value.strip()
        else:
            messages.append(payload)
    status_source = trailers if "grpc-status" in trailers else reply_headers  # trailers-only replies
    status = status_source.get("grpc-status")
    return GrpcWebReply(
        http_status=response.status,
        headers=reply_headers,
        messages=messages,
        grpc_status=int(status) if status is not None else None,
        grpc_message=status_source.get("grpc-message", ""),
    )


def http_request(
    address: str, method: str, path: str, headers: Mapping[str, str]
) -> tuple[int, dict[str, str]]:
    host, port = address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request(method, path, headers=dict(headers))
        response = connection.getresponse()
        response.read()
        return response.status, {key.lower(): value for key, value in response.getheaders()}
    finally:
        connection.close()


def preflight(address: str, origin: str) -> tuple[int, dict[str, str]]:
    return http_request(
        address,
        "OPTIONS",
        "/bhiv.alpha.v1.EchoService/Echo",
        {
            "origin": origin,
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type,x-grpc-web,authorization",
        },
    )


def h2_exchange(
    address: str, headers: list[tuple[str, str]], body: bytes | None = None, *, end: bool = True
) -> tuple[dict[str, str], bytes]:
    """One request over h2c (h2 comes with grpclib): the reply's headers and trailers, and its body.

    ``end=False`` leaves the request open after the headers (and body), as a client still sending.
    """
    host, port = address.rsplit(":", 1)
    connection = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    )
    received: dict[str, str] = {}
    data_received = b""
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        connection.initiate_connection()
        stream_id = connection.get_next_available_stream_id()
        connection.send_headers(
            stream_id,
            [(":scheme", "http"), (":authority", address), *headers],
            end_stream=end and body is None,
        )
        if body is not None:
            connection.send_data(stream_id, body, end_stream=end)
        sock.sendall(connection.data_to_send())
        done = False
        while not done:
            data = sock.recv(65536)
            if not data:
                break
            for event in connection.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    received.update((str(key), str(value)) for key, value in event.headers or [])
                if isinstance(event, h2.events.DataReceived):
                    data_received += event.data
                done = done or isinstance(event, h2.events.StreamEnded | h2.events.StreamReset)
            sock.sendall(connection.data_to_send())
    return received, data_received


def h2_grpc_headers_only(
    address: str, path: str, content_length: int | None = None, body: bytes | None = None
) -> dict[str, str]:
    """Sends gRPC request headers (and ``body``, when given) over h2c; returns the reply's headers.

    grpcio never sends content-length, nor a frame it would not make itself (a compressed flag
    without compression), so this speaks HTTP/2 directly.
    """
    headers = [(":method", "POST"), (":path", path), ("content-type", "application/grpc"), ("te", "trailers")]
    if content_length is not None:
        headers.append(("content-length", str(content_length)))
    received, _ = h2_exchange(address, headers, body, end=body is not None or content_length is None)
    return received


async def serving_health(name: str) -> HealthServicer:
    """The health of a service called ``name``: SERVING for "", ``bhiv.<name>`` and its echo service."""
    servicer = HealthServicer()
    for service in ("", f"bhiv.{name}", f"bhiv.{name}.v1.EchoService"):
        await servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    return servicer


async def start_upstream(
    name: str, servicer: HealthServicer | None = None
) -> tuple[grpc.aio.Server, Upstream]:
    """Start a service called ``name``: health (Check, Watch, List), reflection, and under
    /bhiv.<name>.v1.EchoService/: ``Echo``, and ``Headers`` (the names of the metadata it received).

    Health answers NOT_FOUND for a name it does not serve, as the health protocol says. It takes the
    request headers a BHIV service takes.
    """
    server = grpc.aio.server(options=[("grpc.max_metadata_size", GRPC_MAX_METADATA_BYTES)])

    async def echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return name.encode() + b":" + request

    async def headers(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return "\n".join(sorted(key for key, _ in context.invocation_metadata() or ())).encode()

    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                f"bhiv.{name}.v1.EchoService",
                {
                    "Echo": grpc.unary_unary_rpc_method_handler(echo),
                    "Headers": grpc.unary_unary_rpc_method_handler(headers),
                },
            ),
        )
    )
    health_pb2_grpc.add_HealthServicer_to_server(servicer or await serving_health(name), server)
    reflection.enable_server_reflection([health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, Upstream(name=name, host="127.0.0.1", port=port, route_prefix=f"/bhiv.{name}.v1.")


async def echo_call(address: str, name: str, payload: bytes = b"hi") -> tuple[grpc.StatusCode, bytes | None]:
    """Calls /bhiv.<name>.v1.EchoService/Echo through ``address``; returns the code and the reply."""
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(
            f"/bhiv.{name}.v1.EchoService/Echo", request_serializer=None, response_deserializer=None
        )
        try:
            reply: bytes = await call(payload, timeout=10)
        except grpc.aio.AioRpcError as error:
            return error.code(), None
        return grpc.StatusCode.OK, reply


@pytest.fixture(scope="module")
async def upstreams() -> AsyncIterator[list[Upstream]]:
    started = [await start_upstream("alpha"), await start_upstream("beta")]
    yield [upstream for _, upstream in started]
    for server, _ in started:
        await server.stop(None)


@pytest.fixture(scope="module")
async def edge(
    upstreams: list[Upstream], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[EnvoyProcess]:
    settings = free_settings(max_request_bytes=64 * 1024)
    path = write_bootstrap(tmp_path_factory.mktemp("edge") / "envoy.json", upstreams, settings)
    async with EnvoyProcess(path, settings, concurrency=2) as envoy:
        yield envoy


@pytest.fixture
def registry_bootstrap() -> Iterator[dict[str, Any]]:
    yield build_bootstrap(registry_upstreams(), EdgeSettings())


# ----------------------------------------------------------------------------- the config's shape


def test_registry_config_passes_envoy_validate_without_deprecated_fields(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        # envoy-data-plane warns when a deprecated field is set.
        warnings.simplefilter("error", DeprecationWarning)
        path = write_bootstrap(tmp_path / "envoy.json", registry_upstreams(), EdgeSettings())
    validate_config(path)  # raises on rejection and on any deprecated field
    assert [p.name for p in tmp_path.iterdir()] == ["envoy.json"]  # the atomic write left no temp file


def test_validate_config_rejects_a_broken_config(tmp_path: Path) -> None:
    bootstrap = build_bootstrap(registry_upstreams(), EdgeSettings())
    virtual_host(bootstrap)["routes"][-1]["route"]["cluster"] = "no-such-cluster"
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(bootstrap))
    with pytest.raises(EnvoyError, match="no-such-cluster"):
        validate_config(path)


def test_validate_config_rejects_deprecated_fields(tmp_path: Path) -> None:
    bootstrap = build_bootstrap(registry_upstreams(), EdgeSettings())
    virtual_host(bootstrap)["cors"] = {"allow_methods": "POST"}  # VirtualHost.cors is deprecated
    path = tmp_path / "deprecated.json"
    path.write_text(json.dumps(bootstrap))
    with pytest.raises(EnvoyError, match="deprecated"):
        validate_config(path)
    validate_config(path, allow_deprecated=True)


def test_admin_is_bound_to_loopback_even_when_listening_on_all_addresses() -> None:
    bootstrap = build_bootstrap(registry_upstreams(), EdgeSettings(listen_host="0.0.0.0", admin_port=9911))
    assert bootstrap["admin"]["address"]["socket_address"] == {"address": ADMIN_HOST, "port_value": 9911}
    listener_address = bootstrap["static_resources"]["listeners"][0]["address"]["socket_address"]
    assert listener_address["address"] == "0.0.0.0"


def test_no_route_matches_grpc_and_each_service_prefix_routes_to_its_cluster(
    registry_bootstrap: dict[str, Any],
) -> None:
    routes = virtual_host(registry_bootstrap)["routes"]
    assert all("grpc" not in route["match"] for route in routes)
    cluster_by_prefix = {
        route["match"]["prefix"]: route["route"]["cluster"]
        for route in routes
        if "route" in route and not route["match"].get("headers")
    }
    for spec in SERVICES:
        assert cluster_by_prefix[spec.route_prefix] == spec.name
    for prefix in REFLECTION_PREFIXES:
        assert cluster_by_prefix[prefix] == REFLECTION_CLUSTER
    clusters = {cluster["name"]: cluster for cluster in registry_bootstrap["static_resources"]["clusters"]}
    assert set(clusters) == {spec.name for spec in SERVICES} | {REFLECTION_CLUSTER, JWKS_CLUSTER}
    reflection_ports = {
        endpoint["endpoint"]["address"]["socket_address"]["port_value"]
        for endpoint in clusters[REFLECTION_CLUSTER]["load_assignment"]["endpoints"][0]["lb_endpoints"]
    }
    assert reflection_ports == {spec.port for spec in SERVICES}


def test_unary_routes_time_out_and_streaming_methods_found_in_the_contracts_are_exempt(
    registry_bootstrap: dict[str, Any],
) -> None:
    routes = {route["name"]: route for route in virtual_host(registry_bootstrap)["routes"]}
    crm = routes["crm"]
    assert crm["route"]["max_stream_duration"] == {
        "max_stream_duration": "60s",
        "grpc_timeout_header_max": "60s",
    }
    streaming = {
        method_path(m) for service in all_services() for m in service.methods if m.server_streaming
    } - set(MESH_ONLY_METHODS)
    assert "/bhiv.llm.v1.CompletionService/StreamComplete" in streaming
    stream_routes = {
        route["match"]["prefix"]: route for route in routes.values() if route["name"].startswith("stream-")
    }
    assert set(stream_routes) == streaming
    names = list(routes)
    for route in stream_routes.values():
        assert route["route"]["timeout"] == "0s"  # a server stream lives as long as its client wants
        assert route["route"]["max_stream_duration"] == {"grpc_timeout_header_max": "0s"}
        assert route["route"]["idle_timeout"] == "3600s"
        assert names.index(route["name"]) < names.index(route["route"]["cluster"])
    # Health Watch and reflection streams keep no route timeout either.
    for route in routes.values():
        if (
            route["match"].get("prefix", "").startswith(("/grpc.health", "/grpc.reflection"))
            and "route" in route
        ):
            assert route["route"]["timeout"] == "0s"


def test_no_contract_method_streams_from_the_client() -> None:
    # The edge's request_timeout stops only when the response starts; a client stream answered at
    # its end would be cut by it.
    assert [method_path(m) for s in all_services() for m in s.methods if m.client_streaming] == []


def test_health_routes_by_service_header_then_unknown_header_then_by_name(
    registry_bootstrap: dict[str, Any],
) -> None:
    health_routes = [
        route
        for route in virtual_host(registry_bootstrap)["routes"]
        if route["match"]["prefix"] == "/grpc.health.v1.Health/" and not route["name"].startswith("refuse-")
    ]
    by_header = {
        route["match"]["headers"][0]["string_match"]["exact"]: route["route"]["cluster"]
        for route in health_routes[: len(SERVICES)]
    }
    assert all(route["match"]["headers"][0]["name"] == SERVICE_HEADER for route in health_routes[:-1])
    assert by_header == {spec.name: spec.name for spec in SERVICES}
    unknown, by_name = health_routes[len(SERVICES) :]
    assert unknown["match"]["headers"] == [{"name": SERVICE_HEADER, "present_match": True}]
    assert unknown["typed_per_filter_config"]["envoy.filters.http.lua"]["name"] == "unknown-service"
    assert "headers" not in by_name["match"]  # no header: the health router reads the name
    assert by_name["route"]["cluster"] == REFLECTION_CLUSTER
    assert by_name["typed_per_filter_config"]["envoy.filters.http.lua"]["name"] == HEALTH_ROUTER


def test_health_router_script_maps_each_package_to_its_service() -> None:
    script = health_router_script([("bhiv.crm.v1.", "crm"), ('odd"\\\n', "x")], "x-bhiv-service")
    assert '{"bhiv.crm.v1.", "crm"}' in script
    assert '{"odd\\034\\092\\010", "x"}' in script  # quotes, backslashes and newlines stay inside the literal
    assert 'local NAMES = "crm, x"' in script
    assert 'local SERVICE_HEADER = "x-bhiv-service"' in script


def test_protocol_refusals_come_first_and_answer_from_lua(registry_bootstrap: dict[str, Any]) -> None:
    # First the JWKS document (a GET, which the refusals would refuse), then the refusals.
    jwks, *routes = virtual_host(registry_bootstrap)["routes"]
    assert jwks["name"] == "jwks"
    assert [route["name"] for route in routes[:7]] == [
        "refuse-method",
        "refuse-options",
        "refuse-connect",
        "refuse-media-type",
        "refuse-json-health",
        "refuse-json-reflection-v1",
        "refuse-json-reflection-v1alpha",
    ]
    scripts = [route["typed_per_filter_config"]["envoy.filters.http.lua"]["name"] for route in routes[:7]]
    assert scripts == ["refuse-method", "refuse-method"] + ["refuse-media-type"] * 5
    # No route answers with a direct response but the size guard: the CORS filter skips those.
    assert [route["name"] for route in routes if "direct_response" in route] == ["request-too-large"]
    lua = next(f for f in hcm(registry_bootstrap)["http_filters"] if f["name"] == "envoy.filters.http.lua")
    refusal = lua["typed_config"]["source_codes"]["refuse-media-type"]["inline_string"]
    assert '[":status"] = "415"' in refusal


def test_cors_policy_is_per_filter_config_and_exposes_grpc_status(registry_bootstrap: dict[str, Any]) -> None:
    vhost = virtual_host(registry_bootstrap)
    assert "cors" not in vhost
    policy = vhost["typed_per_filter_config"]["envoy.filters.http.cors"]
    assert policy["@type"] == "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
    exposed = policy["expose_headers"].split(",")
    assert {"grpc-status", "grpc-message", "grpc-status-details-bin"} <= set(exposed)
    assert set(policy["allow_methods"].split(",")) == {"POST", "OPTIONS"}
    assert {"x-grpc-web", "grpc-timeout", "authorization"} <= set(policy["allow_headers"].split(","))


def http_filter(bootstrap: Mapping[str, Any], name: str) -> dict[str, Any]:
    config: dict[str, Any] = next(f for f in hcm(bootstrap)["http_filters"] if f["name"] == name)[
        "typed_config"
    ]
    return config


def test_http_filters_run_grpc_web_cors_header_limits_rate_limit_lua_jwt_transcoder_extras_router() -> None:
    extra = HttpFilter(name="envoy.filters.http.jwt_authn_placeholder", disabled=True)
    bootstrap = build_bootstrap(registry_upstreams(), EdgeSettings(), extra_http_filters=[extra])
    names = [f["name"] for f in hcm(bootstrap)["http_filters"]]
    assert names == [
        "envoy.filters.http.grpc_web",
        "envoy.filters.http.cors",
        HEADER_LIMITS_FILTER,
        "envoy.filters.http.local_ratelimit",
        "envoy.filters.http.lua",
        "envoy.filters.http.jwt_authn",
        "envoy.filters.http.grpc_json_transcoder",
        "envoy.filters.http.jwt_authn_placeholder",
        "envoy.filters.http.router",
    ]
    lua = http_filter(bootstrap, "envoy.filters.http.lua")
    assert "default_source_code" not in lua  # it runs only where a route names one of its scripts
    assert set(lua["source_codes"]) == {
        HEALTH_ROUTER,
        "refuse-method",
        "refuse-media-type",
        "unknown-service",
        "mesh-only",
        "jwks-rewrite",
    }


def test_local_rate_limit_answers_resource_exhausted(registry_bootstrap: dict[str, Any]) -> None:
    config = http_filter(registry_bootstrap, "envoy.filters.http.local_ratelimit")
    assert config["rate_limited_as_resource_exhausted"] is True
    assert config["token_bucket"] == {"max_tokens": 1000, "tokens_per_fill": 1000, "fill_interval": "1s"}
    assert config["always_consume_default_token_bucket"] is True
    # A bucket per client address (a wildcard entry), and a stricter one per address for logins.
    assert config["descriptors"] == [
        {
            "entries": [{"key": "remote_address"}],
            "token_bucket": {"max_tokens": 200, "tokens_per_fill": 200, "fill_interval": "1s"},
        },
        {
            "entries": [{"key": "bhiv_rule", "value": "login"}, {"key": "remote_address"}],
            "token_bucket": {"max_tokens": 20, "tokens_per_fill": 20, "fill_interval": "60s"},
        },
    ]
    assert config["max_dynamic_descriptors"] == 10000
    [login] = [limit["actions"][0]["header_value_match"] for limit in config["rate_limits"][1:]]
    assert login["headers"][0]["name"] == ":path"
    methods = {method_path(m) for service in all_services() for m in service.methods}
    assert set(LOGIN_METHODS) <= methods
    # Both default to 0 %, which would leave the limiter inert.
    for key in ("filter_enabled", "filter_enforced"):
        assert config[key]["default_value"] == {"numerator": 100}


def test_edge_best_practice_limits(registry_bootstrap: dict[str, Any]) -> None:
    manager = hcm(registry_bootstrap)
    assert manager["use_remote_address"] is True
    assert manager["normalize_path"] is True
    assert manager["merge_slashes"] is True
    assert manager["common_http_protocol_options"]["headers_with_underscores_action"] == "DROP_HEADER"
    assert manager["http2_protocol_options"]["max_concurrent_streams"] == 100
    # An invalid header field resets its stream, not the connection (found by experiment).
    assert manager["http2_protocol_options"]["override_stream_error_on_invalid_http_message"] is True
    assert manager["http2_protocol_options"]["initial_stream_window_size"] == 65536
    assert manager["http2_protocol_options"]["initial_connection_window_size"] == 1048576
    assert manager["stream_idle_timeout"] == "300s"
    assert manager["request_timeout"] == "300s"
    assert manager["request_headers_timeout"] == "10s"
    assert manager["common_http_protocol_options"]["idle_timeout"] == "3600s"
    assert "xff_num_trusted_hops" not in manager  # 0: clients connect directly, x-forwarded-for is ignored
    assert "codec_type" not in manager  # AUTO is the proto default, so proto3 JSON omits it
    assert (
        registry_bootstrap["static_resources"]["listeners"][0]["per_connection_buffer_limit_bytes"] == 32768
    )
    for cluster in registry_bootstrap["static_resources"]["clusters"]:
        assert cluster["per_connection_buffer_limit_bytes"] == 32768
        assert cluster["connect_timeout"] == "1s"
        if cluster["name"] == JWKS_CLUSTER:
            continue  # HTTP/1.1 to the edge's own listener, not a gRPC service
        assert "grpc_health_check" in cluster["health_checks"][0]
        options = cluster["typed_extension_protocol_options"][
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
        ]
        http2 = options["explicit_http_config"]["http2_protocol_options"]
        assert (http2["initial_stream_window_size"], http2["initial_connection_window_size"]) == (
            65536,
            1048576,
        )
    overload = registry_bootstrap["overload_manager"]
    monitors = {monitor["name"]: monitor["typed_config"] for monitor in overload["resource_monitors"]}
    assert monitors["envoy.resource_monitors.fixed_heap"]["max_heap_size_bytes"] == str(1024**3)
    assert (
        monitors["envoy.resource_monitors.global_downstream_max_connections"][
            "max_active_downstream_connections"
        ]
        == "50000"
    )
    actions = {
        action["name"]: (action["triggers"][0]["name"], action["triggers"][0]["threshold"]["value"])
        for action in overload["actions"]
    }
    assert actions == {
        "envoy.overload_actions.shrink_heap": ("envoy.resource_monitors.fixed_heap", 0.95),
        "envoy.overload_actions.stop_accepting_requests": ("envoy.resource_monitors.fixed_heap", 0.98),
    }


EDGE_ENV = {
    "BHIV_EDGE_STREAM_IDLE_TIMEOUT_SECONDS": "120",
    "BHIV_EDGE_REQUEST_HEADERS_TIMEOUT_SECONDS": "5",
    "BHIV_EDGE_IDLE_TIMEOUT_SECONDS": "600",
    "BHIV_EDGE_REQUEST_TIMEOUT_SECONDS": "90",
    "BHIV_EDGE_UNARY_TIMEOUT_SECONDS": "15.5",
    "BHIV_EDGE_STREAMING_IDLE_TIMEOUT_SECONDS": "7200",
    "BHIV_EDGE_CONNECT_TIMEOUT_SECONDS": "2",
    "BHIV_EDGE_BUFFER_LIMIT_BYTES": "16384",
    "BHIV_EDGE_MAX_CONCURRENT_STREAMS": "50",
    "BHIV_EDGE_INITIAL_STREAM_WINDOW_BYTES": "131072",
    "BHIV_EDGE_INITIAL_CONNECTION_WINDOW_BYTES": "2097152",
    "BHIV_EDGE_MAX_CONNECTIONS": "1000",
    "BHIV_EDGE_MAX_HEAP_BYTES": "536870912",
    "BHIV_EDGE_XFF_TRUSTED_HOPS": "1",
    "BHIV_EDGE_RATE_LIMIT_PER_ADDRESS": "50",
    "BHIV_EDGE_LOGIN_RATE_LIMIT": "5",
    "BHIV_EDGE_RATE_LIMIT_ADDRESSES": "100",
    "BHIV_EDGE_JWKS_CACHE_SECONDS": "2.5",
    "BHIV_EDGE_ACCESS_LOG_FLUSH_SECONDS": "0.25",
}


def test_every_edge_limit_is_a_setting_that_reaches_the_bootstrap(tmp_path: Path) -> None:
    assert {f"BHIV_{setting}" for setting, _ in EDGE_SETTINGS.values()} == set(EDGE_ENV)
    with_service = EDGE_ENV | {"BHIV_EDGE_ACCESS_LOG_SERVICE": "127.0.0.1:50059"}
    settings = EdgeSettings.from_settings(Settings(with_service), listen_port=18080)
    assert settings.listen_port == 18080  # what the caller fixes wins
    bootstrap = build_bootstrap(registry_upstreams(), settings)
    manager = hcm(bootstrap)
    assert manager["stream_idle_timeout"] == "120s"
    assert manager["request_headers_timeout"] == "5s"
    assert manager["common_http_protocol_options"]["idle_timeout"] == "600s"
    assert manager["request_timeout"] == "90s"
    assert manager["xff_num_trusted_hops"] == 1
    assert manager["http2_protocol_options"]["max_concurrent_streams"] == 50
    assert manager["http2_protocol_options"]["initial_stream_window_size"] == 131072
    assert manager["http2_protocol_options"]["initial_connection_window_size"] == 2097152
    assert bootstrap["static_resources"]["listeners"][0]["per_connection_buffer_limit_bytes"] == 16384
    routes = {route["name"]: route for route in virtual_host(bootstrap)["routes"]}
    assert routes["crm"]["route"]["max_stream_duration"]["max_stream_duration"] == "15.500s"
    assert routes["stream-StreamComplete"]["route"]["idle_timeout"] == "7200s"
    cluster = bootstrap["static_resources"]["clusters"][0]
    assert (cluster["connect_timeout"], cluster["per_connection_buffer_limit_bytes"]) == ("2s", 16384)
    monitors = [m["typed_config"] for m in bootstrap["overload_manager"]["resource_monitors"]]
    assert monitors[0]["max_active_downstream_connections"] == "1000"
    assert monitors[1]["max_heap_size_bytes"] == "536870912"
    limits = http_filter(bootstrap, "envoy.filters.http.local_ratelimit")
    assert [d["token_bucket"]["max_tokens"] for d in limits["descriptors"]] == [50, 5]
    assert limits["max_dynamic_descriptors"] == 100
    jwks = http_filter(bootstrap, "envoy.filters.http.jwt_authn")["providers"]["identity"]["remote_jwks"]
    assert jwks["cache_duration"] == "2.500s"
    (_, grpc_log) = manager["access_log"]
    assert grpc_log["typed_config"]["common_config"]["buffer_flush_interval"] == "0.250s"
    validate_config(write_bootstrap(tmp_path / "envoy.json", registry_upstreams(), settings))


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("BHIV_EDGE_UNARY_TIMEOUT_SECONDS", "0", "BHIV_EDGE_UNARY_TIMEOUT_SECONDS must be a number > 0"),
        ("BHIV_EDGE_XFF_TRUSTED_HOPS", "-1", "BHIV_EDGE_XFF_TRUSTED_HOPS must be an integer >= 0"),
        ("BHIV_EDGE_MAX_HEAP_BYTES", "lots", "BHIV_EDGE_MAX_HEAP_BYTES must be an integer >= 1"),
        ("BHIV_EDGE_INITIAL_STREAM_WINDOW_BYTES", "1024", "initial_stream_window_bytes must be between"),
    ],
)
def test_a_bad_edge_setting_is_refused_by_name(name: str, value: str, message: str) -> None:
    with pytest.raises((ConfigError, ValueError), match=message):
        EdgeSettings.from_settings(Settings({name: value}))


def test_header_limits_are_the_services_and_the_codecs_sit_far_above(
    registry_bootstrap: dict[str, Any],
) -> None:
    policies = http_filter(registry_bootstrap, HEADER_LIMITS_FILTER)["rules"]["policies"]
    assert policies.keys() == {TOO_MANY_HEADERS, HEADERS_TOO_LARGE}
    limits = {
        name: policy["condition"]["call_expr"]["args"][1]["const_expr"]["int64_value"]
        for name, policy in policies.items()
    }
    assert limits == {
        TOO_MANY_HEADERS: str(MAX_REQUEST_HEADERS),
        HEADERS_TOO_LARGE: str(MAX_REQUEST_HEADER_BYTES),
    }
    manager = hcm(registry_bootstrap)
    assert manager["max_request_headers_kb"] * 1024 >= 8 * MAX_REQUEST_HEADER_BYTES
    assert manager["common_http_protocol_options"]["max_headers_count"] >= 8 * MAX_REQUEST_HEADERS
    # What the edge forwards, the services take: gRPC counts 32 bytes more for each field.
    assert GRPC_MAX_METADATA_BYTES >= MAX_REQUEST_HEADER_BYTES + 32 * MAX_REQUEST_HEADERS


def test_header_limits_must_sit_under_the_codecs() -> None:
    for overrides in (
        {"max_request_header_bytes": 0},
        {"max_request_header_bytes": 1024 * 1024},
        {"max_request_headers": 0},
        {"max_request_headers": 500},
    ):
        with pytest.raises(ValueError, match="max_request_header"):
            EdgeSettings(**overrides)


def test_access_log_is_json_to_stdout_or_a_file(tmp_path: Path) -> None:
    stdout_log = hcm(build_bootstrap(registry_upstreams(), EdgeSettings()))["access_log"][0]
    assert stdout_log["typed_config"]["@type"].endswith("StdoutAccessLog")
    fields = stdout_log["typed_config"]["log_format"]["json_format"]
    assert fields["peer"] == "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"
    assert fields["grpc_status"] == "%GRPC_STATUS%"
    file_log = hcm(build_bootstrap(registry_upstreams(), EdgeSettings(access_log_path=tmp_path / "a.log")))
    assert file_log["access_log"][0]["typed_config"]["path"] == str(tmp_path / "a.log")


def test_invalid_upstreams_are_refused() -> None:
    with pytest.raises(ValueError, match="duplicate upstream name"):
        build_bootstrap([Upstream.from_spec(SERVICES[0]), Upstream.from_spec(SERVICES[0])], EdgeSettings())
    with pytest.raises(ValueError, match="at least one upstream"):
        build_bootstrap([], EdgeSettings())
    with pytest.raises(ValueError, match="invalid upstream name"):
        Upstream(name=REFLECTION_CLUSTER, host="127.0.0.1", port=1, route_prefix="/x.")
    with pytest.raises(ValueError, match="route_prefix"):
        Upstream(name="crm", host="127.0.0.1", port=1, route_prefix="bhiv.crm.v1")


def test_dns_upstreams_make_strict_dns_clusters() -> None:
    upstream = Upstream(name="crm", host="crm.bhiv.svc", port=50053, route_prefix="/bhiv.crm.v1.")
    clusters = build_bootstrap([upstream], EdgeSettings())["static_resources"]["clusters"]
    assert [cluster["type"] for cluster in clusters] == ["STRICT_DNS", "STRICT_DNS"]


def test_no_client_is_internal_so_every_request_gets_the_edge_headers(
    registry_bootstrap: dict[str, Any],
) -> None:
    # An empty list would be Envoy's default: loopback and RFC 1918 clients internal, keeping the
    # x-envoy-* headers they send (a forged x-envoy-external-address too).
    config = hcm(registry_bootstrap)
    assert config["use_remote_address"] is True
    assert config["internal_address_config"] == {
        "cidr_ranges": [{"address_prefix": "0.0.0.0", "prefix_len": 32}]
    }


def test_upstream_connections_leave_from_the_configured_source_address(tmp_path: Path) -> None:
    settings = EdgeSettings(upstream_source_address="127.0.0.2")
    clusters = build_bootstrap(registry_upstreams(), settings)["static_resources"]["clusters"]
    assert {json.dumps(c["upstream_bind_config"]) for c in clusters if c["name"] != JWKS_CLUSTER} == {
        json.dumps({"source_address": {"address": "127.0.0.2", "port_value": 0}})
    }
    # The edge's call to its own listener (the JWKS) leaves from 127.0.0.1, which is never blocked:
    # to the listener, 127.0.0.2 is an ordinary client address.
    [jwks] = [c for c in clusters if c["name"] == JWKS_CLUSTER]
    assert jwks["upstream_bind_config"] == {"source_address": {"address": "127.0.0.1", "port_value": 0}}
    validate_config(write_bootstrap(tmp_path / "envoy.json", registry_upstreams(), settings))
    default = build_bootstrap(registry_upstreams(), EdgeSettings())["static_resources"]["clusters"]
    assert all("upstream_bind_config" not in c for c in default)
    with pytest.raises(ValueError, match="not an IP address"):
        EdgeSettings(upstream_source_address="edge.local")


def test_the_written_bootstrap_is_owner_only_under_umask_022(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        path = write_bootstrap(tmp_path / "envoy.json", registry_upstreams(), EdgeSettings())
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# ----------------------------------------------------------------------------- a real Envoy


async def test_grpc_call_through_the_edge_reaches_the_service_owning_the_prefix(edge: EnvoyProcess) -> None:
    assert await echo_call(edge.address, "alpha") == (grpc.StatusCode.OK, b"alpha:hi")
    assert await echo_call(edge.address, "beta") == (grpc.StatusCode.OK, b"beta:hi")


async def test_unknown_prefix_is_unimplemented(edge: EnvoyProcess) -> None:
    assert await echo_call(edge.address, "gamma") == (grpc.StatusCode.UNIMPLEMENTED, None)


async def test_health_check_goes_to_the_service_named_in_the_header(edge: EnvoyProcess) -> None:
    async with grpc.aio.insecure_channel(edge.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service="bhiv.beta")
        reply = await stub.Check(request, metadata=((SERVICE_HEADER, "beta"),), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.Check(request, metadata=((SERVICE_HEADER, "alpha"),), timeout=10)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND  # alpha does not know bhiv.beta
        overall = await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)  # no header: any service
        assert overall.status == health_pb2.HealthCheckResponse.SERVING


async def test_grpc_web_post_reaches_the_service_and_reads_the_status_trailer(edge: EnvoyProcess) -> None:
    request = health_pb2.HealthCheckRequest(service="bhiv.alpha").SerializeToString()
    reply = await asyncio.to_thread(
        grpc_web_call,
        edge.address,
        HEALTH_CHECK,
        request,
        {SERVICE_HEADER: "alpha", "origin": ALLOWED_ORIGIN},
    )
    assert reply.http_status == 200
    assert reply.headers["content-type"].startswith("application/grpc-web")
    assert reply.grpc_status == 0
    assert len(reply.messages) == 1
    assert health_pb2.HealthCheckResponse.FromString(reply.messages[0]).status == (
        health_pb2.HealthCheckResponse.SERVING
    )
    assert reply.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "grpc-status" in reply.headers["access-control-expose-headers"].split(",")

    echo = await asyncio.to_thread(grpc_web_call, edge.address, "/bhiv.beta.v1.EchoService/Echo", b"web")
    assert (echo.grpc_status, echo.messages) == (0, [b"beta:web"])


async def test_grpc_web_error_status_reaches_the_browser(edge: EnvoyProcess) -> None:
    request = health_pb2.HealthCheckRequest(service="bhiv.nothing").SerializeToString()
    reply = await asyncio.to_thread(
        grpc_web_call, edge.address, HEALTH_CHECK, request, {SERVICE_HEADER: "alpha"}
    )
    assert (reply.http_status, reply.grpc_status) == (200, grpc.StatusCode.NOT_FOUND.value[0])


async def health_check(
    address: str, service: str, metadata: tuple[tuple[str, str], ...] = ()
) -> tuple[grpc.StatusCode, int | None, str, dict[str, str]]:
    """Check through ``address``: the code, the status (None on error), the message, and every header."""
    async with grpc.aio.insecure_channel(address) as channel:
        call = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), metadata=metadata, timeout=10
        )
        try:
            reply = await call
        except grpc.aio.AioRpcError as error:
            headers = dict((*(error.initial_metadata() or ()), *(error.trailing_metadata() or ())))
            return error.code(), None, error.details() or "", headers
        return grpc.StatusCode.OK, reply.status, "", dict(await call.initial_metadata())


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_health_check_naming_a_service_goes_to_the_service_that_owns_it(edge: EnvoyProcess) -> None:
    # Each name is served by one upstream only; the other answers NOT_FOUND. Round robin over both
    # would answer NOT_FOUND every other call.
    for _ in range(4):
        for name in ("alpha", "beta"):
            code, status, _, _ = await health_check(edge.address, f"bhiv.{name}.v1.EchoService")
            assert (code, status) == (grpc.StatusCode.OK, SERVING), name
    request = health_pb2.HealthCheckRequest(service="bhiv.beta.v1.EchoService").SerializeToString()
    for _ in range(4):
        web = await asyncio.to_thread(
            grpc_web_call, edge.address, HEALTH_CHECK, request, {"origin": ALLOWED_ORIGIN}
        )
        assert (web.grpc_status, web.messages) == (0, [b"\x08\x01"])  # SERVING


async def test_health_watch_naming_a_service_streams_from_the_service_that_owns_it(
    edge: EnvoyProcess,
) -> None:
    async with grpc.aio.insecure_channel(edge.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for _ in range(4):
            call = stub.Watch(health_pb2.HealthCheckRequest(service="bhiv.alpha.v1.EchoService"), timeout=10)
            first = await call.read()
            call.cancel()
            assert first.status == SERVING  # beta would say SERVICE_UNKNOWN


async def test_health_router_reads_long_names_and_skips_unknown_fields(tmp_path: Path) -> None:
    long_name = "bhiv.delta.v1." + "Long" * 60  # a two-byte length
    delta_health = await serving_health("delta")
    await delta_health.set(long_name, SERVING)
    gamma, delta = await start_upstream("gamma"), await start_upstream("delta", delta_health)
    settings = free_settings()
    path = write_bootstrap(tmp_path / "envoy.json", [gamma[1], delta[1]], settings)
    name = health_pb2.HealthCheckRequest(service=long_name).SerializeToString()
    # Fields this version does not know, before and after the name: a varint, a 64-bit, a 32-bit
    # and a length-delimited one.
    unknown = b"\x38\x96\x01" + b"\x41" + bytes(8) + b"\x4d" + bytes(4) + b"\x52\x02hi"
    try:
        async with (
            EnvoyProcess(path, settings, concurrency=1) as envoy,
            grpc.aio.insecure_channel(envoy.address) as channel,
        ):
            check = channel.unary_unary(HEALTH_CHECK, request_serializer=None, response_deserializer=None)
            for request in (name, unknown + name, name + unknown):
                for _ in range(2):  # gamma would answer NOT_FOUND
                    reply = await check(request, timeout=10)
                    assert health_pb2.HealthCheckResponse.FromString(reply).status == SERVING
    finally:
        await gamma[0].stop(None)
        await delta[0].stop(None)


async def test_health_check_naming_no_service_of_the_mesh_is_not_found(edge: EnvoyProcess) -> None:
    for name in ("bhiv.gamma.v1.EchoService", "grpc.health.v1.Health", "nothing"):
        code, _, _, _ = await health_check(edge.address, name)
        assert code == grpc.StatusCode.NOT_FOUND, name


async def test_unknown_service_header_is_not_found_not_serving(edge: EnvoyProcess) -> None:
    code, _, message, _ = await health_check(edge.address, "", ((SERVICE_HEADER, "gamma"),))
    assert code == grpc.StatusCode.NOT_FOUND
    assert message == "x-bhiv-service names no service of the mesh (alpha, beta)"
    web = await asyncio.to_thread(
        grpc_web_call, edge.address, HEALTH_CHECK, b"", {SERVICE_HEADER: "gamma", "origin": ALLOWED_ORIGIN}
    )
    assert (web.http_status, web.grpc_status, web.messages) == (200, grpc.StatusCode.NOT_FOUND.value[0], [])
    assert web.headers["access-control-allow-origin"] == ALLOWED_ORIGIN  # a page can read it
    code, status, _, _ = await health_check(edge.address, "", ((SERVICE_HEADER, "alpha"),))
    assert (code, status) == (grpc.StatusCode.OK, SERVING)  # a known one still reaches its service


async def test_health_list_and_mesh_wide_watch_need_the_service_header(edge: EnvoyProcess) -> None:
    async with grpc.aio.insecure_channel(edge.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        listed = await stub.List(
            health_pb2.HealthListRequest(), metadata=((SERVICE_HEADER, "beta"),), timeout=10
        )
        assert set(listed.statuses) == {"", "bhiv.beta", "bhiv.beta.v1.EchoService"}
        with pytest.raises(grpc.aio.AioRpcError) as listing:
            await stub.List(health_pb2.HealthListRequest(), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as watching:
            await stub.Watch(health_pb2.HealthCheckRequest(), timeout=10).read()
    assert listing.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "List one service with the x-bhiv-service header (alpha, beta)" in (listing.value.details() or "")
    assert watching.value.code() == grpc.StatusCode.UNIMPLEMENTED
    web = await asyncio.to_thread(grpc_web_call, edge.address, "/grpc.health.v1.Health/List", b"")
    assert web.grpc_status == grpc.StatusCode.UNIMPLEMENTED.value[0]


async def test_health_request_the_edge_cannot_read_is_invalid_argument(edge: EnvoyProcess) -> None:
    message = health_pb2.HealthCheckRequest(service="bhiv.alpha.v1.EchoService").SerializeToString()
    compressed_flag = b"\x01" + len(message).to_bytes(4, "big") + message
    headers = await asyncio.to_thread(h2_grpc_headers_only, edge.address, HEALTH_CHECK, body=compressed_flag)
    assert headers["grpc-status"] == str(grpc.StatusCode.INVALID_ARGUMENT.value[0])
    assert "uncompressed" in headers["grpc-message"]


async def test_health_request_too_large_for_the_router_is_resource_exhausted(edge: EnvoyProcess) -> None:
    # The health router buffers the body to read the name, as much as a stream's window (64 KiB);
    # Envoy's own refusal of more was a 413 that gRPC callers saw as UNKNOWN "Payload Too Large".
    name = "bhiv.alpha.v1." + "x" * 100_000
    code, _, message, _ = await health_check(edge.address, name)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "x-bhiv-service" in message
    # gRPC-web over HTTP/1.1 has the connection's buffer limit (32 KiB), under the fixture's 64 KiB
    # request limit.
    request = health_pb2.HealthCheckRequest(service="bhiv.alpha.v1." + "x" * 40_000).SerializeToString()
    web = await asyncio.to_thread(grpc_web_call, edge.address, HEALTH_CHECK, request)
    assert (web.http_status, web.messages) == (413, [])
    assert "x-bhiv-service" in web.grpc_message
    # With the header, the name is not read at the edge: the service answers.
    code, _, _, _ = await health_check(edge.address, name, ((SERVICE_HEADER, "alpha"),))
    assert code == grpc.StatusCode.NOT_FOUND


class CountingHealth(HealthServicer):
    """Health that counts the health router's own checks."""

    def __init__(self) -> None:
        super().__init__()
        self.probes = 0

    async def Check(self, request: health_pb2.HealthCheckRequest, context: Any) -> Any:
        agent = dict(context.invocation_metadata() or ()).get("user-agent", "")
        self.probes += agent.startswith(PROBE_USER_AGENT)
        return await super().Check(request, context)


async def mesh_view_until(
    address: str, done: Callable[[grpc.StatusCode, dict[str, str]], bool], timeout: float = 15.0
) -> tuple[grpc.StatusCode, int | None, dict[str, str]]:
    """Checks "" until ``done(code, headers)``: the edge may answer from a view up to a second old."""
    deadline = time.monotonic() + timeout
    while True:
        code, status, _, headers = await health_check(address, "")
        if done(code, headers) or time.monotonic() > deadline:
            return code, status, headers
        await asyncio.sleep(0.1)


async def test_empty_name_is_serving_only_while_every_service_serves(tmp_path: Path) -> None:
    gamma = await start_upstream("gamma")
    delta_health = await serving_health("delta")
    delta = await start_upstream("delta", delta_health)
    settings = free_settings()
    path = write_bootstrap(tmp_path / "envoy.json", [gamma[1], delta[1]], settings)
    try:
        async with EnvoyProcess(path, settings, concurrency=1) as envoy:
            code, status, _, headers = await health_check(envoy.address, "")
            assert (code, status) == (grpc.StatusCode.OK, SERVING)
            assert NOT_SERVING_HEADER not in headers
            await delta_health.set("", NOT_SERVING)
            code, status, headers = await mesh_view_until(envoy.address, lambda _, h: NOT_SERVING_HEADER in h)
            assert (code, status, headers[NOT_SERVING_HEADER]) == (grpc.StatusCode.OK, NOT_SERVING, "delta")
            for _ in range(3):  # not the luck of the draw: every call, whichever service it would reach
                code, status, _, headers = await health_check(envoy.address, "")
                assert (code, status, headers[NOT_SERVING_HEADER]) == (
                    grpc.StatusCode.OK,
                    NOT_SERVING,
                    "delta",
                )
            await delta[0].stop(None)
            code, _, headers = await mesh_view_until(envoy.address, lambda c, _: c != grpc.StatusCode.OK)
            assert (code, headers[NOT_SERVING_HEADER]) == (grpc.StatusCode.UNAVAILABLE, "delta")
            # What a service says of itself with the header is unchanged.
            code, status, _, _ = await health_check(envoy.address, "", ((SERVICE_HEADER, "gamma"),))
            assert (code, status) == (grpc.StatusCode.OK, SERVING)
    finally:
        await gamma[0].stop(None)
        await delta[0].stop(None)


async def test_a_flood_of_empty_name_checks_asks_each_service_about_once_a_second(tmp_path: Path) -> None:
    counting = CountingHealth()
    await counting.set("", SERVING)
    upstream = await start_upstream("gamma", counting)
    settings = free_settings()
    path = write_bootstrap(tmp_path / "envoy.json", [upstream[1]], settings)
    try:
        async with EnvoyProcess(path, settings, concurrency=1) as envoy:
            started = time.monotonic()
            for _ in range(30):
                code, status, _, _ = await health_check(envoy.address, "")
                assert (code, status) == (grpc.StatusCode.OK, SERVING)
            seconds = time.monotonic() - started
    finally:
        await upstream[0].stop(None)
    # One look per wall-clock second the calls touched (one worker), not one per call.
    assert 1 <= counting.probes <= int(seconds) + 2


def connect_post(
    address: str, path: str, content_type: str, **headers: str
) -> tuple[int, dict[str, str], bytes]:
    """A POST the way a Connect client sends a unary call, over HTTP/1.1."""
    host, port = address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request(
            "POST",
            path,
            body=b"{}",
            headers={"content-type": content_type, "connect-protocol-version": "1", **headers},
        )
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


async def test_connect_protocol_is_refused_with_415_and_a_hint_a_browser_can_read(edge: EnvoyProcess) -> None:
    path = "/bhiv.alpha.v1.EchoService/Echo"
    for content_type in ("application/json", "application/proto", "application/connect+json"):
        status, headers, body = await asyncio.to_thread(
            connect_post, edge.address, path, content_type, origin=ALLOWED_ORIGIN
        )
        assert status == 415, content_type
        assert headers["content-type"] == "application/json"
        assert json.loads(body) == {"code": "unimplemented", "message": PROTOCOL_HINT}
        assert headers["access-control-allow-origin"] == ALLOWED_ORIGIN  # the page can read the hint
    assert "createGrpcWebTransport" in PROTOCOL_HINT
    # The same call in gRPC-web goes through.
    web = await asyncio.to_thread(grpc_web_call, edge.address, path, b"web", {"origin": ALLOWED_ORIGIN})
    assert (web.http_status, web.grpc_status, web.messages) == (200, 0, [b"alpha:web"])


async def test_other_methods_are_refused_with_405_and_a_hint(edge: EnvoyProcess) -> None:
    for method, path, headers in (
        ("GET", "/", {}),
        ("GET", "/bhiv.alpha.v1.EchoService/Echo", {}),
        ("DELETE", "/bhiv.alpha.v1.EchoService/Echo", {}),
        ("OPTIONS", "/bhiv.alpha.v1.EchoService/Echo", {}),  # not a CORS preflight
    ):
        host, port = edge.address.rsplit(":", 1)
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        connection.request(method, path, headers=headers)
        response = connection.getresponse()
        body = response.read()
        connection.close()
        assert (response.status, response.getheader("allow")) == (405, "POST"), (method, path)
        assert json.loads(body)["message"] == PROTOCOL_HINT
    assert await echo_call(edge.address, "alpha") == (grpc.StatusCode.OK, b"alpha:hi")  # gRPC still passes


async def test_connect_over_http2_is_refused_with_415(edge: EnvoyProcess) -> None:
    headers = [
        (":method", "POST"),
        (":path", "/bhiv.alpha.v1.EchoService/Echo"),
        ("content-type", "application/json"),
        ("connect-protocol-version", "1"),
    ]
    received, body = await asyncio.to_thread(h2_exchange, edge.address, headers, b"{}")
    assert received[":status"] == "415"
    assert json.loads(body) == {"code": "unimplemented", "message": PROTOCOL_HINT}
    # A client still sending its body gets the refusal at once.
    received, _ = await asyncio.to_thread(h2_exchange, edge.address, headers, b"{", end=False)
    assert received[":status"] == "415"


async def test_cors_preflight_admits_trace_context_request_id_and_connect_headers(edge: EnvoyProcess) -> None:
    asked = "traceparent,tracestate,x-request-id,connect-protocol-version,connect-timeout-ms"
    status, headers = await asyncio.to_thread(
        http_request,
        edge.address,
        "OPTIONS",
        "/bhiv.alpha.v1.EchoService/Echo",
        {
            "origin": ALLOWED_ORIGIN,
            "access-control-request-method": "POST",
            "access-control-request-headers": asked,
        },
    )
    assert (status, headers["access-control-allow-origin"]) == (200, ALLOWED_ORIGIN)
    allowed = set(headers["access-control-allow-headers"].split(","))
    assert set(asked.split(",")) <= allowed
    assert "x-evil" not in allowed
    assert "x-request-id" in headers["access-control-expose-headers"].split(",")


async def test_cors_preflight_allows_local_origin_only(edge: EnvoyProcess) -> None:
    status, headers = await asyncio.to_thread(preflight, edge.address, ALLOWED_ORIGIN)
    assert status == 200
    assert headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "POST" in headers["access-control-allow-methods"]
    assert "x-grpc-web" in headers["access-control-allow-headers"]

    status, headers = await asyncio.to_thread(preflight, edge.address, "http://evil.example")
    assert "access-control-allow-origin" not in headers
    status, headers = await asyncio.to_thread(preflight, edge.address, "http://localhost.evil.example:3000")
    assert "access-control-allow-origin" not in headers


async def test_grpc_web_request_declaring_a_body_over_the_limit_gets_413(edge: EnvoyProcess) -> None:
    big = b"x" * (64 * 1024)  # the frame header pushes it just over the edge fixture's 64 KiB limit
    reply = await asyncio.to_thread(grpc_web_call, edge.address, "/bhiv.alpha.v1.EchoService/Echo", big)
    assert (reply.http_status, reply.messages) == (413, [])
    assert "larger than 65536 bytes" in reply.grpc_message
    small = await asyncio.to_thread(
        grpc_web_call, edge.address, "/bhiv.alpha.v1.EchoService/Echo", b"x" * 1000
    )
    assert (small.http_status, small.grpc_status) == (200, 0)


async def test_grpc_request_declaring_a_body_over_the_limit_is_resource_exhausted(edge: EnvoyProcess) -> None:
    headers = await asyncio.to_thread(
        h2_grpc_headers_only, edge.address, "/bhiv.alpha.v1.EchoService/Echo", 70_000
    )
    assert headers[":status"] == "200"
    assert headers["grpc-status"] == str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0])
    assert "larger than 65536 bytes" in headers["grpc-message"]


ECHO = "/bhiv.alpha.v1.EchoService/Echo"


@dataclass(frozen=True)
class Outcome:
    """What a call got, and whether an open Health/Watch on the same channel (connection) lived on."""

    code: grpc.StatusCode
    message: str
    watch: grpc.StatusCode | None  # None: still open


async def call_beside_a_watch(
    address: str, metadata: Sequence[tuple[str, str | bytes]], path: str = ECHO
) -> Outcome:
    """Opens a Health/Watch, then makes a call with ``metadata`` on the same channel, then another.

    The later call is answered only once whatever the first did to the connection has reached the
    client, so then the Watch has ended if the connection has.
    """
    async with grpc.aio.insecure_channel(address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), metadata=((SERVICE_HEADER, "alpha"),)
        )
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        call = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
        try:
            await call(b"hi", metadata=tuple(metadata), timeout=10)
            code, message = grpc.StatusCode.OK, ""
        except grpc.aio.AioRpcError as error:
            code, message = error.code(), error.details() or ""
        echo = channel.unary_unary(ECHO, request_serializer=None, response_deserializer=None)
        assert await echo(b"again", timeout=10) == b"alpha:again"
        ended = await watch.code() if watch.done() else None
        watch.cancel()
        return Outcome(code, message, ended)


def fields(count: int, value: str = "v") -> list[tuple[str, str]]:
    return [(f"x-field-{i:04}", value) for i in range(count)]


TOO_MANY = "too many request header fields: at most 100,"
TOO_LARGE = "request headers too large: at most 8192 bytes"


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        pytest.param(fields(MAX_REQUEST_HEADERS), TOO_MANY, id="more-fields-than-the-limit"),
        pytest.param([(f"x{i}", "") for i in range(900)], TOO_MANY, id="900-short-fields"),
        pytest.param([("x-big", "a" * MAX_REQUEST_HEADER_BYTES)], TOO_LARGE, id="one-value-over-the-limit"),
        pytest.param([("x-big", "a" * 64 * 1024)], TOO_LARGE, id="one-64-kib-value"),
        pytest.param(
            [("authorization", "Bearer " + "a" * 60 * 1024)], TOO_LARGE, id="a-60-kib-authorization"
        ),
        pytest.param(fields(4, "a" * 20 * 1024), TOO_LARGE, id="fields-of-80-kib-in-all"),
        pytest.param([("traceparent", "00-" + "a" * 10 * 1024)], TOO_LARGE, id="a-10-kib-traceparent"),
        # Fields over 64 KiB, which Envoy's default HTTP/2 codec could not decode: it ended the
        # whole connection (GOAWAY) before any filter ran.
        pytest.param(
            [("authorization", "Bearer " + "a" * 64 * 1024)], TOO_LARGE, id="a-64-kib-authorization"
        ),
        pytest.param([("x-big-bin", b"\x00" * 64 * 1024)], TOO_LARGE, id="a-64-kib-binary-value"),
        pytest.param([("x-big", "a" * (1 << 20))], TOO_LARGE, id="a-1-mib-value"),
        pytest.param([("grpc-trace-bin", b"\x00" * (1 << 20))], TOO_LARGE, id="a-1-mib-binary-value"),
    ],
)
async def test_headers_over_the_limits_are_resource_exhausted_and_the_connection_lives_on(
    edge: EnvoyProcess, metadata: list[tuple[str, str | bytes]], message: str
) -> None:
    outcome = await call_beside_a_watch(edge.address, metadata)
    assert (outcome.code, outcome.watch) == (grpc.StatusCode.RESOURCE_EXHAUSTED, None)
    assert outcome.message.startswith(message)


async def test_headers_just_under_the_limits_are_forwarded(edge: EnvoyProcess) -> None:
    # grpc's own fields, the pseudo-headers and the edge's own take under 1 KiB and 20 fields.
    for metadata in (fields(MAX_REQUEST_HEADERS - 20), [("x-big", "a" * (MAX_REQUEST_HEADER_BYTES - 1024))]):
        outcome = await call_beside_a_watch(edge.address, metadata)
        assert (outcome.code, outcome.watch) == (grpc.StatusCode.OK, None)


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param(fields(1000), id="1000-fields"),
        pytest.param(fields(3, "a" * 900_000), id="2.7-mb-in-all"),
    ],
)
async def test_more_than_the_codec_takes_resets_only_that_stream(
    edge: EnvoyProcess, metadata: list[tuple[str, str]]
) -> None:
    # Past the codec's backstop (1000 fields, 2 MiB) Envoy's HTTP/2 codec resets the stream before
    # any filter sees it, so no status can be sent; the connection's other streams go on.
    outcome = await call_beside_a_watch(edge.address, metadata)
    assert (outcome.code, outcome.watch) == (grpc.StatusCode.INTERNAL, None)
    assert "RST_STREAM" in outcome.message


@pytest.mark.parametrize(
    "name", ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"]
)
async def test_a_connection_specific_field_resets_only_that_stream(edge: EnvoyProcess, name: str) -> None:
    # HTTP/2 forbids a client these fields (RFC 9113, 8.2.2): the request is malformed, and a
    # malformed request is answered with a stream reset (8.1.1), so no status can be sent. The
    # connection's other streams go on (override_stream_error_on_invalid_http_message).
    outcome = await call_beside_a_watch(edge.address, [(name, "close")])
    assert (outcome.code, outcome.watch) == (grpc.StatusCode.INTERNAL, None)
    assert "RST_STREAM" in outcome.message


async def test_a_host_field_that_is_no_authority_resets_only_that_stream(edge: EnvoyProcess) -> None:
    # An HTTP/2 client must not send a Host that differs from :authority (RFC 9113, 8.3.1); one
    # that is not even an authority makes the request malformed: a reset of that stream alone.
    outcome = await call_beside_a_watch(edge.address, [("host", "gjOVz|IE)d=;:O!&")])
    assert (outcome.code, outcome.watch) == (grpc.StatusCode.INTERNAL, None)
    assert "RST_STREAM" in outcome.message


async def test_a_field_over_twice_the_codec_backstop_ends_the_connection(edge: EnvoyProcess) -> None:
    # The header decoder gives up on a field over about twice the backstop (4 MiB), and a decoding
    # error is a connection error (RFC 9113, 4.3): GOAWAY, every stream of the connection ends.
    # The edge lives on.
    outcome = await call_beside_a_watch(edge.address, [("x-big", "a" * (5 << 20))])
    assert (outcome.code, outcome.watch) == (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE)
    assert await echo_call(edge.address, "alpha") == (grpc.StatusCode.OK, b"alpha:hi")


async def test_a_header_name_with_an_underscore_is_dropped_and_the_call_goes_on(edge: EnvoyProcess) -> None:
    async with grpc.aio.insecure_channel(edge.address) as channel:
        call = channel.unary_unary(
            "/bhiv.alpha.v1.EchoService/Headers", request_serializer=None, response_deserializer=None
        )
        received = await call(b"", metadata=(("x_sneaky", "1"), ("x-plain", "1")), timeout=10)
    assert "x-plain" in received.decode().split()
    assert not {"x_sneaky", "x-sneaky"} & set(received.decode().split())
    web = await asyncio.to_thread(
        grpc_web_call,
        edge.address,
        "/bhiv.alpha.v1.EchoService/Headers",
        b"",
        {"x_sneaky": "1", "x-plain": "1"},
    )
    assert (web.http_status, web.grpc_status) == (200, 0)
    assert "x-plain" in web.messages[0].decode().split()
    assert "x_sneaky" not in web.messages[0].decode().split()


async def test_grpc_web_headers_over_the_limits_get_431_a_browser_can_read(edge: EnvoyProcess) -> None:
    origin = {"origin": ALLOWED_ORIGIN}
    for headers, message in (
        ({"x-big": "a" * MAX_REQUEST_HEADER_BYTES}, TOO_LARGE),
        (dict(fields(MAX_REQUEST_HEADERS)), TOO_MANY),
    ):
        reply = await asyncio.to_thread(grpc_web_call, edge.address, ECHO, b"hi", {**origin, **headers})
        assert (reply.http_status, reply.messages) == (431, [])
        assert reply.grpc_message.startswith(message)
        assert reply.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    # Past the codec's backstop: HTTP/1.1's codec answers 431 itself, before CORS.
    reply = await asyncio.to_thread(grpc_web_call, edge.address, ECHO, b"hi", dict(fields(3, "a" * 900_000)))
    assert reply.http_status == 431
    under = await asyncio.to_thread(
        grpc_web_call, edge.address, ECHO, b"hi", {**origin, "x-big": "a" * (MAX_REQUEST_HEADER_BYTES - 1024)}
    )
    assert (under.http_status, under.grpc_status, under.messages) == (200, 0, [b"alpha:hi"])


async def test_a_path_with_an_escaped_slash_is_invalid_argument(edge: EnvoyProcess) -> None:
    outcome = await call_beside_a_watch(edge.address, [], path="/bhiv.alpha.v1.EchoService%2FEcho")
    assert (outcome.code, outcome.watch) == (grpc.StatusCode.INVALID_ARGUMENT, None)
    assert outcome.message == "malformed request: path_normalization_failed"
    web = await asyncio.to_thread(grpc_web_call, edge.address, "/bhiv.alpha.v1.EchoService%2FEcho", b"hi")
    assert web.http_status == 400


async def test_grpcurl_lists_services_through_the_edge_reflection_route(edge: EnvoyProcess) -> None:
    result = await asyncio.to_thread(
        subprocess.run,
        [str(find_tool("grpcurl")), "-plaintext", edge.address, "list"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "grpc.health.v1.Health" in result.stdout.split()


async def test_rate_limit_answers_resource_exhausted_after_the_bucket_empties(
    upstreams: list[Upstream], tmp_path: Path
) -> None:
    access_log = tmp_path / "access.log"
    settings = free_settings(
        rate_limit_tokens_per_fill=2, rate_limit_fill_interval_s=60, access_log_path=access_log
    )
    path = write_bootstrap(tmp_path / "envoy.json", upstreams, settings)
    async with EnvoyProcess(path, settings, concurrency=2) as envoy:
        codes = [(await echo_call(envoy.address, "alpha"))[0] for _ in range(4)]
        assert codes == [
            grpc.StatusCode.OK,
            grpc.StatusCode.OK,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        ]
        web = await asyncio.to_thread(grpc_web_call, envoy.address, "/bhiv.alpha.v1.EchoService/Echo", b"hi")
        # What a gRPC-web client reads as RESOURCE_EXHAUSTED: a trailers-only 200 (HTTP 429 would
        # read as UNAVAILABLE, which clients retry).
        assert (web.http_status, web.grpc_status, web.grpc_message) == (
            200,
            grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
            RATE_LIMITED_MESSAGE,
        )
        assert web.headers["content-type"] == "application/grpc-web+proto"
        assert web.messages == []
        # CORS runs before the limiter: preflights are answered without spending tokens.
        status, headers = await asyncio.to_thread(preflight, envoy.address, ALLOWED_ORIGIN)
        assert (status, headers["access-control-allow-origin"]) == (200, ALLOWED_ORIGIN)
    # Envoy flushes the access log on exit; the rejected calls are in it, for sentinel to see.
    entries = [json.loads(line) for line in access_log.read_text().splitlines()]
    grpc_entries = [entry for entry in entries if entry["protocol"] == "HTTP/2"]
    assert [entry["grpc_status"] for entry in grpc_entries] == [
        "OK",
        "OK",
        "ResourceExhausted",
        "ResourceExhausted",
    ]
    limited = grpc_entries[-1]
    assert limited["peer"] == "127.0.0.1"
    assert limited["path"] == "/bhiv.alpha.v1.EchoService/Echo"
    assert limited["response_flags"] == "RL"
    assert limited["upstream_host"] is None  # rejected at the edge (the route's cluster is still named)
    assert grpc_entries[0]["upstream_host"] == f"127.0.0.1:{upstreams[0].port}"


def test_envoy_process_reports_a_port_clash_with_envoys_log(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = EdgeSettings(listen_port=taken.getsockname()[1], admin_port=free_port())
        path = write_bootstrap(tmp_path / "envoy.json", dead_upstream(), settings)
        envoy = EnvoyProcess(path, settings, concurrency=1)
        with pytest.raises(EnvoyError, match="Address already in use"):
            envoy.start()
        assert not envoy.running


def test_envoy_process_runs_as_a_sync_context_manager(tmp_path: Path) -> None:
    settings = free_settings()
    path = write_bootstrap(tmp_path / "envoy.json", dead_upstream(), settings)
    with EnvoyProcess(path, settings, concurrency=1) as envoy:
        assert envoy.running
        status, _ = http_request(envoy.admin_address, "GET", "/ready", {})
        assert status == 200
    assert not envoy.running
    assert envoy.stop() == 0  # SIGTERM is a clean exit; stopping twice is harmless


async def test_cancelled_async_start_leaves_no_envoy_running(tmp_path: Path) -> None:
    # An upstream that accepts TCP but never answers keeps Envoy initialising (its first health
    # check waits for the 1 s timeout), so the cancellation lands while start() is still waiting.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        upstream = Upstream(name="alpha", host="127.0.0.1", port=silent.getsockname()[1], route_prefix="/a.")
        settings = free_settings()
        path = write_bootstrap(tmp_path / "envoy.json", [upstream], settings)
        envoy = EnvoyProcess(path, settings, concurrency=1)
        task = asyncio.create_task(envoy.__aenter__())
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert envoy.pid is None or not envoy.running
        with pytest.raises(EnvoyError, match="starts once"):
            envoy.start()


def test_mesh_only_methods_are_methods_of_the_contracts_refused_before_any_service_route(
    registry_bootstrap: dict[str, Any],
) -> None:
    methods = {method_path(m) for service in all_services() for m in service.methods}
    assert set(MESH_ONLY_METHODS) <= methods
    routes = virtual_host(registry_bootstrap)["routes"]
    names = [route["name"] for route in routes]
    for path in MESH_ONLY_METHODS:
        [route] = [route for route in routes if route["match"].get("prefix") == path]
        assert route["typed_per_filter_config"]["envoy.filters.http.lua"]["name"] == "mesh-only"
        assert names.index(route["name"]) < names.index("identity")


# ----------------------------------------------------------------------------- edge limits, live


async def start_llm_upstream() -> tuple[grpc.aio.Server, Upstream]:
    """A fake ``llm`` (the contracts' prefix, so the edge finds ``StreamComplete`` streaming).

    ``Complete`` (unary) answers after the number of seconds its request says; ``StreamComplete``
    sends one message per 0.5 s, as many as its request says.
    """
    server = grpc.aio.server()

    async def complete(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        await asyncio.sleep(float(request))
        return b"done"

    async def stream(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> AsyncIterator[bytes]:
        for index in range(int(request)):
            await asyncio.sleep(0.5)
            yield str(index).encode()

    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "bhiv.llm.v1.CompletionService",
                {
                    "Complete": grpc.unary_unary_rpc_method_handler(complete),
                    "StreamComplete": grpc.unary_stream_rpc_method_handler(stream),
                },
            ),
        )
    )
    health_pb2_grpc.add_HealthServicer_to_server(await serving_health("llm"), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, Upstream(name="llm", host="127.0.0.1", port=port, route_prefix="/bhiv.llm.v1.")


async def test_a_unary_call_over_the_unary_timeout_is_deadline_exceeded_and_a_longer_stream_goes_on(
    tmp_path: Path,
) -> None:
    server, upstream = await start_llm_upstream()
    try:
        settings = free_settings(unary_timeout_s=1.0)
        path = write_bootstrap(tmp_path / "envoy.json", [upstream], settings)
        async with (
            EnvoyProcess(path, settings, concurrency=1) as envoy,
            grpc.aio.insecure_channel(envoy.address) as channel,
        ):
            complete = channel.unary_unary("/bhiv.llm.v1.CompletionService/Complete")
            assert await complete(b"0", timeout=20) == b"done"
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await complete(b"30")  # the service would answer after 30 s; no client deadline
            # Only the edge's limit can end it. Envoy passes the limit on as grpc-timeout too, so the
            # service may give up first: the same code, with grpc's message instead of the edge's.
            assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            edge_message = "deadline exceeded at the edge: the call's grpc-timeout, or the edge's limit"
            assert error.value.details() in (f"{edge_message} for unary calls (1 s)", "Deadline Exceeded")
            # A longer deadline of the client's own is capped at the edge's limit: a call the service
            # would answer after 8 s, within the client's 25 s, ends at the edge's 1 s.
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await complete(b"8", timeout=25)
            assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            # A server stream runs 3 s, three times the unary timeout, and ends on its own.
            stream = channel.unary_stream("/bhiv.llm.v1.CompletionService/StreamComplete")
            assert [message async for message in stream(b"6", timeout=30)] == [
                str(i).encode() for i in range(6)
            ]
    finally:
        await server.stop(None)


async def test_over_the_heap_budget_the_edge_refuses_new_requests_as_overloaded(
    upstreams: list[Upstream], tmp_path: Path
) -> None:
    # Envoy's heap is far above 1 MiB from its start: the stop_accepting_requests action is on.
    settings = free_settings(max_heap_bytes=1024 * 1024)
    path = write_bootstrap(tmp_path / "envoy.json", upstreams, settings)
    async with EnvoyProcess(path, settings, concurrency=1) as envoy:
        deadline = time.monotonic() + 30
        while (code := (await echo_call(envoy.address, "alpha"))[0]) == grpc.StatusCode.OK:
            assert time.monotonic() < deadline, "the overload action never engaged"
            await asyncio.sleep(0.1)  # the overload manager measures every 250 ms
        assert code == grpc.StatusCode.UNAVAILABLE
        stats = await asyncio.to_thread(
            admin_text, envoy.admin_address, "/stats?filter=stop_accepting_requests.active"
        )
        assert "overload.envoy.overload_actions.stop_accepting_requests.active: 1" in stats


def admin_text(address: str, path: str) -> str:
    host, port = address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request("GET", path)
        return connection.getresponse().read().decode()
    finally:
        connection.close()


@pytest.mark.parametrize(("hops", "peer"), [(0, "127.0.0.1"), (1, "203.0.113.7")])
async def test_the_client_address_comes_from_x_forwarded_for_only_behind_the_trusted_hops(
    upstreams: list[Upstream], tmp_path: Path, hops: int, peer: str
) -> None:
    access_log = tmp_path / "access.log"
    settings = free_settings(xff_num_trusted_hops=hops, access_log_path=access_log)
    path = write_bootstrap(tmp_path / "envoy.json", upstreams, settings)
    async with (
        EnvoyProcess(path, settings, concurrency=1) as envoy,
        grpc.aio.insecure_channel(envoy.address) as channel,
    ):
        call = channel.unary_unary("/bhiv.alpha.v1.EchoService/Echo")
        # One load balancer in front appended the address it saw; the client forged the first entry.
        await call(b"hi", timeout=10, metadata=(("x-forwarded-for", "198.51.100.1, 203.0.113.7"),))
    [entry] = [json.loads(line) for line in access_log.read_text().splitlines()]
    assert entry["peer"] == peer


# ----------------------------------------------------------------------------- rate limits per address


async def start_identity_upstream() -> tuple[grpc.aio.Server, Upstream]:
    """A fake ``identity``: ``AuthService/Login``, ``RefreshToken`` and ``GetJwks`` echo their request."""
    server = grpc.aio.server()

    async def echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return request

    handler = grpc.unary_unary_rpc_method_handler(echo)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "bhiv.identity.v1.AuthService",
                {"Login": handler, "RefreshToken": handler, "GetJwks": handler},
            ),
        )
    )
    health_pb2_grpc.add_HealthServicer_to_server(await serving_health("identity"), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, Upstream(name="identity", host="127.0.0.1", port=port, route_prefix="/bhiv.identity.v1.")


async def call_codes(address: str, path: str, count: int) -> list[grpc.StatusCode]:
    """``count`` unary calls of ``path`` through ``address``, one after another; their codes."""
    codes = []
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(path)
        for _ in range(count):
            try:
                await call(b"x", timeout=10)
                codes.append(grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as error:
                codes.append(error.code())
                if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    assert error.details() == RATE_LIMITED_MESSAGE
    return codes


OK, LIMITED = grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED
GET_JWKS = "/bhiv.identity.v1.AuthService/GetJwks"


async def test_each_client_address_has_its_own_bucket_and_logins_a_stricter_one(tmp_path: Path) -> None:
    server, upstream = await start_identity_upstream()
    access_log = tmp_path / "access.log"
    # Buckets refilled once a minute, so nothing refills while the test runs.
    settings = free_settings(
        rate_limit_per_address=4,
        login_rate_limit=2,
        rate_limit_fill_interval_s=60,
        access_log_path=access_log,
    )
    try:
        path = write_bootstrap(tmp_path / "envoy.json", [upstream], settings)
        async with (
            EnvoyProcess(path, settings, concurrency=2) as envoy,
            Relay(envoy.address, "127.0.0.2") as other,
        ):
            # 127.0.0.2 spends its bucket...
            assert await call_codes(other.address, GET_JWKS, 5) == [OK, OK, OK, OK, LIMITED]
            # ...and 127.0.0.1's is whole: its logins stop at the stricter login bucket...
            login, refresh = LOGIN_METHODS
            assert await call_codes(envoy.address, login, 2) == [OK, OK]
            assert await call_codes(envoy.address, refresh, 1) == [LIMITED]  # one bucket for both
            # ...while its other calls go on (4 per address: at most 3 spent so far).
            assert await call_codes(envoy.address, GET_JWKS, 1) == [OK]
            # gRPC-web from the exhausted address: RESOURCE_EXHAUSTED as a gRPC-web client reads it.
            web = await asyncio.to_thread(grpc_web_call, other.address, GET_JWKS, b"x")
            assert (web.http_status, web.grpc_status) == (200, LIMITED.value[0])
    finally:
        await server.stop(None)
    entries = [json.loads(line) for line in access_log.read_text().splitlines()]
    limited = {(entry["peer"], entry["path"]) for entry in entries if entry["response_flags"] == "RL"}
    assert limited == {("127.0.0.2", GET_JWKS), ("127.0.0.1", "/bhiv.identity.v1.AuthService/RefreshToken")}


def test_the_global_rate_limit_service_is_asked_after_the_local_buckets_and_its_config_validates(
    tmp_path: Path,
) -> None:
    settings = EdgeSettings.from_settings(
        Settings(
            {"BHIV_EDGE_RATE_LIMIT_SERVICE": "ratelimit.bhiv.svc:8081", "BHIV_EDGE_LOGIN_RATE_LIMIT": "7"}
        )
    )
    bootstrap = build_bootstrap(registry_upstreams(), settings)
    names = [f["name"] for f in hcm(bootstrap)["http_filters"]]
    assert (
        names.index("envoy.filters.http.ratelimit") == names.index("envoy.filters.http.local_ratelimit") + 1
    )
    limiter = http_filter(bootstrap, "envoy.filters.http.ratelimit")
    local = http_filter(bootstrap, "envoy.filters.http.local_ratelimit")
    assert limiter["domain"] == "bhiv-edge"
    assert limiter["rate_limits"] == local["rate_limits"]  # the same descriptors, counted for all replicas
    assert limiter["rate_limited_as_resource_exhausted"] is True
    assert "failure_mode_deny" not in limiter  # false: the edge goes on when the service is down
    assert limiter["rate_limit_service"]["grpc_service"]["envoy_grpc"]["cluster_name"] == "ratelimit"
    [cluster] = [c for c in bootstrap["static_resources"]["clusters"] if c["name"] == "ratelimit"]
    assert cluster["type"] == "STRICT_DNS"
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"] == {"address": "ratelimit.bhiv.svc", "port_value": 8081}
    validate_config(write_bootstrap(tmp_path / "envoy.json", registry_upstreams(), settings))
    # The service's own config: the same descriptors, the same numbers.
    assert rate_limit_service_config(settings) == {
        "domain": "bhiv-edge",
        "descriptors": [
            {"key": "remote_address", "rate_limit": {"unit": "second", "requests_per_unit": 200}},
            {
                "key": "bhiv_rule",
                "value": "login",
                "descriptors": [
                    {"key": "remote_address", "rate_limit": {"unit": "minute", "requests_per_unit": 7}}
                ],
            },
        ],
    }
    assert "envoy.filters.http.ratelimit" not in [
        f["name"] for f in hcm(build_bootstrap(registry_upstreams(), EdgeSettings()))["http_filters"]
    ]
    with pytest.raises(ValueError, match="must be host:port"):
        EdgeSettings(rate_limit_service="ratelimit")


def test_the_transcoder_serves_every_unary_method_of_the_contracts_from_their_descriptor_set(
    registry_bootstrap: dict[str, Any],
) -> None:
    transcoder = http_filter(registry_bootstrap, "envoy.filters.http.grpc_json_transcoder")
    assert set(transcoder["services"]) == {service.full_name for service in all_services()}
    files = descriptor_pb2.FileDescriptorSet.FromString(base64.b64decode(transcoder["proto_descriptor_bin"]))
    names = {file.name for file in files.file}
    assert "google/rpc/error_details.proto" in names  # status details become JSON with their @type
    assert {service.file.name for service in all_services()} <= names
    assert transcoder["auto_mapping"] is True  # POST /<package>.<Service>/<Method>, no http annotations
    assert transcoder["convert_grpc_status"] is True
    assert transcoder["request_validation_options"]["reject_unknown_method"] is True
    assert transcoder["max_request_body_size"] == transcoder["max_response_body_size"] == 4 * 1024 * 1024


def test_the_access_log_streams_to_sentinel_from_the_edges_address_with_the_upstream_status(
    tmp_path: Path,
) -> None:
    settings = EdgeSettings(access_log_service="127.0.0.1:50059", upstream_source_address="127.0.0.2")
    bootstrap = build_bootstrap(registry_upstreams(), settings)
    file_log, grpc_log = hcm(bootstrap)["access_log"]
    assert file_log["name"] == "envoy.access_loggers.stdout"  # the JSON lines stay
    assert grpc_log["name"] == "envoy.access_loggers.http_grpc"
    config = grpc_log["typed_config"]
    assert config["common_config"]["grpc_service"]["envoy_grpc"]["cluster_name"] == ACCESS_LOG_CLUSTER
    assert config["common_config"]["transport_api_version"] == "V3"
    assert config["additional_response_trailers_to_log"] == ["grpc-status"]
    assert config["additional_response_headers_to_log"] == ["grpc-status"]
    (cluster,) = [c for c in bootstrap["static_resources"]["clusters"] if c["name"] == ACCESS_LOG_CLUSTER]
    # Sentinel takes the stream only from the trusted edge addresses: the cluster leaves from one.
    assert cluster["upstream_bind_config"]["source_address"]["address"] == "127.0.0.2"
    assert "health_checks" not in cluster
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert endpoint["socket_address"] == {"address": "127.0.0.1", "port_value": 50059}
    # The status step is the last filter before the router: first to see the upstream's reply.
    names = [f["name"] for f in hcm(bootstrap)["http_filters"]]
    assert names[-2:] == [GRPC_STATUS_FILTER, "envoy.filters.http.router"]
    assert (
        "envoy_on_response"
        in http_filter(bootstrap, GRPC_STATUS_FILTER)["default_source_code"]["inline_string"]
    )
    provider = http_filter(bootstrap, "envoy.filters.http.jwt_authn")["providers"]["identity"]
    assert provider["payload_in_metadata"] == JWT_PAYLOAD_METADATA[1]
    validate_config(write_bootstrap(tmp_path / "envoy.json", registry_upstreams(), settings))
    # Without a service: no stream, no cluster, no status step.
    plain = build_bootstrap(registry_upstreams(), EdgeSettings())
    assert len(hcm(plain)["access_log"]) == 1
    assert GRPC_STATUS_FILTER not in [f["name"] for f in hcm(plain)["http_filters"]]
    assert ACCESS_LOG_CLUSTER not in [c["name"] for c in plain["static_resources"]["clusters"]]
