"""The resource kit's service helpers, on a real SQLite store and the CRM Customer message."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from bhiv.crm.v1 import customer_pb2, customer_service_pb2
from bhiv_core.resources import (
    Collection,
    Eq,
    Field,
    ResourceStore,
    ResourceType,
    Transaction,
    UniqueViolation,
    already_exists,
    check_etag,
    id_of,
    idempotent,
    list_page,
    owner_filters,
    sort_key,
    visible,
)
from bhiv_core.resources.sqlite import SqliteResourceStore, schema
from bhiv_core.runtime.errors import Aborted, AlreadyExists, InvalidArgument, NotFound
from bhiv_core.security.principal import Principal

CUSTOMERS = Collection(
    "customers",
    (Field("sort", "text"), Field("email_key", "text"), Field("status", "int")),
    order=("sort",),
    unique=(("email_key",),),
    indexes=(("status",),),
)

CUSTOMER = ResourceType(
    message=customer_pb2.Customer,
    collection=CUSTOMERS,
    index=lambda c: {
        "sort": sort_key(c.last_name, c.first_name),
        "email_key": c.email.casefold(),
        "status": int(c.status),
    },
    owner=lambda c: c.name,
    mutable=frozenset({"first_name", "last_name", "email", "tags", "address"}),
    immutable=frozenset({"phone"}),
    label="customer",
    request_field="customer",
)

SALES = Principal(subject="users/sales", role="sales")
CLOCK = iter(float(n) for n in range(1_000_000, 2_000_000))


def now() -> float:
    return next(CLOCK)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ResourceStore]:
    opened = SqliteResourceStore(tmp_path / "crm.db", (CUSTOMERS,), (schema((CUSTOMERS,)),))
    await opened.open()
    yield opened
    await opened.close()


async def create(
    store: ResourceStore, request: customer_service_pb2.CreateCustomerRequest
) -> customer_pb2.Customer:
    async def step(txn: Transaction) -> customer_service_pb2.CreateCustomerResponse:
        fresh = CUSTOMER.fresh(request.customer, now=now())
        await txn.insert(CUSTOMERS, CUSTOMER.record(fresh))
        return customer_service_pb2.CreateCustomerResponse(customer=fresh)

    response = await idempotent(
        store,
        scope=f"CreateCustomer:{SALES.subject}",
        request_id=request.request_id,
        request=request,
        response_type=customer_service_pb2.CreateCustomerResponse,
        step=step,
        clock=now,
    )
    return response.customer


def request(email: str, request_id: str = "", **fields: str) -> customer_service_pb2.CreateCustomerRequest:
    return customer_service_pb2.CreateCustomerRequest(
        customer=customer_pb2.Customer(email=email, **fields), request_id=request_id
    )


async def test_fresh_replaces_every_server_owned_field_the_client_sent(store: ResourceStore) -> None:
    sent = customer_pb2.Customer(
        name="customers/chosen-by-client", first_name="Ada", email="ada@example.com", etag="client-etag"
    )
    sent.create_time.seconds = 1
    created = await create(store, customer_service_pb2.CreateCustomerRequest(customer=sent))
    assert created.name != "customers/chosen-by-client" and created.name.startswith("customers/")
    assert len(id_of(created.name, CUSTOMERS)) == 22
    assert created.etag not in ("", "client-etag")
    assert created.create_time.seconds >= 1_000_000 and created.update_time == created.create_time
    stored = await store.get(CUSTOMERS, id_of(created.name, CUSTOMERS))
    assert stored is not None and CUSTOMER.load(stored) == created and stored.owner == created.name


async def test_a_retried_create_returns_the_first_result_even_after_the_resource_changed(
    store: ResourceStore,
) -> None:
    first = await create(store, request("ada@example.com", "r-1", first_name="Ada"))

    async def rename(txn: Transaction) -> None:
        record = await CUSTOMER.get(txn, first.name, SALES)
        changed = CUSTOMER.stamp(
            CUSTOMER.merge(
                CUSTOMER.load(record),
                customer_pb2.Customer(first_name="Eve"),
                FieldMask(paths=["first_name"]),
            ),
            now=now(),
        )
        assert await txn.replace(CUSTOMERS, CUSTOMER.record(changed), expected_etag=record.etag)

    await store.run(rename)
    again = await create(store, request("ada@example.com", "r-1", first_name="Ada"))
    assert again == first
    assert await store.count(CUSTOMERS, []) == 1


async def test_the_same_request_id_with_another_request_is_invalid_argument(store: ResourceStore) -> None:
    await create(store, request("ada@example.com", "r-1"))
    with pytest.raises(InvalidArgument) as caught:
        await create(store, request("eve@example.com", "r-1"))
    assert [(v.field, v.reason) for v in caught.value.violations] == [("request_id", "REQUEST_ID_REUSED")]
    assert await store.count(CUSTOMERS, []) == 1


async def test_a_failed_create_leaves_no_receipt_so_a_retry_runs_again(store: ResourceStore) -> None:
    await create(store, request("taken@example.com"))
    with pytest.raises(UniqueViolation) as caught:
        await create(store, request("TAKEN@example.com", "r-2"))
    error = already_exists(caught.value, {("email_key",): "a customer has this e-mail address"})
    assert isinstance(error, AlreadyExists) and error.code == grpc.StatusCode.ALREADY_EXISTS
    assert error.message == "a customer has this e-mail address"

    # The key was not spent: once the clash is gone, the same request succeeds.
    async def free_the_address(txn: Transaction) -> None:
        taken = await txn.find(CUSTOMERS, [Eq("email_key", "taken@example.com")])
        assert await txn.delete(CUSTOMERS, taken[0].id, expected_etag=taken[0].etag)

    await store.run(free_the_address)
    assert (await create(store, request("TAKEN@example.com", "r-2"))).email == "TAKEN@example.com"


def test_merge_takes_only_the_masked_fields_and_replaces_lists_and_messages_whole() -> None:
    current = customer_pb2.Customer(name="customers/a", first_name="Ada", last_name="L", tags=["a", "b"])
    current.address.city = "Pune"
    current.address.postal_code = "411001"
    patch = customer_pb2.Customer(first_name="Eve", last_name="ignored", tags=["c"])
    patch.address.city = "Delhi"
    merged = CUSTOMER.merge(current, patch, FieldMask(paths=["first_name", "tags", "address"]))
    assert (merged.first_name, merged.last_name, list(merged.tags)) == ("Eve", "L", ["c"])
    assert (merged.address.city, merged.address.postal_code) == ("Delhi", "")
    assert current.first_name == "Ada"  # the input is untouched


def test_merge_refuses_output_only_immutable_unknown_and_empty_masks_with_one_violation_each() -> None:
    current = customer_pb2.Customer(name="customers/a")
    with pytest.raises(InvalidArgument) as caught:
        CUSTOMER.merge(current, current, FieldMask(paths=["etag", "phone", "first_name", "nope", "name"]))
    assert [(v.field, v.reason) for v in caught.value.violations] == [
        ("update_mask.paths[0]", "OUTPUT_ONLY"),
        ("update_mask.paths[1]", "IMMUTABLE"),
        ("update_mask.paths[3]", "UNKNOWN_FIELD"),
        ("update_mask.paths[4]", "OUTPUT_ONLY"),
    ]
    with pytest.raises(InvalidArgument) as empty:
        CUSTOMER.merge(current, current, FieldMask())
    assert [(v.field, v.reason) for v in empty.value.violations] == [("update_mask", "REQUIRED")]


async def test_a_stale_etag_is_aborted_and_a_matching_or_empty_one_passes(store: ResourceStore) -> None:
    created = await create(store, request("ada@example.com"))
    record = await CUSTOMER.get(store, created.name, SALES)
    check_etag("", record, created.name)
    check_etag(created.etag, record, created.name)
    with pytest.raises(Aborted) as caught:
        check_etag("0123456789abcdef", record, created.name)
    assert caught.value.reason == "STALE_ETAG"


async def test_a_customer_sees_only_what_it_owns_and_anything_else_is_not_found(store: ResourceStore) -> None:
    mine = await create(store, request("me@example.com"))
    other = await create(store, request("other@example.com"))
    me = Principal(subject="users/me", role="customer", customer=mine.name)
    assert CUSTOMER.load(await CUSTOMER.get(store, mine.name, me)) == mine
    with pytest.raises(NotFound):
        await CUSTOMER.get(store, other.name, me)
    page, _ = await list_page(store, CUSTOMERS, owner_filters(me), page_size=0, page_token="", query=())
    assert [r.id for r in page] == [id_of(mine.name, CUSTOMERS)]
    unlinked = Principal(subject="users/x", role="customer")
    assert not visible(await CUSTOMER.get(store, mine.name, SALES), unlinked)
    page, _ = await list_page(store, CUSTOMERS, owner_filters(unlinked), page_size=0, page_token="", query=())
    assert page == []
    with pytest.raises(NotFound):
        await CUSTOMER.get(store, "leads/abc", SALES)


async def test_pages_walk_every_record_once_in_order_and_tokens_are_bound_to_the_query(
    store: ResourceStore,
) -> None:
    for n in range(7):
        await create(store, request(f"c{n}@example.com", last_name=f"Zed-{6 - n}", first_name="नमस्ते" * 50))
    seen: list[str] = []
    token = ""
    while True:
        page, token = await list_page(
            store, CUSTOMERS, [], page_size=3, page_token=token, query=("ListCustomers",)
        )
        seen += [CUSTOMER.load(r).last_name for r in page]
        if not token:
            break
        with pytest.raises(InvalidArgument):
            await list_page(
                store, CUSTOMERS, [Eq("status", 1)], page_size=3, page_token=token, query=("ListCustomers",)
            )
        with pytest.raises(InvalidArgument):
            await list_page(store, CUSTOMERS, [], page_size=3, page_token=token, query=("ListLeads",))
    assert seen == [f"Zed-{n}" for n in range(7)]
    with pytest.raises(InvalidArgument):
        await list_page(store, CUSTOMERS, [], page_size=-1, page_token="", query=())


def test_a_resource_without_etag_or_update_time_is_stamped_with_what_it_has() -> None:
    from bhiv.crm.v1 import interaction_pb2

    interactions = Collection("interactions", (Field("customer", "text"),))
    kind = ResourceType(
        message=interaction_pb2.Interaction,
        collection=interactions,
        index=lambda i: {"customer": i.customer},
        mutable=frozenset(),
        label="interaction",
        request_field="interaction",
    )
    sent = interaction_pb2.Interaction(name="interactions/mine", customer="customers/c", subject="call")
    made = kind.fresh(sent, now=1_700_000_000.5)
    assert made.name.startswith("interactions/") and made.name != sent.name
    assert (made.create_time.seconds, made.create_time.nanos) == (1_700_000_000, 500_000_000)
    record = kind.record(made)
    assert record.etag == "" and kind.load(record) == made
