"""Logistics and CRM survive SIGKILL under a mixed write load (issue 10 item 5).

Two workers per service, writes through the edge from many concurrent clients: customers,
shipments that reserve stock, cancellations that release it, stock adjustments. Both services
are SIGKILLed (every worker) while the load runs, then restarted. Afterwards every write whose
response the client received is present, no reservation is half-applied (each item's reserved
units are exactly those of its pending shipments), and the audit chain verifies from end to end.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import pytest

from bhiv.crm.v1 import customer_pb2
from bhiv.crm.v1 import customer_service_pb2 as cs
from bhiv.crm.v1 import customer_service_pb2_grpc as cs_grpc
from bhiv.logistics.v1 import address_pb2, inventory_item_pb2, money_pb2, shipment_pb2, supplier_pb2
from bhiv.logistics.v1 import inventory_service_pb2 as inv
from bhiv.logistics.v1 import inventory_service_pb2_grpc as inv_grpc
from bhiv.logistics.v1 import shipment_service_pb2 as ss
from bhiv.logistics.v1 import shipment_service_pb2_grpc as ss_grpc
from bhiv.logistics.v1 import supplier_service_pb2 as sup
from bhiv.logistics.v1 import supplier_service_pb2_grpc as sup_grpc
from bhiv.sentinel.v1 import audit_service_pb2 as audit
from bhiv.sentinel.v1 import audit_service_pb2_grpc as audit_grpc
from bhiv_core.mesh import Mesh
from tests.e2e.client import Session, admin_session
from tests.e2e.conftest import mesh_env

pytestmark = pytest.mark.e2e

TIMEOUT = 10.0
CLIENTS = 12
INITIAL_STOCK = 10_000


@pytest.fixture(scope="module")
async def two_worker_mesh(tmp_path_factory: pytest.TempPathFactory, collector) -> AsyncIterator[Mesh]:
    env = {**mesh_env(collector[1]), "BHIV_LOGISTICS_WORKERS": "2", "BHIV_CRM_WORKERS": "2"}
    started = Mesh.with_free_ports(tmp_path_factory.mktemp("kill"), env=env)
    async with started:
        yield started


@dataclass
class Acknowledged:
    """Writes whose response the client received."""

    customers: list[str] = field(default_factory=list)
    shipments: dict[str, int] = field(default_factory=dict)  # name -> status acknowledged last
    adjustments: dict[str, int] = field(default_factory=dict)  # item -> acknowledged +1 adjustments
    attempted_adjustments: dict[str, int] = field(default_factory=dict)


async def _setup(channel: grpc.aio.Channel, admin: Session) -> tuple[list[str], str]:
    supplier = await sup_grpc.SupplierServiceStub(channel).CreateSupplier(
        sup.CreateSupplierRequest(
            supplier=supplier_pb2.Supplier(display_name="Kill-test supplier", active=True)
        ),
        metadata=admin.metadata,
        timeout=TIMEOUT,
    )
    items = []
    inventory = inv_grpc.InventoryServiceStub(channel)
    for n in range(3):
        item = inventory_item_pb2.InventoryItem(
            sku=f"KILL-{n}-{secrets.token_hex(3)}",
            display_name=f"Kill-test item {n}",
            quantity=INITIAL_STOCK,
            supplier=supplier.supplier.name,
            unit_price=money_pb2.Money(currency_code="INR", amount_micros=1_000_000),
        )
        created = await inventory.CreateItem(
            inv.CreateItemRequest(item=item), metadata=admin.metadata, timeout=TIMEOUT
        )
        items.append(created.item.name)
    customer = await cs_grpc.CustomerServiceStub(channel).CreateCustomer(
        cs.CreateCustomerRequest(
            customer=customer_pb2.Customer(
                first_name="Kill", email=f"kill-{secrets.token_hex(4)}@example.com"
            )
        ),
        metadata=admin.metadata,
        timeout=TIMEOUT,
    )
    return items, customer.customer.name


async def _load(
    channel: grpc.aio.Channel,
    admin: Session,
    items: list[str],
    customer: str,
    acked: Acknowledged,
    stop: asyncio.Event,
) -> None:
    customers = cs_grpc.CustomerServiceStub(channel)
    shipments = ss_grpc.ShipmentServiceStub(channel)
    inventory = inv_grpc.InventoryServiceStub(channel)
    address = address_pb2.Address(recipient="Kill Test", line1="1 Crash Road", city="Pune", country_code="IN")
    turn = 0
    while not stop.is_set():
        turn += 1
        try:
            if turn % 4 == 0:
                reply = await customers.CreateCustomer(
                    cs.CreateCustomerRequest(
                        customer=customer_pb2.Customer(
                            first_name="Load", email=f"l-{secrets.token_hex(6)}@example.com"
                        )
                    ),
                    metadata=admin.metadata,
                    timeout=TIMEOUT,
                )
                acked.customers.append(reply.customer.name)
            elif turn % 4 == 1:
                item = items[turn % len(items)]
                acked.attempted_adjustments[item] = acked.attempted_adjustments.get(item, 0) + 1
                await inventory.AdjustStock(
                    inv.AdjustStockRequest(name=item, delta=1, reason="kill test restock"),
                    metadata=admin.metadata,
                    timeout=TIMEOUT,
                )
                acked.adjustments[item] = acked.adjustments.get(item, 0) + 1
            else:
                lines = [
                    shipment_pb2.LineItem(item=items[(turn + k) % len(items)], quantity=1 + k)
                    for k in range(2)
                ]
                shipment = shipment_pb2.Shipment(
                    customer=customer, line_items=lines, shipping_address=address
                )
                created = await shipments.CreateShipment(
                    ss.CreateShipmentRequest(shipment=shipment), metadata=admin.metadata, timeout=TIMEOUT
                )
                acked.shipments[created.shipment.name] = created.shipment.status
                if turn % 3 == 0:
                    cancelled = await shipments.CancelShipment(
                        ss.CancelShipmentRequest(name=created.shipment.name, reason="kill test"),
                        metadata=admin.metadata,
                        timeout=TIMEOUT,
                    )
                    acked.shipments[created.shipment.name] = cancelled.shipment.status
        except grpc.aio.AioRpcError as err:
            # The services are being killed: refusals and lost connections are expected, and a
            # lost response proves nothing either way. Bad input never is.
            assert err.code() in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.CANCELLED,
            ), err
            await asyncio.sleep(0.05)


async def _all_shipments(channel: grpc.aio.Channel, admin: Session) -> list[shipment_pb2.Shipment]:
    stub = ss_grpc.ShipmentServiceStub(channel)
    found: list[shipment_pb2.Shipment] = []
    token = ""
    while True:
        page = await stub.ListShipments(
            ss.ListShipmentsRequest(page_size=500, page_token=token), metadata=admin.metadata, timeout=TIMEOUT
        )
        found += page.shipments
        token = page.next_page_token
        if not token:
            return found


async def test_sigkill_under_write_load_loses_no_acknowledged_write_and_half_applies_nothing(
    two_worker_mesh: Mesh,
) -> None:
    mesh = two_worker_mesh
    admin = await admin_session(mesh)
    acked = Acknowledged()
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        items, customer = await _setup(channel, admin)
        stop = asyncio.Event()
        load = [
            asyncio.create_task(_load(channel, admin, items, customer, acked, stop)) for _ in range(CLIENTS)
        ]
        deadline = asyncio.get_running_loop().time() + 60
        while len(acked.shipments) < 60 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        before_kill = len(acked.shipments) + len(acked.customers)
        mesh.kill("logistics")
        mesh.kill("crm")
        await asyncio.sleep(0.3)  # the load keeps knocking while they are down
        stop.set()
        await asyncio.gather(*load)
        await mesh.restart("crm")
        await mesh.restart("logistics")
        assert before_kill >= 60, "the load made too little progress before the kill"

        # Every acknowledged write is there.
        crm = cs_grpc.CustomerServiceStub(channel)
        for name in acked.customers:
            got = await crm.GetCustomer(
                cs.GetCustomerRequest(name=name), metadata=admin.metadata, timeout=TIMEOUT
            )
            assert got.customer.name == name
        stored = {s.name: s for s in await _all_shipments(channel, admin)}
        for name, status in acked.shipments.items():
            assert name in stored, f"{name} was acknowledged and is gone"
            if status == shipment_pb2.SHIPMENT_STATUS_CANCELLED:
                assert stored[name].status == status

        # No reservation is half-applied: an item's reserved units are exactly what its pending
        # (not cancelled) shipments hold, free + reserved + shipped units add up to what was
        # stocked, and the stock moved only by whole adjustments.
        reserved = {item: 0 for item in items}
        for shipment in stored.values():
            if shipment.status != shipment_pb2.SHIPMENT_STATUS_CANCELLED:
                for line in shipment.line_items:
                    reserved[line.item] += line.quantity
        inventory = inv_grpc.InventoryServiceStub(channel)
        for item in items:
            got = (
                await inventory.GetItem(
                    inv.GetItemRequest(name=item), metadata=admin.metadata, timeout=TIMEOUT
                )
            ).item
            assert got.reserved_quantity == reserved[item], item
            assert got.quantity + got.reserved_quantity + got.shipped_quantity == got.stocked_quantity, got
            adjusted = got.stocked_quantity - INITIAL_STOCK
            assert acked.adjustments.get(item, 0) <= adjusted <= acked.attempted_adjustments.get(item, 0), (
                item
            )

        verified = await audit_grpc.AuditServiceStub(channel).VerifyAuditChain(
            audit.VerifyAuditChainRequest(mode=audit.AUDIT_VERIFY_MODE_FULL),
            metadata=admin.metadata,
            timeout=60,
        )
        assert verified.ok, verified.detail
