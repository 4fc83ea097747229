"""Hypothesis strategies: one probe — a call's target, body, credentials and headers — per example.

Everything is read from the descriptors, so an RPC added to the contracts is fuzzed without a line
here: its request message is generated field by field (numbers at their extremes, strings hostile
or matching the field's ``pattern`` rule, lengths and counts at the field's rule limits, timestamps
and durations inside and outside their range, field masks naming real and bogus paths, page tokens
from valid-looking to deeply nested JSON), or inflated (one repeated or string field grown to up to
the message limit), or replaced by garbage (random bytes, truncated and extended encodings, wrong
wire types, unclosed groups).

Bodies are kept as ``(bytes, times)`` chunks, and huge header values as a unit and a length, so a
4 MiB request is still a small example that Hypothesis shrinks and prints readably.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from google.protobuf import message_factory, text_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import assume
from hypothesis import strategies as st

from bhiv.options.v1 import annotations_pb2
from tests.fuzz import wire

ROLES = ("admin", "ops", "sales", "support", "customer")

FORGERIES = (
    "garbage",
    "empty",
    "alg-none",
    "hs256-with-public-key",
    "tampered-claims",
    "bad-signature",
    "expired",
    "not-yet-valid",
    "wrong-audience",
    "wrong-issuer",
    "unknown-kid",
    "wrong-type",
    "missing-jti",
    "foreign-key",
    "revoked",
)
"""Tokens no service may accept (see :mod:`tests.fuzz.credentials` for how each is made)."""

ODD_FORMS = (
    "lowercase-scheme",
    "no-scheme",
    "double-space",
    "trailing-space",
    "twice",
    "forged-then-valid",
    "valid-then-forged",
    "basic-scheme",
)
"""Unusual ways of writing a valid token: whether each is accepted is a policy, not checked here."""

HEADER_NAMES = (
    "traceparent",
    "tracestate",
    "x-request-id",
    "x-forwarded-for",
    "x-envoy-external-address",
    "x-real-ip",
    "forwarded",
    "x-bhiv-service",
    "x_bhiv_service",
    "authorization",
    "cookie",
    "grpc-timeout",
    "grpc-encoding",
    "grpc-accept-encoding",
    "te",
    "content-type",
    "content-length",
    "user-agent",
    "host",
    "x-envoy-internal",
    "x-envoy-original-path",
    "x-envoy-max-retries",
    "x-envoy-upstream-rq-timeout-ms",
)
"""Header names the platform, Envoy or HTTP/2 give a meaning to; others are drawn at random.

Not the connection-specific fields (:data:`CONNECTION_SPECIFIC`): see :func:`conforming`."""

CONNECTION_SPECIFIC = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"}
)
"""Fields an HTTP/2 client must not send (RFC 9113, 8.2.2), nor ``te`` other than ``trailers``."""

HEADER_VALUES = (
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "00-" + "f" * 1000 + "-b7ad6b7169203331-01",
    "ff-00000000000000000000000000000000-0000000000000000-00",
    "127.0.0.1",
    "::1",
    "1.2.3.4, 5.6.7.8",
    "999.999.999.999",
    "identity",
    "sentinel",
    "crm",
    "nonexistent",
    "1S",
    "99999999H",
    "-1m",
    "gzip",
    "trailers",
    "application/grpc+json",
    "close",
    "0",
    "-1",
)

HEADER_LENGTHS = (8192, 16_384, 65_536, 1 << 20)
"""Value lengths past the limits: the services' 8 KiB soft and 16 KiB hard limits, Envoy's 60 KiB, 1 MiB."""

HEADER_COPIES = (50, 100, 101, 200)
"""Header counts around Envoy's limit of 100."""

HOSTILE_STRINGS = (
    "",
    " ",
    "\x00",
    "' OR '1'='1",
    "'; DROP TABLE users; --",
    "../../../etc/passwd",
    "users/../admin",
    "users/%2e%2e/admin",
    "%s%s%s%n",
    "{{7*7}}${7*7}",
    "${jndi:ldap://127.0.0.1/a}",
    "<script>alert(1)</script>",
    "\u202egnp.exe",
    "\ufeff",
    "😀😀😀",
    "null",
    "NaN",
    "-1",
    "9" * 400,
    "*",
    "\\",
    "\r\n\r\n",
)

KNOWN_BAD_BODIES = (
    "3b",  # an end-group tag that nothing opened (the first example)
    "80",  # a varint cut off after its first byte
    "1202c080",  # a string field holding invalid UTF-8
    "0b",  # a group that is never closed
    "0a",  # a length-delimited field without its length
    "0a05",  # a length longer than what follows
    "08",  # a varint field without its value
    "08ffffffffffffffffffff01",  # an 11-byte varint
    "0d0000",  # a fixed32 cut short
    "09",  # a fixed64 without its value
    "00",  # field number 0
    "0affffffffffffffff7f",  # a length of 2^63 - 1
)

NESTING_DEPTHS = (10, 100, 101, 1000, 100_000)
TOKEN_DEPTHS = (10, 100, 1000, 5000)

HUGE_STRING_UNITS = (b"a", "é".encode(), "😀".encode(), b"\x00", b"\xff")
"""What a huge string or bytes field is made of (``\\xff`` is invalid UTF-8 in a string)."""

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
UINT32 = (0, 2**32 - 1)
UINT64 = (0, 2**64 - 1)

_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: INT32,
    FieldDescriptor.TYPE_SINT32: INT32,
    FieldDescriptor.TYPE_SFIXED32: INT32,
    FieldDescriptor.TYPE_INT64: INT64,
    FieldDescriptor.TYPE_SINT64: INT64,
    FieldDescriptor.TYPE_SFIXED64: INT64,
    FieldDescriptor.TYPE_UINT32: UINT32,
    FieldDescriptor.TYPE_FIXED32: UINT32,
    FieldDescriptor.TYPE_UINT64: UINT64,
    FieldDescriptor.TYPE_FIXED64: UINT64,
}

# Timestamp's range is 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59.999999999Z; Duration's ±10,000 years.
TIMESTAMP_SECONDS = (0, 1_780_000_000, -1, 253_402_300_799, 253_402_300_800, -62_135_596_800, -62_135_596_801)
DURATION_SECONDS = (0, 1, -1, 315_576_000_000, 315_576_000_001, -315_576_000_000, -315_576_000_001)
NANOS = (0, 999_999_999, 1_000_000_000, -1, -999_999_999)

MAX_SCALAR = 64 * 1024
"""The longest string or bytes value a well-typed message gets (see :func:`inflated` for more)."""

MAX_DEPTH = 3
"""How deep generated messages nest (deeper message fields are left unset)."""

TEXT_CHARS = 240
"""How much of a message's text form a probe shows."""


@dataclass(frozen=True)
class Budget:
    """How large the fuzzer's requests may get.

    Attributes:
        max_body_bytes: The largest inflated body within the limit.
        limit: The services' message limit (``BHIV_MAX_MESSAGE_BYTES``); a few bodies go just past it.

    """

    max_body_bytes: int
    limit: int


@dataclass(frozen=True)
class Chunk:
    """``data`` repeated ``times`` times."""

    data: bytes
    times: int = 1

    def hex(self) -> str:
        shown = self.data[:48].hex() + ("…" if len(self.data) > 48 else "")
        return shown if self.times == 1 else f"({shown})*{self.times}"


@dataclass(frozen=True)
class Body:
    """A request body: what made it, its chunks, and the message's text form when it is one."""

    kind: str
    chunks: tuple[Chunk, ...]
    text: str = ""

    @property
    def size(self) -> int:
        return sum(len(c.data) * c.times for c in self.chunks)

    def render(self) -> bytes:
        return b"".join(c.data * c.times for c in self.chunks)

    def hex(self) -> str:
        return " + ".join(c.hex() for c in self.chunks if c.data and c.times) or "(empty)"

    def __repr__(self) -> str:
        text = f" = {{{self.text}}}" if self.text else ""
        return f"<{self.kind}, {self.size} bytes: {self.hex()}{text}>"


def message_body(message: Message, kind: str = "message") -> Body:
    """The body of a well-typed message."""
    return Body(kind, (Chunk(message.SerializeToString()),), describe(message))


def describe(message: Message) -> str:
    """A message's one-line text form, cut to :data:`TEXT_CHARS`."""
    text: str = text_format.MessageToString(message, as_one_line=True)
    return text if len(text) <= TEXT_CHARS else text[:TEXT_CHARS] + f"…({len(text)} chars)"


@dataclass(frozen=True)
class Header:
    """An extra request header: ``unit`` repeated to ``length``, sent under ``copies`` names."""

    key: str
    unit: str | bytes
    length: int
    copies: int = 1

    @property
    def value(self) -> str | bytes:
        if not self.unit:
            return self.unit
        return (self.unit * (self.length // len(self.unit) + 1))[: self.length]

    @property
    def size(self) -> int:
        """Names and values, in bytes (roughly: characters)."""
        return (len(self.key) + self.length) * self.copies

    def render(self) -> list[tuple[str, str | bytes]]:
        value = self.value
        if self.copies == 1:
            return [(self.key, value)]
        stem, suffix = (self.key[:-4], "-bin") if self.key.endswith("-bin") else (self.key, "")
        return [(f"{stem}-{i}{suffix}", value) for i in range(self.copies)]

    def __repr__(self) -> str:
        value = self.value
        shown = repr(value[:40]) + (f"…({len(value)} chars)" if len(value) > 40 else "")
        copies = f" under {self.copies} names" if self.copies != 1 else ""
        return f"{self.key}: {shown}{copies}"


@dataclass(frozen=True)
class Credential:
    """What a probe presents as ``authorization``.

    Attributes:
        kind: ``none``, ``valid`` (a role's own token), ``forged`` (one no service may accept) or
            ``odd`` (a valid token written unusually).
        name: The role (``valid``, ``odd``) or the forgery (``forged``).
        form: How an ``odd`` token is written.

    """

    kind: str
    name: str = ""
    form: str = ""

    @property
    def invalid(self) -> bool:
        """True when the call carries no credentials a service may accept."""
        return self.kind in ("none", "forged")

    def __repr__(self) -> str:
        if self.kind == "none":
            return "no token"
        if self.kind == "valid":
            return f"{self.name}'s token"
        if self.kind == "forged":
            return f"forged token ({self.name})"
        return f"{self.name}'s token written {self.form}"


@dataclass(frozen=True)
class Probe:
    """One call: where it goes (``edge`` or a service's name), its body, credentials and headers."""

    target: str
    body: Body
    credential: Credential
    headers: tuple[Header, ...] = ()

    def __repr__(self) -> str:
        headers = "; ".join(map(repr, self.headers)) or "none"
        return (
            f"Probe(to {self.target}, {self.credential!r}, extra headers: {headers},\n"
            f"      body {self.body!r})"
        )


def _rules(field: FieldDescriptor) -> annotations_pb2.FieldRules | None:
    options = field.GetOptions()
    if options.HasExtension(annotations_pb2.rules):
        return options.Extensions[annotations_pb2.rules]
    return None


def _ordered(values: Sequence[int], low: int, high: int) -> list[int]:
    """``values`` within ``[low, high]``, first seen first, without repeats."""
    return list(dict.fromkeys(v for v in values if low <= v <= high))


def integers(low: int, high: int, extra: Sequence[int] = ()) -> st.SearchStrategy[int]:
    """Integers of a range, its edges and ``extra`` values drawn often."""
    edges = _ordered([0, 1, -1, *extra, high, low, high - 1, low + 1], low, high)
    return st.one_of(st.sampled_from(edges), st.integers(low, high))


def _number_edges(rules: annotations_pb2.FieldRules | None) -> list[float]:
    if rules is None:
        return []
    edges: list[float] = []
    if rules.has_min:
        edges += [rules.min, rules.min - 1]
    if rules.has_max:
        edges += [rules.max, rules.max + 1]
    return edges


def _texts(field: FieldDescriptor, rules: annotations_pb2.FieldRules | None) -> st.SearchStrategy[str]:
    options: list[st.SearchStrategy[str]] = [
        st.text(st.characters(codec="utf-8"), max_size=24),
        st.sampled_from(HOSTILE_STRINGS),
        st.integers(1, 5000).map(lambda n: "x" * n),
    ]
    if field.name.endswith("page_token"):
        options.insert(0, page_tokens())
    if rules is not None:
        if rules.pattern:
            options.insert(0, st.from_regex(rules.pattern, fullmatch=True))
        if rules.email:
            options.insert(0, st.emails())
        # Longer values are the inflated bodies' business, which keep to the run's size budget.
        lengths = [n for n in (rules.min_len - 1, rules.max_len, rules.max_len + 1) if 0 < n <= MAX_SCALAR]
        if lengths:
            options.append(
                st.tuples(st.sampled_from(lengths), st.sampled_from("aé😀")).map(lambda t: t[1] * t[0])
            )
    return st.one_of(options)


def _json_values() -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False),
        st.text(max_size=12),
    )
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=3), max_leaves=6)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def page_tokens() -> st.SearchStrategy[str]:
    """Page tokens from plausible to hostile: foreign JSON, deep nesting, huge numbers, junk."""
    nested = st.tuples(st.sampled_from(("[", '{"a":', '{"after":')), st.sampled_from(TOKEN_DEPTHS)).map(
        lambda t: _b64((t[0] * t[1]).encode())
    )
    plausible = st.tuples(_json_values(), st.text(max_size=16)).map(
        lambda t: _b64(json.dumps({"after": t[0], "filter": t[1]}).encode())
    )
    return st.one_of(
        plausible,
        nested,
        st.binary(max_size=48).map(_b64),
        st.sampled_from(("=", "====", "not base64!", _b64(b"9" * 5000), _b64(b'{"after": 1e999}'))),
    )


def _timestamps(cls: type[Message], seconds: Sequence[int]) -> st.SearchStrategy[Message]:
    return st.builds(
        lambda s, n: cls(seconds=s, nanos=n),
        integers(*INT64, extra=seconds),
        integers(*INT32, extra=NANOS),
    )


def _field_masks(cls: type[Message], parent: Descriptor) -> st.SearchStrategy[Message]:
    """Masks naming the fields of the request's resources, and paths that name nothing."""
    real = sorted(
        {f.name for f in parent.fields}
        | {f"{m.name}.{g.name}" for m in parent.fields if m.message_type for g in m.message_type.fields}
        | {g.name for m in parent.fields if m.message_type for g in m.message_type.fields}
    )
    paths = st.one_of(
        st.sampled_from(real),
        st.sampled_from(("", "*", ".", "a..b", "name", "etag", "create_time", "password_hash", "role.")),
        st.text(st.characters(codec="utf-8"), max_size=24),
    )
    return st.lists(paths, max_size=6).map(lambda p: cls(paths=p))


def _scalars(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    rules = _rules(field)
    if field.type in _INT_RANGES:
        low, high = _INT_RANGES[field.type]
        return integers(low, high, [int(e) for e in _number_edges(rules)])
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        width = 64 if field.type == FieldDescriptor.TYPE_DOUBLE else 32
        edges = [e for e in _number_edges(rules) if width == 64 or abs(e) < 3.4e38]
        return st.one_of(st.sampled_from([0.0, *edges]), st.floats(width=width))
    if field.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field.type == FieldDescriptor.TYPE_ENUM:
        defined = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(defined), integers(*INT32))
    if field.type == FieldDescriptor.TYPE_STRING:
        return _texts(field, rules)
    if field.type == FieldDescriptor.TYPE_BYTES:
        sizes = [n for n in ((rules.max_bytes, rules.max_bytes + 1) if rules else ()) if 0 < n <= MAX_SCALAR]
        big = [st.sampled_from(sizes).map(lambda n: b"\x00" * n)] if sizes else []
        return st.one_of(st.binary(max_size=32), *big)
    raise TypeError(f"no strategy for {field.full_name} (type {field.type})")


def _usable(field: FieldDescriptor, depth: int) -> bool:
    return field.message_type is None or depth < MAX_DEPTH


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _single(field: FieldDescriptor, parent: Descriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.message_type is None:
        return _scalars(field)
    if field.message_type.full_name == "google.protobuf.FieldMask":
        return _field_masks(message_factory.GetMessageClass(field.message_type), parent)
    return messages(field.message_type, depth + 1)


def _values(field: FieldDescriptor, parent: Descriptor, depth: int) -> st.SearchStrategy[Any]:
    if _is_map(field):
        entry = field.message_type
        key, value = entry.fields_by_name["key"], entry.fields_by_name["value"]
        return st.dictionaries(_scalars(key), _single(value, entry, depth), max_size=3)
    if field.is_repeated:
        return st.lists(_single(field, parent, depth), max_size=4)
    return _single(field, parent, depth)


def _assign(message: Message, field: FieldDescriptor, value: Any) -> None:
    if _is_map(field):
        target = getattr(message, field.name)
        for key, item in value.items():
            if isinstance(item, Message):
                target[key].CopyFrom(item)
            else:
                target[key] = item
    elif field.is_repeated:
        target = getattr(message, field.name)
        for item in value:
            if isinstance(item, Message):
                target.add().CopyFrom(item)
            else:
                target.append(item)
    elif isinstance(value, Message):
        getattr(message, field.name).CopyFrom(value)
    else:
        setattr(message, field.name, value)


@cache
def messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Well-typed messages of ``descriptor``: any subset of its fields set, each to a hostile value."""
    cls = message_factory.GetMessageClass(descriptor)
    if descriptor.full_name == "google.protobuf.Timestamp":
        return _timestamps(cls, TIMESTAMP_SECONDS)
    if descriptor.full_name == "google.protobuf.Duration":
        return _timestamps(cls, DURATION_SECONDS)
    fields = [(f, _values(f, descriptor, depth)) for f in descriptor.fields if _usable(f, depth)]
    if not fields:
        return st.builds(cls)

    @st.composite
    def build(draw: Callable[[st.SearchStrategy[Any]], Any]) -> Message:
        message = cls()
        for index in draw(st.lists(st.sampled_from(range(len(fields))), unique=True)):
            field, values = fields[index]
            _assign(message, field, draw(values))
        return message

    return build()


@dataclass(frozen=True)
class Slot:
    """A field that can be made huge: a repeated field, or a string or bytes field.

    Attributes:
        path: The singular message fields leading to it from the request.
        field: The field itself.

    """

    path: tuple[FieldDescriptor, ...]
    field: FieldDescriptor

    @property
    def name(self) -> str:
        return ".".join(f.name for f in (*self.path, self.field))


@cache
def slots(descriptor: Descriptor, depth: int = 0) -> tuple[Slot, ...]:
    """Every field of a request that can be made huge, down to two message levels."""
    found: list[Slot] = []
    for field in descriptor.fields:
        if field.is_repeated or field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
            found.append(Slot((), field))
        elif field.message_type is not None and depth < 2:
            found.extend(Slot((field, *s.path), s.field) for s in slots(field.message_type, depth + 1))
    return tuple(found)


def _count_edges(slot: Slot, unit: int, budget: Budget) -> list[int]:
    rules = _rules(slot.field)
    limits = [rules.max_items, rules.max_items + 1, rules.max_len + 1, rules.max_bytes + 1] if rules else []
    within = [n for n in (*limits, 1, 2, 10, 100, 1000, 10_000, budget.max_body_bytes // unit) if n > 0]
    # Just past the message limit: one edge among many, so only about one probe in fifty is.
    return [*dict.fromkeys(n for n in within if n * unit <= budget.max_body_bytes), budget.limit // unit + 1]


@st.composite
def inflated(draw: Callable[[st.SearchStrategy[Any]], Any], descriptor: Descriptor, budget: Budget) -> Body:
    """A well-typed message with one repeated or string field grown huge (at most just past the limit)."""
    found = slots(descriptor)
    base = draw(messages(descriptor))
    if not found:
        return message_body(base)
    slot = draw(st.sampled_from(found))
    field = slot.field
    own_prefix = b""
    if field.is_repeated:
        # One element, encoded by protobuf in its container; N copies of it are N elements.
        container = message_factory.GetMessageClass(field.containing_type)()
        if _is_map(field):
            entry = field.message_type
            one: Any = draw(
                st.dictionaries(
                    _scalars(entry.fields_by_name["key"]),
                    _single(entry.fields_by_name["value"], entry, MAX_DEPTH - 1),
                    min_size=1,
                    max_size=1,
                )
            )
        else:
            one = [draw(_single(field, field.containing_type, MAX_DEPTH - 1))]
        _assign(container, field, one)
        unit = container.SerializeToString()
    else:
        unit = draw(st.sampled_from(HUGE_STRING_UNITS))
    count = draw(
        st.one_of(
            st.sampled_from(_count_edges(slot, len(unit), budget)),
            st.integers(0, budget.max_body_bytes // len(unit)),
        )
    )
    content = len(unit) * count
    if not field.is_repeated:
        own_prefix = wire.delimited_prefix(field.number, content)
        content += len(own_prefix)
    prefixes: list[bytes] = []
    for outer in reversed(slot.path):
        prefix = wire.delimited_prefix(outer.number, content)
        prefixes.insert(0, prefix)
        content += len(prefix)
    chunks = (
        Chunk(base.SerializeToString()),
        *(Chunk(p) for p in prefixes),
        Chunk(own_prefix),
        Chunk(unit, count),
    )
    return Body(f"message with {slot.name} * {count}", chunks, describe(base))


@st.composite
def garbage(draw: Callable[[st.SearchStrategy[Any]], Any], descriptor: Descriptor) -> Body:
    """Bodies that do not decode, or decode only by accident."""
    kind = draw(
        st.sampled_from(
            (
                "known",
                "random",
                "truncated",
                "extended",
                "flipped",
                "wrong wire type",
                "nested groups",
                "long varint",
            )
        )
    )
    if kind == "known":
        return Body("garbage: known bad", (Chunk(bytes.fromhex(draw(st.sampled_from(KNOWN_BAD_BODIES)))),))
    if kind == "random":
        return Body("garbage: random bytes", (Chunk(draw(st.binary(min_size=1, max_size=64))),))
    if kind == "nested groups":
        return Body(
            "garbage: unclosed nested groups",
            (Chunk(wire.tag(1, wire.START_GROUP), draw(st.sampled_from(NESTING_DEPTHS))),),
        )
    numbers = [f.number for f in descriptor.fields] or [1]
    number = draw(st.sampled_from(numbers))
    if kind == "wrong wire type":
        field = descriptor.fields_by_number.get(number)
        right = wire.wire_type(field) if field is not None else wire.VARINT
        wrong = draw(st.sampled_from([t for t in (wire.VARINT, wire.I64, wire.LEN, wire.I32) if t != right]))
        payload = draw(st.binary(max_size=16))
        return Body(
            f"garbage: field {number} with wire type {wrong}", (Chunk(wire.tag(number, wrong) + payload),)
        )
    if kind == "long varint":
        length = draw(st.sampled_from((10, 11, 64)))
        return Body(
            f"garbage: field {number} with a {length}-byte varint",
            (Chunk(wire.tag(number, wire.VARINT) + b"\xff" * (length - 1) + b"\x01"),),
        )
    message = draw(messages(descriptor))
    data = message.SerializeToString() or wire.delimited_prefix(number, 3) + b"abc"
    if kind == "truncated":
        cut = draw(st.integers(0, len(data) - 1))
        return Body(
            f"garbage: message cut at {cut} of {len(data)} bytes", (Chunk(data[:cut]),), describe(message)
        )
    if kind == "extended":
        tail = draw(st.binary(min_size=1, max_size=16))
        return Body("garbage: message with bytes appended", (Chunk(data), Chunk(tail)), describe(message))
    at = draw(st.integers(0, len(data) - 1))
    byte = draw(st.integers(0, 255))
    flipped = data[:at] + bytes([byte]) + data[at + 1 :]
    return Body(f"garbage: message with byte {at} set to {byte:02x}", (Chunk(flipped),), describe(message))


def bodies(descriptor: Descriptor, budget: Budget) -> st.SearchStrategy[Body]:
    """Well-typed, inflated or garbage bodies for a request type."""
    return st.one_of(
        messages(descriptor).map(message_body), garbage(descriptor), inflated(descriptor, budget)
    )


def credentials() -> st.SearchStrategy[Credential]:
    """None, each role's token, forged tokens, and valid tokens written oddly."""
    return st.one_of(
        st.just(Credential("none")),
        st.sampled_from(ROLES).map(lambda role: Credential("valid", role)),
        st.sampled_from(FORGERIES).map(lambda forgery: Credential("forged", forgery)),
        st.builds(
            lambda role, form: Credential("odd", role, form),
            st.sampled_from(ROLES),
            st.sampled_from(ODD_FORMS),
        ),
    )


_HEADER_TEXT = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
"""What a gRPC client sends in a text header (it refuses anything else before sending)."""

WITHIN_HEADER_BYTES = 7500
"""Extra headers the services accept with their own: gRPC's soft limit is 8 KiB in all."""

MAX_HEADER_BLOCK = (1 << 20) + 64 * 1024
"""The most one drawn header sends in all (its copies together): 1 MiB and a little more."""


def conforming(header: Header) -> bool:
    """True when an HTTP/2 client may send ``header``.

    A connection-specific field (or ``te`` other than ``trailers``) makes the request malformed
    HTTP/2 (RFC 9113, 8.2.2), which a server must answer by resetting the stream (8.1.1): there is
    no status to send, and the client makes up INTERNAL. grpc clients send such fields on request,
    but a conforming client never does: sending one tests the client, not the platform, so the
    fuzzer does not (the edge's answer to them, a reset of that stream alone, is pinned by
    ``tests/edge``). The same holds for ``host``: an HTTP/2 client conveys the authority in
    ``:authority`` and must not send a ``Host`` field that differs from it (RFC 9113, 8.3.1); the
    edge resets a stream whose ``host`` is not a valid authority (found in ``make test`` on
    2026-12-02: ``host: gjOVz|IE)d=;:O!&``), so a drawn ``host`` tests the client too. Everything
    else HTTP/2 allows, however long or odd, must get a status.
    """
    if header.copies != 1:
        return True  # numbered names (``connection-0``...) are ordinary fields
    if header.key == "host":
        return False
    if header.key == "te":
        return header.value == "trailers"
    return header.key not in CONNECTION_SPECIFIC


@st.composite
def header(
    draw: Callable[[st.SearchStrategy[Any]], Any],
    lengths: st.SearchStrategy[int | None],
    copies: st.SearchStrategy[int],
) -> Header:
    """One extra header: a meaningful or random name and value, of a drawn length (None: as is)."""
    unit: str | bytes
    if draw(st.booleans()):
        key = draw(
            st.one_of(st.just("grpc-trace-bin"), st.from_regex(r"[a-z][a-z0-9_.-]{0,16}-bin", fullmatch=True))
        )
        unit = draw(st.binary(min_size=1, max_size=24))
    else:
        key = draw(
            st.one_of(
                st.sampled_from(HEADER_NAMES), st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,24}", fullmatch=True)
            ).filter(lambda k: not k.endswith("-bin"))
        )
        unit = draw(st.one_of(st.sampled_from(HEADER_VALUES), st.text(_HEADER_TEXT, max_size=24)))
    count = draw(copies)
    length = draw(lengths)
    length = len(unit) if length is None else length
    drawn = Header(key, unit, min(length, MAX_HEADER_BLOCK // count), count)
    # Rarely false (``te``, or a random name that happens to be connection-specific): assumed away.
    assume(conforming(drawn))
    return drawn


def header_sets() -> st.SearchStrategy[tuple[Header, ...]]:
    """A probe's extra headers: none for half the probes, a few odd ones, or one past a limit.

    One probe in twenty sends a header past a limit (a value of 8 KiB to 1 MiB, or 50 to 200
    copies): those cost the services a tenth of a second each, and the others must be looked at too.
    """
    within = (
        st.lists(
            header(st.one_of(st.none(), st.integers(1, 1000), st.just(7000)), st.sampled_from((1, 2, 10))),
            min_size=1,
            max_size=3,
        )
        .map(tuple)
        .filter(lambda headers: sum(h.size for h in headers) <= WITHIN_HEADER_BYTES)
    )
    beyond = st.one_of(
        header(st.sampled_from(HEADER_LENGTHS), st.just(1)),
        header(st.none(), st.sampled_from(HEADER_COPIES)),
    ).map(lambda h: (h,))
    return st.integers(0, 19).flatmap(
        lambda mode: st.just(()) if mode < 10 else within if mode < 19 else beyond
    )


TARGETS = ("edge", "owner", "edge", "owner", "other")
"""Where probes go: the edge and the owning service twice as often as a service that lacks the RPC."""


def probes(
    descriptor: Descriptor, owners: Sequence[str], others: Sequence[str], budget: Budget
) -> st.SearchStrategy[Probe]:
    """Probes of one RPC, whose request type is ``descriptor``.

    Args:
        descriptor: The request message type.
        owners: The services that serve the RPC (any of them is "the owner").
        others: Services that do not serve it.
        budget: How large bodies may get.

    """

    def target(kind: str) -> st.SearchStrategy[str]:
        if kind == "edge":
            return st.just("edge")
        return st.sampled_from(list(owners if kind == "owner" or not others else others))

    return st.builds(
        Probe,
        st.sampled_from(TARGETS).flatmap(target),
        bodies(descriptor, budget),
        credentials(),
        header_sets(),
    )
