"""Checks requests against the validation rules declared in the contracts.

Rules are ``(bhiv.options.v1.rules)`` field options (see ``protos/bhiv/options/v1``), and every
``google.protobuf.Timestamp`` and ``Duration`` field, wherever it occurs, must hold a value its type
defines (in range, nanos in range and, for a duration, of the sign of its seconds) without an
annotation. For each request type a plan — the fields that carry rules, and the message fields to
recurse into — is built once from the descriptors and cached; a type with neither gets no check.
A bad request is refused with INVALID_ARGUMENT listing the violated fields as ``BadRequest`` field
violations, before the handler runs.

Validation costs at most linear time in the request's size, whatever the request: a field past a
limit is not looked at further (a repeated field with more than ``max_items`` is refused by its
length alone, its items unvisited; a string longer than ``max_len`` is not matched against its
pattern), and the first :data:`~bhiv_core.runtime.errors.MAX_VIOLATIONS` violations are kept while
the rest are only counted.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message

from bhiv.options.v1 import annotations_pb2
from bhiv_core.runtime.chain import CallInfo, Check, Context, PreCheckInterceptor
from bhiv_core.runtime.errors import MAX_VIOLATIONS, FieldViolation, InvalidArgument

__all__ = ["ValidationInterceptor", "validate"]

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s.]+")
_NUMERIC = {
    FieldDescriptor.TYPE_DOUBLE,
    FieldDescriptor.TYPE_FLOAT,
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT32,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED32,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED32,
    FieldDescriptor.TYPE_SFIXED64,
}


_STRING, _BYTES, _ENUM, _NUMBER, _OTHER = range(5)

_MessageCheck = Callable[[Any, str, list[FieldViolation]], None]
"""Checks one message as a whole, adding violations under ``prefix`` (``start_time.``)."""


@dataclass(frozen=True, slots=True)
class _FieldPlan:
    """One field's rules, read out of the descriptor once into plain values (checked per call)."""

    name: str
    kind: int
    repeated: bool
    message: bool
    required: bool
    min_len: int
    max_len: int
    max_bytes: int
    max_items: int
    minimum: float | None
    maximum: float | None
    email: bool
    pattern: re.Pattern[str] | None
    pattern_text: str
    enum_values: frozenset[int] | None
    enum_name: str
    nested: _Plan | None


@dataclass(frozen=True, slots=True)
class _Plan:
    fields: tuple[_FieldPlan, ...]
    check: _MessageCheck | None = None  # a check of the message as a whole (well-known types)


_plans: dict[str, _Plan | None] = {}


def _kind(field: FieldDescriptor) -> int:
    if field.type == FieldDescriptor.TYPE_STRING:
        return _STRING
    if field.type == FieldDescriptor.TYPE_BYTES:
        return _BYTES
    if field.type == FieldDescriptor.TYPE_ENUM:
        return _ENUM
    return _NUMBER if field.type in _NUMERIC else _OTHER


def _field_plan(
    field: FieldDescriptor, rules: annotations_pb2.FieldRules | None, nested: _Plan | None
) -> _FieldPlan:
    r = rules if rules is not None else annotations_pb2.FieldRules()
    return _FieldPlan(
        name=field.name,
        kind=_kind(field),
        repeated=bool(field.is_repeated),
        message=field.message_type is not None,
        required=r.required,
        min_len=r.min_len,
        max_len=r.max_len,
        max_bytes=r.max_bytes,
        max_items=r.max_items,
        minimum=r.min if r.has_min else None,
        maximum=r.max if r.has_max else None,
        email=r.email,
        pattern=re.compile(r.pattern) if r.pattern else None,
        pattern_text=r.pattern,
        enum_values=(
            frozenset(v.number for v in field.enum_type.values)
            if field.enum_type is not None and r.defined_only
            else None
        ),
        enum_name=field.enum_type.name if field.enum_type is not None else "enum value",
        nested=nested,
    )


def _plan_for(descriptor: Descriptor, visiting: frozenset[str] = frozenset()) -> _Plan | None:
    """Returns the validation plan of a message type, or None when nothing in it has rules."""
    name = descriptor.full_name
    if name in _plans:
        return _plans[name]
    known = _well_known_plan(descriptor)
    if known is not None:
        return known
    if name in visiting:  # recursive types: stop; rules below the cycle are checked one level deep
        return None
    fields: list[_FieldPlan] = []
    for field in descriptor.fields:
        options = field.GetOptions()
        rules = (
            options.Extensions[annotations_pb2.rules] if options.HasExtension(annotations_pb2.rules) else None
        )
        nested = None
        is_map = field.message_type is not None and field.message_type.GetOptions().map_entry
        if field.message_type is not None and not is_map:
            nested = _plan_for(field.message_type, visiting | {name})
        if rules is None and nested is None:
            continue
        fields.append(_field_plan(field, rules, nested))
    plan = _Plan(tuple(fields)) if fields else None
    _plans[name] = plan
    return plan


# --- well-known types: valid by the rules of their own definition, wherever they occur -----------
#
# google.protobuf.Timestamp and Duration say in their .proto what a valid value is; every field of
# those types in every request is held to it without an annotation, so no handler ever converts
# one that cannot be represented (datetime, ToDatetime and the stores raise on those: INTERNAL).

_TIMESTAMP_MIN_SECONDS = -62_135_596_800
"""0001-01-01T00:00:00Z, the earliest Timestamp."""
_TIMESTAMP_MAX_SECONDS = 253_402_300_799
"""9999-12-31T23:59:59Z, the latest Timestamp."""
_DURATION_MAX_SECONDS = 315_576_000_000
"""About 10,000 years, the longest Duration either way."""
_NANOS_MAX = 999_999_999


def _check_timestamp(stamp: Any, prefix: str, out: list[FieldViolation]) -> None:
    if not _TIMESTAMP_MIN_SECONDS <= stamp.seconds <= _TIMESTAMP_MAX_SECONDS:
        out.append(
            FieldViolation(
                prefix + "seconds",
                "must be within 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z "
                f"({_TIMESTAMP_MIN_SECONDS} to {_TIMESTAMP_MAX_SECONDS})",
                "OUT_OF_RANGE",
            )
        )
    if not 0 <= stamp.nanos <= _NANOS_MAX:
        out.append(FieldViolation(prefix + "nanos", f"must be within 0 to {_NANOS_MAX}", "OUT_OF_RANGE"))


def _check_duration(duration: Any, prefix: str, out: list[FieldViolation]) -> None:
    seconds, nanos = duration.seconds, duration.nanos
    if not -_DURATION_MAX_SECONDS <= seconds <= _DURATION_MAX_SECONDS:
        out.append(
            FieldViolation(
                prefix + "seconds",
                f"must be within -{_DURATION_MAX_SECONDS} to {_DURATION_MAX_SECONDS}",
                "OUT_OF_RANGE",
            )
        )
    if not -_NANOS_MAX <= nanos <= _NANOS_MAX:
        out.append(
            FieldViolation(prefix + "nanos", f"must be within -{_NANOS_MAX} to {_NANOS_MAX}", "OUT_OF_RANGE")
        )
    elif (seconds < 0 < nanos) or (nanos < 0 < seconds):
        out.append(FieldViolation(prefix + "nanos", "must have the sign of seconds", "OUT_OF_RANGE"))


_WELL_KNOWN = {
    "google.protobuf.Timestamp": _Plan((), _check_timestamp),
    "google.protobuf.Duration": _Plan((), _check_duration),
}


def _well_known_plan(descriptor: Descriptor) -> _Plan | None:
    """The plan of a well-known type that has validity rules of its own; None for other types."""
    return _WELL_KNOWN.get(descriptor.full_name)


class _Violations(list[FieldViolation]):
    """The violations found: the first :data:`MAX_VIOLATIONS` kept, the rest only counted.

    A list, so checks simply ``append``; memory stays bounded whatever the request holds. (No
    ``__init__``: one is made per validated call, and a Python-level one costs four times as much.)
    """

    omitted = 0
    """How many violations were found beyond those kept (set on the instance once there are any)."""

    def append(self, violation: FieldViolation, /) -> None:
        """Keeps ``violation`` while fewer than :data:`MAX_VIOLATIONS` are kept; counts it otherwise."""
        if len(self) < MAX_VIOLATIONS:
            super().append(violation)
        else:
            self.omitted += 1

    def refuse(self) -> None:
        """Raises INVALID_ARGUMENT when anything was found."""
        if self:
            raise InvalidArgument(violations=self, omitted=self.omitted)


def _check_scalar(fp: _FieldPlan, value: Any, path: str, out: list[FieldViolation]) -> None:
    kind = fp.kind
    if kind == _STRING:
        if not value:
            return
        length = len(value)
        if fp.min_len and length < fp.min_len:
            out.append(FieldViolation(path, f"must be at least {fp.min_len} characters", "TOO_SHORT"))
        if fp.max_len and length > fp.max_len:
            out.append(FieldViolation(path, f"must be at most {fp.max_len} characters", "TOO_LONG"))
            return  # too long already: matching it would cost time in its length, for nothing
        if fp.pattern is not None and not fp.pattern.fullmatch(value):
            out.append(FieldViolation(path, f"must match {fp.pattern_text}", "BAD_FORMAT"))
        if fp.email and not _EMAIL.fullmatch(value):
            out.append(FieldViolation(path, "must be an e-mail address", "BAD_EMAIL"))
    elif kind == _BYTES:
        if fp.max_bytes and len(value) > fp.max_bytes:
            out.append(FieldViolation(path, f"must be at most {fp.max_bytes} bytes", "TOO_LARGE"))
    elif kind == _ENUM:
        if fp.enum_values is not None and value not in fp.enum_values:
            out.append(FieldViolation(path, f"{value} is not a defined {fp.enum_name}", "UNDEFINED_ENUM"))
    elif kind == _NUMBER:
        if fp.minimum is not None and value < fp.minimum:
            out.append(FieldViolation(path, f"must be at least {fp.minimum:g}", "OUT_OF_RANGE"))
        if fp.maximum is not None and value > fp.maximum:
            out.append(FieldViolation(path, f"must be at most {fp.maximum:g}", "OUT_OF_RANGE"))


def _validate(message: Message, plan: _Plan, prefix: str, out: list[FieldViolation]) -> None:
    if plan.check is not None:
        plan.check(message, prefix, out)
    for fp in plan.fields:
        name = fp.name
        if fp.repeated:
            path = prefix + name
            items = getattr(message, name)
            if fp.required and len(items) == 0:
                out.append(FieldViolation(path, "is required", "REQUIRED"))
            if fp.max_items and len(items) > fp.max_items:
                out.append(FieldViolation(path, f"must have at most {fp.max_items} items", "TOO_MANY"))
                continue  # refused by its length: its items are not visited
            for i, item in enumerate(items):
                if fp.nested is not None:
                    _validate(item, fp.nested, f"{path}[{i}].", out)
                elif not fp.message:
                    _check_scalar(fp, item, f"{path}[{i}]", out)
            continue
        if fp.message:
            present = message.HasField(name)
            if fp.required and not present:
                out.append(FieldViolation(prefix + name, "is required", "REQUIRED"))
            if present and fp.nested is not None:
                _validate(getattr(message, name), fp.nested, f"{prefix}{name}.", out)
            continue
        value = getattr(message, name)
        if fp.required and not value:
            out.append(FieldViolation(prefix + name, "is required", "REQUIRED"))
            continue
        _check_scalar(fp, value, prefix + name, out)


def _collect(message: Message) -> _Violations:
    out = _Violations()
    plan = _plan_for(message.DESCRIPTOR)  # type: ignore[arg-type]
    if plan is not None:
        _validate(message, plan, "", out)
    return out


def validate(message: Message) -> list[FieldViolation]:
    """Returns the rules ``message`` violates (empty when it is valid), the first :data:`MAX_VIOLATIONS`.

    The returned list's ``omitted`` attribute counts the violations found beyond those.
    """
    return _collect(message)


class ValidationInterceptor(PreCheckInterceptor):
    """Refuses requests that break their contract's rules with INVALID_ARGUMENT.

    Bound per method: a request type without rules gets no check at all, the others their plan.
    Streamed requests are validated by their handler, message by message.
    """

    def bind(self, method: str, descriptor: MethodDescriptor | None) -> Check | None:
        """The check of a unary request type with rules; None otherwise (unknown methods too)."""
        if descriptor is None or descriptor.client_streaming:
            return None
        plan = _plan_for(descriptor.input_type)
        if plan is None:
            return None

        def check(call: CallInfo, request: Any, context: Context) -> None:
            out = _Violations()
            _validate(request, plan, "", out)
            out.refuse()

        return check

    async def check(self, call: CallInfo, request: Any, context: Context) -> None:
        """Validates unary requests; streamed requests are validated by their handler per message."""
        if isinstance(request, Message):
            _collect(request).refuse()
