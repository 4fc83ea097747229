"""Logistics publishes ``logistics.shipment.status_changed`` with every move of a shipment's status."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from bhiv.integrations.v1 import event_pb2
from bhiv.logistics.v1 import shipment_pb2 as S
from bhiv_core.events.catalog import payload_of
from tests.events.conftest import stored_events
from tests.services.logistics import conftest as served
from tests.services.logistics.conftest import FakeCrm, Logistics, failure, running_logistics

crm = served.crm  # the fake CRM's fixture, for logistics' customer lookups


@pytest.fixture
async def logistics(tmp_path: Path, crm: FakeCrm) -> AsyncIterator[Logistics]:
    async with running_logistics(tmp_path, crm.address, EVENTS_RELAY="off") as service:
        yield service


def moves(logistics: Logistics) -> list[tuple[str, str, str]]:
    """(shipment, previous status, status) of each event in the outbox, in commit order."""
    found = []
    for event in stored_events(logistics.data_dir / "logistics.db"):
        assert (event.type, event.source) == ("logistics.shipment.status_changed", "logistics")
        payload = payload_of(event)
        assert isinstance(payload, event_pb2.ShipmentStatusChangedEvent)
        assert event.subject == payload.shipment
        found.append((payload.shipment, payload.previous_status, payload.status))
    return found


async def test_each_status_change_publishes_one_event_with_the_shipment_s_fields(
    logistics: Logistics,
) -> None:
    chair = await logistics.item("CHAIR", 10)
    shipment = await logistics.ship("customers/alice", (chair.name, 2))
    assert moves(logistics) == []  # created PENDING: no change of status yet
    for status in (S.SHIPMENT_STATUS_PROCESSING, S.SHIPMENT_STATUS_SHIPPED, S.SHIPMENT_STATUS_IN_TRANSIT):
        await logistics.advance(shipment.name, status)
    moved = await logistics.advance(shipment.name, S.SHIPMENT_STATUS_IN_TRANSIT, location="Pune")  # a scan
    err = await failure(logistics.advance(shipment.name, S.SHIPMENT_STATUS_PROCESSING))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION  # refused: nothing published
    name = shipment.name
    assert moves(logistics) == [
        (name, "SHIPMENT_STATUS_PENDING", "SHIPMENT_STATUS_PROCESSING"),
        (name, "SHIPMENT_STATUS_PROCESSING", "SHIPMENT_STATUS_SHIPPED"),
        (name, "SHIPMENT_STATUS_SHIPPED", "SHIPMENT_STATUS_IN_TRANSIT"),
    ]
    last = stored_events(logistics.data_dir / "logistics.db")[-1]
    assert payload_of(last) == event_pb2.ShipmentStatusChangedEvent(
        shipment=name,
        tracking_number=shipment.tracking_number,
        previous_status="SHIPMENT_STATUS_SHIPPED",
        status="SHIPMENT_STATUS_IN_TRANSIT",
        customer="customers/alice",
    )
    assert moved.status == S.SHIPMENT_STATUS_IN_TRANSIT


async def test_cancelling_publishes_the_move_to_cancelled(logistics: Logistics) -> None:
    chair = await logistics.item("CHAIR", 10)
    shipment = await logistics.ship("customers/bob", (chair.name, 1))
    await logistics.cancel(shipment.name, "changed my mind")
    assert moves(logistics) == [(shipment.name, "SHIPMENT_STATUS_PENDING", "SHIPMENT_STATUS_CANCELLED")]
