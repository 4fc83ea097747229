"""What the resource kit stores: collections, records, filters and aggregates.

A :class:`Collection` declares one kind of resource (``customers``, ``inventory_items``): the
fields a store indexes and filters on, the order lists follow, and the unique keys. A
:class:`Record` is one stored resource: its id, its owner, its etag, the serialized protobuf
message (the whole resource, exactly as the service returns it) and the values of the declared
fields, which the service computes from the message (a case-folded e-mail key, a status number,
a search text). Stores never interpret ``data``: filters, orderings, unique keys and aggregates
work on the declared fields only, so one store serves every service.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

__all__ = [
    "Cmp",
    "Collection",
    "Contains",
    "Eq",
    "Field",
    "FieldLe",
    "Filter",
    "Group",
    "HasItem",
    "In",
    "Kind",
    "Receipt",
    "Record",
    "UniqueViolation",
    "Value",
]

Kind: TypeAlias = Literal["text", "int", "real", "bool", "list"]
"""The type of a declared field: ``list`` is a list of strings (tags)."""

Value: TypeAlias = str | int | float | bool | list[str]
"""A field's value."""

_IDENTIFIER = re.compile(r"[a-z][a-z0-9_]{0,62}")

SPECIAL = ("id", "owner")
"""Columns every record has, usable in filters and orders like declared fields."""


@dataclass(frozen=True, slots=True)
class Field:
    """One declared field of a collection.

    Attributes:
        name: The field's name: lower_snake, unique in the collection, not ``id`` or ``owner``.
        kind: Its type; a record's value must have it (``bool`` and ``int`` are distinct).

    """

    name: str
    kind: Kind


@dataclass(frozen=True, slots=True)
class Collection:
    """One kind of resource and how stores keep it.

    Attributes:
        name: The table or collection name, also the resource-name prefix (``customers`` for
            ``customers/{id}``): lower_snake.
        fields: The fields stores keep beside the message, for filters, orders, uniqueness and
            aggregates.
        order: The fields lists are sorted by; the id always breaks ties.
        descending: True for newest-first lists (every order field and the id descend).
        unique: Sets of fields whose values no two records share; a clash is
            :class:`UniqueViolation` naming the set.
        indexes: Extra indexes, each a tuple of fields (the list order is appended to each, so
            a filtered list reads in index order).

    """

    name: str
    fields: tuple[Field, ...]
    order: tuple[str, ...] = ()
    descending: bool = False
    unique: tuple[tuple[str, ...], ...] = ()
    indexes: tuple[tuple[str, ...], ...] = ()

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields]
        for name in (self.name, *names):
            if not _IDENTIFIER.fullmatch(name):
                raise ValueError(f"{name!r} is not a lower_snake identifier")
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: a field is declared twice")
        known = set(names) | set(SPECIAL)
        for group in (self.order, *self.unique, *self.indexes):
            for name in group:
                if name not in known:
                    raise ValueError(f"{self.name}: {name!r} is not a declared field")
        if any(self.kind(name) == "list" for name in self.order):
            raise ValueError(f"{self.name}: a list field cannot order a list")
        if len(self.order) > 3:
            raise ValueError(f"{self.name}: at most three order fields (a page key holds four items)")

    def kind(self, name: str) -> Kind:
        """The kind of a field (``id`` and ``owner`` are text)."""
        if name in SPECIAL:
            return "text"
        for f in self.fields:
            if f.name == name:
                return f.kind
        raise KeyError(f"{self.name} has no field {name!r}")

    def defaults(self) -> dict[str, Value]:
        """Every declared field with the zero value of its kind."""
        zero: dict[Kind, Value] = {"text": "", "int": 0, "real": 0.0, "bool": False, "list": []}
        return {f.name: zero[f.kind] for f in self.fields}


@dataclass(frozen=True, slots=True)
class Record:
    """One stored resource.

    Attributes:
        id: The id of the resource name, ``{collection}/{id}``.
        data: The serialized protobuf message of the resource.
        fields: The values of the collection's declared fields; a missing one is its kind's zero.
        owner: The ``customers/{id}`` that owns it, empty when no customer does.
        etag: Its version; changed by the service on every write, compared by conditional writes.

    """

    id: str
    data: bytes
    fields: Mapping[str, Value] = field(default_factory=dict)
    owner: str = ""
    etag: str = ""

    def value(self, name: str) -> Value:
        """A field's value, ``id`` and ``owner`` included."""
        if name == "id":
            return self.id
        if name == "owner":
            return self.owner
        return self.fields[name]


@dataclass(frozen=True, slots=True)
class Receipt:
    """What an idempotent request returned the first time.

    Attributes:
        request_hash: A digest of the first request, to tell a retry from a reuse of its key.
        response: The serialized response, returned again to a retry.
        create_time: When it was stored (Unix seconds); receipts are pruned after a day.

    """

    request_hash: bytes
    response: bytes
    create_time: float


class UniqueViolation(Exception):
    """An insert or replace would give two records the same values of a unique field set.

    Attributes:
        collection: The collection's name.
        fields: The unique field set that clashed.

    """

    def __init__(self, collection: str, fields: tuple[str, ...]):
        super().__init__(f"{collection}: {', '.join(fields)} already taken")
        self.collection = collection
        self.fields = fields


# Filters: a list of them is their conjunction.


@dataclass(frozen=True, slots=True)
class Eq:
    """The field equals the value."""

    field: str
    value: str | int | float | bool


@dataclass(frozen=True, slots=True)
class In:
    """The field equals one of the values (no values: nothing matches)."""

    field: str
    values: tuple[str | int | float | bool, ...]


@dataclass(frozen=True, slots=True)
class Cmp:
    """The field compares to the value: ``op`` is one of ``<``, ``<=``, ``>``, ``>=``."""

    field: str
    op: Literal["<", "<=", ">", ">="]
    value: int | float | str


@dataclass(frozen=True, slots=True)
class FieldLe:
    """One field is at most another (``quantity <= reorder_level``)."""

    field: str
    other: str


@dataclass(frozen=True, slots=True)
class Contains:
    """A text field contains the text as is (store case-folded text to search without case)."""

    field: str
    text: str


@dataclass(frozen=True, slots=True)
class HasItem:
    """A list field holds the item."""

    field: str
    item: str


Filter: TypeAlias = Eq | In | Cmp | FieldLe | Contains | HasItem


def check_filters(collection: Collection, filters: Sequence[Filter]) -> None:
    """Raises ValueError for a filter on an undeclared field or of the wrong kind (a caller bug)."""
    for f in filters:
        kind = collection.kind(f.field)
        if isinstance(f, HasItem) != (kind == "list"):
            raise ValueError(f"{collection.name}: {type(f).__name__} on the {kind} field {f.field!r}")
        if isinstance(f, FieldLe):
            collection.kind(f.other)
        if isinstance(f, Contains) and kind != "text":
            raise ValueError(f"{collection.name}: Contains on the {kind} field {f.field!r}")


@dataclass(frozen=True, slots=True)
class Group:
    """One group of an aggregate.

    Attributes:
        key: The value of the grouping field (None when the aggregate is not grouped).
        count: How many records are in the group.
        sums: The sum of each summed field, in the order asked for.

    """

    key: str | int | float | bool | None
    count: int
    sums: tuple[int | float, ...]
