"""CustomerService on a real server: unique e-mail, idempotency, etags, masks, ownership, text."""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
from pathlib import Path

import grpc
from google.protobuf.field_mask_pb2 import FieldMask

from bhiv.crm.v1 import address_pb2, customer_pb2
from bhiv.crm.v1 import customer_service_pb2 as cs
from tests.services.crm.conftest import (
    ADMIN,
    OPS,
    SALES,
    SUPPORT,
    Crm,
    as_,
    reason,
    refused,
    serve_crm,
    violations,
)

Customer = customer_pb2.Customer


def create(customer: Customer, request_id: str = "") -> cs.CreateCustomerRequest:
    return cs.CreateCustomerRequest(customer=customer, request_id=request_id)


def rows(data_dir: Path, table: str = "customers") -> int:
    with sqlite3.connect(data_dir / "crm.db") as db:
        return int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


async def test_create_sets_server_owned_fields_and_defaults(crm: Crm) -> None:
    given = Customer(
        name="customers/forged",
        first_name="Ana",
        email="ana@example.org",
        etag="forged",
        tags=["vip"],
        address=address_pb2.Address(city="Pune", country_code="IN"),
    )
    given.create_time.seconds = 7
    given.last_contact_time.seconds = 8
    created = (await crm.customers.CreateCustomer(create(given), metadata=SALES)).customer
    assert created.name.startswith("customers/") and created.name != "customers/forged"
    assert len(created.name.removeprefix("customers/")) == 22
    assert created.etag and created.etag != "forged"
    assert created.create_time.seconds > 1_000_000 and created.update_time == created.create_time
    assert not created.HasField("last_contact_time")
    assert created.status == customer_pb2.CUSTOMER_STATUS_ACTIVE
    assert (created.address.city, list(created.tags)) == ("Pune", ["vip"])
    got = await crm.customers.GetCustomer(cs.GetCustomerRequest(name=created.name), metadata=OPS)
    assert got.customer == created


async def test_text_is_stored_and_returned_byte_exact(crm: Crm) -> None:
    texts = {
        "first_name": "Seán 🙂",
        "last_name": "O'Brien",
        "company": "DROP BY; --TechStart Inc, नमस्ते",
        "notes": "नमस्ते दुनिया — 'quoted' \"double\" \\ 🚀👩🏽‍💻 \u200d",
    }
    created = (
        await crm.customers.CreateCustomer(
            create(Customer(email="o'brien@example.org", **texts)), metadata=SALES
        )
    ).customer
    got = (await crm.customers.GetCustomer(cs.GetCustomerRequest(name=created.name), metadata=SALES)).customer
    for field, text in texts.items():
        assert getattr(got, field).encode() == text.encode()
    assert got.email == "o'brien@example.org"
    # Search finds them too, ignoring case, in every script.
    for query in ("o'brien", "DROP BY", "नमस्ते", "🙂"):
        listed = await crm.customers.ListCustomers(cs.ListCustomersRequest(query=query), metadata=SALES)
        assert [c.name for c in listed.customers] == [created.name], query


async def test_missing_fields_and_bad_tags_are_invalid_argument_and_store_nothing(crm: Crm) -> None:
    err = await refused(
        crm.customers.CreateCustomer(
            create(Customer(first_name="  ", tags=["ok", "Bad Tag", "ok"], email="")), metadata=SALES
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(err) == [
        ("customer.first_name", "REQUIRED"),
        ("customer.email", "REQUIRED"),
        ("customer.tags[1]", "BAD_FORMAT"),
        ("customer.tags[2]", "DUPLICATE"),
    ]
    # The contract's own rules, from the chain.
    err = await refused(
        crm.customers.CreateCustomer(
            create(Customer(first_name="A", email="not-an-address", phone="call me", status=99)),
            metadata=SALES,
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert sorted(violations(err)) == [
        ("customer.email", "BAD_EMAIL"),
        ("customer.phone", "BAD_FORMAT"),
        ("customer.status", "UNDEFINED_ENUM"),
    ]
    err = await refused(
        crm.customers.CreateCustomer(create(Customer(first_name="A" * 201, email="a@b.co")), metadata=SALES)
    )
    assert violations(err) == [("customer.first_name", "TOO_LONG")]
    assert rows(crm.data_dir) == 0


async def test_duplicate_email_in_another_case_is_already_exists(crm: Crm) -> None:
    await crm.customer("Ana.Silva@Example.org")
    err = await refused(
        crm.customers.CreateCustomer(
            create(Customer(first_name="B", email="ana.silva@EXAMPLE.ORG")), metadata=SALES
        )
    )
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    assert reason(err) == "EMAIL_TAKEN"
    assert rows(crm.data_dir) == 1


async def test_concurrent_creates_of_one_email_give_one_customer(crm: Crm) -> None:
    async def attempt(n: int) -> grpc.StatusCode:
        email = "Race@Example.org" if n % 2 else "race@example.ORG"
        try:
            await crm.customers.CreateCustomer(
                create(Customer(first_name=f"R{n}", email=email)), metadata=SALES
            )
        except grpc.aio.AioRpcError as err:
            return err.code()
        return grpc.StatusCode.OK

    codes = await asyncio.gather(*(attempt(n) for n in range(24)))
    assert codes.count(grpc.StatusCode.OK) == 1
    assert codes.count(grpc.StatusCode.ALREADY_EXISTS) == 23
    assert rows(crm.data_dir) == 1


def _race_in_process(data_dir: str, barrier, n: int, out) -> None:
    async def run() -> list[str]:
        async with serve_crm(Path(data_dir)) as served:
            barrier.wait()
            codes = []
            for k in range(8):
                request = create(
                    Customer(
                        first_name=f"P{n}", email=f"Shared{k}@Example.org" if n else f"shared{k}@example.ORG"
                    )
                )
                try:
                    await served.customers.CreateCustomer(request, metadata=SALES)
                    codes.append("OK")
                except grpc.aio.AioRpcError as err:
                    codes.append(err.code().name)
            return codes

    out.put(asyncio.run(run()))


def test_two_processes_racing_for_one_email_give_one_customer_each(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    out = context.Queue()
    workers = [
        context.Process(target=_race_in_process, args=(str(tmp_path), barrier, n, out)) for n in range(2)
    ]
    for worker in workers:
        worker.start()
    results = [out.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    codes = [code for result in results for code in result]
    assert codes.count("OK") == 8
    assert codes.count("ALREADY_EXISTS") == 8
    assert rows(tmp_path) == 8


async def test_a_retried_create_returns_the_first_customer(crm: Crm) -> None:
    request = create(Customer(first_name="Ana", email="ana@example.org"), request_id="r-1")
    first = await crm.customers.CreateCustomer(request, metadata=SALES)
    again = await crm.customers.CreateCustomer(request, metadata=SALES)
    assert again == first
    assert rows(crm.data_dir) == 1
    # The same key from another caller is that caller's own key.
    other = await refused(crm.customers.CreateCustomer(request, metadata=SUPPORT))
    assert other.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_the_same_request_id_with_another_request_is_invalid_argument(crm: Crm) -> None:
    await crm.customers.CreateCustomer(
        create(Customer(first_name="Ana", email="ana@example.org"), "r-1"), metadata=SALES
    )
    err = await refused(
        crm.customers.CreateCustomer(
            create(Customer(first_name="Bo", email="bo@example.org"), "r-1"), metadata=SALES
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(err) == [("request_id", "REQUEST_ID_REUSED")]
    assert rows(crm.data_dir) == 1


async def test_list_orders_by_last_then_first_name_and_pages_without_repeats(crm: Crm) -> None:
    names = [("Zoe", "Adams"), ("amy", "Baker"), ("Bob", "adams"), ("Cy", "Chan"), ("Al", "Baker")]
    for n, (first, last) in enumerate(names):
        await crm.customer(f"c{n}@example.org", first, last)
    seen: list[str] = []
    token = ""
    while True:
        page = await crm.customers.ListCustomers(
            cs.ListCustomersRequest(page_size=2, page_token=token), metadata=SALES
        )
        seen += [f"{c.first_name} {c.last_name}" for c in page.customers]
        if not page.next_page_token:
            break
        token = page.next_page_token
        # A customer inserted between pages, before the position reached, is not repeated.
        await crm.customer(f"late{len(seen)}@example.org", "Aaron", "Aardvark")
    assert seen == ["Bob adams", "Zoe Adams", "Al Baker", "amy Baker", "Cy Chan"]
    err = await refused(
        crm.customers.ListCustomers(
            cs.ListCustomersRequest(page_token=token or "bm9wZQ", status=2), metadata=SALES
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    err = await refused(crm.customers.ListCustomers(cs.ListCustomersRequest(page_size=-1), metadata=SALES))
    assert violations(err) == [("page_size", "OUT_OF_RANGE")]


async def test_a_page_token_of_other_filters_is_bad_page_token(crm: Crm) -> None:
    for n in range(3):
        await crm.customer(f"c{n}@example.org")
    page = await crm.customers.ListCustomers(cs.ListCustomersRequest(page_size=1), metadata=SALES)
    assert page.next_page_token
    err = await refused(
        crm.customers.ListCustomers(
            cs.ListCustomersRequest(page_size=1, page_token=page.next_page_token, tag="vip"), metadata=SALES
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(err) == [("page_token", "BAD_PAGE_TOKEN")]


async def test_list_filters_by_status_tag_and_query(crm: Crm) -> None:
    vip = await crm.customer("vip@example.org", "Vera", "Ivanova", tags=["vip", "enterprise"])
    prospect = await crm.customer(
        "p@example.org", "Pat", "Lee", status=customer_pb2.CUSTOMER_STATUS_PROSPECT, company="Acme"
    )
    await crm.customer("x@example.org", "Xi", "Wu")

    async def listed(**filters: object) -> list[str]:
        page = await crm.customers.ListCustomers(cs.ListCustomersRequest(**filters), metadata=SALES)  # type: ignore[arg-type]
        return [c.name for c in page.customers]

    assert await listed(tag="vip") == [vip.name]
    assert await listed(tag="VIP") == []
    assert await listed(status=customer_pb2.CUSTOMER_STATUS_PROSPECT) == [prospect.name]
    assert await listed(query="ACME") == [prospect.name]
    assert await listed(query="ivanova") == [vip.name]
    assert await listed(query="EXAMPLE.ORG", tag="enterprise") == [vip.name]
    assert len(await listed()) == 3


async def test_update_applies_the_mask_and_checks_the_etag(crm: Crm) -> None:
    ana = await crm.customer("ana@example.org", notes="old", tags=["a"])
    patch = Customer(name=ana.name, etag=ana.etag, notes="new", first_name="ignored", tags=["b", "c"])
    updated = (
        await crm.customers.UpdateCustomer(
            cs.UpdateCustomerRequest(customer=patch, update_mask=FieldMask(paths=["notes", "tags"])),
            metadata=SUPPORT,
        )
    ).customer
    assert (updated.notes, list(updated.tags), updated.first_name) == ("new", ["b", "c"], "Ana")
    assert updated.etag != ana.etag and updated.create_time == ana.create_time
    # The etag read before the update is stale now: ABORTED, nothing changes.
    stale = Customer(name=ana.name, etag=ana.etag, notes="lost")
    err = await refused(
        crm.customers.UpdateCustomer(
            cs.UpdateCustomerRequest(customer=stale, update_mask=FieldMask(paths=["notes"])), metadata=SALES
        )
    )
    assert err.code() == grpc.StatusCode.ABORTED
    assert reason(err) == "STALE_ETAG"
    got = (await crm.customers.GetCustomer(cs.GetCustomerRequest(name=ana.name), metadata=SALES)).customer
    assert got == updated
    # Without an etag the write is unconditional.
    blind = Customer(name=ana.name, status=customer_pb2.CUSTOMER_STATUS_CHURNED)
    reply = await crm.customers.UpdateCustomer(
        cs.UpdateCustomerRequest(customer=blind, update_mask=FieldMask(paths=["status"])), metadata=SALES
    )
    assert reply.customer.status == customer_pb2.CUSTOMER_STATUS_CHURNED


async def test_update_mask_with_output_only_or_unknown_paths_is_invalid_argument(crm: Crm) -> None:
    ana = await crm.customer("ana@example.org")
    mask = FieldMask(paths=["notes", "etag", "last_contact_time", "no_such_field", "address.city"])
    err = await refused(
        crm.customers.UpdateCustomer(
            cs.UpdateCustomerRequest(customer=Customer(name=ana.name, notes="x"), update_mask=mask),
            metadata=SALES,
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(err) == [
        ("update_mask.paths[1]", "OUTPUT_ONLY"),
        ("update_mask.paths[2]", "OUTPUT_ONLY"),
        ("update_mask.paths[3]", "UNKNOWN_FIELD"),
        ("update_mask.paths[4]", "UNKNOWN_FIELD"),
    ]
    err = await refused(
        crm.customers.UpdateCustomer(
            cs.UpdateCustomerRequest(customer=Customer(name=ana.name), update_mask=FieldMask()),
            metadata=SALES,
        )
    )
    assert violations(err) == [("update_mask", "REQUIRED")]
    # Clearing a required field through the mask is refused too.
    err = await refused(
        crm.customers.UpdateCustomer(
            cs.UpdateCustomerRequest(
                customer=Customer(name=ana.name), update_mask=FieldMask(paths=["email", "status"])
            ),
            metadata=SALES,
        )
    )
    assert violations(err) == [("customer.email", "REQUIRED"), ("customer.status", "REQUIRED")]
    got = (await crm.customers.GetCustomer(cs.GetCustomerRequest(name=ana.name), metadata=SALES)).customer
    assert got == ana


async def test_update_to_another_customers_email_is_already_exists(crm: Crm) -> None:
    await crm.customer("ana@example.org")
    bo = await crm.customer("bo@example.org")
    err = await refused(
        crm.customers.UpdateCustomer(
            cs.UpdateCustomerRequest(
                customer=Customer(name=bo.name, email="ANA@example.org"),
                update_mask=FieldMask(paths=["email"]),
            ),
            metadata=SALES,
        )
    )
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    # Its own address in another case is fine.
    moved = await crm.customers.UpdateCustomer(
        cs.UpdateCustomerRequest(
            customer=Customer(name=bo.name, email="BO@example.org"), update_mask=FieldMask(paths=["email"])
        ),
        metadata=SALES,
    )
    assert moved.customer.email == "BO@example.org"


async def test_unknown_customers_are_not_found(crm: Crm) -> None:
    name = "customers/doesnotexist"
    for call in (
        crm.customers.GetCustomer(cs.GetCustomerRequest(name=name), metadata=SALES),
        crm.customers.DeleteCustomer(cs.DeleteCustomerRequest(name=name), metadata=ADMIN),
        crm.customers.UpdateCustomer(
            cs.UpdateCustomerRequest(
                customer=Customer(name=name, notes="x"), update_mask=FieldMask(paths=["notes"])
            ),
            metadata=SALES,
        ),
    ):
        assert (await refused(call)).code() == grpc.StatusCode.NOT_FOUND
    err = await refused(crm.customers.GetCustomer(cs.GetCustomerRequest(name="leads/abc"), metadata=SALES))
    assert violations(err) == [("name", "BAD_FORMAT")]


async def test_a_customer_principal_sees_only_its_own_record(crm: Crm) -> None:
    mine = await crm.customer("me@example.org")
    other = await crm.customer("other@example.org")
    me = as_("customer", subject="users/me", customer=mine.name)
    got = await crm.customers.GetCustomer(cs.GetCustomerRequest(name=mine.name), metadata=me)
    assert got.customer == mine
    err = await refused(crm.customers.GetCustomer(cs.GetCustomerRequest(name=other.name), metadata=me))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    listed = await crm.customers.ListCustomers(cs.ListCustomersRequest(), metadata=me)
    assert [c.name for c in listed.customers] == [mine.name]
    assert (
        await crm.customers.ListCustomers(cs.ListCustomersRequest(query="other"), metadata=me)
    ).customers == []
    # A customer account linked to no record sees nothing at all.
    unlinked = as_("customer", subject="users/unlinked")
    assert (await crm.customers.ListCustomers(cs.ListCustomersRequest(), metadata=unlinked)).customers == []
    # Customers may not write customers (RBAC, before anything is looked up).
    err = await refused(
        crm.customers.UpdateCustomer(
            cs.UpdateCustomerRequest(
                customer=Customer(name=mine.name, notes="x"), update_mask=FieldMask(paths=["notes"])
            ),
            metadata=me,
        )
    )
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_roles_follow_the_matrix(crm: Crm) -> None:
    new = create(Customer(first_name="A", email="a@example.org"))
    assert (
        await refused(crm.customers.CreateCustomer(new, metadata=OPS))
    ).code() == grpc.StatusCode.PERMISSION_DENIED
    ana = await crm.customer("ana@example.org")
    deleting = cs.DeleteCustomerRequest(name=ana.name)
    for caller in (SALES, SUPPORT, OPS):
        err = await refused(crm.customers.DeleteCustomer(deleting, metadata=caller))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (await crm.customers.DeleteCustomer(deleting, metadata=ADMIN)).name == ana.name


async def test_delete_checks_the_etag_and_removes_the_customer(crm: Crm) -> None:
    ana = await crm.customer("ana@example.org")
    err = await refused(
        crm.customers.DeleteCustomer(cs.DeleteCustomerRequest(name=ana.name, etag="stale"), metadata=ADMIN)
    )
    assert err.code() == grpc.StatusCode.ABORTED
    await crm.customers.DeleteCustomer(cs.DeleteCustomerRequest(name=ana.name, etag=ana.etag), metadata=ADMIN)
    err = await refused(crm.customers.GetCustomer(cs.GetCustomerRequest(name=ana.name), metadata=SALES))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    # The address is free again.
    await crm.customer("ANA@example.org")


async def test_records_survive_a_restart(tmp_path: Path) -> None:
    async with serve_crm(tmp_path) as first:
        ana = await first.customer("ana@example.org", last="Nüñez")
    async with serve_crm(tmp_path) as second:
        got = await second.customers.GetCustomer(cs.GetCustomerRequest(name=ana.name), metadata=SALES)
    assert got.customer == ana
