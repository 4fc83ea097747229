"""Shipments: atomic stock reservation, the status lifecycle, tracking history and ownership.

- **Create** checks the request, asks CRM whether the customer exists (before any transaction:
  nothing inside one may wait on another service), then in ONE transaction reads every line's
  item, refuses the whole shipment if any has fewer free units than asked (FAILED_PRECONDITION
  naming each such item), moves each line's units from ``quantity`` to ``reserved_quantity``
  with a write conditional on the item's etag, and inserts the shipment. SQLite serialises the
  transactions of every process on the file (``BEGIN IMMEDIATE``) and MongoDB's conflicting
  writes make one of two racing transactions run again, so concurrent creates never oversell.
- **Advance** follows :mod:`~bhiv_core.services.logistics.lifecycle`; moving to SHIPPED takes the
  reserved units out of stock (``reserved_quantity`` → ``shipped_quantity``) in the same
  transaction. **Cancel** (PENDING or PROCESSING only) returns them to ``quantity``.
- Every transition appends a tracking event and recomputes the estimated delivery time; one that
  changes the status publishes ``logistics.shipment.status_changed`` in its transaction
  (:func:`~bhiv_core.events.outbox.publish`; another IN_TRANSIT scan changes no status).
- A customer principal may create shipments only for its own customer and sees only those;
  anything else is NOT_FOUND to it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from bhiv.integrations.v1 import event_pb2
from bhiv.logistics.v1 import inventory_item_pb2, shipment_pb2, shipment_service_pb2
from bhiv_core.events.outbox import publish
from bhiv_core.resources import (
    Eq,
    Filter,
    In,
    Record,
    ResourceStore,
    Transaction,
    UniqueViolation,
    check_etag,
    idempotent,
    list_page,
    owner_filters,
    visible,
)
from bhiv_core.resources.kit import request_digest
from bhiv_core.runtime.errors import (
    Aborted,
    BhivError,
    FailedPrecondition,
    FieldViolation,
    Internal,
    NotFound,
)
from bhiv_core.runtime.times import seconds_of, to_timestamp
from bhiv_core.security.principal import Principal
from bhiv_core.services.logistics import lifecycle
from bhiv_core.services.logistics.customers import CustomerDirectory, customer_not_found
from bhiv_core.services.logistics.inventory import changed_concurrently, replace_item, restamp_item
from bhiv_core.services.logistics.resources import ITEM, SHIPMENT
from bhiv_core.services.logistics.rules import address_violations, raise_if

__all__ = ["CLOCK_SKEW_SECONDS", "MAX_EVENTS", "MAX_SHIPMENT_BYTES", "Shipments"]

MAX_EVENTS = 1000
"""The most tracking events a shipment holds (IN_TRANSIT may repeat): then FAILED_PRECONDITION."""

MAX_SHIPMENT_BYTES = 512 * 1024
"""The largest a stored shipment grows with its history, so any one always fits a response."""

CLOCK_SKEW_SECONDS = 60.0
"""How far in the future a client's ``event_time`` may be (its clock may run ahead of ours)."""


def _not_found(name: str) -> NotFound:
    return NotFound(f"{name} not found", reason="NOT_FOUND")


def _event(
    status: shipment_pb2.ShipmentStatus.ValueType, at: float, location: str, description: str
) -> shipment_pb2.TrackingEvent:
    return shipment_pb2.TrackingEvent(
        event_time=to_timestamp(at), status=status, location=location, description=description
    )


def _set_estimate(shipment: shipment_pb2.Shipment, given: float | None, event_time: float) -> None:
    estimate = given if given is not None else lifecycle.estimated_delivery(shipment.status, event_time)
    if estimate is None:
        shipment.ClearField("estimated_delivery_time")
    else:
        shipment.estimated_delivery_time.CopyFrom(to_timestamp(estimate))


class Shipments:
    """The shipment operations of logistics.

    Args:
        store: Logistics' resource store (items and shipments live in it together, so a
            reservation and its shipment commit as one).
        customers: Asks CRM whether a customer exists.
        clock: Unix seconds now.
        page_bytes: The most bytes of stored shipments one list page holds.

    """

    def __init__(
        self,
        store: ResourceStore,
        customers: CustomerDirectory,
        *,
        clock: Callable[[], float] = time.time,
        page_bytes: int = 2 * 1024 * 1024,
    ):
        self.store = store
        self.customers = customers
        self.clock = clock
        self.page_bytes = page_bytes

    async def create(
        self, request: shipment_service_pb2.CreateShipmentRequest, principal: Principal
    ) -> shipment_service_pb2.CreateShipmentResponse:
        """Creates a PENDING shipment and reserves its units, all or nothing."""
        now = self.clock()
        given = request.shipment
        _check_new_shipment(given, now)
        customer = given.customer
        if principal.is_customer and customer != principal.customer:
            # Exactly what naming a customer that does not exist gets: nothing leaks.
            raise customer_not_found(customer)
        scope = f"CreateShipment:{principal.subject}"
        try:
            await self.customers.require(customer)
        except BhivError:
            # A retry of a create that succeeded gets its first result even if CRM is down now
            # or the customer was deleted since.
            earlier = await self._earlier_response(scope, request)
            if earlier is not None:
                return earlier
            raise

        shipment = SHIPMENT.fresh(given, now=now)
        shipment.status = lifecycle.PENDING
        shipment.tracking_number = lifecycle.new_tracking_number()
        del shipment.events[:]
        for line in shipment.line_items:
            line.sku = ""
        units = sum(line.quantity for line in shipment.line_items)
        shipment.events.append(
            _event(
                lifecycle.PENDING,
                now,
                "",
                f"Created: {units} unit(s) of {len(shipment.line_items)} item(s) reserved",
            )
        )
        _set_estimate(
            shipment,
            seconds_of(given.estimated_delivery_time) if given.HasField("estimated_delivery_time") else None,
            now,
        )

        async def step(txn: Transaction) -> shipment_service_pb2.CreateShipmentResponse:
            # Built afresh on every attempt: a MongoDB transaction may run this again.
            created = shipment_pb2.Shipment()
            created.CopyFrom(shipment)
            await _reserve(txn, created, now)
            try:
                await txn.insert(SHIPMENT.collection, SHIPMENT.record(created))
            except UniqueViolation:
                # A tracking-number clash (2^-82 per pair); nothing was written.
                raise Aborted("a tracking number clashed: retry", reason="CONCURRENT_CHANGE") from None
            return shipment_service_pb2.CreateShipmentResponse(shipment=created)

        return await idempotent(
            self.store,
            scope=scope,
            request_id=request.request_id,
            request=request,
            response_type=shipment_service_pb2.CreateShipmentResponse,
            step=step,
            clock=self.clock,
        )

    async def _earlier_response(
        self, scope: str, request: shipment_service_pb2.CreateShipmentRequest
    ) -> shipment_service_pb2.CreateShipmentResponse | None:
        if not request.request_id:
            return None
        receipt = await self.store.run(lambda txn: txn.recall(scope, request.request_id))
        if receipt is None or receipt.request_hash != request_digest(request):
            return None
        return shipment_service_pb2.CreateShipmentResponse.FromString(receipt.response)

    async def get_shipment(self, name: str, principal: Principal) -> shipment_service_pb2.GetShipmentResponse:
        """Gets a shipment the principal may see; NOT_FOUND otherwise."""
        record = await SHIPMENT.get(self.store, name, principal)
        return shipment_service_pb2.GetShipmentResponse(shipment=SHIPMENT.load(record))

    async def list_shipments(
        self, request: shipment_service_pb2.ListShipmentsRequest, principal: Principal
    ) -> shipment_service_pb2.ListShipmentsResponse:
        """One page of the shipments the principal may see, newest first."""
        filters: list[Filter] = []
        if request.customer:
            filters.append(Eq("owner", request.customer))
        if request.status:
            filters.append(Eq("status", int(request.status)))
        records, token = await list_page(
            self.store,
            SHIPMENT.collection,
            [*filters, *owner_filters(principal)],
            page_size=request.page_size,
            page_token=request.page_token,
            query=("ListShipments",),
            max_bytes=self.page_bytes,
        )
        return shipment_service_pb2.ListShipmentsResponse(
            shipments=[SHIPMENT.load(r) for r in records], next_page_token=token
        )

    async def track(
        self, tracking_number: str, principal: Principal
    ) -> shipment_service_pb2.TrackShipmentResponse:
        """The status and history of the shipment with a tracking number."""
        found = await self.store.find(
            SHIPMENT.collection, [Eq("tracking", tracking_number)], after=None, limit=1
        )
        if not found or not visible(found[0], principal):
            raise NotFound(f"no shipment has tracking number {tracking_number}", reason="NOT_FOUND")
        shipment = SHIPMENT.load(found[0])
        response = shipment_service_pb2.TrackShipmentResponse(
            shipment=shipment.name,
            tracking_number=shipment.tracking_number,
            status=shipment.status,
            events=shipment.events,
            carrier=shipment.carrier,
        )
        if shipment.HasField("estimated_delivery_time"):
            response.estimated_delivery_time.CopyFrom(shipment.estimated_delivery_time)
        return response

    async def advance(
        self, request: shipment_service_pb2.AdvanceShipmentRequest, principal: Principal
    ) -> shipment_service_pb2.AdvanceShipmentResponse:
        """Moves a shipment to its next status, appending a tracking event."""
        target = request.status
        if target in (lifecycle.PENDING, lifecycle.CANCELLED):
            hint = "use CancelShipment" if target == lifecycle.CANCELLED else "only a new shipment is PENDING"
            raise_if([FieldViolation("status", f"{lifecycle.status_name(target)}: {hint}", "NOT_AN_ADVANCE")])
        now = self.clock()
        event_time = seconds_of(request.event_time) if request.HasField("event_time") else now
        violations = []
        if event_time > now + CLOCK_SKEW_SECONDS:
            violations.append(FieldViolation("event_time", "is in the future", "IN_FUTURE"))
        estimate: float | None = None
        if request.HasField("estimated_delivery_time"):
            estimate = seconds_of(request.estimated_delivery_time)
            if estimate < event_time:
                violations.append(
                    FieldViolation("estimated_delivery_time", "is before the event", "BEFORE_EVENT")
                )
        raise_if(violations)
        name = request.name

        async def step(txn: Transaction) -> shipment_service_pb2.AdvanceShipmentResponse:
            record = await SHIPMENT.get(txn, name, principal)
            check_etag(request.etag, record, name)
            shipment = SHIPMENT.load(record)
            if target not in lifecycle.ADVANCES.get(shipment.status, ()):
                raise lifecycle.illegal_move(name, shipment.status, target)
            if shipment.events and event_time < seconds_of(shipment.events[-1].event_time):
                raise_if(
                    [FieldViolation("event_time", "is before the shipment's last event", "BEFORE_LAST_EVENT")]
                )
            if target == lifecycle.SHIPPED:
                await _consume(txn, shipment, now)
            previous = shipment.status
            shipment.status = target
            if request.carrier:
                shipment.carrier = request.carrier
            shipment.events.append(_event(target, event_time, request.location, request.description))
            _set_estimate(shipment, estimate, event_time)
            if len(shipment.events) > MAX_EVENTS or shipment.ByteSize() > MAX_SHIPMENT_BYTES:
                raise FailedPrecondition(
                    f"{name}'s tracking history is full ({len(shipment.events) - 1} events)",
                    reason="HISTORY_FULL",
                )
            await _save(txn, shipment, record.etag, now)
            if previous != target:
                await _publish_move(txn, shipment, previous, now)
            return shipment_service_pb2.AdvanceShipmentResponse(shipment=shipment)

        return await idempotent(
            self.store,
            scope=f"AdvanceShipment:{principal.subject}",
            request_id=request.request_id,
            request=request,
            response_type=shipment_service_pb2.AdvanceShipmentResponse,
            step=step,
            clock=self.clock,
        )

    async def cancel(
        self, request: shipment_service_pb2.CancelShipmentRequest, principal: Principal
    ) -> shipment_service_pb2.CancelShipmentResponse:
        """Cancels a shipment that has not shipped and releases its reserved units."""
        name = request.name
        now = self.clock()

        async def step(txn: Transaction) -> shipment_service_pb2.CancelShipmentResponse:
            record = await SHIPMENT.get(txn, name, principal)
            check_etag(request.etag, record, name)
            shipment = SHIPMENT.load(record)
            if shipment.status not in lifecycle.CANCELLABLE:
                raise lifecycle.illegal_move(name, shipment.status, lifecycle.CANCELLED)
            await _release(txn, shipment, now)
            previous = shipment.status
            shipment.status = lifecycle.CANCELLED
            shipment.events.append(_event(lifecycle.CANCELLED, now, "", request.reason))
            _set_estimate(shipment, None, now)
            await _save(txn, shipment, record.etag, now)
            await _publish_move(txn, shipment, previous, now)
            return shipment_service_pb2.CancelShipmentResponse(shipment=shipment)

        return await self.store.run(step)


async def _publish_move(
    txn: Transaction, shipment: shipment_pb2.Shipment, previous: lifecycle.Status, now: float
) -> None:
    """Writes the shipment's ``logistics.shipment.status_changed`` into the outbox of ``txn``."""
    moved = event_pb2.ShipmentStatusChangedEvent(
        shipment=shipment.name,
        tracking_number=shipment.tracking_number,
        previous_status=lifecycle.status_name(previous),
        status=lifecycle.status_name(shipment.status),
        customer=shipment.customer,
    )
    await publish(txn, moved, source="logistics", subject=shipment.name, time=now)


def _check_new_shipment(shipment: shipment_pb2.Shipment, now: float) -> None:
    """INVALID_ARGUMENT for what the annotations cannot say: repeated items, the address, the estimate."""
    violations = []
    seen: set[str] = set()
    for index, line in enumerate(shipment.line_items):
        if line.item in seen:
            violations.append(
                FieldViolation(
                    f"shipment.line_items[{index}].item",
                    f"{line.item} is already in an earlier line: one line per item",
                    "DUPLICATE_ITEM",
                )
            )
        seen.add(line.item)
    violations += address_violations(shipment.shipping_address, "shipment.shipping_address")
    if shipment.HasField("estimated_delivery_time") and seconds_of(shipment.estimated_delivery_time) <= now:
        violations.append(
            FieldViolation("shipment.estimated_delivery_time", "must be in the future", "NOT_IN_FUTURE")
        )
    raise_if(violations)


async def _line_items(txn: Transaction, shipment: shipment_pb2.Shipment) -> dict[str, Record]:
    """The stored items of a shipment's lines by id, read in one query."""
    ids = tuple(
        ITEM.id_of(line.item, field=f"shipment.line_items[{i}].item")
        for i, line in enumerate(shipment.line_items)
    )
    found = await txn.find(ITEM.collection, [In("id", ids)], limit=len(ids))
    return {record.id: record for record in found}


async def _reserve(txn: Transaction, shipment: shipment_pb2.Shipment, now: float) -> None:
    """Moves every line's units from free to reserved, or raises having written nothing."""
    records = await _line_items(txn, shipment)
    loaded = []
    short = []
    for index, line in enumerate(shipment.line_items):
        field = f"shipment.line_items[{index}].item"
        record = records.get(ITEM.id_of(line.item))
        if record is None:
            raise NotFound(
                f"{field} {line.item!r} does not exist",
                reason="ITEM_NOT_FOUND",
                metadata={"field": field, "item": line.item},
            )
        item = ITEM.load(record)
        if item.quantity < line.quantity:
            short.append(f"{line.item} ({field}): {line.quantity} asked, {item.quantity} free")
        loaded.append((line, record, item))
    if short:
        raise FailedPrecondition(
            f"not enough stock, nothing was reserved: {'; '.join(short)}",
            reason="INSUFFICIENT_STOCK",
            metadata={"items": ",".join(s.split(" ", 1)[0] for s in short)},
        )
    for line, record, item in loaded:
        item.quantity -= line.quantity
        item.reserved_quantity += line.quantity
        line.sku = item.sku
        await replace_item(txn, restamp_item(item, now=now), record.etag)


async def _consume(txn: Transaction, shipment: shipment_pb2.Shipment, now: float) -> None:
    """The shipment ships: its reserved units leave stock (reserved → shipped)."""
    for line, record, item in await _reserved_items(txn, shipment):
        item.reserved_quantity -= line.quantity
        item.shipped_quantity += line.quantity
        await replace_item(txn, restamp_item(item, now=now), record.etag)


async def _release(txn: Transaction, shipment: shipment_pb2.Shipment, now: float) -> None:
    """The shipment is cancelled: its reserved units are free again (reserved → quantity)."""
    for line, record, item in await _reserved_items(txn, shipment):
        item.reserved_quantity -= line.quantity
        item.quantity += line.quantity
        await replace_item(txn, restamp_item(item, now=now), record.etag)


async def _reserved_items(
    txn: Transaction, shipment: shipment_pb2.Shipment
) -> list[tuple[shipment_pb2.LineItem, Record, inventory_item_pb2.InventoryItem]]:
    """Each line with the item whose units the shipment holds reserved.

    An item with reserved units cannot be deleted and reservations only move with their
    shipment, so a missing item or too few reserved units means the store broke an invariant.
    """
    records = await _line_items(txn, shipment)
    out = []
    for line in shipment.line_items:
        record = records.get(ITEM.id_of(line.item))
        item = None if record is None else ITEM.load(record)
        if record is None or item is None or item.reserved_quantity < line.quantity:
            raise Internal(f"{shipment.name}: the reservation of {line.item} is missing")
        out.append((line, record, item))
    return out


async def _save(txn: Transaction, shipment: shipment_pb2.Shipment, expected_etag: str, now: float) -> None:
    SHIPMENT.stamp(shipment, now=now)
    if not await txn.replace(SHIPMENT.collection, SHIPMENT.record(shipment), expected_etag=expected_etag):
        raise changed_concurrently(shipment.name)
