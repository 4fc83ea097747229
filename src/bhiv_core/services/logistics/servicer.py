"""The logistics servicers: proto in, domain call, proto out.

One servicer per service of ``bhiv.logistics.v1``; each passes the request and the caller (for
ownership and idempotency scopes) to :class:`~bhiv_core.services.logistics.inventory.Inventory`
or :class:`~bhiv_core.services.logistics.shipments.Shipments`. The chain has already
authenticated, authorized and validated the request.
"""

from __future__ import annotations

from typing import Any

from bhiv.logistics.v1 import inventory_service_pb2 as inv
from bhiv.logistics.v1 import shipment_service_pb2 as shp
from bhiv.logistics.v1 import supplier_service_pb2 as sup
from bhiv_core.security.principal import require_principal
from bhiv_core.services.logistics.inventory import Inventory
from bhiv_core.services.logistics.shipments import Shipments

__all__ = ["MISSING", "InventoryServicer", "ShipmentServicer", "SupplierServicer"]

MISSING = "every logistics RPC is implemented"


class InventoryServicer:
    """Implements ``bhiv.logistics.v1.InventoryService``."""

    def __init__(self, inventory: Inventory):
        self._inventory = inventory

    async def CreateItem(self, request: inv.CreateItemRequest, context: Any) -> inv.CreateItemResponse:
        """Creates an inventory item."""
        return await self._inventory.create_item(request, require_principal())

    async def GetItem(self, request: inv.GetItemRequest, context: Any) -> inv.GetItemResponse:
        """Gets an inventory item."""
        return await self._inventory.get_item(request.name, require_principal())

    async def ListItems(self, request: inv.ListItemsRequest, context: Any) -> inv.ListItemsResponse:
        """Lists inventory items by SKU."""
        return await self._inventory.list_items(request)

    async def UpdateItem(self, request: inv.UpdateItemRequest, context: Any) -> inv.UpdateItemResponse:
        """Updates an item's catalogue fields."""
        return await self._inventory.update_item(request, require_principal())

    async def DeleteItem(self, request: inv.DeleteItemRequest, context: Any) -> inv.DeleteItemResponse:
        """Deletes an inventory item."""
        return await self._inventory.delete_item(request, require_principal())

    async def AdjustStock(self, request: inv.AdjustStockRequest, context: Any) -> inv.AdjustStockResponse:
        """Adjusts an item's free stock."""
        return await self._inventory.adjust_stock(request, require_principal())

    async def GetInventoryAnalytics(
        self, request: inv.GetInventoryAnalyticsRequest, context: Any
    ) -> inv.GetInventoryAnalyticsResponse:
        """Returns the inventory's totals."""
        return await self._inventory.analytics()


class SupplierServicer:
    """Implements ``bhiv.logistics.v1.SupplierService``."""

    def __init__(self, inventory: Inventory):
        self._inventory = inventory

    async def CreateSupplier(
        self, request: sup.CreateSupplierRequest, context: Any
    ) -> sup.CreateSupplierResponse:
        """Creates a supplier."""
        return await self._inventory.create_supplier(request, require_principal())

    async def GetSupplier(self, request: sup.GetSupplierRequest, context: Any) -> sup.GetSupplierResponse:
        """Gets a supplier."""
        return await self._inventory.get_supplier(request.name, require_principal())

    async def ListSuppliers(
        self, request: sup.ListSuppliersRequest, context: Any
    ) -> sup.ListSuppliersResponse:
        """Lists suppliers by display name."""
        return await self._inventory.list_suppliers(request)

    async def UpdateSupplier(
        self, request: sup.UpdateSupplierRequest, context: Any
    ) -> sup.UpdateSupplierResponse:
        """Updates a supplier."""
        return await self._inventory.update_supplier(request, require_principal())

    async def DeleteSupplier(
        self, request: sup.DeleteSupplierRequest, context: Any
    ) -> sup.DeleteSupplierResponse:
        """Deletes a supplier."""
        return await self._inventory.delete_supplier(request, require_principal())


class ShipmentServicer:
    """Implements ``bhiv.logistics.v1.ShipmentService``."""

    def __init__(self, shipments: Shipments):
        self._shipments = shipments

    async def CreateShipment(
        self, request: shp.CreateShipmentRequest, context: Any
    ) -> shp.CreateShipmentResponse:
        """Creates a shipment, reserving its stock."""
        return await self._shipments.create(request, require_principal())

    async def GetShipment(self, request: shp.GetShipmentRequest, context: Any) -> shp.GetShipmentResponse:
        """Gets a shipment."""
        return await self._shipments.get_shipment(request.name, require_principal())

    async def ListShipments(
        self, request: shp.ListShipmentsRequest, context: Any
    ) -> shp.ListShipmentsResponse:
        """Lists shipments, newest first."""
        return await self._shipments.list_shipments(request, require_principal())

    async def AdvanceShipment(
        self, request: shp.AdvanceShipmentRequest, context: Any
    ) -> shp.AdvanceShipmentResponse:
        """Moves a shipment to its next status."""
        return await self._shipments.advance(request, require_principal())

    async def CancelShipment(
        self, request: shp.CancelShipmentRequest, context: Any
    ) -> shp.CancelShipmentResponse:
        """Cancels a shipment that has not shipped."""
        return await self._shipments.cancel(request, require_principal())

    async def TrackShipment(
        self, request: shp.TrackShipmentRequest, context: Any
    ) -> shp.TrackShipmentResponse:
        """Tracks a shipment by its tracking number."""
        return await self._shipments.track(request.tracking_number, require_principal())
