"""The EventService operations: the intake of platform events and the catalog of event types.

PublishEvents is the receiving end of the services' outboxes (``bhiv_core.events.relay``). In one
transaction per call it checks every event against the catalog (an unknown type, or a payload
that is not the type's message, fails the whole call with INVALID_ARGUMENT and writes nothing),
stores each new event in ``events`` under its id (an id seen before, in an earlier call or
earlier in the same batch, counts as a duplicate and queues nothing: relays retry batches), and
queues one delivery, with its queue entry, per active webhook subscribed to the event's type.
The delivery engine is woken after the commit.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from bhiv.integrations.v1 import event_service_pb2 as es
from bhiv_core.events import catalog
from bhiv_core.resources import Eq, HasItem, Record, ResourceStore, Transaction
from bhiv_core.resources.fixed_pages import fixed_page
from bhiv_core.runtime.errors import FieldViolation, InvalidArgument
from bhiv_core.security.principal import Principal
from bhiv_core.services.integrations.webhooks.delivery import (
    DeliveryEngine,
    delivery_record,
    new_delivery,
    queue_entry,
)
from bhiv_core.services.integrations.webhooks.resources import DELIVERIES, EVENTS, QUEUE, WEBHOOK, WEBHOOKS

__all__ = ["MAX_SUBSCRIBERS", "Events"]

MAX_SUBSCRIBERS = 10_000
"""The most webhooks one event type is delivered to (a bound on one call's work)."""


class Events:
    """The EventService operations.

    Args:
        store: Integrations' kit store.
        engine: The delivery engine, woken when deliveries are queued.
        clock: Unix seconds now.

    """

    def __init__(self, store: ResourceStore, engine: DeliveryEngine, clock: Callable[[], float] = time.time):
        self._store = store
        self._engine = engine
        self._clock = clock

    async def publish(
        self, request: es.PublishEventsRequest, principal: Principal
    ) -> es.PublishEventsResponse:
        """Accepts a batch of events and queues their deliveries, atomically."""
        bodies: list[bytes] = []
        violations: list[FieldViolation] = []
        for index, event in enumerate(request.events):
            try:
                bodies.append(catalog.body_of(event))  # unpacks the payload: checks type and message
            except catalog.UnknownEventType as exc:
                where = "type" if event.type not in catalog.event_types() else "payload"
                violations.append(
                    FieldViolation(f"events[{index}].{where}", str(exc)[:200], "UNKNOWN_EVENT_TYPE")
                )
        if violations:
            raise InvalidArgument(violations=violations)
        now = self._clock()

        async def publish(txn: Transaction) -> es.PublishEventsResponse:
            response = es.PublishEventsResponse()
            subscribers: dict[str, list[Record]] = {}
            for event, body in zip(request.events, bodies, strict=True):
                if await txn.get(EVENTS, event.id) is not None:
                    response.duplicates += 1
                    continue
                await txn.insert(
                    EVENTS,
                    Record(
                        id=event.id,
                        data=event.SerializeToString(deterministic=True),
                        fields={"received": now, "type": event.type},
                    ),
                )
                response.accepted += 1
                if event.type not in subscribers:
                    subscribers[event.type] = await txn.find(
                        WEBHOOKS,
                        [Eq("active", True), HasItem("event_types", event.type)],
                        limit=MAX_SUBSCRIBERS,
                    )
                for webhook in subscribers[event.type]:
                    delivery = new_delivery(WEBHOOK.load(webhook).name, event, body, now)
                    stored = delivery_record(
                        delivery, body=body.decode(), budget=self._engine.config.max_attempts
                    )
                    await txn.insert(DELIVERIES, stored)
                    await txn.insert(QUEUE, queue_entry(stored.id, webhook.id, now))
                    response.deliveries += 1
            return response

        response = await self._store.run(publish)
        if response.deliveries:
            self._engine.wake()
        return response

    async def list_types(
        self, request: es.ListEventTypesRequest, principal: Principal
    ) -> es.ListEventTypesResponse:
        """A page of the event types, by type."""
        types = list(catalog.event_types().values())
        page, token = fixed_page(
            "event_types", types, request.page_size, request.page_token, default=50, maximum=500
        )
        response = es.ListEventTypesResponse(next_page_token=token)
        for known in page:
            response.event_types.add(
                type=known.type, description=known.description, payload_message=known.payload_message
            )
        return response
