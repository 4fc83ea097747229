"""WebhookService's RPCs: validation, write-only secrets, updates, deletes, test events, access."""

from __future__ import annotations

import re
import stat
import time
from pathlib import Path

import grpc
from google.protobuf.field_mask_pb2 import FieldMask

from bhiv.integrations.v1 import webhook_pb2
from bhiv.integrations.v1 import webhook_service_pb2 as ws
from bhiv_core.outbound.signatures import verify_signature
from tests.services.crm.conftest import reason, refused, violations
from tests.services.integrations.webhook_receivers import (
    ADMIN,
    OPS,
    SALES,
    dead_url,
    eventually,
    receiver,
    serve_integrations,
    ticket_event,
    until,
)

SECRET = "s3cret-" + "k" * 40
SUCCEEDED = webhook_pb2.DELIVERY_STATUS_SUCCEEDED
FAILED = webhook_pb2.DELIVERY_STATUS_FAILED


async def test_the_signing_secret_is_returned_once_and_sealed_at_rest(tmp_path: Path) -> None:
    with receiver() as sink:
        async with serve_integrations(tmp_path) as served:
            created = await served.webhook(sink.url, secret=SECRET)
            assert created.signing_secret == SECRET
            generated = await served.webhook(sink.url)
            assert re.fullmatch(r"[0-9a-f]{64}", generated.signing_secret)
            name = created.webhook.name
            got = await served.webhooks.GetWebhook(ws.GetWebhookRequest(name=name), metadata=OPS)
            listed = await served.webhooks.ListWebhooks(ws.ListWebhooksRequest(), metadata=OPS)
            updated = await served.webhooks.UpdateWebhook(
                ws.UpdateWebhookRequest(
                    webhook=webhook_pb2.Webhook(name=name, max_concurrent_deliveries=2),
                    update_mask=FieldMask(paths=["max_concurrent_deliveries"]),
                ),
                metadata=ADMIN,
            )
            for read in (got, listed, updated):
                text = read.SerializeToString()
                assert SECRET.encode() not in text and generated.signing_secret.encode() not in text
            assert updated.webhook.max_concurrent_deliveries == 2
            assert [w.name for w in listed.webhooks] == [name, generated.webhook.name]
    stored = stored_bytes(tmp_path)
    assert stored and SECRET.encode() not in stored and generated.signing_secret.encode() not in stored
    assert stat.S_IMODE((tmp_path / "integrations-kek").stat().st_mode) == 0o600


async def test_a_retried_create_returns_the_same_webhook_and_secret(tmp_path: Path) -> None:
    with receiver() as sink:
        async with serve_integrations(tmp_path) as served:
            request = ws.CreateWebhookRequest(
                webhook=webhook_pb2.Webhook(target_url=sink.url, event_types=["crm.lead.won"], active=True),
                request_id="create-1",
            )
            first = await served.webhooks.CreateWebhook(request, metadata=ADMIN)
            again = await served.webhooks.CreateWebhook(request, metadata=ADMIN)
            assert again.webhook.name == first.webhook.name
            assert again.signing_secret == first.signing_secret and len(first.signing_secret) == 64
    stored = stored_bytes(tmp_path)
    assert first.signing_secret.encode() not in stored  # the receipt keeps it sealed too


async def test_bad_webhooks_are_invalid_argument_with_field_violations(tmp_path: Path) -> None:
    async with serve_integrations(tmp_path) as served:
        cases = [
            (
                ws.CreateWebhookRequest(
                    webhook=webhook_pb2.Webhook(
                        target_url="http://10.0.0.5/hook", event_types=["crm.ticket.resolved", "crm.no.such"]
                    )
                ),
                {
                    ("webhook.target_url", "TARGET_NOT_ALLOWED"),
                    ("webhook.event_types[1]", "UNKNOWN_EVENT_TYPE"),
                },
            ),
            (
                ws.CreateWebhookRequest(
                    webhook=webhook_pb2.Webhook(
                        target_url="http://127.0.0.1:9/x", event_types=["crm.lead.won", "crm.lead.won"]
                    )
                ),
                {("webhook.event_types[1]", "DUPLICATE")},
            ),
            (
                ws.CreateWebhookRequest(webhook=webhook_pb2.Webhook(active=True)),
                {("webhook.target_url", "REQUIRED"), ("webhook.event_types", "REQUIRED")},
            ),
            (
                ws.CreateWebhookRequest(
                    webhook=webhook_pb2.Webhook(
                        target_url="http://127.0.0.1:9/x", event_types=["crm.lead.won"]
                    ),
                    signing_secret="short",
                ),
                {("signing_secret", "BAD_SECRET")},
            ),
            (
                ws.CreateWebhookRequest(
                    webhook=webhook_pb2.Webhook(
                        target_url="http://metadata.example/x", event_types=["crm.lead.won"]
                    )
                ),
                {("webhook.target_url", "TARGET_NOT_ALLOWED")},
            ),
        ]
        for request, expected in cases:
            err = await refused(served.webhooks.CreateWebhook(request, metadata=ADMIN))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, request
            assert set(violations(err)) >= expected, violations(err)
        listed = await served.webhooks.ListWebhooks(ws.ListWebhooksRequest(), metadata=ADMIN)
        assert not listed.webhooks  # nothing half-written
        # The contract's own rules (pattern, range) answer before the handler.
        err = await refused(
            served.webhooks.CreateWebhook(
                ws.CreateWebhookRequest(
                    webhook=webhook_pb2.Webhook(
                        target_url="ftp://127.0.0.1/x", event_types=["Crm"], max_concurrent_deliveries=17
                    )
                ),
                metadata=ADMIN,
            )
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        err = await refused(
            served.webhooks.ListWebhooks(ws.ListWebhooksRequest(page_size=-1), metadata=ADMIN)
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_update_rotates_the_secret_and_checks_the_mask(tmp_path: Path) -> None:
    with receiver() as sink:
        async with serve_integrations(tmp_path) as served:
            created = await served.webhook(sink.url, secret=SECRET)
            name = created.webhook.name
            rotated = "n" * 48
            bad = [
                (["signing_secret"], "", ("signing_secret", "BAD_SECRET")),
                (["name"], "", ("update_mask.paths[0]", "OUTPUT_ONLY")),
                (["active", "nope"], "", ("update_mask.paths[1]", "UNKNOWN_FIELD")),
                (["event_types"], "", ("webhook.event_types", "REQUIRED")),
            ]
            for paths, secret, expected in bad:
                err = await refused(
                    served.webhooks.UpdateWebhook(
                        ws.UpdateWebhookRequest(
                            webhook=webhook_pb2.Webhook(name=name),
                            update_mask=FieldMask(paths=paths),
                            signing_secret=secret,
                        ),
                        metadata=ADMIN,
                    )
                )
                assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and expected in violations(err), paths
            stale = await refused(
                served.webhooks.UpdateWebhook(
                    ws.UpdateWebhookRequest(
                        webhook=webhook_pb2.Webhook(name=name, etag="0" * 16, active=False),
                        update_mask=FieldMask(paths=["active"]),
                    ),
                    metadata=ADMIN,
                )
            )
            assert stale.code() == grpc.StatusCode.ABORTED
            updated = await served.webhooks.UpdateWebhook(
                ws.UpdateWebhookRequest(
                    webhook=webhook_pb2.Webhook(name=name, etag=created.webhook.etag),
                    update_mask=FieldMask(paths=["signing_secret"]),
                    signing_secret=rotated,
                ),
                metadata=ADMIN,
            )
            assert rotated not in str(updated) and updated.webhook.etag != created.webhook.etag
            await served.publish(ticket_event())
            assert await eventually(until(lambda: sink.count() == 1))
            got = sink.requests[0]
            assert verify_signature(rotated.encode(), got.headers["x-bhiv-signature"], got.body, time.time())
            assert not verify_signature(
                SECRET.encode(), got.headers["x-bhiv-signature"], got.body, time.time()
            )


async def test_send_test_event_makes_one_attempt_and_reports_it(tmp_path: Path) -> None:
    url, _ = dead_url()
    with receiver() as sink:
        async with serve_integrations(tmp_path) as served:
            live = await served.webhook(sink.url, active=False)  # active or not
            sent = await served.webhooks.SendTestEvent(
                ws.SendTestEventRequest(name=live.webhook.name), metadata=ADMIN
            )
            assert sent.delivery.status == SUCCEEDED and sent.delivery.attempts == 1
            assert sent.delivery.event_type == "integrations.webhook.test"
            assert sent.delivery.payload["data"]["webhook"] == live.webhook.name
            got = sink.requests[0]
            assert got.headers["x-bhiv-event"] == "integrations.webhook.test"
            assert verify_signature(
                live.signing_secret.encode(), got.headers["x-bhiv-signature"], got.body, time.time()
            )
            dead = await served.webhook(url)
            failed = await served.webhooks.SendTestEvent(
                ws.SendTestEventRequest(name=dead.webhook.name), metadata=ADMIN
            )
            assert failed.delivery.status == FAILED and failed.delivery.attempts == 1
            assert failed.delivery.last_error and failed.delivery.last_response_code == 0
            # Recorded, and not retried: it stays FAILED with its single attempt.
            [listed] = await served.deliveries(dead.webhook.name)
            assert listed.name == failed.delivery.name and listed.status == FAILED and listed.attempts == 1
            missing = await refused(
                served.webhooks.SendTestEvent(ws.SendTestEventRequest(name="webhooks/nope"), metadata=ADMIN)
            )
            assert missing.code() == grpc.StatusCode.NOT_FOUND


async def test_delete_drops_the_webhook_with_its_pending_deliveries(tmp_path: Path) -> None:
    url, port = dead_url()
    async with serve_integrations(tmp_path, WEBHOOK_BACKOFF_SECONDS="0.5") as served:
        created = await served.webhook(url)
        name = created.webhook.name
        await served.publish(ticket_event(), ticket_event())
        assert await eventually(lambda: _all_retrying(served, name, 2))
        await served.webhooks.DeleteWebhook(ws.DeleteWebhookRequest(name=name), metadata=ADMIN)
        for call in (
            served.webhooks.GetWebhook(ws.GetWebhookRequest(name=name), metadata=ADMIN),
            served.webhooks.ListDeliveries(ws.ListDeliveriesRequest(parent=name), metadata=ADMIN),
            served.webhooks.DeleteWebhook(ws.DeleteWebhookRequest(name=name), metadata=ADMIN),
        ):
            assert (await refused(call)).code() == grpc.StatusCode.NOT_FOUND
        with receiver(port=port) as sink:
            # Another webhook on the same port gets its own event, and nothing of the deleted one.
            other = await served.webhook(url)
            await served.publish(ticket_event())
            assert await eventually(lambda: _all_succeeded(served, other.webhook.name, 1))
            assert sink.count() == 1


async def test_redelivery_preconditions(tmp_path: Path) -> None:
    with receiver(hanging=True) as sink:
        async with serve_integrations(tmp_path, WEBHOOK_TIMEOUT_SECONDS="60") as served:
            created = await served.webhook(sink.url)
            name = created.webhook.name
            await served.publish(ticket_event())
            assert await eventually(until(lambda: sink.in_flight == 1))
            [delivery] = await served.deliveries(name)

            async def redeliver(target: str = delivery.name) -> ws.RedeliverDeliveryResponse:
                request = ws.RedeliverDeliveryRequest(name=target)
                response: ws.RedeliverDeliveryResponse = await served.webhooks.RedeliverDelivery(
                    request, metadata=ADMIN
                )
                return response

            async def set_active(active: bool) -> None:
                await served.webhooks.UpdateWebhook(
                    ws.UpdateWebhookRequest(
                        webhook=webhook_pb2.Webhook(name=name, active=active),
                        update_mask=FieldMask(paths=["active"]),
                    ),
                    metadata=ADMIN,
                )

            queued = await refused(redeliver())  # its first attempt is in flight
            assert (
                queued.code() == grpc.StatusCode.FAILED_PRECONDITION and reason(queued) == "DELIVERY_QUEUED"
            )
            sink.release()
            assert await eventually(lambda: _all_succeeded(served, name, 1))
            await set_active(False)
            inactive = await refused(redeliver())
            assert (
                inactive.code() == grpc.StatusCode.FAILED_PRECONDITION
                and reason(inactive) == "WEBHOOK_INACTIVE"
            )
            other = await served.webhook(sink.url)
            missing = await refused(redeliver(delivery.name.replace(name, other.webhook.name)))
            assert missing.code() == grpc.StatusCode.NOT_FOUND
            await set_active(True)
            again = await redeliver()
            assert again.delivery.status == webhook_pb2.DELIVERY_STATUS_PENDING
            assert await eventually(until(lambda: sink.count() == 2))
            [done] = await eventually(lambda: _succeeded_with(served, name, 2))
            assert done.name == delivery.name and [a.number for a in done.attempt_log] == [1, 2]


async def test_access_follows_the_contract(tmp_path: Path) -> None:
    async with serve_integrations(tmp_path) as served:
        listed = await served.webhooks.ListWebhooks(ws.ListWebhooksRequest(), metadata=OPS)
        assert not listed.webhooks
        for metadata in (OPS, SALES):
            err = await refused(
                served.webhooks.CreateWebhook(
                    ws.CreateWebhookRequest(
                        webhook=webhook_pb2.Webhook(
                            target_url="http://127.0.0.1:9/x", event_types=["crm.lead.won"]
                        )
                    ),
                    metadata=metadata,
                )
            )
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        err = await refused(served.webhooks.ListWebhooks(ws.ListWebhooksRequest(), metadata=SALES))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED


def stored_bytes(data_dir: Path) -> bytes:
    """Every byte of integrations' store files (the database and its WAL)."""
    return b"".join(p.read_bytes() for p in data_dir.glob("integrations.db*"))


async def _all_retrying(served: object, webhook: str, count: int) -> bool:
    found = await served.deliveries(webhook, status=webhook_pb2.DELIVERY_STATUS_RETRYING)  # type: ignore[attr-defined]
    return len(found) == count


async def _all_succeeded(served: object, webhook: str, count: int) -> bool:
    found = await served.deliveries(webhook, status=SUCCEEDED)  # type: ignore[attr-defined]
    return len(found) == count


async def _succeeded_with(served: object, webhook: str, attempts: int) -> list[webhook_pb2.Delivery]:
    found = await served.deliveries(webhook, status=SUCCEEDED)  # type: ignore[attr-defined]
    return [d for d in found if d.attempts == attempts]
