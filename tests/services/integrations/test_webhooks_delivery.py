"""Webhook deliveries to real receivers on loopback: signatures, retries, dead letter, restarts, limits.

Integrations runs with its own ``definition()`` (store, webhooks part, delivery engine) behind the
real error mapper, RBAC and validation; events come in through EventService/PublishEvents as a
relay sends them. Nothing is timed: each test polls for a state with a generous deadline.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from bhiv.integrations.v1 import webhook_pb2
from bhiv.integrations.v1 import webhook_service_pb2 as ws
from bhiv_core.events import catalog
from bhiv_core.outbound.signatures import verify_signature
from bhiv_core.resources import Cmp
from bhiv_core.runtime.contracts import services_of_package
from bhiv_core.services.integrations.resources import make_integrations_store
from bhiv_core.services.integrations.webhooks.delivery import EVENT_RETENTION_SECONDS, PARKED
from bhiv_core.services.integrations.webhooks.resources import QUEUE
from bhiv_core.services.integrations.webhooks.service import WebhookPart
from tests.harness import config_for, serving
from tests.services.integrations.webhook_receivers import (
    ADMIN,
    FAST,
    Served,
    chain,
    dead_url,
    eventually,
    receiver,
    serve_integrations,
    ticket_event,
    until,
)

PENDING = webhook_pb2.DELIVERY_STATUS_PENDING
SUCCEEDED = webhook_pb2.DELIVERY_STATUS_SUCCEEDED
FAILED = webhook_pb2.DELIVERY_STATUS_FAILED
RETRYING = webhook_pb2.DELIVERY_STATUS_RETRYING


async def test_a_delivery_arrives_signed_with_the_documented_headers(tmp_path: Path) -> None:
    with receiver() as sink:
        async with serve_integrations(tmp_path) as served:
            created = await served.webhook(sink.url)
            secret = created.signing_secret.encode()
            event = ticket_event()
            published = await served.publish(event)
            assert (published.accepted, published.duplicates, published.deliveries) == (1, 0, 1)
            assert await eventually(until(lambda: sink.count() == 1))
            delivered = await eventually(lambda: _with_status(served, created.webhook.name, SUCCEEDED))
            got = sink.requests[0]
            assert got.path == "/hooks/bhiv"
            assert verify_signature(secret, got.headers["x-bhiv-signature"], got.body, time.time())
            assert not verify_signature(b"x" * 64, got.headers["x-bhiv-signature"], got.body, time.time())
            assert got.headers["content-type"] == "application/json"
            assert got.headers["x-bhiv-event"] == "crm.ticket.resolved"
            assert got.headers["x-bhiv-event-id"] == event.id
            assert got.headers["x-bhiv-delivery"] == delivered.name
            assert got.body == catalog.body_of(event)
            assert json.loads(got.body)["data"]["subject"] == "Printer on fire"
            assert delivered.name.startswith(created.webhook.name + "/deliveries/")
            assert (delivered.attempts, delivered.last_response_code, delivered.last_error) == (1, 200, "")
            assert delivered.event_id == event.id and delivered.event_type == "crm.ticket.resolved"
            assert delivered.payload["data"]["ticket"] == "tickets/t1"
            [attempt] = delivered.attempt_log
            assert (attempt.number, attempt.response_code, attempt.response_excerpt) == (1, 200, "answer 200")
            assert attempt.error == "" and attempt.HasField("latency") and attempt.HasField("start_time")
            assert not delivered.HasField("next_attempt_time")


async def test_a_receiver_failing_twice_then_succeeding_shows_three_attempts(tmp_path: Path) -> None:
    with receiver([500, 503]) as sink:
        async with serve_integrations(tmp_path) as served:
            created = await served.webhook(sink.url)
            event = ticket_event()
            await served.publish(event)
            delivered = await eventually(lambda: _with_status(served, created.webhook.name, SUCCEEDED))
            assert delivered, "the delivery never succeeded"
            assert delivered.attempts == 3
            assert [a.number for a in delivered.attempt_log] == [1, 2, 3]
            assert [a.response_code for a in delivered.attempt_log] == [500, 503, 200]
            assert [a.error for a in delivered.attempt_log] == ["HTTP 500", "HTTP 503", ""]
            assert delivered.attempt_log[0].response_excerpt == "answer 500"
            # Every attempt is signed afresh and carries the same event id for the receiver to dedupe.
            assert len(sink.requests) == 3
            for got in sink.requests:
                assert verify_signature(
                    created.signing_secret.encode(), got.headers["x-bhiv-signature"], got.body, time.time()
                )
                assert got.headers["x-bhiv-event-id"] == event.id
                assert got.body == sink.requests[0].body


async def test_a_dead_receiver_is_dead_lettered_and_redelivery_succeeds_once_it_is_up(tmp_path: Path) -> None:
    url, port = dead_url()
    async with serve_integrations(tmp_path, WEBHOOK_MAX_ATTEMPTS="3") as served:
        created = await served.webhook(url)
        await served.publish(ticket_event())
        failed = await eventually(lambda: _with_status(served, created.webhook.name, FAILED))
        assert failed, "the delivery was never dead-lettered"
        assert failed.attempts == 3 and len(failed.attempt_log) == 3
        assert failed.last_response_code == 0 and "127.0.0.1" in failed.last_error
        assert not failed.HasField("next_attempt_time")
        with receiver(port=port) as sink:
            again = await served.webhooks.RedeliverDelivery(
                ws.RedeliverDeliveryRequest(name=failed.name), metadata=ADMIN
            )
            assert again.delivery.status == PENDING and again.delivery.attempts == 3
            delivered = await eventually(lambda: _with_status(served, created.webhook.name, SUCCEEDED))
            assert delivered, "the redelivery never succeeded"
            assert delivered.attempts == 4  # attempts keep counting across redeliveries
            assert [a.number for a in delivered.attempt_log] == [1, 2, 3, 4]
            assert sink.count() == 1


async def test_a_redirect_is_a_failed_attempt(tmp_path: Path) -> None:
    with receiver(status=302) as sink:
        async with serve_integrations(tmp_path, WEBHOOK_MAX_ATTEMPTS="2") as served:
            created = await served.webhook(sink.url)
            await served.publish(ticket_event())
            failed = await eventually(lambda: _with_status(served, created.webhook.name, FAILED))
            assert failed and failed.last_response_code == 302
            assert "redirects are not followed" in failed.last_error
            assert sink.count() == 2  # the Location was never followed


async def test_a_restart_resumes_retrying_and_in_flight_deliveries(tmp_path: Path) -> None:
    with receiver(status=500) as failing, receiver(hanging=True) as hanging:
        async with serve_integrations(tmp_path, WEBHOOK_BACKOFF_SECONDS="0.5") as served:
            retried = await served.webhook(failing.url)
            held = await served.webhook(hanging.url, types=("crm.ticket.resolved",))
            await served.publish(ticket_event())
            assert await eventually(lambda: _with_status(served, retried.webhook.name, RETRYING))
            assert await eventually(until(lambda: hanging.count() == 1))
        # Stopped mid-attempt: the held delivery was given back, not lost nor counted.
        failing.status = 200
        hanging.release()
        async with serve_integrations(tmp_path) as restarted:
            first = await eventually(lambda: _with_status(restarted, retried.webhook.name, SUCCEEDED))
            second = await eventually(lambda: _with_status(restarted, held.webhook.name, SUCCEEDED))
            assert first and first.attempts >= 2
            assert second and second.attempts == 1
            assert hanging.count() == 2  # sent again after the restart: at least once, same event id
            assert (
                hanging.requests[0].headers["x-bhiv-event-id"]
                == hanging.requests[1].headers["x-bhiv-event-id"]
            )


async def test_a_claim_left_by_a_killed_process_is_retried_after_its_lease(tmp_path: Path) -> None:
    with receiver() as sink:
        config = config_for("integrations", DATA_DIR=str(tmp_path), **FAST)
        store = make_integrations_store(config)
        await store.open()
        try:
            dying = WebhookPart.build(config, store)
            # Its servicers without its engine: the delivery is queued and stays so.
            servicers = [
                (s, dying.servicers[s.name])
                for s in services_of_package("bhiv.integrations.v1")
                if s.name in dying.servicers
            ]
            async with serving(servicers, chain=chain, config=config) as (_, channel):
                served = Served(channel, tmp_path, None)
                await served.webhook(sink.url)
                await served.publish(ticket_event())
            [entry] = await store.find(QUEUE, [], after=None, limit=10)
            # The process claims it and is SIGKILLed before it records the attempt.
            now = time.time()
            assert await dying.engine._claim(entry.id, str(entry.value("webhook")), 4, now) is not None
            # Another process, while the lease is live: nothing to start.
            alive = WebhookPart.build(config, store)
            await alive.engine.run_round()
            assert not alive.engine._inflight and sink.count() == 0
            # Once the lease has run out, the delivery is attempted and finished.
            lease = dying.engine.config.lease_seconds
            later = WebhookPart.build(config, store, clock=lambda: time.time() + lease + 1)
            await later.engine.run_round()
            assert len(later.engine._inflight) == 1
            assert await eventually(until(lambda: sink.count() == 1))
            assert await eventually(lambda: _queue_empty(store))
            await later.engine.stop()
        finally:
            await store.close()


async def test_a_hanging_receiver_does_not_delay_another_webhook(tmp_path: Path) -> None:
    with receiver(hanging=True) as slow, receiver() as fast:
        async with serve_integrations(tmp_path, WEBHOOK_TIMEOUT_SECONDS="60") as served:
            stuck = await served.webhook(slow.url, max_concurrent_deliveries=2)
            await served.publish(*(ticket_event() for _ in range(8)))
            assert await eventually(until(lambda: slow.in_flight == 2))
            other = await served.webhook(fast.url)
            await served.publish(ticket_event())
            delivered = await eventually(lambda: _with_status(served, other.webhook.name, SUCCEEDED))
            assert delivered, "another webhook's delivery waited behind the hanging receiver"
            assert slow.in_flight == 2 and slow.count() == 2  # still held: nothing of it finished
            slow.release()
            done = await eventually(
                lambda: _count_status(served, stuck.webhook.name, SUCCEEDED, 9), deadline=60
            )
            assert done, "the slow webhook's deliveries did not all arrive"
            assert slow.most_in_flight == 2  # its limit, reached and never exceeded
            assert slow.count() == 9


async def _with_status(served: object, webhook: str, status: int) -> webhook_pb2.Delivery | None:
    for delivery in await served.deliveries(webhook):  # type: ignore[attr-defined]
        if delivery.status == status:
            return delivery
    return None


async def _count_status(served: object, webhook: str, status: int, count: int) -> bool:
    found = await served.deliveries(webhook, status=status)  # type: ignore[attr-defined]
    return len(found) >= count


async def _queue_empty(store: object) -> bool:
    return not await store.find(QUEUE, [Cmp("due", ">=", 0.0)], after=None, limit=1)  # type: ignore[attr-defined]


async def test_an_inactive_webhook_keeps_its_deliveries_parked_until_reactivated(tmp_path: Path) -> None:
    url, port = dead_url()
    config = config_for("integrations", DATA_DIR=str(tmp_path), **FAST)
    async with serve_integrations(tmp_path, WEBHOOK_BACKOFF_SECONDS="0.3") as served:
        created = await served.webhook(url)
        name = created.webhook.name
        await served.publish(ticket_event(), ticket_event())
        assert await eventually(lambda: _count_status(served, name, RETRYING, 2))
        await _set_active(served, name, False)
        store = make_integrations_store(config)
        await store.open()
        try:
            assert await eventually(lambda: _all_parked(store, 2))
        finally:
            await store.close()
        with receiver(port=port) as sink:
            await _set_active(served, name, True)
            assert await eventually(lambda: _count_status(served, name, SUCCEEDED, 2))
            assert sink.count() == 2


async def test_accepted_event_ids_are_forgotten_after_the_retention(tmp_path: Path) -> None:
    config = config_for("integrations", DATA_DIR=str(tmp_path), **FAST)
    event = ticket_event()
    async with serve_integrations(tmp_path) as served:
        assert (await served.publish(event)).accepted == 1
        assert (await served.publish(event)).duplicates == 1
        store = make_integrations_store(config)
        await store.open()
        try:
            now = WebhookPart.build(config, store)
            assert await now.engine.prune_events() == 0
            later = WebhookPart.build(config, store, clock=lambda: time.time() + EVENT_RETENTION_SECONDS + 60)
            assert await later.engine.prune_events() == 1
        finally:
            await store.close()
        again = await served.publish(event)
        assert (again.accepted, again.duplicates) == (1, 0)


async def _set_active(served: Served, name: str, active: bool) -> None:
    await served.webhooks.UpdateWebhook(
        ws.UpdateWebhookRequest(
            webhook=webhook_pb2.Webhook(name=name, active=active), update_mask={"paths": ["active"]}
        ),
        metadata=ADMIN,
    )


async def _all_parked(store: object, count: int) -> bool:
    entries = await store.find(QUEUE, [], after=None, limit=100)  # type: ignore[attr-defined]
    return len(entries) == count and all(float(e.value("due")) >= PARKED for e in entries)


async def test_a_secret_sealed_under_another_key_fails_the_attempt_without_sending(tmp_path: Path) -> None:
    with receiver() as sink:
        async with serve_integrations(tmp_path) as served:
            created = await served.webhook(sink.url)
        replace_key(tmp_path / "integrations-kek")
        async with serve_integrations(tmp_path, WEBHOOK_MAX_ATTEMPTS="1") as served:
            await served.publish(ticket_event())
            failed = await eventually(lambda: _with_status(served, created.webhook.name, FAILED))
            assert failed and "does not open" in failed.last_error
            assert sink.count() == 0


def replace_key(path: Path) -> None:
    """Overwrites the key-encryption key with another (an operator pointing at the wrong file)."""
    path.write_bytes(os.urandom(32))
