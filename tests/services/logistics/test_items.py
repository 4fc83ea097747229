"""InventoryService on a real logistics server: items, stock adjustments and analytics."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import grpc
import pytest

from bhiv.logistics.v1 import inventory_item_pb2, money_pb2, supplier_pb2
from bhiv.logistics.v1 import inventory_service_pb2 as inv
from bhiv.logistics.v1 import supplier_service_pb2 as sup
from tests.services.logistics.conftest import (
    ALICE,
    OPS,
    SALES,
    FakeCrm,
    Logistics,
    balanced,
    error_info,
    failure,
    mask,
    running_logistics,
    violations,
)

MAX_INT64 = 2**63 - 1


async def test_create_stores_the_opening_stock_and_derived_fields(logistics: Logistics) -> None:
    item = await logistics.item(
        "CHAIR-01", 4, reorder_level=5, category="furniture", description="DROP BY 🪑"
    )
    assert item.name.startswith("items/") and item.etag
    assert (item.quantity, item.reserved_quantity, item.shipped_quantity, item.stocked_quantity) == (
        4,
        0,
        0,
        4,
    )
    assert item.low_stock is True
    assert await logistics.get_item(item.name) == item
    assert (await logistics.get_item(item.name)).description == "DROP BY 🪑"


async def test_output_only_fields_of_a_create_are_ignored(logistics: Logistics) -> None:
    item = await logistics.item(
        "X-1",
        3,
        name="items/mine",
        reserved_quantity=7,
        shipped_quantity=9,
        stocked_quantity=99,
        low_stock=True,
        etag="e",
    )
    assert item.name != "items/mine" and item.etag != "e"
    assert (item.reserved_quantity, item.shipped_quantity, item.stocked_quantity, item.low_stock) == (
        0,
        0,
        3,
        False,
    )


async def test_duplicate_sku_is_already_exists(logistics: Logistics) -> None:
    await logistics.item("SKU-1")
    error = await failure(logistics.item("SKU-1"))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    listed = await logistics.items.ListItems(inv.ListItemsRequest(), metadata=OPS)
    assert [i.sku for i in listed.items] == ["SKU-1"]


async def test_missing_fields_are_invalid_with_field_violations(logistics: Logistics) -> None:
    request = inv.CreateItemRequest(item=inventory_item_pb2.InventoryItem(quantity=1))
    error = await failure(logistics.items.CreateItem(request, metadata=OPS))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(error) == {
        "item.sku": "REQUIRED",
        "item.display_name": "REQUIRED",
        "item.unit_price": "REQUIRED",
    }
    no_currency = inventory_item_pb2.InventoryItem(
        sku="A", display_name="A", unit_price=money_pb2.Money(amount_micros=5)
    )
    error = await failure(logistics.items.CreateItem(inv.CreateItemRequest(item=no_currency), metadata=OPS))
    assert violations(error) == {"item.unit_price.currency_code": "REQUIRED"}


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"quantity": -1}, "item.quantity"),
        ({"reorder_level": -5}, "item.reorder_level"),
        ({"sku": "-starts-with-dash"}, "item.sku"),
        ({"sku": "x" * 65}, "item.sku"),
        ({"display_name": "n" * 201}, "item.display_name"),
        ({"supplier": "vendors/1"}, "item.supplier"),
        (
            {"unit_price": money_pb2.Money(currency_code="usd", amount_micros=1)},
            "item.unit_price.currency_code",
        ),
        (
            {"unit_price": money_pb2.Money(currency_code="USD", amount_micros=-1)},
            "item.unit_price.amount_micros",
        ),
    ],
)
async def test_bad_fields_are_invalid_and_store_nothing(
    logistics: Logistics, fields: dict, path: str
) -> None:
    item = inventory_item_pb2.InventoryItem(
        sku="GOOD-1", display_name="Good", unit_price=money_pb2.Money(currency_code="USD", amount_micros=1)
    )
    for key, value in fields.items():
        if isinstance(value, money_pb2.Money):
            getattr(item, key).CopyFrom(value)
        else:
            setattr(item, key, value)
    error = await failure(logistics.items.CreateItem(inv.CreateItemRequest(item=item), metadata=OPS))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert path in violations(error)
    assert list((await logistics.items.ListItems(inv.ListItemsRequest(), metadata=OPS)).items) == []


async def test_a_stock_value_past_the_largest_money_is_invalid(logistics: Logistics) -> None:
    error = await failure(logistics.item("RICH", 1_000_000_000, price=MAX_INT64 // 999_999_999))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(error) == {"item.unit_price.amount_micros": "TOO_LARGE"}


async def test_supplier_must_exist_and_be_active(logistics: Logistics) -> None:
    error = await failure(logistics.item("A", supplier="suppliers/ghost"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(error).metadata["field"] == "item.supplier"
    idle = await logistics.supplier("Idle", active=False)
    error = await failure(logistics.item("A", supplier=idle.name))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(error).reason == "SUPPLIER_INACTIVE"
    assert list((await logistics.items.ListItems(inv.ListItemsRequest(), metadata=OPS)).items) == []


async def test_list_filters_by_category_and_low_stock_ordered_by_sku(logistics: Logistics) -> None:
    await logistics.item("b-2", 1, category="tools", reorder_level=1)
    await logistics.item("a-1", 9, category="tools", reorder_level=1)
    await logistics.item("c-3", 0, category="Tools")
    await logistics.item("d-4", 50, category="garden", reorder_level=10)

    async def skus(**kwargs: object) -> list[str]:
        reply = await logistics.items.ListItems(inv.ListItemsRequest(**kwargs), metadata=SALES)  # type: ignore[arg-type]
        return [i.sku for i in reply.items]

    assert await skus() == ["a-1", "b-2", "c-3", "d-4"]
    assert await skus(category="tools") == ["a-1", "b-2"]
    assert await skus(low_stock_only=True) == ["b-2", "c-3"]
    assert await skus(category="tools", low_stock_only=True) == ["b-2"]
    assert await skus(category="none") == []


async def test_pages_stay_correct_while_items_are_inserted(logistics: Logistics) -> None:
    for sku in ("b", "d", "f", "h"):
        await logistics.item(sku)
    first = await logistics.items.ListItems(inv.ListItemsRequest(page_size=2), metadata=OPS)
    assert [i.sku for i in first.items] == ["b", "d"]
    await logistics.item("a")  # before the page: not repeated, not shifting the next page
    await logistics.item("e")  # after it: seen in its place
    second = await logistics.items.ListItems(
        inv.ListItemsRequest(page_size=2, page_token=first.next_page_token), metadata=OPS
    )
    third = await logistics.items.ListItems(
        inv.ListItemsRequest(page_size=2, page_token=second.next_page_token), metadata=OPS
    )
    assert [i.sku for i in second.items] + [i.sku for i in third.items] == ["e", "f", "h"]
    assert third.next_page_token == ""


async def test_a_page_of_large_items_ends_before_half_the_response_limit(
    tmp_path: Path, crm: FakeCrm
) -> None:
    # A 64 KiB response limit: pages hold at most 32 KiB of items, so 12 KiB items come two by two.
    async with running_logistics(tmp_path, crm.address, MAX_MESSAGE_BYTES=str(64 * 1024)) as service:
        for number in range(5):
            await service.item(f"BIG-{number}", description="é" * 6_000)
        sizes, token = [], ""
        while True:
            reply = await service.items.ListItems(
                inv.ListItemsRequest(page_size=500, page_token=token), metadata=OPS
            )
            sizes.append(len(reply.items))
            assert reply.ByteSize() < 32 * 1024
            token = reply.next_page_token
            if not token:
                break
    assert sizes == [2, 2, 1]


async def test_update_changes_catalogue_fields_but_never_stock(logistics: Logistics) -> None:
    item = await logistics.item("SKU-1", 5, reorder_level=1)
    patch = inventory_item_pb2.InventoryItem(
        name=item.name, reorder_level=9, quantity=500, display_name="New"
    )
    updated = (
        await logistics.items.UpdateItem(
            inv.UpdateItemRequest(item=patch, update_mask=mask("reorder_level", "display_name")), metadata=OPS
        )
    ).item
    assert (updated.reorder_level, updated.display_name, updated.quantity, updated.low_stock) == (
        9,
        "New",
        5,
        True,
    )
    error = await failure(
        logistics.items.UpdateItem(
            inv.UpdateItemRequest(item=patch, update_mask=mask("quantity")), metadata=OPS
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(error) == {"update_mask.paths[0]": "USE_ADJUST_STOCK"}
    error = await failure(
        logistics.items.UpdateItem(
            inv.UpdateItemRequest(item=patch, update_mask=mask("reserved_quantity", "stocked_quantity")),
            metadata=OPS,
        )
    )
    assert violations(error) == {"update_mask.paths[0]": "OUTPUT_ONLY", "update_mask.paths[1]": "OUTPUT_ONLY"}
    assert (await logistics.get_item(item.name)) == updated


async def test_update_to_a_taken_sku_is_already_exists(logistics: Logistics) -> None:
    await logistics.item("TAKEN")
    item = await logistics.item("FREE")
    patch = inventory_item_pb2.InventoryItem(name=item.name, sku="TAKEN")
    error = await failure(
        logistics.items.UpdateItem(inv.UpdateItemRequest(item=patch, update_mask=mask("sku")), metadata=OPS)
    )
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert (await logistics.get_item(item.name)).sku == "FREE"


async def test_moving_an_item_between_suppliers_counts_it_on_the_new_one(logistics: Logistics) -> None:
    old = await logistics.supplier("Old")
    new = await logistics.supplier("New")
    item = await logistics.item("SKU-1", supplier=old.name)
    patch = inventory_item_pb2.InventoryItem(name=item.name, supplier=new.name, etag=item.etag)
    await logistics.items.UpdateItem(
        inv.UpdateItemRequest(item=patch, update_mask=mask("supplier")), metadata=OPS
    )
    # The old supplier is free to go, the new one is not; the count left the supplier's etag alone.
    await logistics.suppliers.DeleteSupplier(
        sup.DeleteSupplierRequest(name=old.name, etag=old.etag), metadata=OPS
    )
    error = await failure(
        logistics.suppliers.DeleteSupplier(sup.DeleteSupplierRequest(name=new.name), metadata=OPS)
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    # Moving to an inactive supplier is refused.
    idle = await logistics.supplier("Idle", active=False)
    patch = inventory_item_pb2.InventoryItem(name=item.name, supplier=idle.name)
    error = await failure(
        logistics.items.UpdateItem(
            inv.UpdateItemRequest(item=patch, update_mask=mask("supplier")), metadata=OPS
        )
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (await logistics.get_item(item.name)).supplier == new.name


async def test_adjust_stock_adds_and_removes_free_units_with_a_reason(logistics: Logistics) -> None:
    item = await logistics.item("SKU-1", 5, reorder_level=5)
    added = (
        await logistics.items.AdjustStock(
            inv.AdjustStockRequest(name=item.name, delta=10, reason="received PO-1042 from O'Brien"),
            metadata=OPS,
        )
    ).item
    assert (added.quantity, added.stocked_quantity, added.low_stock) == (15, 15, False)
    removed = (
        await logistics.items.AdjustStock(
            inv.AdjustStockRequest(name=item.name, delta=-12, reason="damaged 💧"), metadata=OPS
        )
    ).item
    assert (removed.quantity, removed.stocked_quantity, removed.low_stock) == (3, 3, True)
    assert balanced(removed)
    # Each adjustment is kept with its reason, byte-exact, in logistics' store.
    with sqlite3.connect(logistics.data_dir / "logistics.db") as db:
        rows = [json.loads(r[0]) for r in db.execute("SELECT data FROM stock_adjustments ORDER BY f_created")]
    assert [(r["delta"], r["reason"], r["principal"]) for r in rows] == [
        (10, "received PO-1042 from O'Brien", "users/ops"),
        (-12, "damaged 💧", "users/ops"),
    ]


async def test_adjust_stock_below_zero_is_refused_and_changes_nothing(logistics: Logistics) -> None:
    item = await logistics.item("SKU-1", 5)
    error = await failure(
        logistics.items.AdjustStock(
            inv.AdjustStockRequest(name=item.name, delta=-6, reason="count"), metadata=OPS
        )
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(error).reason == "INSUFFICIENT_STOCK"
    assert await logistics.get_item(item.name) == item


async def test_adjust_stock_cannot_take_reserved_units(logistics: Logistics) -> None:
    item = await logistics.item("SKU-1", 5)
    await logistics.ship("customers/alice", (item.name, 4))
    error = await failure(
        logistics.items.AdjustStock(
            inv.AdjustStockRequest(name=item.name, delta=-2, reason="count"), metadata=OPS
        )
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    after = await logistics.get_item(item.name)
    assert (after.quantity, after.reserved_quantity) == (1, 4)


async def test_adjust_stock_past_the_unit_limit_is_refused(logistics: Logistics) -> None:
    item = await logistics.item("SKU-1", 2_000_000_000, price=1)
    error = await failure(
        logistics.items.AdjustStock(
            inv.AdjustStockRequest(name=item.name, delta=200_000_000, reason="in"), metadata=OPS
        )
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(error).reason == "STOCK_LIMIT"


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"delta": 0, "reason": "x"}, "delta"),
        ({"delta": 1_000_000_001, "reason": "x"}, "delta"),
        ({"delta": 1, "reason": ""}, "reason"),
        ({"delta": 1, "reason": "   "}, "reason"),
        ({"delta": 1, "reason": "r" * 501}, "reason"),
    ],
)
async def test_bad_adjustments_are_invalid(logistics: Logistics, fields: dict, path: str) -> None:
    item = await logistics.item("SKU-1", 5)
    error = await failure(
        logistics.items.AdjustStock(inv.AdjustStockRequest(name=item.name, **fields), metadata=OPS)
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert path in violations(error)
    assert await logistics.get_item(item.name) == item


async def test_adjust_stock_with_a_request_id_applies_once(logistics: Logistics) -> None:
    item = await logistics.item("SKU-1", 5)
    request = inv.AdjustStockRequest(name=item.name, delta=3, reason="received", request_id="adj-1")
    replies = await asyncio.gather(*(logistics.items.AdjustStock(request, metadata=OPS) for _ in range(3)))
    assert {r.item.quantity for r in replies} == {8}
    assert (await logistics.get_item(item.name)).quantity == 8


async def test_adjust_stock_with_a_stale_etag_is_aborted(logistics: Logistics) -> None:
    item = await logistics.item("SKU-1", 5)
    request = inv.AdjustStockRequest(name=item.name, delta=1, reason="x", etag=item.etag)
    await logistics.items.AdjustStock(request, metadata=OPS)
    error = await failure(logistics.items.AdjustStock(request, metadata=OPS))
    assert error.code() == grpc.StatusCode.ABORTED


async def test_delete_is_refused_while_units_are_reserved(logistics: Logistics) -> None:
    item = await logistics.item("SKU-1", 5)
    shipment = await logistics.ship("customers/alice", (item.name, 2))
    error = await failure(logistics.items.DeleteItem(inv.DeleteItemRequest(name=item.name), metadata=OPS))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(error).reason == "STOCK_RESERVED"
    await logistics.cancel(shipment.name)
    await logistics.items.DeleteItem(inv.DeleteItemRequest(name=item.name), metadata=OPS)
    error = await failure(logistics.items.GetItem(inv.GetItemRequest(name=item.name), metadata=OPS))
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_customers_cannot_read_inventory(logistics: Logistics) -> None:
    error = await failure(logistics.items.ListItems(inv.ListItemsRequest(), metadata=ALICE))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_analytics_are_totals_per_category_and_currency(logistics: Logistics) -> None:
    a = await logistics.item("A", 10, price=1_500_000, category="tools", reorder_level=10)
    await logistics.item("B", 4, price=250_000, category="tools", currency="INR")
    await logistics.item("C", 0, price=9_000_000, category="garden", reorder_level=1)
    await logistics.item("D", 3, price=2_000_000)
    await logistics.ship("customers/alice", (a.name, 4))  # reserved units still count as stock
    reply = await logistics.items.GetInventoryAnalytics(inv.GetInventoryAnalyticsRequest(), metadata=OPS)
    assert (reply.total_items, reply.total_units, reply.reserved_units, reply.low_stock_count) == (
        4,
        13,
        4,
        2,
    )
    assert [(m.currency_code, m.amount_micros) for m in reply.total_stock_values] == [
        ("INR", 1_000_000),
        ("USD", 15_000_000 + 6_000_000),
    ]
    stats = {c.category: c for c in reply.categories}
    assert list(stats) == ["", "garden", "tools"]
    tools = stats["tools"]
    assert (tools.item_count, tools.total_units, tools.reserved_units, tools.low_stock_count) == (2, 10, 4, 1)
    assert [(m.currency_code, m.amount_micros) for m in tools.stock_values] == [
        ("INR", 1_000_000),
        ("USD", 15_000_000),
    ]
    assert [(m.currency_code, m.amount_micros) for m in stats["garden"].stock_values] == [("USD", 0)]
    assert reply.compute_time.seconds > 0


async def test_analytics_totals_past_the_largest_money_are_capped_not_errors(logistics: Logistics) -> None:
    price = MAX_INT64 // 1_000_000_000
    for sku in ("R1", "R2", "R3"):
        await logistics.item(sku, 1_000_000_000, price=price, category="rich")
    reply = await logistics.items.GetInventoryAnalytics(inv.GetInventoryAnalyticsRequest(), metadata=OPS)
    assert [(m.currency_code, m.amount_micros) for m in reply.total_stock_values] == [("USD", MAX_INT64)]
    assert reply.total_units == 3_000_000_000


async def test_analytics_need_the_analytics_permission(logistics: Logistics) -> None:
    error = await failure(
        logistics.items.GetInventoryAnalytics(inv.GetInventoryAnalyticsRequest(), metadata=SALES)
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_an_inactive_supplier_keeps_its_items(logistics: Logistics) -> None:
    supplier = await logistics.supplier("Acme")
    item = await logistics.item("SKU-1", supplier=supplier.name)
    patch = supplier_pb2.Supplier(name=supplier.name, active=False)
    await logistics.suppliers.UpdateSupplier(
        sup.UpdateSupplierRequest(supplier=patch, update_mask=mask("active")), metadata=OPS
    )
    patch_item = inventory_item_pb2.InventoryItem(name=item.name, display_name="Renamed")
    updated = await logistics.items.UpdateItem(
        inv.UpdateItemRequest(item=patch_item, update_mask=mask("display_name")), metadata=OPS
    )
    assert (updated.item.display_name, updated.item.supplier) == ("Renamed", supplier.name)
