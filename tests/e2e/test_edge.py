"""Through the real edge: generated stubs, grpcurl with reflection, and hand-framed gRPC-web."""

from __future__ import annotations

import asyncio
import http.client
import json
import struct
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bhiv.identity.v1 import auth_service_pb2 as auth
from bhiv.identity.v1 import auth_service_pb2_grpc as auth_grpc
from bhiv.identity.v1 import user_service_pb2 as us
from bhiv.identity.v1 import user_service_pb2_grpc as us_grpc
from bhiv.integrations.v1 import integration_service_pb2 as integrations
from bhiv_core.edge.binaries import find_tool
from bhiv_core.edge.envoy_config import PROTOCOL_HINT
from bhiv_core.edge.lua_scripts import NOT_SERVING_HEADER
from bhiv_core.mesh import Mesh
from bhiv_core.registry import SERVICES
from bhiv_core.runtime.contracts import all_services, descriptor_set
from bhiv_core.runtime.limits import MAX_REQUEST_HEADER_BYTES, MAX_REQUEST_HEADERS
from tests.e2e.client import Session, admin_credentials

pytestmark = pytest.mark.e2e


def grpcurl(mesh: Mesh, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(find_tool("grpcurl")), "-plaintext", *args[:-1], mesh.edge_address, args[-1]]
        if args
        else [str(find_tool("grpcurl")), "-plaintext", mesh.edge_address],
        capture_output=True,
        text=True,
        timeout=30,
    )


async def test_every_service_is_healthy_through_the_edge(mesh: Mesh) -> None:
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for spec in SERVICES:
            for service in (s for s in all_services() if s.file.package == spec.package):
                reply = await stub.Check(
                    health_pb2.HealthCheckRequest(service=service.full_name),
                    metadata=(("x-bhiv-service", spec.name),),
                )
                assert reply.status == health_pb2.HealthCheckResponse.SERVING, service.full_name


async def test_an_rpc_no_contract_has_is_unimplemented_through_the_edge(mesh: Mesh, admin: Session) -> None:
    # Which RPCs are still unbuilt changes with every issue: the runtime's own "not built yet"
    # answer is tested in tests/runtime/test_chain.py; here, a method no contract declares.
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        unknown = channel.unary_unary(
            "/bhiv.integrations.v1.IntegrationService/NoSuchRpc",
            request_serializer=lambda m: m,
            response_deserializer=lambda b: b,
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await unknown(b"", metadata=admin.metadata)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_bad_input_is_invalid_argument_through_the_edge(mesh: Mesh, admin: Session) -> None:
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await us_grpc.UserServiceStub(channel).GetUser(
                us.GetUserRequest(name="not-a-user"), metadata=admin.metadata
            )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "name: must match" in err.value.details()


def test_grpcurl_lists_every_service_through_the_edge(mesh: Mesh) -> None:
    out = grpcurl(mesh, "list")
    assert out.returncode == 0, out.stderr
    listed = set(out.stdout.split())
    assert {s.full_name for s in all_services()} <= listed


def test_grpcurl_calls_rpcs_through_reflection(mesh: Mesh, admin: Session) -> None:
    bearer = f"authorization: Bearer {admin.access_token}"
    out = grpcurl(mesh, "-H", bearer, "-d", "{}", "bhiv.integrations.v1.IntegrationService/ListIntegrations")
    assert out.returncode == 0, out.stderr
    bad = grpcurl(mesh, "-H", bearer, "-d", '{"page_size": -1}', "bhiv.identity.v1.UserService/ListUsers")
    assert "Code: InvalidArgument" in bad.stderr
    me = grpcurl(mesh, "-H", bearer, "-d", "{}", "bhiv.identity.v1.AuthService/GetCurrentUser")
    assert me.returncode == 0, me.stderr
    assert '"username": "admin"' in me.stdout
    anonymous = grpcurl(mesh, "-d", "{}", "bhiv.identity.v1.AuthService/GetCurrentUser")
    assert "Code: Unauthenticated" in anonymous.stderr


def grpc_web(
    mesh: Mesh, path: str, message: bytes, origin: str | None = None, **extra: str
) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection(mesh.host, mesh.edge_port, timeout=10)
    headers = {
        "content-type": "application/grpc-web+proto",
        "x-grpc-web": "1",
        "accept": "application/grpc-web",
    }
    headers |= {k.replace("_", "-"): v for k, v in extra.items()}
    if origin:
        headers["origin"] = origin
    conn.request("POST", path, body=struct.pack(">BI", 0, len(message)) + message, headers=headers)
    response = conn.getresponse()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


def parse_frames(body: bytes) -> tuple[list[bytes], dict[str, str]]:
    messages, trailers, offset = [], {}, 0
    while offset < len(body):
        flag, length = struct.unpack(">BI", body[offset : offset + 5])
        payload = body[offset + 5 : offset + 5 + length]
        offset += 5 + length
        if flag & 0x80:
            for line in payload.decode().strip().split("\r\n"):
                key, _, value = line.partition(":")
                trailers[key.strip().lower()] = value.strip()
        else:
            messages.append(payload)
    return messages, trailers


def test_hand_framed_grpc_web_reaches_a_service(mesh: Mesh) -> None:
    request = health_pb2.HealthCheckRequest(service="bhiv.crm.v1.CustomerService").SerializeToString()
    status, headers, body = grpc_web(mesh, "/grpc.health.v1.Health/Check", request, x_bhiv_service="crm")
    assert status == 200
    assert headers["content-type"].startswith("application/grpc-web")
    messages, trailers = parse_frames(body)
    assert trailers["grpc-status"] == "0"
    assert (
        health_pb2.HealthCheckResponse.FromString(messages[0]).status
        == health_pb2.HealthCheckResponse.SERVING
    )


def test_grpc_web_error_carries_status_and_message(mesh: Mesh, admin: Session) -> None:
    status, headers, body = grpc_web(
        mesh,
        "/bhiv.integrations.v1.IntegrationService/ListIntegrations",
        integrations.ListIntegrationsRequest(page_size=-1).SerializeToString(),
        origin="http://localhost:3000",
        authorization=f"Bearer {admin.access_token}",
    )
    assert status == 200
    _, trailers = parse_frames(body)
    merged = {**headers, **trailers}
    assert merged["grpc-status"] == str(grpc.StatusCode.INVALID_ARGUMENT.value[0])
    assert "page_size" in merged["grpc-message"].replace("%20", " ")
    assert headers["access-control-allow-origin"] == "http://localhost:3000"
    assert "grpc-status" in headers["access-control-expose-headers"]


def test_cors_preflight_allows_local_origins_only(mesh: Mesh) -> None:
    def preflight(origin: str) -> tuple[int, dict]:
        conn = http.client.HTTPConnection(mesh.host, mesh.edge_port, timeout=10)
        conn.request(
            "OPTIONS",
            "/bhiv.crm.v1.CustomerService/ListCustomers",
            headers={
                "origin": origin,
                "access-control-request-method": "POST",
                "access-control-request-headers": "content-type,x-grpc-web,authorization",
            },
        )
        response = conn.getresponse()
        response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}

    status, headers = preflight("http://localhost:3000")
    assert status == 200
    assert headers["access-control-allow-origin"] == "http://localhost:3000"
    _, denied = preflight("https://evil.example")
    assert "access-control-allow-origin" not in denied


def test_admin_is_bound_to_loopback_only(mesh: Mesh) -> None:
    config = json.loads((mesh.data_dir / "envoy" / "envoy.json").read_text())
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"


SERVING = health_pb2.HealthCheckResponse.SERVING


async def health_check(
    mesh: Mesh, service: str, metadata: tuple[tuple[str, str], ...] = ()
) -> tuple[grpc.StatusCode, int | None, str, dict[str, str]]:
    """Check through the edge: the code, the status (None on error), the message, the headers."""
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        call = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), metadata=metadata, timeout=20
        )
        try:
            reply = await call
        except grpc.aio.AioRpcError as error:
            return error.code(), None, error.details() or "", dict(error.trailing_metadata() or ())
        return grpc.StatusCode.OK, reply.status, "", dict(await call.initial_metadata())


async def test_health_check_naming_a_service_reaches_its_owner_without_the_header(mesh: Mesh) -> None:
    for service in all_services():
        code, status, message, _ = await health_check(mesh, service.full_name)
        assert (code, status) == (grpc.StatusCode.OK, SERVING), (service.full_name, message)


async def test_health_of_an_unknown_name_or_service_header_is_not_found(mesh: Mesh) -> None:
    for name in ("bhiv.crm.v1.NoSuchService", "bhiv.nothing.v1.Service", "nothing"):
        code, _, _, _ = await health_check(mesh, name)
        assert code == grpc.StatusCode.NOT_FOUND, name
    code, _, message, _ = await health_check(mesh, "", (("x-bhiv-service", "nothing"),))
    assert code == grpc.StatusCode.NOT_FOUND
    assert message.startswith("x-bhiv-service names no service of the mesh (identity, logistics, crm")


async def test_empty_name_reports_the_whole_mesh(mesh: Mesh) -> None:
    code, status, _, headers = await health_check(mesh, "")
    assert (code, status) == (grpc.StatusCode.OK, SERVING)
    assert NOT_SERVING_HEADER not in headers


def test_grpcurl_lists_one_services_health_through_the_edge(mesh: Mesh) -> None:
    listed = grpcurl(mesh, "-H", "x-bhiv-service: crm", "grpc.health.v1.Health/List")
    assert listed.returncode == 0, listed.stderr
    statuses = json.loads(listed.stdout)["statuses"]
    crm = {s.full_name for s in all_services() if s.file.package == "bhiv.crm.v1"}
    assert {name: entry["status"] for name, entry in statuses.items()} == dict.fromkeys({"", *crm}, "SERVING")
    mesh_wide = grpcurl(mesh, "grpc.health.v1.Health/List")
    assert "Code: Unimplemented" in mesh_wide.stderr
    assert "List one service with the x-bhiv-service header" in mesh_wide.stderr


def buf_curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(find_tool("buf")), "curl", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_reflection_v1_answers_through_the_edge(mesh: Mesh, admin: Session) -> None:
    v1_only = ("--protocol=grpc", "--reflect-protocol=grpc-v1")
    listed = buf_curl(*v1_only, "--list-services", f"http://{mesh.edge_address}")
    assert listed.returncode == 0, listed.stderr
    assert {s.full_name for s in all_services()} <= set(listed.stdout.split())
    me = buf_curl(
        *v1_only,
        f"--header=authorization: Bearer {admin.access_token}",
        "--data={}",
        f"http://{mesh.edge_address}/bhiv.identity.v1.AuthService/GetCurrentUser",
    )
    assert me.returncode == 0, me.stderr
    assert json.loads(me.stdout)["user"]["username"] == "admin"


def test_grpcurl_lists_services_directly_from_one_service(mesh: Mesh) -> None:
    out = subprocess.run(
        [str(find_tool("grpcurl")), "-plaintext", mesh.address("crm"), "list"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert {"grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"} <= set(
        out.stdout.split()
    )


def test_a_connect_client_is_told_the_edge_speaks_grpc_and_grpc_web(mesh: Mesh, tmp_path: Path) -> None:
    # The contracts as a descriptor set: buf curl then needs no reflection (which it would also
    # try over Connect).
    schema = tmp_path / "contracts.binpb"
    schema.write_bytes(descriptor_set().SerializeToString())
    url = f"http://{mesh.edge_address}/bhiv.identity.v1.AuthService/GetJwks"
    refused = buf_curl(f"--schema={schema}", "--data={}", url)  # buf curl speaks Connect by default
    assert refused.returncode == grpc.StatusCode.UNIMPLEMENTED.value[0] << 3, refused.stderr
    assert json.loads(refused.stderr) == {"code": "unimplemented", "message": PROTOCOL_HINT}
    for protocol in ("grpc", "grpcweb"):
        allowed = buf_curl(f"--schema={schema}", f"--protocol={protocol}", "--data={}", url)
        assert allowed.returncode == 0, (protocol, allowed.stderr)
        assert json.loads(allowed.stdout)["keys"], protocol


def test_a_plain_get_is_told_the_same(mesh: Mesh) -> None:
    conn = http.client.HTTPConnection(mesh.host, mesh.edge_port, timeout=10)
    conn.request("GET", "/bhiv.identity.v1.AuthService/GetJwks")
    response = conn.getresponse()
    assert (response.status, response.getheader("allow")) == (405, "POST")
    assert json.loads(response.read())["message"] == PROTOCOL_HINT


def field_block(count: int, size: int) -> tuple[tuple[str, str], ...]:
    """``count`` fields whose names and values take about ``size`` bytes in all."""
    value = "v" * (size // count - len("x-field-00"))
    return tuple((f"x-field-{i:02}", value) for i in range(count))


async def test_the_largest_header_block_the_edge_admits_reaches_a_service(mesh: Mesh) -> None:
    # Close to the most the edge forwards: grpc's own fields, the pseudo-headers and the edge's own
    # add under 20 fields and 1 KiB. Each costs a service 32 bytes more as gRPC counts; past its
    # max_metadata_size it refuses a share of calls at random, which 20 calls find.
    metadata = field_block(MAX_REQUEST_HEADERS - 20, MAX_REQUEST_HEADER_BYTES - 1024)
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        stub = auth_grpc.AuthServiceStub(channel)
        for _ in range(20):
            reply = await stub.GetJwks(auth.GetJwksRequest(), metadata=metadata, timeout=10)
            assert reply.keys


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        (field_block(MAX_REQUEST_HEADERS, 2000), "too many request header fields"),
        ((("x-big", "a" * MAX_REQUEST_HEADER_BYTES),), "request headers too large"),
        ((("authorization", "Bearer " + "a" * 60 * 1024),), "request headers too large"),
    ],
    ids=["too-many-fields", "too-large", "a-60-kib-authorization"],
)
async def test_headers_over_the_limits_are_refused_at_the_edge_and_an_open_watch_lives_on(
    mesh: Mesh, metadata: tuple[tuple[str, str], ...], message: str
) -> None:
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service="bhiv.identity.v1.AuthService")
        )
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        stub = auth_grpc.AuthServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetJwks(auth.GetJwksRequest(), metadata=metadata, timeout=10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (err.value.details() or "").startswith(message)
        assert (await stub.GetJwks(auth.GetJwksRequest(), timeout=10)).keys
        assert not watch.done()  # the connection, and its other streams, lived on
        watch.cancel()
    status, headers, _ = await asyncio.to_thread(
        grpc_web,
        mesh,
        "/bhiv.identity.v1.AuthService/GetJwks",
        b"",
        "http://localhost:3000",
        **dict(metadata),
    )
    assert status == 431
    assert headers["access-control-allow-origin"] == "http://localhost:3000"
    assert headers["grpc-message"].replace("%20", " ").startswith(message)


async def test_an_overlong_traceparent_is_dropped_quietly_and_counted(mesh: Mesh) -> None:
    def dropped() -> float:
        port = mesh.metrics_ports["identity"]
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        line = 'bhiv_trace_context_dropped_total{header="traceparent"} '
        return sum(float(row.removeprefix(line)) for row in text.splitlines() if row.startswith(line))

    before = await asyncio.to_thread(dropped)
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-" + "a" * 1024
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        stub = auth_grpc.AuthServiceStub(channel)
        for _ in range(5):
            assert (await stub.GetJwks(auth.GetJwksRequest(), metadata=(("traceparent", traceparent),))).keys
    assert await asyncio.to_thread(dropped) == before + 5
    log = (mesh.log_dir / "identity.log").read_text()
    assert "traceparent" not in log


# ----------------------------------------------------------------------------- JSON through the transcoder


def curl_json(mesh: Mesh, path: str, body: str, *headers: str) -> tuple[int, Any]:
    """POSTs JSON with curl; returns the HTTP status and the parsed reply."""
    out = subprocess.run(
        ["curl", "-s", "-X", "POST", "-H", "content-type: application/json", "-w", "\n%{http_code}"]
        + [arg for header in headers for arg in ("-H", header)]
        + ["-d", body, f"http://{mesh.edge_address}{path}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    text, _, status = out.stdout.rpartition("\n")
    return int(status), json.loads(text) if text.startswith("{") else text


def test_curl_logs_in_with_json_and_calls_with_the_token(mesh: Mesh) -> None:
    username, password = admin_credentials(mesh)
    body = json.dumps({"username": username, "password": password})
    status, reply = curl_json(mesh, "/bhiv.identity.v1.AuthService/Login", body)
    assert status == 200, reply
    assert reply["user"]["username"] == username
    token = reply["tokens"]["accessToken"]
    status, me = curl_json(
        mesh, "/bhiv.identity.v1.AuthService/GetCurrentUser", "{}", f"authorization: Bearer {token}"
    )
    assert (status, me["user"]["username"]) == (200, username)
    # snake_case field names are read too, as proto3 JSON allows.
    status, users = curl_json(
        mesh, "/bhiv.identity.v1.UserService/ListUsers", '{"page_size": 1}', f"authorization: Bearer {token}"
    )
    assert status == 200 and len(users["users"]) == 1


def test_a_json_error_is_a_google_rpc_status_with_its_details(mesh: Mesh) -> None:
    status, error = curl_json(mesh, "/bhiv.identity.v1.AuthService/Login", '{"username": "", "password": ""}')
    assert status == 400  # INVALID_ARGUMENT
    assert error["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    types = {detail["@type"] for detail in error["details"]}
    assert "type.googleapis.com/google.rpc.BadRequest" in types
    violations = next(d for d in error["details"] if d["@type"].endswith("BadRequest"))["fieldViolations"]
    assert {violation["field"] for violation in violations} >= {"username"}
    status, anonymous = curl_json(mesh, "/bhiv.identity.v1.AuthService/GetCurrentUser", "{}")
    assert (status, anonymous["code"]) == (401, grpc.StatusCode.UNAUTHENTICATED.value[0])
    status, unknown_field = curl_json(mesh, "/bhiv.identity.v1.AuthService/Login", '{"user": "x"}')
    assert status == 400, unknown_field  # the transcoder cannot map the field: refused at the edge


def test_json_for_a_method_that_does_not_exist_or_for_health_is_refused_at_the_edge(
    mesh: Mesh, admin: Session
) -> None:
    token = f"authorization: Bearer {admin.access_token}"
    status, text = curl_json(mesh, "/bhiv.identity.v1.AuthService/NoSuchMethod", "{}", token)
    assert (status, text) == (
        404,
        "Could not resolve /bhiv.identity.v1.AuthService/NoSuchMethod to a method.",
    )
    # Without a token, the edge's token check answers first (it runs before the transcoder).
    status, error = curl_json(mesh, "/bhiv.identity.v1.AuthService/NoSuchMethod", "{}")
    message = "access token refused at the edge: jwt_authn_access_denied{Jwt_is_missing}"
    assert (status, error) == (401, {"code": 16, "message": message})
    status, hint = curl_json(mesh, "/grpc.health.v1.Health/Check", "{}")
    assert (status, hint["message"]) == (415, PROTOCOL_HINT)


def test_other_content_types_are_still_refused_with_415(mesh: Mesh) -> None:
    for content_type in ("application/x-www-form-urlencoded", "application/proto", "text/plain"):
        conn = http.client.HTTPConnection(mesh.host, mesh.edge_port, timeout=10)
        conn.request(
            "POST",
            "/bhiv.identity.v1.AuthService/GetJwks",
            body=b"{}",
            headers={"content-type": content_type},
        )
        response = conn.getresponse()
        assert response.status == 415, content_type
        assert json.loads(response.read())["message"] == PROTOCOL_HINT
        conn.close()
