"""Customers: create, get, list, update and delete (``bhiv.crm.v1.CustomerService``).

E-mail addresses are unique ignoring case, and that is the store's unique index on the
case-folded address (``email_key``), not a lookup before the insert: two concurrent creates with
``Ana@x.org`` and ``ana@X.org``, in one process or two, give one customer and one ALREADY_EXISTS.
A customer principal sees its own record and nothing else (another is NOT_FOUND, lists hold only
its own); it cannot write customers at all (RBAC). A customer is deleted only once every ticket
of it is CLOSED, checked in the transaction of the delete.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from bhiv.crm.v1 import customer_pb2, ticket_pb2
from bhiv.crm.v1 import customer_service_pb2 as cs
from bhiv_core.resources import (
    Contains,
    Eq,
    Filter,
    HasItem,
    In,
    Record,
    ResourceStore,
    Transaction,
    UniqueViolation,
    check_etag,
    idempotent,
    list_page,
    owner_filters,
)
from bhiv_core.runtime.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
)
from bhiv_core.security.principal import Principal
from bhiv_core.services.crm.common import changed, refuse, require_text
from bhiv_core.services.crm.resources import CUSTOMER, CUSTOMERS, TICKETS

__all__ = ["Customers", "check_customer", "claim_customer", "email_taken"]

_TAG = re.compile(r"[a-z0-9_-]{1,50}")

NOT_CLOSED = tuple(
    int(s) for s in ticket_pb2.TicketStatus.values() if s not in (0, ticket_pb2.TICKET_STATUS_CLOSED)
)
"""Ticket statuses that keep a customer from being deleted."""


def email_taken() -> AlreadyExists:
    """ALREADY_EXISTS for an e-mail address another customer has (compared ignoring case)."""
    return AlreadyExists(
        "another customer has this e-mail address (addresses are compared ignoring case)",
        reason="EMAIL_TAKEN",
        metadata={"field": "customer.email"},
    )


def check_customer(customer: customer_pb2.Customer, prefix: str = "customer") -> list[FieldViolation]:
    """The rules a stored customer meets beyond the contract's field rules (which the chain checks)."""
    out: list[FieldViolation] = []
    require_text(out, f"{prefix}.first_name", customer.first_name)
    require_text(out, f"{prefix}.email", customer.email)
    if customer.status == customer_pb2.CUSTOMER_STATUS_UNSPECIFIED:
        out.append(FieldViolation(f"{prefix}.status", "must be a customer status", "REQUIRED"))
    seen: set[str] = set()
    for index, tag in enumerate(customer.tags):
        path = f"{prefix}.tags[{index}]"
        if not _TAG.fullmatch(tag):
            out.append(
                FieldViolation(path, "must be 1-50 lowercase letters, digits, '_' or '-'", "BAD_FORMAT")
            )
        elif tag in seen:
            out.append(FieldViolation(path, f"repeats the tag {tag!r}", "DUPLICATE"))
        seen.add(tag)
    return out


async def claim_customer(txn: Transaction, name: str) -> Record:
    """The customer ``name`` inside ``txn``, held against a concurrent delete; NOT_FOUND when gone.

    For writes that must not outlive the customer (a ticket that is not closed): the record is
    written back unchanged, so on MongoDB, whose snapshot transactions would let this one and a
    concurrent ``DeleteCustomer`` both commit (each reads what the other writes), the two write the
    same document and one of them runs again. On SQLite writers are serialised anyway.
    """
    record = await txn.get(CUSTOMERS, CUSTOMER.id_of(name, field="customer"))
    if record is None:
        raise NotFound(f"{name} not found", reason="CUSTOMER_NOT_FOUND", metadata={"customer": name})
    if not await txn.replace(CUSTOMERS, record, expected_etag=record.etag):
        raise changed(name)
    return record


class Customers:
    """The customer RPCs over the CRM store.

    Args:
        store: The CRM store.
        clock: Unix seconds now.

    """

    def __init__(self, store: ResourceStore, clock: Callable[[], float] = time.time):
        self._store = store
        self._clock = clock

    async def create(
        self, request: cs.CreateCustomerRequest, principal: Principal
    ) -> cs.CreateCustomerResponse:
        """Creates a customer, once per ``request_id``; ALREADY_EXISTS for a taken e-mail address."""
        customer = CUSTOMER.fresh(request.customer, now=self._clock())
        customer.ClearField("last_contact_time")  # output only: maintained by interactions
        if customer.status == customer_pb2.CUSTOMER_STATUS_UNSPECIFIED:
            customer.status = customer_pb2.CUSTOMER_STATUS_ACTIVE
        refuse(check_customer(customer))

        async def insert(txn: Transaction) -> cs.CreateCustomerResponse:
            try:
                await txn.insert(CUSTOMERS, CUSTOMER.record(customer))
            except UniqueViolation:
                raise email_taken() from None
            return cs.CreateCustomerResponse(customer=customer)

        return await idempotent(
            self._store,
            scope=f"CreateCustomer:{principal.subject}",
            request_id=request.request_id,
            request=request,
            response_type=cs.CreateCustomerResponse,
            step=insert,
            clock=self._clock,
        )

    async def get(self, request: cs.GetCustomerRequest, principal: Principal) -> cs.GetCustomerResponse:
        """The customer; NOT_FOUND when it does not exist or is not the caller's to see."""
        record = await CUSTOMER.get(self._store, request.name, principal)
        response = cs.GetCustomerResponse()
        response.customer.MergeFromString(record.data)
        return response

    async def list(self, request: cs.ListCustomersRequest, principal: Principal) -> cs.ListCustomersResponse:
        """A page of customers by last name, then first name, filtered as the request asks."""
        filters: list[Filter] = []
        if request.status:
            filters.append(Eq("status", int(request.status)))
        if request.tag:
            filters.append(HasItem("tags", request.tag))
        if request.query:
            filters.append(Contains("search", request.query.casefold()))
        records, token = await list_page(
            self._store,
            CUSTOMERS,
            [*filters, *owner_filters(principal)],
            page_size=request.page_size,
            page_token=request.page_token,
            query=("ListCustomers",),
        )
        response = cs.ListCustomersResponse(next_page_token=token)
        for record in records:
            # The stored bytes are the message: merging them skips building each one separately.
            response.customers.add().MergeFromString(record.data)
        return response

    async def update(
        self, request: cs.UpdateCustomerRequest, principal: Principal
    ) -> cs.UpdateCustomerResponse:
        """Applies ``update_mask``; ABORTED for a stale etag, ALREADY_EXISTS for a taken address."""
        patch = request.customer
        if not patch.name:
            raise InvalidArgument(violations=[FieldViolation("customer.name", "is required", "REQUIRED")])
        now = self._clock()

        async def update(txn: Transaction) -> cs.UpdateCustomerResponse:
            record = await CUSTOMER.get(txn, patch.name, principal)
            check_etag(patch.etag, record, patch.name)
            merged = CUSTOMER.merge(CUSTOMER.load(record), patch, request.update_mask)
            refuse(check_customer(merged))
            CUSTOMER.stamp(merged, now=now)
            try:
                replaced = await txn.replace(CUSTOMERS, CUSTOMER.record(merged), expected_etag=record.etag)
            except UniqueViolation:
                raise email_taken() from None
            if not replaced:
                raise changed(patch.name)
            return cs.UpdateCustomerResponse(customer=merged)

        return await self._store.run(update)

    async def delete(
        self, request: cs.DeleteCustomerRequest, principal: Principal
    ) -> cs.DeleteCustomerResponse:
        """Deletes a customer; FAILED_PRECONDITION while any ticket of it is not closed."""
        name = request.name

        async def delete(txn: Transaction) -> cs.DeleteCustomerResponse:
            record = await CUSTOMER.get(txn, name, principal)
            check_etag(request.etag, record, name)
            unclosed = await txn.count(TICKETS, [Eq("customer", name), In("status", NOT_CLOSED)])
            if unclosed:
                raise FailedPrecondition(
                    f"{name} has {unclosed} ticket(s) that are not closed: resolve and close them first",
                    reason="TICKETS_NOT_CLOSED",
                    metadata={"tickets_not_closed": str(unclosed)},
                )
            if not await txn.delete(CUSTOMERS, record.id, expected_etag=record.etag):
                raise changed(name)
            return cs.DeleteCustomerResponse(name=name)

        return await self._store.run(delete)
