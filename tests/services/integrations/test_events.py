"""EventService: the intake of published events (dedup, fan-out, validation) and the type catalog."""

from __future__ import annotations

import time
from pathlib import Path

import grpc

from bhiv.integrations.v1 import event_pb2, webhook_pb2
from bhiv.integrations.v1 import event_service_pb2 as es
from bhiv.integrations.v1 import webhook_service_pb2 as ws
from bhiv_core.events import catalog
from tests.services.crm.conftest import refused, violations
from tests.services.integrations.webhook_receivers import (
    ADMIN,
    OPS,
    SALES,
    eventually,
    receiver,
    serve_integrations,
    ticket_event,
    until,
)


async def test_a_repeated_event_id_is_a_duplicate_and_delivered_once(tmp_path: Path) -> None:
    with receiver() as sink:
        async with serve_integrations(tmp_path) as served:
            created = await served.webhook(sink.url)
            first, second = ticket_event(), ticket_event()
            one = await served.publish(first, first)  # repeated inside one batch, too
            assert (one.accepted, one.duplicates, one.deliveries) == (1, 1, 1)
            two = await served.publish(first, second)  # a relay retrying a batch
            assert (two.accepted, two.duplicates, two.deliveries) == (1, 1, 1)
            assert await eventually(until(lambda: sink.count() == 2))
            delivered = await served.deliveries(created.webhook.name)
            assert sorted(d.event_id for d in delivered) == sorted([first.id, second.id])


async def test_events_fan_out_to_active_subscribed_webhooks_only(tmp_path: Path) -> None:
    with receiver() as sink:
        async with serve_integrations(tmp_path) as served:
            tickets = await served.webhook(sink.url, types=("crm.ticket.resolved", "crm.lead.won"))
            leads = await served.webhook(sink.url, types=("crm.lead.won",))
            idle = await served.webhook(sink.url, types=("crm.ticket.resolved",), active=False)
            won = catalog.envelope(
                event_pb2.LeadWonEvent(lead="leads/l1", customer="customers/c1"),
                source="crm",
                subject="leads/l1",
                time=time.time(),
            )
            published = await served.publish(ticket_event(), won)
            assert (published.accepted, published.deliveries) == (2, 3)
            assert await eventually(until(lambda: sink.count() == 3))
            assert len(await served.deliveries(tickets.webhook.name)) == 2
            assert [d.event_type for d in await served.deliveries(leads.webhook.name)] == ["crm.lead.won"]
            assert not await served.deliveries(idle.webhook.name)  # inactive: nothing queued
            by_type = await served.webhooks.ListWebhooks(
                ws.ListWebhooksRequest(event_type="crm.lead.won"), metadata=OPS
            )
            assert [w.name for w in by_type.webhooks] == [tickets.webhook.name, leads.webhook.name]
            active = await served.webhooks.ListWebhooks(
                ws.ListWebhooksRequest(active_only=True), metadata=OPS
            )
            assert idle.webhook.name not in [w.name for w in active.webhooks]


async def test_a_bad_event_fails_the_whole_batch_and_writes_nothing(tmp_path: Path) -> None:
    with receiver() as sink:
        async with serve_integrations(tmp_path) as served:
            await served.webhook(sink.url)
            good = ticket_event()
            unknown = ticket_event()
            unknown.type = "crm.ticket.exploded"
            mismatched = ticket_event()
            mismatched.type = "crm.lead.won"  # the payload is a TicketResolvedEvent
            err = await refused(
                served.events.PublishEvents(
                    es.PublishEventsRequest(events=[good, unknown, mismatched]), metadata=ADMIN
                )
            )
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert set(violations(err)) == {
                ("events[1].type", "UNKNOWN_EVENT_TYPE"),
                ("events[2].payload", "UNKNOWN_EVENT_TYPE"),
            }
            # The good event of the failed batch was not kept: it is new when sent again.
            again = await served.publish(good)
            assert (again.accepted, again.duplicates) == (1, 0)
            for bad in (
                es.PublishEventsRequest(),
                es.PublishEventsRequest(
                    events=[event_pb2.Event(id="x", type="crm.ticket.resolved", source="crm")]
                ),
                es.PublishEventsRequest(events=[ticket_event(id="no spaces allowed")]),
                es.PublishEventsRequest(events=[ticket_event() for _ in range(101)]),
            ):
                err = await refused(served.events.PublishEvents(bad, metadata=ADMIN))
                assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_only_publishers_may_publish(tmp_path: Path) -> None:
    async with serve_integrations(tmp_path) as served:
        for metadata in (OPS, SALES):
            err = await refused(
                served.events.PublishEvents(
                    es.PublishEventsRequest(events=[ticket_event()]), metadata=metadata
                )
            )
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_event_types_are_listed_in_pages_from_the_catalog(tmp_path: Path) -> None:
    async with serve_integrations(tmp_path) as served:
        seen: list[es.EventTypeInfo] = []
        token = ""
        while True:
            page = await served.events.ListEventTypes(
                es.ListEventTypesRequest(page_size=3, page_token=token), metadata=OPS
            )
            assert len(page.event_types) <= 3
            seen += page.event_types
            token = page.next_page_token
            if not token:
                break
        known = catalog.event_types()
        assert [t.type for t in seen] == sorted(known) and len(seen) == len(known) >= 7
        resolved = next(t for t in seen if t.type == "crm.ticket.resolved")
        assert resolved.payload_message == "bhiv.integrations.v1.TicketResolvedEvent"
        assert resolved.description == "A support ticket was resolved."
        err = await refused(
            served.events.ListEventTypes(es.ListEventTypesRequest(page_token="garbage"), metadata=OPS)
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        err = await refused(
            served.events.ListEventTypes(es.ListEventTypesRequest(page_size=-1), metadata=OPS)
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_list_deliveries_pages_newest_first_and_filters_by_status(tmp_path: Path) -> None:
    with receiver() as sink:
        async with serve_integrations(tmp_path) as served:
            created = await served.webhook(sink.url)
            for _ in range(5):
                await served.publish(ticket_event())
            assert await eventually(until(lambda: sink.count() == 5))
            names: list[str] = []
            token = ""
            while True:
                page = await served.webhooks.ListDeliveries(
                    ws.ListDeliveriesRequest(parent=created.webhook.name, page_size=2, page_token=token),
                    metadata=OPS,
                )
                names += [d.name for d in page.deliveries]
                token = page.next_page_token
                if not token:
                    break
            assert len(set(names)) == 5
            listed = await served.deliveries(created.webhook.name)
            times = [d.create_time.ToNanoseconds() for d in listed]
            assert times == sorted(times, reverse=True)
            failed = await served.deliveries(created.webhook.name, status=webhook_pb2.DELIVERY_STATUS_FAILED)
            assert not failed
