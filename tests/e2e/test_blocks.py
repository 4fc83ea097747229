"""Blocks through the real edge: sentinel's BlockService, and Envoy refusing a blocked client.

Clients act as other loopback addresses (127.0.0.5x) through :mod:`tests.source_address`; the
tests' own calls come from 127.0.0.1, which is allowlisted. Every block a test makes is lifted or
expires before it ends, so the shared mesh is left as it was.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bhiv.sentinel.v1 import block_pb2
from bhiv.sentinel.v1 import block_service_pb2 as bs
from bhiv.sentinel.v1 import block_service_pb2_grpc as bs_grpc
from bhiv_core.mesh import Mesh
from tests.e2e.client import CALL_TIMEOUT, Session, create_user
from tests.source_address import channel_from

pytestmark = pytest.mark.asyncio(loop_scope="session")

WAIT = 15.0
"""Seconds a change may take to reach Envoy before the test fails (it takes milliseconds)."""


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while not await check():
        if loop.time() > deadline:
            pytest.fail(f"not within {WAIT} s: {what}")
        await asyncio.sleep(0.02)


async def health(channel: grpc.aio.Channel) -> grpc.StatusCode:
    """The code of a health check through ``channel`` (OK when served)."""
    try:
        await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""),
            metadata=(("x-bhiv-service", "sentinel"),),
            timeout=CALL_TIMEOUT,
        )
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def refused(channel: grpc.aio.Channel) -> bool:
    return await health(channel) == grpc.StatusCode.PERMISSION_DENIED


async def served(channel: grpc.aio.Channel) -> bool:
    return await health(channel) == grpc.StatusCode.OK


async def curl(*args: str, data: bytes = b"") -> str:
    """curl's output (without blocking the loop the tests' own clients run on)."""
    proc = await asyncio.create_subprocess_exec(
        "curl", "-s", *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(data), CALL_TIMEOUT)
    return out.decode(errors="replace")


def blocks(channel: grpc.aio.Channel) -> bs_grpc.BlockServiceStub:
    return bs_grpc.BlockServiceStub(channel)


async def block(
    mesh: Mesh, admin: Session, cidr: str, ttl: int | None = None, **fields: str
) -> block_pb2.Block:
    request = bs.BlockAddressRequest(cidr=cidr, reason=fields.pop("reason", "e2e test"), **fields)
    if ttl is not None:
        request.ttl.CopyFrom(duration_pb2.Duration(seconds=ttl))
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        reply = await blocks(channel).BlockAddress(request, metadata=admin.metadata, timeout=CALL_TIMEOUT)
    return reply.block


async def unblock(mesh: Mesh, admin: Session, name: str) -> block_pb2.Block:
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        reply = await blocks(channel).UnblockAddress(
            bs.UnblockAddressRequest(name=name), metadata=admin.metadata, timeout=CALL_TIMEOUT
        )
    return reply.block


async def test_a_block_refuses_open_and_new_connections_and_unblocking_restores_them(
    mesh: Mesh, admin: Session
) -> None:
    async with channel_from("127.0.0.51", mesh.edge_address) as open_channel:
        assert await served(open_channel)
        created = await block(mesh, admin, "127.0.0.51")
        assert created.active and created.cidr == "127.0.0.51/32"
        assert created.source == block_pb2.BLOCK_SOURCE_MANUAL
        assert created.created_by.startswith("users/")
        assert not created.HasField("expire_time")
        await eventually(lambda: refused(open_channel), "the open connection is refused")
        with pytest.raises(grpc.aio.AioRpcError) as refusal:
            await health_pb2_grpc.HealthStub(open_channel).Check(
                health_pb2.HealthCheckRequest(),
                metadata=(("x-bhiv-service", "sentinel"),),
                timeout=CALL_TIMEOUT,
            )
        assert refusal.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "blocked at the edge" in (refusal.value.details() or "")
        assert "blocked-until-lifted" in (refusal.value.details() or "")
        async with channel_from("127.0.0.51", mesh.edge_address) as new_channel:
            assert await refused(new_channel)
        # Another address, and the tests' own 127.0.0.1, go on.
        async with channel_from("127.0.0.56", mesh.edge_address) as other:
            assert await served(other)
        async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
            check = await blocks(channel).CheckAddress(
                bs.CheckAddressRequest(address="127.0.0.51"), metadata=admin.metadata, timeout=CALL_TIMEOUT
            )
        assert check.blocked and check.block.name == created.name
        lifted = await unblock(mesh, admin, created.name)
        assert not lifted.active and lifted.HasField("lift_time") and lifted.lifted_by == created.created_by
        await eventually(lambda: served(open_channel), "the open connection is served again")


async def test_a_block_with_a_ttl_says_until_when_and_expires_in_envoy(mesh: Mesh, admin: Session) -> None:
    async with channel_from("127.0.0.52", mesh.edge_address) as channel:
        created = await block(mesh, admin, "127.0.0.52", ttl=2)
        assert created.expire_time.seconds - created.create_time.seconds in (1, 2)
        await eventually(lambda: refused(channel), "the block applies")
        with pytest.raises(grpc.aio.AioRpcError) as refusal:
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(),
                metadata=(("x-bhiv-service", "sentinel"),),
                timeout=CALL_TIMEOUT,
            )
        until = created.expire_time.ToDatetime().strftime("%Y-%m-%dT%H:%M:%SZ")
        assert f"blocked-until-{until}" in (refusal.value.details() or "")
        # Nobody lifts it: its expiry does.
        await eventually(lambda: served(channel), "the expired block is gone from Envoy")
    async with grpc.aio.insecure_channel(mesh.edge_address) as ch:
        got = await blocks(ch).GetBlock(bs.GetBlockRequest(name=created.name), metadata=admin.metadata)
        assert not got.block.active and not got.block.HasField("lift_time")
        active = await blocks(ch).ListBlocks(bs.ListBlocksRequest(active_only=True), metadata=admin.metadata)
        assert created.name not in {b.name for b in active.blocks}
        everything = await blocks(ch).ListBlocks(bs.ListBlocksRequest(), metadata=admin.metadata)
        assert created.name in {b.name for b in everything.blocks}
        with pytest.raises(grpc.aio.AioRpcError) as again:
            await blocks(ch).UnblockAddress(
                bs.UnblockAddressRequest(name=created.name), metadata=admin.metadata
            )
        assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def jwks_fetches(mesh: Mesh) -> tuple[int, int]:
    """The edge's JWKS fetches so far: (succeeded, failed), from Envoy's admin stats."""
    stats = await curl(f"http://127.0.0.1:{mesh.admin_port}/stats?filter=jwks_fetch")
    counts = {"success": 0, "failed": 0}
    for line in stats.splitlines():
        name, _, value = line.partition(": ")
        for kind in counts:
            if name.endswith(f"jwks_fetch_{kind}"):
                counts[kind] += int(value)
    return counts["success"], counts["failed"]


async def _more_fetches(mesh: Mesh, before: tuple[int, int]) -> bool:
    succeeded, failed = await jwks_fetches(mesh)
    assert failed == before[1], "a JWKS fetch failed while 127.0.0.0/8 was blocked"
    return succeeded >= before[0] + 2


async def test_a_range_blocks_its_addresses_but_never_the_allowlist(mesh: Mesh, admin: Session) -> None:
    created = await block(mesh, admin, "127.0.0.0/8")
    try:
        async with channel_from("127.0.0.53", mesh.edge_address) as channel:
            await eventually(lambda: refused(channel), "the range applies")
        # 127.0.0.1 is allowlisted: the tests' own calls, and the edge's fetch of its JWKS, go on.
        async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
            assert await served(channel)
            check = await blocks(channel).CheckAddress(
                bs.CheckAddressRequest(address="127.0.0.1"), metadata=admin.metadata, timeout=CALL_TIMEOUT
            )
            assert not check.blocked
            check = await blocks(channel).CheckAddress(
                bs.CheckAddressRequest(address="127.0.0.53"), metadata=admin.metadata, timeout=CALL_TIMEOUT
            )
            assert check.blocked and check.block.name == created.name
        # The edge fetches its JWKS through its own listener (every second here): from 127.0.0.1,
        # not from the services' source address 127.0.0.2 that the range covers.
        before = await jwks_fetches(mesh)
        await eventually(
            lambda: _more_fetches(mesh, before), "the edge fetches its JWKS twice more, and never fails"
        )
        # The most specific block answers CheckAddress.
        inner = await block(mesh, admin, "127.0.0.53", ttl=600)
        async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
            check = await blocks(channel).CheckAddress(
                bs.CheckAddressRequest(address="127.0.0.53"), metadata=admin.metadata, timeout=CALL_TIMEOUT
            )
        assert check.block.name == inner.name
        await unblock(mesh, admin, inner.name)
    finally:
        await unblock(mesh, admin, created.name)
    async with channel_from("127.0.0.53", mesh.edge_address) as channel:
        await eventually(lambda: served(channel), "the range is lifted")


@pytest.mark.parametrize("cidr", ["127.0.0.1", "127.0.0.1/32", "::1"])
async def test_an_allowlisted_address_cannot_be_blocked(mesh: Mesh, admin: Session, cidr: str) -> None:
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refusal:
            await blocks(channel).BlockAddress(
                bs.BlockAddressRequest(cidr=cidr, reason="no"), metadata=admin.metadata, timeout=CALL_TIMEOUT
            )
    assert refusal.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "allowlisted" in (refusal.value.details() or "")


async def test_grpc_web_and_json_callers_read_the_refusal(mesh: Mesh, admin: Session) -> None:
    created = await block(mesh, admin, "127.0.0.54", ttl=600)
    try:
        async with channel_from("127.0.0.54", mesh.edge_address) as channel:
            await eventually(lambda: refused(channel), "the block applies")
        url = f"http://{mesh.edge_address}/grpc.health.v1.Health/Check"
        web = (
            await curl(
                "-i", "--interface", "127.0.0.54", "-X", "POST", url,
                "-H", "content-type: application/grpc-web+proto", "-H", "x-grpc-web: 1",
                "-H", "x-bhiv-service: sentinel", "--data-binary", "@-",
                data=b"\x00\x00\x00\x00\x00",
            )
        ).lower()  # fmt: skip
        # HTTP 403 (PERMISSION_DENIED to gRPC-web clients too), the status and message in its headers.
        assert web.startswith("http/1.1 403") and "grpc-status: 7" in web and "blocked at the edge" in web
        json_url = f"http://{mesh.edge_address}/bhiv.sentinel.v1.BlockService/ListBlocks"
        body = await curl(
            "-w", "\n%{http_code}", "--interface", "127.0.0.54", "-X", "POST", json_url,
            "-H", "content-type: application/json", "-d", "{}",
        )  # fmt: skip
        assert (
            body.endswith("\n403") and '"code":7' in body.replace(" ", "") and "blocked at the edge" in body
        )
    finally:
        await unblock(mesh, admin, created.name)


async def test_a_restarted_sentinel_keeps_its_blocks_and_envoy_keeps_then_reconverges(
    mesh: Mesh, admin: Session
) -> None:
    created = await block(mesh, admin, "127.0.0.55", ttl=3600, request_id="restart-test")
    async with channel_from("127.0.0.55", mesh.edge_address) as channel:
        await eventually(lambda: refused(channel), "the block applies")
        mesh.kill("sentinel")
        # Envoy keeps the last list while sentinel is away.
        assert await refused(channel)
        await mesh.restart("sentinel")
        async with grpc.aio.insecure_channel(mesh.edge_address) as ch:
            got = await blocks(ch).GetBlock(bs.GetBlockRequest(name=created.name), metadata=admin.metadata)
            assert got.block.active
            # The idempotency receipt survived too: a retry gets the same block.
            again = await block(mesh, admin, "127.0.0.55", ttl=3600, request_id="restart-test")
            assert again.name == created.name
        assert await refused(channel)
        await unblock(mesh, admin, created.name)
        # Lifting it reaches Envoy: it subscribed to the restarted sentinel.
        await eventually(lambda: served(channel), "Envoy follows the restarted sentinel")


async def test_only_the_edge_may_subscribe_to_the_deny_list(mesh: Mesh) -> None:
    from bhiv_core.services.sentinel.blocks.xds import ADS_METHOD

    async with grpc.aio.insecure_channel(f"{mesh.host}:{mesh.xds_port}") as channel:
        call = channel.stream_stream(ADS_METHOD)(iter([b""]), timeout=CALL_TIMEOUT)
        with pytest.raises(grpc.aio.AioRpcError) as refusal:
            async for _ in call:
                pass
    assert refusal.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_blocks_need_the_blocks_permissions(mesh: Mesh, admin: Session) -> None:
    sales = await create_user(mesh, admin, "sales")
    ops = await create_user(mesh, admin, "ops")
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refusal:
            await blocks(channel).ListBlocks(
                bs.ListBlocksRequest(), metadata=sales.metadata, timeout=CALL_TIMEOUT
            )
        assert refusal.value.code() == grpc.StatusCode.PERMISSION_DENIED
        await blocks(channel).ListBlocks(bs.ListBlocksRequest(), metadata=ops.metadata, timeout=CALL_TIMEOUT)


def _violations(error: grpc.aio.AioRpcError) -> set[str]:
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad = error_details_pb2.BadRequest()
                    detail.Unpack(bad)
                    return {v.field for v in bad.field_violations}
    return set()


HOSTILE: list[tuple[str, object, grpc.StatusCode, str]] = [
    (
        "BlockAddress",
        bs.BlockAddressRequest(cidr="not an ip", reason="x"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "cidr",
    ),
    (
        "BlockAddress",
        bs.BlockAddressRequest(cidr="203.0.113.7/24", reason="x"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "cidr",
    ),
    (
        "BlockAddress",
        bs.BlockAddressRequest(cidr="203.0.113.0/33", reason="x"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "cidr",
    ),
    (
        "BlockAddress",
        bs.BlockAddressRequest(cidr="2001:db8::1/48", reason="x"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "cidr",
    ),
    (
        "BlockAddress",
        bs.BlockAddressRequest(cidr="2001:db8::/129", reason="x"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "cidr",
    ),
    (
        "BlockAddress",
        bs.BlockAddressRequest(cidr="::ffff:203.0.113.7", reason="x"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "cidr",
    ),
    (
        "BlockAddress",
        bs.BlockAddressRequest(cidr="203.0.113.07", reason="x"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "cidr",
    ),
    (
        "BlockAddress",
        bs.BlockAddressRequest(cidr="1" * 60, reason="x"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "cidr",
    ),
    ("BlockAddress", bs.BlockAddressRequest(cidr="203.0.113.7"), grpc.StatusCode.INVALID_ARGUMENT, "reason"),
    (
        "BlockAddress",
        bs.BlockAddressRequest(cidr="203.0.113.7", reason="x" * 100_000),
        grpc.StatusCode.INVALID_ARGUMENT,
        "reason",
    ),
    (
        "BlockAddress",
        bs.BlockAddressRequest(cidr="203.0.113.7", reason="x", ttl=duration_pb2.Duration(seconds=0)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "ttl",
    ),
    (
        "BlockAddress",
        bs.BlockAddressRequest(cidr="203.0.113.7", reason="x", ttl=duration_pb2.Duration(seconds=-5)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "ttl",
    ),
    (
        "BlockAddress",
        bs.BlockAddressRequest(cidr="203.0.113.7", reason="x", ttl=duration_pb2.Duration(seconds=2592001)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "ttl",
    ),
    (
        "BlockAddress",
        bs.BlockAddressRequest(cidr="203.0.113.7", reason="x", ttl=duration_pb2.Duration(seconds=2**62)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "ttl",
    ),
    (
        "BlockAddress",
        bs.BlockAddressRequest(
            cidr="203.0.113.7", reason="x", ttl=duration_pb2.Duration(seconds=5, nanos=-3)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "ttl",
    ),
    (
        "BlockAddress",
        bs.BlockAddressRequest(cidr="203.0.113.7", reason="x", incident="incidents/nope"),
        grpc.StatusCode.NOT_FOUND,
        "",
    ),
    (
        "BlockAddress",
        bs.BlockAddressRequest(cidr="203.0.113.7", reason="x", incident="cases/1"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "incident",
    ),
    (
        "BlockAddress",
        bs.BlockAddressRequest(cidr="203.0.113.7", reason="x", request_id="r" * 65),
        grpc.StatusCode.INVALID_ARGUMENT,
        "request_id",
    ),
    ("UnblockAddress", bs.UnblockAddressRequest(name="blocks/nope"), grpc.StatusCode.NOT_FOUND, ""),
    ("UnblockAddress", bs.UnblockAddressRequest(name="alerts/x"), grpc.StatusCode.INVALID_ARGUMENT, "name"),
    ("UnblockAddress", bs.UnblockAddressRequest(), grpc.StatusCode.INVALID_ARGUMENT, "name"),
    ("GetBlock", bs.GetBlockRequest(name="blocks/nope"), grpc.StatusCode.NOT_FOUND, ""),
    ("GetBlock", bs.GetBlockRequest(name="blocks/../x"), grpc.StatusCode.INVALID_ARGUMENT, "name"),
    ("ListBlocks", bs.ListBlocksRequest(page_size=-1), grpc.StatusCode.INVALID_ARGUMENT, "page_size"),
    (
        "ListBlocks",
        bs.ListBlocksRequest(page_token="garbage"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "page_token",
    ),
    ("ListBlocks", bs.ListBlocksRequest(source=99), grpc.StatusCode.INVALID_ARGUMENT, "source"),
    (
        "CheckAddress",
        bs.CheckAddressRequest(address="203.0.113.0/24"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "address",
    ),
    (
        "CheckAddress",
        bs.CheckAddressRequest(address="fe80::1%eth0"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "address",
    ),
    (
        "CheckAddress",
        bs.CheckAddressRequest(address="999.1.1.1"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "address",
    ),
    ("CheckAddress", bs.CheckAddressRequest(), grpc.StatusCode.INVALID_ARGUMENT, "address"),
]


@pytest.mark.parametrize(("method", "request_", "code", "field"), HOSTILE)
async def test_hostile_input_is_refused_cleanly(
    mesh: Mesh, admin: Session, method: str, request_: object, code: grpc.StatusCode, field: str
) -> None:
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refusal:
            await getattr(blocks(channel), method)(request_, metadata=admin.metadata, timeout=CALL_TIMEOUT)
    assert refusal.value.code() == code, refusal.value.details()
    if field:
        found = _violations(refusal.value)
        assert any(v == field or v.startswith(f"{field}.") for v in found), refusal.value.details()
