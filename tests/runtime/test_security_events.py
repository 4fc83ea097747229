"""The shared reporter: SentinelReporter against a fake sentinel ThreatService on a real server.

Moved from identity's tests when the reporter became the mesh's (every service reports through it);
the coalescing of floods and the chain's hooks (CallEvents) are tested here too.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from typing import Any

import grpc
import pytest

from bhiv.sentinel.v1 import threat_pb2, threat_service_pb2
from bhiv_core.mesh import free_port
from bhiv_core.runtime.chain import CallInfo
from bhiv_core.runtime.security_events import (
    CallEvents,
    QueuedReporter,
    SecurityEvent,
    SecurityEventKind,
    SentinelReporter,
)
from bhiv_core.runtime.service_credentials import RenewingToken
from bhiv_core.runtime.telemetry import REGISTRY
from bhiv_core.security.principal import Principal
from tests.harness import config_for, serving

THREAT_SERVICE = threat_service_pb2.DESCRIPTOR.services_by_name["ThreatService"]


class FakeSentinel:
    def __init__(self) -> None:
        self.received: list[tuple[Any, dict[str, str]]] = []
        self.arrived = asyncio.Event()

    async def ReportSecurityEvent(
        self, request: Any, context: Any
    ) -> threat_service_pb2.ReportSecurityEventResponse:
        self.received.append((request, dict(context.invocation_metadata())))
        self.arrived.set()
        return threat_service_pb2.ReportSecurityEventResponse()


def event(principal: str = "mallory") -> SecurityEvent:
    return SecurityEvent(
        SecurityEventKind.LOGIN_FAILED,
        "203.0.113.7",
        principal,
        "/bhiv.identity.v1.AuthService/Login",
        "wrong password (1 consecutive failures)",
        1_800_000_000.25,
    )


async def test_events_reach_sentinel_with_a_service_token_and_extra_metadata() -> None:
    sentinel = FakeSentinel()
    minted: list[str] = []

    async def token() -> str:
        minted.append(f"token-{len(minted)}")
        return minted[-1]

    async with serving([(THREAT_SERVICE, sentinel)], config=config_for("sentinel")) as (running, _):
        reporter = SentinelReporter(running.address, RenewingToken(token, 300))
        await reporter.start()
        reporter.report(
            event(), metadata=[("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")]
        )
        reporter.report(event("eve"))
        await reporter.stop(drain_seconds=5)
    assert (reporter.sent, reporter.failed, reporter.dropped) == (2, 0, 0)
    (first, headers), (second, _) = sentinel.received
    assert first.kind == threat_pb2.SECURITY_EVENT_KIND_LOGIN_FAILED
    assert (first.source_address, first.principal, first.method) == (
        "203.0.113.7",
        "mallory",
        "/bhiv.identity.v1.AuthService/Login",
    )
    assert first.detail == "wrong password (1 consecutive failures)"
    assert first.event_time.ToNanoseconds() == 1_800_000_000_250_000_000
    assert headers["authorization"] == "Bearer token-0"
    assert headers["traceparent"].startswith("00-0af7651916cd43dd")
    assert second.principal == "eve"
    assert minted == ["token-0"]  # one token serves many calls


async def test_an_event_is_sent_in_the_context_it_was_reported_in() -> None:
    sentinel = FakeSentinel()
    request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
    seen: list[str] = []

    async def token() -> str:
        seen.append(request_id.get())
        return "t"

    async with serving([(THREAT_SERVICE, sentinel)], config=config_for("sentinel")) as (running, _):
        reporter = SentinelReporter(running.address, token)
        await reporter.start()
        reset = request_id.set("login-call-1")
        reporter.report(event())
        request_id.reset(reset)
        await reporter.stop(drain_seconds=5)
    assert seen == ["login-call-1"]


async def test_a_full_queue_drops_and_counts_without_blocking() -> None:
    async def token() -> str:
        return "t"

    reporter = SentinelReporter("127.0.0.1:1", token, queue_size=2)
    started = time.perf_counter()
    for i in range(5):
        reporter.report(event(f"user{i}"))  # distinct: the same event again would be coalesced
    assert time.perf_counter() - started < 0.05
    assert reporter.dropped == 3


async def test_an_unreachable_sentinel_is_counted_never_raised(caplog: pytest.LogCaptureFixture) -> None:
    async def token() -> str:
        return "t"

    reporter = SentinelReporter(f"127.0.0.1:{free_port()}", token, timeout_seconds=0.5)
    await reporter.start()
    reporter.report(event())
    await reporter.stop(drain_seconds=5)
    assert (reporter.sent, reporter.failed) == (0, 1)
    assert "cannot report a security event" in caplog.text


async def test_a_failing_token_source_is_counted_never_raised() -> None:
    async def token() -> str:
        raise RuntimeError("no key yet")

    reporter = SentinelReporter(f"127.0.0.1:{free_port()}", token)
    await reporter.start()
    reporter.report(event())
    await reporter.stop(drain_seconds=5)
    assert reporter.failed == 1


async def test_a_lent_channel_pool_is_closed_when_the_reporter_stops() -> None:
    closed: list[bool] = []

    async def token() -> str:
        return "token"

    async def close() -> None:
        closed.append(True)

    reporter = SentinelReporter(
        "127.0.0.1:1",
        token,
        channel=lambda: grpc.aio.insecure_channel("127.0.0.1:1"),
        close_channel=close,
    )
    await reporter.start()
    assert closed == []
    await reporter.stop(drain_seconds=0)
    assert closed == [True]


class Recorder:
    """A sender that keeps what it is given."""

    def __init__(self) -> None:
        self.sent: list[SecurityEvent] = []

    async def __call__(self, event: SecurityEvent, metadata: tuple[tuple[str, str], ...]) -> None:
        self.sent.append(event)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def token_failure(address: str = "203.0.113.9") -> SecurityEvent:
    return SecurityEvent(
        SecurityEventKind.TOKEN_INVALID,
        address,
        "",
        "/bhiv.crm.v1.CustomerService/GetCustomer",
        "bad signature",
    )


async def test_a_flood_from_one_address_becomes_a_burst_and_one_summary_per_window() -> None:
    sink, clock = Recorder(), FakeClock()
    reporter = QueuedReporter(sink, window_seconds=1.0, burst=3, service="flood-test", clock=clock)
    await reporter.start()
    for _ in range(500):
        reporter.report(token_failure())
    reporter.report(token_failure("203.0.113.10"))  # another address: its own window
    clock.now += 1.5
    reporter.report(token_failure())  # the next window: the summary of the first goes out before it
    await reporter.stop(drain_seconds=5)
    details = [(e.source_address, e.detail) for e in sink.sent]
    assert details == [
        *[("203.0.113.9", "bad signature")] * 3,
        ("203.0.113.10", "bad signature"),
        ("203.0.113.9", "bad signature (+497 more like it within 1 s)"),
        ("203.0.113.9", "bad signature"),
    ]
    assert (reporter.coalesced, reporter.dropped, reporter.sent) == (497, 0, 6)
    counted = {
        outcome: REGISTRY.get_sample_value(
            "bhiv_security_events_total", {"service": "flood-test", "outcome": outcome}
        )
        for outcome in ("sent", "coalesced", "dropped", "failed")
    }
    assert counted == {"sent": 6, "coalesced": 497, "dropped": 0, "failed": 0}


async def test_a_short_burst_reaches_sentinel_event_by_event() -> None:
    sink = Recorder()
    reporter = QueuedReporter(sink, window_seconds=60.0)  # the default burst: 10
    await reporter.start()
    for _ in range(10):
        reporter.report(token_failure())
    await reporter.stop(drain_seconds=5)
    assert [e.detail for e in sink.sent] == ["bad signature"] * 10
    assert reporter.coalesced == 0


async def test_a_window_still_open_at_stop_sends_its_summary() -> None:
    sink = Recorder()
    reporter = QueuedReporter(sink, window_seconds=60.0, burst=1)
    await reporter.start()
    for _ in range(3):
        reporter.report(token_failure())
    await reporter.stop(drain_seconds=5)
    assert [e.detail for e in sink.sent] == ["bad signature", "bad signature (+2 more like it within 60 s)"]


async def test_too_many_open_windows_drop_and_count_never_block() -> None:
    sink, clock = Recorder(), FakeClock()
    reporter = QueuedReporter(sink, queue_size=4, window_seconds=1.0, clock=clock)
    started = time.perf_counter()
    for i in range(100):
        reporter.report(token_failure(f"203.0.113.{i}"))
    assert time.perf_counter() - started < 0.5
    assert reporter.dropped == 96
    await reporter.start()
    await reporter.stop(drain_seconds=5)
    assert len(sink.sent) == 4


async def test_an_event_without_a_time_is_stamped_when_reported() -> None:
    sink = Recorder()
    reporter = QueuedReporter(sink, window_seconds=1.0)
    await reporter.start()
    before = time.time()
    reporter.report(token_failure())
    await reporter.stop(drain_seconds=5)
    assert before <= sink.sent[0].event_time <= time.time()


class ListReporter:
    def __init__(self) -> None:
        self.events: list[SecurityEvent] = []

    def report(self, event: SecurityEvent, *, metadata: Any = ()) -> None:
        self.events.append(event)


def call(peer: str, headers: dict[str, str] | None = None) -> CallInfo:
    return CallInfo("/bhiv.crm.v1.CustomerService/DeleteCustomer", None, peer, headers or {}, 0.0)


def test_the_chain_reports_a_refused_token_with_its_reason_and_never_the_token() -> None:
    sink = ListReporter()
    CallEvents(sink).token_refused(
        call("ipv4:127.0.0.9:4000", {"authorization": "Bearer abc.def"}), "expired"
    )
    [reported] = sink.events
    assert reported.kind is SecurityEventKind.TOKEN_INVALID
    assert (reported.source_address, reported.principal, reported.method) == (
        "127.0.0.9",
        "",
        "/bhiv.crm.v1.CustomerService/DeleteCustomer",
    )
    assert reported.detail == "token refused: expired"
    assert "abc.def" not in repr(reported)


def test_the_chain_reports_a_denied_call_with_the_caller_and_the_permission() -> None:
    sink = ListReporter()
    principal = Principal("users/u1", "support")
    CallEvents(sink).denied(call("ipv6:[::1]:4000"), principal, "crm.customers.delete")
    [reported] = sink.events
    assert reported.kind is SecurityEventKind.PERMISSION_DENIED
    assert (reported.source_address, reported.principal) == ("::1", "users/u1")
    assert reported.detail == "support lacks crm.customers.delete"


def test_a_missing_token_and_a_call_without_an_ip_are_not_reported() -> None:
    sink = ListReporter()
    events = CallEvents(sink)
    events.token_refused(call("ipv4:127.0.0.9:4000"), "missing")
    events.token_refused(call("unix:/tmp/socket"), "expired")
    events.denied(call("unix:/tmp/socket"), Principal("users/u1", "support"), "crm.customers.delete")
    assert sink.events == []
