"""Threat events and incidents through the real edge: gRPC and gRPC-web streams, curl JSON.

Failed logins through the edge are reported by identity to sentinel, whose detection groups them
into an incident and publishes them to ``StreamThreatEvents`` streams opened through Envoy (the
streaming route has no request timeout); incidents are listed with curl's JSON.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import secrets
import struct

import grpc
import pytest

from bhiv.identity.v1 import auth_service_pb2 as auth
from bhiv.identity.v1 import auth_service_pb2_grpc as auth_grpc
from bhiv.sentinel.v1 import threat_pb2 as tp
from bhiv.sentinel.v1 import threat_service_pb2 as ts
from bhiv.sentinel.v1 import threat_service_pb2_grpc as ts_grpc
from bhiv_core.mesh import Mesh
from tests.e2e.client import Session
from tests.e2e.test_edge import curl_json
from tests.harness import relay

pytestmark = pytest.mark.e2e

STREAM = "/bhiv.sentinel.v1.ThreatService/StreamThreatEvents"
CALL_TIMEOUT = 30


async def fail_logins(mesh: Mesh, source: str, username: str, count: int = 10) -> None:
    """``count`` logins with a wrong password through the edge from ``source`` (identity reports each).

    From an address of their own, so that identity's per-address login throttle of 127.0.0.1,
    which the other tests of the session share, is not touched.
    """
    async with relay(mesh.edge_address, source) as address, grpc.aio.insecure_channel(address) as channel:
        stub = auth_grpc.AuthServiceStub(channel)
        for _ in range(count):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Login(
                    auth.LoginRequest(username=username, password=secrets.token_urlsafe(12)),
                    timeout=CALL_TIMEOUT,
                )
            # After 5 failures identity throttles the username from this address (still reported).
            assert err.value.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.RESOURCE_EXHAUSTED)


def open_grpc_web_stream(mesh: Mesh, admin: Session, request: bytes) -> http.client.HTTPResponse:
    """Opens a gRPC-web StreamThreatEvents call; returns once the response headers arrived."""
    conn = http.client.HTTPConnection(mesh.host, mesh.edge_port, timeout=120)
    conn.request(
        "POST",
        STREAM,
        body=struct.pack(">BI", 0, len(request)) + request,
        headers={
            "content-type": "application/grpc-web+proto",
            "x-grpc-web": "1",
            "accept": "application/grpc-web",
            "authorization": f"Bearer {admin.access_token}",
        },
    )
    return conn.getresponse()


def read_message(response: http.client.HTTPResponse) -> bytes:
    """The next data frame of a gRPC-web body (fails on a trailer frame: the stream ended)."""
    flag, length = struct.unpack(">BI", response.read(5))
    payload = response.read(length)
    assert not flag & 0x80, f"the stream ended: {payload!r}"
    return payload


async def test_threat_events_stream_through_the_edge_over_grpc_and_grpc_web(
    mesh: Mesh, admin: Session
) -> None:
    username = f"victim-{secrets.token_hex(4)}"
    source = f"127.{secrets.randbelow(200) + 20}.{secrets.randbelow(250) + 1}.{secrets.randbelow(250) + 1}"
    request = ts.StreamThreatEventsRequest(category=tp.THREAT_CATEGORY_BRUTE_FORCE)
    web = await asyncio.to_thread(open_grpc_web_stream, mesh, admin, request.SerializeToString())
    assert web.status == 200
    assert web.getheader("content-type", "").startswith("application/grpc-web")
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        call = ts_grpc.ThreatServiceStub(channel).StreamThreatEvents(request, metadata=admin.metadata)
        await call.initial_metadata()  # subscribed: sentinel sends its headers at once
        await fail_logins(mesh, source, username)

        async def next_for_account(read: object) -> tp.ThreatEvent:
            while True:
                event = await read()  # type: ignore[operator]
                if event.rule_id == "bruteforce.address" and event.source_address == source:
                    return event

        async def grpc_read() -> tp.ThreatEvent:
            return (await call.read()).event

        async def web_read() -> tp.ThreatEvent:
            payload = await asyncio.to_thread(read_message, web)
            return ts.StreamThreatEventsResponse.FromString(payload).event

        over_grpc = await asyncio.wait_for(next_for_account(grpc_read), CALL_TIMEOUT)
        over_web = await asyncio.wait_for(next_for_account(web_read), CALL_TIMEOUT)
        call.cancel()
    web.close()
    assert over_grpc == over_web
    assert over_grpc.category == tp.THREAT_CATEGORY_BRUTE_FORCE
    assert over_grpc.incident.startswith("incidents/")

    # The incident, through the edge with curl's JSON (the transcoder) and grpcurl-compatible names.
    status, reply = await asyncio.to_thread(
        curl_json,
        mesh,
        "/bhiv.sentinel.v1.ThreatService/GetIncident",
        json.dumps({"name": over_grpc.incident}),
        f"authorization: Bearer {admin.access_token}",
    )
    assert status == 200, reply
    incident = reply["incident"]
    assert incident["category"] == "THREAT_CATEGORY_BRUTE_FORCE"
    assert incident["status"] == "INCIDENT_STATUS_OPEN"
    assert int(incident["eventCount"]) >= 1
    assert (
        incident["title"]
        == f"Brute force from {source} on /bhiv.identity.v1.AuthService/Login (bruteforce.address)"
    )
    assert incident["sourceAddresses"] == [source]
    status, listed = await asyncio.to_thread(
        curl_json,
        mesh,
        "/bhiv.sentinel.v1.ThreatService/ListIncidents",
        json.dumps({"category": "THREAT_CATEGORY_BRUTE_FORCE", "pageSize": 500}),
        f"authorization: Bearer {admin.access_token}",
    )
    assert status == 200
    assert over_grpc.incident in [i["name"] for i in listed["incidents"]]
    # A bad filter is a JSON google.rpc.Status with its field violation.
    status, error = await asyncio.to_thread(
        curl_json,
        mesh,
        "/bhiv.sentinel.v1.ThreatService/ListIncidents",
        json.dumps({"pageSize": -1}),
        f"authorization: Bearer {admin.access_token}",
    )
    assert status == 400 and error["code"] == 3
