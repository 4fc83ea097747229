"""ExternalApiService.CallExternalApi through a real grpc.aio server to real HTTP servers on 127.0.0.x."""

from __future__ import annotations

import base64
import logging
import sqlite3
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.field_mask_pb2 import FieldMask

from bhiv.integrations.v1 import external_api_service_pb2 as eas
from bhiv.integrations.v1 import integration_pb2
from bhiv.integrations.v1 import integration_service_pb2 as ins
from bhiv_core.runtime.config import ConfigError
from bhiv_core.services.integrations.server import definition
from tests.harness import config_for, serving
from tests.outbound.servers import Route, local_http
from tests.services.crm.conftest import error_info, reason, refused, violations
from tests.services.integrations.external_served import ADMIN, OPS, PARTNER, chain, serve_external

SECRET = "sk_live_Zq8VxT3secretvalue"
GET, POST, HEAD = eas.HTTP_METHOD_GET, eas.HTTP_METHOD_POST, eas.HTTP_METHOD_HEAD


def call(
    integration: str, path: str = "/", method: int = GET, **fields: object
) -> eas.CallExternalApiRequest:
    return eas.CallExternalApiRequest(integration=integration, method=method, path=path, **fields)  # type: ignore[arg-type]


async def test_the_credential_reaches_the_server_and_nowhere_else(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with local_http() as server:
        server.routes["/v1/items"] = Route(
            200, {"Content-Type": "application/json", "X-Rate": "9"}, b'{"items":[]}'
        )
        async with serve_external(tmp_path, (PARTNER, "127.0.0.1")) as ext:
            bearer = await ext.create(f"http://{PARTNER}:{server.port}/v1", SECRET)
            answer = await ext.calls.CallExternalApi(
                call(
                    bearer.name,
                    "/items",
                    query_params={"q": "a b&c", "page": "2"},
                    headers={"Accept": "application/json"},
                ),
                metadata=ADMIN,
            )
            keyed = await ext.create(
                f"http://{PARTNER}:{server.port}",
                "api-key-value-42",
                auth_kind=integration_pb2.AUTH_KIND_API_KEY_HEADER,
                api_key_header="X-Api-Key",
            )
            await ext.calls.CallExternalApi(call(keyed.name, "/k"), metadata=ADMIN)
            basic = await ext.create(
                f"http://{PARTNER}:{server.port}", "ana:pa55word", auth_kind=integration_pb2.AUTH_KIND_BASIC
            )
            await ext.calls.CallExternalApi(call(basic.name, "/b", POST, body=b"{}"), metadata=ADMIN)
    assert answer.status_code == 200 and answer.body == b'{"items":[]}' and not answer.body_truncated
    assert answer.headers["content-type"] == "application/json" and answer.headers["x-rate"] == "9"
    assert answer.duration.seconds >= 0 and (answer.duration.seconds or answer.duration.nanos)
    first, second, third = server.seen
    assert first.path == "/v1/items?page=2&q=a%20b%26c"
    assert (
        first.headers["authorization"] == f"Bearer {SECRET}" and first.headers["accept"] == "application/json"
    )
    assert second.headers["x-api-key"] == "api-key-value-42" and "authorization" not in second.headers
    assert third.headers["authorization"] == "Basic " + base64.b64encode(b"ana:pa55word").decode()
    assert (third.method, third.body) == ("POST", b"{}")
    for secret in (SECRET, "api-key-value-42", "pa55word", base64.b64encode(b"ana:pa55word").decode()):
        assert secret not in str(answer) and secret not in caplog.text


async def test_a_host_not_on_the_allowlist_is_permission_denied(tmp_path: Path) -> None:
    with local_http() as server:
        async with serve_external(tmp_path, ("127.0.0.1",), {"evil.test": ["127.0.0.1"]}) as ext:
            integration = await ext.create(f"http://evil.test:{server.port}", SECRET)
            err = await refused(ext.calls.CallExternalApi(call(integration.name), metadata=ADMIN))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED and reason(err) == "HOST_NOT_ALLOWED"
    assert error_info(err).metadata["host"] == "evil.test" and "evil.test" in (err.details() or "")
    assert server.seen == [] and ext.dns.asked == []


async def test_a_name_resolving_to_loopback_is_refused_unless_the_address_is_allowlisted(
    tmp_path: Path,
) -> None:
    with local_http() as server:
        async with serve_external(tmp_path / "a", (PARTNER,)) as ext:
            integration = await ext.create(f"http://{PARTNER}:{server.port}", SECRET)
            err = await refused(ext.calls.CallExternalApi(call(integration.name), metadata=ADMIN))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED and reason(err) == "ADDRESS_FORBIDDEN"
        assert server.seen == []
        async with serve_external(tmp_path / "b", (PARTNER, "127.0.0.1")) as ext:
            integration = await ext.create(f"http://{PARTNER}:{server.port}", SECRET)
            answer = await ext.calls.CallExternalApi(call(integration.name), metadata=ADMIN)
        assert answer.status_code == 200 and len(server.seen) == 1


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("http://169.254.169.254/latest/meta-data/", "ADDRESS_FORBIDDEN"),
        ("http://[::ffff:127.0.0.1]:{port}/", "ADDRESS_FORBIDDEN"),
        ("http://other.test:{port}/", "HOST_NOT_ALLOWED"),
    ],
)
async def test_a_redirect_to_a_refused_target_fails_when_followed_and_is_returned_when_not(
    tmp_path: Path, location: str, expected: str
) -> None:
    # The partner is on 127.0.0.2, allowlisted by address; 127.0.0.1 is not allowlisted.
    with local_http("127.0.0.2") as server, local_http("127.0.0.1") as loopback:
        server.routes["/go"] = Route(302, {"Location": location.format(port=loopback.port)})
        dns = {PARTNER: ["127.0.0.2"], "other.test": ["127.0.0.2"]}
        async with serve_external(tmp_path, (PARTNER, "127.0.0.2"), dns) as ext:
            integration = await ext.create(f"http://{PARTNER}:{server.port}", SECRET)
            err = await refused(
                ext.calls.CallExternalApi(call(integration.name, "/go", max_redirects=3), metadata=ADMIN)
            )
            as_is = await ext.calls.CallExternalApi(call(integration.name, "/go"), metadata=ADMIN)
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED and reason(err) == expected
    assert as_is.status_code == 302 and as_is.headers["location"] == location.format(port=loopback.port)
    assert loopback.seen == []


async def test_a_followed_redirect_to_another_host_loses_the_credential(tmp_path: Path) -> None:
    with local_http() as server:
        server.routes["/go"] = Route(307, {"Location": f"http://cdn.partner.test:{server.port}/file"})
        dns = {PARTNER: ["127.0.0.1"], "cdn.partner.test": ["127.0.0.1"]}
        async with serve_external(tmp_path, (PARTNER, "*.partner.test", "127.0.0.1"), dns) as ext:
            integration = await ext.create(
                f"http://{PARTNER}:{server.port}",
                "api-key-value-42",
                auth_kind=integration_pb2.AUTH_KIND_API_KEY_HEADER,
                api_key_header="X-Api-Key",
            )
            answer = await ext.calls.CallExternalApi(
                call(integration.name, "/go", max_redirects=1), metadata=ADMIN
            )
    assert answer.status_code == 200
    first, second = server.seen
    assert first.headers["x-api-key"] == "api-key-value-42" and "x-api-key" not in second.headers


async def test_a_slow_server_is_deadline_exceeded(tmp_path: Path) -> None:
    with local_http() as server:
        async with serve_external(tmp_path, (PARTNER, "127.0.0.1")) as ext:
            integration = await ext.create(f"http://{PARTNER}:{server.port}", SECRET)
            err = await refused(
                ext.calls.CallExternalApi(
                    call(integration.name, "/slow", timeout=Duration(nanos=300_000_000)), metadata=ADMIN
                )
            )
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED and reason(err) == "EXTERNAL_TIMEOUT"


async def test_an_unreachable_server_is_unavailable(tmp_path: Path) -> None:
    with local_http() as server:
        port = server.port
    async with serve_external(tmp_path, (PARTNER, "127.0.0.1")) as ext:
        integration = await ext.create(f"http://{PARTNER}:{port}", SECRET)
        err = await refused(ext.calls.CallExternalApi(call(integration.name), metadata=ADMIN))
    assert err.code() == grpc.StatusCode.UNAVAILABLE and reason(err) == "EXTERNAL_UNAVAILABLE"


async def test_a_response_over_one_mebibyte_is_truncated(tmp_path: Path) -> None:
    body = b"0123456789abcdef" * (70 * 1024)  # 1.09 MiB
    with local_http() as server:
        server.routes["/big"] = Route(body=body)
        async with serve_external(tmp_path, (PARTNER, "127.0.0.1")) as ext:
            integration = await ext.create(f"http://{PARTNER}:{server.port}", SECRET)
            answer = await ext.calls.CallExternalApi(call(integration.name, "/big"), metadata=ADMIN)
    assert answer.body_truncated and answer.body == body[: 1 << 20]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"headers": {"Authorization": "Bearer mine"}}, ("headers['Authorization']", "FORBIDDEN_HEADER")),
        ({"headers": {"x-api-key": "mine"}}, ("headers['x-api-key']", "FORBIDDEN_HEADER")),
        ({"headers": {"Host": "other"}}, ("headers['Host']", "FORBIDDEN_HEADER")),
        ({"headers": {"Transfer-Encoding": "chunked"}}, ("headers['Transfer-Encoding']", "FORBIDDEN_HEADER")),
        ({"headers": {"X-A": "v\r\nX-B: 1"}}, ("headers['X-A']", "BAD_FORMAT")),
        ({"headers": {"Bad Name": "v"}}, ("headers['Bad Name']", "BAD_FORMAT")),
        ({"headers": {"X-Price": "5 €"}}, ("headers['X-Price']", "BAD_FORMAT")),
        ({"body": b"{}"}, ("body", "NOT_ALLOWED")),
        ({"body": b"{}", "method": HEAD}, ("body", "NOT_ALLOWED")),
        ({"timeout": Duration(seconds=61)}, ("timeout", "OUT_OF_RANGE")),
        ({"timeout": Duration(seconds=0)}, ("timeout", "OUT_OF_RANGE")),
        ({"max_redirects": 11}, ("max_redirects", "")),
        ({"max_redirects": -1}, ("max_redirects", "")),
        ({"path": "/a/../../admin"}, ("path", "")),
        ({"path": "/a?x=1"}, ("path", "")),
    ],
)
async def test_bad_requests_are_invalid_argument_and_send_nothing(
    tmp_path: Path, fields: dict[str, object], expected: tuple[str, str]
) -> None:
    with local_http() as server:
        async with serve_external(tmp_path, (PARTNER, "127.0.0.1")) as ext:
            integration = await ext.create(
                f"http://{PARTNER}:{server.port}",
                "api-key-value-42",
                auth_kind=integration_pb2.AUTH_KIND_API_KEY_HEADER,
                api_key_header="X-Api-Key",
            )
            fields = {"method": GET, **fields}
            err = await refused(ext.calls.CallExternalApi(call(integration.name, **fields), metadata=ADMIN))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = violations(err)
    assert expected[0] in [f for f, _ in found], found
    if expected[1]:
        assert expected in found, found
    assert server.seen == []


async def test_disabled_missing_and_unpermitted_calls(tmp_path: Path) -> None:
    async with serve_external(tmp_path, (PARTNER, "127.0.0.1")) as ext:
        integration = await ext.create(f"http://{PARTNER}:1", SECRET, enabled=False)
        err = await refused(ext.calls.CallExternalApi(call(integration.name), metadata=ADMIN))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        err = await refused(ext.calls.CallExternalApi(call("integrations/none"), metadata=ADMIN))
        assert err.code() == grpc.StatusCode.NOT_FOUND
        err = await refused(ext.calls.CallExternalApi(call(integration.name), metadata=OPS))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED and reason(err) != "HOST_NOT_ALLOWED"


async def test_a_secret_copied_onto_another_integration_does_not_open(tmp_path: Path) -> None:
    with local_http() as server:
        async with serve_external(tmp_path, (PARTNER, "127.0.0.1")) as ext:
            victim = await ext.create(f"http://{PARTNER}:{server.port}", SECRET)
            attacker = await ext.create(f"http://{PARTNER}:{server.port}", "attacker-token-1")
            with sqlite3.connect(tmp_path / "integrations.db") as db:
                columns = [row[1] for row in db.execute("PRAGMA table_info(integrations)")]
                sealed = next(c for c in columns if "sealed" in c)
                db.execute(
                    f"UPDATE integrations SET {sealed} ="
                    f" (SELECT {sealed} FROM integrations WHERE id = ?) WHERE id = ?",
                    (victim.name.split("/")[1], attacker.name.split("/")[1]),
                )
            err = await refused(ext.calls.CallExternalApi(call(attacker.name), metadata=ADMIN))
    assert err.code() == grpc.StatusCode.INTERNAL and reason(err) == "SECRET_UNREADABLE"
    assert server.seen == []


async def test_the_served_definition_wires_both_services_with_the_configured_allowlist(
    tmp_path: Path,
) -> None:
    config = config_for("integrations", DATA_DIR=str(tmp_path), OUTBOUND_ALLOWLIST="127.0.0.1")
    built = definition(config)
    for hook in built.on_start:
        await hook()
    try:
        with local_http() as server:
            async with serving(built.servicers, chain=chain, config=config) as (_, channel):
                from bhiv.integrations.v1 import external_api_service_pb2_grpc, integration_service_pb2_grpc

                integrations = integration_service_pb2_grpc.IntegrationServiceStub(channel)
                calls = external_api_service_pb2_grpc.ExternalApiServiceStub(channel)
                created = (
                    await integrations.CreateIntegration(
                        ins.CreateIntegrationRequest(
                            integration=integration_pb2.Integration(
                                display_name="Local",
                                kind=integration_pb2.INTEGRATION_KIND_REST_API,
                                base_url=f"http://127.0.0.1:{server.port}/api",
                                auth_kind=integration_pb2.AUTH_KIND_BEARER,
                                enabled=True,
                            ),
                            secret=SECRET,
                        ),
                        metadata=ADMIN,
                    )
                ).integration
                answer = await calls.CallExternalApi(call(created.name, "/ping"), metadata=ADMIN)
                # localhost is a name, not an allowlisted address: refused before resolving.
                await integrations.UpdateIntegration(
                    ins.UpdateIntegrationRequest(
                        integration=integration_pb2.Integration(
                            name=created.name, base_url=f"http://localhost:{server.port}/api"
                        ),
                        update_mask=FieldMask(paths=["base_url"]),
                    ),
                    metadata=ADMIN,
                )
                err = await refused(calls.CallExternalApi(call(created.name, "/ping"), metadata=ADMIN))
    finally:
        for hook in built.on_stop:
            await hook()
    assert answer.status_code == 200 and server.paths == ["/api/ping"]
    assert server.seen[0].headers["authorization"] == f"Bearer {SECRET}"
    assert reason(err) == "HOST_NOT_ALLOWED"


def test_a_bad_allowlist_entry_stops_the_service_at_start(tmp_path: Path) -> None:
    config = config_for(
        "integrations", DATA_DIR=str(tmp_path), OUTBOUND_ALLOWLIST="api.partner.test,0177.0.0.1"
    )
    with pytest.raises(ConfigError, match="BHIV_OUTBOUND_ALLOWLIST"):
        definition(config)
