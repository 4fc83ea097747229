"""The security chain through the real edge: the role matrix, the JWT attack list, refresh-token
rotation, customer isolation, the audit trail, metrics, and a trace across two services."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import urllib.request
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import message_factory

from bhiv.identity.v1 import auth_service_pb2 as auth
from bhiv.identity.v1 import auth_service_pb2_grpc as auth_grpc
from bhiv.identity.v1 import user_pb2
from bhiv.identity.v1 import user_service_pb2 as us
from bhiv.identity.v1 import user_service_pb2_grpc as us_grpc
from bhiv.sentinel.v1 import audit_service_pb2 as audit
from bhiv.sentinel.v1 import audit_service_pb2_grpc as audit_grpc
from bhiv_core.mesh import Mesh
from bhiv_core.runtime.contracts import all_services, method_path, policy_of
from bhiv_core.security.roles import ROLE_PERMISSIONS
from tests.e2e.client import Session, create_user, login

pytestmark = pytest.mark.e2e

DENIED = {grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED}


@pytest.fixture(scope="module")
async def sessions(mesh: Mesh, admin: Session) -> dict[str, Session]:
    out = {"admin": admin}
    for role in ("ops", "sales", "support"):
        out[role] = await create_user(mesh, admin, role)
    out["customer"] = await create_user(mesh, admin, "customer", customer="customers/c1")
    return out


async def call(channel: grpc.aio.Channel, method: Any, metadata: Any, request: Any = None) -> grpc.StatusCode:
    request_cls = message_factory.GetMessageClass(method.input_type)
    payload = (request or request_cls()).SerializeToString()
    try:
        if method.server_streaming:
            stream = channel.unary_stream(method_path(method))(payload, metadata=metadata, timeout=10)
            async for _ in stream:
                break
            stream.cancel()
        else:
            await channel.unary_unary(method_path(method))(payload, metadata=metadata, timeout=10)
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


CONSUMES_TOKEN = {"/bhiv.identity.v1.AuthService/Logout"}
METHODS = [m for s in all_services() for m in s.methods if not policy_of(m).public]
SELF_METHODS = [m for m in METHODS if policy_of(m).self_field]


async def test_every_rpc_for_every_role_gets_what_the_matrix_says(
    mesh: Mesh, sessions: dict[str, Session]
) -> None:
    mismatches: list[str] = []
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        for role, session in sessions.items():
            for method in METHODS:
                metadata = session.metadata
                if method_path(method) in CONSUMES_TOKEN:
                    fresh = await login(mesh, session.username, session.password)
                    # The admin's RotateSigningKey above made a new key current: the edge knows it
                    # once it refetches the JWKS (BHIV_EDGE_JWKS_CACHE_SECONDS, see README Security).
                    await until_the_edge_accepts(mesh, fresh.access_token)
                    metadata = fresh.metadata
                code = await call(channel, method, metadata)
                allowed = policy_of(method).permission in ROLE_PERMISSIONS[role]
                if (allowed and code in DENIED) or (
                    not allowed and code != grpc.StatusCode.PERMISSION_DENIED
                ):
                    mismatches.append(f"{role} {method_path(method)}: {code.name} (allowed={allowed})")
            # The self case: a caller naming itself needs only the self permission (any principal
            # may get its own user); naming anyone else, existing or not, needs the permission.
            other = sessions["ops" if role == "admin" else "admin"].user.name
            for method in SELF_METHODS:
                policy, request_cls = policy_of(method), message_factory.GetMessageClass(method.input_type)
                granted = ROLE_PERMISSIONS[role]
                for name, allowed in [
                    (session.user.name, {policy.permission, policy.self_permission} & granted != set()),
                    (other, policy.permission in granted),
                    ("users/doesnotexist", policy.permission in granted),
                ]:
                    request = request_cls(**{policy.self_field: name})
                    code = await call(channel, method, session.metadata, request)
                    if (allowed and code in DENIED) or (
                        not allowed and code != grpc.StatusCode.PERMISSION_DENIED
                    ):
                        mismatches.append(f"{role} {method_path(method)} {name}: {code.name} ({allowed=})")
            # Without any token, every non-public RPC is UNAUTHENTICATED.
        for method in METHODS:
            code = await call(channel, method, ())
            if code != grpc.StatusCode.UNAUTHENTICATED:
                mismatches.append(f"anonymous {method_path(method)}: {code.name}")
    assert mismatches == []


async def get_user_code(mesh: Mesh, token: str) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        try:
            await auth_grpc.AuthServiceStub(channel).GetCurrentUser(
                auth.GetCurrentUserRequest(), metadata=(("authorization", f"Bearer {token}"),)
            )
        except grpc.aio.AioRpcError as err:
            # The services' refusals, or the edge's.
            details = err.details() or ""
            assert details in ("authentication required", "invalid or expired credentials") or (
                details.startswith("access token refused at the edge: ")
            )
            return err.code()
    return grpc.StatusCode.OK


async def until_the_edge_accepts(mesh: Mesh, token: str) -> None:
    """Waits until ``token`` passes the edge (its key may be newer than the edge's copy of the JWKS)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while await get_user_code(mesh, token) != grpc.StatusCode.OK:
        assert loop.time() < deadline, "the edge never learnt the signing key"
        await asyncio.sleep(0.1)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


async def jwks(mesh: Mesh) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        reply = await auth_grpc.AuthServiceStub(channel).GetJwks(auth.GetJwksRequest())
    return json.loads(reply.jwks_json)


async def test_jwt_attacks_through_the_edge_are_unauthenticated(
    mesh: Mesh, sessions: dict[str, Session]
) -> None:
    real = sessions["sales"].access_token
    assert await get_user_code(mesh, real) == grpc.StatusCode.OK
    header, payload, signature = real.split(".")
    claims = json.loads(b64decode(payload))
    key = (await jwks(mesh))["keys"][0]
    attacks = {
        "malformed": "abc.def",
        "alg none": f"{b64(json.dumps({'alg': 'none', 'typ': 'at+jwt', 'kid': key['kid']}).encode())}."
        f"{b64(json.dumps({**claims, 'role': 'admin'}).encode())}.",
        "hs256 with the public key": jwt.encode(
            {**claims, "role": "admin"},
            b64decode(key["x"]),
            algorithm="HS256",
            headers={"typ": "at+jwt", "kid": key["kid"]},
        ),
        "unknown kid": jwt.encode(
            claims,
            Ed25519PrivateKey.generate(),
            algorithm="EdDSA",
            headers={"typ": "at+jwt", "kid": "forged"},
        ),
        "own key, real kid": jwt.encode(
            claims,
            Ed25519PrivateKey.generate(),
            algorithm="EdDSA",
            headers={"typ": "at+jwt", "kid": key["kid"]},
        ),
        "tampered payload": f"{header}.{b64(json.dumps({**claims, 'role': 'admin'}).encode())}.{signature}",
    }
    for name, token in attacks.items():
        assert await get_user_code(mesh, token) == grpc.StatusCode.UNAUTHENTICATED, name


async def until(predicate: Any, timeout: float = 5.0) -> bool:
    for _ in range(int(timeout / 0.1)):
        if await predicate():
            return True
        await asyncio.sleep(0.1)
    return False


async def test_logout_revokes_the_access_token_in_every_service(mesh: Mesh, admin: Session) -> None:
    session = await create_user(mesh, admin, "ops")
    metadata = session.metadata
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        audit_stub = audit_grpc.AuditServiceStub(channel)
        await audit_stub.ListAuditRecords(audit.ListAuditRecordsRequest(page_size=1), metadata=metadata)
        await auth_grpc.AuthServiceStub(channel).Logout(
            auth.LogoutRequest(refresh_token=session.refresh_token), metadata=metadata
        )

        async def sentinel_refuses() -> bool:
            try:
                await audit_stub.ListAuditRecords(
                    audit.ListAuditRecordsRequest(page_size=1), metadata=metadata
                )
            except grpc.aio.AioRpcError as err:
                return err.code() == grpc.StatusCode.UNAUTHENTICATED
            return False

        # Identity pushes the revocation to sentinel (the poll is an hour apart in this mesh).
        assert await until(sentinel_refuses)
    assert await get_user_code(mesh, session.access_token) == grpc.StatusCode.UNAUTHENTICATED


async def test_refresh_rotates_and_reuse_revokes_the_family(mesh: Mesh, admin: Session) -> None:
    session = await create_user(mesh, admin, "support")
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        stub = auth_grpc.AuthServiceStub(channel)
        first = await stub.RefreshToken(auth.RefreshTokenRequest(refresh_token=session.refresh_token))
        assert first.tokens.refresh_token != session.refresh_token
        assert await get_user_code(mesh, first.tokens.access_token) == grpc.StatusCode.OK
        # The spent token is presented again: the whole family dies, the successor too.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.RefreshToken(auth.RefreshTokenRequest(refresh_token=session.refresh_token))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.RefreshToken(auth.RefreshTokenRequest(refresh_token=first.tokens.refresh_token))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

    async def revoked() -> bool:
        return await get_user_code(mesh, first.tokens.access_token) == grpc.StatusCode.UNAUTHENTICATED

    assert await until(revoked)


async def test_customer_cannot_raise_its_role_or_see_others(mesh: Mesh, sessions: dict[str, Session]) -> None:
    customer, other = sessions["customer"], sessions["sales"]
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        users = us_grpc.UserServiceStub(channel)
        promoted = user_pb2.User(name=customer.user.name, role=user_pb2.ROLE_ADMIN)
        request = us.UpdateUserRequest(user=promoted)
        request.update_mask.paths.append("role")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await users.UpdateUser(request, metadata=customer.metadata)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await users.GetUser(us.GetUserRequest(name=other.user.name), metadata=customer.metadata)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        own = await users.GetUser(us.GetUserRequest(name=customer.user.name), metadata=customer.metadata)
        assert own.user.role == user_pb2.ROLE_CUSTOMER
        listed = await users.ListUsers(us.ListUsersRequest(), metadata=customer.metadata)
        assert [u.name for u in listed.users] == [customer.user.name]


async def test_audit_records_allowed_and_denied_calls_and_the_chain_verifies(
    mesh: Mesh, sessions: dict[str, Session]
) -> None:
    customer = sessions["customer"]
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        with pytest.raises(grpc.aio.AioRpcError):
            await us_grpc.UserServiceStub(channel).DisableUser(
                us.DisableUserRequest(name=sessions["ops"].user.name), metadata=customer.metadata
            )
        await auth_grpc.AuthServiceStub(channel).GetCurrentUser(
            auth.GetCurrentUserRequest(), metadata=customer.metadata
        )
        stub = audit_grpc.AuditServiceStub(channel)
        admin = sessions["admin"].metadata

        async def records(method: str, resource: str = "") -> list[Any]:
            reply = await stub.ListAuditRecords(
                audit.ListAuditRecordsRequest(principal=customer.user.name, method=method, resource=resource),
                metadata=admin,
            )
            return list(reply.audit_records)

        disable, current = (
            "/bhiv.identity.v1.UserService/DisableUser",
            "/bhiv.identity.v1.AuthService/GetCurrentUser",
        )

        async def both_recorded() -> bool:
            # Denied calls and reads are written in batches (every 50 ms), so poll briefly.
            return bool(await records(disable, sessions["ops"].user.name)) and bool(await records(current))

        assert await until(both_recorded)
        denied = (await records(disable, sessions["ops"].user.name))[-1]
        assert denied.outcome_code == "PERMISSION_DENIED"
        assert (await records(current))[-1].outcome_code == "OK"
        assert denied.role == "customer"
        assert denied.resource == sessions["ops"].user.name
        assert denied.client_address == "127.0.0.1"
        verified = await stub.VerifyAuditChain(audit.VerifyAuditChainRequest(), metadata=admin)
        assert verified.ok and verified.records_checked > 0


def test_metrics_show_per_method_counts(mesh: Mesh) -> None:
    port = mesh.metrics_ports["identity"]
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'grpc_method="Login"' in text
    assert "grpc_server_handled_total" in text
    assert 'grpc_code="OK"' in text


async def test_a_trace_spans_identity_and_sentinel(mesh: Mesh, collector: Any) -> None:
    sink, _ = collector
    trace_id = secrets.token_hex(16)
    traceparent = f"00-{trace_id}-{secrets.token_hex(8)}-01"
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await auth_grpc.AuthServiceStub(channel).Login(
                auth.LoginRequest(username="admin", password="wrong-password-" + secrets.token_hex(4)),
                metadata=(("traceparent", traceparent),),
            )
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    wanted = bytes.fromhex(trace_id)
    # Each service exports in batches, on its own schedule: wait for both.
    for service_name in ("bhiv-identity", "bhiv-sentinel"):
        found = await sink.wait_for(
            lambda service, span, n=service_name: span.trace_id == wanted and service == n
        )
        assert found, f"no {service_name} span in trace {trace_id}"
    spans = {(service, span.kind) for service, span in sink.spans if span.trace_id == wanted}
    # identity's server span (Login) and its client span (the report), then sentinel's server span.
    assert {("bhiv-identity", 2), ("bhiv-identity", 3), ("bhiv-sentinel", 2)} <= spans
