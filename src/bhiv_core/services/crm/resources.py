"""CRM's resources on the resource kit: what each stores beside its message, and its schema.

Each resource is a :class:`~bhiv_core.resources.Collection` (the fields stores filter, order,
group and sum on, its unique keys and indexes) and a :class:`~bhiv_core.resources.ResourceType`
(the message, how those fields are computed from it, its owner and the fields ``update_mask`` may
name, as the contract lists them). The message itself is stored whole and returned as stored, so
text comes back byte for byte as it was sent.

- **customers**: ``email_key`` is the case-folded e-mail address under a unique index, so two
  customers can never share an address in any case, whatever process inserts them; ``search``
  holds the case-folded names, e-mail address and company for ``ListCustomers.query``; lists follow
  ``sort`` (last name, then first name, case-folded); ``claims`` changes whenever a transaction
  holds the customer against a concurrent delete. A customer owns its own record.
- **leads**: newest first; the estimated value is kept in its currency as exact integer parts
  (:func:`~bhiv_core.resources.sum_parts`) so the dashboard sums any amounts without overflow.
- **tickets**: newest first, owned by their customer; ``resolved`` is the resolve time (0 when
  not resolved) for the dashboard's count of recent resolutions.
- **interactions**: most recent ``occur_time`` first, owned by their customer; immutable.
- **outbox**, **outbox_state**: the platform events (ticket opened and resolved, lead won) written
  in the transaction of their change, until the relay hands them to integrations
  (:mod:`bhiv_core.events.outbox`).
"""

from __future__ import annotations

from bhiv.crm.v1 import customer_pb2, interaction_pb2, lead_pb2, ticket_pb2
from bhiv_core.events import outbox
from bhiv_core.resources import Collection, Field, ResourceType, Value, sort_key, sum_parts
from bhiv_core.resources.sqlite import schema
from bhiv_core.runtime.times import seconds_of

__all__ = [
    "COLLECTIONS",
    "CUSTOMER",
    "CUSTOMERS",
    "INTERACTION",
    "INTERACTIONS",
    "LEAD",
    "LEADS",
    "MIGRATIONS",
    "TICKET",
    "TICKETS",
    "email_key",
]

_SEARCH_SEPARATOR = "\x1f"


def email_key(email: str) -> str:
    """The form e-mail addresses are compared in: case-folded (``Ana@X.org`` is ``ana@x.org``)."""
    return email.casefold()


CUSTOMERS = Collection(
    "customers",
    (
        Field("email_key", "text"),
        Field("sort", "text"),
        Field("status", "int"),
        Field("tags", "list"),
        Field("search", "text"),
        # Store-only, never in the message: changed by claim_customer (see there).
        Field("claims", "int"),
    ),
    order=("sort",),
    unique=(("email_key",),),
    indexes=(("status",), ("owner",)),
)


def _customer_fields(m: customer_pb2.Customer) -> dict[str, Value]:
    searched = (m.first_name, m.last_name, m.email, m.company)
    return {
        "email_key": email_key(m.email),
        "sort": sort_key(m.last_name, m.first_name),
        "status": int(m.status),
        "tags": list(m.tags),
        "search": _SEARCH_SEPARATOR.join(part.casefold() for part in searched),
    }


CUSTOMER: ResourceType[customer_pb2.Customer] = ResourceType(
    message=customer_pb2.Customer,
    collection=CUSTOMERS,
    index=_customer_fields,
    mutable=frozenset(
        {"first_name", "last_name", "email", "phone", "company", "address", "status", "tags", "notes"}
    ),
    label="customer",
    request_field="customer",
    # A customer principal's token names its own record: it sees that record and nothing else.
    owner=lambda m: m.name,
)

LEADS = Collection(
    "leads",
    (
        Field("created", "real"),
        Field("status", "int"),
        Field("assignee", "text"),
        Field("currency", "text"),
        Field("value_high", "int"),
        Field("value_low", "int"),
        Field("weighted_high", "int"),
        Field("weighted_low", "int"),
    ),
    order=("created",),
    descending=True,
    indexes=(("status",), ("assignee",)),
)


def _lead_fields(m: lead_pb2.Lead) -> dict[str, Value]:
    amount = m.estimated_value.amount_micros
    value_high, value_low = sum_parts(amount)
    # Weighted in micro-percent, exact; the dashboard divides the sum by 100 and rounds down.
    weighted_high, weighted_low = sum_parts(amount * m.probability)
    return {
        "created": seconds_of(m.create_time),
        "status": int(m.status),
        "assignee": m.assignee,
        "currency": m.estimated_value.currency_code,
        "value_high": value_high,
        "value_low": value_low,
        "weighted_high": weighted_high,
        "weighted_low": weighted_low,
    }


LEAD: ResourceType[lead_pb2.Lead] = ResourceType(
    message=lead_pb2.Lead,
    collection=LEADS,
    index=_lead_fields,
    mutable=frozenset(
        {
            "first_name",
            "last_name",
            "email",
            "company",
            "source",
            "status",
            "estimated_value",
            "probability",
            "assignee",
            "notes",
        }
    ),
    label="lead",
    request_field="lead",
)

TICKETS = Collection(
    "tickets",
    (
        Field("created", "real"),
        Field("customer", "text"),
        Field("status", "int"),
        Field("priority", "int"),
        Field("assignee", "text"),
        Field("resolved", "real"),
    ),
    order=("created",),
    descending=True,
    indexes=(("customer", "status"), ("owner",), ("status", "priority"), ("assignee",), ("resolved",)),
)


def _ticket_fields(m: ticket_pb2.Ticket) -> dict[str, Value]:
    return {
        "created": seconds_of(m.create_time),
        "customer": m.customer,
        "status": int(m.status),
        "priority": int(m.priority),
        "assignee": m.assignee,
        "resolved": seconds_of(m.resolve_time) if m.HasField("resolve_time") else 0.0,
    }


TICKET: ResourceType[ticket_pb2.Ticket] = ResourceType(
    message=ticket_pb2.Ticket,
    collection=TICKETS,
    index=_ticket_fields,
    mutable=frozenset({"title", "description", "priority", "status", "category", "assignee"}),
    immutable=frozenset({"customer"}),
    label="ticket",
    request_field="ticket",
    owner=lambda m: m.customer,
)

INTERACTIONS = Collection(
    "interactions",
    (Field("occur", "real"), Field("customer", "text"), Field("type", "int")),
    order=("occur",),
    descending=True,
    indexes=(("customer",), ("owner",), ("type",)),
)


def _interaction_fields(m: interaction_pb2.Interaction) -> dict[str, Value]:
    return {"occur": seconds_of(m.occur_time), "customer": m.customer, "type": int(m.type)}


INTERACTION: ResourceType[interaction_pb2.Interaction] = ResourceType(
    message=interaction_pb2.Interaction,
    collection=INTERACTIONS,
    index=_interaction_fields,
    mutable=frozenset(),  # interactions are immutable: there is no UpdateInteraction
    label="interaction",
    request_field="interaction",
    owner=lambda m: m.customer,
)

_FIRST = (CUSTOMERS, LEADS, TICKETS, INTERACTIONS)
COLLECTIONS = (*_FIRST, *outbox.COLLECTIONS)

MIGRATIONS = (schema(_FIRST), outbox.outbox_migration())
"""CRM's SQLite schema versions: a later change appends a script (``ALTER TABLE``, ``CREATE INDEX``)."""
