"""Probing the edge from a client's side: is this channel served or refused as blocked, and how long
did it take to change.

Polls have a generous deadline and report what they observed (no timed assertions: the
sub-second figure is ``make bench``'s to measure).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import grpc
from google.protobuf import duration_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bhiv.sentinel.v1 import block_pb2
from bhiv.sentinel.v1 import block_service_pb2 as bs
from bhiv.sentinel.v1 import block_service_pb2_grpc as bs_grpc
from tests.e2e.client import CALL_TIMEOUT, Session

WAIT = 30.0
"""Seconds a change may take to show at the edge before a test fails (it takes milliseconds)."""

POLL = 0.02
"""Seconds between two probes; few enough refused probes not to look like a scan themselves."""

BLOCKED = "blocked at the edge"
"""What the edge's refusal of a blocked client says (with until when)."""


async def probe(channel: grpc.aio.Channel) -> tuple[grpc.StatusCode, str]:
    """One health check of sentinel through ``channel``: its code and message."""
    try:
        await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""),
            metadata=(("x-bhiv-service", "sentinel"),),
            timeout=CALL_TIMEOUT,
        )
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


async def refused(channel: grpc.aio.Channel) -> bool:
    """Whether the edge refuses ``channel``'s calls as coming from a blocked address."""
    code, message = await probe(channel)
    return code == grpc.StatusCode.PERMISSION_DENIED and BLOCKED in message


async def served(channel: grpc.aio.Channel) -> bool:
    """Whether the edge serves ``channel``'s calls."""
    return (await probe(channel))[0] == grpc.StatusCode.OK


async def until(check: Callable[[], Awaitable[bool]], what: str, deadline: float = WAIT) -> float:
    """Polls ``check`` until it holds; returns the seconds it took, fails after ``deadline``."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > deadline:
            raise AssertionError(f"not within {deadline:g} s: {what}")
        await asyncio.sleep(POLL)
    return time.monotonic() - start


def block_stub(channel: grpc.aio.Channel) -> bs_grpc.BlockServiceStub:
    """A BlockService stub on ``channel``."""
    return bs_grpc.BlockServiceStub(channel)


async def block_address(
    edge: str, admin: Session, cidr: str, reason: str, ttl_seconds: int | None = None
) -> block_pb2.Block:
    """Blocks ``cidr`` through ``edge`` as ``admin``; returns the block."""
    request = bs.BlockAddressRequest(cidr=cidr, reason=reason)
    if ttl_seconds is not None:
        request.ttl.CopyFrom(duration_pb2.Duration(seconds=ttl_seconds))
    async with grpc.aio.insecure_channel(edge) as channel:
        reply = await block_stub(channel).BlockAddress(request, metadata=admin.metadata, timeout=CALL_TIMEOUT)
    return reply.block


async def active_block(edge: str, admin: Session, address: str) -> block_pb2.Block | None:
    """The active block covering ``address`` (CheckAddress through ``edge``), or None."""
    async with grpc.aio.insecure_channel(edge) as channel:
        reply = await block_stub(channel).CheckAddress(
            bs.CheckAddressRequest(address=address), metadata=admin.metadata, timeout=CALL_TIMEOUT
        )
    return reply.block if reply.blocked else None


async def unblock(edge: str, admin: Session, name: str) -> block_pb2.Block:
    """Lifts the block ``name`` through ``edge``; returns it."""
    async with grpc.aio.insecure_channel(edge) as channel:
        reply = await block_stub(channel).UnblockAddress(
            bs.UnblockAddressRequest(name=name), metadata=admin.metadata, timeout=CALL_TIMEOUT
        )
    return reply.block
