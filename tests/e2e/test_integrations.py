"""Integrations through the real edge: signed webhook deliveries of platform events, retries, the
dead letter and redelivery, deliveries across a SIGKILL of integrations, SSRF refusals, external
calls with injected credentials, per-webhook concurrency, social content (also through the content
agent), and hostile input to every new RPC.

The mesh of this module allows outbound calls to 127.0.0.1 only and retries webhook deliveries
after short backoffs, so a test sees a receiver's three attempts in seconds. Receivers and
"external APIs" are small HTTP servers of the test (:mod:`tests.e2e.receiver`) on loopback; the
events come from real changes (CRM tickets and leads, a shipment, a document, a brute force seen by
sentinel) through each service's outbox and relay.
"""

from __future__ import annotations

import json
import random
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import descriptor, json_format, message_factory
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from bhiv.crm.v1 import lead_pb2, ticket_pb2
from bhiv.crm.v1 import lead_service_pb2 as ls
from bhiv.crm.v1 import lead_service_pb2_grpc as ls_grpc
from bhiv.crm.v1 import ticket_service_pb2 as ts
from bhiv.crm.v1 import ticket_service_pb2_grpc as ts_grpc
from bhiv.integrations.v1 import content_service_pb2 as cs
from bhiv.integrations.v1 import content_service_pb2_grpc as cs_grpc
from bhiv.integrations.v1 import event_pb2, integration_pb2, webhook_pb2
from bhiv.integrations.v1 import event_service_pb2 as es
from bhiv.integrations.v1 import event_service_pb2_grpc as es_grpc
from bhiv.integrations.v1 import external_api_service_pb2 as xs
from bhiv.integrations.v1 import external_api_service_pb2_grpc as xs_grpc
from bhiv.integrations.v1 import integration_service_pb2 as ins
from bhiv.integrations.v1 import integration_service_pb2_grpc as ins_grpc
from bhiv.integrations.v1 import webhook_service_pb2 as ws
from bhiv.integrations.v1 import webhook_service_pb2_grpc as ws_grpc
from bhiv.logistics.v1 import shipment_pb2
from bhiv.logistics.v1 import shipment_service_pb2 as shp
from bhiv.logistics.v1 import shipment_service_pb2_grpc as shp_grpc
from bhiv.orchestration.v1 import agent_pb2
from bhiv.orchestration.v1 import agent_service_pb2 as ags
from bhiv.orchestration.v1 import agent_service_pb2_grpc as ags_grpc
from bhiv.orchestration.v1 import knowledge_service_pb2 as ks
from bhiv.orchestration.v1 import knowledge_service_pb2_grpc as ks_grpc
from bhiv.sentinel.v1 import audit_service_pb2 as audit
from bhiv.sentinel.v1 import audit_service_pb2_grpc as audit_grpc
from bhiv.sentinel.v1 import threat_pb2
from bhiv.sentinel.v1 import threat_service_pb2 as ths
from bhiv.sentinel.v1 import threat_service_pb2_grpc as ths_grpc
from bhiv_core.events.catalog import envelope, event_types
from bhiv_core.mesh import Mesh, free_port
from bhiv_core.outbound.signatures import verify_signature
from bhiv_core.runtime.contracts import method_path, services_of_package
from bhiv_core.runtime.errors import MAX_DETAILS_BYTES, MAX_MESSAGE_BYTES
from bhiv_core.text.social import LIMITS, Platform, length
from tests.e2e.client import CALL_TIMEOUT, Session, admin_session
from tests.e2e.conftest import mesh_env
from tests.e2e.receiver import Answer, Received, Receiver, until
from tests.e2e.test_crm import create_customer, unique_email
from tests.e2e.test_logistics import make_item, shipment_request

pytestmark = pytest.mark.e2e

MAX_ATTEMPTS = 5
"""Attempts of a webhook delivery before it is dead-lettered, in this module's mesh."""
WEBHOOK_SETTINGS = {
    "BHIV_WEBHOOK_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
    "BHIV_WEBHOOK_BACKOFF_SECONDS": "0.5",
    "BHIV_WEBHOOK_BACKOFF_MAX_SECONDS": "2",
    "BHIV_WEBHOOK_TIMEOUT_SECONDS": "5",
    "BHIV_WEBHOOK_POLL_SECONDS": "0.5",
    "BHIV_EVENTS_RELAY_POLL_SECONDS": "0.5",
}
"""Short backoffs: a receiver's retries follow within seconds (the names the webhooks part reads)."""
DELIVERY_TIMEOUT = 120.0
"""Seconds a delivery may take to reach a final state here: relay, queue and backoffs on a busy host."""


@pytest.fixture(scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory, collector: Any) -> AsyncIterator[Mesh]:
    env = mesh_env(collector[1]) | {"BHIV_OUTBOUND_ALLOWLIST": "127.0.0.1"} | WEBHOOK_SETTINGS
    started = Mesh.with_free_ports(tmp_path_factory.mktemp("integrations"), env=env, edge_rate_limit=100_000)
    async with started:
        yield started


@pytest.fixture(scope="module")
async def admin(mesh: Mesh) -> Session:
    return await admin_session(mesh)


@pytest.fixture
async def channel(mesh: Mesh) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(mesh.edge_address) as opened:
        yield opened


def status_of(err: grpc.aio.AioRpcError) -> status_pb2.Status:
    raw = dict(err.trailing_metadata() or ()).get("grpc-status-details-bin", b"")
    assert isinstance(raw, bytes)
    return status_pb2.Status.FromString(raw)


def reason_of(err: grpc.aio.AioRpcError) -> str:
    for detail in status_of(err).details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    return ""


def violated_fields(err: grpc.aio.AioRpcError) -> list[str]:
    for detail in status_of(err).details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            return [v.field for v in bad.field_violations]
    return []


async def refused(call: Any) -> grpc.aio.AioRpcError:
    """The error ``call`` (an awaitable RPC) fails with; the test fails when it succeeds."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value


# ---- webhooks ---------------------------------------------------------------------------------


async def create_webhook(
    channel: grpc.aio.Channel, admin: Session, url: str, *types: str
) -> tuple[webhook_pb2.Webhook, str]:
    reply = await ws_grpc.WebhookServiceStub(channel).CreateWebhook(
        ws.CreateWebhookRequest(webhook=webhook_pb2.Webhook(target_url=url, event_types=types, active=True)),
        metadata=admin.metadata,
        timeout=CALL_TIMEOUT,
    )
    return reply.webhook, reply.signing_secret


async def delete_webhook(channel: grpc.aio.Channel, admin: Session, name: str) -> None:
    await ws_grpc.WebhookServiceStub(channel).DeleteWebhook(
        ws.DeleteWebhookRequest(name=name), metadata=admin.metadata, timeout=CALL_TIMEOUT
    )


async def deliveries(channel: grpc.aio.Channel, admin: Session, hook: str) -> list[webhook_pb2.Delivery]:
    reply = await ws_grpc.WebhookServiceStub(channel).ListDeliveries(
        ws.ListDeliveriesRequest(parent=hook, page_size=100), metadata=admin.metadata, timeout=CALL_TIMEOUT
    )
    return list(reply.deliveries)


async def open_ticket(channel: grpc.aio.Channel, admin: Session, title: str) -> ticket_pb2.Ticket:
    customer = await create_customer(channel, admin, first_name="Hook", email=unique_email("hook"))
    reply = await ts_grpc.TicketServiceStub(channel).CreateTicket(
        ts.CreateTicketRequest(ticket=ticket_pb2.Ticket(customer=customer.name, title=title)),
        metadata=admin.metadata,
        timeout=CALL_TIMEOUT,
    )
    return reply.ticket


def about(receiver: Receiver, event_type: str, ticket: str) -> list[Received]:
    """The requests ``receiver`` got for ``event_type`` about ``ticket``."""
    return [
        r
        for r in receiver.requests
        if r.headers.get("x-bhiv-event") == event_type and r.json().get("data", {}).get("ticket") == ticket
    ]


def assert_signed(request: Received, secret: str) -> None:
    header = request.headers["x-bhiv-signature"]
    assert verify_signature(secret.encode(), header, request.body, time.time()), header
    # The check can fail: another secret, or a body changed by one byte, is refused.
    assert not verify_signature(b"x" * 64, header, request.body, time.time())
    assert not verify_signature(secret.encode(), header, request.body + b" ", time.time())


async def test_a_resolved_ticket_is_delivered_signed_to_a_local_receiver(
    channel: grpc.aio.Channel, admin: Session
) -> None:
    async with Receiver() as receiver:
        hook, secret = await create_webhook(
            channel, admin, receiver.url + "/hooks/bhiv", "crm.ticket.resolved"
        )
        try:
            assert hook.name.startswith("webhooks/") and hook.active
            assert len(secret) >= 32
            ticket = await open_ticket(channel, admin, "Parcel lost")
            await ts_grpc.TicketServiceStub(channel).ResolveTicket(
                ts.ResolveTicketRequest(name=ticket.name, resolution="Found at the depot"),
                metadata=admin.metadata,
                timeout=CALL_TIMEOUT,
            )
            got = await until(
                lambda: about(receiver, "crm.ticket.resolved", ticket.name), timeout=DELIVERY_TIMEOUT
            )
            done = await until(
                lambda: deliveries(channel, admin, hook.name),
                lambda ds: ds and ds[0].status == webhook_pb2.DELIVERY_STATUS_SUCCEEDED,
                timeout=DELIVERY_TIMEOUT,
            )
        finally:
            await delete_webhook(channel, admin, hook.name)

    request = got[0]
    # Only the subscribed type arrived (the ticket's opening was not), once.
    assert {r.headers.get("x-bhiv-event") for r in receiver.requests} == {"crm.ticket.resolved"}
    assert len(got) == 1
    assert request.method == "POST" and request.path == "/hooks/bhiv"
    assert request.headers["content-type"].startswith("application/json")
    assert_signed(request, secret)
    body = request.json()
    event_id = request.headers["x-bhiv-event-id"]
    assert body["id"] == event_id
    assert body["type"] == "crm.ticket.resolved"
    assert body["source"] == "crm"
    assert body["subject"] == ticket.name
    assert body["data"]["ticket"] == ticket.name
    assert body["data"]["customer"] == ticket.customer
    assert body["data"]["subject"] == "Parcel lost"
    assert body["time"].endswith("Z")
    [delivery] = done
    assert request.headers["x-bhiv-delivery"] == delivery.name
    assert delivery.name.startswith(hook.name + "/deliveries/")
    assert delivery.event_type == "crm.ticket.resolved"
    assert delivery.event_id == event_id
    assert delivery.attempts == 1
    assert delivery.last_response_code == 200 and delivery.last_error == ""
    assert [(a.number, a.response_code, a.error) for a in delivery.attempt_log] == [(1, 200, "")]
    assert delivery.attempt_log[0].response_excerpt == "ok"
    assert json_format.MessageToDict(delivery.payload) == body


async def test_a_receiver_failing_twice_then_succeeding_shows_three_attempts(
    channel: grpc.aio.Channel, admin: Session
) -> None:
    failing = Answer(500, body=b"try again later")
    async with Receiver(script=[failing, failing]) as receiver:
        hook, secret = await create_webhook(channel, admin, receiver.url, "crm.ticket.opened")
        try:
            ticket = await open_ticket(channel, admin, "Twice unlucky")
            [delivery] = await until(
                lambda: deliveries(channel, admin, hook.name),
                lambda ds: ds and ds[0].status == webhook_pb2.DELIVERY_STATUS_SUCCEEDED,
                timeout=DELIVERY_TIMEOUT,
            )
        finally:
            await delete_webhook(channel, admin, hook.name)

    assert delivery.attempts == 3
    log = [(a.number, a.response_code) for a in delivery.attempt_log]
    assert log == [(1, 500), (2, 500), (3, 200)]
    assert all(a.error for a in delivery.attempt_log[:2]) and delivery.attempt_log[2].error == ""
    assert [a.response_excerpt for a in delivery.attempt_log] == ["try again later"] * 2 + ["ok"]
    assert delivery.last_response_code == 200 and delivery.last_error == ""
    assert not delivery.HasField("next_attempt_time")
    starts = [a.start_time.ToNanoseconds() for a in delivery.attempt_log]
    assert starts == sorted(starts)
    # The same event, byte for byte, under the same event id, each attempt signed.
    sent = about(receiver, "crm.ticket.opened", ticket.name)
    assert len(sent) == 3
    assert {r.headers["x-bhiv-event-id"] for r in sent} == {delivery.event_id}
    assert {r.body for r in sent} == {sent[0].body}
    for request in sent:
        assert_signed(request, secret)


async def test_a_dead_receiver_is_dead_lettered_and_redelivered_once_it_is_up(
    channel: grpc.aio.Channel, admin: Session
) -> None:
    port = free_port()
    hook, secret = await create_webhook(channel, admin, f"http://127.0.0.1:{port}/in", "crm.ticket.opened")
    hooks = ws_grpc.WebhookServiceStub(channel)
    try:
        ticket = await open_ticket(channel, admin, "Nobody home")
        [dead] = await until(
            lambda: deliveries(channel, admin, hook.name),
            lambda ds: ds and ds[0].status == webhook_pb2.DELIVERY_STATUS_FAILED,
            timeout=DELIVERY_TIMEOUT,
        )
        assert dead.attempts == MAX_ATTEMPTS
        assert [a.number for a in dead.attempt_log] == list(range(1, MAX_ATTEMPTS + 1))
        assert all(a.response_code == 0 and a.error for a in dead.attempt_log)
        assert dead.last_response_code == 0 and dead.last_error
        assert not dead.HasField("next_attempt_time")
        # A test event to a dead receiver is reported in its delivery, not as an error, and not retried.
        tested = (
            await hooks.SendTestEvent(
                ws.SendTestEventRequest(name=hook.name), metadata=admin.metadata, timeout=CALL_TIMEOUT
            )
        ).delivery
        assert tested.status == webhook_pb2.DELIVERY_STATUS_FAILED
        assert tested.event_type == "integrations.webhook.test" and tested.attempts == 1

        async with Receiver(port=port) as receiver:
            again = await hooks.RedeliverDelivery(
                ws.RedeliverDeliveryRequest(name=dead.name), metadata=admin.metadata, timeout=CALL_TIMEOUT
            )
            assert again.delivery.status == webhook_pb2.DELIVERY_STATUS_PENDING
            assert again.delivery.event_id == dead.event_id
            done = await until(
                lambda: deliveries(channel, admin, hook.name),
                lambda ds: any(
                    d.name == dead.name and d.status == webhook_pb2.DELIVERY_STATUS_SUCCEEDED for d in ds
                ),
                timeout=DELIVERY_TIMEOUT,
            )
            # The test event, through the same endpoint now answering.
            tested_again = (
                await hooks.SendTestEvent(
                    ws.SendTestEventRequest(name=hook.name), metadata=admin.metadata, timeout=CALL_TIMEOUT
                )
            ).delivery
        missing = await refused(
            hooks.RedeliverDelivery(
                ws.RedeliverDeliveryRequest(name=f"{hook.name}/deliveries/nosuchdelivery"),
                metadata=admin.metadata,
                timeout=CALL_TIMEOUT,
            )
        )
    finally:
        await delete_webhook(channel, admin, hook.name)

    [redelivered] = [d for d in done if d.name == dead.name]
    assert redelivered.attempts == MAX_ATTEMPTS + 1
    assert redelivered.attempt_log[-1].number == MAX_ATTEMPTS + 1
    assert redelivered.attempt_log[-1].response_code == 200
    sent = about(receiver, "crm.ticket.opened", ticket.name)
    assert len(sent) == 1
    assert sent[0].headers["x-bhiv-event-id"] == dead.event_id
    assert_signed(sent[0], secret)
    assert tested_again.status == webhook_pb2.DELIVERY_STATUS_SUCCEEDED
    test_bodies = [
        r.json() for r in receiver.requests if r.headers["x-bhiv-event"] == "integrations.webhook.test"
    ]
    assert [b["data"]["webhook"] for b in test_bodies] == [hook.name]
    assert missing.code() == grpc.StatusCode.NOT_FOUND


async def test_sigkill_of_integrations_mid_retry_loses_no_delivery(
    mesh: Mesh, channel: grpc.aio.Channel, admin: Session
) -> None:
    failing = Answer(503, body=b"down for maintenance")
    async with Receiver(default=failing) as receiver:
        hook, secret = await create_webhook(channel, admin, receiver.url, "crm.ticket.opened")
        try:
            first = await open_ticket(channel, admin, "Before the crash")
            [retrying] = await until(
                lambda: deliveries(channel, admin, hook.name),
                lambda ds: ds and ds[0].status == webhook_pb2.DELIVERY_STATUS_RETRYING,
                timeout=DELIVERY_TIMEOUT,
            )
            mesh.kill("integrations")
            # While integrations is down, a new event waits in crm's outbox.
            second = await open_ticket(channel, admin, "During the outage")
            receiver.default = Answer()
            await mesh.restart("integrations")
            done = await until(
                lambda: deliveries(channel, admin, hook.name),
                lambda ds: (
                    len(ds) == 2 and all(d.status == webhook_pb2.DELIVERY_STATUS_SUCCEEDED for d in ds)
                ),
                timeout=DELIVERY_TIMEOUT,
            )
        finally:
            await delete_webhook(channel, admin, hook.name)

    assert retrying.attempts >= 1 and retrying.attempt_log[0].response_code == 503
    by_event = {d.event_id: d for d in done}
    resumed = by_event[retrying.event_id]
    # The attempts made before the crash are still on record; the one after it succeeded.
    assert resumed.attempts >= 2
    assert resumed.attempt_log[0].response_code == 503
    assert resumed.attempt_log[-1].response_code == 200
    for ticket in (first, second):
        sent = about(receiver, "crm.ticket.opened", ticket.name)
        assert sent, f"no delivery for {ticket.name}"
        assert sent[-1].headers["x-bhiv-event-id"] in by_event
        assert_signed(sent[-1], secret)


async def test_every_publisher_reaches_a_webhook_subscribed_to_its_types(
    channel: grpc.aio.Channel, admin: Session
) -> None:
    domain_types = [t for t in event_types() if not t.startswith("integrations.")]
    assert len(domain_types) == 6
    meta = {"metadata": admin.metadata, "timeout": CALL_TIMEOUT}
    async with Receiver() as receiver:
        hook, secret = await create_webhook(channel, admin, receiver.url, *domain_types)
        try:
            # crm: a ticket opened and resolved, a lead won.
            ticket = await open_ticket(channel, admin, "Everything at once")
            await ts_grpc.TicketServiceStub(channel).ResolveTicket(
                ts.ResolveTicketRequest(name=ticket.name, resolution="Done"), **meta
            )
            leads = ls_grpc.LeadServiceStub(channel)
            lead = (
                await leads.CreateLead(
                    ls.CreateLeadRequest(
                        lead=lead_pb2.Lead(first_name="Ravi", email=unique_email("won"), company="Acme")
                    ),
                    **meta,
                )
            ).lead
            lead = (
                await leads.UpdateLead(
                    ls.UpdateLeadRequest(
                        lead=lead_pb2.Lead(
                            name=lead.name, etag=lead.etag, status=lead_pb2.LEAD_STATUS_QUALIFIED
                        ),
                        update_mask={"paths": ["status"]},
                    ),
                    **meta,
                )
            ).lead
            won = await leads.ConvertLead(ls.ConvertLeadRequest(name=lead.name, etag=lead.etag), **meta)
            # logistics: a shipment moves from pending to processing.
            item = await make_item(channel, admin, 5)
            shipments = shp_grpc.ShipmentServiceStub(channel)
            shipment = (
                await shipments.CreateShipment(shipment_request(ticket.customer, (item.name, 1)), **meta)
            ).shipment
            await shipments.AdvanceShipment(
                shp.AdvanceShipmentRequest(
                    name=shipment.name, status=shipment_pb2.SHIPMENT_STATUS_PROCESSING
                ),
                **meta,
            )
            # orchestration: a document ingested.
            document = (
                await ks_grpc.KnowledgeServiceStub(channel).IngestDocument(
                    ks.IngestDocumentRequest(
                        title="Webhook manual",
                        mime_type="text/plain",
                        text="# Webhooks\n\nEvery delivery is signed with the webhook's secret.",
                        tags=["e2e"],
                    ),
                    **meta,
                )
            ).document
            # sentinel: a brute force from a documentation address opens an incident.
            attacker = f"198.51.100.{secrets.randbelow(250) + 1}"
            threats = ths_grpc.ThreatServiceStub(channel)
            for i in range(30):
                await threats.ReportSecurityEvent(
                    ths.ReportSecurityEventRequest(
                        kind=threat_pb2.SECURITY_EVENT_KIND_LOGIN_FAILED,
                        source_address=attacker,
                        principal=f"nobody-{secrets.token_hex(3)}",
                        method="/bhiv.identity.v1.AuthService/Login",
                        detail=f"wrong password; attempt {i}",
                    ),
                    **meta,
                )

            def seen() -> dict[str, list[dict[str, Any]]]:
                out: dict[str, list[dict[str, Any]]] = {}
                for r in receiver.requests:
                    out.setdefault(r.headers["x-bhiv-event"], []).append(r.json()["data"])
                return out

            def complete(got: dict[str, list[dict[str, Any]]]) -> bool:
                return set(got) == set(domain_types) and any(
                    d.get("source_address") == attacker for d in got["sentinel.incident.opened"]
                )

            got = await until(seen, complete, timeout=DELIVERY_TIMEOUT)
        finally:
            await delete_webhook(channel, admin, hook.name)
    for request in receiver.requests:
        assert_signed(request, secret)
    assert [d["ticket"] for d in got["crm.ticket.opened"]] == [ticket.name]
    assert [d["ticket"] for d in got["crm.ticket.resolved"]] == [ticket.name]
    assert [(d["lead"], d["customer"], d["company"]) for d in got["crm.lead.won"]] == [
        (lead.name, won.customer.name, "Acme")
    ]
    [moved] = got["logistics.shipment.status_changed"]
    assert (moved["shipment"], moved["tracking_number"]) == (shipment.name, shipment.tracking_number)
    assert (moved["previous_status"], moved["status"]) == (
        "SHIPMENT_STATUS_PENDING",
        "SHIPMENT_STATUS_PROCESSING",
    )
    [ingested] = got["orchestration.document.ingested"]
    assert (ingested["document"], ingested["title"], ingested["mime_type"]) == (
        document.name,
        "Webhook manual",
        "text/plain",
    )
    assert ingested["passage_count"] >= 1 and ingested["tags"] == ["e2e"]
    incidents = [d for d in got["sentinel.incident.opened"] if d["source_address"] == attacker]
    assert incidents and all(d["category"] == "THREAT_CATEGORY_BRUTE_FORCE" for d in incidents)
    assert all(d["incident"].startswith("incidents/") for d in incidents)


async def test_a_slow_receiver_holds_only_its_own_delivery_slots(
    channel: grpc.aio.Channel, admin: Session
) -> None:
    hooks = ws_grpc.WebhookServiceStub(channel)
    async with Receiver(default=Answer(hang=True)) as slow, Receiver() as fast:
        stuck = (
            await hooks.CreateWebhook(
                ws.CreateWebhookRequest(
                    webhook=webhook_pb2.Webhook(
                        target_url=slow.url,
                        event_types=["crm.ticket.opened"],
                        active=True,
                        max_concurrent_deliveries=2,
                    )
                ),
                metadata=admin.metadata,
                timeout=CALL_TIMEOUT,
            )
        ).webhook
        quick, _ = await create_webhook(channel, admin, fast.url, "crm.ticket.opened")
        try:
            tickets = [await open_ticket(channel, admin, f"Rush {n}") for n in range(4)]
            names = {t.name for t in tickets}
            await until(
                lambda: {r.json()["data"]["ticket"] for r in fast.requests} >= names, timeout=DELIVERY_TIMEOUT
            )
            await until(lambda: slow.max_in_flight, lambda n: n >= 2, timeout=DELIVERY_TIMEOUT)
            fast_deliveries = await deliveries(channel, admin, quick.name)
            slow_deliveries = await deliveries(channel, admin, stuck.name)
        finally:
            await delete_webhook(channel, admin, stuck.name)
            await delete_webhook(channel, admin, quick.name)
    # The hanging receiver never had more than its two slots; the other got every event meanwhile.
    assert slow.max_in_flight == 2
    assert len([d for d in fast_deliveries if d.status == webhook_pb2.DELIVERY_STATUS_SUCCEEDED]) >= 4
    assert len(slow_deliveries) >= 4
    assert all(d.status != webhook_pb2.DELIVERY_STATUS_SUCCEEDED for d in slow_deliveries)


async def test_a_published_event_id_seen_again_is_not_delivered_twice(
    channel: grpc.aio.Channel, admin: Session
) -> None:
    async with Receiver() as receiver:
        hook, _ = await create_webhook(channel, admin, receiver.url, "crm.lead.won")
        events = es_grpc.EventServiceStub(channel)
        try:
            payload = event_pb2.LeadWonEvent(lead="leads/l-e2e", customer="customers/c-e2e", company="Acme")
            event = envelope(payload, source="crm", subject="leads/l-e2e", time=time.time())
            first = await events.PublishEvents(
                es.PublishEventsRequest(events=[event]), metadata=admin.metadata, timeout=CALL_TIMEOUT
            )
            again = await events.PublishEvents(
                es.PublishEventsRequest(events=[event]), metadata=admin.metadata, timeout=CALL_TIMEOUT
            )
            [delivery] = await until(
                lambda: deliveries(channel, admin, hook.name),
                lambda ds: ds and ds[0].status == webhook_pb2.DELIVERY_STATUS_SUCCEEDED,
                timeout=DELIVERY_TIMEOUT,
            )
            forged = event_pb2.Event()
            forged.CopyFrom(event)
            forged.id = secrets.token_hex(8)
            forged.payload.Pack(event_pb2.TicketOpenedEvent(ticket="tickets/t1"))  # not the type's message
            bad = await refused(
                events.PublishEvents(
                    es.PublishEventsRequest(events=[forged]), metadata=admin.metadata, timeout=CALL_TIMEOUT
                )
            )
        finally:
            await delete_webhook(channel, admin, hook.name)
    assert (first.accepted, first.duplicates, first.deliveries) == (1, 0, 1)
    assert (again.accepted, again.duplicates, again.deliveries) == (0, 1, 0)
    assert delivery.event_id == event.id
    assert [r.headers["x-bhiv-event-id"] for r in receiver.requests] == [event.id]
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_event_types_are_listed_from_the_contracts(channel: grpc.aio.Channel, admin: Session) -> None:
    reply = await es_grpc.EventServiceStub(channel).ListEventTypes(
        es.ListEventTypesRequest(), metadata=admin.metadata, timeout=CALL_TIMEOUT
    )
    listed = [(t.type, t.description, t.payload_message) for t in reply.event_types]
    assert listed == [(t.type, t.description, t.payload_message) for t in event_types().values()]
    assert "crm.ticket.resolved" in [t.type for t in reply.event_types]


async def test_a_webhook_secret_is_shown_once(channel: grpc.aio.Channel, admin: Session) -> None:
    hooks = ws_grpc.WebhookServiceStub(channel)
    secret = "s3cret-" + secrets.token_hex(20)
    created = await hooks.CreateWebhook(
        ws.CreateWebhookRequest(
            webhook=webhook_pb2.Webhook(
                target_url="http://127.0.0.1:9/x", event_types=["crm.ticket.opened"], active=False
            ),
            signing_secret=secret,
        ),
        metadata=admin.metadata,
        timeout=CALL_TIMEOUT,
    )
    try:
        assert created.signing_secret == secret
        got = await hooks.GetWebhook(
            ws.GetWebhookRequest(name=created.webhook.name), metadata=admin.metadata, timeout=CALL_TIMEOUT
        )
        listed = await hooks.ListWebhooks(
            ws.ListWebhooksRequest(page_size=500), metadata=admin.metadata, timeout=CALL_TIMEOUT
        )
    finally:
        await delete_webhook(channel, admin, created.webhook.name)
    assert got.webhook.name == created.webhook.name and not got.webhook.active
    for reply in (got, listed):
        assert secret.encode() not in reply.SerializeToString()


# ---- SSRF and external calls ------------------------------------------------------------------


async def create_integration(
    channel: grpc.aio.Channel,
    admin: Session,
    base_url: str,
    *,
    auth_kind: int = integration_pb2.AUTH_KIND_NONE,
    secret: str = "",
    api_key_header: str = "",
) -> integration_pb2.Integration:
    integration = integration_pb2.Integration(
        display_name=f"e2e {secrets.token_hex(3)}",
        kind=integration_pb2.INTEGRATION_KIND_REST_API,
        base_url=base_url,
        auth_kind=auth_kind,
        api_key_header=api_key_header,
        enabled=True,
    )
    reply = await ins_grpc.IntegrationServiceStub(channel).CreateIntegration(
        ins.CreateIntegrationRequest(integration=integration, secret=secret),
        metadata=admin.metadata,
        timeout=CALL_TIMEOUT,
    )
    return reply.integration


async def call_external(
    channel: grpc.aio.Channel, admin: Session, integration: str, path: str = "", **fields: Any
) -> xs.CallExternalApiResponse:
    fields.setdefault("method", xs.HTTP_METHOD_GET)
    return await xs_grpc.ExternalApiServiceStub(channel).CallExternalApi(
        xs.CallExternalApiRequest(integration=integration, path=path, **fields),
        metadata=admin.metadata,
        timeout=CALL_TIMEOUT,
    )


FORBIDDEN_BASE_URLS = [
    ("http://api.example.com/v1", "HOST_NOT_ALLOWED"),  # a name not on the allowlist
    ("http://localhost:8080", "HOST_NOT_ALLOWED"),  # a name: only the address 127.0.0.1 is allowlisted
    ("http://169.254.169.254/latest/meta-data", "ADDRESS_FORBIDDEN"),  # cloud metadata
    ("http://[::ffff:169.254.169.254]/latest", "ADDRESS_FORBIDDEN"),  # the same, IPv4-mapped
    ("http://[fd00:ec2::254]/latest", "ADDRESS_FORBIDDEN"),  # the IPv6 metadata address
    ("http://127.0.0.2:8080", "ADDRESS_FORBIDDEN"),  # loopback, but not the allowlisted address
    ("http://[::1]:8080", "ADDRESS_FORBIDDEN"),  # IPv6 loopback
    ("http://10.0.0.1", "ADDRESS_FORBIDDEN"),  # private
]


@pytest.mark.parametrize(("base_url", "reason"), FORBIDDEN_BASE_URLS)
async def test_an_external_call_to_a_host_off_the_allowlist_is_permission_denied(
    channel: grpc.aio.Channel, admin: Session, base_url: str, reason: str
) -> None:
    integration = await create_integration(channel, admin, base_url)
    err = await refused(call_external(channel, admin, integration.name, "/anything"))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED, err.details()
    assert reason_of(err) == reason


@pytest.mark.parametrize(
    "target", ["http://example.com/hook", "http://169.254.169.254/hook", "http://127.0.0.2:8080/hook"]
)
async def test_a_webhook_to_a_host_off_the_allowlist_is_invalid_argument(
    channel: grpc.aio.Channel, admin: Session, target: str
) -> None:
    err = await refused(create_webhook(channel, admin, target, "crm.ticket.opened"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(err) == ["webhook.target_url"]


async def test_a_redirect_is_never_followed_to_the_metadata_address_or_anywhere(
    channel: grpc.aio.Channel, admin: Session
) -> None:
    async with Receiver() as elsewhere, Receiver() as api:
        api.default = Answer.redirect("http://169.254.169.254/latest/meta-data/iam/")
        integration = await create_integration(channel, admin, api.url)
        to_metadata = await call_external(channel, admin, integration.name, "/go")
        api.default = Answer.redirect(elsewhere.url + "/second-hop")
        to_loopback = await call_external(channel, admin, integration.name, "/go")
        # A webhook's receiver redirecting: a failed attempt, not a request to the redirect's target.
        hook, _ = await create_webhook(channel, admin, api.url + "/hook", "crm.ticket.opened")
        try:
            api.default = Answer.redirect("http://169.254.169.254/latest/meta-data/")
            tested = (
                await ws_grpc.WebhookServiceStub(channel).SendTestEvent(
                    ws.SendTestEventRequest(name=hook.name), metadata=admin.metadata, timeout=CALL_TIMEOUT
                )
            ).delivery
        finally:
            await delete_webhook(channel, admin, hook.name)
    assert to_metadata.status_code == 302
    assert to_metadata.headers["location"] == "http://169.254.169.254/latest/meta-data/iam/"
    assert to_loopback.status_code == 302
    assert elsewhere.requests == []
    assert [r.path for r in api.requests] == ["/go", "/go", "/hook"]
    assert tested.status == webhook_pb2.DELIVERY_STATUS_FAILED
    assert [(a.response_code, bool(a.error)) for a in tested.attempt_log] == [(302, True)]


@pytest.mark.parametrize(
    ("location", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data/", "ADDRESS_FORBIDDEN"),
        ("http://[::ffff:a9fe:a9fe]/latest/meta-data/", "ADDRESS_FORBIDDEN"),
        ("http://127.0.0.2:{port}/", "ADDRESS_FORBIDDEN"),
        ("http://localhost:{port}/", "HOST_NOT_ALLOWED"),
    ],
)
async def test_a_followed_redirect_to_a_forbidden_target_is_refused(
    channel: grpc.aio.Channel, admin: Session, location: str, reason: str
) -> None:
    async with Receiver() as api:
        api.default = Answer.redirect(location.format(port=api.port))
        integration = await create_integration(
            channel, admin, api.url, auth_kind=integration_pb2.AUTH_KIND_BEARER, secret="t" * 40
        )
        err = await refused(call_external(channel, admin, integration.name, "/go", max_redirects=3))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED, err.details()
    assert reason_of(err) == reason
    assert [r.path for r in api.requests] == ["/go"]


async def test_a_followed_redirect_to_another_origin_drops_the_credential(
    channel: grpc.aio.Channel, admin: Session
) -> None:
    key = "key-" + secrets.token_hex(24)
    async with Receiver() as elsewhere, Receiver() as api:
        api.script = [Answer.redirect("/moved"), Answer.redirect(elsewhere.url + "/landing")]
        elsewhere.default = Answer.json({"landed": True})
        integration = await create_integration(
            channel,
            admin,
            api.url,
            auth_kind=integration_pb2.AUTH_KIND_API_KEY_HEADER,
            secret=key,
            api_key_header="X-Api-Key",
        )
        reply = await call_external(channel, admin, integration.name, "/go", max_redirects=2)
        api.script = [Answer.redirect("/a"), Answer.redirect("/b"), Answer.redirect("/c")]
        ran_out = await call_external(channel, admin, integration.name, "/go", max_redirects=2)
    assert reply.status_code == 200 and json.loads(reply.body) == {"landed": True}
    # The same origin keeps the credential; another port is another origin and gets none.
    assert [(r.path, r.headers.get("x-api-key")) for r in api.requests[:2]] == [("/go", key), ("/moved", key)]
    assert [(r.path, r.headers.get("x-api-key")) for r in elsewhere.requests] == [("/landing", None)]
    assert ran_out.status_code == 302 and ran_out.headers["location"] == "/c"
    assert [r.path for r in api.requests[2:]] == ["/go", "/a", "/b"]


async def test_an_allowlisted_call_carries_the_stored_credential_which_is_never_returned(
    mesh: Mesh, channel: grpc.aio.Channel, admin: Session
) -> None:
    key = "key-" + secrets.token_hex(24)
    token = "tok-" + secrets.token_hex(24)
    integrations = ins_grpc.IntegrationServiceStub(channel)
    replies: list[Any] = []
    async with Receiver() as api:
        api.default = Answer.json({"items": [1, 2, 3]})
        integration = await create_integration(
            channel,
            admin,
            api.url + "/v1",
            auth_kind=integration_pb2.AUTH_KIND_API_KEY_HEADER,
            secret=key,
            api_key_header="X-Api-Key",
        )
        replies.append(integration)
        called = await call_external(
            channel,
            admin,
            integration.name,
            "/items",
            query_params={"q": "a b&c"},
            headers={"Accept": "application/json"},
            timeout=Duration(seconds=5),
        )
        replies.append(called)
        replies.append(
            await integrations.GetIntegration(
                ins.GetIntegrationRequest(name=integration.name),
                metadata=admin.metadata,
                timeout=CALL_TIMEOUT,
            )
        )
        replies.append(
            await integrations.ListIntegrations(
                ins.ListIntegrationsRequest(page_size=500), metadata=admin.metadata, timeout=CALL_TIMEOUT
            )
        )
        forbidden_header = await refused(
            call_external(channel, admin, integration.name, "/items", headers={"x-api-key": "mine"})
        )
        # Switched to a bearer token: the new secret goes as Authorization, the old one nowhere.
        current = replies[2].integration
        updated = await integrations.UpdateIntegration(
            ins.UpdateIntegrationRequest(
                integration=integration_pb2.Integration(
                    name=current.name, etag=current.etag, auth_kind=integration_pb2.AUTH_KIND_BEARER
                ),
                update_mask={"paths": ["auth_kind", "secret"]},
                secret=token,
            ),
            metadata=admin.metadata,
            timeout=CALL_TIMEOUT,
        )
        replies.append(updated)
        posted = await call_external(
            channel,
            admin,
            integration.name,
            "/items",
            method=xs.HTTP_METHOD_POST,
            headers={"Content-Type": "application/json"},
            body=b'{"name": "x"}',
        )
        replies.append(posted)

    assert integration.has_secret
    assert called.status_code == 200 and json.loads(called.body) == {"items": [1, 2, 3]}
    assert called.headers["content-type"] == "application/json"
    assert not called.body_truncated
    first, second = api.requests
    assert first.method == "GET" and first.path.startswith("/v1/items?")
    assert first.headers["x-api-key"] == key
    assert "authorization" not in first.headers
    assert first.headers["accept"] == "application/json"
    assert parse_qs(urlsplit(first.path).query) == {"q": ["a b&c"]}
    assert forbidden_header.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert second.method == "POST" and second.path == "/v1/items" and second.body == b'{"name": "x"}'
    assert second.headers["authorization"] == f"Bearer {token}"
    assert "x-api-key" not in second.headers
    assert posted.status_code == 200
    for reply in replies:
        serialized = reply.SerializeToString()
        assert key.encode() not in serialized and token.encode() not in serialized
    # Nor logged, nor stored in the clear.
    for path in mesh.log_dir.iterdir():
        text = path.read_bytes()
        assert key.encode() not in text and token.encode() not in text, path
    with sqlite3.connect(f"file:{mesh.data_dir / 'integrations.db'}?mode=ro", uri=True) as db:
        dump = "\n".join(db.iterdump())
    assert key not in dump and token not in dump


async def test_an_unanswering_external_api_is_deadline_exceeded_and_a_dead_one_unavailable(
    channel: grpc.aio.Channel, admin: Session
) -> None:
    async with Receiver(default=Answer(hang=True)) as api:
        slow = await create_integration(channel, admin, api.url)
        late = await refused(call_external(channel, admin, slow.name, "/", timeout=Duration(seconds=1)))
    dead = await create_integration(channel, admin, f"http://127.0.0.1:{free_port()}")
    gone = await refused(call_external(channel, admin, dead.name, "/"))
    assert late.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert gone.code() == grpc.StatusCode.UNAVAILABLE


# ---- social content ---------------------------------------------------------------------------


async def test_social_content_offline_fits_every_platform_through_the_edge(
    channel: grpc.aio.Channel, admin: Session
) -> None:
    topic = (
        "Our new guide to Ayurveda explains daily routines, seasonal eating and sleep. It is free for "
        "every member and available in English and Hindi from today."
    )
    platforms = [cs.SOCIAL_PLATFORM_X, cs.SOCIAL_PLATFORM_LINKEDIN, cs.SOCIAL_PLATFORM_INSTAGRAM]
    reply = await cs_grpc.ContentServiceStub(channel).GenerateSocialContent(
        cs.GenerateSocialContentRequest(
            topic=topic, platforms=platforms, languages=["en", "en-IN"], include_hashtags=True
        ),
        metadata=admin.metadata,
        timeout=60,
    )
    assert [(p.platform, p.language) for p in reply.posts] == [
        (platform, language) for platform in platforms for language in ("en", "en-IN")
    ]
    by_enum = {cs.SOCIAL_PLATFORM_X: Platform.X, cs.SOCIAL_PLATFORM_LINKEDIN: Platform.LINKEDIN}
    by_enum |= {cs.SOCIAL_PLATFORM_INSTAGRAM: Platform.INSTAGRAM}
    for post in reply.posts:
        platform = by_enum[post.platform]
        assert post.text.strip()
        assert post.platform_limit == LIMITS[platform].max_length
        assert length(post.text, platform) <= post.platform_limit
        assert post.character_count == len(post.text)
        assert post.platform_length == length(post.text, platform)
        assert (post.provider, post.model) == ("offline", "template-extract")
        assert all(tag.startswith("#") and tag in post.text for tag in post.hashtags)
        if platform == Platform.INSTAGRAM:
            assert post.hashtags
    # Offline here (llm has no model): the reply says so and pretends no model wrote them.
    assert (reply.provider, reply.model) == ("offline", "template-extract")
    # Offline posts are extracts of the topic: another language cannot be written without a model.
    hindi = await refused(
        cs_grpc.ContentServiceStub(channel).GenerateSocialContent(
            cs.GenerateSocialContentRequest(topic=topic, platforms=platforms, languages=["hi-IN"]),
            metadata=admin.metadata,
            timeout=60,
        )
    )
    assert hindi.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason_of(hindi) == "LANGUAGE_NEEDS_MODEL"
    too_many = await refused(
        cs_grpc.ContentServiceStub(channel).GenerateSocialContent(
            cs.GenerateSocialContentRequest(
                topic=topic, platforms=[cs.SOCIAL_PLATFORM_X, cs.SOCIAL_PLATFORM_X]
            ),
            metadata=admin.metadata,
            timeout=CALL_TIMEOUT,
        )
    )
    assert too_many.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_the_content_agent_writes_posts_through_the_content_service(
    channel: grpc.aio.Channel, admin: Session
) -> None:
    async def audited() -> int:
        """Calls of ContentService answered OK for the admin: the agent forwards its caller's token."""
        reply = await audit_grpc.AuditServiceStub(channel).ListAuditRecords(
            audit.ListAuditRecordsRequest(
                method="/bhiv.integrations.v1.ContentService/GenerateSocialContent",
                principal=admin.user.name,
                outcome_code="OK",
                page_size=500,
            ),
            metadata=admin.metadata,
            timeout=CALL_TIMEOUT,
        )
        return len(reply.audit_records)

    # Audit records are written in batches: wait until the count is settled before the calls.
    before = await until(audited, lambda n: True)
    agents = ags_grpc.AgentServiceStub(channel)
    invoked = await agents.InvokeAgent(
        ags.InvokeAgentRequest(
            name="agents/content", query="Write a LinkedIn post announcing our new guide to Ayurveda"
        ),
        metadata=admin.metadata,
        timeout=60,
    )
    asked = await agents.Ask(
        ags.AskRequest(query="Draft a tweet about our free yoga workshop this Saturday"),
        metadata=admin.metadata,
        timeout=60,
    )
    for answer in (invoked.answer, asked.answer):
        assert answer.agent == "agents/content"
        assert answer.text.strip()
        assert answer.method == agent_pb2.ANSWER_METHOD_EXTRACTIVE
    assert await until(audited, lambda n: n >= before + 2, timeout=60)


# ---- hostile input to every new RPC -----------------------------------------------------------

NEW_METHODS = [
    m
    for s in (
        *services_of_package("bhiv.integrations.v1"),
        *(
            s
            for s in services_of_package("bhiv.orchestration.v1")
            if s.name in ("TaskService", "WorkflowService")
        ),
    )
    for m in s.methods
]
_NOISE = random.Random(13)
BODIES = [bytes.fromhex(h) for h in ("3b", "80", "1202c080")] + [_NOISE.randbytes(64) for _ in range(3)]
"""A cut-off group or varint, bad UTF-8 in field 2, fixed noise: most request types decode none."""


def decodes(method: Any, body: bytes) -> bool:
    """True when ``body`` is a valid ``method`` request after all (then it is no hostile body)."""
    try:
        message_factory.GetMessageClass(method.input_type).FromString(body)
    except DecodeError:
        return False
    return True


HUGE = "x" * 70_000


def huge_request(message: Any, depth: int = 0) -> Any:
    """``message`` with every string field (and those of its message fields) 70,000 characters long."""
    for field in message.DESCRIPTOR.fields:
        if field.type == descriptor.FieldDescriptor.TYPE_STRING:
            if field.is_repeated:
                getattr(message, field.name).append(HUGE)
            else:
                setattr(message, field.name, HUGE)
        elif (
            field.type == descriptor.FieldDescriptor.TYPE_MESSAGE
            and depth < 2
            and field.message_type.full_name.startswith("bhiv.")
            and not field.message_type.GetOptions().map_entry
        ):
            if field.is_repeated:
                huge_request(getattr(message, field.name).add(), depth + 1)
            else:
                huge_request(getattr(message, field.name), depth + 1)
    return message


async def raw_call(
    channel: grpc.aio.Channel, method: Any, body: bytes, metadata: Any
) -> grpc.aio.AioRpcError | None:
    try:
        await channel.unary_unary(method_path(method))(body, metadata=metadata, timeout=CALL_TIMEOUT)
    except grpc.aio.AioRpcError as err:
        return err
    return None


async def test_hostile_input_to_every_new_rpc_gets_a_clean_code(
    channel: grpc.aio.Channel, admin: Session
) -> None:
    assert len(NEW_METHODS) >= 25, [m.name for m in NEW_METHODS]
    claims = jwt.decode(admin.access_token, options={"verify_signature": False})
    kid = jwt.get_unverified_header(admin.access_token)["kid"]
    forged = jwt.encode(
        {**claims, "jti": secrets.token_hex(8)},
        Ed25519PrivateKey.generate(),
        algorithm="EdDSA",
        headers={"typ": "at+jwt", "kid": kid},
    )
    wrong: list[str] = []
    for method in NEW_METHODS:
        path = method_path(method)
        undecodable = [body for body in BODIES if not decodes(method, body)]
        assert len(undecodable) >= 4, path
        for body in undecodable:
            err = await raw_call(channel, method, body, admin.metadata)
            code = err.code() if err else grpc.StatusCode.OK
            if code != grpc.StatusCode.INVALID_ARGUMENT:
                wrong.append(f"{path} bytes {body[:8].hex()}: {code.name} {err and err.details()}")
        request = message_factory.GetMessageClass(method.input_type)()
        err = await raw_call(
            channel, method, request.SerializeToString(), (("authorization", f"Bearer {forged}"),)
        )
        if err is None or err.code() != grpc.StatusCode.UNAUTHENTICATED:
            wrong.append(f"{path} forged token: {err.code().name if err else 'OK'}")
        err = await raw_call(channel, method, huge_request(request).SerializeToString(), admin.metadata)
        if err is None or err.code() != grpc.StatusCode.INVALID_ARGUMENT:
            wrong.append(f"{path} huge fields: {err.code().name if err else 'OK'} {err and err.details()}")
        elif (
            len((err.details() or "").encode()) > MAX_MESSAGE_BYTES
            or len(status_of(err).SerializeToString()) > MAX_DETAILS_BYTES
        ):
            wrong.append(f"{path} huge fields: an error of {len(status_of(err).SerializeToString())} bytes")
    assert wrong == []
