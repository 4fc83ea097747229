"""Fixtures for the logistics tests: a real logistics server and a fake CRM, both on loopback.

Logistics runs its real definition (SQLite store in a temporary folder, the CRM lookup through
the generated stubs over ``PeerChannels``) behind the real chain's error mapping, RBAC (from the
contracts) and validation, and the real tracing interceptor; only authentication is a stand-in
(:class:`HeaderAuth`), which takes the principal from test headers and gives it a bearer token
that logistics forwards to CRM. The fake CRM is a real gRPC server implementing
``CustomerService.GetCustomer`` that records the metadata of each lookup.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.rpc import error_details_pb2, status_pb2

from bhiv.crm.v1 import customer_pb2, customer_service_pb2
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
from bhiv_core.interceptors.errors import ErrorMappingInterceptor
from bhiv_core.interceptors.rbac import RbacInterceptor, RolePolicy
from bhiv_core.interceptors.tracing import TracingInterceptor
from bhiv_core.interceptors.validation import ValidationInterceptor
from bhiv_core.mesh import free_port
from bhiv_core.runtime.chain import CallInfo, PreCheckInterceptor, chain_order
from bhiv_core.runtime.errors import NotFound, Unauthenticated
from bhiv_core.runtime.server import Chain, RunningService, start_service
from bhiv_core.security.principal import Principal, current_principal
from bhiv_core.services.logistics import server
from tests.harness import config_for, serving

TIMEOUT = 20.0
"""Seconds any test call may take."""

DETAILS = "grpc-status-details-bin"


class HeaderAuth(PreCheckInterceptor):
    """Test stand-in for auth: the principal comes from ``x-test-role``/``-subject``/``-customer``."""

    async def check(self, call: CallInfo, request: Any, context: Any) -> None:
        role = call.headers.get("x-test-role")
        if not role:
            raise Unauthenticated("authentication required")
        subject = call.headers.get("x-test-subject", f"users/{role}")
        call.principal = Principal(
            subject=subject,
            role=role,
            customer=call.headers.get("x-test-customer", ""),
            token=f"token-of-{subject.replace('/', '-')}",
        )
        current_principal.set(call.principal)


def logistics_chain(*_: Any) -> Chain:
    return Chain(
        chain_order(
            observability=[TracingInterceptor(recording=False)],
            errors=ErrorMappingInterceptor(domain="logistics.bhiv.core"),
            auth=HeaderAuth(),
            rbac=RbacInterceptor(RolePolicy()),
            validation=ValidationInterceptor(),
        )
    )


@dataclass
class FakeCrm:
    """CRM's ``CustomerService.GetCustomer``: knows some customers, records each lookup's metadata."""

    customers: set[str] = field(default_factory=set)
    lookups: list[dict[str, str]] = field(default_factory=list)
    address: str = ""

    async def GetCustomer(
        self, request: customer_service_pb2.GetCustomerRequest, context: Any
    ) -> customer_service_pb2.GetCustomerResponse:
        seen = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        self.lookups.append({"name": request.name, **seen})
        if request.name not in self.customers:
            raise NotFound(f"{request.name} not found")
        return customer_service_pb2.GetCustomerResponse(customer=customer_pb2.Customer(name=request.name))


@pytest.fixture
async def crm() -> AsyncIterator[FakeCrm]:
    fake = FakeCrm(customers={"customers/alice", "customers/bob"})
    descriptor = customer_service_pb2.DESCRIPTOR.services_by_name["CustomerService"]
    async with serving([(descriptor, fake)], config=config_for("crm")) as (running, _):
        fake.address = running.address
        yield fake


def role(
    name: str, *, subject: str = "", customer: str = "", traceparent: str = ""
) -> tuple[tuple[str, str], ...]:
    """The test metadata of a principal with ``name``'s role."""
    metadata = [("x-test-role", name)]
    if subject:
        metadata.append(("x-test-subject", subject))
    if customer:
        metadata.append(("x-test-customer", customer))
    if traceparent:
        metadata.append(("traceparent", traceparent))
    return tuple(metadata)


OPS = role("ops")
ADMIN = role("admin")
SALES = role("sales")
ALICE = role("customer", subject="users/alice", customer="customers/alice")
BOB = role("customer", subject="users/bob", customer="customers/bob")


@dataclass
class Logistics:
    """A running logistics service with stubs of its three services."""

    running: RunningService
    channel: grpc.aio.Channel
    data_dir: Path

    @property
    def items(self) -> Any:
        return inventory_service_pb2_grpc.InventoryServiceStub(self.channel)

    @property
    def suppliers(self) -> Any:
        return supplier_service_pb2_grpc.SupplierServiceStub(self.channel)

    @property
    def shipments(self) -> Any:
        return shipment_service_pb2_grpc.ShipmentServiceStub(self.channel)

    async def supplier(self, display_name: str = "Acme Parts", *, active: bool = True, **fields: Any) -> Any:
        request = supplier_service_pb2.CreateSupplierRequest(
            supplier=supplier_pb2.Supplier(display_name=display_name, active=active, **fields)
        )
        return (await self.suppliers.CreateSupplier(request, metadata=OPS, timeout=TIMEOUT)).supplier

    async def item(
        self,
        sku: str,
        quantity: int = 10,
        *,
        price: int = 2_500_000,
        currency: str = "USD",
        category: str = "",
        reorder_level: int = 0,
        supplier: str = "",
        **fields: Any,
    ) -> Any:
        item = inventory_item_pb2.InventoryItem(
            sku=sku,
            display_name=fields.pop("display_name", f"Item {sku}"),
            quantity=quantity,
            unit_price=money_pb2.Money(currency_code=currency, amount_micros=price),
            category=category,
            reorder_level=reorder_level,
            supplier=supplier,
            **fields,
        )
        request = inventory_service_pb2.CreateItemRequest(item=item)
        return (await self.items.CreateItem(request, metadata=OPS, timeout=TIMEOUT)).item

    async def get_item(self, name: str) -> Any:
        request = inventory_service_pb2.GetItemRequest(name=name)
        return (await self.items.GetItem(request, metadata=OPS, timeout=TIMEOUT)).item

    async def ship(
        self, customer: str, *lines: tuple[str, int], metadata: Any = OPS, request_id: str = "", **fields: Any
    ) -> Any:
        """Creates a shipment of ``lines`` (item, quantity) for ``customer``."""
        request = shipment_service_pb2.CreateShipmentRequest(
            shipment=shipment_pb2.Shipment(
                customer=customer,
                line_items=[shipment_pb2.LineItem(item=i, quantity=q) for i, q in lines],
                shipping_address=fields.pop("shipping_address", ADDRESS),
                **fields,
            ),
            request_id=request_id,
        )
        return (await self.shipments.CreateShipment(request, metadata=metadata, timeout=TIMEOUT)).shipment

    async def advance(self, name: str, status: int, *, metadata: Any = OPS, **fields: Any) -> Any:
        request = shipment_service_pb2.AdvanceShipmentRequest(name=name, status=status, **fields)  # type: ignore[arg-type]
        return (await self.shipments.AdvanceShipment(request, metadata=metadata, timeout=TIMEOUT)).shipment

    async def cancel(self, name: str, reason: str = "", *, metadata: Any = OPS) -> Any:
        request = shipment_service_pb2.CancelShipmentRequest(name=name, reason=reason)
        return (await self.shipments.CancelShipment(request, metadata=metadata, timeout=TIMEOUT)).shipment


ADDRESS = address_pb2.Address(
    recipient="Priya O'Brien", line1="12 MG Road", city="Bengaluru", postal_code="560001", country_code="IN"
)


@contextlib.asynccontextmanager
async def running_logistics(data_dir: Path, crm_address: str, **env: str) -> AsyncIterator[Logistics]:
    config = config_for("logistics", DATA_DIR=str(data_dir), CRM_ADDR=crm_address, **env)
    running = await start_service(config, server.definition(config), logistics_chain)
    channel = grpc.aio.insecure_channel(running.address)
    try:
        yield Logistics(running, channel, data_dir)
    finally:
        await channel.close()
        await running.stop(grace=0.5)


@pytest.fixture
async def logistics(tmp_path: Path, crm: FakeCrm) -> AsyncIterator[Logistics]:
    async with running_logistics(tmp_path, crm.address) as service:
        yield service


@pytest.fixture
def unreachable_address() -> str:
    """A loopback address where nothing listens (a port that was free a moment ago)."""
    return f"127.0.0.1:{free_port()}"


async def failure(call: Any) -> grpc.aio.AioRpcError:
    """Awaits a call that must fail; returns its error."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    """The ``ErrorInfo`` of a failed call."""
    for detail in _status(error).details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info
    raise AssertionError(f"no ErrorInfo in {error}")


def violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """The field violations of an INVALID_ARGUMENT: field path → reason."""
    out: dict[str, str] = {}
    for detail in _status(error).details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            out |= {v.field: v.reason for v in bad.field_violations}
    return out


def _status(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    raw = dict(error.trailing_metadata() or ()).get(DETAILS, b"")
    assert isinstance(raw, bytes), "no status details"
    return status_pb2.Status.FromString(raw)


def mask(*paths: str) -> FieldMask:
    return FieldMask(paths=list(paths))


def balanced(item: Any) -> bool:
    """The stock invariant of one item: free + reserved + shipped = every unit ever stocked."""
    return bool(item.quantity + item.reserved_quantity + item.shipped_quantity == item.stocked_quantity)
