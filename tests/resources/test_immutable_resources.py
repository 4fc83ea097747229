"""Immutable resources (no ``update_time``, no ``etag``) go through the kit like the others."""

from __future__ import annotations

from pathlib import Path

from bhiv.crm.v1 import interaction_pb2
from bhiv_core.resources import Collection, Field, ResourceType, make_resource_store
from bhiv_core.resources.sqlite import schema

NOTES = Collection("notes", (Field("customer", "text"),), order=("customer",))
NOTE = ResourceType(
    message=interaction_pb2.Interaction,
    collection=NOTES,
    index=lambda m: {"customer": m.customer},
    mutable=frozenset(),
    label="note",
    request_field="interaction",
)


def test_fresh_sets_only_the_server_owned_fields_the_message_has() -> None:
    given = interaction_pb2.Interaction(name="interactions/forged", customer="customers/c1", author="users/x")
    given.create_time.seconds = 5
    made = NOTE.fresh(given, now=1_700_000_000.5)
    assert made.name.startswith("notes/") and made.name != "notes/forged"
    assert (made.create_time.seconds, made.create_time.nanos) == (1_700_000_000, 500_000_000)
    assert made.customer == "customers/c1"
    assert not NOTE.versioned
    assert NOTE.record(made).etag == ""


async def test_an_immutable_resource_is_stored_and_read_back_byte_exact(tmp_path: Path) -> None:
    store = make_resource_store(
        name="kit", collections=[NOTES], migrations=[schema([NOTES])], data_dir=tmp_path, url=None
    )
    await store.open()
    try:
        made = NOTE.fresh(interaction_pb2.Interaction(customer="customers/c1", subject="O'Brien 🙂"), now=1.0)

        async def insert(txn) -> None:
            await txn.insert(NOTES, NOTE.record(made))

        await store.run(insert)
        stored = await store.get(NOTES, NOTE.id_of(made.name))
        assert stored is not None
        assert NOTE.load(stored) == made
    finally:
        await store.close()
