"""JWT at the edge, through a real mesh: Envoy's jwt_authn checks access tokens before any service.

The mesh here is the test's own: Envoy fetches identity's JWKS every second (so a key rotation shows
within a test's patience) and identity may rotate its key on request at once.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bhiv.identity.v1 import auth_service_pb2 as auth
from bhiv.identity.v1 import auth_service_pb2_grpc as auth_grpc
from bhiv_core.edge.envoy_config import JWKS_PATH
from bhiv_core.mesh import Mesh
from bhiv_core.services.identity.keys import decrypt_private_key
from tests.e2e.client import CALL_TIMEOUT, Session, admin_session, login
from tests.e2e.conftest import mesh_env

GET_CURRENT_USER = "/bhiv.identity.v1.AuthService/GetCurrentUser"


@pytest.fixture(scope="module")
async def jwt_mesh(
    tmp_path_factory: pytest.TempPathFactory, collector: tuple[Any, str]
) -> AsyncIterator[Mesh]:
    env = mesh_env(collector[1]) | {
        "BHIV_EDGE_JWKS_CACHE_SECONDS": "1",
        "BHIV_SIGNING_KEY_MIN_ROTATION_SECONDS": "1",
        "BHIV_LOGISTICS_WORKERS": "1",
    }
    started = Mesh.with_free_ports(tmp_path_factory.mktemp("jwt-mesh"), env=env, edge_rate_limit=100_000)
    async with started:
        yield started


@pytest.fixture(scope="module")
async def admin_of(jwt_mesh: Mesh) -> Session:
    return await admin_session(jwt_mesh)


async def current_user(mesh: Mesh, token: str | None) -> grpc.StatusCode:
    """GetCurrentUser through the edge with ``token`` (none when None): the status it ends with."""
    metadata = () if token is None else (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        try:
            await auth_grpc.AuthServiceStub(channel).GetCurrentUser(
                auth.GetCurrentUserRequest(), metadata=metadata, timeout=CALL_TIMEOUT
            )
        except grpc.aio.AioRpcError as err:
            return err.code()
    return grpc.StatusCode.OK


async def refused_at_edge(mesh: Mesh, token: str | None) -> str:
    """Calls GetCurrentUser with ``token``; asserts the edge refused it and identity never saw it.

    Returns:
        The reason in the edge's message (jwt_authn's, as in its response details).

    """
    before = calls_seen_by_identity(mesh)
    metadata = () if token is None else (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await auth_grpc.AuthServiceStub(channel).GetCurrentUser(
                auth.GetCurrentUserRequest(), metadata=metadata, timeout=CALL_TIMEOUT
            )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # The services' own refusal reads "authentication required" / "invalid or expired credentials".
    message = caught.value.details() or ""
    prefix = "access token refused at the edge: jwt_authn_access_denied{"
    assert message.startswith(prefix) and message.endswith("}")
    assert calls_seen_by_identity(mesh) == before
    return message.removeprefix(prefix).removesuffix("}")


def calls_seen_by_identity(mesh: Mesh) -> float:
    """GetCurrentUser calls identity started, from its Prometheus counter."""
    metrics = http_get(f"http://{mesh.host}:{mesh.metrics_ports['identity']}/metrics")
    prefix = 'grpc_server_started_total{grpc_method="GetCurrentUser"'
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(prefix))


def http_get(url: str) -> str:
    """The body of a GET that must succeed."""
    with urllib.request.urlopen(url, timeout=CALL_TIMEOUT) as reply:
        return str(reply.read().decode())


def signing_key(mesh: Mesh) -> tuple[str, Ed25519PrivateKey]:
    """Identity's current signing key, read from its store with its key-encryption key."""
    with sqlite3.connect(mesh.data_dir / "identity.db") as db:
        kid, pem = db.execute(
            "SELECT kid, private_key_pem FROM signing_keys WHERE retire_time IS NULL"
        ).fetchone()
    return kid, decrypt_private_key(pem, (mesh.data_dir / "identity-kek").read_bytes())


def token_like(session: Session, key: Ed25519PrivateKey, kid: str, **changes: Any) -> str:
    """The claims of ``session``'s access token with ``changes``, signed by ``key`` as ``kid``."""
    claims = jwt.decode(session.access_token, options={"verify_signature": False}) | changes
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"typ": "at+jwt", "kid": kid})


def kid_of(token: str) -> str:
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    return str(header["kid"])


async def test_a_valid_token_passes_the_edge_and_reaches_the_service(
    jwt_mesh: Mesh, admin_of: Session
) -> None:
    before = calls_seen_by_identity(jwt_mesh)
    assert await current_user(jwt_mesh, admin_of.access_token) == grpc.StatusCode.OK
    assert calls_seen_by_identity(jwt_mesh) == before + 1


async def test_a_missing_or_malformed_token_is_unauthenticated_at_the_edge(jwt_mesh: Mesh) -> None:
    assert await refused_at_edge(jwt_mesh, None) == "Jwt_is_missing"
    assert await refused_at_edge(jwt_mesh, "not.a.token") == "Jwt_header_is_an_invalid_JSON"


async def test_a_forged_token_is_refused_at_the_edge(jwt_mesh: Mesh, admin_of: Session) -> None:
    kid, _ = signing_key(jwt_mesh)
    forged = token_like(admin_of, Ed25519PrivateKey.generate(), kid)
    assert await refused_at_edge(jwt_mesh, forged) == "Jwt_verification_fails"


async def test_an_expired_token_or_one_for_another_issuer_or_audience_is_refused_at_the_edge(
    jwt_mesh: Mesh, admin_of: Session
) -> None:
    kid, key = signing_key(jwt_mesh)
    # Signed by identity's own key, so only the claim can be wrong (the control passes).
    assert await current_user(jwt_mesh, token_like(admin_of, key, kid)) == grpc.StatusCode.OK
    # Past the leeway the services allow (30 s), which the edge allows too.
    expired = token_like(admin_of, key, kid, exp=int(time.time()) - 120)
    assert await refused_at_edge(jwt_mesh, expired) == "Jwt_is_expired"
    assert await refused_at_edge(jwt_mesh, token_like(admin_of, key, kid, iss="someone-else")) == (
        "Jwt_issuer_is_not_configured"
    )
    assert await refused_at_edge(jwt_mesh, token_like(admin_of, key, kid, aud="another-api")) == (
        "Audiences_in_Jwt_are_not_allowed"
    )


def test_json_and_grpc_web_without_a_token_are_unauthenticated_at_the_edge(jwt_mesh: Mesh) -> None:
    url = f"http://{jwt_mesh.edge_address}{GET_CURRENT_USER}"
    json_call = subprocess.run(
        ["curl", "-s", "-w", "\n%{http_code}", "-H", "content-type: application/json", "-d", "{}", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    body, status = json_call.rsplit("\n", 1)
    message = "access token refused at the edge: jwt_authn_access_denied{Jwt_is_missing}"
    assert (status, json.loads(body)) == ("401", {"code": 16, "message": message})
    web_call = subprocess.run(
        ["curl", "-s", "-i", "-H", "content-type: application/grpc-web+proto", "--data-binary", "", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    head = web_call.lower()
    # HTTP 401, which gRPC-web clients read as UNAUTHENTICATED, and the status itself.
    assert head.startswith("http/1.1 401")
    assert "grpc-status: 16" in head.splitlines()
    # jwt_authn's www-authenticate would echo the Host (a long Host broke the reply): stripped.
    assert "www-authenticate" not in head


async def test_login_health_and_the_jwks_need_no_token(jwt_mesh: Mesh) -> None:
    session = await admin_session(jwt_mesh)  # Login, with no token
    assert session.access_token
    async with grpc.aio.insecure_channel(jwt_mesh.edge_address) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="bhiv.identity.v1.AuthService"), timeout=CALL_TIMEOUT
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        jwks = await auth_grpc.AuthServiceStub(channel).GetJwks(auth.GetJwksRequest(), timeout=CALL_TIMEOUT)
    document = json.loads(http_get(f"http://{jwt_mesh.edge_address}{JWKS_PATH}"))
    # A standard JWKS document (the response's other field, jwksJson, is ignored by Envoy).
    assert document["keys"] == json.loads(jwks.jwks_json)["keys"]
    assert document["keys"][0]["kty"] == "OKP"
    assert document["keys"][0]["crv"] == "Ed25519"


async def test_a_rotated_key_is_accepted_at_the_edge_within_the_jwks_cache_duration(
    jwt_mesh: Mesh, admin_of: Session
) -> None:
    old_kid = kid_of(admin_of.access_token)
    async with grpc.aio.insecure_channel(jwt_mesh.edge_address) as channel:
        await auth_grpc.AuthServiceStub(channel).RotateSigningKey(
            auth.RotateSigningKeyRequest(), metadata=admin_of.metadata, timeout=CALL_TIMEOUT
        )
    fresh = await login(jwt_mesh, admin_of.username, admin_of.password)
    assert kid_of(fresh.access_token) != old_kid
    # Envoy refetches the JWKS every second here; the deadline is generous for a loaded machine.
    deadline = time.monotonic() + 30
    while (code := await current_user(jwt_mesh, fresh.access_token)) != grpc.StatusCode.OK:
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert time.monotonic() < deadline, "the edge never accepted a token of the rotated key"
        await asyncio.sleep(0.2)
    # The previous key stays published for the overlap window: its tokens still pass.
    assert await current_user(jwt_mesh, admin_of.access_token) == grpc.StatusCode.OK
