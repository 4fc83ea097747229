"""Logistics and CRM through the edge with the full chain (issue 10 item 7).

1. ``ListCustomers`` (a page of 50 of 300 customers, sales token) and ``CreateShipment`` (2 line
   items, ops token; each call reserves stock and asks CRM for the customer): throughput, p50 and
   p99, and service-process CPU per request — crm's for the list; logistics' plus crm's for the
   shipment, since the CRM lookup is part of its cost. As in the chain benchmark, the load
   generator runs on one core and the two services on the other (Envoy and the rest float), so
   the client's work does not inflate the services' CPU. Targets: ListCustomers ≤ 1.2 ms CPU per
   request, CreateShipment ≤ 3 ms.
2. What durable audit costs a write: CreateShipment on the mesh's logistics (full chain) and on a
   second logistics process with the same chain minus audit, both called directly, in adjacent
   pairs of phases; the median pair's throughput ratio is reported (goal ≥ 0.7).
"""

from __future__ import annotations

import asyncio
import secrets
import statistics
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from bench.load import Result, client_apart, measure, table
from bhiv.crm.v1 import customer_pb2, customer_service_pb2, customer_service_pb2_grpc
from bhiv.identity.v1 import (
    auth_service_pb2,
    auth_service_pb2_grpc,
    user_pb2,
    user_service_pb2,
    user_service_pb2_grpc,
)
from bhiv.logistics.v1 import (
    address_pb2,
    inventory_item_pb2,
    inventory_service_pb2,
    inventory_service_pb2_grpc,
    money_pb2,
    shipment_pb2,
    shipment_service_pb2,
    shipment_service_pb2_grpc,
    supplier_pb2,
    supplier_service_pb2,
    supplier_service_pb2_grpc,
)
from bhiv_core.mesh import Mesh, free_port

Metadata = tuple[tuple[str, str], ...]


def _bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


async def _login(channel: grpc.aio.Channel, username: str, password: str) -> Metadata:
    reply = await auth_service_pb2_grpc.AuthServiceStub(channel).Login(
        auth_service_pb2.LoginRequest(username=username, password=password)
    )
    return _bearer(reply.tokens.access_token)


async def _user(channel: grpc.aio.Channel, admin: Metadata, role: user_pb2.Role.ValueType) -> Metadata:
    username, password = f"bench-{secrets.token_hex(4)}", secrets.token_urlsafe(16)
    await user_service_pb2_grpc.UserServiceStub(channel).CreateUser(
        user_service_pb2.CreateUserRequest(
            user=user_pb2.User(username=username, role=role), password=password
        ),
        metadata=admin,
    )
    return await _login(channel, username, password)


async def _shipment_setup(
    channel: grpc.aio.Channel, ops: Metadata, sales: Metadata
) -> shipment_service_pb2.CreateShipmentRequest:
    supplier = await supplier_service_pb2_grpc.SupplierServiceStub(channel).CreateSupplier(
        supplier_service_pb2.CreateSupplierRequest(
            supplier=supplier_pb2.Supplier(display_name="Bench supplier", active=True)
        ),
        metadata=ops,
    )
    inventory = inventory_service_pb2_grpc.InventoryServiceStub(channel)
    lines = []
    for n in range(2):
        item = inventory_item_pb2.InventoryItem(
            sku=f"BENCH-{n}-{secrets.token_hex(3)}",
            display_name=f"Bench item {n}",
            quantity=2_000_000_000,
            supplier=supplier.supplier.name,
            unit_price=money_pb2.Money(currency_code="INR", amount_micros=1_000_000),
        )
        created = await inventory.CreateItem(inventory_service_pb2.CreateItemRequest(item=item), metadata=ops)
        lines.append(shipment_pb2.LineItem(item=created.item.name, quantity=1))
    customer = await customer_service_pb2_grpc.CustomerServiceStub(channel).CreateCustomer(
        customer_service_pb2.CreateCustomerRequest(
            customer=customer_pb2.Customer(
                first_name="Bench", email=f"bench-{secrets.token_hex(4)}@example.com"
            )
        ),
        metadata=sales,
    )
    address = address_pb2.Address(recipient="Bench", line1="1 Bench Road", city="Pune", country_code="IN")
    return shipment_service_pb2.CreateShipmentRequest(
        shipment=shipment_pb2.Shipment(
            customer=customer.customer.name, line_items=lines, shipping_address=address
        )
    )


def _report(result: Result, target_ms: float) -> dict[str, float]:
    cpu_ms = result.server_cpu_us_per_call / 1000
    return {
        "rps": round(result.rps, 1),
        "p50_ms": round(result.p50_ms, 2),
        "p99_ms": round(result.p99_ms, 2),
        "cpu_ms_per_request": round(cpu_ms, 3),
        "cpu_target_ms": target_ms,
        "within_target": float(cpu_ms <= target_ms),
    }


async def _audit_ratio(
    mesh: Mesh, ops: Metadata, request: shipment_service_pb2.CreateShipmentRequest, pairs: int, seconds: float
) -> dict[str, float]:
    port, metrics_port = free_port(), free_port()
    env = {
        **mesh.service_env(),
        "BHIV_LOGISTICS_PORT": str(port),
        "BHIV_LOGISTICS_METRICS_PORT": str(metrics_port),
    }
    bare = subprocess.Popen(
        [sys.executable, "-m", "bench.logistics_without_audit"], env=env, stdout=subprocess.PIPE
    )
    try:
        assert bare.stdout is not None
        await asyncio.get_running_loop().run_in_executor(None, bare.stdout.readline)
        ratios: list[float] = []
        async with (
            grpc.aio.insecure_channel(mesh.address("logistics")) as audited_channel,
            grpc.aio.insecure_channel(f"{mesh.host}:{port}") as bare_channel,
        ):
            audited = shipment_service_pb2_grpc.ShipmentServiceStub(audited_channel)
            without = shipment_service_pb2_grpc.ShipmentServiceStub(bare_channel)

            def call(stub: Any) -> Callable[[], Awaitable[object]]:
                return lambda: stub.CreateShipment(request, metadata=ops)  # type: ignore[no-any-return]

            for number in range(pairs):
                order = [(audited, mesh.procs["logistics"].pid), (without, bare.pid)]
                if number % 2:
                    order.reverse()
                results = {}
                for stub, pid in order:
                    results[pid] = await measure(
                        "CreateShipment", call(stub), server_pids=[pid], seconds=seconds
                    )
                ratios.append(results[mesh.procs["logistics"].pid].rps / results[bare.pid].rps)
                print(f"  pair {number + 1}: with audit / without = {ratios[-1]:.3f}")
    finally:
        bare.terminate()
        bare.wait(timeout=10)
    return {
        "pairs": float(pairs),
        "throughput_ratio_median": round(statistics.median(ratios), 3),
        "throughput_ratio_min": round(min(ratios), 3),
        "throughput_ratio_max": round(max(ratios), 3),
        "goal": 0.7,
    }


async def resource_benchmarks(
    mesh: Mesh, admin_credentials: tuple[str, str], seconds: float
) -> dict[str, object]:
    """Runs the logistics and CRM scenarios on a started mesh; prints and returns the figures."""
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        admin = await _login(channel, *admin_credentials)
        sales = await _user(channel, admin, user_pb2.ROLE_SALES)
        ops = await _user(channel, admin, user_pb2.ROLE_OPS)
        customers = customer_service_pb2_grpc.CustomerServiceStub(channel)
        for n in range(300):
            customer = customer_pb2.Customer(
                first_name=f"Bench {n}",
                last_name=f"Customer {n:03d}",
                email=f"bench-{n}-{secrets.token_hex(3)}@example.com",
                company="Bench Co",
                tags=["bench"],
            )
            await customers.CreateCustomer(
                customer_service_pb2.CreateCustomerRequest(customer=customer), metadata=sales
            )
        page = customer_service_pb2.ListCustomersRequest(page_size=50)
        services = [mesh.procs["crm"].pid, mesh.procs["logistics"].pid]
        with client_apart(services):
            listed = await measure(
                "ListCustomers (50), edge",
                lambda: customers.ListCustomers(page, metadata=sales),
                server_pids=[mesh.procs["crm"].pid],
                seconds=seconds,
            )
        request = await _shipment_setup(channel, ops, sales)
        shipments = shipment_service_pb2_grpc.ShipmentServiceStub(channel)
        with client_apart(services):
            shipped = await measure(
                "CreateShipment (2 lines), edge",
                lambda: shipments.CreateShipment(request, metadata=ops),
                server_pids=services,
                seconds=seconds,
            )
        print(table([listed, shipped]))
        report: dict[str, object] = {
            "list_customers": _report(listed, 1.2),
            "create_shipment": _report(shipped, 3.0),
        }
    for name in ("list_customers", "create_shipment"):
        print(f"  {name}: {report[name]}")
    print("  durable audit: CreateShipment with audit / without, direct, adjacent pairs")
    report["create_shipment_audit_ratio"] = await _audit_ratio(mesh, ops, request, pairs=6, seconds=1.5)
    print(f"  {report['create_shipment_audit_ratio']}")
    return report
