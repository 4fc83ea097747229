"""The edge's IP-block filter: its generated config, and real Envoys fed by sentinel's xDS server.

The xDS server and the block list run in this process (no mesh): two Envoy replicas with their own
node ids subscribe to it, start serving before it answers, converge on every change, and keep the
last list while it is away. The whole path through a real mesh is in ``tests/e2e/test_blocks.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from bhiv_core.edge.envoy_config import (
    BLOCK_FILTER,
    RECENT_BLOCK_FILTER,
    XDS_CLUSTER,
    EdgeSettings,
    Upstream,
    build_bootstrap,
    write_bootstrap,
)
from bhiv_core.edge.process import EnvoyProcess, validate_config
from bhiv_core.mesh import free_ports
from bhiv_core.registry import SERVICES
from bhiv_core.services.sentinel.blocks.config import DEFAULT_ALLOWLIST
from bhiv_core.services.sentinel.blocks.resources import make_block_store
from bhiv_core.services.sentinel.blocks.service import BlockList, BlockSource
from bhiv_core.services.sentinel.blocks.xds import XdsServer
from tests.source_address import channel_from

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pydantic")

WAIT = 15.0


def registry_upstreams() -> list[Upstream]:
    return [Upstream.from_spec(spec) for spec in SERVICES]


def http_filters(bootstrap: dict[str, Any]) -> list[dict[str, Any]]:
    [listener] = bootstrap["static_resources"]["listeners"]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    filters: list[dict[str, Any]] = hcm["http_filters"]
    return filters


def test_without_sentinel_the_edge_has_no_block_filter() -> None:
    bootstrap = build_bootstrap(registry_upstreams(), EdgeSettings())
    assert BLOCK_FILTER not in [f["name"] for f in http_filters(bootstrap)]
    assert "dynamic_resources" not in bootstrap
    assert bootstrap["node"]["id"] == "bhiv-edge"


def test_the_block_filter_is_discovered_from_sentinel_over_ads(tmp_path: Path) -> None:
    settings = EdgeSettings(
        block_xds="127.0.0.1:50058", node_id="edge-2", upstream_source_address="127.0.0.2"
    )
    bootstrap = build_bootstrap(registry_upstreams(), settings)
    names = [f["name"] for f in http_filters(bootstrap)]
    # Right after gRPC-web and CORS: a blocked client spends no rate-limit token, no token check.
    assert names[:4] == [
        "envoy.filters.http.grpc_web",
        "envoy.filters.http.cors",
        BLOCK_FILTER,
        RECENT_BLOCK_FILTER,
    ]
    [block, _] = [f for f in http_filters(bootstrap) if f["name"] in (BLOCK_FILTER, RECENT_BLOCK_FILTER)]
    discovery = block["config_discovery"]
    assert discovery["config_source"]["ads"] == {}
    assert discovery["apply_default_config_without_warming"] is True
    assert discovery["default_config"]["@type"].endswith("filters.http.rbac.v3.RBAC")
    assert bootstrap["node"]["id"] == "edge-2"
    ads = bootstrap["dynamic_resources"]["ads_config"]
    [grpc_service] = ads["grpc_services"]
    assert grpc_service["envoy_grpc"]["cluster_name"] == XDS_CLUSTER
    [cluster] = [c for c in bootstrap["static_resources"]["clusters"] if c["name"] == XDS_CLUSTER]
    # Sentinel answers only the edge's own source address.
    assert cluster["upstream_bind_config"]["source_address"]["address"] == "127.0.0.2"
    validate_config(write_bootstrap(tmp_path / "envoy.json", registry_upstreams(), settings))


@pytest.mark.parametrize("bad", ["sentinel", "127.0.0.1:", ":50058", "127.0.0.1:70000"])
def test_a_bad_xds_address_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="block_xds"):
        EdgeSettings(block_xds=bad)


# ----------------------------------------------------------------------------- real Envoys


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while not await check():
        if loop.time() > deadline:
            pytest.fail(f"not within {WAIT} s: {what}")
        await asyncio.sleep(0.02)


async def code(channel: grpc.aio.Channel) -> grpc.StatusCode:
    try:
        await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), metadata=(("x-bhiv-service", "alpha"),), timeout=10
        )
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@contextlib.asynccontextmanager
async def alpha() -> AsyncIterator[Upstream]:
    """An upstream that answers gRPC health."""
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield Upstream(name="alpha", host="127.0.0.1", port=port, route_prefix="/bhiv.alpha.v1.")
    finally:
        await server.stop(0)


async def test_two_replicas_serve_before_sentinel_then_converge_and_keep_the_list(tmp_path: Path) -> None:
    xds_port, *ports = free_ports(5)
    edge_peer = ipaddress.ip_network("127.0.0.2/32")

    def block_list() -> BlockList:
        return BlockList(make_block_store(tmp_path, None), DEFAULT_ALLOWLIST, filter_name=BLOCK_FILTER)

    async with alpha() as upstream:
        envoys = []
        for number in range(2):
            settings = EdgeSettings(
                listen_port=ports[2 * number],
                admin_port=ports[2 * number + 1],
                node_id=f"edge-{number}",
                block_xds=f"127.0.0.1:{xds_port}",
                upstream_source_address="127.0.0.2",
                health_check_interval_s=0.5,
            )
            config = write_bootstrap(tmp_path / f"envoy-{number}.json", [upstream], settings)
            envoys.append(EnvoyProcess(config, settings, log_path=tmp_path / f"envoy-{number}.log"))
        for envoy in envoys:
            await envoy.astart()
        try:
            async with (
                channel_from("127.0.0.61", envoys[0].address) as first,
                channel_from("127.0.0.61", envoys[1].address) as second,
            ):
                # Sentinel is not there yet: the default config lets everything through.
                for channel in (first, second):
                    await eventually(lambda c=channel: _is(c, grpc.StatusCode.OK), "the edge serves")
                blocks = block_list()
                await blocks.start()
                xds = XdsServer(blocks, "127.0.0.1", xds_port, [edge_peer])
                await xds.start()
                try:
                    await eventually(lambda: _nodes(xds, 2), "both replicas subscribe")
                    assert sorted(n.node_id for n in xds.nodes.values()) == ["edge-0", "edge-1"]
                    block = await blocks.block(
                        "127.0.0.61", ttl=None, reason="test", source=BlockSource.MANUAL, created_by="t"
                    )
                    for channel in (first, second):
                        await eventually(
                            lambda c=channel: _is(c, grpc.StatusCode.PERMISSION_DENIED), "both refuse"
                        )
                    await eventually(lambda: _acked(xds), "both acknowledge the same version")
                    assert not any(n.nacked for n in xds.nodes.values())
                finally:
                    await xds.stop()
                    await blocks.stop()
                # Sentinel is gone: both keep the last list.
                for channel in (first, second):
                    assert await code(channel) == grpc.StatusCode.PERMISSION_DENIED
                # A new sentinel on the same store serves the same list; lifting reaches both.
                blocks = block_list()
                await blocks.start()
                xds = XdsServer(blocks, "127.0.0.1", xds_port, [edge_peer])
                await xds.start()
                try:
                    await eventually(lambda: _nodes(xds, 2), "both replicas resubscribe")
                    await blocks.unblock(block.name, lifted_by="t")
                    for channel in (first, second):
                        await eventually(lambda c=channel: _is(c, grpc.StatusCode.OK), "both serve again")
                finally:
                    await xds.stop()
                    await blocks.stop()
        finally:
            for envoy in envoys:
                await envoy.astop()


async def _is(channel: grpc.aio.Channel, expected: grpc.StatusCode) -> bool:
    return await code(channel) == expected


async def _nodes(xds: XdsServer, count: int) -> bool:
    return sum(1 for n in xds.nodes.values() if n.acked) >= count


async def _acked(xds: XdsServer) -> bool:
    return len({n.acked for n in xds.nodes.values()} | {n.sent for n in xds.nodes.values()}) == 1


async def test_the_xds_port_refuses_a_peer_that_is_not_the_edge(tmp_path: Path) -> None:
    blocks = BlockList(make_block_store(tmp_path, None), DEFAULT_ALLOWLIST, filter_name=BLOCK_FILTER)
    await blocks.start()
    xds = XdsServer(blocks, "127.0.0.1", 0, [ipaddress.ip_network("127.0.0.2/32")])
    await xds.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{xds.port}") as channel:
            from bhiv_core.services.sentinel.blocks.xds import ADS_METHOD

            call = channel.stream_stream(ADS_METHOD)(iter([b""]), timeout=10)
            with pytest.raises(grpc.aio.AioRpcError) as refusal:
                async for _ in call:
                    pass
        assert refusal.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert xds.nodes == {}
    finally:
        await xds.stop()
        await blocks.stop()
