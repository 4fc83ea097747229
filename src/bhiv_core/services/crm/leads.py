"""Leads through the sales pipeline, and their conversion into customers (``bhiv.crm.v1.LeadService``).

The pipeline: a lead is created in an open stage (NEW by default), moves among the open stages
(NEW, QUALIFIED, PROPOSAL, NEGOTIATION) and to LOST with ``UpdateLead``, and becomes WON only by
``ConvertLead``; WON and LOST are final. A refused move is FAILED_PRECONDITION naming the stage
and the allowed next ones.

``ConvertLead`` is one transaction: it reads the lead (etag-checked), creates the ACTIVE customer
from the lead's names, e-mail address, company and notes, and stores the lead WON with
``converted_customer`` and ``convert_time``; both commit together or neither does. When a
customer already has the lead's e-mail address (ignoring case), the lead is linked to that
customer instead, which is returned unchanged: a won lead of a known person is the same customer
buying again, and a second record of them would break the unique address. With a ``request_id``
a retry returns the first result; without one, converting a WON lead again is FAILED_PRECONDITION
naming the customer it was converted to, so a second conversion never yields a second customer.
The conversion publishes ``crm.lead.won`` in its transaction (:func:`~bhiv_core.events.outbox.publish`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from bhiv.crm.v1 import customer_pb2, lead_pb2
from bhiv.crm.v1 import lead_service_pb2 as ls
from bhiv.integrations.v1 import event_pb2
from bhiv_core.events.outbox import publish
from bhiv_core.resources import (
    Eq,
    Filter,
    ResourceStore,
    Transaction,
    UniqueViolation,
    check_etag,
    idempotent,
    list_page,
)
from bhiv_core.runtime.errors import Aborted, FailedPrecondition, FieldViolation, InvalidArgument
from bhiv_core.runtime.times import to_timestamp
from bhiv_core.security.principal import Principal
from bhiv_core.services.crm.common import changed, illegal_transition, refuse, require_text
from bhiv_core.services.crm.customers import check_customer, claim_customer
from bhiv_core.services.crm.resources import CUSTOMER, CUSTOMERS, LEAD, LEADS, email_key

__all__ = ["FINAL_STAGES", "OPEN_STAGES", "Leads", "check_lead"]

Lead = lead_pb2.Lead
OPEN_STAGES = (
    lead_pb2.LEAD_STATUS_NEW,
    lead_pb2.LEAD_STATUS_QUALIFIED,
    lead_pb2.LEAD_STATUS_PROPOSAL,
    lead_pb2.LEAD_STATUS_NEGOTIATION,
)
"""The stages of a lead still being worked, in pipeline order."""
FINAL_STAGES = (lead_pb2.LEAD_STATUS_WON, lead_pb2.LEAD_STATUS_LOST)


def check_lead(lead: Lead, prefix: str = "lead") -> list[FieldViolation]:
    """The rules a stored lead meets beyond the contract's field rules (which the chain checks)."""
    out: list[FieldViolation] = []
    require_text(out, f"{prefix}.first_name", lead.first_name)
    if lead.status == lead_pb2.LEAD_STATUS_UNSPECIFIED:
        out.append(FieldViolation(f"{prefix}.status", "must be a lead status", "REQUIRED"))
    value = lead.estimated_value
    if value.amount_micros and not value.currency_code:
        out.append(
            FieldViolation(
                f"{prefix}.estimated_value.currency_code", "is required when the amount is set", "REQUIRED"
            )
        )
    return out


class Leads:
    """The lead RPCs over the CRM store.

    Args:
        store: The CRM store.
        clock: Unix seconds now.

    """

    def __init__(self, store: ResourceStore, clock: Callable[[], float] = time.time):
        self._store = store
        self._clock = clock

    async def create(self, request: ls.CreateLeadRequest, principal: Principal) -> ls.CreateLeadResponse:
        """Creates a lead in an open stage (NEW when unspecified), once per ``request_id``."""
        lead = LEAD.fresh(request.lead, now=self._clock())
        for output_only in ("converted_customer", "convert_time"):
            lead.ClearField(output_only)
        if lead.status == lead_pb2.LEAD_STATUS_UNSPECIFIED:
            lead.status = lead_pb2.LEAD_STATUS_NEW
        violations = check_lead(lead)
        if lead.status not in OPEN_STAGES:
            violations.append(
                FieldViolation(
                    "lead.status",
                    "a lead starts in an open stage: LEAD_STATUS_NEW, LEAD_STATUS_QUALIFIED, "
                    "LEAD_STATUS_PROPOSAL or LEAD_STATUS_NEGOTIATION",
                    "NOT_OPEN_STAGE",
                )
            )
        refuse(violations)

        async def insert(txn: Transaction) -> ls.CreateLeadResponse:
            await txn.insert(LEADS, LEAD.record(lead))
            return ls.CreateLeadResponse(lead=lead)

        return await idempotent(
            self._store,
            scope=f"CreateLead:{principal.subject}",
            request_id=request.request_id,
            request=request,
            response_type=ls.CreateLeadResponse,
            step=insert,
            clock=self._clock,
        )

    async def get(self, request: ls.GetLeadRequest, principal: Principal) -> ls.GetLeadResponse:
        """The lead; NOT_FOUND when it does not exist."""
        record = await LEAD.get(self._store, request.name, principal)
        response = ls.GetLeadResponse()
        response.lead.MergeFromString(record.data)
        return response

    async def list(self, request: ls.ListLeadsRequest, principal: Principal) -> ls.ListLeadsResponse:
        """A page of leads, newest first, filtered by status and assignee."""
        filters: list[Filter] = []
        if request.status:
            filters.append(Eq("status", int(request.status)))
        if request.assignee:
            filters.append(Eq("assignee", request.assignee))
        records, token = await list_page(
            self._store,
            LEADS,
            filters,
            page_size=request.page_size,
            page_token=request.page_token,
            query=("ListLeads",),
        )
        response = ls.ListLeadsResponse(next_page_token=token)
        for record in records:
            response.leads.add().MergeFromString(record.data)
        return response

    async def update(self, request: ls.UpdateLeadRequest, principal: Principal) -> ls.UpdateLeadResponse:
        """Applies ``update_mask``; an illegal stage change is FAILED_PRECONDITION."""
        patch = request.lead
        if not patch.name:
            raise InvalidArgument(violations=[FieldViolation("lead.name", "is required", "REQUIRED")])
        now = self._clock()

        async def update(txn: Transaction) -> ls.UpdateLeadResponse:
            record = await LEAD.get(txn, patch.name, principal)
            check_etag(patch.etag, record, patch.name)
            current = LEAD.load(record)
            merged = LEAD.merge(current, patch, request.update_mask)
            refuse(check_lead(merged))
            _check_move(current.status, merged.status)
            LEAD.stamp(merged, now=now)
            if not await txn.replace(LEADS, LEAD.record(merged), expected_etag=record.etag):
                raise changed(patch.name)
            return ls.UpdateLeadResponse(lead=merged)

        return await self._store.run(update)

    async def delete(self, request: ls.DeleteLeadRequest, principal: Principal) -> ls.DeleteLeadResponse:
        """Deletes a lead (a converted one too: its customer stays)."""

        async def delete(txn: Transaction) -> ls.DeleteLeadResponse:
            record = await LEAD.get(txn, request.name, principal)
            check_etag(request.etag, record, request.name)
            if not await txn.delete(LEADS, record.id, expected_etag=record.etag):
                raise changed(request.name)
            return ls.DeleteLeadResponse(name=request.name)

        return await self._store.run(delete)

    async def convert(self, request: ls.ConvertLeadRequest, principal: Principal) -> ls.ConvertLeadResponse:
        """Creates (or links) the lead's customer and makes the lead WON, in one transaction."""
        now = self._clock()
        name = request.name

        async def convert(txn: Transaction) -> ls.ConvertLeadResponse:
            record = await LEAD.get(txn, name, principal)
            check_etag(request.etag, record, name)
            lead = LEAD.load(record)
            if lead.status == lead_pb2.LEAD_STATUS_WON:
                raise FailedPrecondition(
                    f"{name} is already converted, to {lead.converted_customer or 'a deleted customer'}",
                    reason="LEAD_ALREADY_CONVERTED",
                    metadata={"converted_customer": lead.converted_customer},
                )
            if lead.status == lead_pb2.LEAD_STATUS_LOST:
                raise FailedPrecondition(
                    f"{name} is LOST, a final stage: it cannot be won", reason="LEAD_LOST"
                )
            if not lead.email.strip():
                raise FailedPrecondition(
                    f"{name} has no e-mail address: set one with UpdateLead, then convert it",
                    reason="LEAD_HAS_NO_EMAIL",
                )
            customer = await _customer_for(txn, lead, now)
            lead.status = lead_pb2.LEAD_STATUS_WON
            lead.converted_customer = customer.name
            lead.convert_time.CopyFrom(to_timestamp(now))
            LEAD.stamp(lead, now=now)
            if not await txn.replace(LEADS, LEAD.record(lead), expected_etag=record.etag):
                raise changed(name)
            won = event_pb2.LeadWonEvent(
                lead=lead.name, customer=customer.name, company=lead.company, owner=lead.assignee
            )
            await publish(txn, won, source="crm", subject=lead.name, time=now)
            return ls.ConvertLeadResponse(lead=lead, customer=customer)

        return await idempotent(
            self._store,
            scope=f"ConvertLead:{principal.subject}",
            request_id=request.request_id,
            request=request,
            response_type=ls.ConvertLeadResponse,
            step=convert,
            clock=self._clock,
        )


async def _customer_for(txn: Transaction, lead: Lead, now: float) -> customer_pb2.Customer:
    """The customer with the lead's e-mail address, or a new ACTIVE one made from the lead."""
    found = await txn.find(CUSTOMERS, [Eq("email_key", email_key(lead.email))])
    if found:  # held, so that a concurrent delete cannot leave the lead linked to nothing
        return CUSTOMER.load(await claim_customer(txn, CUSTOMER.name(found[0].id)))
    customer = CUSTOMER.fresh(
        customer_pb2.Customer(
            first_name=lead.first_name,
            last_name=lead.last_name,
            email=lead.email,
            company=lead.company,
            notes=lead.notes,
            status=customer_pb2.CUSTOMER_STATUS_ACTIVE,
        ),
        now=now,
    )
    problems = check_customer(customer, prefix="lead")
    if problems:  # the lead's fields obey the same rules; a lead stored before a rule changed may not
        raise FailedPrecondition(
            f"the lead does not make a valid customer: {problems[0].field} {problems[0].description}",
            reason="LEAD_NOT_CONVERTIBLE",
        )
    try:
        await txn.insert(CUSTOMERS, CUSTOMER.record(customer))
    except UniqueViolation:
        # Another process created a customer with this address after the lookup (possible on
        # MongoDB, whose transactions do not serialise the lookup): converting again links to it.
        raise Aborted(
            "a customer with the lead's e-mail address was created meanwhile: retry to link to it",
            reason="CONCURRENT_CHANGE",
        ) from None
    return customer


def _check_move(current: lead_pb2.LeadStatus.ValueType, wanted: lead_pb2.LeadStatus.ValueType) -> None:
    """FAILED_PRECONDITION unless ``UpdateLead`` may move a lead from ``current`` to ``wanted``."""
    if wanted == current:
        return
    if current in FINAL_STAGES:
        raise illegal_transition(
            "lead",
            lead_pb2.LeadStatus.Name,
            current,
            wanted,
            (),
            f"{lead_pb2.LeadStatus.Name(current)} is final",
        )
    if wanted == lead_pb2.LEAD_STATUS_WON:
        raise illegal_transition(
            "lead",
            lead_pb2.LeadStatus.Name,
            current,
            wanted,
            (*OPEN_STAGES, lead_pb2.LEAD_STATUS_LOST),
            "only ConvertLead makes a lead WON",
        )
