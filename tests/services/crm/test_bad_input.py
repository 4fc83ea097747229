"""Bad input changes nothing: every CRM RPC refuses it with a clean code and leaves the store as it was.

Each case sends one bad request to a crm holding a customer, a lead and a ticket, and checks the
exact code, the field violations where there are any, and that no row of any table (the
idempotency receipts included) was added, changed or removed.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp

from bhiv.crm.v1 import address_pb2, customer_pb2, interaction_pb2, lead_pb2, money_pb2, ticket_pb2
from bhiv.crm.v1 import customer_service_pb2 as cs
from bhiv.crm.v1 import interaction_service_pb2 as its
from bhiv.crm.v1 import lead_service_pb2 as ls
from bhiv.crm.v1 import ticket_service_pb2 as ts
from tests.services.crm.conftest import ADMIN, SALES, SUPPORT, Crm, refused, violations

TABLES = ("customers", "leads", "tickets", "interactions", "receipts")
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND


@dataclass
class Seeded:
    customer: str
    lead: str
    ticket: str


def snapshot(data_dir: Path) -> dict[str, list[tuple[Any, ...]]]:
    with sqlite3.connect(data_dir / "crm.db") as db:
        return {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall()) for t in TABLES}


async def seed(crm: Crm) -> Seeded:
    customer = await crm.customer("ana@example.org")
    lead = await crm.leads.CreateLead(
        ls.CreateLeadRequest(lead=lead_pb2.Lead(first_name="Lia")), metadata=SALES
    )
    ticket = await crm.tickets.CreateTicket(
        ts.CreateTicketRequest(ticket=ticket_pb2.Ticket(customer=customer.name, title="t")), metadata=SUPPORT
    )
    return Seeded(customer.name, lead.lead.name, ticket.ticket.name)


Case = tuple[str, Callable[[Crm, Seeded], Any], grpc.StatusCode, list[tuple[str, str]] | None]

C, L, T, Act = customer_pb2.Customer, lead_pb2.Lead, ticket_pb2.Ticket, interaction_pb2.Interaction
LONG = "x" * 10_001

CASES: list[Case] = [
    # Customers
    (
        "create without a customer",
        lambda c, s: c.customers.CreateCustomer(cs.CreateCustomerRequest(), metadata=SALES),
        INVALID,
        [("customer", "REQUIRED")],
    ),
    (
        "create with a malformed e-mail",
        lambda c, s: c.customers.CreateCustomer(
            cs.CreateCustomerRequest(customer=C(first_name="A", email="a@b")), metadata=SALES
        ),
        INVALID,
        [("customer.email", "BAD_EMAIL")],
    ),
    (
        "create with an oversized name",
        lambda c, s: c.customers.CreateCustomer(
            cs.CreateCustomerRequest(customer=C(first_name="A" * 201, email="a@b.co")), metadata=SALES
        ),
        INVALID,
        [("customer.first_name", "TOO_LONG")],
    ),
    (
        "create with oversized notes",
        lambda c, s: c.customers.CreateCustomer(
            cs.CreateCustomerRequest(customer=C(first_name="A", email="a@b.co", notes=LONG)), metadata=SALES
        ),
        INVALID,
        [("customer.notes", "TOO_LONG")],
    ),
    (
        "create with an unknown status",
        lambda c, s: c.customers.CreateCustomer(
            cs.CreateCustomerRequest(customer=C(first_name="A", email="a@b.co", status=42)), metadata=SALES
        ),
        INVALID,
        [("customer.status", "UNDEFINED_ENUM")],
    ),
    (
        "create with too many tags",
        lambda c, s: c.customers.CreateCustomer(
            cs.CreateCustomerRequest(
                customer=C(first_name="A", email="a@b.co", tags=[f"t{n}" for n in range(21)])
            ),
            metadata=SALES,
        ),
        INVALID,
        [("customer.tags", "TOO_MANY")],
    ),
    (
        "create with a bad country",
        lambda c, s: c.customers.CreateCustomer(
            cs.CreateCustomerRequest(
                customer=C(first_name="A", email="a@b.co", address=address_pb2.Address(country_code="India"))
            ),
            metadata=SALES,
        ),
        INVALID,
        [("customer.address.country_code", "BAD_FORMAT")],
    ),
    (
        "create with a taken e-mail",
        lambda c, s: c.customers.CreateCustomer(
            cs.CreateCustomerRequest(customer=C(first_name="A", email="ANA@example.org"), request_id="r"),
            metadata=SALES,
        ),
        grpc.StatusCode.ALREADY_EXISTS,
        None,
    ),
    (
        "create with an oversized request id",
        lambda c, s: c.customers.CreateCustomer(
            cs.CreateCustomerRequest(customer=C(first_name="A", email="a@b.co"), request_id="r" * 65),
            metadata=SALES,
        ),
        INVALID,
        [("request_id", "TOO_LONG")],
    ),
    (
        "get without a name",
        lambda c, s: c.customers.GetCustomer(cs.GetCustomerRequest(), metadata=SALES),
        INVALID,
        [("name", "REQUIRED")],
    ),
    (
        "get a malformed name",
        lambda c, s: c.customers.GetCustomer(cs.GetCustomerRequest(name="customers/../x"), metadata=SALES),
        INVALID,
        [("name", "BAD_FORMAT")],
    ),
    (
        "get an unknown customer",
        lambda c, s: c.customers.GetCustomer(cs.GetCustomerRequest(name="customers/unknown"), metadata=SALES),
        NOT_FOUND,
        None,
    ),
    (
        "list with a negative page size",
        lambda c, s: c.customers.ListCustomers(cs.ListCustomersRequest(page_size=-1), metadata=SALES),
        INVALID,
        [("page_size", "OUT_OF_RANGE")],
    ),
    (
        "list with a forged page token",
        lambda c, s: c.customers.ListCustomers(cs.ListCustomersRequest(page_token="AAAA"), metadata=SALES),
        INVALID,
        [("page_token", "BAD_PAGE_TOKEN")],
    ),
    (
        "list with an oversized query",
        lambda c, s: c.customers.ListCustomers(cs.ListCustomersRequest(query="q" * 201), metadata=SALES),
        INVALID,
        [("query", "TOO_LONG")],
    ),
    (
        "update without a mask",
        lambda c, s: c.customers.UpdateCustomer(
            cs.UpdateCustomerRequest(customer=C(name=s.customer, notes="x")), metadata=SALES
        ),
        INVALID,
        [("update_mask", "REQUIRED")],
    ),
    (
        "update without a name",
        lambda c, s: c.customers.UpdateCustomer(
            cs.UpdateCustomerRequest(customer=C(notes="x"), update_mask=FieldMask(paths=["notes"])),
            metadata=SALES,
        ),
        INVALID,
        [("customer.name", "REQUIRED")],
    ),
    (
        "update with an output-only path",
        lambda c, s: c.customers.UpdateCustomer(
            cs.UpdateCustomerRequest(
                customer=C(name=s.customer), update_mask=FieldMask(paths=["create_time"])
            ),
            metadata=SALES,
        ),
        INVALID,
        [("update_mask.paths[0]", "OUTPUT_ONLY")],
    ),
    (
        "update with a bad tag",
        lambda c, s: c.customers.UpdateCustomer(
            cs.UpdateCustomerRequest(
                customer=C(name=s.customer, tags=["Not OK"]), update_mask=FieldMask(paths=["tags"])
            ),
            metadata=SALES,
        ),
        INVALID,
        [("customer.tags[0]", "BAD_FORMAT")],
    ),
    (
        "update a stale etag",
        lambda c, s: c.customers.UpdateCustomer(
            cs.UpdateCustomerRequest(
                customer=C(name=s.customer, etag="old", notes="x"), update_mask=FieldMask(paths=["notes"])
            ),
            metadata=SALES,
        ),
        grpc.StatusCode.ABORTED,
        None,
    ),
    (
        "update an unknown customer",
        lambda c, s: c.customers.UpdateCustomer(
            cs.UpdateCustomerRequest(
                customer=C(name="customers/unknown", notes="x"), update_mask=FieldMask(paths=["notes"])
            ),
            metadata=SALES,
        ),
        NOT_FOUND,
        None,
    ),
    (
        "delete with an oversized etag",
        lambda c, s: c.customers.DeleteCustomer(
            cs.DeleteCustomerRequest(name=s.customer, etag="e" * 129), metadata=ADMIN
        ),
        INVALID,
        [("etag", "TOO_LONG")],
    ),
    (
        "delete with an open ticket",
        lambda c, s: c.customers.DeleteCustomer(cs.DeleteCustomerRequest(name=s.customer), metadata=ADMIN),
        grpc.StatusCode.FAILED_PRECONDITION,
        None,
    ),
    # Leads
    (
        "lead with a negative probability",
        lambda c, s: c.leads.CreateLead(
            ls.CreateLeadRequest(lead=L(first_name="A", probability=-1)), metadata=SALES
        ),
        INVALID,
        [("lead.probability", "OUT_OF_RANGE")],
    ),
    (
        "lead with a negative amount",
        lambda c, s: c.leads.CreateLead(
            ls.CreateLeadRequest(
                lead=L(first_name="A", estimated_value=money_pb2.Money(currency_code="USD", amount_micros=-5))
            ),
            metadata=SALES,
        ),
        INVALID,
        [("lead.estimated_value.amount_micros", "OUT_OF_RANGE")],
    ),
    (
        "lead with an unknown source",
        lambda c, s: c.leads.CreateLead(
            ls.CreateLeadRequest(lead=L(first_name="A", source=99)), metadata=SALES
        ),
        INVALID,
        [("lead.source", "UNDEFINED_ENUM")],
    ),
    (
        "lead with a malformed assignee",
        lambda c, s: c.leads.CreateLead(
            ls.CreateLeadRequest(lead=L(first_name="A", assignee="bob")), metadata=SALES
        ),
        INVALID,
        [("lead.assignee", "BAD_FORMAT")],
    ),
    (
        "lead created won",
        lambda c, s: c.leads.CreateLead(
            ls.CreateLeadRequest(lead=L(first_name="A", status=lead_pb2.LEAD_STATUS_WON)), metadata=SALES
        ),
        INVALID,
        [("lead.status", "NOT_OPEN_STAGE")],
    ),
    (
        "lead moved to won",
        lambda c, s: c.leads.UpdateLead(
            ls.UpdateLeadRequest(
                lead=L(name=s.lead, status=lead_pb2.LEAD_STATUS_WON), update_mask=FieldMask(paths=["status"])
            ),
            metadata=SALES,
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        None,
    ),
    (
        "convert a lead without e-mail",
        lambda c, s: c.leads.ConvertLead(ls.ConvertLeadRequest(name=s.lead, request_id="r"), metadata=SALES),
        grpc.StatusCode.FAILED_PRECONDITION,
        None,
    ),
    (
        "convert an unknown lead",
        lambda c, s: c.leads.ConvertLead(ls.ConvertLeadRequest(name="leads/unknown"), metadata=SALES),
        NOT_FOUND,
        None,
    ),
    (
        "convert a customer's name",
        lambda c, s: c.leads.ConvertLead(ls.ConvertLeadRequest(name=s.customer), metadata=SALES),
        INVALID,
        [("name", "BAD_FORMAT")],
    ),
    (
        "list leads of an unknown status",
        lambda c, s: c.leads.ListLeads(ls.ListLeadsRequest(status=99), metadata=SALES),
        INVALID,
        [("status", "UNDEFINED_ENUM")],
    ),
    (
        "delete an unknown lead",
        lambda c, s: c.leads.DeleteLead(ls.DeleteLeadRequest(name="leads/unknown"), metadata=ADMIN),
        NOT_FOUND,
        None,
    ),
    # Tickets
    (
        "ticket for an unknown customer",
        lambda c, s: c.tickets.CreateTicket(
            ts.CreateTicketRequest(ticket=T(customer="customers/unknown", title="t"), request_id="r"),
            metadata=SUPPORT,
        ),
        NOT_FOUND,
        None,
    ),
    (
        "ticket with an unknown priority",
        lambda c, s: c.tickets.CreateTicket(
            ts.CreateTicketRequest(ticket=T(customer=s.customer, title="t", priority=9)), metadata=SUPPORT
        ),
        INVALID,
        [("ticket.priority", "UNDEFINED_ENUM")],
    ),
    (
        "ticket with an oversized title",
        lambda c, s: c.tickets.CreateTicket(
            ts.CreateTicketRequest(ticket=T(customer=s.customer, title="t" * 201)), metadata=SUPPORT
        ),
        INVALID,
        [("ticket.title", "TOO_LONG")],
    ),
    (
        "assign without an assignee",
        lambda c, s: c.tickets.AssignTicket(ts.AssignTicketRequest(name=s.ticket), metadata=SUPPORT),
        INVALID,
        [("assignee", "REQUIRED")],
    ),
    (
        "assign an unknown ticket",
        lambda c, s: c.tickets.AssignTicket(
            ts.AssignTicketRequest(name="tickets/unknown", assignee="users/sue"), metadata=SUPPORT
        ),
        NOT_FOUND,
        None,
    ),
    (
        "resolve with an oversized resolution",
        lambda c, s: c.tickets.ResolveTicket(
            ts.ResolveTicketRequest(name=s.ticket, resolution=LONG), metadata=SUPPORT
        ),
        INVALID,
        [("resolution", "TOO_LONG")],
    ),
    (
        "reopen with an oversized reason",
        lambda c, s: c.tickets.ReopenTicket(
            ts.ReopenTicketRequest(name=s.ticket, reason="r" * 2001), metadata=SUPPORT
        ),
        INVALID,
        [("reason", "TOO_LONG")],
    ),
    (
        "close an open ticket",
        lambda c, s: c.tickets.CloseTicket(ts.CloseTicketRequest(name=s.ticket), metadata=SUPPORT),
        grpc.StatusCode.FAILED_PRECONDITION,
        None,
    ),
    (
        "change a ticket's customer",
        lambda c, s: c.tickets.UpdateTicket(
            ts.UpdateTicketRequest(
                ticket=T(name=s.ticket, customer=s.customer), update_mask=FieldMask(paths=["customer"])
            ),
            metadata=SUPPORT,
        ),
        INVALID,
        [("update_mask.paths[0]", "IMMUTABLE")],
    ),
    (
        "list tickets of a malformed customer",
        lambda c, s: c.tickets.ListTickets(ts.ListTicketsRequest(customer="bob"), metadata=SUPPORT),
        INVALID,
        [("customer", "BAD_FORMAT")],
    ),
    # Interactions
    (
        "interaction in the future",
        lambda c, s: c.interactions.CreateInteraction(
            its.CreateInteractionRequest(
                interaction=Act(
                    customer=s.customer, type=1, subject="s", occur_time=Timestamp(seconds=4_000_000_000)
                )
            ),
            metadata=SALES,
        ),
        INVALID,
        [("interaction.occur_time", "IN_FUTURE")],
    ),
    (
        "interaction with bad nanos",
        lambda c, s: c.interactions.CreateInteraction(
            its.CreateInteractionRequest(
                interaction=Act(
                    customer=s.customer, type=1, subject="s", occur_time=Timestamp(seconds=1, nanos=-1)
                )
            ),
            metadata=SALES,
        ),
        INVALID,
        [("interaction.occur_time.nanos", "OUT_OF_RANGE")],
    ),
    (
        "interaction of an unknown type",
        lambda c, s: c.interactions.CreateInteraction(
            its.CreateInteractionRequest(interaction=Act(customer=s.customer, type=6, subject="s")),
            metadata=SALES,
        ),
        INVALID,
        [("interaction.type", "UNDEFINED_ENUM")],
    ),
    (
        "interaction for an unknown customer",
        lambda c, s: c.interactions.CreateInteraction(
            its.CreateInteractionRequest(
                interaction=Act(customer="customers/unknown", type=1, subject="s"), request_id="r"
            ),
            metadata=SALES,
        ),
        NOT_FOUND,
        None,
    ),
    (
        "interactions in an empty window",
        lambda c, s: c.interactions.ListInteractions(
            its.ListInteractionsRequest(start_time=Timestamp(seconds=10), end_time=Timestamp(seconds=5)),
            metadata=SALES,
        ),
        INVALID,
        [("end_time", "BAD_RANGE")],
    ),
    (
        "get an unknown interaction",
        lambda c, s: c.interactions.GetInteraction(
            its.GetInteractionRequest(name="interactions/unknown"), metadata=SALES
        ),
        NOT_FOUND,
        None,
    ),
]


@pytest.mark.parametrize(("case", "call", "code", "expected"), CASES, ids=[case[0] for case in CASES])
async def test_bad_input_is_refused_cleanly_and_changes_nothing(
    crm: Crm,
    case: str,
    call: Callable[[Crm, Seeded], Any],
    code: grpc.StatusCode,
    expected: list[tuple[str, str]] | None,
) -> None:
    seeded = await seed(crm)
    before = snapshot(crm.data_dir)
    err = await refused(call(crm, seeded))
    assert err.code() == code, err.details()
    if expected is not None:
        assert violations(err) == expected
    assert snapshot(crm.data_dir) == before
