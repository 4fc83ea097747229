"""Support tickets from report to resolution (``bhiv.crm.v1.TicketService``).

The lifecycle: a ticket is created OPEN; ``UpdateTicket`` moves an unresolved ticket among OPEN,
IN_PROGRESS and WAITING_ON_CUSTOMER; ``ResolveTicket`` records the resolution and ``resolve_time``
and makes it RESOLVED; ``CloseTicket`` closes a RESOLVED ticket; ``ReopenTicket`` brings a RESOLVED
or CLOSED one back to OPEN, clearing the resolution. Any other move is FAILED_PRECONDITION naming
the ticket's status and its allowed next states.

Opening a ticket publishes ``crm.ticket.opened`` and resolving one ``crm.ticket.resolved``, each in
the transaction of the change (:func:`~bhiv_core.events.outbox.publish`).

A customer principal opens tickets for itself only (naming another customer is PERMISSION_DENIED,
before anything is looked up) and sees only its own; every other ticket is NOT_FOUND to it. A
ticket that is not closed keeps its customer from being deleted: creating or reopening one holds
the customer in the same transaction (:func:`~bhiv_core.services.crm.customers.claim_customer`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeAlias

from bhiv.crm.v1 import ticket_pb2
from bhiv.crm.v1 import ticket_service_pb2 as ts
from bhiv.integrations.v1 import event_pb2
from bhiv_core.events.outbox import publish
from bhiv_core.resources import (
    Eq,
    Filter,
    ResourceStore,
    Transaction,
    check_etag,
    idempotent,
    list_page,
    owner_filters,
)
from bhiv_core.runtime.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from bhiv_core.runtime.times import seconds_of, to_timestamp
from bhiv_core.security.principal import Principal
from bhiv_core.services.crm.common import changed, illegal_transition, refuse, require_text
from bhiv_core.services.crm.customers import claim_customer
from bhiv_core.services.crm.resources import TICKET, TICKETS

__all__ = ["UNRESOLVED", "Tickets", "check_ticket"]

log = logging.getLogger(__name__)

Ticket = ticket_pb2.Ticket
Status: TypeAlias = ticket_pb2.TicketStatus.ValueType
OPEN = ticket_pb2.TICKET_STATUS_OPEN
RESOLVED = ticket_pb2.TICKET_STATUS_RESOLVED
CLOSED = ticket_pb2.TICKET_STATUS_CLOSED
UNRESOLVED: tuple[Status, ...] = (
    OPEN,
    ticket_pb2.TICKET_STATUS_IN_PROGRESS,
    ticket_pb2.TICKET_STATUS_WAITING_ON_CUSTOMER,
)
"""Statuses of a ticket still being worked: ``UpdateTicket`` moves it among them."""

_NEXT: dict[Status, tuple[tuple[Status, ...], str]] = {
    **{
        status: (
            (*(s for s in UNRESOLVED if s != status), RESOLVED),
            "UpdateTicket moves it among OPEN, IN_PROGRESS and WAITING_ON_CUSTOMER; "
            "ResolveTicket resolves it",
        )
        for status in UNRESOLVED
    },
    RESOLVED: ((CLOSED, OPEN), "CloseTicket closes it; ReopenTicket reopens it"),
    CLOSED: ((OPEN,), "ReopenTicket reopens it"),
}
"""Each status's allowed next statuses, and which RPC makes each move."""


def _refuse_move(current: Status, wanted: Status) -> FailedPrecondition:
    allowed, how = _NEXT[current]
    return illegal_transition("ticket", ticket_pb2.TicketStatus.Name, current, wanted, allowed, how)


def check_ticket(ticket: Ticket, prefix: str = "ticket") -> list[FieldViolation]:
    """The rules a stored ticket meets beyond the contract's field rules (which the chain checks)."""
    out: list[FieldViolation] = []
    require_text(out, f"{prefix}.title", ticket.title)
    if not ticket.customer:
        out.append(FieldViolation(f"{prefix}.customer", "is required", "REQUIRED"))
    if ticket.priority == ticket_pb2.TICKET_PRIORITY_UNSPECIFIED:
        out.append(FieldViolation(f"{prefix}.priority", "must be a ticket priority", "REQUIRED"))
    if ticket.status == ticket_pb2.TICKET_STATUS_UNSPECIFIED:
        out.append(FieldViolation(f"{prefix}.status", "must be a ticket status", "REQUIRED"))
    return out


class Tickets:
    """The ticket RPCs over the CRM store.

    Args:
        store: The CRM store.
        clock: Unix seconds now.

    """

    def __init__(self, store: ResourceStore, clock: Callable[[], float] = time.time):
        self._store = store
        self._clock = clock

    async def create(self, request: ts.CreateTicketRequest, principal: Principal) -> ts.CreateTicketResponse:
        """Opens a ticket, once per ``request_id``; a customer principal opens its own only."""
        ticket = TICKET.fresh(request.ticket, now=self._clock())
        for output_only in ("resolution", "resolve_time"):
            ticket.ClearField(output_only)
        ticket.status = OPEN
        if ticket.priority == ticket_pb2.TICKET_PRIORITY_UNSPECIFIED:
            ticket.priority = ticket_pb2.TICKET_PRIORITY_MEDIUM
        if principal.is_customer:
            if not principal.customer:
                raise PermissionDenied("your account is not linked to a customer record")
            if ticket.customer and ticket.customer != principal.customer:
                raise PermissionDenied("a customer opens tickets for itself only")
            ticket.customer = principal.customer
            ticket.ClearField("assignee")  # support assigns tickets
        refuse(check_ticket(ticket))

        async def insert(txn: Transaction) -> ts.CreateTicketResponse:
            await claim_customer(txn, ticket.customer)
            await txn.insert(TICKETS, TICKET.record(ticket))
            opened = event_pb2.TicketOpenedEvent(
                ticket=ticket.name,
                customer=ticket.customer,
                subject=ticket.title,
                priority=ticket_pb2.TicketPriority.Name(ticket.priority),
            )
            await publish(txn, opened, source="crm", subject=ticket.name, time=seconds_of(ticket.create_time))
            return ts.CreateTicketResponse(ticket=ticket)

        return await idempotent(
            self._store,
            scope=f"CreateTicket:{principal.subject}",
            request_id=request.request_id,
            request=request,
            response_type=ts.CreateTicketResponse,
            step=insert,
            clock=self._clock,
        )

    async def get(self, request: ts.GetTicketRequest, principal: Principal) -> ts.GetTicketResponse:
        """The ticket; NOT_FOUND when it does not exist or is another customer's."""
        record = await TICKET.get(self._store, request.name, principal)
        response = ts.GetTicketResponse()
        response.ticket.MergeFromString(record.data)
        return response

    async def list(self, request: ts.ListTicketsRequest, principal: Principal) -> ts.ListTicketsResponse:
        """A page of tickets, newest first; a customer's own only."""
        filters: list[Filter] = []
        if request.customer:
            filters.append(Eq("customer", request.customer))
        if request.status:
            filters.append(Eq("status", int(request.status)))
        if request.priority:
            filters.append(Eq("priority", int(request.priority)))
        if request.assignee:
            filters.append(Eq("assignee", request.assignee))
        records, token = await list_page(
            self._store,
            TICKETS,
            [*filters, *owner_filters(principal)],
            page_size=request.page_size,
            page_token=request.page_token,
            query=("ListTickets",),
        )
        response = ts.ListTicketsResponse(next_page_token=token)
        for record in records:
            response.tickets.add().MergeFromString(record.data)
        return response

    async def update(self, request: ts.UpdateTicketRequest, principal: Principal) -> ts.UpdateTicketResponse:
        """Applies ``update_mask``; a status move outside the unresolved ones is FAILED_PRECONDITION."""
        patch = request.ticket
        if not patch.name:
            raise InvalidArgument(violations=[FieldViolation("ticket.name", "is required", "REQUIRED")])

        def change(current: Ticket) -> Ticket:
            merged = TICKET.merge(current, patch, request.update_mask)
            refuse(check_ticket(merged))
            if merged.status != current.status and (
                current.status not in UNRESOLVED or merged.status not in UNRESOLVED
            ):
                raise _refuse_move(current.status, merged.status)
            return merged

        ticket = await self._write(patch.name, patch.etag, principal, change)
        return ts.UpdateTicketResponse(ticket=ticket)

    async def assign(self, request: ts.AssignTicketRequest, principal: Principal) -> ts.AssignTicketResponse:
        """Assigns the ticket; FAILED_PRECONDITION when it is CLOSED."""

        def change(ticket: Ticket) -> Ticket:
            if ticket.status == CLOSED:
                raise FailedPrecondition(
                    f"{request.name} is CLOSED: reopen it (ReopenTicket) before assigning it",
                    reason="TICKET_CLOSED",
                )
            ticket.assignee = request.assignee
            return ticket

        ticket = await self._write(request.name, request.etag, principal, change)
        return ts.AssignTicketResponse(ticket=ticket)

    async def resolve(
        self, request: ts.ResolveTicketRequest, principal: Principal
    ) -> ts.ResolveTicketResponse:
        """Records the resolution and ``resolve_time``; the ticket becomes RESOLVED."""
        violations: list[FieldViolation] = []
        require_text(violations, "resolution", request.resolution)
        refuse(violations)
        now = self._clock()

        def change(ticket: Ticket) -> Ticket:
            if ticket.status not in UNRESOLVED:
                raise _refuse_move(ticket.status, RESOLVED)
            ticket.status = RESOLVED
            ticket.resolution = request.resolution
            ticket.resolve_time.CopyFrom(to_timestamp(now))
            return ticket

        ticket = await self._write(request.name, request.etag, principal, change, now=now)
        return ts.ResolveTicketResponse(ticket=ticket)

    async def close(self, request: ts.CloseTicketRequest, principal: Principal) -> ts.CloseTicketResponse:
        """Closes a RESOLVED ticket."""

        def change(ticket: Ticket) -> Ticket:
            if ticket.status != RESOLVED:
                raise _refuse_move(ticket.status, CLOSED)
            ticket.status = CLOSED
            return ticket

        ticket = await self._write(request.name, request.etag, principal, change)
        return ts.CloseTicketResponse(ticket=ticket)

    async def reopen(self, request: ts.ReopenTicketRequest, principal: Principal) -> ts.ReopenTicketResponse:
        """Brings a RESOLVED or CLOSED ticket back to OPEN, clearing its resolution."""

        def change(ticket: Ticket) -> Ticket:
            if ticket.status not in (RESOLVED, CLOSED):
                raise _refuse_move(ticket.status, OPEN)
            ticket.status = OPEN
            ticket.ClearField("resolution")
            ticket.ClearField("resolve_time")
            return ticket

        async def hold_customer(txn: Transaction, ticket: Ticket) -> None:
            # A reopened ticket keeps its customer from being deleted, so the customer must be there.
            try:
                await claim_customer(txn, ticket.customer)
            except NotFound:
                raise FailedPrecondition(
                    f"{ticket.customer}, the customer of {request.name}, was deleted: "
                    "the ticket stays as it is",
                    reason="CUSTOMER_DELETED",
                ) from None

        ticket = await self._write(request.name, request.etag, principal, change, before=hold_customer)
        # The contract keeps the reason in the log: the audit record names the call and the ticket.
        log.info(
            "ticket reopened",
            extra={"ticket": request.name, "principal": principal.subject, "reason": request.reason},
        )
        return ts.ReopenTicketResponse(ticket=ticket)

    async def _write(
        self,
        name: str,
        etag: str,
        principal: Principal,
        change: Callable[[Ticket], Ticket],
        *,
        now: float | None = None,
        before: Callable[[Transaction, Ticket], Awaitable[None]] | None = None,
    ) -> Ticket:
        """Reads the ticket (etag-checked), applies ``change`` and writes it back, in one transaction."""
        at = self._clock() if now is None else now

        async def write(txn: Transaction) -> Ticket:
            record = await TICKET.get(txn, name, principal)
            check_etag(etag, record, name)
            current = TICKET.load(record)
            was = current.status
            ticket = change(current)
            if before is not None:
                await before(txn, ticket)
            TICKET.stamp(ticket, now=at)
            if not await txn.replace(TICKETS, TICKET.record(ticket), expected_etag=record.etag):
                raise changed(name)
            if ticket.status == RESOLVED and was != RESOLVED:
                resolved = event_pb2.TicketResolvedEvent(
                    ticket=ticket.name,
                    customer=ticket.customer,
                    subject=ticket.title,
                    assignee=ticket.assignee,
                )
                await publish(txn, resolved, source="crm", subject=ticket.name, time=at)
            return ticket

        return await self._store.run(write)
