"""Inventory items, their suppliers, stock adjustments and the analytics over them.

Every write is one store transaction (:meth:`ResourceStore.run`), built on the resource kit:
server-owned fields, etags, update masks, idempotent creates and adjustments, filtered pages.
What logistics adds:

- an item's supplier must exist (NOT_FOUND) and be active (FAILED_PRECONDITION) when the item is
  created with it or moved to it; each supplier counts the items naming it, in the same
  transaction as the item's write, and cannot be deleted while that count is above zero;
- stock changes only through :meth:`Inventory.adjust_stock` (a signed delta with a reason, kept
  in ``stock_adjustments``) and shipments; free units never go below zero, units in stock never
  above :data:`~bhiv_core.services.logistics.rules.MAX_UNITS`, and ``quantity`` +
  ``reserved_quantity`` + ``shipped_quantity`` always equals ``stocked_quantity``;
- an item holding reserved units cannot be deleted;
- analytics are computed by the store (grouped counts and sums), never by reading every item.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable

from google.protobuf.field_mask_pb2 import FieldMask

from bhiv.logistics.v1 import inventory_item_pb2, inventory_service_pb2, money_pb2, supplier_service_pb2
from bhiv_core.resources import (
    Eq,
    Filter,
    Record,
    ResourceStore,
    Transaction,
    UniqueViolation,
    already_exists,
    check_etag,
    idempotent,
    list_page,
    new_id,
    total_of_parts,
)
from bhiv_core.runtime.errors import Aborted, FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from bhiv_core.runtime.times import to_timestamp
from bhiv_core.security.principal import Principal
from bhiv_core.services.logistics.resources import (
    ADJUSTMENTS,
    ITEM,
    SUPPLIER,
    supplier_record,
)
from bhiv_core.services.logistics.rules import (
    MAX_MONEY_MICROS,
    MAX_UNITS,
    item_violations,
    raise_if,
    supplier_violations,
)

__all__ = ["Inventory", "changed_concurrently", "restamp_item"]

ITEM_SKU_TAKEN: dict[tuple[str, ...], str] = {("sku",): "an inventory item with this SKU exists"}


def changed_concurrently(name: str) -> Aborted:
    """The ABORTED of a conditional write that lost to a concurrent one."""
    return Aborted(f"{name} changed while this call ran: re-read and retry", reason="CONCURRENT_CHANGE")


def restamp_item(item: inventory_item_pb2.InventoryItem, *, now: float) -> inventory_item_pb2.InventoryItem:
    """Recomputes an item's derived fields after a stock change and stamps it (new etag)."""
    item.low_stock = item.quantity <= item.reorder_level
    return ITEM.stamp(item, now=now)


async def replace_item(txn: Transaction, item: inventory_item_pb2.InventoryItem, expected_etag: str) -> None:
    """Writes an item conditionally on the etag read; ABORTED when it changed meanwhile."""
    if not await txn.replace(ITEM.collection, ITEM.record(item), expected_etag=expected_etag):
        raise changed_concurrently(item.name)


class Inventory:
    """The inventory and supplier operations of logistics.

    Args:
        store: Logistics' resource store.
        clock: Unix seconds now.
        page_bytes: The most bytes of stored items one list page holds.

    """

    def __init__(
        self,
        store: ResourceStore,
        *,
        clock: Callable[[], float] = time.time,
        page_bytes: int = 2 * 1024 * 1024,
    ):
        self.store = store
        self.clock = clock
        self.page_bytes = page_bytes

    # Suppliers

    async def create_supplier(
        self, request: supplier_service_pb2.CreateSupplierRequest, principal: Principal
    ) -> supplier_service_pb2.CreateSupplierResponse:
        """Creates a supplier (idempotent by ``request_id``)."""
        supplier = SUPPLIER.fresh(request.supplier, now=self.clock())
        raise_if(supplier_violations(supplier, "supplier"))

        async def step(txn: Transaction) -> supplier_service_pb2.CreateSupplierResponse:
            await txn.insert(SUPPLIER.collection, supplier_record(supplier, 0))
            return supplier_service_pb2.CreateSupplierResponse(supplier=supplier)

        return await idempotent(
            self.store,
            scope=f"CreateSupplier:{principal.subject}",
            request_id=request.request_id,
            request=request,
            response_type=supplier_service_pb2.CreateSupplierResponse,
            step=step,
            clock=self.clock,
        )

    async def get_supplier(self, name: str, principal: Principal) -> supplier_service_pb2.GetSupplierResponse:
        """Gets a supplier; NOT_FOUND when there is none."""
        record = await SUPPLIER.get(self.store, name, principal)
        return supplier_service_pb2.GetSupplierResponse(supplier=SUPPLIER.load(record))

    async def list_suppliers(
        self, request: supplier_service_pb2.ListSuppliersRequest
    ) -> supplier_service_pb2.ListSuppliersResponse:
        """One page of suppliers by display name (only active ones when asked)."""
        filters: list[Filter] = [Eq("active", True)] if request.active_only else []
        records, token = await list_page(
            self.store,
            SUPPLIER.collection,
            filters,
            page_size=request.page_size,
            page_token=request.page_token,
            query=("ListSuppliers",),
            max_bytes=self.page_bytes,
        )
        return supplier_service_pb2.ListSuppliersResponse(
            suppliers=[SUPPLIER.load(r) for r in records], next_page_token=token
        )

    async def update_supplier(
        self, request: supplier_service_pb2.UpdateSupplierRequest, principal: Principal
    ) -> supplier_service_pb2.UpdateSupplierResponse:
        """Applies the masked fields to a supplier (conditional on its etag)."""
        name = _required_name(request.supplier.name, "supplier.name")
        now = self.clock()

        async def step(txn: Transaction) -> supplier_service_pb2.UpdateSupplierResponse:
            record = await SUPPLIER.get(txn, name, principal)
            check_etag(request.supplier.etag, record, name)
            merged = SUPPLIER.merge(SUPPLIER.load(record), request.supplier, request.update_mask)
            raise_if(supplier_violations(merged, "supplier"))
            SUPPLIER.stamp(merged, now=now)
            items = _count(record)
            if not await txn.replace(
                SUPPLIER.collection, supplier_record(merged, items), expected_etag=record.etag
            ):
                raise changed_concurrently(name)
            return supplier_service_pb2.UpdateSupplierResponse(supplier=merged)

        return await self.store.run(step)

    async def delete_supplier(
        self, request: supplier_service_pb2.DeleteSupplierRequest, principal: Principal
    ) -> supplier_service_pb2.DeleteSupplierResponse:
        """Deletes a supplier that no item names."""
        name = request.name

        async def step(txn: Transaction) -> supplier_service_pb2.DeleteSupplierResponse:
            record = await SUPPLIER.get(txn, name, principal)
            check_etag(request.etag, record, name)
            items = _count(record)
            if items:
                raise FailedPrecondition(
                    f"{name} is the supplier of {items} inventory item(s): deactivate it "
                    "(UpdateSupplier with active false) or move the items to another supplier first",
                    reason="SUPPLIER_IN_USE",
                    metadata={"items": str(items)},
                )
            if not await txn.delete(SUPPLIER.collection, record.id, expected_etag=record.etag):
                raise changed_concurrently(name)
            return supplier_service_pb2.DeleteSupplierResponse(name=name)

        return await self.store.run(step)

    # Items

    async def create_item(
        self, request: inventory_service_pb2.CreateItemRequest, principal: Principal
    ) -> inventory_service_pb2.CreateItemResponse:
        """Creates an item with its opening stock (idempotent by ``request_id``)."""
        item = ITEM.fresh(request.item, now=self.clock())
        # Output only: the opening stock is all free; nothing is reserved or shipped yet.
        item.reserved_quantity = 0
        item.shipped_quantity = 0
        item.stocked_quantity = item.quantity
        item.low_stock = item.quantity <= item.reorder_level
        raise_if(item_violations(item, "item"))

        async def step(txn: Transaction) -> inventory_service_pb2.CreateItemResponse:
            if item.supplier:
                await _count_supplier_item(txn, item.supplier, +1, field="item.supplier", require_active=True)
            try:
                await txn.insert(ITEM.collection, ITEM.record(item))
            except UniqueViolation as clash:
                raise already_exists(clash, ITEM_SKU_TAKEN) from None
            return inventory_service_pb2.CreateItemResponse(item=item)

        return await idempotent(
            self.store,
            scope=f"CreateItem:{principal.subject}",
            request_id=request.request_id,
            request=request,
            response_type=inventory_service_pb2.CreateItemResponse,
            step=step,
            clock=self.clock,
        )

    async def get_item(self, name: str, principal: Principal) -> inventory_service_pb2.GetItemResponse:
        """Gets an item; NOT_FOUND when there is none."""
        record = await ITEM.get(self.store, name, principal)
        return inventory_service_pb2.GetItemResponse(item=ITEM.load(record))

    async def list_items(
        self, request: inventory_service_pb2.ListItemsRequest
    ) -> inventory_service_pb2.ListItemsResponse:
        """One page of items by SKU, filtered by category and low stock."""
        filters: list[Filter] = []
        if request.category:
            filters.append(Eq("category", request.category))
        if request.low_stock_only:
            filters.append(Eq("low_stock", 1))
        records, token = await list_page(
            self.store,
            ITEM.collection,
            filters,
            page_size=request.page_size,
            page_token=request.page_token,
            query=("ListItems",),
            max_bytes=self.page_bytes,
        )
        return inventory_service_pb2.ListItemsResponse(
            items=[ITEM.load(r) for r in records], next_page_token=token
        )

    async def update_item(
        self, request: inventory_service_pb2.UpdateItemRequest, principal: Principal
    ) -> inventory_service_pb2.UpdateItemResponse:
        """Applies the masked catalogue fields to an item (never its stock)."""
        name = _required_name(request.item.name, "item.name")
        _refuse_stock_paths(request.update_mask)
        now = self.clock()

        async def step(txn: Transaction) -> inventory_service_pb2.UpdateItemResponse:
            record = await ITEM.get(txn, name, principal)
            check_etag(request.item.etag, record, name)
            current = ITEM.load(record)
            merged = ITEM.merge(current, request.item, request.update_mask)
            merged.low_stock = merged.quantity <= merged.reorder_level
            raise_if(item_violations(merged, "item"))
            if merged.supplier != current.supplier:
                if merged.supplier:
                    await _count_supplier_item(
                        txn, merged.supplier, +1, field="item.supplier", require_active=True
                    )
                if current.supplier:
                    await _count_supplier_item(txn, current.supplier, -1, field="item.supplier")
            ITEM.stamp(merged, now=now)
            try:
                await replace_item(txn, merged, record.etag)
            except UniqueViolation as clash:
                raise already_exists(clash, ITEM_SKU_TAKEN) from None
            return inventory_service_pb2.UpdateItemResponse(item=merged)

        return await self.store.run(step)

    async def delete_item(
        self, request: inventory_service_pb2.DeleteItemRequest, principal: Principal
    ) -> inventory_service_pb2.DeleteItemResponse:
        """Deletes an item that holds no reserved units."""
        name = request.name

        async def step(txn: Transaction) -> inventory_service_pb2.DeleteItemResponse:
            record = await ITEM.get(txn, name, principal)
            check_etag(request.etag, record, name)
            item = ITEM.load(record)
            if item.reserved_quantity:
                raise FailedPrecondition(
                    f"{name} has {item.reserved_quantity} unit(s) reserved by shipments that have not "
                    "shipped: ship or cancel them first",
                    reason="STOCK_RESERVED",
                    metadata={"reserved": str(item.reserved_quantity)},
                )
            if not await txn.delete(ITEM.collection, record.id, expected_etag=record.etag):
                raise changed_concurrently(name)
            if item.supplier:
                await _count_supplier_item(txn, item.supplier, -1, field="item.supplier")
            return inventory_service_pb2.DeleteItemResponse(name=name)

        return await self.store.run(step)

    async def adjust_stock(
        self, request: inventory_service_pb2.AdjustStockRequest, principal: Principal
    ) -> inventory_service_pb2.AdjustStockResponse:
        """Adds a signed delta to an item's free units, recording why (idempotent by ``request_id``)."""
        name, delta = request.name, request.delta
        if not request.reason.strip():
            raise InvalidArgument(violations=[FieldViolation("reason", "is required", "REQUIRED")])
        now = self.clock()

        async def step(txn: Transaction) -> inventory_service_pb2.AdjustStockResponse:
            record = await ITEM.get(txn, name, principal)
            check_etag(request.etag, record, name)
            item = ITEM.load(record)
            _check_adjustment(item, delta)
            item.quantity += delta
            item.stocked_quantity += delta
            restamp_item(item, now=now)
            await replace_item(txn, item, record.etag)
            await txn.insert(ADJUSTMENTS, _adjustment(item, delta, request.reason, principal, now))
            return inventory_service_pb2.AdjustStockResponse(item=item)

        return await idempotent(
            self.store,
            scope=f"AdjustStock:{principal.subject}",
            request_id=request.request_id,
            request=request,
            response_type=inventory_service_pb2.AdjustStockResponse,
            step=step,
            clock=self.clock,
        )

    async def analytics(self) -> inventory_service_pb2.GetInventoryAnalyticsResponse:
        """Totals over every item, overall and per category, computed by the store."""
        now = self.clock()
        collection = ITEM.collection
        per_category = await self.store.aggregate(
            collection, [], group_by="category", sums=("quantity", "reserved", "low_stock")
        )
        per_value = await self.store.aggregate(
            collection, [], group_by="currency_category", sums=("value_hi", "value_lo")
        )
        values: dict[str, dict[str, int]] = {}  # category → currency → micros (exact, unbounded)
        for group in per_value:
            currency, _, category = str(group.key).partition("/")
            high, low = (int(s) for s in group.sums)
            by_currency = values.setdefault(category, {})
            by_currency[currency] = by_currency.get(currency, 0) + total_of_parts(high, low)
        response = inventory_service_pb2.GetInventoryAnalyticsResponse(compute_time=to_timestamp(now))
        totals: dict[str, int] = {}
        for group in per_category:
            category = str(group.key)
            units, reserved, low_stock = (int(s) for s in group.sums)
            category_values = values.get(category, {})
            for currency, micros in category_values.items():
                totals[currency] = totals.get(currency, 0) + micros
            response.categories.append(
                inventory_service_pb2.CategoryStats(
                    category=category,
                    item_count=group.count,
                    total_units=units,
                    reserved_units=reserved,
                    stock_values=_money(category_values),
                    low_stock_count=low_stock,
                )
            )
            response.total_items += group.count
            response.total_units += units
            response.reserved_units += reserved
            response.low_stock_count += low_stock
        response.total_stock_values.extend(_money(totals))
        return response


def _money(values: dict[str, int]) -> list[money_pb2.Money]:
    """One Money per currency, sorted by code; a total past int64 is reported as the largest."""
    return [
        money_pb2.Money(currency_code=currency, amount_micros=min(micros, MAX_MONEY_MICROS))
        for currency, micros in sorted(values.items())
    ]


def _required_name(name: str, path: str) -> str:
    if not name:
        raise InvalidArgument(violations=[FieldViolation(path, "is required", "REQUIRED")])
    return name


def _refuse_stock_paths(mask: FieldMask) -> None:
    """``quantity`` is named in an update mask only by mistake: stock moves through AdjustStock."""
    violations = [
        FieldViolation(
            f"update_mask.paths[{index}]",
            "quantity changes only through AdjustStock (and shipments)",
            "USE_ADJUST_STOCK",
        )
        for index, path in enumerate(mask.paths)
        if path == "quantity"
    ]
    raise_if(violations)


def _check_adjustment(item: inventory_item_pb2.InventoryItem, delta: int) -> None:
    """FAILED_PRECONDITION when the delta would take stock below zero or past its bounds."""
    quantity = item.quantity + delta
    name = item.name
    if quantity < 0:
        raise FailedPrecondition(
            f"{name} has {item.quantity} free unit(s) ({item.reserved_quantity} more reserved by "
            f"shipments): removing {-delta} would leave {quantity}",
            reason="INSUFFICIENT_STOCK",
            metadata={"item": name, "quantity": str(item.quantity), "reserved": str(item.reserved_quantity)},
        )
    units = quantity + item.reserved_quantity
    if units > MAX_UNITS:
        raise FailedPrecondition(
            f"{name} would hold {units} units: at most {MAX_UNITS} fit",
            reason="STOCK_LIMIT",
            metadata={"item": name, "quantity": str(item.quantity)},
        )
    if units * item.unit_price.amount_micros > MAX_MONEY_MICROS:
        raise FailedPrecondition(
            f"{name}'s stock of {units} units would be worth more than the largest Money amount",
            reason="VALUE_LIMIT",
            metadata={"item": name},
        )


def _adjustment(
    item: inventory_item_pb2.InventoryItem, delta: int, reason: str, principal: Principal, now: float
) -> Record:
    """The stored record of one AdjustStock: the reason exactly as given, who, when, and the result."""
    entry = {
        "item": item.name,
        "delta": delta,
        "reason": reason,
        "principal": principal.subject,
        "time": now,
        "quantity": item.quantity,
        "stocked_quantity": item.stocked_quantity,
    }
    return Record(
        id=new_id(),
        data=json.dumps(entry, ensure_ascii=False).encode(),
        fields={"item": item.name, "created": int(now * 1_000_000)},
    )


async def _count_supplier_item(
    txn: Transaction, name: str, change: int, *, field: str, require_active: bool = False
) -> None:
    """Adds ``change`` to the items a supplier counts, keeping its etag (its message is unchanged).

    Raises:
        NotFound: There is no such supplier (only when adding an item to it).
        FailedPrecondition: ``require_active`` and the supplier is inactive.

    """
    record = await txn.get(SUPPLIER.collection, SUPPLIER.id_of(name, field=field))
    if record is None:
        if change < 0:
            return  # cannot happen while the counts hold; nothing to release
        raise NotFound(
            f"{field} {name!r} does not exist", reason="SUPPLIER_NOT_FOUND", metadata={"field": field}
        )
    if require_active and not record.fields["active"]:
        raise FailedPrecondition(
            f"{field} {name!r} is inactive: activate it (UpdateSupplier with active true) or choose another",
            reason="SUPPLIER_INACTIVE",
            metadata={"field": field},
        )
    counted = dataclasses.replace(record, fields={**record.fields, "items": _count(record) + change})
    if not await txn.replace(SUPPLIER.collection, counted, expected_etag=record.etag):
        raise changed_concurrently(name)


def _count(supplier: Record) -> int:
    """How many items name a stored supplier."""
    items = supplier.fields["items"]
    assert isinstance(items, int)
    return items
