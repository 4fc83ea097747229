"""Real webhook receivers on loopback and a served integrations for the webhook and event tests.

:func:`receiver` is a threaded HTTP server on 127.0.0.1 that records every POST and answers from a
script of statuses; it can hang (hold every request until released) and counts how many requests
it holds at once. :func:`serve_integrations` runs integrations' own ``definition()`` (its store,
the webhooks part and its delivery engine, started and stopped by the definition's hooks) behind
the real error mapper, RBAC and validation, with the allowlist set to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc

from bhiv.integrations.v1 import event_pb2, webhook_pb2
from bhiv.integrations.v1 import event_service_pb2 as es
from bhiv.integrations.v1 import event_service_pb2_grpc as es_grpc
from bhiv.integrations.v1 import webhook_service_pb2 as ws
from bhiv.integrations.v1 import webhook_service_pb2_grpc as ws_grpc
from bhiv_core.events import catalog
from bhiv_core.interceptors.errors import ErrorMappingInterceptor
from bhiv_core.interceptors.rbac import RbacInterceptor, RolePolicy
from bhiv_core.interceptors.validation import ValidationInterceptor
from bhiv_core.mesh import free_port
from bhiv_core.runtime.chain import chain_order
from bhiv_core.services.integrations.server import definition
from tests.harness import config_for, serving
from tests.services.crm.conftest import AsCaller, as_

ADMIN = as_("admin")
OPS = as_("ops")
SALES = as_("sales")

FAST = {
    "OUTBOUND_ALLOWLIST": "127.0.0.1",
    "WEBHOOK_BACKOFF_SECONDS": "0.05",
    "WEBHOOK_BACKOFF_MAX_SECONDS": "0.2",
    "WEBHOOK_POLL_SECONDS": "0.2",
    "WEBHOOK_TIMEOUT_SECONDS": "5",
}
"""Settings that make retries quick (tests override per case)."""


@dataclass
class Received:
    """One request a receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A loopback HTTP receiver.

    Attributes:
        url: Where it listens.
        statuses: The answers to give, in order; once used up, ``status``.
        status: The answer after ``statuses``.
        hanging: While set, every request waits until it is cleared (or the receiver stops).
        requests: What it received, in order of arrival.
        in_flight: Requests being held now.
        most_in_flight: The most it held at once.

    """

    url: str = ""
    statuses: list[int] = field(default_factory=list)
    status: int = 200
    hanging: bool = False
    requests: list[Received] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0
    lock: threading.Condition = field(default_factory=threading.Condition)
    stopped: bool = False

    def release(self) -> None:
        """Stops hanging: held requests are answered."""
        with self.lock:
            self.hanging = False
            self.lock.notify_all()

    def count(self) -> int:
        """How many requests arrived so far."""
        with self.lock:
            return len(self.requests)


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with receiver.lock:
                receiver.requests.append(
                    Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                )
                status = receiver.statuses.pop(0) if receiver.statuses else receiver.status
                receiver.in_flight += 1
                receiver.most_in_flight = max(receiver.most_in_flight, receiver.in_flight)
                while receiver.hanging and not receiver.stopped:
                    receiver.lock.wait(0.1)
                receiver.in_flight -= 1
            answer = f"answer {status}".encode()
            try:
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "http://127.0.0.1:9/elsewhere")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)
            except OSError:  # the sender gave up (a stopped engine): nothing to answer
                pass

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@contextlib.contextmanager
def receiver(
    statuses: list[int] | None = None, *, status: int = 200, hanging: bool = False, port: int = 0
) -> Iterator[Receiver]:
    """Serves a :class:`Receiver` on 127.0.0.1 (on ``port`` when given) for the block."""
    state = Receiver(statuses=list(statuses or []), status=status, hanging=hanging)
    server = ThreadingHTTPServer(("127.0.0.1", port), _handler(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/bhiv"
    try:
        yield state
    finally:
        with state.lock:
            state.stopped = True
            state.lock.notify_all()
        server.shutdown()
        server.server_close()


def dead_url() -> tuple[str, int]:
    """A URL on a loopback port nothing listens on (connections are refused), and the port."""
    port = free_port()
    return f"http://127.0.0.1:{port}/hooks/bhiv", port


def chain(*_: Any) -> Any:
    return chain_order(
        errors=ErrorMappingInterceptor("integrations.bhiv.core"),
        auth=AsCaller(),
        rbac=RbacInterceptor(RolePolicy()),
        validation=ValidationInterceptor(),
    )


def ticket_event(id: str = "", subject: str = "Printer on fire") -> event_pb2.Event:
    """A ``crm.ticket.resolved`` event."""
    payload = event_pb2.TicketResolvedEvent(ticket="tickets/t1", customer="customers/c1", subject=subject)
    return catalog.envelope(payload, source="crm", subject="tickets/t1", time=time.time(), id=id)


@dataclass
class Served:
    """A served integrations and stubs to it."""

    channel: grpc.aio.Channel
    data_dir: Path
    built: Any

    @property
    def webhooks(self) -> ws_grpc.WebhookServiceAsyncStub:
        return ws_grpc.WebhookServiceStub(self.channel)

    @property
    def events(self) -> es_grpc.EventServiceAsyncStub:
        return es_grpc.EventServiceStub(self.channel)

    async def webhook(
        self, url: str, types: tuple[str, ...] = ("crm.ticket.resolved",), secret: str = "", **fields: Any
    ) -> ws.CreateWebhookResponse:
        """Creates an active webhook as admin; returns the response (with the secret)."""
        fields.setdefault("active", True)
        request = ws.CreateWebhookRequest(
            webhook=webhook_pb2.Webhook(target_url=url, event_types=list(types), **fields),
            signing_secret=secret,
        )
        response: ws.CreateWebhookResponse = await self.webhooks.CreateWebhook(request, metadata=ADMIN)
        return response

    async def publish(self, *events: event_pb2.Event) -> es.PublishEventsResponse:
        """Publishes events as admin."""
        response: es.PublishEventsResponse = await self.events.PublishEvents(
            es.PublishEventsRequest(events=list(events)), metadata=ADMIN
        )
        return response

    async def deliveries(self, webhook: str, **filters: Any) -> list[webhook_pb2.Delivery]:
        """The webhook's deliveries, newest first."""
        listed = await self.webhooks.ListDeliveries(
            ws.ListDeliveriesRequest(parent=webhook, page_size=500, **filters), metadata=ADMIN
        )
        return list(listed.deliveries)


@contextlib.asynccontextmanager
async def serve_integrations(data_dir: Path, **env: str) -> AsyncIterator[Served]:
    """Integrations on ``data_dir`` (its hooks run: store opened, delivery engine started)."""
    config = config_for("integrations", DATA_DIR=str(data_dir), **{**FAST, **env})
    built = definition(config)
    for hook in built.on_start:
        await hook()
    try:
        async with serving(built.servicers, chain=chain, config=config, checks=dict(built.checks)) as (
            _,
            channel,
        ):
            yield Served(channel, data_dir, built)
    finally:
        for hook in built.on_stop:
            await hook()


async def eventually(check: Callable[[], Any], deadline: float = 30.0) -> Any:
    """Polls ``check`` (a coroutine function) until it returns something truthy, or the deadline."""
    end = time.monotonic() + deadline
    while True:
        value = await check()
        if value or time.monotonic() > end:
            return value
        await asyncio.sleep(0.05)


def until(predicate: Callable[[], bool]) -> Callable[[], Any]:
    """A check for :func:`eventually` of a plain predicate."""

    async def check() -> bool:
        return predicate()

    return check
