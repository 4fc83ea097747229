"""The field rules of logistics that the contract's annotations cannot say.

The chain already refused what the annotations cover (lengths, patterns, ranges, e-mail, enums);
these are the rules that depend on more than one field or on the operation: fields required on
create inside the resource message, an address's required lines, money that needs its currency,
and the bounds of stock and its value. Each returns field violations with the request's paths, so
the caller can collect them all into one INVALID_ARGUMENT.
"""

from __future__ import annotations

from bhiv.logistics.v1 import address_pb2, inventory_item_pb2, money_pb2, supplier_pb2
from bhiv_core.runtime.errors import FieldViolation, InvalidArgument

__all__ = [
    "MAX_MONEY_MICROS",
    "MAX_UNITS",
    "address_violations",
    "item_violations",
    "raise_if",
    "required_text",
    "supplier_violations",
]

MAX_UNITS = 2**31 - 1
"""The most units an item holds in stock (free and reserved): both counts are int32 in the contract."""

MAX_MONEY_MICROS = 2**63 - 1
"""The largest amount a ``Money`` holds (int64 micros)."""


def required_text(value: str, path: str) -> list[FieldViolation]:
    """A REQUIRED violation when ``value`` is empty or only whitespace."""
    return [] if value.strip() else [FieldViolation(path, "is required", "REQUIRED")]


def address_violations(address: address_pb2.Address, path: str) -> list[FieldViolation]:
    """The address's required parts: the first street line, the city and the country code."""
    return [
        *required_text(address.line1, f"{path}.line1"),
        *required_text(address.city, f"{path}.city"),
        *required_text(address.country_code, f"{path}.country_code"),
    ]


def money_violations(money: money_pb2.Money, path: str) -> list[FieldViolation]:
    """A Money needs its currency (the amount may be zero)."""
    return required_text(money.currency_code, f"{path}.currency_code")


def item_violations(item: inventory_item_pb2.InventoryItem, path: str) -> list[FieldViolation]:
    """What a stored item must have: SKU, display name, a unit price in a currency, bounded stock value."""
    violations = [
        *required_text(item.sku, f"{path}.sku"),
        *required_text(item.display_name, f"{path}.display_name"),
    ]
    if not item.HasField("unit_price"):
        violations.append(FieldViolation(f"{path}.unit_price", "is required", "REQUIRED"))
    else:
        violations += money_violations(item.unit_price, f"{path}.unit_price")
    units = item.quantity + item.reserved_quantity
    if units > MAX_UNITS:
        violations.append(
            FieldViolation(f"{path}.quantity", f"at most {MAX_UNITS} units in stock", "TOO_LARGE")
        )
    elif units * item.unit_price.amount_micros > MAX_MONEY_MICROS:
        violations.append(
            FieldViolation(
                f"{path}.unit_price.amount_micros",
                f"the stock's value ({units} units at this price) exceeds the largest Money amount",
                "TOO_LARGE",
            )
        )
    return violations


def supplier_violations(supplier: supplier_pb2.Supplier, path: str) -> list[FieldViolation]:
    """What a stored supplier must have: a display name, and a complete address when it has one."""
    violations = required_text(supplier.display_name, f"{path}.display_name")
    if supplier.HasField("address"):
        violations += address_violations(supplier.address, f"{path}.address")
    return violations


def raise_if(violations: list[FieldViolation]) -> None:
    """Raises INVALID_ARGUMENT with ``violations`` when there are any."""
    if violations:
        raise InvalidArgument(violations=violations)
