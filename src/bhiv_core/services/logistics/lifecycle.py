"""The shipment lifecycle of the contract: legal moves, the estimated-delivery rule, tracking numbers.

Pure functions and tables, no store: :mod:`~bhiv_core.services.logistics.shipments` applies them
inside its transactions. The rules are the contract's (``shipment.proto``, ``ShipmentService``):

- ``AdvanceShipment`` moves PENDING → PROCESSING → SHIPPED → IN_TRANSIT → OUT_FOR_DELIVERY →
  DELIVERED one step at a time, IN_TRANSIT → IN_TRANSIT (another scan), and SHIPPED, IN_TRANSIT,
  OUT_FOR_DELIVERY or DELIVERED → RETURNED;
- ``CancelShipment`` moves PENDING or PROCESSING → CANCELLED;
- nothing follows CANCELLED or RETURNED.

Any other move is FAILED_PRECONDITION naming the statuses the shipment may move to.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import TypeAlias

from bhiv.logistics.v1 import shipment_pb2
from bhiv_core.runtime.errors import FailedPrecondition

__all__ = [
    "ADVANCES",
    "CANCELLABLE",
    "ESTIMATE_SECONDS",
    "estimated_delivery",
    "illegal_move",
    "new_tracking_number",
    "status_name",
]

Status: TypeAlias = shipment_pb2.ShipmentStatus.ValueType

PENDING = shipment_pb2.SHIPMENT_STATUS_PENDING
PROCESSING = shipment_pb2.SHIPMENT_STATUS_PROCESSING
SHIPPED = shipment_pb2.SHIPMENT_STATUS_SHIPPED
IN_TRANSIT = shipment_pb2.SHIPMENT_STATUS_IN_TRANSIT
OUT_FOR_DELIVERY = shipment_pb2.SHIPMENT_STATUS_OUT_FOR_DELIVERY
DELIVERED = shipment_pb2.SHIPMENT_STATUS_DELIVERED
CANCELLED = shipment_pb2.SHIPMENT_STATUS_CANCELLED
RETURNED = shipment_pb2.SHIPMENT_STATUS_RETURNED

ADVANCES: Mapping[Status, tuple[Status, ...]] = {
    PENDING: (PROCESSING,),
    PROCESSING: (SHIPPED,),
    SHIPPED: (IN_TRANSIT, RETURNED),
    IN_TRANSIT: (IN_TRANSIT, OUT_FOR_DELIVERY, RETURNED),
    OUT_FOR_DELIVERY: (DELIVERED, RETURNED),
    DELIVERED: (RETURNED,),
    CANCELLED: (),
    RETURNED: (),
}
"""The statuses ``AdvanceShipment`` may move a shipment in each status to."""

CANCELLABLE: frozenset[Status] = frozenset({PENDING, PROCESSING})
"""The statuses ``CancelShipment`` accepts: the shipment's units are still reserved."""

_HOUR = 3600.0
ESTIMATE_SECONDS: Mapping[Status, float] = {
    PENDING: 120 * _HOUR,
    PROCESSING: 96 * _HOUR,
    SHIPPED: 72 * _HOUR,
    IN_TRANSIT: 48 * _HOUR,
    OUT_FOR_DELIVERY: 8 * _HOUR,
    DELIVERED: 0.0,
}
"""How long after entering each status a shipment is expected to be delivered.

A transition sets the estimate to the event's time plus this (delivered: the delivery itself);
cancelled and returned shipments have no estimate. A time the request gives wins.
"""

_TRACKING_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
TRACKING_LENGTH = 16
"""Characters of a tracking number: 36^16 ≈ 2^82 values, drawn by ``secrets``: unguessable."""

_TRACKING_VALUES = 36**TRACKING_LENGTH


def status_name(status: Status) -> str:
    """The enum value's name, ``SHIPMENT_STATUS_PENDING`` (the number for an unknown one)."""
    value = shipment_pb2.ShipmentStatus.DESCRIPTOR.values_by_number.get(int(status))
    return value.name if value is not None else str(int(status))


def estimated_delivery(status: Status, event_time: float) -> float | None:
    """The estimated delivery time (Unix seconds) of a shipment entering ``status`` at ``event_time``."""
    allowance = ESTIMATE_SECONDS.get(status)
    return None if allowance is None else event_time + allowance


def new_tracking_number() -> str:
    """A new tracking number: 16 random uppercase letters and digits.

    The digits of one 128-bit random number in base 36 (one read of the system's randomness
    instead of one per character); the remainder's bias is below 10^-13.
    """
    value = secrets.randbits(128) % _TRACKING_VALUES
    digits = []
    for _ in range(TRACKING_LENGTH):
        value, digit = divmod(value, 36)
        digits.append(_TRACKING_ALPHABET[digit])
    return "".join(digits)


def allowed_moves(status: Status) -> list[str]:
    """Every status a shipment in ``status`` may move to, by either RPC, in lifecycle order."""
    moves = set(ADVANCES.get(status, ()))
    if status in CANCELLABLE:
        moves.add(CANCELLED)
    return [status_name(s) for s in sorted(moves)]


def illegal_move(name: str, current: Status, wanted: Status) -> FailedPrecondition:
    """The FAILED_PRECONDITION of a move the lifecycle forbids, listing the allowed next statuses."""
    allowed = allowed_moves(current)
    if allowed:
        via = " (CANCELLED through CancelShipment)" if current in CANCELLABLE else ""
        next_states = f"it can move to {', '.join(allowed)}{via}"
    else:
        next_states = "that status is final: nothing follows it"
    return FailedPrecondition(
        f"{name} is {status_name(current)} and cannot move to {status_name(wanted)}: {next_states}",
        reason="ILLEGAL_TRANSITION",
        metadata={
            "status": status_name(current),
            "requested": status_name(wanted),
            "allowed": ",".join(allowed),
        },
    )
