"""Webhook deliveries and the outbox relay (issue 13), on a mesh of its own.

The mesh allows outbound calls to 127.0.0.1 (``BHIV_OUTBOUND_ALLOWLIST``) and otherwise runs the
default webhook and relay settings. The receivers are HTTP/1.1 servers in this process on
loopback that answer ``200`` at once and note when each event arrived; their CPU is not counted.

1. Delivery throughput: events published straight to integrations' ``EventService/PublishEvents``
   (admin token, batches of 100, two publishers), every one delivered to the subscribed webhooks:
   deliveries per second from the first publish to the last request received, and integrations'
   CPU per delivery (intake, queueing, signing, the HTTP attempt and its log). Two shapes: one
   webhook (its ``max_concurrent_deliveries`` at the maximum, 16) and eight webhooks (the default
   4 each), the same number of deliveries.
2. Event latency, one event at a time: a ticket opened through the edge until its
   ``crm.ticket.opened`` request reaches the receiver (crm's outbox, the relay, PublishEvents, the
   delivery engine), and an event published straight to PublishEvents until it reaches the
   receiver (intake and delivery only), each from sending the call and from its response (the
   commit lies between): p50/p99. The difference of the medians from the responses is what the
   outbox and its relay add after a commit.

No thresholds: figures to compare between runs. ``python -m bench.integrations`` runs it alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from bench.load import cpu_seconds
from bhiv.crm.v1 import customer_pb2, ticket_pb2
from bhiv.crm.v1 import customer_service_pb2 as cs
from bhiv.crm.v1 import customer_service_pb2_grpc as cs_grpc
from bhiv.crm.v1 import ticket_service_pb2 as ts
from bhiv.crm.v1 import ticket_service_pb2_grpc as ts_grpc
from bhiv.identity.v1 import auth_service_pb2, auth_service_pb2_grpc
from bhiv.integrations.v1 import event_pb2, webhook_pb2
from bhiv.integrations.v1 import event_service_pb2 as es
from bhiv.integrations.v1 import event_service_pb2_grpc as es_grpc
from bhiv.integrations.v1 import webhook_service_pb2 as ws
from bhiv.integrations.v1 import webhook_service_pb2_grpc as ws_grpc
from bhiv_core.events.catalog import envelope
from bhiv_core.mesh import Mesh

DELIVERIES = 2000
"""Deliveries per throughput shape."""
LATENCY_SAMPLES = 60
"""Events per latency measurement."""
BATCH = 100


@dataclass
class Sink:
    """A loopback webhook receiver: answers 200 at once, notes when each event id arrived."""

    arrived: dict[str, list[float]] = field(default_factory=dict)
    subjects: dict[str, float] = field(default_factory=dict)
    count: int = 0
    url: str = ""
    _waiting: dict[str, asyncio.Future[float]] = field(default_factory=dict)
    _enough: tuple[int, asyncio.Event] | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.decode("latin-1").split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            body = await reader.readexactly(length)
            now = time.perf_counter()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            return
        finally:
            writer.close()
        event = json.loads(body)
        self.arrived.setdefault(event["id"], []).append(now)
        self.count += 1
        key = event["data"].get("ticket") or event["id"]
        self.subjects.setdefault(key, now)
        waiter = self._waiting.pop(key, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(now)
        if self._enough is not None and self.count >= self._enough[0]:
            self._enough[1].set()

    def expect(self, key: str) -> asyncio.Future[float]:
        """A future resolved with the arrival time of the event about ``key`` (a ticket or an id)."""
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        if key in self.subjects:  # it came before anyone asked
            future.set_result(self.subjects[key])
        else:
            self._waiting[key] = future
        return future

    def until_count(self, count: int) -> asyncio.Event:
        """An event set once ``count`` requests have arrived in all."""
        self._enough = (count, asyncio.Event())
        if self.count >= count:
            self._enough[1].set()
        return self._enough[1]


@contextlib.asynccontextmanager
async def serving_sink() -> AsyncIterator[Sink]:
    sink = Sink()
    server = await asyncio.start_server(sink.handle, "127.0.0.1", 0, backlog=512)
    sink.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook"
    try:
        yield sink
    finally:
        server.close()


async def _token(mesh: Mesh) -> tuple[tuple[str, str], ...]:
    lines = (mesh.data_dir / "admin-credentials").read_text().splitlines()
    values = dict(line.split("=", 1) for line in lines if "=" in line)
    async with grpc.aio.insecure_channel(mesh.address("identity")) as channel:
        login = await auth_service_pb2_grpc.AuthServiceStub(channel).Login(
            auth_service_pb2.LoginRequest(username=values["username"], password=values["password"])
        )
    return (("authorization", f"Bearer {login.tokens.access_token}"),)


async def _webhooks(
    channel: grpc.aio.Channel,
    metadata: tuple[tuple[str, str], ...],
    url: str,
    types: list[str],
    count: int,
    slots: int,
) -> list[str]:
    stub = ws_grpc.WebhookServiceStub(channel)
    names = []
    for _ in range(count):
        reply = await stub.CreateWebhook(
            ws.CreateWebhookRequest(
                webhook=webhook_pb2.Webhook(
                    target_url=url, event_types=types, active=True, max_concurrent_deliveries=slots
                )
            ),
            metadata=metadata,
        )
        names.append(reply.webhook.name)
    return names


async def _delete(channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...], names: list[str]) -> None:
    stub = ws_grpc.WebhookServiceStub(channel)
    for name in names:
        await stub.DeleteWebhook(ws.DeleteWebhookRequest(name=name), metadata=metadata)


def _lead_won(n: int) -> event_pb2.Event:
    payload = event_pb2.LeadWonEvent(
        lead=f"leads/bench-{n}", customer=f"customers/bench-{n}", company="Bench"
    )
    return envelope(payload, source="crm", subject=f"leads/bench-{n}", time=time.time())


async def _throughput(
    mesh: Mesh, metadata: tuple[tuple[str, str], ...], hooks: int, slots: int
) -> dict[str, float]:
    """``DELIVERIES`` deliveries over ``hooks`` webhooks of ``slots`` each; rate and CPU per delivery."""
    events = DELIVERIES // hooks
    pid = mesh.procs["integrations"].pid
    async with serving_sink() as sink, grpc.aio.insecure_channel(mesh.address("integrations")) as channel:
        names = await _webhooks(channel, metadata, sink.url, ["crm.lead.won"], hooks, slots)
        done = sink.until_count(events * hooks)
        publish = es_grpc.EventServiceStub(channel).PublishEvents
        batches = [[_lead_won(n) for n in range(i, min(events, i + BATCH))] for i in range(0, events, BATCH)]
        cpu0, t0 = cpu_seconds([pid]), time.perf_counter()

        async def publisher(mine: list[list[event_pb2.Event]]) -> None:
            for batch in mine:
                await publish(es.PublishEventsRequest(events=batch), metadata=metadata, timeout=60)

        await asyncio.gather(publisher(batches[0::2]), publisher(batches[1::2]))
        published = time.perf_counter() - t0
        await asyncio.wait_for(done.wait(), timeout=600)
        elapsed, cpu = time.perf_counter() - t0, cpu_seconds([pid]) - cpu0
        await _delete(channel, metadata, names)
    duplicates = sink.count - events * hooks
    figures = {
        "webhooks": float(hooks),
        "max_concurrent_deliveries": float(slots),
        "deliveries": float(sink.count),
        "deliveries_per_second": round(sink.count / elapsed, 1),
        "integrations_cpu_ms_per_delivery": round(cpu / sink.count * 1000, 3),
        "publish_seconds": round(published, 2),
        "duplicates": float(duplicates),
    }
    rate, cpu_ms = figures["deliveries_per_second"], figures["integrations_cpu_ms_per_delivery"]
    print(
        f"  {hooks} webhook(s) x {slots} slots: {sink.count} deliveries in {elapsed:.1f} s = {rate:g}/s, "
        f"integrations CPU {cpu_ms:g} ms per delivery (publishing took {published:.1f} s; "
        f"duplicates {duplicates})",
        flush=True,
    )
    return figures


def _quantiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered), 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, round(0.99 * len(ordered)))], 2),
        "max_ms": round(ordered[-1], 2),
    }


async def _latency(mesh: Mesh, metadata: tuple[tuple[str, str], ...]) -> dict[str, object]:
    """Ticket opened → request received, and PublishEvents → request received, one at a time."""
    async with (
        serving_sink() as sink,
        grpc.aio.insecure_channel(mesh.address("integrations")) as integrations,
        grpc.aio.insecure_channel(mesh.edge_address) as edge,
    ):
        names = await _webhooks(integrations, metadata, sink.url, ["crm.ticket.opened", "crm.lead.won"], 1, 0)
        customer = (
            await cs_grpc.CustomerServiceStub(edge).CreateCustomer(
                cs.CreateCustomerRequest(
                    customer=customer_pb2.Customer(first_name="Bench", email="bench@example.org")
                ),
                metadata=metadata,
            )
        ).customer
        tickets = ts_grpc.TicketServiceStub(edge)
        outbox_sent: list[float] = []
        outbox_returned: list[float] = []
        for n in range(LATENCY_SAMPLES):
            sent = time.perf_counter()
            reply = await tickets.CreateTicket(
                ts.CreateTicketRequest(ticket=ticket_pb2.Ticket(customer=customer.name, title=f"bench {n}")),
                metadata=metadata,
            )
            returned = time.perf_counter()
            arrived = await asyncio.wait_for(sink.expect(reply.ticket.name), 60)
            outbox_sent.append((arrived - sent) * 1000)
            outbox_returned.append((arrived - returned) * 1000)
        publish = es_grpc.EventServiceStub(integrations).PublishEvents
        direct_sent: list[float] = []
        direct_returned: list[float] = []
        for n in range(LATENCY_SAMPLES):
            event = _lead_won(10_000_000 + n)
            arrival = sink.expect(event.id)
            sent = time.perf_counter()
            await publish(es.PublishEventsRequest(events=[event]), metadata=metadata)
            returned = time.perf_counter()
            arrived = await asyncio.wait_for(arrival, 60)
            direct_sent.append((arrived - sent) * 1000)
            direct_returned.append((arrived - returned) * 1000)
        await _delete(integrations, metadata, names)
    report: dict[str, object] = {
        "ticket_sent_to_delivery": _quantiles(outbox_sent),
        "ticket_returned_to_delivery": _quantiles(outbox_returned),
        "event_sent_to_delivery": _quantiles(direct_sent),
        "event_returned_to_delivery": _quantiles(direct_returned),
    }
    for key, value in report.items():
        print(f"  {key}: {value}")
    # After CreateTicket returned, its event still has the relay ahead of it; after PublishEvents
    # returned, the delivery is already under way (negative when it arrived first).
    report["relay_added_p50_ms"] = round(
        statistics.median(outbox_returned) - statistics.median(direct_returned), 2
    )
    print(f"  outbox and relay add (p50, from each call's response): {report['relay_added_p50_ms']} ms")
    return report


async def integrations_benchmarks() -> dict[str, object]:
    """Starts the mesh, runs both measurements; prints and returns the figures."""
    report: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            "BHIV_LOG_LEVEL": "warning",
            "BHIV_OUTBOUND_ALLOWLIST": "127.0.0.1",
            "BHIV_EDGE_RATE_LIMIT_PER_ADDRESS": "1000000",
        }
        async with Mesh.with_free_ports(Path(tmp), env=env, edge_rate_limit=1_000_000) as mesh:
            metadata = await _token(mesh)
            report["one_webhook"] = await _throughput(mesh, metadata, hooks=1, slots=16)
            report["eight_webhooks"] = await _throughput(mesh, metadata, hooks=8, slots=0)
            report["latency"] = await _latency(mesh, metadata)
    return report


if __name__ == "__main__":
    asyncio.run(integrations_benchmarks())
