"""What logistics stores, declared for the resource kit: items, suppliers, shipments, adjustments.

Each resource is one kit :class:`~bhiv_core.resources.Collection` (the fields the store indexes,
the list order, the unique keys) and one :class:`~bhiv_core.resources.ResourceType` (how those
fields are computed from the message, who owns it, which fields ``update_mask`` may name, as the
contract lists them).

Money is kept as integer micros so the store can sum it: each item carries its stock value,
(``quantity`` + ``reserved_quantity``) times ``unit_price``, in ``value_micros``, and the same value
in the two parts of :func:`~bhiv_core.resources.sum_parts` (``value_hi``, ``value_lo``): a store's
64-bit sum of the whole values could overflow, the sums of the parts cannot, and analytics join
them into the exact total.

The outbox (:mod:`bhiv_core.events.outbox`) holds the ``logistics.shipment.status_changed`` events
written in the transactions of the shipments' moves, until the relay hands them to integrations.
"""

from __future__ import annotations

import dataclasses

from bhiv.logistics.v1 import inventory_item_pb2, shipment_pb2, supplier_pb2
from bhiv_core.events import outbox
from bhiv_core.resources import Collection, Field, Record, ResourceType, sort_key, sum_parts
from bhiv_core.resources.sqlite import schema

__all__ = [
    "ADJUSTMENTS",
    "COLLECTIONS",
    "ITEM",
    "MIGRATIONS",
    "SHIPMENT",
    "SUPPLIER",
    "category_currency",
    "stock_value",
    "supplier_record",
]

ITEMS = Collection(
    "items",
    (
        Field("sku", "text"),
        Field("category", "text"),
        Field("supplier", "text"),
        # 1 when quantity <= reorder_level: an int, so analytics can sum it into a count.
        Field("low_stock", "int"),
        Field("quantity", "int"),
        Field("reserved", "int"),
        Field("value_micros", "int"),
        Field("value_hi", "int"),
        Field("value_lo", "int"),
        # ``USD/electronics``: the currency (always three letters) and the category, to sum the
        # stock value per category and currency in one grouped aggregate.
        Field("currency_category", "text"),
    ),
    order=("sku",),
    unique=(("sku",),),
    indexes=(("category",), ("low_stock",), ("category", "low_stock"), ("supplier",)),
)

SUPPLIERS = Collection(
    "suppliers",
    (
        Field("sort", "text"),
        Field("active", "bool"),
        # How many items name the supplier: kept in the same transaction as the item's write, so
        # a delete can never leave an item naming a supplier that is gone (and, on MongoDB, an
        # item naming it and the supplier's delete write the same document and cannot both win).
        Field("items", "int"),
    ),
    order=("sort",),
    indexes=(("active",),),
)

SHIPMENTS = Collection(
    "shipments",
    (
        Field("created", "int"),  # microseconds since the epoch: newest first
        Field("tracking", "text"),
        Field("status", "int"),
    ),
    order=("created",),
    descending=True,
    unique=(("tracking",),),
    indexes=(("owner",), ("status",), ("owner", "status")),
)

ADJUSTMENTS = Collection(
    "stock_adjustments",
    (Field("item", "text"), Field("created", "int")),
    order=("created",),
    indexes=(("item",),),
)
"""Every AdjustStock: the item, the delta, the reason, who and when (JSON in ``data``)."""

_FIRST = (ITEMS, SUPPLIERS, SHIPMENTS, ADJUSTMENTS)
COLLECTIONS = (*_FIRST, *outbox.COLLECTIONS)
MIGRATIONS = (schema(_FIRST), outbox.outbox_migration())
"""Logistics' SQLite schema versions: a later change appends a script, never edits one."""


def stock_value(item: inventory_item_pb2.InventoryItem) -> int:
    """The value of the units in stock, (quantity + reserved) times the unit price, in micros."""
    return (item.quantity + item.reserved_quantity) * item.unit_price.amount_micros


def category_currency(item: inventory_item_pb2.InventoryItem) -> str:
    """The key grouping an item's stock value by currency and category."""
    return f"{item.unit_price.currency_code}/{item.category}"


def _item_fields(item: inventory_item_pb2.InventoryItem) -> dict[str, str | int | float | bool | list[str]]:
    value = stock_value(item)
    high, low = sum_parts(value)
    return {
        "sku": item.sku,
        "category": item.category,
        "supplier": item.supplier,
        "low_stock": int(item.low_stock),
        "quantity": item.quantity,
        "reserved": item.reserved_quantity,
        "value_micros": value,
        "value_hi": high,
        "value_lo": low,
        "currency_category": category_currency(item),
    }


ITEM = ResourceType(
    message=inventory_item_pb2.InventoryItem,
    collection=ITEMS,
    index=_item_fields,
    mutable=frozenset(
        {
            "sku",
            "display_name",
            "description",
            "category",
            "unit_price",
            "supplier",
            "warehouse_location",
            "reorder_level",
        }
    ),
    label="inventory item",
    request_field="item",
)

SUPPLIER = ResourceType(
    message=supplier_pb2.Supplier,
    collection=SUPPLIERS,
    index=lambda s: {"sort": sort_key(s.display_name), "active": s.active},
    mutable=frozenset({"display_name", "contact_email", "phone", "address", "rating", "active"}),
    label="supplier",
    request_field="supplier",
)

SHIPMENT = ResourceType(
    message=shipment_pb2.Shipment,
    collection=SHIPMENTS,
    index=lambda s: {
        "created": s.create_time.seconds * 1_000_000 + s.create_time.nanos // 1000,
        "tracking": s.tracking_number,
        "status": int(s.status),
    },
    # Shipments change only through AdvanceShipment and CancelShipment: no update mask.
    mutable=frozenset(),
    label="shipment",
    request_field="shipment",
    owner=lambda s: s.customer,
)


def supplier_record(supplier: supplier_pb2.Supplier, items: int) -> Record:
    """The stored form of a supplier that ``items`` inventory items name."""
    record = SUPPLIER.record(supplier)
    return dataclasses.replace(record, fields={**record.fields, "items": items})
