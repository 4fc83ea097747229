"""The resource kit: durable, paginated, idempotent, concurrency-safe resources for every service.

Logistics and CRM are built on it, and the services after them (integrations, llm,
orchestration) reuse it rather than writing their own store. A service:

1. declares each resource as a :class:`~bhiv_core.resources.model.Collection` (indexed fields,
   list order, unique keys, indexes) and a :class:`~bhiv_core.resources.kit.ResourceType` (the
   message, how to compute the indexed fields and the owner, the fields ``update_mask`` may name);
2. opens a :class:`~bhiv_core.resources.store.ResourceStore` from
   :func:`~bhiv_core.resources.store.make_resource_store` (SQLite file by default, MongoDB for a
   ``mongodb://`` URL), with ``schema(collections)`` as its first SQLite migration;
3. writes its RPCs with the helpers of :mod:`bhiv_core.resources.kit`: ``fresh``/``stamp`` for
   server-owned fields, ``merge`` for update masks, ``check_etag`` plus conditional writes for
   optimistic concurrency, ``idempotent`` for creates with ``request_id``, ``list_page`` for
   filtered pages, ``owner_filters``/``visible``/``ResourceType.get`` for customer ownership;
   every multi-record step goes in one ``store.run(...)`` transaction.

Stores keep the resource's serialized message whole, plus the declared fields beside it, so a
store never needs to know a service's messages and a new field in a message needs no migration
unless something filters or sorts on it.
"""

from bhiv_core.resources.kit import (
    RECEIPT_TTL_SECONDS,
    ResourceType,
    already_exists,
    check_etag,
    id_of,
    idempotent,
    list_page,
    new_etag,
    new_id,
    owner_filters,
    sort_key,
    sum_parts,
    time_range,
    total_of_parts,
    visible,
)
from bhiv_core.resources.model import (
    Cmp,
    Collection,
    Contains,
    Eq,
    Field,
    FieldLe,
    Filter,
    Group,
    HasItem,
    In,
    Receipt,
    Record,
    UniqueViolation,
    Value,
)
from bhiv_core.resources.store import ResourceStore, Transaction, make_resource_store

__all__ = [
    "RECEIPT_TTL_SECONDS",
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
    "Receipt",
    "Record",
    "ResourceStore",
    "ResourceType",
    "Transaction",
    "UniqueViolation",
    "Value",
    "already_exists",
    "check_etag",
    "id_of",
    "idempotent",
    "list_page",
    "make_resource_store",
    "new_etag",
    "new_id",
    "owner_filters",
    "sort_key",
    "sum_parts",
    "time_range",
    "total_of_parts",
    "visible",
]
