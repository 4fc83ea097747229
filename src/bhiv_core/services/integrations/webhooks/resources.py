"""The webhook collections of integrations' kit store.

- **webhooks** (``webhooks/{id}``): oldest first. The stored message is the webhook as every read
  returns it (a ``Webhook`` has no secret field at all); the signing secret lives sealed
  (:mod:`bhiv_core.storage.sealing`, bound to the webhook's name) in the store-only ``sealed``
  field, so no read path can return it by mistake.
- **deliveries** (``webhooks/{webhook}/deliveries/{id}``, stored under the delivery id): newest
  first. Store-only fields: ``webhook`` (the webhook's id), ``body`` (the exact JSON bytes POSTed,
  computed once from the event so every attempt and redelivery sends the same body) and
  ``budget`` (the attempt number after which a failure dead-letters it: ``max_attempts`` from
  the first attempt, renewed by a redelivery).
- **delivery_queue** (same ids): one entry per delivery that still has an attempt to make
  (PENDING or RETRYING), in due order, so the engine reads the oldest due work first. ``due`` is
  when it may be claimed; a claim moves ``due`` and ``lease`` to the end of the lease, so a
  process killed mid-attempt leaves an entry that falls due again when its lease runs out. The
  per-webhook limit counts entries whose ``lease`` is in the future, across every process that
  shares the store.
- **events** (``events/{event_id}``): every event PublishEvents accepted, by id, for dedup.
"""

from __future__ import annotations

from bhiv.integrations.v1 import webhook_pb2
from bhiv_core.resources import Collection, Field, ResourceType, Value
from bhiv_core.runtime.times import seconds_of

__all__ = ["COLLECTIONS", "DELIVERIES", "EVENTS", "QUEUE", "WEBHOOK", "WEBHOOKS"]

WEBHOOKS = Collection(
    "webhooks",
    (
        Field("created", "real"),
        Field("active", "bool"),
        Field("event_types", "list"),
        Field("sealed", "text"),
    ),
    order=("created",),
    indexes=(("active",),),
)


def _webhook_fields(m: webhook_pb2.Webhook) -> dict[str, Value]:
    # ``sealed`` is set by the caller (webhooks.sealed_record): the secret is not in the message.
    return {
        "created": seconds_of(m.create_time),
        "active": m.active,
        "event_types": list(m.event_types),
        "sealed": "",
    }


WEBHOOK: ResourceType[webhook_pb2.Webhook] = ResourceType(
    message=webhook_pb2.Webhook,
    collection=WEBHOOKS,
    index=_webhook_fields,
    mutable=frozenset({"target_url", "event_types", "active", "max_concurrent_deliveries"}),
    label="webhook",
    request_field="webhook",
)

DELIVERIES = Collection(
    "deliveries",
    (
        Field("created", "real"),
        Field("webhook", "text"),
        Field("status", "int"),
        Field("body", "text"),
        Field("budget", "int"),
    ),
    order=("created",),
    descending=True,
    indexes=(("webhook",), ("webhook", "status")),
)

QUEUE = Collection(
    "delivery_queue",
    (Field("webhook", "text"), Field("due", "real"), Field("lease", "real")),
    order=("due",),
    indexes=(("webhook",), ("webhook", "lease")),
)

EVENTS = Collection("events", (Field("received", "real"), Field("type", "text")), order=("received",))

COLLECTIONS: tuple[Collection, ...] = (WEBHOOKS, DELIVERIES, QUEUE, EVENTS)
