"""The WebhookService operations over integrations' kit store (``bhiv.integrations.v1.WebhookService``).

Signing secrets are write-only. A ``Webhook`` message has no secret field, and the secret is
sealed (:class:`~bhiv_core.storage.sealing.SecretBox`, bound to the webhook's name) in the
store-only ``sealed`` field, so Get, List and Update cannot return it. CreateWebhookResponse
carries it once; its idempotency receipt keeps it sealed too (a retried create with the same
``request_id`` gets it again, opened on the way out), and the receipt's request digest is taken
over a keyed fingerprint of a given secret, never the secret.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Callable

from bhiv.integrations.v1 import event_pb2, webhook_pb2
from bhiv.integrations.v1 import webhook_service_pb2 as ws
from bhiv_core.events import catalog
from bhiv_core.outbound.http import OutboundClient
from bhiv_core.resources import (
    Eq,
    Filter,
    HasItem,
    Record,
    ResourceStore,
    Transaction,
    check_etag,
    idempotent,
    list_page,
)
from bhiv_core.runtime.errors import Aborted, FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from bhiv_core.runtime.times import to_timestamp
from bhiv_core.security.principal import Principal
from bhiv_core.services.integrations.webhooks.delivery import (
    DeliveryEngine,
    delivery_record,
    new_delivery,
    open_secret,
    park_queue,
    queue_entry,
)
from bhiv_core.services.integrations.webhooks.resources import DELIVERIES, QUEUE, WEBHOOK, WEBHOOKS
from bhiv_core.storage.sealing import SecretBox

__all__ = ["SECRET_LENGTH", "TEST_MESSAGE", "Webhooks", "sealed_record"]

Webhook = webhook_pb2.Webhook
SECRET_LENGTH = (32, 256)
"""The bounds of a given signing secret, in characters."""
TEST_MESSAGE = "This is a test event sent by SendTestEvent; it is not retried."
_DRAIN = 500
_REQUEST_ONLY = frozenset({"signing_secret"})
_FINISHED = (webhook_pb2.DELIVERY_STATUS_SUCCEEDED, webhook_pb2.DELIVERY_STATUS_FAILED)


def sealed_record(webhook: Webhook, secret: str, box: SecretBox) -> Record:
    """The stored form of a webhook: the message as reads return it, its secret sealed beside it."""
    record = WEBHOOK.record(webhook)
    sealed = box.seal(secret.encode(), webhook.name)
    return dataclasses.replace(record, fields={**record.fields, "sealed": sealed})


def _secret_problem(secret: str) -> str | None:
    if not SECRET_LENGTH[0] <= len(secret) <= SECRET_LENGTH[1]:
        return f"must be {SECRET_LENGTH[0]}-{SECRET_LENGTH[1]} characters"
    if not secret.isprintable() or not secret.isascii():
        return "must be printable ASCII characters"
    return None


class Webhooks:
    """The WebhookService operations.

    Args:
        store: Integrations' kit store.
        box: Seals and opens signing secrets.
        client: The outbound client, whose allowlist target URLs must pass.
        engine: The delivery engine (woken by redeliveries, used by test events).
        clock: Unix seconds now.

    """

    def __init__(
        self,
        store: ResourceStore,
        box: SecretBox,
        client: OutboundClient,
        engine: DeliveryEngine,
        clock: Callable[[], float] = time.time,
    ):
        self._store = store
        self._box = box
        self._client = client
        self._engine = engine
        self._clock = clock

    def _check(self, webhook: Webhook, prefix: str = "webhook") -> None:
        """INVALID_ARGUMENT unless the webhook's target URL and event types are acceptable."""
        out: list[FieldViolation] = []
        if not webhook.target_url:
            out.append(FieldViolation(f"{prefix}.target_url", "is required", "REQUIRED"))
        else:
            problem = self._client.url_problem(webhook.target_url)
            if problem:
                out.append(FieldViolation(f"{prefix}.target_url", problem, "TARGET_NOT_ALLOWED"))
        if not webhook.event_types:
            out.append(FieldViolation(f"{prefix}.event_types", "name at least one event type", "REQUIRED"))
        known = catalog.event_types()
        seen: set[str] = set()
        for index, event_type in enumerate(webhook.event_types):
            where = f"{prefix}.event_types[{index}]"
            if event_type in seen:
                out.append(FieldViolation(where, "is listed twice", "DUPLICATE"))
            elif event_type not in known:
                out.append(
                    FieldViolation(where, "is not an event type (see ListEventTypes)", "UNKNOWN_EVENT_TYPE")
                )
            seen.add(event_type)
        if out:
            raise InvalidArgument(violations=out)

    async def create(
        self, request: ws.CreateWebhookRequest, principal: Principal
    ) -> ws.CreateWebhookResponse:
        """Creates a webhook with a given or generated secret, once per ``request_id``."""
        webhook = WEBHOOK.fresh(request.webhook, now=self._clock())
        self._check(webhook)
        secret = request.signing_secret
        if secret:
            problem = _secret_problem(secret)
            if problem:
                raise InvalidArgument(violations=[FieldViolation("signing_secret", problem, "BAD_SECRET")])
        else:
            secret = secrets.token_hex(32)
        # The receipt is stored: it holds the secret sealed (bound to the webhook), opened below.
        receipt_context = f"receipt:{webhook.name}"

        async def insert(txn: Transaction) -> ws.CreateWebhookResponse:
            await txn.insert(WEBHOOKS, sealed_record(webhook, secret, self._box))
            return ws.CreateWebhookResponse(
                webhook=webhook, signing_secret=self._box.seal(secret.encode(), receipt_context)
            )

        digested = ws.CreateWebhookRequest()
        digested.CopyFrom(request)
        digested.signing_secret = (
            self._box.fingerprint(request.signing_secret) if request.signing_secret else ""
        )
        response = await idempotent(
            self._store,
            scope=f"CreateWebhook:{principal.subject}",
            request_id=request.request_id,
            request=digested,
            response_type=ws.CreateWebhookResponse,
            step=insert,
            clock=self._clock,
        )
        response.signing_secret = self._box.open(
            response.signing_secret, f"receipt:{response.webhook.name}"
        ).decode()
        return response

    async def get(self, request: ws.GetWebhookRequest, principal: Principal) -> ws.GetWebhookResponse:
        """The webhook, without its secret."""
        record = await WEBHOOK.get(self._store, request.name, principal)
        return ws.GetWebhookResponse(webhook=WEBHOOK.load(record))

    async def list(self, request: ws.ListWebhooksRequest, principal: Principal) -> ws.ListWebhooksResponse:
        """A page of webhooks, oldest first."""
        filters: list[Filter] = []
        if request.active_only:
            filters.append(Eq("active", True))
        if request.event_type:
            filters.append(HasItem("event_types", request.event_type))
        records, token = await list_page(
            self._store,
            WEBHOOKS,
            filters,
            page_size=request.page_size,
            page_token=request.page_token,
            query=("ListWebhooks",),
        )
        response = ws.ListWebhooksResponse(next_page_token=token)
        for record in records:
            response.webhooks.add().MergeFromString(record.data)
        return response

    async def update(
        self, request: ws.UpdateWebhookRequest, principal: Principal
    ) -> ws.UpdateWebhookResponse:
        """Applies ``update_mask``; ``signing_secret`` in it replaces the secret."""
        patch = request.webhook
        if not patch.name:
            raise InvalidArgument(violations=[FieldViolation("webhook.name", "is required", "REQUIRED")])
        paths = list(request.update_mask.paths)
        rotate = "signing_secret" in paths
        if rotate:
            problem = _secret_problem(request.signing_secret)
            if problem:
                raise InvalidArgument(violations=[FieldViolation("signing_secret", problem, "BAD_SECRET")])
        now = self._clock()

        async def update(txn: Transaction) -> ws.UpdateWebhookResponse:
            record = await WEBHOOK.get(txn, patch.name, principal)
            check_etag(patch.etag, record, patch.name)
            merged = WEBHOOK.merge(
                WEBHOOK.load(record), patch, request.update_mask, request_only=_REQUEST_ONLY
            )
            self._check(merged)
            secret = request.signing_secret if rotate else open_secret(record, self._box).decode()
            WEBHOOK.stamp(merged, now=now)
            if not await txn.replace(
                WEBHOOKS, sealed_record(merged, secret, self._box), expected_etag=record.etag
            ):
                raise Aborted(
                    f"{patch.name} changed while this call ran: re-read it and retry",
                    reason="CONCURRENT_CHANGE",
                )
            if merged.active != bool(record.value("active")):
                await park_queue(txn, record.id, active=merged.active, now=now)
            return ws.UpdateWebhookResponse(webhook=merged)

        response = await self._store.run(update)
        if response.webhook.active:
            self._engine.wake()  # reactivated: its queued deliveries may go now
        return response

    async def delete(
        self, request: ws.DeleteWebhookRequest, principal: Principal
    ) -> ws.DeleteWebhookResponse:
        """Deletes the webhook, its deliveries and their queued attempts, in one transaction."""

        async def delete(txn: Transaction) -> ws.DeleteWebhookResponse:
            record = await WEBHOOK.get(txn, request.name, principal)
            check_etag(request.etag, record, request.name)
            if not await txn.delete(WEBHOOKS, record.id, expected_etag=record.etag):
                raise Aborted(
                    f"{request.name} changed while this call ran: re-read it and retry",
                    reason="CONCURRENT_CHANGE",
                )
            for collection in (QUEUE, DELIVERIES):
                while found := await txn.find(collection, [Eq("webhook", record.id)], limit=_DRAIN):
                    for item in found:
                        await txn.delete(collection, item.id, expected_etag=item.etag)
            return ws.DeleteWebhookResponse()

        return await self._store.run(delete)

    async def list_deliveries(
        self, request: ws.ListDeliveriesRequest, principal: Principal
    ) -> ws.ListDeliveriesResponse:
        """A page of one webhook's deliveries, newest first."""
        record = await WEBHOOK.get(self._store, request.parent, principal)
        filters: list[Filter] = [Eq("webhook", record.id)]
        if request.status:
            filters.append(Eq("status", int(request.status)))
        records, token = await list_page(
            self._store,
            DELIVERIES,
            filters,
            page_size=request.page_size,
            page_token=request.page_token,
            query=("ListDeliveries",),
            max_bytes=2 << 20,  # a delivery carries its payload and up to 20 attempt excerpts
        )
        response = ws.ListDeliveriesResponse(next_page_token=token)
        for item in records:
            response.deliveries.add().MergeFromString(item.data)
        return response

    async def redeliver(
        self, request: ws.RedeliverDeliveryRequest, principal: Principal
    ) -> ws.RedeliverDeliveryResponse:
        """Queues a finished delivery for an attempt now, with a fresh budget of attempts."""
        parent, _, id = request.name.partition("/deliveries/")
        now = self._clock()

        async def redeliver(txn: Transaction) -> ws.RedeliverDeliveryResponse:
            webhook_record = await WEBHOOK.get(txn, parent, principal)
            record = await txn.get(DELIVERIES, id)
            if record is None or record.value("webhook") != webhook_record.id:
                raise NotFound(f"{request.name} not found", reason="NOT_FOUND")
            delivery = webhook_pb2.Delivery.FromString(record.data)
            if delivery.status not in _FINISHED:
                raise FailedPrecondition(
                    f"{request.name} is already queued ({webhook_pb2.DeliveryStatus.Name(delivery.status)})",
                    reason="DELIVERY_QUEUED",
                )
            if not WEBHOOK.load(webhook_record).active:
                raise FailedPrecondition(f"{parent} is not active", reason="WEBHOOK_INACTIVE")
            delivery.status = webhook_pb2.DELIVERY_STATUS_PENDING
            delivery.next_attempt_time.CopyFrom(to_timestamp(now))
            delivery.update_time.CopyFrom(to_timestamp(now))
            budget = delivery.attempts + self._engine.config.max_attempts
            await txn.replace(
                DELIVERIES,
                delivery_record(delivery, body=str(record.value("body")), budget=budget),
                expected_etag=record.etag,
            )
            await txn.insert(QUEUE, queue_entry(id, webhook_record.id, now))
            return ws.RedeliverDeliveryResponse(delivery=delivery)

        response = await self._store.run(redeliver)
        self._engine.wake()
        return response

    async def send_test(
        self, request: ws.SendTestEventRequest, principal: Principal
    ) -> ws.SendTestEventResponse:
        """Makes one attempt of a test event and records it as a finished delivery."""
        record = await WEBHOOK.get(self._store, request.name, principal)
        webhook = WEBHOOK.load(record)
        now = self._clock()
        event = catalog.envelope(
            event_pb2.WebhookTestEvent(webhook=webhook.name, message=TEST_MESSAGE),
            source="integrations",
            subject=webhook.name,
            time=now,
        )
        body = catalog.body_of(event)
        delivery = new_delivery(webhook.name, event, body, now)
        attempt = await self._engine.post(webhook.target_url, open_secret(record, self._box), delivery, body)
        self._engine.apply(delivery, attempt, budget=1, now=self._clock())

        async def insert(txn: Transaction) -> None:
            if await txn.get(WEBHOOKS, record.id) is None:
                raise NotFound(f"{request.name} not found", reason="NOT_FOUND")  # deleted meanwhile
            await txn.insert(DELIVERIES, delivery_record(delivery, body=body.decode(), budget=1))

        await self._store.run(insert)
        return ws.SendTestEventResponse(delivery=delivery)
