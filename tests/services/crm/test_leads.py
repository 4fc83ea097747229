"""LeadService on a real server: the pipeline's transitions and ConvertLead's one transaction."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import grpc
from google.protobuf.field_mask_pb2 import FieldMask

from bhiv.crm.v1 import customer_pb2, lead_pb2, money_pb2
from bhiv.crm.v1 import customer_service_pb2 as cs
from bhiv.crm.v1 import lead_service_pb2 as ls
from tests.services.crm.conftest import (
    ADMIN,
    SALES,
    SUPPORT,
    Crm,
    as_,
    error_info,
    reason,
    refused,
    violations,
)

Lead = lead_pb2.Lead


def count(data_dir: Path, table: str) -> int:
    with sqlite3.connect(data_dir / "crm.db") as db:
        return int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


async def new_lead(crm: Crm, **fields: object) -> Lead:
    fields.setdefault("first_name", "Lia")
    reply = await crm.leads.CreateLead(ls.CreateLeadRequest(lead=Lead(**fields)), metadata=SALES)  # type: ignore[arg-type]
    return reply.lead


async def move(crm: Crm, lead: Lead, status: int) -> Lead:
    request = ls.UpdateLeadRequest(
        lead=Lead(name=lead.name, status=status), update_mask=FieldMask(paths=["status"])
    )  # type: ignore[arg-type]
    return (await crm.leads.UpdateLead(request, metadata=SALES)).lead


async def test_create_starts_new_and_refuses_a_closed_stage(crm: Crm) -> None:
    lead = await new_lead(crm, email="lia@example.org", converted_customer="customers/forged")
    assert lead.status == lead_pb2.LEAD_STATUS_NEW
    assert lead.converted_customer == "" and not lead.HasField("convert_time")
    for stage in (lead_pb2.LEAD_STATUS_WON, lead_pb2.LEAD_STATUS_LOST):
        err = await refused(
            crm.leads.CreateLead(
                ls.CreateLeadRequest(lead=Lead(first_name="X", status=stage)), metadata=SALES
            )
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violations(err) == [("lead.status", "NOT_OPEN_STAGE")]
    err = await refused(
        crm.leads.CreateLead(
            ls.CreateLeadRequest(
                lead=Lead(first_name="", estimated_value=money_pb2.Money(amount_micros=5), probability=101)
            ),
            metadata=SALES,
        )
    )
    assert sorted(violations(err)) == [("lead.probability", "OUT_OF_RANGE")]
    err = await refused(
        crm.leads.CreateLead(
            ls.CreateLeadRequest(lead=Lead(first_name="", estimated_value=money_pb2.Money(amount_micros=5))),
            metadata=SALES,
        )
    )
    assert violations(err) == [
        ("lead.first_name", "REQUIRED"),
        ("lead.estimated_value.currency_code", "REQUIRED"),
    ]
    err = await refused(
        crm.leads.CreateLead(
            ls.CreateLeadRequest(
                lead=Lead(
                    first_name="X", estimated_value=money_pb2.Money(currency_code="usd", amount_micros=-1)
                )
            ),
            metadata=SALES,
        )
    )
    assert sorted(violations(err)) == [
        ("lead.estimated_value.amount_micros", "OUT_OF_RANGE"),
        ("lead.estimated_value.currency_code", "BAD_FORMAT"),
    ]
    assert count(crm.data_dir, "leads") == 1


async def test_open_leads_move_among_open_stages_and_to_lost(crm: Crm) -> None:
    lead = await new_lead(crm)
    for stage in (
        lead_pb2.LEAD_STATUS_QUALIFIED,
        lead_pb2.LEAD_STATUS_NEGOTIATION,
        lead_pb2.LEAD_STATUS_NEW,
        lead_pb2.LEAD_STATUS_PROPOSAL,
        lead_pb2.LEAD_STATUS_LOST,
    ):
        lead = await move(crm, lead, stage)
        assert lead.status == stage


async def test_update_cannot_win_a_lead_and_names_the_allowed_stages(crm: Crm) -> None:
    lead = await new_lead(crm)
    err = await refused(move(crm, lead, lead_pb2.LEAD_STATUS_WON))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(err)
    assert info.reason == "ILLEGAL_TRANSITION"
    assert info.metadata["allowed"] == (
        "LEAD_STATUS_NEW,LEAD_STATUS_QUALIFIED,LEAD_STATUS_PROPOSAL,LEAD_STATUS_NEGOTIATION,LEAD_STATUS_LOST"
    )
    assert "ConvertLead" in (err.details() or "")
    err = await refused(move(crm, lead, lead_pb2.LEAD_STATUS_UNSPECIFIED))
    assert violations(err) == [("lead.status", "REQUIRED")]


async def test_won_and_lost_are_final(crm: Crm) -> None:
    lost = await move(crm, await new_lead(crm), lead_pb2.LEAD_STATUS_LOST)
    err = await refused(move(crm, lost, lead_pb2.LEAD_STATUS_NEW))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(err).metadata["allowed"] == ""
    assert "LEAD_STATUS_LOST cannot move to LEAD_STATUS_NEW" in (err.details() or "")
    # Other fields of a final lead may still change.
    request = ls.UpdateLeadRequest(
        lead=Lead(name=lost.name, notes="why we lost"), update_mask=FieldMask(paths=["notes"])
    )
    assert (await crm.leads.UpdateLead(request, metadata=SALES)).lead.notes == "why we lost"
    err = await refused(crm.leads.ConvertLead(ls.ConvertLeadRequest(name=lost.name), metadata=SALES))
    assert (err.code(), reason(err)) == (grpc.StatusCode.FAILED_PRECONDITION, "LEAD_LOST")


async def test_convert_creates_the_customer_and_wins_the_lead_together(crm: Crm) -> None:
    lead = await new_lead(
        crm,
        first_name="Seán",
        last_name="O'Brien",
        email="Sean@Example.org",
        company="DROP BY",
        notes="नमस्ते 🙂",
    )
    reply = await crm.leads.ConvertLead(ls.ConvertLeadRequest(name=lead.name, etag=lead.etag), metadata=SALES)
    customer = reply.customer
    assert (customer.first_name, customer.last_name, customer.email, customer.company, customer.notes) == (
        "Seán",
        "O'Brien",
        "Sean@Example.org",
        "DROP BY",
        "नमस्ते 🙂",
    )
    assert customer.status == customer_pb2.CUSTOMER_STATUS_ACTIVE
    assert reply.lead.status == lead_pb2.LEAD_STATUS_WON
    assert reply.lead.converted_customer == customer.name
    assert reply.lead.convert_time == customer.create_time
    stored = await crm.customers.GetCustomer(cs.GetCustomerRequest(name=customer.name), metadata=SALES)
    assert stored.customer == customer
    assert (await crm.leads.GetLead(ls.GetLeadRequest(name=lead.name), metadata=SALES)).lead == reply.lead


async def test_converting_twice_yields_one_customer(crm: Crm) -> None:
    lead = await new_lead(crm, email="twice@example.org")
    request = ls.ConvertLeadRequest(name=lead.name, request_id="convert-1")
    first = await crm.leads.ConvertLead(request, metadata=SALES)
    # A retry with the same request_id returns the first result.
    assert await crm.leads.ConvertLead(request, metadata=SALES) == first
    # Without it, the lead is already converted: the error names its customer.
    err = await refused(crm.leads.ConvertLead(ls.ConvertLeadRequest(name=lead.name), metadata=SALES))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(err).reason == "LEAD_ALREADY_CONVERTED"
    assert error_info(err).metadata["converted_customer"] == first.customer.name
    assert count(crm.data_dir, "customers") == 1


async def test_concurrent_conversions_make_one_customer(crm: Crm) -> None:
    lead = await new_lead(crm, email="race@example.org")

    async def convert() -> str:
        try:
            return (
                await crm.leads.ConvertLead(ls.ConvertLeadRequest(name=lead.name), metadata=SALES)
            ).customer.name
        except grpc.aio.AioRpcError as err:
            return err.code().name

    results = await asyncio.gather(*(convert() for _ in range(10)))
    assert len([r for r in results if r.startswith("customers/")]) == 1
    assert results.count("FAILED_PRECONDITION") == 9
    assert count(crm.data_dir, "customers") == 1


async def test_a_lead_with_a_customers_email_is_linked_to_that_customer(crm: Crm) -> None:
    existing = await crm.customer(
        "Known@Example.org", "Kim", "Known", status=customer_pb2.CUSTOMER_STATUS_PROSPECT
    )
    lead = await new_lead(crm, first_name="Another", email="known@EXAMPLE.org", company="New Co")
    reply = await crm.leads.ConvertLead(ls.ConvertLeadRequest(name=lead.name), metadata=SALES)
    assert reply.customer == existing  # returned unchanged
    assert reply.lead.converted_customer == existing.name
    assert reply.lead.status == lead_pb2.LEAD_STATUS_WON
    assert count(crm.data_dir, "customers") == 1


async def test_convert_refuses_a_lead_without_email_or_with_a_stale_etag(crm: Crm) -> None:
    lead = await new_lead(crm)
    err = await refused(crm.leads.ConvertLead(ls.ConvertLeadRequest(name=lead.name), metadata=SALES))
    assert (err.code(), reason(err)) == (grpc.StatusCode.FAILED_PRECONDITION, "LEAD_HAS_NO_EMAIL")
    request = ls.UpdateLeadRequest(
        lead=Lead(name=lead.name, email="late@example.org"), update_mask=FieldMask(paths=["email"])
    )
    updated = (await crm.leads.UpdateLead(request, metadata=SALES)).lead
    err = await refused(
        crm.leads.ConvertLead(ls.ConvertLeadRequest(name=lead.name, etag=lead.etag), metadata=SALES)
    )
    assert err.code() == grpc.StatusCode.ABORTED
    assert count(crm.data_dir, "customers") == 0
    stored = (await crm.leads.GetLead(ls.GetLeadRequest(name=lead.name), metadata=SALES)).lead
    assert stored == updated
    err = await refused(crm.leads.ConvertLead(ls.ConvertLeadRequest(name="leads/nope"), metadata=SALES))
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_list_is_newest_first_and_filters(crm: Crm) -> None:
    first = await new_lead(crm, assignee="users/sam")
    crm.clock.offset += 1
    second = await new_lead(crm)
    crm.clock.offset += 1
    third = await new_lead(crm, assignee="users/sam", status=lead_pb2.LEAD_STATUS_QUALIFIED)
    listed = await crm.leads.ListLeads(ls.ListLeadsRequest(), metadata=SALES)
    assert [lead.name for lead in listed.leads] == [third.name, second.name, first.name]
    by_assignee = await crm.leads.ListLeads(ls.ListLeadsRequest(assignee="users/sam"), metadata=SALES)
    assert [lead.name for lead in by_assignee.leads] == [third.name, first.name]
    by_status = await crm.leads.ListLeads(
        ls.ListLeadsRequest(status=lead_pb2.LEAD_STATUS_QUALIFIED), metadata=SALES
    )
    assert [lead.name for lead in by_status.leads] == [third.name]
    page = await crm.leads.ListLeads(ls.ListLeadsRequest(page_size=2), metadata=SALES)
    rest = await crm.leads.ListLeads(
        ls.ListLeadsRequest(page_size=2, page_token=page.next_page_token), metadata=SALES
    )
    assert [lead.name for lead in [*page.leads, *rest.leads]] == [third.name, second.name, first.name]
    assert rest.next_page_token == ""


async def test_update_mask_and_etag_rules(crm: Crm) -> None:
    lead = await new_lead(crm)
    mask = FieldMask(paths=["converted_customer", "convert_time", "name", "bogus"])
    err = await refused(
        crm.leads.UpdateLead(
            ls.UpdateLeadRequest(lead=Lead(name=lead.name), update_mask=mask), metadata=SALES
        )
    )
    assert violations(err) == [
        ("update_mask.paths[0]", "OUTPUT_ONLY"),
        ("update_mask.paths[1]", "OUTPUT_ONLY"),
        ("update_mask.paths[2]", "OUTPUT_ONLY"),
        ("update_mask.paths[3]", "UNKNOWN_FIELD"),
    ]
    value = money_pb2.Money(currency_code="INR", amount_micros=2_500_000)
    patch = Lead(name=lead.name, etag=lead.etag, estimated_value=value, probability=40)
    updated = (
        await crm.leads.UpdateLead(
            ls.UpdateLeadRequest(lead=patch, update_mask=FieldMask(paths=["estimated_value", "probability"])),
            metadata=SALES,
        )
    ).lead
    assert (updated.estimated_value, updated.probability) == (value, 40)
    err = await refused(
        crm.leads.UpdateLead(
            ls.UpdateLeadRequest(lead=patch, update_mask=FieldMask(paths=["probability"])), metadata=SALES
        )
    )
    assert (err.code(), reason(err)) == (grpc.StatusCode.ABORTED, "STALE_ETAG")


async def test_delete_keeps_the_converted_customer_and_roles_apply(crm: Crm) -> None:
    lead = await new_lead(crm, email="del@example.org")
    converted = await crm.leads.ConvertLead(ls.ConvertLeadRequest(name=lead.name), metadata=SALES)
    err = await refused(crm.leads.DeleteLead(ls.DeleteLeadRequest(name=lead.name), metadata=SALES))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    err = await refused(
        crm.leads.DeleteLead(ls.DeleteLeadRequest(name=lead.name, etag="stale"), metadata=ADMIN)
    )
    assert err.code() == grpc.StatusCode.ABORTED
    assert (
        await crm.leads.DeleteLead(ls.DeleteLeadRequest(name=lead.name), metadata=ADMIN)
    ).name == lead.name
    err = await refused(crm.leads.GetLead(ls.GetLeadRequest(name=lead.name), metadata=SALES))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    await crm.customers.GetCustomer(cs.GetCustomerRequest(name=converted.customer.name), metadata=SALES)
    for caller in (SUPPORT, as_("customer", customer=converted.customer.name)):
        err = await refused(crm.leads.ListLeads(ls.ListLeadsRequest(), metadata=caller))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
