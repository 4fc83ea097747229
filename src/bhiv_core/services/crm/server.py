"""Builds and serves the crm service on the shared runtime."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from bhiv_core.events.relay import outbox_relay
from bhiv_core.resources import RECEIPT_TTL_SECONDS, ResourceStore, make_resource_store
from bhiv_core.runtime import server as runtime
from bhiv_core.runtime.config import RuntimeConfig
from bhiv_core.runtime.contracts import services_of_package
from bhiv_core.services.crm.config import CrmConfig
from bhiv_core.services.crm.customers import Customers
from bhiv_core.services.crm.dashboard import Dashboard
from bhiv_core.services.crm.interactions import Interactions
from bhiv_core.services.crm.leads import Leads
from bhiv_core.services.crm.resources import COLLECTIONS, MIGRATIONS
from bhiv_core.services.crm.servicer import (
    MISSING,
    CustomerServicer,
    DashboardServicer,
    InteractionServicer,
    LeadServicer,
    TicketServicer,
)
from bhiv_core.services.crm.tickets import Tickets
from bhiv_core.standard_chain import standard_chain

__all__ = ["NAME", "build_server", "definition", "serve"]

NAME = "crm"
PRUNE_INTERVAL_SECONDS = 3600.0
"""How often idempotency receipts older than a day are deleted (also once at start)."""

log = logging.getLogger(__name__)


def make_crm_store(config: RuntimeConfig) -> ResourceStore:
    """CRM's store: ``<data_dir>/crm.db``, or MongoDB by ``BHIV_CRM_STORE_URL``."""
    return make_resource_store(
        name=NAME,
        collections=COLLECTIONS,
        migrations=MIGRATIONS,
        data_dir=config.data_dir,
        url=CrmConfig.from_runtime(config).store_url,
    )


class _Pruner:
    """Deletes expired idempotency receipts at start and every hour."""

    def __init__(self, store: ResourceStore, clock: Callable[[], float]):
        self._store = store
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    async def prune(self) -> None:
        await self._store.prune_receipts(before=self._clock() - RECEIPT_TTL_SECONDS)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(PRUNE_INTERVAL_SECONDS)
            try:
                await self.prune()
            except Exception:  # the store is down: health reports it; try again next time
                log.warning("pruning idempotency receipts failed", exc_info=True)

    async def start(self) -> None:
        await self.prune()
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def definition(config: RuntimeConfig, *, clock: Callable[[], float] = time.time) -> runtime.ServiceDefinition:
    """Returns what the crm service contributes to the runtime.

    Its store (``<data_dir>/crm.db`` or ``BHIV_CRM_STORE_URL``) opens, migrating its schema,
    before the server accepts calls, drives the ``store`` health check, and closes after it stopped.
    Its outbox relay sends the platform events it publishes to integrations.
    """
    store = make_crm_store(config)
    pruner = _Pruner(store, clock)
    relay = outbox_relay(config, store)
    servicers: dict[str, object] = {
        "CustomerService": CustomerServicer(Customers(store, clock)),
        "LeadService": LeadServicer(Leads(store, clock)),
        "TicketService": TicketServicer(Tickets(store, clock)),
        "InteractionService": InteractionServicer(Interactions(store, clock)),
        "DashboardService": DashboardServicer(Dashboard(store, clock)),
    }
    services = services_of_package("bhiv.crm.v1")
    return runtime.ServiceDefinition(
        name=NAME,
        servicers=[(service, servicers[service.name]) for service in services],
        missing=MISSING,
        checks={"store": store.ping},
        on_start=[store.open, pruner.start, relay.start],
        on_stop=[relay.stop, pruner.stop, store.close],
    )


async def build_server(config: RuntimeConfig) -> runtime.RunningService:
    """Builds and starts the crm server."""
    return await runtime.start_service(config, definition(config), standard_chain)


def serve() -> None:
    """Runs the crm service until SIGTERM."""
    runtime.serve(NAME, definition, chain=standard_chain)
