"""What the CRM resources check and answer alike: required fields, lost races, illegal transitions."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from bhiv_core.runtime.errors import Aborted, FailedPrecondition, FieldViolation, InvalidArgument

__all__ = ["changed", "illegal_transition", "refuse", "require_text"]


def require_text(out: list[FieldViolation], path: str, value: str) -> None:
    """Adds a REQUIRED violation when ``value`` is empty or only white space."""
    if not value.strip():
        out.append(FieldViolation(path, "is required", "REQUIRED"))


def refuse(violations: Sequence[FieldViolation]) -> None:
    """Raises INVALID_ARGUMENT with ``violations`` when there are any."""
    if violations:
        raise InvalidArgument(violations=violations)


def changed(name: str) -> Aborted:
    """The error of a conditional write that lost a race: the record changed since it was read."""
    return Aborted(f"{name} changed while this call ran: re-read it and retry", reason="CONCURRENT_CHANGE")


def illegal_transition(
    label: str, enum_name: Callable[[Any], str], current: int, wanted: int, allowed: Iterable[int], hint: str
) -> FailedPrecondition:
    """FAILED_PRECONDITION for a status change the lifecycle forbids, naming the allowed next states.

    Args:
        label: The resource (``lead``).
        enum_name: The status enum's ``Name``.
        current: The stored status.
        wanted: The status asked for.
        allowed: The statuses this call may set from ``current``.
        hint: What to do instead (``use ConvertLead to win a lead``).

    """
    names = [enum_name(value) for value in allowed]
    return FailedPrecondition(
        f"a {label} in {enum_name(current)} cannot move to {enum_name(wanted)} here; "
        f"allowed next states: {', '.join(names) or 'none'} ({hint})",
        reason="ILLEGAL_TRANSITION",
        metadata={"current": enum_name(current), "allowed": ",".join(names)},
    )
