"""The few pieces of the protobuf wire format the fuzzer writes by hand.

Well-typed messages are serialized by protobuf itself. What protobuf will not write — a repeated
field of two million elements without building two million objects, a field that never ends, a
group that is never closed — is written here: tags, varints and length prefixes.
"""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor

VARINT, I64, LEN, START_GROUP, END_GROUP, I32 = range(6)

_FIXED64 = {FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64}
_FIXED32 = {FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_FIXED32, FieldDescriptor.TYPE_SFIXED32}
_DELIMITED = {FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES, FieldDescriptor.TYPE_MESSAGE}


def varint(value: int) -> bytes:
    """The base-128 varint of ``value``; a negative value is written as its 64-bit two's complement."""
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    """The key of a field: its number and wire type."""
    return varint((number << 3) | wire_type)


def wire_type(field: FieldDescriptor) -> int:
    """The wire type of one (unpacked) value of ``field``."""
    if field.type in _DELIMITED:
        return LEN
    if field.type in _FIXED64:
        return I64
    if field.type in _FIXED32:
        return I32
    if field.type == FieldDescriptor.TYPE_GROUP:
        return START_GROUP
    return VARINT


def delimited_prefix(number: int, length: int) -> bytes:
    """The tag and length that open a length-delimited field of ``length`` bytes."""
    return tag(number, LEN) + varint(length)
