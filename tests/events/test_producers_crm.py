"""CRM publishes through its outbox: a ticket opened or resolved, a lead won — each with its change."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from bhiv.crm.v1 import lead_pb2, lead_service_pb2, ticket_pb2, ticket_service_pb2
from bhiv.integrations.v1 import event_pb2
from bhiv_core.events.catalog import payload_of
from tests.events.conftest import stored_events
from tests.services.crm.conftest import SALES, SUPPORT, Crm, refused, serve_crm


@pytest.fixture
async def crm(tmp_path: Path) -> AsyncIterator[Crm]:
    async with serve_crm(tmp_path, EVENTS_RELAY="off") as served:  # the events stay to be read
        yield served


def events(crm: Crm) -> list[event_pb2.Event]:
    return stored_events(crm.data_dir / "crm.db")


async def open_ticket(crm: Crm, request_id: str = "") -> ticket_pb2.Ticket:
    customer = await crm.customer("ana@example.org")
    request = ticket_service_pb2.CreateTicketRequest(
        ticket=ticket_pb2.Ticket(
            customer=customer.name,
            title="The scanner is dead",
            priority=ticket_pb2.TICKET_PRIORITY_HIGH,
            assignee="users/sue",
        ),
        request_id=request_id,
    )
    ticket = (await crm.tickets.CreateTicket(request, metadata=SUPPORT)).ticket
    if request_id:  # a retry gets the first ticket and publishes nothing more
        assert (await crm.tickets.CreateTicket(request, metadata=SUPPORT)).ticket == ticket
    return ticket


async def test_opening_a_ticket_publishes_crm_ticket_opened_once(crm: Crm) -> None:
    ticket = await open_ticket(crm, request_id="open-1")
    (event,) = events(crm)
    assert (event.type, event.source, event.subject) == ("crm.ticket.opened", "crm", ticket.name)
    assert event.time == ticket.create_time
    assert payload_of(event) == event_pb2.TicketOpenedEvent(
        ticket=ticket.name,
        customer=ticket.customer,
        subject="The scanner is dead",
        priority="TICKET_PRIORITY_HIGH",
    )


async def test_resolving_a_ticket_publishes_crm_ticket_resolved_with_its_fields(crm: Crm) -> None:
    ticket = await open_ticket(crm)
    update = ticket_service_pb2.UpdateTicketRequest(
        ticket=ticket_pb2.Ticket(name=ticket.name, status=ticket_pb2.TICKET_STATUS_IN_PROGRESS),
        update_mask=FieldMask(paths=["status"]),
    )
    await crm.tickets.UpdateTicket(update, metadata=SUPPORT)  # not resolved: no event
    resolve = ticket_service_pb2.ResolveTicketRequest(name=ticket.name, resolution="Replaced the part")
    resolved = (await crm.tickets.ResolveTicket(resolve, metadata=SUPPORT)).ticket
    err = await refused(crm.tickets.ResolveTicket(resolve, metadata=SUPPORT))  # refused: no event
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    opened, event = events(crm)
    assert opened.type == "crm.ticket.opened"
    assert (event.type, event.subject, event.time) == (
        "crm.ticket.resolved",
        ticket.name,
        resolved.resolve_time,
    )
    assert payload_of(event) == event_pb2.TicketResolvedEvent(
        ticket=ticket.name, customer=ticket.customer, subject=ticket.title, assignee="users/sue"
    )


async def test_reopening_and_resolving_again_publishes_a_second_resolution(crm: Crm) -> None:
    ticket = await open_ticket(crm)
    resolve = ticket_service_pb2.ResolveTicketRequest(name=ticket.name, resolution="Fixed")
    await crm.tickets.ResolveTicket(resolve, metadata=SUPPORT)
    await crm.tickets.ReopenTicket(ticket_service_pb2.ReopenTicketRequest(name=ticket.name), metadata=SUPPORT)
    await crm.tickets.ResolveTicket(resolve, metadata=SUPPORT)
    assert [e.type for e in events(crm)] == [
        "crm.ticket.opened",
        "crm.ticket.resolved",
        "crm.ticket.resolved",
    ]


async def test_converting_a_lead_publishes_crm_lead_won_once(crm: Crm) -> None:
    created = await crm.leads.CreateLead(
        lead_service_pb2.CreateLeadRequest(
            lead=lead_pb2.Lead(
                first_name="Lia", email="lia@example.org", company="Acme", assignee="users/sam"
            )
        ),
        metadata=SALES,
    )
    lead = created.lead
    assert events(crm) == []
    convert = lead_service_pb2.ConvertLeadRequest(name=lead.name, request_id="convert-1")
    reply = await crm.leads.ConvertLead(convert, metadata=SALES)
    assert await crm.leads.ConvertLead(convert, metadata=SALES) == reply  # a retry: no second event
    err = await refused(
        crm.leads.ConvertLead(lead_service_pb2.ConvertLeadRequest(name=lead.name), metadata=SALES)
    )
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    (event,) = events(crm)
    assert (event.type, event.subject, event.time) == ("crm.lead.won", lead.name, reply.lead.convert_time)
    assert payload_of(event) == event_pb2.LeadWonEvent(
        lead=lead.name, customer=reply.customer.name, company="Acme", owner="users/sam"
    )
