"""ShipmentService on a real logistics server with a fake CRM: reservation, lifecycle, tracking, ownership."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from bhiv.logistics.v1 import address_pb2, shipment_pb2
from bhiv.logistics.v1 import inventory_service_pb2 as inv
from bhiv.logistics.v1 import shipment_service_pb2 as shp
from tests.services.logistics.conftest import (
    ADDRESS,
    ALICE,
    BOB,
    OPS,
    SALES,
    FakeCrm,
    Logistics,
    balanced,
    error_info,
    failure,
    role,
    running_logistics,
    violations,
)

S = shipment_pb2
HOUR = 3600


async def test_create_reserves_every_line_and_records_the_first_event(logistics: Logistics) -> None:
    chair = await logistics.item("CHAIR", 10)
    lamp = await logistics.item("LAMP", 3)
    before = time.time()
    shipment = await logistics.ship("customers/alice", (chair.name, 4), (lamp.name, 3), carrier="BlueDart")
    assert shipment.name.startswith("shipments/") and shipment.status == S.SHIPMENT_STATUS_PENDING
    assert len(shipment.tracking_number) == 16 and shipment.tracking_number.isalnum()
    assert shipment.tracking_number == shipment.tracking_number.upper()
    assert [(line.sku, line.quantity) for line in shipment.line_items] == [("CHAIR", 4), ("LAMP", 3)]
    assert [e.status for e in shipment.events] == [S.SHIPMENT_STATUS_PENDING]
    assert shipment.events[0].event_time.seconds >= int(before)
    # Estimated from the status: five days after creation.
    assert shipment.estimated_delivery_time.seconds - shipment.events[0].event_time.seconds == 120 * HOUR
    chair, lamp = await logistics.get_item(chair.name), await logistics.get_item(lamp.name)
    assert (chair.quantity, chair.reserved_quantity) == (6, 4)
    assert (lamp.quantity, lamp.reserved_quantity, lamp.low_stock) == (0, 3, True)
    assert balanced(chair) and balanced(lamp)


async def test_the_shipping_address_is_stored_byte_exact_and_never_flagged(logistics: Logistics) -> None:
    item = await logistics.item("X", 5)
    address = address_pb2.Address(
        recipient="Seán O'Brien; DROP BY -- 'ping' <script>",
        line1="1 Ping Road",
        line2="Flat 2, श्री निवास 🏠",
        city="TechStart Inc, Mumbai",
        country_code="IN",
    )
    shipment = await logistics.ship("customers/alice", (item.name, 1), shipping_address=address)
    got = await logistics.shipments.GetShipment(shp.GetShipmentRequest(name=shipment.name), metadata=OPS)
    assert got.shipment.shipping_address == address


async def test_too_few_units_on_any_line_reserves_nothing_and_names_the_item(logistics: Logistics) -> None:
    plenty = await logistics.item("PLENTY", 10)
    scarce = await logistics.item("SCARCE", 2)
    error = await failure(logistics.ship("customers/alice", (plenty.name, 5), (scarce.name, 3)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert scarce.name in (error.details() or "") and "shipment.line_items[1].item" in (error.details() or "")
    assert plenty.name not in (error.details() or "")
    info = error_info(error)
    assert (info.reason, info.metadata["items"]) == ("INSUFFICIENT_STOCK", scarce.name)
    assert await logistics.get_item(plenty.name) == plenty
    assert await logistics.get_item(scarce.name) == scarce
    listed = await logistics.shipments.ListShipments(shp.ListShipmentsRequest(), metadata=OPS)
    assert list(listed.shipments) == []


async def test_a_line_naming_no_item_is_not_found_and_reserves_nothing(logistics: Logistics) -> None:
    item = await logistics.item("REAL", 10)
    error = await failure(logistics.ship("customers/alice", (item.name, 1), ("items/ghost", 1)))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(error).metadata["field"] == "shipment.line_items[1].item"
    assert await logistics.get_item(item.name) == item


@pytest.mark.parametrize(
    ("shipment", "expected"),
    [
        (S.Shipment(), {"shipment.customer", "shipment.line_items", "shipment.shipping_address"}),
        (
            S.Shipment(customer="customers/alice", line_items=[S.LineItem(item="items/a", quantity=0)]),
            {"shipment.line_items[0].quantity", "shipment.shipping_address"},
        ),
        (
            S.Shipment(
                customer="customers/alice",
                line_items=[S.LineItem(item="items/a", quantity=-3)],
                shipping_address=ADDRESS,
            ),
            {"shipment.line_items[0].quantity"},
        ),
        (
            S.Shipment(
                customer="customers/alice",
                line_items=[S.LineItem(item="items/a", quantity=1), S.LineItem(item="items/a", quantity=2)],
                shipping_address=ADDRESS,
            ),
            {"shipment.line_items[1].item"},
        ),
        (
            S.Shipment(
                customer="customers/alice",
                line_items=[S.LineItem(item="items/a", quantity=1)],
                shipping_address=address_pb2.Address(recipient="Only a name"),
            ),
            {
                "shipment.shipping_address.line1",
                "shipment.shipping_address.city",
                "shipment.shipping_address.country_code",
            },
        ),
        (
            S.Shipment(
                customer="people/alice",
                line_items=[S.LineItem(item="items/a", quantity=1)],
                shipping_address=ADDRESS,
            ),
            {"shipment.customer"},
        ),
        (
            S.Shipment(
                customer="customers/alice",
                line_items=[S.LineItem(item="items/a", quantity=1)] * 101,
                shipping_address=ADDRESS,
            ),
            {"shipment.line_items"},
        ),
        (
            S.Shipment(
                customer="customers/alice",
                line_items=[S.LineItem(item="items/a", quantity=1)],
                shipping_address=ADDRESS,
                estimated_delivery_time=Timestamp(seconds=1_000),
            ),
            {"shipment.estimated_delivery_time"},
        ),
        (
            S.Shipment(
                customer="customers/alice",
                line_items=[S.LineItem(item="items/a", quantity=1)],
                shipping_address=ADDRESS,
                carrier="c" * 101,
            ),
            {"shipment.carrier"},
        ),
    ],
)
async def test_bad_shipments_are_invalid_with_field_violations(
    logistics: Logistics, crm: FakeCrm, shipment: S.Shipment, expected: set[str]
) -> None:
    request = shp.CreateShipmentRequest(shipment=shipment)
    error = await failure(logistics.shipments.CreateShipment(request, metadata=OPS))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(error)) == expected
    assert crm.lookups == []  # refused before asking CRM


async def test_a_customer_crm_does_not_know_is_not_found_and_reserves_nothing(
    logistics: Logistics, crm: FakeCrm
) -> None:
    item = await logistics.item("X", 5)
    error = await failure(logistics.ship("customers/nobody", (item.name, 1)))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    info = error_info(error)
    assert (info.reason, info.metadata["field"]) == ("CUSTOMER_NOT_FOUND", "shipment.customer")
    assert "shipment.customer" in (error.details() or "")
    assert [lookup["name"] for lookup in crm.lookups] == ["customers/nobody"]
    assert await logistics.get_item(item.name) == item


async def test_the_crm_lookup_carries_the_callers_token_and_trace(logistics: Logistics, crm: FakeCrm) -> None:
    item = await logistics.item("X", 5)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    metadata = role("ops", subject="users/olga", traceparent=f"00-{trace_id}-00f067aa0ba902b7-01")
    await logistics.ship("customers/alice", (item.name, 1), metadata=metadata)
    (lookup,) = crm.lookups
    assert lookup["authorization"] == "Bearer token-of-users-olga"
    assert lookup["traceparent"].split("-")[1] == trace_id


async def test_crm_unreachable_is_unavailable_and_reserves_nothing(
    tmp_path: Path, unreachable_address: str
) -> None:
    async with running_logistics(tmp_path, unreachable_address) as service:
        item = await service.item("X", 5)
        error = await failure(service.ship("customers/alice", (item.name, 1)))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert error_info(error).reason == "CRM_UNAVAILABLE"
        assert await service.get_item(item.name) == item
        listed = await service.shipments.ListShipments(shp.ListShipmentsRequest(), metadata=OPS)
        assert list(listed.shipments) == []


async def test_a_retried_create_returns_the_first_shipment_and_reserves_once(
    tmp_path: Path, crm: FakeCrm
) -> None:
    async with running_logistics(tmp_path, crm.address) as service:
        item = await service.item("X", 5)
        first = await service.ship("customers/alice", (item.name, 2), request_id="order-7")
        again = await service.ship("customers/alice", (item.name, 2), request_id="order-7")
        assert again == first
        assert (await service.get_item(item.name)).reserved_quantity == 2
        # Even when CRM is gone by the time of the retry.
        crm.customers.clear()
        assert await service.ship("customers/alice", (item.name, 2), request_id="order-7") == first
        error = await failure(service.ship("customers/alice", (item.name, 1), request_id="order-7"))
        assert error.code() == grpc.StatusCode.NOT_FOUND  # a different request: CRM's answer stands
        assert (await service.get_item(item.name)).reserved_quantity == 2


async def test_a_customer_creates_and_sees_only_its_own_shipments(logistics: Logistics, crm: FakeCrm) -> None:
    item = await logistics.item("X", 10)
    own = await logistics.ship("customers/alice", (item.name, 1), metadata=ALICE)
    assert own.customer == "customers/alice"
    assert crm.lookups[-1]["authorization"] == "Bearer token-of-users-alice"
    bobs = await logistics.ship("customers/bob", (item.name, 1), metadata=BOB)
    # Naming another customer is NOT_FOUND, exactly as an unknown one, and CRM is not even asked.
    lookups = len(crm.lookups)
    error = await failure(logistics.ship("customers/bob", (item.name, 1), metadata=ALICE))
    assert error.code() == grpc.StatusCode.NOT_FOUND and error_info(error).reason == "CUSTOMER_NOT_FOUND"
    assert len(crm.lookups) == lookups
    # Another customer's shipment does not exist for alice, by name or by tracking number.
    error = await failure(
        logistics.shipments.GetShipment(shp.GetShipmentRequest(name=bobs.name), metadata=ALICE)
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    error = await failure(
        logistics.shipments.TrackShipment(
            shp.TrackShipmentRequest(tracking_number=bobs.tracking_number), metadata=ALICE
        )
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    tracked = await logistics.shipments.TrackShipment(
        shp.TrackShipmentRequest(tracking_number=own.tracking_number), metadata=ALICE
    )
    assert tracked.shipment == own.name
    listed = await logistics.shipments.ListShipments(shp.ListShipmentsRequest(), metadata=ALICE)
    assert [s.name for s in listed.shipments] == [own.name]
    filtered = await logistics.shipments.ListShipments(
        shp.ListShipmentsRequest(customer="customers/bob"), metadata=ALICE
    )
    assert list(filtered.shipments) == []
    # Customers may create, never advance or cancel.
    error = await failure(logistics.advance(own.name, S.SHIPMENT_STATUS_PROCESSING, metadata=ALICE))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    error = await failure(logistics.cancel(own.name, metadata=ALICE))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_customer_account_without_a_customer_record_creates_nothing(logistics: Logistics) -> None:
    item = await logistics.item("X", 10)
    error = await failure(logistics.ship("customers/alice", (item.name, 1), metadata=role("customer")))
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_sales_may_read_but_not_create_shipments(logistics: Logistics) -> None:
    item = await logistics.item("X", 10)
    error = await failure(logistics.ship("customers/alice", (item.name, 1), metadata=SALES))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    await logistics.shipments.ListShipments(shp.ListShipmentsRequest(), metadata=SALES)


async def test_the_full_lifecycle_moves_stock_and_records_the_history(logistics: Logistics) -> None:
    item = await logistics.item("X", 10)
    shipment = await logistics.ship("customers/alice", (item.name, 4))
    steps = [
        (S.SHIPMENT_STATUS_PROCESSING, "WH1", "picked", 96),
        (S.SHIPMENT_STATUS_SHIPPED, "WH1 dock", "handed to BlueDart", 72),
        (S.SHIPMENT_STATUS_IN_TRANSIT, "Mumbai hub", "scanned", 48),
        (S.SHIPMENT_STATUS_IN_TRANSIT, "Pune hub", "scanned again", 48),
        (S.SHIPMENT_STATUS_OUT_FOR_DELIVERY, "Pune", "on the van", 8),
        (S.SHIPMENT_STATUS_DELIVERED, "Pune", "signed by O'Brien", 0),
    ]
    for status, location, description, hours in steps:
        shipment = await logistics.advance(shipment.name, status, location=location, description=description)
        assert shipment.status == status
        event = shipment.events[-1]
        assert (event.status, event.location, event.description) == (status, location, description)
        assert shipment.estimated_delivery_time.seconds - event.event_time.seconds == hours * HOUR
        stock = await logistics.get_item(item.name)
        assert balanced(stock)
        if status == S.SHIPMENT_STATUS_PROCESSING:
            assert (stock.quantity, stock.reserved_quantity, stock.shipped_quantity) == (6, 4, 0)
        if status == S.SHIPMENT_STATUS_SHIPPED:
            # Shipping consumes the reservation.
            assert (stock.quantity, stock.reserved_quantity, stock.shipped_quantity) == (6, 0, 4)
    tracked = await logistics.shipments.TrackShipment(
        shp.TrackShipmentRequest(tracking_number=shipment.tracking_number), metadata=OPS
    )
    assert [e.status for e in tracked.events] == [S.SHIPMENT_STATUS_PENDING] + [s[0] for s in steps]
    assert [e.location for e in tracked.events][1:] == [s[1] for s in steps]
    assert tracked.status == S.SHIPMENT_STATUS_DELIVERED
    assert tracked.estimated_delivery_time == tracked.events[-1].event_time
    returned = await logistics.advance(shipment.name, S.SHIPMENT_STATUS_RETURNED, description="refused")
    assert not returned.HasField("estimated_delivery_time")
    # Returned units are not restocked automatically.
    assert (await logistics.get_item(item.name)).shipped_quantity == 4


@pytest.mark.parametrize(
    ("path", "wanted", "allowed"),
    [
        ([], S.SHIPMENT_STATUS_SHIPPED, "SHIPMENT_STATUS_PROCESSING,SHIPMENT_STATUS_CANCELLED"),
        ([], S.SHIPMENT_STATUS_DELIVERED, "SHIPMENT_STATUS_PROCESSING,SHIPMENT_STATUS_CANCELLED"),
        (
            [S.SHIPMENT_STATUS_PROCESSING, S.SHIPMENT_STATUS_SHIPPED],
            S.SHIPMENT_STATUS_DELIVERED,
            "SHIPMENT_STATUS_IN_TRANSIT,SHIPMENT_STATUS_RETURNED",
        ),
        (
            [S.SHIPMENT_STATUS_PROCESSING],
            S.SHIPMENT_STATUS_RETURNED,
            "SHIPMENT_STATUS_SHIPPED,SHIPMENT_STATUS_CANCELLED",
        ),
    ],
)
async def test_an_illegal_move_is_failed_precondition_listing_the_allowed_ones(
    logistics: Logistics, path: list[int], wanted: int, allowed: str
) -> None:
    item = await logistics.item("X", 10)
    shipment = await logistics.ship("customers/alice", (item.name, 1))
    for status in path:
        shipment = await logistics.advance(shipment.name, status)
    stock = await logistics.get_item(item.name)
    error = await failure(logistics.advance(shipment.name, wanted))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(error)
    assert (info.reason, info.metadata["allowed"]) == ("ILLEGAL_TRANSITION", allowed)
    for name in allowed.split(","):
        assert name in (error.details() or "")
    unchanged = await logistics.shipments.GetShipment(
        shp.GetShipmentRequest(name=shipment.name), metadata=OPS
    )
    assert unchanged.shipment == shipment
    assert await logistics.get_item(item.name) == stock


async def test_nothing_follows_a_cancelled_shipment(logistics: Logistics) -> None:
    item = await logistics.item("X", 10)
    shipment = await logistics.ship("customers/alice", (item.name, 1))
    await logistics.cancel(shipment.name)
    for wanted in (S.SHIPMENT_STATUS_PROCESSING, S.SHIPMENT_STATUS_RETURNED):
        error = await failure(logistics.advance(shipment.name, wanted))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_info(error).metadata["allowed"] == ""
    error = await failure(logistics.cancel(shipment.name))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize("status", [S.SHIPMENT_STATUS_PENDING, S.SHIPMENT_STATUS_CANCELLED])
async def test_advancing_to_pending_or_cancelled_is_invalid(logistics: Logistics, status: int) -> None:
    item = await logistics.item("X", 10)
    shipment = await logistics.ship("customers/alice", (item.name, 1))
    error = await failure(logistics.advance(shipment.name, status))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(error) == {"status": "NOT_AN_ADVANCE"}


async def test_an_undefined_status_is_invalid(logistics: Logistics) -> None:
    error = await failure(logistics.advance("shipments/x", 42))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "status" in violations(error)


async def test_cancel_releases_the_reservation(logistics: Logistics) -> None:
    item = await logistics.item("X", 10)
    shipment = await logistics.ship("customers/alice", (item.name, 7))
    shipment = await logistics.advance(shipment.name, S.SHIPMENT_STATUS_PROCESSING)
    cancelled = await logistics.cancel(shipment.name, reason="customer changed their mind — DROP BY later")
    assert cancelled.status == S.SHIPMENT_STATUS_CANCELLED
    assert cancelled.events[-1].status == S.SHIPMENT_STATUS_CANCELLED
    assert cancelled.events[-1].description == "customer changed their mind — DROP BY later"
    assert not cancelled.HasField("estimated_delivery_time")
    stock = await logistics.get_item(item.name)
    assert (stock.quantity, stock.reserved_quantity, stock.shipped_quantity, stock.stocked_quantity) == (
        10,
        0,
        0,
        10,
    )


async def test_a_shipped_shipment_cannot_be_cancelled(logistics: Logistics) -> None:
    item = await logistics.item("X", 10)
    shipment = await logistics.ship("customers/alice", (item.name, 2))
    for status in (S.SHIPMENT_STATUS_PROCESSING, S.SHIPMENT_STATUS_SHIPPED):
        shipment = await logistics.advance(shipment.name, status)
    error = await failure(logistics.cancel(shipment.name))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(error).metadata["allowed"] == "SHIPMENT_STATUS_IN_TRANSIT,SHIPMENT_STATUS_RETURNED"
    assert (await logistics.get_item(item.name)).shipped_quantity == 2


async def test_event_times_are_checked_and_given_estimates_kept(logistics: Logistics) -> None:
    item = await logistics.item("X", 10)
    shipment = await logistics.ship("customers/alice", (item.name, 1))
    future = Timestamp(seconds=int(time.time()) + 3600)
    error = await failure(logistics.advance(shipment.name, S.SHIPMENT_STATUS_PROCESSING, event_time=future))
    assert violations(error) == {"event_time": "IN_FUTURE"}
    past = Timestamp(seconds=shipment.events[0].event_time.seconds - 60)
    error = await failure(logistics.advance(shipment.name, S.SHIPMENT_STATUS_PROCESSING, event_time=past))
    assert violations(error) == {"event_time": "BEFORE_LAST_EVENT"}
    when = Timestamp(seconds=shipment.events[0].event_time.seconds + 1)
    estimate = Timestamp(seconds=when.seconds + 10 * 24 * HOUR)
    moved = await logistics.advance(
        shipment.name,
        S.SHIPMENT_STATUS_PROCESSING,
        event_time=when,
        estimated_delivery_time=estimate,
        carrier="DHL",
    )
    assert moved.events[-1].event_time == when
    assert (moved.estimated_delivery_time, moved.carrier) == (estimate, "DHL")
    error = await failure(
        logistics.advance(
            shipment.name, S.SHIPMENT_STATUS_SHIPPED, estimated_delivery_time=Timestamp(seconds=5)
        )
    )
    assert violations(error) == {"estimated_delivery_time": "BEFORE_EVENT"}


async def test_advance_with_a_request_id_appends_one_event(logistics: Logistics) -> None:
    item = await logistics.item("X", 10)
    shipment = await logistics.ship("customers/alice", (item.name, 1))
    shipment = await logistics.advance(shipment.name, S.SHIPMENT_STATUS_PROCESSING)
    shipment = await logistics.advance(shipment.name, S.SHIPMENT_STATUS_SHIPPED)
    first = await logistics.advance(
        shipment.name, S.SHIPMENT_STATUS_IN_TRANSIT, location="Hub", request_id="scan-1"
    )
    again = await logistics.advance(
        shipment.name, S.SHIPMENT_STATUS_IN_TRANSIT, location="Hub", request_id="scan-1"
    )
    assert again == first
    assert len(first.events) == 4


async def test_advance_with_a_stale_etag_is_aborted(logistics: Logistics) -> None:
    item = await logistics.item("X", 10)
    shipment = await logistics.ship("customers/alice", (item.name, 1))
    await logistics.advance(shipment.name, S.SHIPMENT_STATUS_PROCESSING)
    error = await failure(logistics.advance(shipment.name, S.SHIPMENT_STATUS_SHIPPED, etag=shipment.etag))
    assert error.code() == grpc.StatusCode.ABORTED


async def test_unknown_shipments_and_tracking_numbers_are_not_found(logistics: Logistics) -> None:
    for call in (
        logistics.shipments.GetShipment(shp.GetShipmentRequest(name="shipments/nope"), metadata=OPS),
        logistics.shipments.TrackShipment(
            shp.TrackShipmentRequest(tracking_number="ABCDEFGH12345678"), metadata=OPS
        ),
        logistics.advance("shipments/nope", S.SHIPMENT_STATUS_PROCESSING),
        logistics.cancel("shipments/nope"),
    ):
        assert (await failure(call)).code() == grpc.StatusCode.NOT_FOUND
    error = await failure(
        logistics.shipments.TrackShipment(shp.TrackShipmentRequest(tracking_number="abc"), metadata=OPS)
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_list_is_newest_first_filtered_by_customer_and_status(logistics: Logistics) -> None:
    item = await logistics.item("X", 100)
    made = [
        await logistics.ship(customer, (item.name, 1))
        for customer in ("customers/alice", "customers/bob") * 2
    ]
    await logistics.advance(made[0].name, S.SHIPMENT_STATUS_PROCESSING)

    async def names(**kwargs: object) -> list[str]:
        out, token = [], ""
        while True:
            reply = await logistics.shipments.ListShipments(
                shp.ListShipmentsRequest(page_size=1, page_token=token, **kwargs),
                metadata=OPS,  # type: ignore[arg-type]
            )
            out += [s.name for s in reply.shipments]
            token = reply.next_page_token
            if not token:
                return out

    assert await names() == [s.name for s in reversed(made)]
    assert await names(customer="customers/alice") == [made[2].name, made[0].name]
    assert await names(status=S.SHIPMENT_STATUS_PROCESSING) == [made[0].name]
    assert await names(customer="customers/bob", status=S.SHIPMENT_STATUS_PROCESSING) == []


async def test_tracking_numbers_are_unique_and_unguessable(logistics: Logistics) -> None:
    item = await logistics.item("X", 100)
    numbers = {(await logistics.ship("customers/alice", (item.name, 1))).tracking_number for _ in range(20)}
    assert len(numbers) == 20
    assert all(len(n) == 16 and n.isalnum() and n.upper() == n for n in numbers)


async def test_stock_invariant_holds_through_a_mix_of_operations(logistics: Logistics) -> None:
    item = await logistics.item("X", 20)
    one = await logistics.ship("customers/alice", (item.name, 5))
    two = await logistics.ship("customers/bob", (item.name, 6))
    await logistics.items.AdjustStock(
        inv.AdjustStockRequest(name=item.name, delta=4, reason="found"), metadata=OPS
    )
    await logistics.advance(one.name, S.SHIPMENT_STATUS_PROCESSING)
    await logistics.advance(one.name, S.SHIPMENT_STATUS_SHIPPED)
    await logistics.cancel(two.name)
    stock = await logistics.get_item(item.name)
    assert (stock.quantity, stock.reserved_quantity, stock.shipped_quantity, stock.stocked_quantity) == (
        19,
        0,
        5,
        24,
    )
    assert balanced(stock)


async def test_a_full_tracking_history_refuses_more_events_and_stays_readable(logistics: Logistics) -> None:
    item = await logistics.item("X", 10)
    shipment = await logistics.ship("customers/alice", (item.name, 1))
    for status in (S.SHIPMENT_STATUS_PROCESSING, S.SHIPMENT_STATUS_SHIPPED):
        shipment = await logistics.advance(shipment.name, status)
    long_text = "🚚" * 2000  # 8,000 bytes per event: the 512 KiB bound comes long before 1,000 events
    scans = 0
    while scans < 200:
        scans += 1
        try:
            shipment = await logistics.advance(
                shipment.name, S.SHIPMENT_STATUS_IN_TRANSIT, description=long_text
            )
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert error_info(error).reason == "HISTORY_FULL"
            break
    assert 50 < scans < 70, "the history filled too early or never"
    got = await logistics.shipments.GetShipment(shp.GetShipmentRequest(name=shipment.name), metadata=OPS)
    assert got.shipment == shipment and got.shipment.ByteSize() <= 512 * 1024
    # The lifecycle can still finish.
    await logistics.advance(shipment.name, S.SHIPMENT_STATUS_RETURNED)
