"""TicketService on a real server: the lifecycle, resolution time, and customers' own tickets."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import grpc
from google.protobuf.field_mask_pb2 import FieldMask

from bhiv.crm.v1 import customer_service_pb2 as cs
from bhiv.crm.v1 import ticket_pb2
from bhiv.crm.v1 import ticket_service_pb2 as ts
from tests.services.crm.conftest import (
    ADMIN,
    OPS,
    SALES,
    SUPPORT,
    Crm,
    as_,
    error_info,
    reason,
    refused,
    violations,
)

Ticket = ticket_pb2.Ticket
OPEN = ticket_pb2.TICKET_STATUS_OPEN
IN_PROGRESS = ticket_pb2.TICKET_STATUS_IN_PROGRESS
WAITING = ticket_pb2.TICKET_STATUS_WAITING_ON_CUSTOMER
RESOLVED = ticket_pb2.TICKET_STATUS_RESOLVED
CLOSED = ticket_pb2.TICKET_STATUS_CLOSED


def count(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / "crm.db") as db:
        return int(db.execute("SELECT COUNT(*) FROM tickets").fetchone()[0])


async def open_ticket(crm: Crm, customer: str, metadata=SUPPORT, **fields: object) -> Ticket:
    fields.setdefault("title", "It broke")
    request = ts.CreateTicketRequest(ticket=Ticket(customer=customer, **fields))
    return (await crm.tickets.CreateTicket(request, metadata=metadata)).ticket


async def set_status(crm: Crm, ticket: Ticket, status: int) -> Ticket:
    request = ts.UpdateTicketRequest(
        ticket=Ticket(name=ticket.name, status=status), update_mask=FieldMask(paths=["status"])
    )
    return (await crm.tickets.UpdateTicket(request, metadata=SUPPORT)).ticket


async def test_create_opens_a_medium_ticket_and_ignores_output_only_fields(crm: Crm) -> None:
    ana = await crm.customer("ana@example.org")
    ticket = await open_ticket(crm, ana.name, status=CLOSED, resolution="forged", assignee="users/sue")
    assert (ticket.status, ticket.priority, ticket.resolution, ticket.assignee) == (
        OPEN,
        ticket_pb2.TICKET_PRIORITY_MEDIUM,
        "",
        "users/sue",
    )
    assert not ticket.HasField("resolve_time")
    err = await refused(
        crm.tickets.CreateTicket(ts.CreateTicketRequest(ticket=Ticket(title=" ")), metadata=SUPPORT)
    )
    assert violations(err) == [("ticket.title", "REQUIRED"), ("ticket.customer", "REQUIRED")]
    err = await refused(open_ticket(crm, "customers/nobody"))
    assert (err.code(), reason(err)) == (grpc.StatusCode.NOT_FOUND, "CUSTOMER_NOT_FOUND")
    err = await refused(open_ticket(crm, "users/ana"))
    assert violations(err) == [("ticket.customer", "BAD_FORMAT")]
    err = await refused(open_ticket(crm, ana.name, priority=9))
    assert violations(err) == [("ticket.priority", "UNDEFINED_ENUM")]
    assert count(crm.data_dir) == 1


async def test_the_lifecycle_records_resolution_and_its_time(crm: Crm) -> None:
    ana = await crm.customer("ana@example.org")
    ticket = await open_ticket(crm, ana.name)
    ticket = await set_status(crm, ticket, IN_PROGRESS)
    ticket = await set_status(crm, ticket, WAITING)
    assigned = await crm.tickets.AssignTicket(
        ts.AssignTicketRequest(name=ticket.name, assignee="users/sue", etag=ticket.etag), metadata=SUPPORT
    )
    assert (assigned.ticket.assignee, assigned.ticket.status) == ("users/sue", WAITING)
    crm.clock.offset += 10
    resolved = (
        await crm.tickets.ResolveTicket(
            ts.ResolveTicketRequest(name=ticket.name, resolution="Replaced the part"), metadata=SUPPORT
        )
    ).ticket
    assert (resolved.status, resolved.resolution) == (RESOLVED, "Replaced the part")
    assert resolved.resolve_time.seconds - resolved.create_time.seconds in (9, 10, 11)
    closed = (
        await crm.tickets.CloseTicket(
            ts.CloseTicketRequest(name=ticket.name, etag=resolved.etag), metadata=SUPPORT
        )
    ).ticket
    assert closed.status == CLOSED and closed.resolve_time == resolved.resolve_time
    reopened = (
        await crm.tickets.ReopenTicket(
            ts.ReopenTicketRequest(name=ticket.name, reason="Broke again"), metadata=SUPPORT
        )
    ).ticket
    assert (reopened.status, reopened.resolution) == (OPEN, "")
    assert not reopened.HasField("resolve_time")


async def test_illegal_moves_are_failed_precondition_naming_the_allowed_states(crm: Crm) -> None:
    ana = await crm.customer("ana@example.org")
    ticket = await open_ticket(crm, ana.name)
    err = await refused(set_status(crm, ticket, RESOLVED))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(err).metadata["allowed"] == (
        "TICKET_STATUS_IN_PROGRESS,TICKET_STATUS_WAITING_ON_CUSTOMER,TICKET_STATUS_RESOLVED"
    )
    assert "ResolveTicket" in (err.details() or "")
    err = await refused(crm.tickets.CloseTicket(ts.CloseTicketRequest(name=ticket.name), metadata=SUPPORT))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    err = await refused(crm.tickets.ReopenTicket(ts.ReopenTicketRequest(name=ticket.name), metadata=SUPPORT))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    await crm.tickets.ResolveTicket(
        ts.ResolveTicketRequest(name=ticket.name, resolution="done"), metadata=SUPPORT
    )
    err = await refused(
        crm.tickets.ResolveTicket(
            ts.ResolveTicketRequest(name=ticket.name, resolution="again"), metadata=SUPPORT
        )
    )
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(err).metadata == {
        "current": "TICKET_STATUS_RESOLVED",
        "allowed": "TICKET_STATUS_CLOSED,TICKET_STATUS_OPEN",
    }
    err = await refused(set_status(crm, ticket, OPEN))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    await crm.tickets.CloseTicket(ts.CloseTicketRequest(name=ticket.name), metadata=SUPPORT)
    err = await refused(
        crm.tickets.AssignTicket(
            ts.AssignTicketRequest(name=ticket.name, assignee="users/sue"), metadata=SUPPORT
        )
    )
    assert (err.code(), reason(err)) == (grpc.StatusCode.FAILED_PRECONDITION, "TICKET_CLOSED")
    err = await refused(crm.tickets.CloseTicket(ts.CloseTicketRequest(name=ticket.name), metadata=SUPPORT))
    assert error_info(err).metadata["allowed"] == "TICKET_STATUS_OPEN"


async def test_resolution_is_required_and_etags_are_checked(crm: Crm) -> None:
    ana = await crm.customer("ana@example.org")
    ticket = await open_ticket(crm, ana.name)
    err = await refused(
        crm.tickets.ResolveTicket(ts.ResolveTicketRequest(name=ticket.name), metadata=SUPPORT)
    )
    assert violations(err) == [("resolution", "REQUIRED")]
    err = await refused(
        crm.tickets.ResolveTicket(
            ts.ResolveTicketRequest(name=ticket.name, resolution="  \n"), metadata=SUPPORT
        )
    )
    assert violations(err) == [("resolution", "REQUIRED")]
    moved = await set_status(crm, ticket, IN_PROGRESS)
    err = await refused(
        crm.tickets.ResolveTicket(
            ts.ResolveTicketRequest(name=ticket.name, resolution="x", etag=ticket.etag), metadata=SUPPORT
        )
    )
    assert (err.code(), reason(err)) == (grpc.StatusCode.ABORTED, "STALE_ETAG")
    got = (await crm.tickets.GetTicket(ts.GetTicketRequest(name=ticket.name), metadata=SUPPORT)).ticket
    assert got == moved


async def test_update_mask_rules(crm: Crm) -> None:
    ana = await crm.customer("ana@example.org")
    bo = await crm.customer("bo@example.org")
    ticket = await open_ticket(crm, ana.name)
    mask = FieldMask(paths=["customer", "resolution", "resolve_time", "nope", "title"])
    err = await refused(
        crm.tickets.UpdateTicket(
            ts.UpdateTicketRequest(
                ticket=Ticket(name=ticket.name, customer=bo.name, title="t"), update_mask=mask
            ),
            metadata=SUPPORT,
        )
    )
    assert violations(err) == [
        ("update_mask.paths[0]", "IMMUTABLE"),
        ("update_mask.paths[1]", "OUTPUT_ONLY"),
        ("update_mask.paths[2]", "OUTPUT_ONLY"),
        ("update_mask.paths[3]", "UNKNOWN_FIELD"),
    ]
    patch = Ticket(
        name=ticket.name, title="New title", priority=ticket_pb2.TICKET_PRIORITY_URGENT, category="billing"
    )
    updated = (
        await crm.tickets.UpdateTicket(
            ts.UpdateTicketRequest(
                ticket=patch, update_mask=FieldMask(paths=["title", "priority", "category"])
            ),
            metadata=SUPPORT,
        )
    ).ticket
    assert (updated.title, updated.priority, updated.category, updated.customer) == (
        "New title",
        ticket_pb2.TICKET_PRIORITY_URGENT,
        "billing",
        ana.name,
    )


async def test_a_customer_opens_and_sees_only_its_own_tickets(crm: Crm) -> None:
    mine = await crm.customer("me@example.org")
    other = await crm.customer("other@example.org")
    me = as_("customer", subject="users/me", customer=mine.name)
    # Customer may be left empty: its own is used; an assignee is ignored.
    own = await open_ticket(crm, "", metadata=me, assignee="users/sue", title="Where is my order? 📦")
    assert (own.customer, own.assignee, own.title) == (mine.name, "", "Where is my order? 📦")
    also_own = await open_ticket(crm, mine.name, metadata=me)
    theirs = await open_ticket(crm, other.name)
    err = await refused(open_ticket(crm, other.name, metadata=me))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    # Naming a customer that does not exist is refused the same way: nothing is looked up.
    err = await refused(open_ticket(crm, "customers/nobody", metadata=me))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    err = await refused(crm.tickets.GetTicket(ts.GetTicketRequest(name=theirs.name), metadata=me))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert (await crm.tickets.GetTicket(ts.GetTicketRequest(name=own.name), metadata=me)).ticket == own
    listed = await crm.tickets.ListTickets(ts.ListTicketsRequest(), metadata=me)
    assert {t.name for t in listed.tickets} == {own.name, also_own.name}
    other_filter = await crm.tickets.ListTickets(ts.ListTicketsRequest(customer=other.name), metadata=me)
    assert list(other_filter.tickets) == []
    # Customers create but never change tickets.
    err = await refused(crm.tickets.CloseTicket(ts.CloseTicketRequest(name=own.name), metadata=me))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    unlinked = as_("customer", subject="users/unlinked")
    err = await refused(open_ticket(crm, "", metadata=unlinked))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert count(crm.data_dir) == 3


async def test_list_filters_and_is_newest_first(crm: Crm) -> None:
    ana = await crm.customer("ana@example.org")
    bo = await crm.customer("bo@example.org")
    first = await open_ticket(crm, ana.name, priority=ticket_pb2.TICKET_PRIORITY_HIGH)
    crm.clock.offset += 1
    second = await open_ticket(crm, bo.name, assignee="users/sue")
    crm.clock.offset += 1
    third = await open_ticket(crm, ana.name)
    await set_status(crm, third, IN_PROGRESS)

    async def names(**filters: object) -> list[str]:
        reply = await crm.tickets.ListTickets(ts.ListTicketsRequest(**filters), metadata=SALES)  # type: ignore[arg-type]
        return [t.name for t in reply.tickets]

    assert await names() == [third.name, second.name, first.name]
    assert await names(customer=ana.name) == [third.name, first.name]
    assert await names(status=IN_PROGRESS) == [third.name]
    assert await names(priority=ticket_pb2.TICKET_PRIORITY_HIGH) == [first.name]
    assert await names(assignee="users/sue") == [second.name]
    err = await refused(crm.tickets.ListTickets(ts.ListTicketsRequest(status=42), metadata=SALES))
    assert violations(err) == [("status", "UNDEFINED_ENUM")]


async def test_a_customer_with_tickets_not_closed_cannot_be_deleted(crm: Crm) -> None:
    ana = await crm.customer("ana@example.org")
    ticket = await open_ticket(crm, ana.name)
    await crm.tickets.ResolveTicket(
        ts.ResolveTicketRequest(name=ticket.name, resolution="done"), metadata=SUPPORT
    )
    err = await refused(crm.customers.DeleteCustomer(cs.DeleteCustomerRequest(name=ana.name), metadata=ADMIN))
    assert (err.code(), reason(err)) == (grpc.StatusCode.FAILED_PRECONDITION, "TICKETS_NOT_CLOSED")
    assert error_info(err).metadata["tickets_not_closed"] == "1"
    await crm.tickets.CloseTicket(ts.CloseTicketRequest(name=ticket.name), metadata=SUPPORT)
    await crm.customers.DeleteCustomer(cs.DeleteCustomerRequest(name=ana.name), metadata=ADMIN)
    # The closed ticket is kept, and cannot be reopened for a customer that is gone.
    kept = (await crm.tickets.GetTicket(ts.GetTicketRequest(name=ticket.name), metadata=SUPPORT)).ticket
    assert kept.status == CLOSED
    err = await refused(crm.tickets.ReopenTicket(ts.ReopenTicketRequest(name=ticket.name), metadata=SUPPORT))
    assert (err.code(), reason(err)) == (grpc.StatusCode.FAILED_PRECONDITION, "CUSTOMER_DELETED")
    assert (
        await crm.tickets.GetTicket(ts.GetTicketRequest(name=ticket.name), metadata=SUPPORT)
    ).ticket == kept


async def test_ticket_roles(crm: Crm) -> None:
    ana = await crm.customer("ana@example.org")
    err = await refused(open_ticket(crm, ana.name, metadata=SALES))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    err = await refused(crm.tickets.ListTickets(ts.ListTicketsRequest(), metadata=OPS))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    ticket = await open_ticket(crm, ana.name, metadata=ADMIN)
    err = await refused(
        crm.tickets.ResolveTicket(ts.ResolveTicketRequest(name=ticket.name, resolution="x"), metadata=SALES)
    )
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_retried_create_returns_the_first_ticket(crm: Crm) -> None:
    ana = await crm.customer("ana@example.org")
    request = ts.CreateTicketRequest(ticket=Ticket(customer=ana.name, title="Once"), request_id="t-1")
    first = await crm.tickets.CreateTicket(request, metadata=SUPPORT)
    assert await crm.tickets.CreateTicket(request, metadata=SUPPORT) == first
    other = ts.CreateTicketRequest(ticket=Ticket(customer=ana.name, title="Twice"), request_id="t-1")
    err = await refused(crm.tickets.CreateTicket(other, metadata=SUPPORT))
    assert violations(err) == [("request_id", "REQUEST_ID_REUSED")]
    assert count(crm.data_dir) == 1
