"""Checks requests against the validation rules declared in the contracts.

Rules are ``(bhiv.options.v1.rules)`` field options (see ``protos/bhiv/options/v1``). For each
request type a plan — the fields that carry rules, and the message fields to recurse into — is built
once from the descriptors and cached. A bad request is refused with INVALID_ARGUMENT listing every
violated field as a ``BadRequest`` field violation, before the handler runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from bhiv.options.v1 import annotations_pb2
from bhiv_core.runtime.chain import CallInfo, Context, PreCheckInterceptor
from bhiv_core.runtime.errors import FieldViolation, InvalidArgument

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


@dataclass(frozen=True, slots=True)
class _FieldPlan:
    field: FieldDescriptor
    rules: annotations_pb2.FieldRules | None
    pattern: re.Pattern[str] | None
    nested: _Plan | None
    enum_values: frozenset[int] | None


@dataclass(frozen=True, slots=True)
class _Plan:
    fields: tuple[_FieldPlan, ...]


_plans: dict[str, _Plan | None] = {}


def _is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def _plan_for(descriptor: Descriptor, visiting: frozenset[str] = frozenset()) -> _Plan | None:
    """Returns the validation plan of a message type, or None when nothing in it has rules."""
    name = descriptor.full_name
    if name in _plans:
        return _plans[name]
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
        pattern = re.compile(rules.pattern) if rules is not None and rules.pattern else None
        enum_values = (
            frozenset(v.number for v in field.enum_type.values)
            if field.enum_type is not None and rules is not None and rules.defined_only
            else None
        )
        fields.append(_FieldPlan(field, rules, pattern, nested, enum_values))
    plan = _Plan(tuple(fields)) if fields else None
    _plans[name] = plan
    return plan


def _check_scalar(fp: _FieldPlan, value: Any, path: str, out: list[FieldViolation]) -> None:
    rules = fp.rules
    if rules is None:
        return
    field = fp.field
    if field.type == FieldDescriptor.TYPE_STRING:
        if not value:
            return
        length = len(value)
        if rules.min_len and length < rules.min_len:
            out.append(FieldViolation(path, f"must be at least {rules.min_len} characters", "TOO_SHORT"))
        if rules.max_len and length > rules.max_len:
            out.append(FieldViolation(path, f"must be at most {rules.max_len} characters", "TOO_LONG"))
        if fp.pattern is not None and not fp.pattern.fullmatch(value):
            out.append(FieldViolation(path, f"must match {rules.pattern}", "BAD_FORMAT"))
        if rules.email and not _EMAIL.fullmatch(value):
            out.append(FieldViolation(path, "must be an e-mail address", "BAD_EMAIL"))
    elif field.type == FieldDescriptor.TYPE_BYTES:
        if rules.max_bytes and len(value) > rules.max_bytes:
            out.append(FieldViolation(path, f"must be at most {rules.max_bytes} bytes", "TOO_LARGE"))
    elif field.type == FieldDescriptor.TYPE_ENUM:
        if fp.enum_values is not None and value not in fp.enum_values:
            enum_name = field.enum_type.name if field.enum_type is not None else "enum value"
            out.append(FieldViolation(path, f"{value} is not a defined {enum_name}", "UNDEFINED_ENUM"))
    elif field.type in _NUMERIC:
        if rules.has_min and value < rules.min:
            out.append(FieldViolation(path, f"must be at least {rules.min:g}", "OUT_OF_RANGE"))
        if rules.has_max and value > rules.max:
            out.append(FieldViolation(path, f"must be at most {rules.max:g}", "OUT_OF_RANGE"))


def _validate(message: Message, plan: _Plan, prefix: str, out: list[FieldViolation]) -> None:
    for fp in plan.fields:
        field = fp.field
        path = f"{prefix}{field.name}"
        rules = fp.rules
        if _is_repeated(field):
            items = getattr(message, field.name)
            if rules is not None:
                if rules.required and len(items) == 0:
                    out.append(FieldViolation(path, "is required", "REQUIRED"))
                if rules.max_items and len(items) > rules.max_items:
                    out.append(FieldViolation(path, f"must have at most {rules.max_items} items", "TOO_MANY"))
            for i, item in enumerate(items):
                if fp.nested is not None:
                    _validate(item, fp.nested, f"{path}[{i}].", out)
                elif field.message_type is None:
                    _check_scalar(fp, item, f"{path}[{i}]", out)
            continue
        if field.message_type is not None:
            present = message.HasField(field.name)
            if rules is not None and rules.required and not present:
                out.append(FieldViolation(path, "is required", "REQUIRED"))
            if present and fp.nested is not None:
                _validate(getattr(message, field.name), fp.nested, f"{path}.", out)
            continue
        value = getattr(message, field.name)
        if rules is not None and rules.required and not value:
            out.append(FieldViolation(path, "is required", "REQUIRED"))
            continue
        _check_scalar(fp, value, path, out)


def validate(message: Message) -> list[FieldViolation]:
    """Returns every rule ``message`` violates (empty when it is valid)."""
    plan = _plan_for(message.DESCRIPTOR)  # type: ignore[arg-type]
    if plan is None:
        return []
    out: list[FieldViolation] = []
    _validate(message, plan, "", out)
    return out


class ValidationInterceptor(PreCheckInterceptor):
    """Refuses requests that break their contract's rules with INVALID_ARGUMENT."""

    async def check(self, call: CallInfo, request: Any, context: Context) -> None:
        """Validates unary requests; streamed requests are validated by their handler per message."""
        if not isinstance(request, Message):
            return
        violations = validate(request)
        if violations:
            raise InvalidArgument(violations=violations)
