"""The WebhookService and EventService servicers: proto in, domain call, proto out."""

from __future__ import annotations

from typing import Any

from bhiv.integrations.v1 import event_service_pb2 as es
from bhiv.integrations.v1 import webhook_service_pb2 as ws
from bhiv_core.security.principal import require_principal
from bhiv_core.services.integrations.webhooks.events import Events
from bhiv_core.services.integrations.webhooks.subscriptions import Webhooks

__all__ = ["EventServicer", "WebhookServicer"]


class WebhookServicer:
    """Implements ``bhiv.integrations.v1.WebhookService``.

    Args:
        webhooks: The webhook operations.

    """

    def __init__(self, webhooks: Webhooks):
        self._webhooks = webhooks

    async def CreateWebhook(self, request: ws.CreateWebhookRequest, context: Any) -> ws.CreateWebhookResponse:
        """Creates a webhook; the response carries its signing secret, once."""
        return await self._webhooks.create(request, require_principal())

    async def GetWebhook(self, request: ws.GetWebhookRequest, context: Any) -> ws.GetWebhookResponse:
        """Gets a webhook, without its secret."""
        return await self._webhooks.get(request, require_principal())

    async def ListWebhooks(self, request: ws.ListWebhooksRequest, context: Any) -> ws.ListWebhooksResponse:
        """Lists webhooks, without their secrets."""
        return await self._webhooks.list(request, require_principal())

    async def UpdateWebhook(self, request: ws.UpdateWebhookRequest, context: Any) -> ws.UpdateWebhookResponse:
        """Updates a webhook (its secret too, write-only)."""
        return await self._webhooks.update(request, require_principal())

    async def DeleteWebhook(self, request: ws.DeleteWebhookRequest, context: Any) -> ws.DeleteWebhookResponse:
        """Deletes a webhook with its deliveries."""
        return await self._webhooks.delete(request, require_principal())

    async def ListDeliveries(
        self, request: ws.ListDeliveriesRequest, context: Any
    ) -> ws.ListDeliveriesResponse:
        """Lists a webhook's deliveries, newest first."""
        return await self._webhooks.list_deliveries(request, require_principal())

    async def RedeliverDelivery(
        self, request: ws.RedeliverDeliveryRequest, context: Any
    ) -> ws.RedeliverDeliveryResponse:
        """Queues a finished delivery again."""
        return await self._webhooks.redeliver(request, require_principal())

    async def SendTestEvent(self, request: ws.SendTestEventRequest, context: Any) -> ws.SendTestEventResponse:
        """Sends a test event, one attempt, and returns the delivery."""
        return await self._webhooks.send_test(request, require_principal())


class EventServicer:
    """Implements ``bhiv.integrations.v1.EventService``.

    Args:
        events: The event operations.

    """

    def __init__(self, events: Events):
        self._events = events

    async def PublishEvents(self, request: es.PublishEventsRequest, context: Any) -> es.PublishEventsResponse:
        """Accepts events from an outbox relay and queues their deliveries."""
        return await self._events.publish(request, require_principal())

    async def ListEventTypes(
        self, request: es.ListEventTypesRequest, context: Any
    ) -> es.ListEventTypesResponse:
        """Lists the event types webhooks may subscribe to."""
        return await self._events.list_types(request, require_principal())
