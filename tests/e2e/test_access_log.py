"""The edge's access log, streamed to sentinel over gRPC (Envoy's access-log service), through a real mesh.

Two Envoys stand in front of the same real services. The mesh's own streams to sentinel, whose
detectors store what they find (scanning, floods). A second one, the test's, streams to an
:class:`~bhiv_core.services.sentinel.access_log.AccessLogServer` in this process that records every
observation, so each call can be matched with what detection was told: its client address, method
and gRPC status. Clients other than 127.0.0.1 are plain HTTP/1.1 connections bound to another
loopback address (gRPC-web and JSON), as grpcio cannot bind a source address.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import sqlite3
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bhiv.identity.v1 import auth_service_pb2 as auth
from bhiv.identity.v1 import auth_service_pb2_grpc as auth_grpc
from bhiv.identity.v1 import user_service_pb2 as us
from bhiv.identity.v1 import user_service_pb2_grpc as us_grpc
from bhiv_core.agents.threat_detection import Observation, ObservationKind
from bhiv_core.edge.envoy_config import EdgeSettings, write_bootstrap
from bhiv_core.edge.process import EnvoyProcess
from bhiv_core.mesh import Mesh, free_ports
from bhiv_core.runtime.config import Settings
from bhiv_core.runtime.limits import MAX_REQUEST_HEADER_BYTES
from bhiv_core.security.address import parse_edge_peers
from bhiv_core.services.sentinel.access_log import AccessLogServer
from tests.e2e.client import CALL_TIMEOUT, Session, admin_session
from tests.e2e.conftest import mesh_env

GET_JWKS = "/bhiv.identity.v1.AuthService/GetJwks"
LOGIN = "/bhiv.identity.v1.AuthService/Login"
GET_USER = "/bhiv.identity.v1.UserService/GetUser"
RATE_LIMIT = 10
"""Requests per second one address may make through the test's Envoy."""
WAIT = 20.0
"""Seconds to wait for an entry to arrive (Envoy flushes every 0.2 s here)."""


@pytest.fixture(scope="module")
async def als_mesh(
    tmp_path_factory: pytest.TempPathFactory, collector: tuple[Any, str]
) -> AsyncIterator[Mesh]:
    env = mesh_env(collector[1]) | {
        "BHIV_LOGISTICS_WORKERS": "1",
        "BHIV_EDGE_ACCESS_LOG_FLUSH_SECONDS": "0.2",
    }
    started = Mesh.with_free_ports(tmp_path_factory.mktemp("als-mesh"), env=env, edge_rate_limit=100_000)
    async with started:
        yield started


@dataclass
class Recorder:
    """The test's access-log server and what it observed."""

    server: AccessLogServer
    seen: list[Observation]
    edge: EnvoyProcess

    async def wait_for(self, match: Callable[[Observation], bool], count: int = 1) -> list[Observation]:
        """The observations ``match`` accepts, once there are ``count`` of them (fails after WAIT s)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while True:
            found = [o for o in self.seen if match(o)]
            if len(found) >= count or loop.time() > deadline:
                assert len(found) >= count, (
                    f"expected {count} observations, got {found}; seen {self.seen[-20:]}"
                )
                return found
            await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
async def recorder(als_mesh: Mesh, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Recorder]:
    seen: list[Observation] = []

    def submit(observation: Observation) -> bool:
        seen.append(observation)
        return True

    server = AccessLogServer(
        submit, host="127.0.0.1", port=0, edge=parse_edge_peers(als_mesh.edge_source_address)
    )
    await server.start()
    listen, admin = free_ports(2)
    settings = EdgeSettings.from_settings(
        Settings(dict(als_mesh.env)),
        listen_host="127.0.0.1",
        listen_port=listen,
        admin_port=admin,
        access_log_path=str(tmp_path_factory.mktemp("als-edge") / "access.log"),
        upstream_source_address=als_mesh.edge_source_address,
        access_log_service=f"127.0.0.1:{server.port}",
        access_log_flush_s=0.2,
        rate_limit_per_address=RATE_LIMIT,
        login_rate_limit=1000,
        jwks_cache_s=1.0,
    )
    config = write_bootstrap(
        tmp_path_factory.mktemp("als-envoy") / "envoy.json", als_mesh.upstreams(), settings
    )
    async with EnvoyProcess(config, settings, concurrency=1) as edge:
        yield Recorder(server, seen, edge)
    await server.stop()


def frame(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


def http_post(
    address: str, path: str, body: bytes, headers: Mapping[str, str], source: str
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 POST from the loopback address ``source`` (blocking; run it in a thread)."""
    host, port = address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=CALL_TIMEOUT, source_address=(source, 0))
    try:
        connection.request("POST", path, body=body, headers=dict(headers))
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


async def grpc_web(
    address: str, path: str, message: bytes, source: str, token: str = ""
) -> tuple[int, bytes]:
    headers = {"content-type": "application/grpc-web+proto", "x-grpc-web": "1"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    status, _, body = await asyncio.to_thread(http_post, address, path, frame(message), headers, source)
    return status, body


async def json_call(address: str, path: str, body: Mapping[str, Any], source: str, token: str = "") -> int:
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    status, _, _ = await asyncio.to_thread(
        http_post, address, path, json.dumps(body).encode(), headers, source
    )
    return status


def call_from(source: str, method: str, status: str) -> Callable[[Observation], bool]:
    return lambda o: (
        o.kind is ObservationKind.CALL
        and o.source_address == source
        and o.method == method
        and o.status == status
    )


@pytest.fixture(scope="module")
async def admin_of(als_mesh: Mesh) -> Session:
    return await admin_session(als_mesh)


async def test_grpc_calls_are_observed_with_address_method_status_and_principal(
    recorder: Recorder, admin_of: Session
) -> None:
    async with grpc.aio.insecure_channel(recorder.edge.address) as channel:
        await auth_grpc.AuthServiceStub(channel).GetJwks(auth.GetJwksRequest(), timeout=CALL_TIMEOUT)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await us_grpc.UserServiceStub(channel).GetUser(
                us.GetUserRequest(name="users/no-such-user"), metadata=admin_of.metadata, timeout=CALL_TIMEOUT
            )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    await recorder.wait_for(call_from("127.0.0.1", GET_JWKS, "OK"))
    (missing,) = await recorder.wait_for(call_from("127.0.0.1", GET_USER, "NOT_FOUND"))
    assert missing.principal == admin_of.user.name
    assert missing.detail == "via_upstream"


async def test_a_grpc_web_success_is_ok_not_unknown_and_its_error_keeps_its_status(
    recorder: Recorder, admin_of: Session
) -> None:
    source = "127.0.0.3"
    status, body = await grpc_web(recorder.edge.address, GET_JWKS, b"", source)
    assert status == 200 and b"grpc-status:0" in body.replace(b" ", b"")  # the status is in the body
    name = us.GetUserRequest(name="users/no-such-user").SerializeToString()
    status, body = await grpc_web(recorder.edge.address, GET_USER, name, source, admin_of.access_token)
    assert status == 200
    await recorder.wait_for(call_from(source, GET_JWKS, "OK"))
    await recorder.wait_for(call_from(source, GET_USER, "NOT_FOUND"))
    assert not [o for o in recorder.seen if o.source_address == source and o.status == "UNKNOWN"]


async def test_json_calls_map_too(recorder: Recorder, admin_of: Session) -> None:
    source = "127.0.0.4"
    assert await json_call(recorder.edge.address, GET_JWKS, {}, source) == 200
    missing = {"name": "users/no-such-user"}
    assert await json_call(recorder.edge.address, GET_USER, missing, source, admin_of.access_token) == 404
    await recorder.wait_for(call_from(source, GET_JWKS, "OK"))
    await recorder.wait_for(call_from(source, GET_USER, "NOT_FOUND"))


async def test_edge_refusals_are_observed_a_bad_token_also_as_an_invalid_token(recorder: Recorder) -> None:
    source = "127.0.0.5"
    forged = "eyJhbGciOiJFZERTQSIsImtpZCI6IngiLCJ0eXAiOiJhdCtqd3QifQ.eyJzdWIiOiJ1c2Vycy94In0.c2ln"
    await grpc_web(recorder.edge.address, GET_USER, b"", source, forged)
    await grpc_web(recorder.edge.address, GET_USER, b"", source)  # no token at all
    await grpc_web(recorder.edge.address, "/no.such.v1.Service/Method", b"", source, forged)
    refused = await recorder.wait_for(call_from(source, GET_USER, "UNAUTHENTICATED"), count=2)
    assert all(o.detail.startswith("jwt_authn_access_denied{") for o in refused)
    invalid = await recorder.wait_for(
        lambda o: o.kind is ObservationKind.TOKEN_INVALID and o.source_address == source
    )
    assert len(invalid) == 2  # the forged ones; a missing token is not a bad one
    assert forged not in repr(recorder.seen)


async def test_unknown_routes_and_oversized_headers_refused_at_the_edge_are_observed(
    recorder: Recorder, admin_of: Session
) -> None:
    source = "127.0.0.9"
    unknown = "/no.such.v1.Service/Method"
    await grpc_web(recorder.edge.address, unknown, b"", source, admin_of.access_token)
    headers = {
        "content-type": "application/grpc-web+proto",
        "x-bhiv-padding": "p" * (MAX_REQUEST_HEADER_BYTES + 1),
    }
    status, _, _ = await asyncio.to_thread(
        http_post, recorder.edge.address, GET_JWKS, frame(b""), headers, source
    )
    assert status == 431
    (route,) = await recorder.wait_for(call_from(source, unknown, "UNIMPLEMENTED"))
    assert route.detail == "route_not_found"
    (large,) = await recorder.wait_for(call_from(source, GET_JWKS, "RESOURCE_EXHAUSTED"))
    assert large.detail.startswith("rbac_access_denied_matched_policy[")


async def test_rate_limited_calls_are_observed_as_resource_exhausted(recorder: Recorder) -> None:
    source = "127.0.0.6"
    statuses = [await json_call(recorder.edge.address, GET_JWKS, {}, source) for _ in range(RATE_LIMIT + 5)]
    assert 429 in statuses
    web = [await grpc_web(recorder.edge.address, GET_JWKS, b"", source) for _ in range(3)]
    assert all(status == 200 for status, _ in web)
    limited = await recorder.wait_for(
        call_from(source, GET_JWKS, "RESOURCE_EXHAUSTED"), count=statuses.count(429) + 3
    )
    assert {o.detail for o in limited} == {"local_rate_limited"}
    assert len([o for o in recorder.seen if o.source_address == source]) == RATE_LIMIT + 5 + 3


def threat_events(mesh: Mesh, rule: str, address: str) -> list[sqlite3.Row]:
    with sqlite3.connect(mesh.data_dir / "sentinel.db") as db:
        db.row_factory = sqlite3.Row
        return list(
            db.execute(
                "SELECT * FROM threat_events WHERE rule_id = ? AND source_address = ?", (rule, address)
            )
        )


async def wait_for_threat(mesh: Mesh, rule: str, address: str) -> list[sqlite3.Row]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while not (found := threat_events(mesh, rule, address)) and loop.time() < deadline:
        await asyncio.sleep(0.2)
    return found


async def test_a_burst_of_not_found_through_the_edge_is_a_scanning_detection_in_sentinel(
    als_mesh: Mesh, admin_of: Session
) -> None:
    source = "127.0.0.7"
    assert not threat_events(als_mesh, "scanning.address", source)
    paths = [
        GET_USER,
        "/bhiv.crm.v1.CustomerService/GetCustomer",
        "/bhiv.logistics.v1.ShipmentService/GetShipment",
    ]
    for number in range(24):
        kind = ("users", "customers", "shipments")[number % 3]
        # Field 1 is the name in all three requests.
        message = us.GetUserRequest(name=f"{kind}/nope{number}").SerializeToString()
        await grpc_web(als_mesh.edge_address, paths[number % 3], message, source, admin_of.access_token)
    (event,) = await wait_for_threat(als_mesh, "scanning.address", source)
    assert event["category"] == "scanning"
    assert "refused calls" in event["evidence"]


async def test_a_flood_from_one_client_through_the_edge_is_detected(als_mesh: Mesh) -> None:
    source = "127.0.0.8"
    host, port = als_mesh.edge_address.rsplit(":", 1)

    def flood() -> None:
        connection = http.client.HTTPConnection(
            host, int(port), timeout=CALL_TIMEOUT, source_address=(source, 0)
        )
        try:
            for _ in range(450):
                connection.request("POST", GET_JWKS, body=b"{}", headers={"content-type": "application/json"})
                connection.getresponse().read()
        finally:
            connection.close()

    await asyncio.to_thread(flood)
    (event,) = await wait_for_threat(als_mesh, "flood.address", source)
    assert event["category"] == "flood"


async def test_the_access_log_port_refuses_a_connection_from_outside_the_edge(als_mesh: Mesh) -> None:
    port = als_mesh.access_log_port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)  # not the edge's 127.0.0.2
    writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        data = await asyncio.wait_for(reader.read(1024), CALL_TIMEOUT)
        if not data:
            raise ConnectionResetError("closed")
    writer.close()
    log = als_mesh.log_dir / "sentinel.log"
    assert "access-log connection refused" in await asyncio.to_thread(Path.read_text, log)


async def test_the_status_step_does_not_hold_a_server_stream_back(recorder: Recorder) -> None:
    # Health Watch streams: its first message must arrive while the stream is open, although the
    # status step waits for the trailers.
    async with grpc.aio.insecure_channel(recorder.edge.address) as channel:
        call = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), metadata=(("x-bhiv-service", "crm"),)
        )
        first = await asyncio.wait_for(call.read(), CALL_TIMEOUT)
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        call.cancel()
    (watch,) = await recorder.wait_for(
        lambda o: o.method == "/grpc.health.v1.Health/Watch" and o.source_address == "127.0.0.1"
    )
    assert watch.status == "CANCELLED"
