"""Builds and serves the logistics service on the shared runtime."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from bhiv.logistics.v1 import inventory_service_pb2, shipment_service_pb2, supplier_service_pb2
from bhiv_core.events.relay import outbox_relay
from bhiv_core.interceptors.tracing import client_interceptors
from bhiv_core.resources import RECEIPT_TTL_SECONDS, ResourceStore, make_resource_store
from bhiv_core.runtime import server as runtime
from bhiv_core.runtime.clients import PeerChannels
from bhiv_core.runtime.config import RuntimeConfig
from bhiv_core.services.logistics.config import LogisticsConfig
from bhiv_core.services.logistics.customers import CrmCustomers, CustomerDirectory
from bhiv_core.services.logistics.inventory import Inventory
from bhiv_core.services.logistics.resources import COLLECTIONS, MIGRATIONS
from bhiv_core.services.logistics.servicer import (
    MISSING,
    InventoryServicer,
    ShipmentServicer,
    SupplierServicer,
)
from bhiv_core.services.logistics.shipments import Shipments
from bhiv_core.standard_chain import standard_chain

__all__ = ["NAME", "PRUNE_INTERVAL_SECONDS", "build_server", "definition", "serve"]

NAME = "logistics"

PRUNE_INTERVAL_SECONDS = 3600.0
"""How often idempotency receipts older than a day are deleted (and once at start)."""

log = logging.getLogger(__name__)


class _ReceiptPruner:
    """Deletes expired idempotency receipts at start and then every hour."""

    def __init__(self, store: ResourceStore):
        self._store = store
        self._task: asyncio.Task[None] | None = None

    async def prune(self) -> None:
        await self._store.prune_receipts(before=time.time() - RECEIPT_TTL_SECONDS)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(PRUNE_INTERVAL_SECONDS)
            try:
                await self.prune()
            except Exception:
                log.exception("pruning idempotency receipts failed; retrying in an hour")

    async def start(self) -> None:
        await self.prune()
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def definition(
    config: RuntimeConfig, *, customers: CustomerDirectory | None = None
) -> runtime.ServiceDefinition:
    """Returns what the logistics service contributes to the runtime.

    Its store is ``<data_dir>/logistics.db`` or ``BHIV_LOGISTICS_STORE_URL``, opened before the
    server accepts calls and closed after it stopped.

    Args:
        config: The runtime configuration.
        customers: Where shipments' customers are looked up; by default CRM's
            ``CustomerService`` through the generated stubs, over a peer channel that forwards
            the caller's token and trace context.

    """
    settings = LogisticsConfig.from_runtime(config)
    store = make_resource_store(
        name=NAME,
        collections=COLLECTIONS,
        migrations=MIGRATIONS,
        data_dir=config.data_dir,
        url=settings.store_url,
    )
    channels = PeerChannels(config.peers, extra_interceptors=client_interceptors)
    if customers is None:
        customers = CrmCustomers(lambda: channels.channel("crm"))
    inventory = Inventory(store, page_bytes=settings.page_bytes)
    shipments = Shipments(store, customers, page_bytes=settings.page_bytes)
    pruner = _ReceiptPruner(store)
    relay = outbox_relay(config, store)  # shipments' status changes, to integrations

    async def start() -> None:
        await store.open()
        await pruner.start()
        await relay.start()

    async def stop() -> None:
        await relay.stop()
        await pruner.stop()
        await channels.close()
        await store.close()

    return runtime.ServiceDefinition(
        name=NAME,
        servicers=[
            (
                inventory_service_pb2.DESCRIPTOR.services_by_name["InventoryService"],
                InventoryServicer(inventory),
            ),
            (
                supplier_service_pb2.DESCRIPTOR.services_by_name["SupplierService"],
                SupplierServicer(inventory),
            ),
            (
                shipment_service_pb2.DESCRIPTOR.services_by_name["ShipmentService"],
                ShipmentServicer(shipments),
            ),
        ],
        missing=MISSING,
        checks={"store": store.ping},
        on_start=[start],
        on_stop=[stop],
    )


async def build_server(config: RuntimeConfig) -> runtime.RunningService:
    """Builds and starts the logistics server."""
    return await runtime.start_service(config, definition(config), standard_chain)


def serve() -> None:
    """Runs the logistics service until SIGTERM."""
    runtime.serve(NAME, definition, chain=standard_chain)
