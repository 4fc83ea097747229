"""Interactions: calls, e-mails, meetings, chats and notes (``bhiv.crm.v1.InteractionService``).

Interactions are immutable once recorded. Recording one that is not a note moves its customer's
``last_contact_time`` forward to the interaction's ``occur_time`` when that is later, in the same
transaction as the insert, so the two never disagree. An ``occur_time`` more than
:data:`CLOCK_SKEW_SECONDS` after the server's clock is INVALID_ARGUMENT: a small allowance, so a
client whose clock runs a little ahead can still record what just happened.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from bhiv.crm.v1 import interaction_pb2
from bhiv.crm.v1 import interaction_service_pb2 as its
from bhiv_core.resources import (
    Cmp,
    Eq,
    Filter,
    ResourceStore,
    Transaction,
    idempotent,
    list_page,
    owner_filters,
    time_range,
)
from bhiv_core.runtime.errors import FieldViolation, NotFound
from bhiv_core.runtime.times import seconds_of, to_timestamp
from bhiv_core.security.principal import Principal
from bhiv_core.services.crm.common import changed, refuse, require_text
from bhiv_core.services.crm.resources import CUSTOMER, CUSTOMERS, INTERACTION, INTERACTIONS

__all__ = ["CLOCK_SKEW_SECONDS", "Interactions"]

CLOCK_SKEW_SECONDS = 60.0
"""How far ahead of the server's clock an ``occur_time`` may be before it counts as the future."""


class Interactions:
    """The interaction RPCs over the CRM store.

    Args:
        store: The CRM store.
        clock: Unix seconds now.

    """

    def __init__(self, store: ResourceStore, clock: Callable[[], float] = time.time):
        self._store = store
        self._clock = clock

    async def create(
        self, request: its.CreateInteractionRequest, principal: Principal
    ) -> its.CreateInteractionResponse:
        """Records an interaction by the caller; a contact moves the customer's last contact time."""
        now = self._clock()
        interaction = INTERACTION.fresh(request.interaction, now=now)
        interaction.author = principal.subject
        if not interaction.HasField("occur_time"):
            interaction.occur_time.CopyFrom(to_timestamp(now))
        violations: list[FieldViolation] = []
        if not interaction.customer:
            violations.append(FieldViolation("interaction.customer", "is required", "REQUIRED"))
        if interaction.type == interaction_pb2.INTERACTION_TYPE_UNSPECIFIED:
            violations.append(FieldViolation("interaction.type", "must be an interaction type", "REQUIRED"))
        require_text(violations, "interaction.subject", interaction.subject)
        occurred = seconds_of(interaction.occur_time)
        if occurred > now + CLOCK_SKEW_SECONDS:
            violations.append(
                FieldViolation("interaction.occur_time", "must not be in the future", "IN_FUTURE")
            )
        refuse(violations)

        async def insert(txn: Transaction) -> its.CreateInteractionResponse:
            name = interaction.customer
            record = await txn.get(CUSTOMERS, CUSTOMER.id_of(name, field="interaction.customer"))
            if record is None:
                raise NotFound(f"{name} not found", reason="CUSTOMER_NOT_FOUND", metadata={"customer": name})
            await txn.insert(INTERACTIONS, INTERACTION.record(interaction))
            if interaction.type != interaction_pb2.INTERACTION_TYPE_NOTE:
                customer = CUSTOMER.load(record)
                last = customer.last_contact_time
                if not customer.HasField("last_contact_time") or seconds_of(last) < occurred:
                    customer.last_contact_time.CopyFrom(interaction.occur_time)
                    CUSTOMER.stamp(customer, now=now)
                    if not await txn.replace(CUSTOMERS, CUSTOMER.record(customer), expected_etag=record.etag):
                        raise changed(name)
            return its.CreateInteractionResponse(interaction=interaction)

        return await idempotent(
            self._store,
            scope=f"CreateInteraction:{principal.subject}",
            request_id=request.request_id,
            request=request,
            response_type=its.CreateInteractionResponse,
            step=insert,
            clock=self._clock,
        )

    async def get(
        self, request: its.GetInteractionRequest, principal: Principal
    ) -> its.GetInteractionResponse:
        """The interaction; NOT_FOUND when it does not exist."""
        record = await INTERACTION.get(self._store, request.name, principal)
        response = its.GetInteractionResponse()
        response.interaction.MergeFromString(record.data)
        return response

    async def list(
        self, request: its.ListInteractionsRequest, principal: Principal
    ) -> its.ListInteractionsResponse:
        """A page of interactions, most recent ``occur_time`` first, filtered as the request asks."""
        filters: list[Filter] = []
        if request.customer:
            filters.append(Eq("customer", request.customer))
        if request.type:
            filters.append(Eq("type", int(request.type)))
        start, end = time_range(request)
        if start is not None:
            filters.append(Cmp("occur", ">=", start))
        if end is not None:
            filters.append(Cmp("occur", "<", end))
        records, token = await list_page(
            self._store,
            INTERACTIONS,
            [*filters, *owner_filters(principal)],
            page_size=request.page_size,
            page_token=request.page_token,
            query=("ListInteractions",),
        )
        response = its.ListInteractionsResponse(next_page_token=token)
        for record in records:
            response.interactions.add().MergeFromString(record.data)
        return response
