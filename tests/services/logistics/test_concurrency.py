"""Concurrent writes of logistics in one process and across two servers sharing one store file."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import grpc

from bhiv.logistics.v1 import inventory_service_pb2 as inv
from bhiv.logistics.v1 import shipment_pb2
from tests.services.logistics.conftest import OPS, FakeCrm, Logistics, balanced, error_info, running_logistics

CLIENTS = 32


async def race(services: list[Logistics], item: str, customer: str = "customers/alice") -> Counter[str]:
    """Each of :data:`CLIENTS` clients asks one unit of ``item``; the outcomes by code."""

    async def one(number: int) -> str:
        service = services[number % len(services)]
        try:
            await service.ship(customer, (item, 1))
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error
            assert item in (error.details() or "") and error_info(error).metadata["items"] == item
            return error.code().name
        return "OK"

    return Counter(await asyncio.gather(*(one(n) for n in range(CLIENTS))))


async def test_concurrent_creates_never_oversell(logistics: Logistics) -> None:
    item = await logistics.item("LAST", 7)
    outcomes = await race([logistics], item.name)
    assert outcomes == {"OK": 7, "FAILED_PRECONDITION": CLIENTS - 7}
    stock = await logistics.get_item(item.name)
    assert (stock.quantity, stock.reserved_quantity) == (0, 7) and balanced(stock)


async def test_two_servers_on_one_store_never_oversell(tmp_path: Path, crm: FakeCrm) -> None:
    # Two servers with their own connections to one SQLite file: what two worker processes share.
    async with (
        running_logistics(tmp_path, crm.address) as one,
        running_logistics(tmp_path, crm.address) as two,
    ):
        item = await one.item("LAST", 5)
        outcomes = await race([one, two], item.name)
        assert outcomes == {"OK": 5, "FAILED_PRECONDITION": CLIENTS - 5}
        stock = await two.get_item(item.name)
        assert (stock.quantity, stock.reserved_quantity) == (0, 5) and balanced(stock)


async def test_concurrent_adjustments_and_cancels_keep_the_invariant(logistics: Logistics) -> None:
    item = await logistics.item("BUSY", 50)
    shipments = [await logistics.ship("customers/alice", (item.name, 3)) for _ in range(6)]

    async def adjust(delta: int) -> None:
        request = inv.AdjustStockRequest(name=item.name, delta=delta, reason="cycle count")
        await logistics.items.AdjustStock(request, metadata=OPS)

    async def advance_or_cancel(index: int, shipment: shipment_pb2.Shipment) -> None:
        if index % 2:
            await logistics.cancel(shipment.name)
        else:
            moved = await logistics.advance(shipment.name, shipment_pb2.SHIPMENT_STATUS_PROCESSING)
            await logistics.advance(moved.name, shipment_pb2.SHIPMENT_STATUS_SHIPPED)

    await asyncio.gather(
        *(adjust(d) for d in (5, -2, 7, -1, 3)),
        *(advance_or_cancel(i, s) for i, s in enumerate(shipments)),
    )
    stock = await logistics.get_item(item.name)
    assert balanced(stock)
    assert (stock.quantity, stock.reserved_quantity, stock.shipped_quantity, stock.stocked_quantity) == (
        50 - 18 + 9 + 12,
        0,
        9,
        62,
    )
