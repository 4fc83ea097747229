"""InteractionService on a real server: immutable records, last contact time, time filters."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from bhiv.crm.v1 import customer_service_pb2 as cs
from bhiv.crm.v1 import interaction_pb2
from bhiv.crm.v1 import interaction_service_pb2 as its
from tests.services.crm.conftest import SALES, SUPPORT, Crm, as_, reason, refused, violations

Interaction = interaction_pb2.Interaction
CALL = interaction_pb2.INTERACTION_TYPE_CALL
NOTE = interaction_pb2.INTERACTION_TYPE_NOTE
EMAIL = interaction_pb2.INTERACTION_TYPE_EMAIL


def count(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / "crm.db") as db:
        return int(db.execute("SELECT COUNT(*) FROM interactions").fetchone()[0])


def at(seconds: float) -> Timestamp:
    return Timestamp(seconds=int(seconds))


async def record(
    crm: Crm, customer: str, type: int = CALL, request_id: str = "", **fields: object
) -> Interaction:
    fields.setdefault("subject", "Called")
    request = its.CreateInteractionRequest(
        interaction=Interaction(customer=customer, type=type, **fields),  # type: ignore[arg-type]
        request_id=request_id,
    )
    return (await crm.interactions.CreateInteraction(request, metadata=SALES)).interaction


async def last_contact(crm: Crm, name: str) -> Timestamp | None:
    customer = (await crm.customers.GetCustomer(cs.GetCustomerRequest(name=name), metadata=SALES)).customer
    return customer.last_contact_time if customer.HasField("last_contact_time") else None


async def test_recording_sets_the_author_and_the_occur_time(crm: Crm) -> None:
    ana = await crm.customer("ana@example.org")
    made = await record(
        crm, ana.name, author="users/forged", name="interactions/forged", notes="O'Brien — नमस्ते 🙂"
    )
    assert made.name.startswith("interactions/") and made.name != "interactions/forged"
    assert made.author == "users/sales"
    assert made.occur_time == made.create_time
    assert made.notes.encode() == "O'Brien — नमस्ते 🙂".encode()
    got = await crm.interactions.GetInteraction(its.GetInteractionRequest(name=made.name), metadata=SUPPORT)
    assert got.interaction == made


async def test_contacts_move_last_contact_time_forward_in_the_same_transaction(crm: Crm) -> None:
    ana = await crm.customer("ana@example.org")
    now = crm.clock()
    assert await last_contact(crm, ana.name) is None
    await record(crm, ana.name, NOTE, occur_time=at(now - 10))
    assert await last_contact(crm, ana.name) is None  # a note is not a contact
    await record(crm, ana.name, CALL, occur_time=at(now - 100))
    assert await last_contact(crm, ana.name) == at(now - 100)
    await record(crm, ana.name, EMAIL, occur_time=at(now - 50))
    assert await last_contact(crm, ana.name) == at(now - 50)
    await record(crm, ana.name, CALL, occur_time=at(now - 500))  # earlier: no change
    assert await last_contact(crm, ana.name) == at(now - 50)
    # The customer's etag changed with it: an update with the etag read before is ABORTED.
    current = (await crm.customers.GetCustomer(cs.GetCustomerRequest(name=ana.name), metadata=SALES)).customer
    assert current.etag != ana.etag


async def test_bad_interactions_are_refused_and_change_nothing(crm: Crm) -> None:
    ana = await crm.customer("ana@example.org")
    err = await refused(
        crm.interactions.CreateInteraction(
            its.CreateInteractionRequest(interaction=Interaction()), metadata=SALES
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(err) == [
        ("interaction.customer", "REQUIRED"),
        ("interaction.type", "REQUIRED"),
        ("interaction.subject", "REQUIRED"),
    ]
    err = await refused(record(crm, ana.name, occur_time=at(crm.clock() + 3600)))
    assert violations(err) == [("interaction.occur_time", "IN_FUTURE")]
    err = await refused(record(crm, ana.name, occur_time=Timestamp(seconds=10**12)))
    assert violations(err) == [("interaction.occur_time.seconds", "OUT_OF_RANGE")]
    err = await refused(record(crm, ana.name, type=77))
    assert violations(err) == [("interaction.type", "UNDEFINED_ENUM")]
    err = await refused(record(crm, "customers/nobody"))
    assert (err.code(), reason(err)) == (grpc.StatusCode.NOT_FOUND, "CUSTOMER_NOT_FOUND")
    assert count(crm.data_dir) == 0
    assert await last_contact(crm, ana.name) is None


async def test_a_retried_record_is_stored_once(crm: Crm) -> None:
    ana = await crm.customer("ana@example.org")
    first = await record(crm, ana.name, request_id="i-1")
    assert await record(crm, ana.name, request_id="i-1") == first
    assert count(crm.data_dir) == 1


async def test_list_is_most_recent_first_with_filters_and_a_time_window(crm: Crm) -> None:
    ana = await crm.customer("ana@example.org")
    bo = await crm.customer("bo@example.org")
    now = int(crm.clock())
    a = await record(crm, ana.name, CALL, occur_time=at(now - 300))
    b = await record(crm, bo.name, EMAIL, occur_time=at(now - 200))
    c = await record(crm, ana.name, NOTE, occur_time=at(now - 100))

    async def names(**filters: object) -> list[str]:
        reply = await crm.interactions.ListInteractions(
            its.ListInteractionsRequest(**filters), metadata=SUPPORT
        )  # type: ignore[arg-type]
        return [i.name for i in reply.interactions]

    assert await names() == [c.name, b.name, a.name]
    assert await names(customer=ana.name) == [c.name, a.name]
    assert await names(type=EMAIL) == [b.name]
    assert await names(start_time=at(now - 200)) == [c.name, b.name]
    assert await names(end_time=at(now - 200)) == [a.name]
    assert await names(start_time=at(now - 300), end_time=at(now - 100)) == [b.name, a.name]
    err = await refused(
        crm.interactions.ListInteractions(
            its.ListInteractionsRequest(start_time=at(now), end_time=at(now)), metadata=SUPPORT
        )
    )
    assert violations(err) == [("end_time", "BAD_RANGE")]
    page = await crm.interactions.ListInteractions(its.ListInteractionsRequest(page_size=2), metadata=SUPPORT)
    rest = await crm.interactions.ListInteractions(
        its.ListInteractionsRequest(page_size=2, page_token=page.next_page_token), metadata=SUPPORT
    )
    assert [i.name for i in [*page.interactions, *rest.interactions]] == [c.name, b.name, a.name]


async def test_customers_cannot_read_interactions(crm: Crm) -> None:
    ana = await crm.customer("ana@example.org")
    made = await record(crm, ana.name)
    me = as_("customer", customer=ana.name)
    err = await refused(
        crm.interactions.GetInteraction(its.GetInteractionRequest(name=made.name), metadata=me)
    )
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
