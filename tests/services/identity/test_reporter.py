"""SentinelReporter against a fake sentinel ThreatService on a real server (with request validation)."""

from __future__ import annotations

import asyncio
import contextvars
import time
from typing import Any

import grpc
import pytest

from bhiv.sentinel.v1 import threat_pb2, threat_service_pb2
from bhiv_core.mesh import free_port
from bhiv_core.services.identity.service import SecurityEvent, SecurityEventKind, SentinelReporter
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
        reporter = SentinelReporter(running.address, token)
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
    for _ in range(5):
        reporter.report(event())
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
    assert "cannot report a security event to sentinel" in caplog.text


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
