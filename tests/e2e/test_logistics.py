"""Logistics through the real mesh: the edge, real tokens, CRM asked through the stubs, two workers.

The session mesh runs logistics with two worker processes (``BHIV_LOGISTICS_WORKERS=2`` in
``conftest.mesh_env``), so every test here also checks that a record written by one worker is
read by the other.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.rpc import error_details_pb2, status_pb2

from bhiv.crm.v1 import customer_pb2
from bhiv.crm.v1 import customer_service_pb2 as cs
from bhiv.crm.v1 import customer_service_pb2_grpc as cs_grpc
from bhiv.logistics.v1 import address_pb2, inventory_item_pb2, money_pb2, shipment_pb2, supplier_pb2
from bhiv.logistics.v1 import inventory_service_pb2 as inv
from bhiv.logistics.v1 import inventory_service_pb2_grpc as inv_grpc
from bhiv.logistics.v1 import shipment_service_pb2 as shp
from bhiv.logistics.v1 import shipment_service_pb2_grpc as shp_grpc
from bhiv.logistics.v1 import supplier_service_pb2 as sup
from bhiv.logistics.v1 import supplier_service_pb2_grpc as sup_grpc
from bhiv.sentinel.v1 import audit_service_pb2 as audit
from bhiv.sentinel.v1 import audit_service_pb2_grpc as audit_grpc
from bhiv_core.mesh import Mesh
from tests.e2e.client import CALL_TIMEOUT, Session, create_user

pytestmark = pytest.mark.e2e

ADDRESS = address_pb2.Address(
    recipient="Seán O'Brien",
    line1="1 Ping Road; DROP BY",
    line2="श्री निवास 🏠",
    city="Pune",
    country_code="IN",
)


@pytest.fixture(scope="module")
async def people(mesh: Mesh, admin: Session) -> dict[str, Any]:
    """ops and sales users, two CRM customers, and a customer account bound to the first."""
    ops = await create_user(mesh, admin, "ops")
    sales = await create_user(mesh, admin, "sales")
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        customers = cs_grpc.CustomerServiceStub(channel)
        made = []
        for first, last in (("Priya", "O'Brien"), ("नमस्ते", "🙂")):
            customer = customer_pb2.Customer(
                first_name=first, last_name=last, email=f"l-{secrets.token_hex(4)}@example.org"
            )
            reply = await customers.CreateCustomer(
                cs.CreateCustomerRequest(customer=customer), metadata=sales.metadata, timeout=CALL_TIMEOUT
            )
            made.append(reply.customer.name)
    priya = await create_user(mesh, admin, "customer", customer=made[0])
    return {"ops": ops, "sales": sales, "customers": made, "priya": priya}


def details(error: grpc.aio.AioRpcError) -> tuple[error_details_pb2.ErrorInfo, dict[str, str]]:
    """The ErrorInfo and the field violations (path → reason) of a failed call."""
    raw = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin", b"")
    assert isinstance(raw, bytes)
    info, fields = error_details_pb2.ErrorInfo(), {}
    for detail in status_pb2.Status.FromString(raw).details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            fields |= {v.field: v.reason for v in bad.field_violations}
        else:
            detail.Unpack(info)
    return info, fields


async def make_item(channel: grpc.aio.Channel, session: Session, quantity: int, **fields: Any) -> Any:
    item = inventory_item_pb2.InventoryItem(
        sku=fields.pop("sku", f"SKU-{secrets.token_hex(4)}"),
        display_name=fields.pop("display_name", "Teak chair"),
        quantity=quantity,
        unit_price=money_pb2.Money(currency_code="INR", amount_micros=1_250_000_000),
        **fields,
    )
    reply = await inv_grpc.InventoryServiceStub(channel).CreateItem(
        inv.CreateItemRequest(item=item), metadata=session.metadata, timeout=CALL_TIMEOUT
    )
    return reply.item


def shipment_request(
    customer: str, *lines: tuple[str, int], request_id: str = ""
) -> shp.CreateShipmentRequest:
    return shp.CreateShipmentRequest(
        shipment=shipment_pb2.Shipment(
            customer=customer,
            line_items=[shipment_pb2.LineItem(item=i, quantity=q) for i, q in lines],
            shipping_address=ADDRESS,
        ),
        request_id=request_id,
    )


async def test_inventory_shipments_and_tracking_through_the_edge(
    mesh: Mesh, people: dict[str, Any], collector: Any
) -> None:
    ops: Session = people["ops"]
    customer = people["customers"][0]
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        suppliers = sup_grpc.SupplierServiceStub(channel)
        items = inv_grpc.InventoryServiceStub(channel)
        shipments = shp_grpc.ShipmentServiceStub(channel)
        supplier = (
            await suppliers.CreateSupplier(
                sup.CreateSupplierRequest(
                    supplier=supplier_pb2.Supplier(display_name="TechStart Inc", active=True)
                ),
                metadata=ops.metadata,
                timeout=CALL_TIMEOUT,
            )
        ).supplier
        chair = await make_item(
            channel, ops, 10, supplier=supplier.name, category="furniture", reorder_level=2
        )
        # Read right after the write, through the edge: either worker answers it.
        for _ in range(4):
            got = await items.GetItem(
                inv.GetItemRequest(name=chair.name), metadata=ops.metadata, timeout=CALL_TIMEOUT
            )
            assert got.item == chair

        trace_id = secrets.token_hex(16)
        traced = (*ops.metadata, ("traceparent", f"00-{trace_id}-{secrets.token_hex(8)}-01"))
        created = (
            await shipments.CreateShipment(
                shipment_request(customer, (chair.name, 3)), metadata=traced, timeout=CALL_TIMEOUT
            )
        ).shipment
        assert created.status == shipment_pb2.SHIPMENT_STATUS_PENDING
        assert created.shipping_address == ADDRESS
        stock = (await items.GetItem(inv.GetItemRequest(name=chair.name), metadata=ops.metadata)).item
        assert (stock.quantity, stock.reserved_quantity) == (7, 3)

        for status, location in (
            (shipment_pb2.SHIPMENT_STATUS_PROCESSING, "WH1"),
            (shipment_pb2.SHIPMENT_STATUS_SHIPPED, "WH1 dock"),
            (shipment_pb2.SHIPMENT_STATUS_IN_TRANSIT, "Mumbai hub"),
        ):
            await shipments.AdvanceShipment(
                shp.AdvanceShipmentRequest(name=created.name, status=status, location=location),
                metadata=ops.metadata,
                timeout=CALL_TIMEOUT,
            )
        tracked = await shipments.TrackShipment(
            shp.TrackShipmentRequest(tracking_number=created.tracking_number), metadata=ops.metadata
        )
        assert [e.location for e in tracked.events] == ["", "WH1", "WH1 dock", "Mumbai hub"]
        assert tracked.status == shipment_pb2.SHIPMENT_STATUS_IN_TRANSIT
        stock = (await items.GetItem(inv.GetItemRequest(name=chair.name), metadata=ops.metadata)).item
        assert (stock.quantity, stock.reserved_quantity, stock.shipped_quantity, stock.stocked_quantity) == (
            7,
            0,
            3,
            10,
        )

        # An illegal move names the allowed ones.
        with pytest.raises(grpc.aio.AioRpcError) as illegal:
            await shipments.AdvanceShipment(
                shp.AdvanceShipmentRequest(name=created.name, status=shipment_pb2.SHIPMENT_STATUS_PROCESSING),
                metadata=ops.metadata,
            )
        assert illegal.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        info, _ = details(illegal.value)
        assert info.metadata["allowed"] == (
            "SHIPMENT_STATUS_IN_TRANSIT,SHIPMENT_STATUS_OUT_FOR_DELIVERY,SHIPMENT_STATUS_RETURNED"
        )

        # A customer CRM does not know: NOT_FOUND naming the field, nothing reserved.
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await shipments.CreateShipment(
                shipment_request("customers/nobody", (chair.name, 1)),
                metadata=ops.metadata,
                timeout=CALL_TIMEOUT,
            )
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        info, _ = details(unknown.value)
        assert (info.reason, info.metadata["field"]) == ("CUSTOMER_NOT_FOUND", "shipment.customer")
        assert (await items.GetItem(inv.GetItemRequest(name=chair.name), metadata=ops.metadata)).item == stock

        # Bad input: field violations, nothing stored.
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await items.CreateItem(
                inv.CreateItemRequest(item=inventory_item_pb2.InventoryItem(sku=chair.sku, quantity=-1)),
                metadata=ops.metadata,
            )
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "item.quantity" in details(bad.value)[1]

    # One trace spans logistics (server and client span) and CRM (its server span).
    sink, _ = collector
    wanted = bytes.fromhex(trace_id)
    for service_name in ("bhiv-logistics", "bhiv-crm"):
        found = await sink.wait_for(
            lambda service, span, n=service_name: span.trace_id == wanted and service == n
        )
        assert found, f"no {service_name} span in trace {trace_id}"
    spans = {(service, span.kind) for service, span in sink.spans if span.trace_id == wanted}
    assert {("bhiv-logistics", 2), ("bhiv-logistics", 3), ("bhiv-crm", 2)} <= spans


async def test_a_customer_creates_and_sees_only_its_own_shipments(mesh: Mesh, people: dict[str, Any]) -> None:
    ops, priya = people["ops"], people["priya"]
    mine, other = people["customers"]
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        shipments = shp_grpc.ShipmentServiceStub(channel)
        item = await make_item(channel, ops, 10)
        own = (
            await shipments.CreateShipment(
                shipment_request(mine, (item.name, 1)), metadata=priya.metadata, timeout=CALL_TIMEOUT
            )
        ).shipment
        theirs = (
            await shipments.CreateShipment(
                shipment_request(other, (item.name, 1)), metadata=ops.metadata, timeout=CALL_TIMEOUT
            )
        ).shipment
        with pytest.raises(grpc.aio.AioRpcError) as foreign:
            await shipments.CreateShipment(
                shipment_request(other, (item.name, 1)), metadata=priya.metadata, timeout=CALL_TIMEOUT
            )
        assert foreign.value.code() == grpc.StatusCode.NOT_FOUND
        for call in (
            shipments.GetShipment(shp.GetShipmentRequest(name=theirs.name), metadata=priya.metadata),
            shipments.TrackShipment(
                shp.TrackShipmentRequest(tracking_number=theirs.tracking_number), metadata=priya.metadata
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as hidden:
                await call
            assert hidden.value.code() == grpc.StatusCode.NOT_FOUND
        listed = await shipments.ListShipments(shp.ListShipmentsRequest(), metadata=priya.metadata)
        assert own.name in [s.name for s in listed.shipments]
        assert {s.customer for s in listed.shipments} == {mine}
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await shipments.CancelShipment(shp.CancelShipmentRequest(name=own.name), metadata=priya.metadata)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        stock = (
            await inv_grpc.InventoryServiceStub(channel).GetItem(
                inv.GetItemRequest(name=item.name), metadata=ops.metadata
            )
        ).item
        assert (stock.quantity, stock.reserved_quantity) == (8, 2)


CLIENTS = 32


def served(mesh: Mesh, method: str) -> dict[str, int]:
    """How many calls of ``method`` each logistics worker logged (its request log)."""
    return {
        path.name: sum(method in line for line in path.read_text().splitlines())
        for path in sorted(mesh.log_dir.glob("logistics-*.log"))
    }


async def test_32_clients_on_2_workers_racing_for_the_last_units_never_oversell(
    mesh: Mesh, people: dict[str, Any]
) -> None:
    ops: Session = people["ops"]
    customer = people["customers"][1]
    last = 5
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        item = await make_item(channel, ops, 40)
        # Sell all but the last units first.
        await shp_grpc.ShipmentServiceStub(channel).CreateShipment(
            shipment_request(customer, (item.name, 40 - last)), metadata=ops.metadata, timeout=CALL_TIMEOUT
        )
    # Each client gets its own connection (grpc shares one between channels to the same address
    # otherwise), straight to logistics' port, which both workers share: the kernel spreads the
    # connections over them (SO_REUSEPORT). Both workers first serve a read, so both race warm.
    options = [("grpc.use_local_subchannel_pool", 1)]
    for _ in range(64):
        if len(served(mesh, "InventoryService/GetItem")) == 2 and all(
            served(mesh, "InventoryService/GetItem").values()
        ):
            break
        async with grpc.aio.insecure_channel(mesh.address("logistics"), options=options) as own:
            await inv_grpc.InventoryServiceStub(own).GetItem(
                inv.GetItemRequest(name=item.name), metadata=ops.metadata, timeout=CALL_TIMEOUT
            )
    method = "ShipmentService/CreateShipment"
    before = served(mesh, method)

    async def client(number: int) -> str:
        async with grpc.aio.insecure_channel(mesh.address("logistics"), options=options) as own:
            try:
                await shp_grpc.ShipmentServiceStub(own).CreateShipment(
                    shipment_request(customer, (item.name, 1), request_id=f"race-{number}"),
                    metadata=ops.metadata,
                    timeout=CALL_TIMEOUT,
                )
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error
                assert item.name in (error.details() or "")
                assert details(error)[0].metadata["items"] == item.name
                return "FAILED_PRECONDITION"
        return "OK"

    outcomes = Counter(await asyncio.gather(*(client(n) for n in range(CLIENTS))))
    assert outcomes == {"OK": last, "FAILED_PRECONDITION": CLIENTS - last}
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        stock = (
            await inv_grpc.InventoryServiceStub(channel).GetItem(
                inv.GetItemRequest(name=item.name), metadata=ops.metadata
            )
        ).item
        assert (stock.quantity, stock.reserved_quantity, stock.stocked_quantity) == (0, 40, 40)
        listed = await shp_grpc.ShipmentServiceStub(channel).ListShipments(
            shp.ListShipmentsRequest(customer=customer, page_size=500), metadata=ops.metadata
        )
        mine = [s for s in listed.shipments if s.line_items[0].item == item.name]
        assert sorted(s.line_items[0].quantity for s in mine) == [1] * last + [40 - last]
    # Both workers took part in the race.
    after = served(mesh, method)
    assert len(after) == 2, after
    assert all(after[name] > before.get(name, 0) for name in after), (before, after)


ROOT = Path(__file__).resolve().parents[2]


def readme_block(marker: str) -> str:
    """The bash block that follows ``<!-- marker -->`` in the README."""
    after = (ROOT / "README.md").read_text().split(f"<!-- {marker} -->\n", 1)[1]
    assert after.startswith("```bash\n")
    return after.removeprefix("```bash\n").split("\n```", 1)[0]


def test_the_readmes_logistics_example_works_through_the_edge(mesh: Mesh, admin: Session) -> None:
    script = readme_block("logistics-example").replace("localhost:8080", mesh.edge_address)
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=ROOT,
        env={**os.environ, "TOKEN": admin.access_token},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    out, err = done.stdout, done.stderr
    # The tracking history, the chairs' counters, the analytics, Priya's own shipment.
    for expected in (
        '"tracking_number"',
        '"location": "Bengaluru WH1"',
        '"carrier": "BlueDart"',
        '"quantity": 18',
        '"shipped_quantity": "2"',
        '"stocked_quantity": "20"',
        '"total_items"',
        '"customer": "customers/',
    ):
        assert expected in out, expected
    assert out.count('"status": "SHIPMENT_STATUS_SHIPPED"') >= 2  # the advance and the history
    # The two refusals: the illegal move and another customer.
    assert "FailedPrecondition" in err and "SHIPMENT_STATUS_IN_TRANSIT" in err
    assert "NotFound" in err and "shipment.customer" in err


def _item(**fields: Any) -> inventory_item_pb2.InventoryItem:
    base: dict[str, Any] = {
        "sku": "BAD-INPUT-1",
        "display_name": "Bad input",
        "quantity": 1,
        "unit_price": money_pb2.Money(currency_code="USD", amount_micros=1),
    }
    return inventory_item_pb2.InventoryItem(**(base | fields))


def _shipment(customer: str, item: str, **fields: Any) -> shipment_pb2.Shipment:
    base: dict[str, Any] = {
        "customer": customer,
        "line_items": [shipment_pb2.LineItem(item=item, quantity=1)],
        "shipping_address": ADDRESS,
    }
    return shipment_pb2.Shipment(**(base | fields))


async def test_bad_input_through_the_edge_changes_nothing_and_is_audited(
    mesh: Mesh, admin: Session, people: dict[str, Any]
) -> None:
    ops = await create_user(mesh, admin, "ops")  # its own user: its audit records are this test's
    customer = people["customers"][0]
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        items = inv_grpc.InventoryServiceStub(channel)
        shipments = shp_grpc.ShipmentServiceStub(channel)
        suppliers = sup_grpc.SupplierServiceStub(channel)
        item = await make_item(channel, ops, 5)
        supplier = (
            await suppliers.CreateSupplier(
                sup.CreateSupplierRequest(supplier=supplier_pb2.Supplier(display_name="Kept")),
                metadata=ops.metadata,
            )
        ).supplier
        before = await shipments.ListShipments(shp.ListShipmentsRequest(page_size=500), metadata=ops.metadata)
        INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
        cases: list[tuple[Any, Any, grpc.StatusCode, str]] = [
            (items.CreateItem, inv.CreateItemRequest(item=_item(quantity=-5)), INVALID, "item.quantity"),
            (items.CreateItem, inv.CreateItemRequest(item=_item(sku="S" * 65)), INVALID, "item.sku"),
            (
                items.CreateItem,
                inv.CreateItemRequest(item=_item(display_name="n" * 201)),
                INVALID,
                "item.display_name",
            ),
            (
                items.CreateItem,
                inv.CreateItemRequest(
                    item=_item(unit_price=money_pb2.Money(currency_code="USD", amount_micros=-1))
                ),
                INVALID,
                "item.unit_price.amount_micros",
            ),
            (
                items.CreateItem,
                inv.CreateItemRequest(item=_item(supplier="suppliers/a/b")),
                INVALID,
                "item.supplier",
            ),
            (
                items.AdjustStock,
                inv.AdjustStockRequest(name=item.name, delta=2_000_000_000, reason="x"),
                INVALID,
                "delta",
            ),
            (
                items.AdjustStock,
                inv.AdjustStockRequest(name=item.name, delta=-6, reason="x"),
                grpc.StatusCode.FAILED_PRECONDITION,
                "",
            ),
            (
                items.AdjustStock,
                inv.AdjustStockRequest(name="items/../x", delta=1, reason="x"),
                INVALID,
                "name",
            ),
            (
                items.AdjustStock,
                inv.AdjustStockRequest(name="items/nope", delta=1, reason="x"),
                NOT_FOUND,
                "",
            ),
            (items.ListItems, inv.ListItemsRequest(page_size=-1), INVALID, "page_size"),
            (items.ListItems, inv.ListItemsRequest(page_token="not-a-token"), INVALID, "page_token"),
            (
                items.UpdateItem,
                inv.UpdateItemRequest(
                    item=_item(name=item.name), update_mask=FieldMask(paths=["reserved_quantity"])
                ),
                INVALID,
                "update_mask.paths[0]",
            ),
            (
                suppliers.UpdateSupplier,
                sup.UpdateSupplierRequest(
                    supplier=supplier_pb2.Supplier(name=supplier.name, rating=6),
                    update_mask=FieldMask(paths=["rating"]),
                ),
                INVALID,
                "supplier.rating",
            ),
            (
                suppliers.CreateSupplier,
                sup.CreateSupplierRequest(
                    supplier=supplier_pb2.Supplier(display_name="X", contact_email="not-an-email")
                ),
                INVALID,
                "supplier.contact_email",
            ),
            (
                shipments.CreateShipment,
                shp.CreateShipmentRequest(
                    shipment=_shipment(
                        customer, item.name, line_items=[shipment_pb2.LineItem(item=item.name, quantity=-1)]
                    )
                ),
                INVALID,
                "shipment.line_items[0].quantity",
            ),
            (
                shipments.CreateShipment,
                shp.CreateShipmentRequest(
                    shipment=_shipment(
                        customer,
                        item.name,
                        line_items=[shipment_pb2.LineItem(item=item.name, quantity=1)] * 101,
                    )
                ),
                INVALID,
                "shipment.line_items",
            ),
            (
                shipments.CreateShipment,
                shp.CreateShipmentRequest(shipment=_shipment("customers/", item.name)),
                INVALID,
                "shipment.customer",
            ),
            (
                shipments.CreateShipment,
                shp.CreateShipmentRequest(shipment=_shipment(customer, "items/ghost")),
                NOT_FOUND,
                "",
            ),
            (
                shipments.CreateShipment,
                shp.CreateShipmentRequest(shipment=_shipment(customer, item.name), request_id="r" * 65),
                INVALID,
                "request_id",
            ),
            (shipments.ListShipments, shp.ListShipmentsRequest(status=99), INVALID, "status"),  # type: ignore[arg-type]
            (
                shipments.AdvanceShipment,
                shp.AdvanceShipmentRequest(name="shipments/x", status=99),
                INVALID,
                "status",
            ),  # type: ignore[arg-type]
            (
                shipments.TrackShipment,
                shp.TrackShipmentRequest(tracking_number="lower-case"),
                INVALID,
                "tracking_number",
            ),
            (shipments.GetShipment, shp.GetShipmentRequest(name="shipments/nope"), NOT_FOUND, ""),
        ]
        for method, request, code, field in cases:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await method(request, metadata=ops.metadata, timeout=CALL_TIMEOUT)
            assert refused.value.code() == code, (request, refused.value)
            if field:
                assert field in details(refused.value)[1], (request, details(refused.value)[1])
        # Nothing changed: the item, the supplier, the shipments.
        assert (await items.GetItem(inv.GetItemRequest(name=item.name), metadata=ops.metadata)).item == item
        kept = await suppliers.GetSupplier(sup.GetSupplierRequest(name=supplier.name), metadata=ops.metadata)
        assert kept.supplier == supplier
        after = await shipments.ListShipments(shp.ListShipmentsRequest(page_size=500), metadata=ops.metadata)
        assert list(after.shipments) == list(before.shipments)
        listed = await items.ListItems(inv.ListItemsRequest(page_size=500), metadata=ops.metadata)
        assert "BAD-INPUT-1" not in [i.sku for i in listed.items]

        # Every refusal is audited with its code, and the chain still verifies.
        audits = audit_grpc.AuditServiceStub(channel)

        async def refused_codes() -> Counter[str]:
            reply = await audits.ListAuditRecords(
                audit.ListAuditRecordsRequest(principal=ops.user.name, page_size=1000),
                metadata=admin.metadata,
            )
            return Counter(
                r.outcome_code
                for r in reply.audit_records
                if r.method.startswith("/bhiv.logistics.v1.") and r.outcome_code != "OK"
            )

        wanted = Counter(code.name for _, _, code, _ in cases)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while (await refused_codes()) != wanted:
            assert loop.time() < deadline, (await refused_codes(), wanted)
            await asyncio.sleep(0.1)
        verified = await audits.VerifyAuditChain(audit.VerifyAuditChainRequest(), metadata=admin.metadata)
        assert verified.ok
