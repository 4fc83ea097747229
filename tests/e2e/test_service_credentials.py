"""Service credentials and security events through the real mesh (seven services and the Envoy edge).

CRM — not identity — reports the tokens it refuses and the calls it denies to sentinel, with a
service token it got from identity with the deployment's service secret; the events carry the
client address CRM trusts: the caller's own for a direct call, the edge's word for one through the
edge. Callers sit behind relays bound to addresses of their own, so each test finds its events by
address. The edge refuses ``IssueServiceToken`` from outside.
"""

from __future__ import annotations

import asyncio
import json
import re
import stat
import subprocess
from collections.abc import AsyncIterator

import grpc
import pytest

from bhiv.crm.v1 import lead_service_pb2 as leads
from bhiv.crm.v1 import lead_service_pb2_grpc as leads_grpc
from bhiv.identity.v1 import auth_service_pb2 as auth
from bhiv.identity.v1 import auth_service_pb2_grpc as auth_grpc
from bhiv.sentinel.v1 import threat_service_pb2 as threat
from bhiv.sentinel.v1 import threat_service_pb2_grpc as threat_grpc
from bhiv_core.mesh import Mesh
from bhiv_core.runtime.service_credentials import EVENTS_SCOPE, load_service_secret, sign_assertion
from bhiv_core.services.sentinel.store import EventFilter, EventKind, SecurityEvent, make_sentinel_store
from tests.e2e.client import Session, create_user
from tests.harness import relay

LIST_LEADS = "/bhiv.crm.v1.LeadService/ListLeads"


async def sentinel_events(
    mesh: Mesh, address: str, kind: EventKind, timeout: float = 30.0
) -> list[SecurityEvent]:
    """The events sentinel stored for ``address`` and ``kind``, waiting until there is one."""
    store = make_sentinel_store(mesh.configs["sentinel"])
    await store.open()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            found, _ = await store.list_security_events(EventFilter(kind=kind, source_address=address), 100)
            if found or loop.time() > deadline:
                return found
            await asyncio.sleep(0.1)
    finally:
        await store.close()


def forged(token: str) -> str:
    """``token`` with its signature changed: well formed, signed by nobody."""
    head, _, signature = token.rpartition(".")
    return f"{head}.{signature[:-6]}{'A' if signature[-6] != 'A' else 'B'}{signature[-5:]}"


@pytest.fixture
async def via_127_0_0_41(mesh: Mesh) -> AsyncIterator[str]:
    """CRM, reached directly (not through the edge) from 127.0.0.41."""
    async with relay(mesh.address("crm"), "127.0.0.41") as address:
        yield address


def test_the_service_secret_is_private(mesh: Mesh) -> None:
    path = mesh.data_dir / "service-secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_bytes().strip()) >= 32


async def test_crm_reports_a_forged_token_with_the_callers_address(
    mesh: Mesh, admin: Session, via_127_0_0_41: str
) -> None:
    async with grpc.aio.insecure_channel(via_127_0_0_41) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await leads_grpc.LeadServiceStub(channel).ListLeads(
                leads.ListLeadsRequest(),
                metadata=(("authorization", f"Bearer {forged(admin.access_token)}"),),
            )
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    [event] = await sentinel_events(mesh, "127.0.0.41", EventKind.TOKEN_INVALID)
    assert (event.method, event.principal, event.detail) == (LIST_LEADS, "", "token refused: bad signature")
    # CRM reported it itself, with the service token identity issued for its credentials.
    assert event.reporter == "services/crm"
    assert admin.access_token.rpartition(".")[0] not in event.detail


async def test_crm_reports_a_denied_call_through_the_edge_with_the_address_the_edge_vouches_for(
    mesh: Mesh, admin: Session
) -> None:
    support = await create_user(mesh, admin, "support")
    async with relay(mesh.edge_address, "127.0.0.42") as edge, grpc.aio.insecure_channel(edge) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await leads_grpc.LeadServiceStub(channel).ListLeads(
                leads.ListLeadsRequest(), metadata=support.metadata
            )
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
    [event] = await sentinel_events(mesh, "127.0.0.42", EventKind.PERMISSION_DENIED)
    assert (event.method, event.principal, event.reporter) == (LIST_LEADS, support.user.name, "services/crm")
    assert event.detail == "support lacks crm.leads.read"


async def test_the_edge_refuses_issue_service_token_that_identity_grants_directly(mesh: Mesh) -> None:
    secret = load_service_secret(mesh.data_dir / "service-secret")
    request = auth.IssueServiceTokenRequest(assertion=sign_assertion(secret, "crm"), scopes=[EVENTS_SCOPE])
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await auth_grpc.AuthServiceStub(channel).IssueServiceToken(request)
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "only the mesh's services call this method" in (refused.value.details() or "")
    # The same assertion, never seen by identity, is good: the refusal was the edge's.
    async with grpc.aio.insecure_channel(mesh.address("identity")) as channel:
        reply = await auth_grpc.AuthServiceStub(channel).IssueServiceToken(request)
    assert (reply.token_type, reply.expires_in, list(reply.scopes)) == ("Bearer", 300, [EVENTS_SCOPE])


def test_the_edge_refuses_issue_service_token_as_json_too(mesh: Mesh) -> None:
    secret = load_service_secret(mesh.data_dir / "service-secret")
    body = json.dumps({"assertion": sign_assertion(secret, "crm"), "scopes": [EVENTS_SCOPE]})
    url = f"http://{mesh.edge_address}/bhiv.identity.v1.AuthService/IssueServiceToken"
    reply = subprocess.run(
        ["curl", "-s", "-i", "-H", "content-type: application/json", "-d", body, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # The refusal is gRPC's (HTTP 200, grpc-status 7 in the headers, no body), not the transcoder's
    # JSON error: the edge answers before the request reaches the transcoder.
    assert "accessToken" not in reply
    assert "grpc-status: 7" in reply.lower().splitlines()


async def test_identity_reports_a_replayed_assertion_from_another_service(mesh: Mesh) -> None:
    secret = load_service_secret(mesh.data_dir / "service-secret")
    request = auth.IssueServiceTokenRequest(assertion=sign_assertion(secret, "llm"), scopes=[EVENTS_SCOPE])
    async with (
        relay(mesh.address("identity"), "127.0.0.43") as identity,
        grpc.aio.insecure_channel(identity) as channel,
    ):
        stub = auth_grpc.AuthServiceStub(channel)
        await stub.IssueServiceToken(request)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.IssueServiceToken(request)
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    [event] = await sentinel_events(mesh, "127.0.0.43", EventKind.TOKEN_INVALID)
    assert (event.principal, event.detail, event.reporter) == (
        "services/llm",
        "service assertion refused: assertion replayed",
        "services/identity",
    )


async def test_sentinel_records_what_its_own_chain_refuses_in_process_and_a_flood_stays_bounded(
    mesh: Mesh, admin: Session
) -> None:
    # Sentinel does not call itself to report: the events are its own, stored without a token.
    async with (
        relay(mesh.address("sentinel"), "127.0.0.44") as sentinel,
        grpc.aio.insecure_channel(sentinel) as channel,
    ):
        stub = threat_grpc.ThreatServiceStub(channel)
        for _ in range(40):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.ListIncidents(
                    threat.ListIncidentsRequest(),
                    metadata=(("authorization", f"Bearer {forged(admin.access_token)}"),),
                )
            assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED

    async def represented() -> tuple[int, list[SecurityEvent]]:
        events = await sentinel_events(mesh, "127.0.0.44", EventKind.TOKEN_INVALID)
        more = (re.search(r"\(\+(\d+) more like it", e.detail) for e in events)
        # A summary stands for the refusals folded into it; the window's first ones were sent alone.
        return sum(int(m.group(1)) if m else 1 for m in more), events

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    count, events = await represented()
    while count < 40 and loop.time() < deadline:
        await asyncio.sleep(0.2)
        count, events = await represented()
    # Every refusal is accounted for, one by one or in a summary, never more than once.
    assert count == 40
    assert {e.reporter for e in events} == {"services/sentinel"}
    assert {e.method for e in events} == {"/bhiv.sentinel.v1.ThreatService/ListIncidents"}
