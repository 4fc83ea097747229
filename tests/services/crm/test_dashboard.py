"""DashboardService against a known dataset, figure by figure."""

from __future__ import annotations

import grpc
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp

from bhiv.crm.v1 import customer_pb2, dashboard_service_pb2, interaction_pb2, lead_pb2, money_pb2, ticket_pb2
from bhiv.crm.v1 import interaction_service_pb2 as its
from bhiv.crm.v1 import lead_service_pb2 as ls
from bhiv.crm.v1 import ticket_service_pb2 as ts
from tests.services.crm.conftest import SALES, SUPPORT, Crm, as_, refused

DAY = 86400
INT64_MAX = 2**63 - 1


async def lead(
    crm: Crm, status: int = 0, currency: str = "", micros: int = 0, probability: int = 0, email: str = ""
) -> lead_pb2.Lead:
    value = money_pb2.Money(currency_code=currency, amount_micros=micros) if currency else None
    request = ls.CreateLeadRequest(
        lead=lead_pb2.Lead(
            first_name="L", status=status, estimated_value=value, probability=probability, email=email
        )  # type: ignore[arg-type]
    )
    return (await crm.leads.CreateLead(request, metadata=SALES)).lead


async def ticket(crm: Crm, customer: str, priority: int) -> ticket_pb2.Ticket:
    request = ts.CreateTicketRequest(
        ticket=ticket_pb2.Ticket(customer=customer, title="t", priority=priority)
    )  # type: ignore[arg-type]
    return (await crm.tickets.CreateTicket(request, metadata=SUPPORT)).ticket


async def dashboard(crm: Crm) -> dashboard_service_pb2.GetDashboardResponse:
    return await crm.dashboard.GetDashboard(dashboard_service_pb2.GetDashboardRequest(), metadata=SALES)


async def test_an_empty_crm_lists_every_status_with_zero(crm: Crm) -> None:
    board = await dashboard(crm)
    assert [(e.status, e.count) for e in board.customers_by_status] == [(s, 0) for s in (1, 2, 3, 4)]
    assert [(e.status, e.count) for e in board.leads_by_status] == [(s, 0) for s in (1, 2, 3, 4, 5, 6)]
    assert [(e.priority, e.count) for e in board.open_tickets_by_priority] == [(p, 0) for p in (1, 2, 3, 4)]
    assert list(board.pipeline_values) == [] and list(board.weighted_pipeline_values) == []
    assert (board.win_rate, board.tickets_resolved_last_30_days, board.interactions_last_30_days) == (
        0.0,
        0,
        0,
    )


async def test_figures_of_a_known_dataset(crm: Crm) -> None:
    S = customer_pb2
    a = await crm.customer("a@example.org")
    b = await crm.customer("b@example.org")
    await crm.customer("p@example.org", status=S.CUSTOMER_STATUS_PROSPECT)
    await crm.customer("c@example.org", status=S.CUSTOMER_STATUS_CHURNED)

    L = lead_pb2
    await lead(crm, L.LEAD_STATUS_NEW, "USD", 1_000_000, 50)
    await lead(crm, L.LEAD_STATUS_QUALIFIED, "USD", 3_000_001, 33)
    await lead(crm, L.LEAD_STATUS_PROPOSAL, "INR", 10_000_000, 10)
    await lead(crm, L.LEAD_STATUS_NEGOTIATION)  # no value: counted, not summed
    lost = await lead(crm, L.LEAD_STATUS_QUALIFIED, "USD", 5_000_000, 90)
    await crm.leads.UpdateLead(
        ls.UpdateLeadRequest(
            lead=lead_pb2.Lead(name=lost.name, status=L.LEAD_STATUS_LOST),
            update_mask=FieldMask(paths=["status"]),
        ),
        metadata=SALES,
    )
    for email in ("a@example.org", "B@example.org", "a@EXAMPLE.org"):  # won, linked to existing customers
        won = await lead(crm, L.LEAD_STATUS_NEGOTIATION, "EUR", 7_000_000, 100, email=email)
        await crm.leads.ConvertLead(ls.ConvertLeadRequest(name=won.name), metadata=SALES)

    P = ticket_pb2
    await ticket(crm, a.name, P.TICKET_PRIORITY_URGENT)
    moving = await ticket(crm, a.name, P.TICKET_PRIORITY_URGENT)
    await crm.tickets.UpdateTicket(
        ts.UpdateTicketRequest(
            ticket=ticket_pb2.Ticket(name=moving.name, status=P.TICKET_STATUS_IN_PROGRESS),
            update_mask=FieldMask(paths=["status"]),
        ),
        metadata=SUPPORT,
    )
    waiting = await ticket(crm, b.name, P.TICKET_PRIORITY_LOW)
    await crm.tickets.UpdateTicket(
        ts.UpdateTicketRequest(
            ticket=ticket_pb2.Ticket(name=waiting.name, status=P.TICKET_STATUS_WAITING_ON_CUSTOMER),
            update_mask=FieldMask(paths=["status"]),
        ),
        metadata=SUPPORT,
    )
    resolved = await ticket(crm, b.name, P.TICKET_PRIORITY_HIGH)
    await crm.tickets.ResolveTicket(
        ts.ResolveTicketRequest(name=resolved.name, resolution="ok"), metadata=SUPPORT
    )
    closed = await ticket(crm, b.name, P.TICKET_PRIORITY_MEDIUM)
    await crm.tickets.ResolveTicket(
        ts.ResolveTicketRequest(name=closed.name, resolution="ok"), metadata=SUPPORT
    )
    await crm.tickets.CloseTicket(ts.CloseTicketRequest(name=closed.name), metadata=SUPPORT)
    crm.clock.offset = -40 * DAY  # resolved long ago: not in the last 30 days
    old = await ticket(crm, b.name, P.TICKET_PRIORITY_MEDIUM)
    await crm.tickets.ResolveTicket(ts.ResolveTicketRequest(name=old.name, resolution="ok"), metadata=SUPPORT)
    crm.clock.offset = 0

    now = int(crm.clock())
    for occurred in (now - 5, now - 29 * DAY, now - 31 * DAY):
        await crm.interactions.CreateInteraction(
            its.CreateInteractionRequest(
                interaction=interaction_pb2.Interaction(
                    customer=a.name,
                    type=interaction_pb2.INTERACTION_TYPE_CALL,
                    subject="s",
                    occur_time=Timestamp(seconds=occurred),
                )
            ),
            metadata=SALES,
        )

    board = await dashboard(crm)
    assert [(e.status, e.count) for e in board.customers_by_status] == [(1, 2), (2, 0), (3, 1), (4, 1)]
    assert [(e.status, e.count) for e in board.leads_by_status] == [
        (1, 1),
        (2, 1),
        (3, 1),
        (4, 1),
        (5, 3),
        (6, 1),
    ]
    assert [(m.currency_code, m.amount_micros) for m in board.pipeline_values] == [
        ("INR", 10_000_000),
        ("USD", 4_000_001),
    ]
    # USD: (1,000,000 x 50 + 3,000,001 x 33) / 100 = 1,490,000.33, rounded down.
    assert [(m.currency_code, m.amount_micros) for m in board.weighted_pipeline_values] == [
        ("INR", 1_000_000),
        ("USD", 1_490_000),
    ]
    assert board.win_rate == 0.75
    assert [(e.priority, e.count) for e in board.open_tickets_by_priority] == [(1, 1), (2, 0), (3, 0), (4, 2)]
    assert board.tickets_resolved_last_30_days == 2
    assert board.interactions_last_30_days == 2
    assert abs(board.compute_time.seconds - now) <= 5


async def test_amounts_beyond_64_bits_sum_exactly_and_saturate(crm: Crm) -> None:
    for _ in range(3):
        await lead(crm, lead_pb2.LEAD_STATUS_NEW, "JPY", INT64_MAX, 100)
    await lead(crm, lead_pb2.LEAD_STATUS_NEW, "USD", INT64_MAX // 4, 100)
    await lead(crm, lead_pb2.LEAD_STATUS_NEW, "USD", INT64_MAX // 4, 100)
    board = await dashboard(crm)
    assert [(m.currency_code, m.amount_micros) for m in board.pipeline_values] == [
        ("JPY", INT64_MAX),
        ("USD", (INT64_MAX // 4) * 2),
    ]
    assert [m.amount_micros for m in board.weighted_pipeline_values] == [INT64_MAX, (INT64_MAX // 4) * 2]


async def test_only_sales_and_admin_read_the_dashboard(crm: Crm) -> None:
    for caller in (SUPPORT, as_("ops"), as_("customer", customer="customers/x")):
        err = await refused(
            crm.dashboard.GetDashboard(dashboard_service_pb2.GetDashboardRequest(), metadata=caller)
        )
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    await crm.dashboard.GetDashboard(dashboard_service_pb2.GetDashboardRequest(), metadata=as_("admin"))
