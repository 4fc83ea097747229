"""What every resource-oriented service does the same way, built once.

A service declares each of its resources as a :class:`ResourceType` (the protobuf message, its
:class:`~bhiv_core.resources.model.Collection`, how to compute the indexed fields and the owner,
and which fields ``update_mask`` may name) and then uses these helpers:

- **Names and ids**: :func:`new_id` (22 random URL-safe characters: unguessable), :func:`id_of`
  (``customers/abc`` → ``abc``; another collection's name is NOT_FOUND).
- **Server-owned fields**: :meth:`ResourceType.stamp` sets ``name``, ``create_time``,
  ``update_time`` and ``etag``; a client's values for them are ignored on create and never
  written on update (``update_mask`` cannot name them: INVALID_ARGUMENT ``OUTPUT_ONLY``).
- **Optimistic concurrency**: every write gives the resource a new ``etag``; a request's non-empty
  ``etag`` that differs from the stored one is ABORTED (``STALE_ETAG``), and writes are
  conditional on the etag read, so two concurrent updates never silently overwrite each other
  (the loser is ABORTED too).
- **Update masks**: :meth:`ResourceType.merge` applies the contract's mutable fields; an
  unknown path is INVALID_ARGUMENT ``UNKNOWN_FIELD``, an output-only or immutable one
  ``OUTPUT_ONLY``/``IMMUTABLE``, with the path's index in the field violation.
- **Idempotency**: :func:`idempotent` runs a create in one transaction with a receipt keyed by
  the caller and ``request_id``: a retry gets the first response again (even after the resource
  changed); the same ``request_id`` with a *different* request is INVALID_ARGUMENT
  (``REQUEST_ID_REUSED``) — the key names one request, not a resource, so reusing it is the
  caller's mistake, like Stripe's idempotency keys. Receipts are kept a day.
- **Ownership**: customer principals see only records they own (:func:`owner_filters`,
  :func:`visible`): another customer's record is NOT_FOUND, never PERMISSION_DENIED, so its
  existence does not leak.
- **Pages**: :func:`list_page` reads one page in the collection's order, with a page token bound
  to the filters (and the caller's ownership scope) that continues strictly after the last
  record, so inserts between pages neither repeat nor skip a record that was already there.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message

from bhiv_core.resources.model import Collection, Eq, Filter, Receipt, Record, UniqueViolation, Value
from bhiv_core.resources.store import ResourceStore, Transaction
from bhiv_core.runtime.errors import (
    Aborted,
    AlreadyExists,
    FieldViolation,
    InvalidArgument,
    NotFound,
)
from bhiv_core.runtime.times import seconds_of, to_timestamp
from bhiv_core.security.principal import Principal
from bhiv_core.storage.pagination import bad_page_token, decode_page_token, encode_page_token, page_size_of

__all__ = [
    "RECEIPT_TTL_SECONDS",
    "ResourceType",
    "already_exists",
    "check_etag",
    "id_of",
    "idempotent",
    "list_page",
    "new_etag",
    "new_id",
    "owner_filters",
    "sort_key",
    "sum_parts",
    "time_range",
    "total_of_parts",
    "visible",
]

M = TypeVar("M", bound=Message)
R = TypeVar("R", bound=Message)

RECEIPT_TTL_SECONDS = 24 * 3600.0
"""How long a ``request_id`` is remembered: a retry after that creates a new resource."""

SERVER_OWNED = ("name", "create_time", "update_time", "etag")
"""Fields only the server writes. Every resource has ``name`` and ``create_time``; an immutable one
(an interaction, a tracking event) may have no ``update_time`` and ``etag``, and is then stored
with an empty etag and never replaced."""


def new_id() -> str:
    """A new resource id: 22 random characters of ``[A-Za-z0-9_-]`` (128 bits)."""
    return secrets.token_urlsafe(16)


def new_etag() -> str:
    """A new etag: 16 random hex digits."""
    return secrets.token_hex(8)


def id_of(name: str, collection: Collection, *, field: str = "name", prefix: str = "") -> str:
    """The id of ``{collection}/{id}``; NOT_FOUND when ``name`` is not of this collection.

    The validation layer has already checked the contract's pattern; this is the check for
    fields it does not cover, and the one place names are taken apart. ``prefix`` is the
    resource-name prefix when it is not the collection's name (``alertChannels``).
    """
    expected = prefix or collection.name
    given, _, id = name.partition("/")
    if given != expected or not id or "/" in id:
        raise NotFound(f"{field} {name!r} is not a {expected} resource name", reason="NOT_FOUND")
    return id


def sort_key(*parts: str, limit: int = 60) -> str:
    """A case-insensitive sort key from text parts (last name, first name), bounded in size.

    Each part is case-folded and cut to ``limit`` characters (records differing only beyond
    that order by id), so the key fits a page token whatever the parts hold.
    """
    return "\x1f".join(part.casefold()[:limit] for part in parts)


_PART = 10**9


def sum_parts(value: int) -> tuple[int, int]:
    """``value`` (≥ 0, up to about 9.2e20) as two int fields a store can sum without overflowing.

    Stores sum int fields in 64 bits (SQLite's ``SUM`` fails on overflow), so a field holding
    amounts in micros overflows after a few large records; a product (quantity times unit price,
    value times probability) overflows on its own. Stored as ``value // 10**9`` and ``value % 10**9``,
    each part sums exactly over millions of records; :func:`total_of_parts` joins the two sums
    into the exact total (a Python int, of any size).
    """
    high, low = divmod(value, _PART)
    return high, low


def total_of_parts(high: int, low: int) -> int:
    """The exact total of two summed :func:`sum_parts` fields."""
    return high * _PART + low


def check_etag(given: str, record: Record, name: str) -> None:
    """ABORTED ``STALE_ETAG`` when ``given`` is set and differs from the record's etag."""
    if given and given != record.etag:
        raise Aborted(
            f"{name} changed since it was read (stale etag): re-read and retry",
            reason="STALE_ETAG",
        )


def time_range(request: Message) -> tuple[float | None, float | None]:
    """A list request's optional ``start_time`` and ``end_time``, in seconds (None when unset).

    Raises:
        InvalidArgument: both are set and ``end_time`` is not after ``start_time`` (``BAD_RANGE``).

    """
    start = seconds_of(request.start_time) if request.HasField("start_time") else None  # type: ignore[attr-defined]
    end = seconds_of(request.end_time) if request.HasField("end_time") else None  # type: ignore[attr-defined]
    if start is not None and end is not None and end <= start:
        raise InvalidArgument(
            violations=[FieldViolation("end_time", "must be after start_time", "BAD_RANGE")]
        )
    return start, end


def owner_filters(principal: Principal) -> list[Filter]:
    """The filters that limit a list to what the principal may see (customers: their own)."""
    return [Eq("owner", principal.customer or "\x00none")] if principal.is_customer else []


def visible(record: Record, principal: Principal) -> bool:
    """True when the principal may see the record."""
    return not principal.is_customer or (bool(principal.customer) and record.owner == principal.customer)


def already_exists(violation: UniqueViolation, messages: Mapping[tuple[str, ...], str]) -> AlreadyExists:
    """The ALREADY_EXISTS error of a unique-key clash, worded per key."""
    return AlreadyExists(
        messages.get(violation.fields, f"a {violation.collection} record with these values exists"),
        reason="ALREADY_EXISTS",
        metadata={"fields": ",".join(violation.fields)},
    )


@dataclass(frozen=True)
class ResourceType(Generic[M]):
    """One resource of a service: its message and how the kit stores and edits it.

    Attributes:
        message: The protobuf message class (it has ``name``, ``create_time``,
            ``update_time`` and ``etag`` fields).
        collection: Where stores keep it; its name is the resource-name prefix.
        index: Computes the collection's declared fields from a message.
        owner: The ``customers/{id}`` owning a message, or empty.
        mutable: The fields ``update_mask`` may name (top-level field names).
        immutable: Fields set on create that no update may change (mask: IMMUTABLE).
        label: The word for it in messages (``customer``).
        request_field: The request field holding it (``customer``), for violation paths.
        prefix: The resource-name prefix when it is not the collection's name: AIP names are
            camelCase (``alertChannels/{id}``), collection names lower_snake. Empty: the
            collection's name.

    """

    message: type[M]
    collection: Collection
    index: Callable[[M], dict[str, Value]]
    mutable: frozenset[str]
    label: str
    request_field: str
    owner: Callable[[M], str] = field(default=lambda _m: "")
    immutable: frozenset[str] = frozenset()
    prefix: str = ""

    def name(self, id: str) -> str:
        """The resource name of an id."""
        return f"{self.prefix or self.collection.name}/{id}"

    def id_of(self, name: str, *, field: str = "name") -> str:
        """The id of one of this type's names (NOT_FOUND for another collection's)."""
        return id_of(name, self.collection, field=field, prefix=self.prefix)

    @property
    def versioned(self) -> bool:
        """True when the message has ``update_time`` and ``etag`` (it can change after create)."""
        return "etag" in self.message.DESCRIPTOR.fields_by_name

    def record(self, message: M) -> Record:
        """The stored form of a message."""
        return Record(
            id=self.id_of(message.name),  # type: ignore[attr-defined]
            data=message.SerializeToString(deterministic=True),
            fields=self.index(message),
            owner=self.owner(message),
            etag=message.etag if self.versioned else "",  # type: ignore[attr-defined]
        )

    def load(self, record: Record) -> M:
        """The message of a stored record."""
        return self.message.FromString(record.data)

    def stamp(self, message: M, *, now: float, create: bool = False) -> M:
        """Sets the server-owned fields for a write at ``now``.

        A new etag and update time, and the create time too when ``create`` (an immutable
        resource, without ``update_time`` and ``etag``, gets only its create time).
        """
        if create:
            message.create_time.CopyFrom(to_timestamp(now))  # type: ignore[attr-defined]
        if self.versioned:
            message.update_time.CopyFrom(to_timestamp(now))  # type: ignore[attr-defined]
            message.etag = new_etag()  # type: ignore[attr-defined]
        return message

    def fresh(self, given: M, *, now: float, id: str | None = None) -> M:
        """A new resource from a create request's message: server-owned fields replaced."""
        message = self.message()
        message.CopyFrom(given)
        present = self.message.DESCRIPTOR.fields_by_name
        for name in SERVER_OWNED:
            if name in present:
                message.ClearField(name)
        message.name = self.name(id or new_id())  # type: ignore[attr-defined]
        return self.stamp(message, now=now, create=True)

    def merge(
        self,
        current: M,
        patch: M,
        mask: FieldMask,
        *,
        prefix: str = "update_mask",
        request_only: frozenset[str] = frozenset(),
    ) -> M:
        """``current`` with the fields ``mask`` names taken from ``patch``.

        Whole fields: a message or list is replaced, not merged. A path the mask may not name
        is INVALID_ARGUMENT with a violation per path. ``request_only`` names paths the mask may
        hold that are not fields of the message (a write-only ``secret`` of the request): they
        pass the check and are left for the caller to apply.
        """
        known = {f.name for f in self.message.DESCRIPTOR.fields}
        violations = []
        if not mask.paths:
            violations.append(FieldViolation(prefix, "name at least one field to change", "REQUIRED"))
        for index, path in enumerate(mask.paths):
            where = f"{prefix}.paths[{index}]"
            if path in self.mutable or path in request_only:
                continue
            if path in self.immutable:
                violations.append(FieldViolation(where, f"{path!r} cannot change after create", "IMMUTABLE"))
            elif path in known:
                violations.append(FieldViolation(where, f"{path!r} is output only", "OUTPUT_ONLY"))
            else:
                violations.append(
                    FieldViolation(where, f"{self.label} has no field {path[:64]!r}", "UNKNOWN_FIELD")
                )
        if violations:
            raise InvalidArgument(violations=violations)
        merged = self.message()
        merged.CopyFrom(current)
        paths = sorted(set(mask.paths) - request_only)
        if not paths:
            return merged
        FieldMask(paths=paths).MergeMessage(
            patch, merged, replace_message_field=True, replace_repeated_field=True
        )
        return merged

    async def get(self, store: ResourceStore | Transaction, name: str, principal: Principal) -> Record:
        """The record of ``name`` if the principal may see it, else NOT_FOUND."""
        record = await store.get(self.collection, self.id_of(name))
        if record is None or not visible(record, principal):
            raise NotFound(f"{name} not found", reason="NOT_FOUND")
        return record


def request_digest(request: Message) -> bytes:
    """A digest of a request's content, to tell a retry from a different request."""
    return hashlib.sha256(request.SerializeToString(deterministic=True)).digest()


async def idempotent(
    store: ResourceStore,
    *,
    scope: str,
    request_id: str,
    request: Message,
    response_type: type[R],
    step: Callable[[Transaction], Awaitable[R]],
    clock: Callable[[], float] = time.time,
) -> R:
    """Runs ``step`` once per ``request_id``, atomically with its receipt.

    Args:
        store: The service's store.
        scope: Whose keys these are: the RPC and the caller (``CreateCustomer:users/abc``), so
            two callers never share a key.
        request_id: The caller's key; empty runs ``step`` without a receipt.
        request: The request, whose digest tells a retry from a reuse of the key.
        response_type: The response message class, to parse a stored response.
        step: The transaction's work; its response is stored with the receipt.
        clock: Unix seconds now.

    Raises:
        InvalidArgument: ``request_id`` was used before for a different request.

    """
    if not request_id:
        return await store.run(step)
    digest = request_digest(request)

    async def once(txn: Transaction) -> R:
        receipt = await txn.recall(scope, request_id)
        if receipt is not None:
            if receipt.request_hash != digest:
                raise InvalidArgument(
                    violations=[
                        FieldViolation(
                            "request_id",
                            "was already used for a different request: a new request needs a new request_id",
                            "REQUEST_ID_REUSED",
                        )
                    ]
                )
            return response_type.FromString(receipt.response)
        response = await step(txn)
        await txn.remember(scope, request_id, Receipt(digest, response.SerializeToString(), clock()))
        return response

    return await store.run(once)


async def list_page(
    store: ResourceStore,
    collection: Collection,
    filters: Sequence[Filter],
    *,
    page_size: int,
    page_token: str,
    query: Iterable[object],
    max_bytes: int | None = None,
) -> tuple[list[Record], str]:
    """One page of a list and the token of the next.

    Args:
        store: The service's store.
        collection: What to list.
        filters: The request's filters and the caller's ownership filters.
        page_size: The request's page size (0 means 50, at most 500, negative INVALID_ARGUMENT).
        page_token: The request's page token.
        query: What the token is bound to besides the filters (the RPC, say): a token from
            another query is INVALID_ARGUMENT ``BAD_PAGE_TOKEN``.
        max_bytes: The most bytes of stored messages one page holds (always at least one
            record), for resources large enough that ``page_size`` of them could exceed the
            response limit; the page ends early and its token continues after it. None: no
            limit.

    """
    size = page_size_of(page_size)
    fingerprint = repr((collection.name, tuple(filters), tuple(query)))
    after: list[Value] | None = None
    if page_token:
        key = decode_page_token(page_token, fingerprint)
        order = (*collection.order, "id")
        if not isinstance(key, list) or len(key) != len(order):
            raise bad_page_token()
        for name, value in zip(order, key, strict=True):
            kind = collection.kind(name)
            if not isinstance(value, _TOKEN_TYPES[kind]):
                raise bad_page_token()
        after = list(key)
    records = await store.find(collection, filters, after=after, limit=size + 1)
    page = records[:size]
    if max_bytes is not None:
        total = 0
        for count, record in enumerate(page):
            total += len(record.data)
            if total > max_bytes and count:
                page = page[:count]
                break
    if len(page) == len(records):
        return records, ""
    last = page[-1]
    key_values = [_token_item(collection, name, last.value(name)) for name in (*collection.order, "id")]
    return page, encode_page_token(key_values, fingerprint)


_TOKEN_TYPES: dict[str, tuple[type, ...]] = {
    "text": (str,),
    "int": (int,),
    "real": (float, int),
    "bool": (int,),
}


def _token_item(collection: Collection, name: str, value: Value) -> int | float | str:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, list):
        raise ValueError(f"{collection.name}: {name} is a list and cannot order")
    return value
