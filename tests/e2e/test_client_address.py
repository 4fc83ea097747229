"""Only the edge vouches for a client address: through the real Envoy, the audit log holds the
client's own address whatever the client claims; dialling a service port directly with the edge's
header gets the caller its real peer address."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import grpc
import pytest

from bhiv.identity.v1 import user_service_pb2 as us
from bhiv.identity.v1 import user_service_pb2_grpc as us_grpc
from bhiv.sentinel.v1 import audit_service_pb2 as audit
from bhiv.sentinel.v1 import audit_service_pb2_grpc as audit_grpc
from bhiv_core.mesh import Mesh
from tests.e2e.client import CALL_TIMEOUT, Session
from tests.harness import relay

pytestmark = pytest.mark.e2e

FORGED = (("x-envoy-external-address", "6.6.6.6"), ("x-forwarded-for", "6.6.6.6"))
CLAIMS = {
    "no claim": (),
    "x-envoy-external-address": FORGED[:1],
    "x-forwarded-for": FORGED[1:],
    "both": FORGED,
}


async def audited_address(
    mesh: Mesh, admin: Session, target: str, claims: tuple[tuple[str, str], ...] = FORGED
) -> str:
    """Calls GetUser on a fresh name at ``target`` sending ``claims`` (forged forwarding headers);
    returns the client address of its audit record."""
    name = f"users/{secrets.token_hex(8)}"
    async with grpc.aio.insecure_channel(target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await us_grpc.UserServiceStub(channel).GetUser(
                us.GetUserRequest(name=name), metadata=(*admin.metadata, *claims), timeout=CALL_TIMEOUT
            )
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        stub = audit_grpc.AuditServiceStub(channel)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while True:
            reply: Any = await stub.ListAuditRecords(
                audit.ListAuditRecordsRequest(resource=name), metadata=admin.metadata, timeout=CALL_TIMEOUT
            )
            if reply.audit_records or loop.time() > deadline:
                break
            await asyncio.sleep(0.1)  # reads are written in batches
    [record] = reply.audit_records
    return str(record.client_address)


@pytest.mark.parametrize("claim", CLAIMS)
async def test_through_the_edge_the_audited_address_is_the_clients_own(
    mesh: Mesh, admin: Session, claim: str
) -> None:
    assert await audited_address(mesh, admin, mesh.edge_address, CLAIMS[claim]) == "127.0.0.1"


@pytest.mark.parametrize("claim", CLAIMS)
@pytest.mark.parametrize("source", ["127.0.0.2", "127.0.0.3"])
async def test_through_the_edge_a_client_elsewhere_is_audited_at_its_address(
    mesh: Mesh, admin: Session, claim: str, source: str
) -> None:
    # 127.0.0.2 is also where the edge connects to the services from: a client there is still
    # itself (the threat-loop tests play the attacker from it).
    async with relay(mesh.edge_address, source) as client_elsewhere:
        assert await audited_address(mesh, admin, client_elsewhere, CLAIMS[claim]) == source


@pytest.mark.parametrize("claim", CLAIMS)
async def test_a_direct_caller_claiming_an_address_is_audited_at_its_own(
    mesh: Mesh, admin: Session, claim: str
) -> None:
    assert await audited_address(mesh, admin, mesh.address("identity"), CLAIMS[claim]) == "127.0.0.1"
