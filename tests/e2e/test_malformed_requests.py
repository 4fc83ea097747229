"""Hostile bodies through the real edge: clean codes, audited, and no harm to other callers.

A body that does not decode is answered by the chain (UNAUTHENTICATED without a token,
INVALID_ARGUMENT otherwise) and audited; an error that would echo a huge request stays a few KiB,
so Envoy passes it on instead of resetting the upstream connection that other calls share.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bhiv.identity.v1 import auth_service_pb2 as auth
from bhiv.identity.v1 import auth_service_pb2_grpc as auth_grpc
from bhiv.identity.v1 import user_pb2
from bhiv.identity.v1 import user_service_pb2 as us
from bhiv.sentinel.v1 import audit_service_pb2 as audit
from bhiv.sentinel.v1 import audit_service_pb2_grpc as audit_grpc
from bhiv_core.mesh import Mesh
from bhiv_core.runtime.errors import MAX_DETAILS_BYTES, MAX_MESSAGE_BYTES
from tests.e2e.client import CALL_TIMEOUT, Session

pytestmark = pytest.mark.e2e

LOGIN = "/bhiv.identity.v1.AuthService/Login"
UPDATE_USER = "/bhiv.identity.v1.UserService/UpdateUser"
# An unclosed group, a cut-off varint, and invalid UTF-8 in field 2 (a string or message in both).
BODIES = [bytes.fromhex(h) for h in ("3b", "80", "1202c080")]


async def eventually(predicate: Callable[[], Awaitable[bool]], deadline: float = 20.0) -> bool:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while loop.time() < end:
        if await predicate():
            return True
        await asyncio.sleep(0.1)
    return False


def status_of(err: grpc.aio.AioRpcError) -> tuple[bytes, status_pb2.Status]:
    raw = dict(err.trailing_metadata() or ())["grpc-status-details-bin"]
    assert isinstance(raw, bytes)
    return raw, status_pb2.Status.FromString(raw)


def reason_of(err: grpc.aio.AioRpcError) -> str:
    info = error_details_pb2.ErrorInfo()
    assert status_of(err)[1].details[0].Unpack(info)
    return info.reason


async def test_undecodable_bodies_through_the_edge_are_refused_cleanly_and_audited(
    mesh: Mesh, admin: Session
) -> None:
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        for body in BODIES:
            with pytest.raises(grpc.aio.AioRpcError) as public:
                await channel.unary_unary(LOGIN)(body, timeout=CALL_TIMEOUT)
            assert public.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert reason_of(public.value) == "MALFORMED_REQUEST"
            with pytest.raises(grpc.aio.AioRpcError) as anonymous:
                await channel.unary_unary(UPDATE_USER)(body, timeout=CALL_TIMEOUT)
            assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError) as authenticated:
                await channel.unary_unary(UPDATE_USER)(body, metadata=admin.metadata, timeout=CALL_TIMEOUT)
            assert authenticated.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert reason_of(authenticated.value) == "MALFORMED_REQUEST"

        stub = audit_grpc.AuditServiceStub(channel)

        async def recorded(method: str, principal: str) -> int:
            reply = await stub.ListAuditRecords(
                audit.ListAuditRecordsRequest(
                    method=method, principal=principal, outcome_code="INVALID_ARGUMENT", page_size=100
                ),
                metadata=admin.metadata,
                timeout=CALL_TIMEOUT,
            )
            return len(reply.audit_records)

        async def all_recorded() -> bool:
            # Refusals are written in batches: poll.
            return await recorded(LOGIN, "") >= len(BODIES) and await recorded(
                UPDATE_USER, admin.user.name
            ) >= len(BODIES)

        assert await eventually(all_recorded)


async def test_a_huge_error_does_not_disturb_a_concurrent_caller_on_the_same_connection(
    mesh: Mesh, admin: Session
) -> None:
    # 300 bogus update_mask paths, each echoed in its violation: a 98 KB trailer before, which
    # Envoy refused, resetting the upstream connection and every other call on it.
    paths = [f"bogus_{i}_{secrets.token_hex(120)}" for i in range(300)]
    huge = us.UpdateUserRequest(
        user=user_pb2.User(name=admin.user.name, display_name="x"), update_mask={"paths": paths}
    )
    to_identity = (("x-bhiv-service", "identity"),)
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        # A stream that shares the edge's upstream connection to identity with the calls below.
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service="bhiv.identity.v1.UserService"), metadata=to_identity
        )
        first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        jwks = auth_grpc.AuthServiceStub(channel)

        async def healthy() -> Any:
            return await jwks.GetJwks(auth.GetJwksRequest(), timeout=CALL_TIMEOUT)

        async def bad() -> grpc.aio.AioRpcError:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await channel.unary_unary(UPDATE_USER)(
                    huge.SerializeToString(), metadata=admin.metadata, timeout=CALL_TIMEOUT
                )
            return err.value

        results = await asyncio.gather(
            *(healthy() for _ in range(20)), bad(), *(healthy() for _ in range(20))
        )
        err = results[20]
        assert isinstance(err, grpc.aio.AioRpcError)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
        raw, status = status_of(err)
        assert len(raw) <= MAX_DETAILS_BYTES
        assert len((err.details() or "").encode()) <= MAX_MESSAGE_BYTES
        bad_request = error_details_pb2.BadRequest()
        assert status.details[1].Unpack(bad_request)
        assert bad_request.field_violations[0].reason == "UNKNOWN_PATH"
        assert all(reply.jwks_json for reply in results[:20] + results[21:])
        # One more round trip through the same connection: any reset of the upstream connection
        # reached this client before its answer does.
        await healthy()
        assert not watch.done()
        watch.cancel()
        assert await watch.code() == grpc.StatusCode.CANCELLED
