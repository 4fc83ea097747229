"""CRM through the real edge, with real tokens: the main flows and what a customer may see."""

from __future__ import annotations

import json
import secrets

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from bhiv.crm.v1 import customer_pb2, interaction_pb2, lead_pb2, money_pb2, ticket_pb2
from bhiv.crm.v1 import customer_service_pb2 as cs
from bhiv.crm.v1 import customer_service_pb2_grpc as cs_grpc
from bhiv.crm.v1 import dashboard_service_pb2 as ds
from bhiv.crm.v1 import dashboard_service_pb2_grpc as ds_grpc
from bhiv.crm.v1 import interaction_service_pb2 as its
from bhiv.crm.v1 import interaction_service_pb2_grpc as is_grpc
from bhiv.crm.v1 import lead_service_pb2 as ls
from bhiv.crm.v1 import lead_service_pb2_grpc as ls_grpc
from bhiv.crm.v1 import ticket_service_pb2 as ts
from bhiv.crm.v1 import ticket_service_pb2_grpc as ts_grpc
from bhiv_core.mesh import Mesh
from tests.e2e.client import CALL_TIMEOUT, Session, create_user
from tests.e2e.test_edge import grpcurl

pytestmark = pytest.mark.e2e


def unique_email(prefix: str = "c") -> str:
    return f"{prefix}-{secrets.token_hex(4)}@Example.org"


async def create_customer(
    channel: grpc.aio.Channel, session: Session, **fields: object
) -> customer_pb2.Customer:
    customer = customer_pb2.Customer(**fields)  # type: ignore[arg-type]
    reply = await cs_grpc.CustomerServiceStub(channel).CreateCustomer(
        cs.CreateCustomerRequest(customer=customer), metadata=session.metadata, timeout=CALL_TIMEOUT
    )
    return reply.customer


async def test_customers_through_the_edge_with_a_customer_token_seeing_only_its_own(
    mesh: Mesh, admin: Session
) -> None:
    sales = await create_user(mesh, admin, "sales")
    ops = await create_user(mesh, admin, "ops")
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        stub = cs_grpc.CustomerServiceStub(channel)
        mine = await create_customer(
            channel, sales, first_name="Seán", last_name="O'Brien", email=unique_email()
        )
        other = await create_customer(channel, sales, first_name="नमस्ते", last_name="🙂", email=unique_email())
        # Logistics reads customers with the caller's (ops) token.
        got = await stub.GetCustomer(
            cs.GetCustomerRequest(name=other.name), metadata=ops.metadata, timeout=CALL_TIMEOUT
        )
        assert got.customer == other
        assert got.customer.first_name.encode() == "नमस्ते".encode()
        with pytest.raises(grpc.aio.AioRpcError) as taken:
            await create_customer(channel, sales, first_name="X", email=mine.email.upper())
        assert taken.value.code() == grpc.StatusCode.ALREADY_EXISTS

        me = await create_user(mesh, admin, "customer", customer=mine.name)
        own = await stub.GetCustomer(
            cs.GetCustomerRequest(name=mine.name), metadata=me.metadata, timeout=CALL_TIMEOUT
        )
        assert own.customer == mine
        with pytest.raises(grpc.aio.AioRpcError) as hidden:
            await stub.GetCustomer(
                cs.GetCustomerRequest(name=other.name), metadata=me.metadata, timeout=CALL_TIMEOUT
            )
        assert hidden.value.code() == grpc.StatusCode.NOT_FOUND
        listed = await stub.ListCustomers(
            cs.ListCustomersRequest(), metadata=me.metadata, timeout=CALL_TIMEOUT
        )
        assert [c.name for c in listed.customers] == [mine.name]
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await create_customer(channel, me, first_name="X", email=unique_email())
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_grpcurl_creates_and_lists_customers_through_the_edge(mesh: Mesh, admin: Session) -> None:
    bearer = f"authorization: Bearer {admin.access_token}"
    email = unique_email("grpcurl")
    body = json.dumps(
        {"customer": {"first_name": "Asha", "last_name": "O'Brien", "email": email}, "request_id": "g-1"}
    )
    created = grpcurl(mesh, "-H", bearer, "-d", body, "bhiv.crm.v1.CustomerService/CreateCustomer")
    assert created.returncode == 0, created.stderr
    customer = json.loads(created.stdout)["customer"]
    assert customer["last_name"] == "O'Brien" and customer["status"] == "CUSTOMER_STATUS_ACTIVE"
    again = grpcurl(mesh, "-H", bearer, "-d", body, "bhiv.crm.v1.CustomerService/CreateCustomer")
    assert json.loads(again.stdout)["customer"] == customer
    listed = grpcurl(
        mesh,
        "-H",
        bearer,
        "-d",
        json.dumps({"query": "o'brien"}),
        "bhiv.crm.v1.CustomerService/ListCustomers",
    )
    assert listed.returncode == 0, listed.stderr
    assert customer["name"] in [c["name"] for c in json.loads(listed.stdout)["customers"]]
    bad = grpcurl(
        mesh,
        "-H",
        bearer,
        "-d",
        '{"customer": {"first_name": "A"}}',
        "bhiv.crm.v1.CustomerService/CreateCustomer",
    )
    assert "Code: InvalidArgument" in bad.stderr
    assert "customer.email: is required" in bad.stderr


async def test_a_lead_is_worked_converted_once_and_counted_on_the_dashboard(
    mesh: Mesh, admin: Session
) -> None:
    sales = await create_user(mesh, admin, "sales")
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        leads = ls_grpc.LeadServiceStub(channel)
        board_before = await ds_grpc.DashboardServiceStub(channel).GetDashboard(
            ds.GetDashboardRequest(), metadata=sales.metadata, timeout=CALL_TIMEOUT
        )
        value = money_pb2.Money(currency_code="INR", amount_micros=250_000_000_000)
        lead = (
            await leads.CreateLead(
                ls.CreateLeadRequest(
                    lead=lead_pb2.Lead(
                        first_name="Asha", email=unique_email("lead"), estimated_value=value, probability=40
                    )
                ),
                metadata=sales.metadata,
                timeout=CALL_TIMEOUT,
            )
        ).lead
        qualify = ls.UpdateLeadRequest(
            lead=lead_pb2.Lead(name=lead.name, etag=lead.etag, status=lead_pb2.LEAD_STATUS_QUALIFIED),
            update_mask=FieldMask(paths=["status"]),
        )
        lead = (await leads.UpdateLead(qualify, metadata=sales.metadata, timeout=CALL_TIMEOUT)).lead
        with pytest.raises(grpc.aio.AioRpcError) as stale:
            await leads.UpdateLead(qualify, metadata=sales.metadata, timeout=CALL_TIMEOUT)
        assert stale.value.code() == grpc.StatusCode.ABORTED
        win = ls.UpdateLeadRequest(
            lead=lead_pb2.Lead(name=lead.name, status=lead_pb2.LEAD_STATUS_WON),
            update_mask=FieldMask(paths=["status"]),
        )
        with pytest.raises(grpc.aio.AioRpcError) as illegal:
            await leads.UpdateLead(win, metadata=sales.metadata, timeout=CALL_TIMEOUT)
        assert illegal.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "LEAD_STATUS_LOST" in (illegal.value.details() or "")

        convert = ls.ConvertLeadRequest(name=lead.name, etag=lead.etag, request_id=secrets.token_hex(8))
        first = await leads.ConvertLead(convert, metadata=sales.metadata, timeout=CALL_TIMEOUT)
        again = await leads.ConvertLead(convert, metadata=sales.metadata, timeout=CALL_TIMEOUT)
        assert again == first
        assert first.lead.converted_customer == first.customer.name
        with pytest.raises(grpc.aio.AioRpcError) as converted:
            await leads.ConvertLead(
                ls.ConvertLeadRequest(name=lead.name), metadata=sales.metadata, timeout=CALL_TIMEOUT
            )
        assert converted.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        got = await cs_grpc.CustomerServiceStub(channel).GetCustomer(
            cs.GetCustomerRequest(name=first.customer.name), metadata=sales.metadata, timeout=CALL_TIMEOUT
        )
        assert got.customer == first.customer

        board = await ds_grpc.DashboardServiceStub(channel).GetDashboard(
            ds.GetDashboardRequest(), metadata=sales.metadata, timeout=CALL_TIMEOUT
        )
    won = {e.status: e.count for e in board.leads_by_status}[lead_pb2.LEAD_STATUS_WON]
    won_before = {e.status: e.count for e in board_before.leads_by_status}[lead_pb2.LEAD_STATUS_WON]
    assert won == won_before + 1
    active = {e.status: e.count for e in board.customers_by_status}[customer_pb2.CUSTOMER_STATUS_ACTIVE]
    assert active >= 1


async def test_a_customer_token_opens_and_sees_only_its_own_tickets(mesh: Mesh, admin: Session) -> None:
    sales = await create_user(mesh, admin, "sales")
    support = await create_user(mesh, admin, "support")
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        tickets = ts_grpc.TicketServiceStub(channel)
        mine = await create_customer(channel, sales, first_name="Mine", email=unique_email())
        other = await create_customer(channel, sales, first_name="Other", email=unique_email())
        me = await create_user(mesh, admin, "customer", customer=mine.name)
        theirs = (
            await tickets.CreateTicket(
                ts.CreateTicketRequest(ticket=ticket_pb2.Ticket(customer=other.name, title="Theirs")),
                metadata=support.metadata,
                timeout=CALL_TIMEOUT,
            )
        ).ticket
        own = (
            await tickets.CreateTicket(
                ts.CreateTicketRequest(ticket=ticket_pb2.Ticket(title="Where is my parcel? 📦")),
                metadata=me.metadata,
                timeout=CALL_TIMEOUT,
            )
        ).ticket
        assert own.customer == mine.name
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await tickets.CreateTicket(
                ts.CreateTicketRequest(ticket=ticket_pb2.Ticket(customer=other.name, title="x")),
                metadata=me.metadata,
                timeout=CALL_TIMEOUT,
            )
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as hidden:
            await tickets.GetTicket(
                ts.GetTicketRequest(name=theirs.name), metadata=me.metadata, timeout=CALL_TIMEOUT
            )
        assert hidden.value.code() == grpc.StatusCode.NOT_FOUND
        listed = await tickets.ListTickets(
            ts.ListTicketsRequest(), metadata=me.metadata, timeout=CALL_TIMEOUT
        )
        assert [t.name for t in listed.tickets] == [own.name]

        # Support works it to the end; the customer cannot be deleted until it is closed.
        resolved = await tickets.ResolveTicket(
            ts.ResolveTicketRequest(name=own.name, resolution="Found it"),
            metadata=support.metadata,
            timeout=CALL_TIMEOUT,
        )
        assert resolved.ticket.HasField("resolve_time")
        customers = cs_grpc.CustomerServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as busy:
            await customers.DeleteCustomer(
                cs.DeleteCustomerRequest(name=mine.name), metadata=admin.metadata, timeout=CALL_TIMEOUT
            )
        assert busy.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        await tickets.CloseTicket(
            ts.CloseTicketRequest(name=own.name), metadata=support.metadata, timeout=CALL_TIMEOUT
        )
        deleted = await customers.DeleteCustomer(
            cs.DeleteCustomerRequest(name=mine.name), metadata=admin.metadata, timeout=CALL_TIMEOUT
        )
        assert deleted.name == mine.name
        # Its closed ticket is kept, and still its own.
        kept = await tickets.GetTicket(
            ts.GetTicketRequest(name=own.name), metadata=me.metadata, timeout=CALL_TIMEOUT
        )
        assert kept.ticket.status == ticket_pb2.TICKET_STATUS_CLOSED


async def test_interactions_move_the_last_contact_time(mesh: Mesh, admin: Session) -> None:
    support = await create_user(mesh, admin, "support")
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        customer = await create_customer(channel, support, first_name="Ravi", email=unique_email())
        made = await is_grpc.InteractionServiceStub(channel).CreateInteraction(
            its.CreateInteractionRequest(
                interaction=interaction_pb2.Interaction(
                    customer=customer.name,
                    type=interaction_pb2.INTERACTION_TYPE_CALL,
                    subject="नमस्ते — follow-up",
                )
            ),
            metadata=support.metadata,
            timeout=CALL_TIMEOUT,
        )
        assert made.interaction.author == support.user.name
        got = await cs_grpc.CustomerServiceStub(channel).GetCustomer(
            cs.GetCustomerRequest(name=customer.name), metadata=support.metadata, timeout=CALL_TIMEOUT
        )
    assert got.customer.last_contact_time == made.interaction.occur_time
