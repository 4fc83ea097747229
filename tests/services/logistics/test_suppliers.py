"""SupplierService on a real logistics server: CRUD, masks, etags, idempotency, delete while in use."""

from __future__ import annotations

import grpc

from bhiv.logistics.v1 import address_pb2, supplier_pb2
from bhiv.logistics.v1 import inventory_service_pb2 as inv
from bhiv.logistics.v1 import supplier_service_pb2 as sup
from tests.services.logistics.conftest import (
    OPS,
    SALES,
    TIMEOUT,
    Logistics,
    error_info,
    failure,
    mask,
    violations,
)


async def test_supplier_round_trips_byte_exact(logistics: Logistics) -> None:
    address = address_pb2.Address(line1="4 Rue de l'Église", city="Zürich", country_code="CH")
    created = await logistics.supplier(
        "O'Brien & Söhne — DROP BY 🚚 नमस्ते", contact_email="orders@obrien.example", address=address, rating=4
    )
    assert created.name.startswith("suppliers/") and created.etag and created.create_time.seconds
    got = await logistics.suppliers.GetSupplier(sup.GetSupplierRequest(name=created.name), metadata=OPS)
    assert got.supplier == created
    assert got.supplier.display_name == "O'Brien & Söhne — DROP BY 🚚 नमस्ते"
    assert got.supplier.address.line1 == "4 Rue de l'Église"


async def test_create_without_display_name_is_invalid_and_stores_nothing(logistics: Logistics) -> None:
    request = sup.CreateSupplierRequest(
        supplier=supplier_pb2.Supplier(display_name="  ", address=address_pb2.Address(city="Pune"))
    )
    error = await failure(logistics.suppliers.CreateSupplier(request, metadata=OPS))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(error) == {
        "supplier.display_name": "REQUIRED",
        "supplier.address.line1": "REQUIRED",
        "supplier.address.country_code": "REQUIRED",
    }
    listed = await logistics.suppliers.ListSuppliers(sup.ListSuppliersRequest(), metadata=OPS)
    assert list(listed.suppliers) == []


async def test_sales_may_not_create_suppliers(logistics: Logistics) -> None:
    request = sup.CreateSupplierRequest(supplier=supplier_pb2.Supplier(display_name="X"))
    error = await failure(logistics.suppliers.CreateSupplier(request, metadata=SALES))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_create_with_the_same_request_id_returns_the_first_supplier(logistics: Logistics) -> None:
    request = sup.CreateSupplierRequest(supplier=supplier_pb2.Supplier(display_name="Once"), request_id="r-1")
    first = await logistics.suppliers.CreateSupplier(request, metadata=OPS)
    again = await logistics.suppliers.CreateSupplier(request, metadata=OPS)
    assert again.supplier == first.supplier
    other = sup.CreateSupplierRequest(supplier=supplier_pb2.Supplier(display_name="Twice"), request_id="r-1")
    error = await failure(logistics.suppliers.CreateSupplier(other, metadata=OPS))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(error) == {"request_id": "REQUEST_ID_REUSED"}
    listed = await logistics.suppliers.ListSuppliers(sup.ListSuppliersRequest(), metadata=OPS)
    assert [s.display_name for s in listed.suppliers] == ["Once"]


async def test_list_orders_by_display_name_filters_active_and_pages(logistics: Logistics) -> None:
    for display_name, active in [("delta", True), ("Alpha", False), ("charlie", True), ("Bravo", True)]:
        await logistics.supplier(display_name, active=active)
    names, token = [], ""
    while True:
        page = await logistics.suppliers.ListSuppliers(
            sup.ListSuppliersRequest(page_size=2, page_token=token), metadata=OPS
        )
        names += [s.display_name for s in page.suppliers]
        token = page.next_page_token
        if not token:
            break
    assert names == ["Alpha", "Bravo", "charlie", "delta"]
    active = await logistics.suppliers.ListSuppliers(sup.ListSuppliersRequest(active_only=True), metadata=OPS)
    assert [s.display_name for s in active.suppliers] == ["Bravo", "charlie", "delta"]
    # A token of the unfiltered list is refused by the filtered one.
    first = await logistics.suppliers.ListSuppliers(sup.ListSuppliersRequest(page_size=1), metadata=OPS)
    error = await failure(
        logistics.suppliers.ListSuppliers(
            sup.ListSuppliersRequest(active_only=True, page_token=first.next_page_token), metadata=OPS
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(error) == {"page_token": "BAD_PAGE_TOKEN"}


async def test_update_applies_the_mask_and_checks_the_etag(logistics: Logistics) -> None:
    created = await logistics.supplier("Acme", rating=2)
    patch = supplier_pb2.Supplier(name=created.name, rating=5, display_name="ignored", etag=created.etag)
    updated = (
        await logistics.suppliers.UpdateSupplier(
            sup.UpdateSupplierRequest(supplier=patch, update_mask=mask("rating")), metadata=OPS
        )
    ).supplier
    assert (updated.rating, updated.display_name) == (5, "Acme")
    assert updated.etag != created.etag and updated.create_time == created.create_time
    # The etag read before the update is stale now.
    error = await failure(
        logistics.suppliers.UpdateSupplier(
            sup.UpdateSupplierRequest(supplier=patch, update_mask=mask("rating")), metadata=OPS
        )
    )
    assert error.code() == grpc.StatusCode.ABORTED
    assert error_info(error).reason == "STALE_ETAG"


async def test_update_mask_naming_output_only_or_unknown_fields_is_invalid(logistics: Logistics) -> None:
    created = await logistics.supplier("Acme")
    patch = supplier_pb2.Supplier(name=created.name)
    error = await failure(
        logistics.suppliers.UpdateSupplier(
            sup.UpdateSupplierRequest(supplier=patch, update_mask=mask("etag", "colour", "rating")),
            metadata=OPS,
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(error) == {
        "update_mask.paths[0]": "OUTPUT_ONLY",
        "update_mask.paths[1]": "UNKNOWN_FIELD",
    }
    got = await logistics.suppliers.GetSupplier(sup.GetSupplierRequest(name=created.name), metadata=OPS)
    assert got.supplier == created


async def test_update_of_an_unknown_supplier_is_not_found(logistics: Logistics) -> None:
    patch = supplier_pb2.Supplier(name="suppliers/nope", rating=1)
    error = await failure(
        logistics.suppliers.UpdateSupplier(
            sup.UpdateSupplierRequest(supplier=patch, update_mask=mask("rating")), metadata=OPS
        )
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_delete_is_refused_while_items_name_the_supplier(logistics: Logistics) -> None:
    supplier = await logistics.supplier("Acme")
    item = await logistics.item("SKU-1", supplier=supplier.name)
    error = await failure(
        logistics.suppliers.DeleteSupplier(sup.DeleteSupplierRequest(name=supplier.name), metadata=OPS)
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(error).reason == "SUPPLIER_IN_USE"
    # Deactivating is the way out, and the item keeps its (now inactive) supplier.
    patch = supplier_pb2.Supplier(name=supplier.name, active=False)
    await logistics.suppliers.UpdateSupplier(
        sup.UpdateSupplierRequest(supplier=patch, update_mask=mask("active")), metadata=OPS
    )
    assert (await logistics.get_item(item.name)).supplier == supplier.name
    # Once no item names it, it can go.
    await logistics.items.DeleteItem(inv.DeleteItemRequest(name=item.name), metadata=OPS)
    deleted = await logistics.suppliers.DeleteSupplier(
        sup.DeleteSupplierRequest(name=supplier.name), metadata=OPS
    )
    assert deleted.name == supplier.name
    error = await failure(
        logistics.suppliers.GetSupplier(sup.GetSupplierRequest(name=supplier.name), metadata=OPS)
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_delete_with_a_stale_etag_is_aborted(logistics: Logistics) -> None:
    supplier = await logistics.supplier("Acme")
    error = await failure(
        logistics.suppliers.DeleteSupplier(
            sup.DeleteSupplierRequest(name=supplier.name, etag="stale"), metadata=OPS
        )
    )
    assert error.code() == grpc.StatusCode.ABORTED
    kept = await logistics.suppliers.GetSupplier(
        sup.GetSupplierRequest(name=supplier.name), metadata=OPS, timeout=TIMEOUT
    )
    assert kept.supplier == supplier
