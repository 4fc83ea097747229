"""Blocking at the edge: propagation time and the edge's throughput with 10,000 active blocks.

A mesh of its own, whose edge trusts one ``x-forwarded-for`` hop (``BHIV_EDGE_XFF_TRUSTED_HOPS=1``),
so the load can come from any client address without a proxy in the client: the bench's calls
carry ``x-forwarded-for: <address>`` and the edge's RBAC input (the client address it trusts) is
that address. Calls without the header (the admin's) fall back to the TCP peer, 127.0.0.1.

1. The encoding: sentinel's RBAC config of 10,000 blocks built from the cached parts.
2. Throughput through an edge (``Health/Check`` on crm, from 198.51.100.77, which no block
   covers, so every trie is searched to the end) with no blocks and with 10,000 (single addresses
   and ranges, IPv4 and IPv6), in alternating pairs of phases: a second Envoy, generated like the
   mesh's, subscribes to an xDS server in this process that switches between the two lists in
   milliseconds (through sentinel, 10,000 BlockAddress calls take a minute each way). Requests per
   second and Envoy's CPU per call; the median pair's ratio. Target: at least 0.95x.
3. Propagation with those 10,000 blocks active: per trial, a client address is served on an open
   connection, BlockAddress is called through the edge, and the same connection calls again until
   it is refused (PERMISSION_DENIED); the time from BlockAddress returning to that first refusal,
   p50/p99 over the trials. Target: p99 < 1 s.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.load import Result, measure, table
from bhiv.identity.v1 import auth_service_pb2, auth_service_pb2_grpc
from bhiv.sentinel.v1 import block_service_pb2 as bs
from bhiv.sentinel.v1 import block_service_pb2_grpc as bs_grpc
from bhiv_core.edge.envoy_config import BLOCK_FILTER, EdgeSettings, write_bootstrap
from bhiv_core.edge.process import EnvoyProcess
from bhiv_core.mesh import Mesh, free_ports
from bhiv_core.services.sentinel.blocks.config import DEFAULT_ALLOWLIST
from bhiv_core.services.sentinel.blocks.rbac import RbacConfig, recent_filter_name
from bhiv_core.services.sentinel.blocks.xds import XdsServer

BLOCKS = 10_000
LOAD_ADDRESS = "198.51.100.77"


def block_ranges(count: int) -> list[str]:
    """``count`` distinct ranges: mostly single IPv4 addresses, some IPv4 /24s and IPv6 /64s."""
    ranges: list[str] = []
    for i in range(count):
        if i % 10 == 9:
            ranges.append(f"2001:db8:{i // 65536:x}:{i % 65536:x}::/64")
        elif i % 10 == 8:
            j = i // 10
            ranges.append(f"100.{64 + j // 256}.{j % 256}.0/24")
        else:
            ranges.append(f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}")
    return ranges


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def encoding_cost() -> dict[str, float]:
    """Milliseconds to add 10,000 blocks' parts, and to build the whole config from them."""
    config = RbacConfig("bhiv.ip_blocks", DEFAULT_ALLOWLIST)
    expire = datetime(2030, 1, 1, tzinfo=UTC)
    t0 = time.perf_counter()
    for i, text in enumerate(block_ranges(BLOCKS)):
        # Half until lifted, half with an end of their own: 5,001 actions, the worst case for Envoy.
        config.add(
            f"blocks/{i}", ipaddress.ip_network(text), expire + timedelta(seconds=i) if i % 2 else None
        )
    added = time.perf_counter() - t0
    builds = []
    for _ in range(20):
        t0 = time.perf_counter()
        resource = config.resource()
        builds.append(time.perf_counter() - t0)
    report = {
        "encode_10k_parts_ms": round(added * 1e3, 1),
        "build_10k_config_ms_median": round(statistics.median(builds) * 1e3, 2),
        "config_10k_bytes": len(resource),
    }
    for key, value in report.items():
        print(f"  {key}: {value:g}")
    return report


class _Switch:
    """Serves one of two lists over xDS, switched at once (the snapshots of a BlockList)."""

    def __init__(self, lists: Sequence[tuple[bytes, ...]]) -> None:
        self._lists = lists
        self._current = 0
        self._version = 0
        self._changed = asyncio.Condition()

    def snapshot(self) -> tuple[int, tuple[bytes, ...]]:
        return self._version, self._lists[self._current]

    async def wait_change(self, seen: int) -> int:
        async with self._changed:
            await self._changed.wait_for(lambda: self._version != seen)
            return self._version

    async def use(self, index: int) -> None:
        self._current = index
        self._version += 1
        async with self._changed:
            self._changed.notify_all()


def _lists() -> list[tuple[bytes, ...]]:
    """No blocks, and 10,000 (in the bulk filter, as sentinel keeps them once the list is quiet)."""
    empty_bulk = RbacConfig(BLOCK_FILTER, DEFAULT_ALLOWLIST)
    recent = RbacConfig(recent_filter_name(BLOCK_FILTER), DEFAULT_ALLOWLIST).resource()
    full = RbacConfig(BLOCK_FILTER, DEFAULT_ALLOWLIST)
    expire = datetime(2030, 1, 1, tzinfo=UTC)
    for i, text in enumerate(block_ranges(BLOCKS)):
        full.add(f"blocks/{i}", ipaddress.ip_network(text), None if i % 2 else expire + timedelta(seconds=i))
    return [(empty_bulk.resource(), recent), (full.resource(), recent)]


async def throughput(mesh: Mesh, seconds: float, pairs: int = 6) -> dict[str, float]:
    """The edge's throughput and Envoy's CPU per call with 10,000 blocks vs none, in pairs."""
    xds_port, listen, admin = free_ports(3)
    switch = _Switch(_lists())
    xds = XdsServer(switch, "127.0.0.1", xds_port, [ipaddress.ip_network(mesh.edge_source_address)])
    await xds.start()
    settings = EdgeSettings(
        listen_port=listen,
        admin_port=admin,
        node_id="bench-edge",
        block_xds=f"127.0.0.1:{xds_port}",
        upstream_source_address=mesh.edge_source_address,
        xff_num_trusted_hops=1,
        rate_limit_tokens_per_fill=1_000_000,
        rate_limit_per_address=1_000_000,
        access_log_path=str(mesh.log_dir / "bench-edge-access.log"),
    )
    config = write_bootstrap(mesh.data_dir / "envoy" / "bench-edge.json", mesh.upstreams(), settings)
    envoy = EnvoyProcess(config, settings, log_path=mesh.log_dir / "bench-edge.log")
    await envoy.astart()
    assert envoy.pid is not None
    pid = envoy.pid
    request = health_pb2.HealthCheckRequest(service="")
    metadata = (("x-bhiv-service", "crm"), ("x-forwarded-for", LOAD_ADDRESS))
    measured: list[tuple[Result, Result]] = []
    try:
        async with grpc.aio.insecure_channel(envoy.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)

            async def phase(index: int) -> Result:
                await switch.use(index)
                # Applied once an address of the list is refused (or served, for none).
                want = grpc.StatusCode.PERMISSION_DENIED if index else grpc.StatusCode.OK
                while await _code(stub, "10.0.0.1") != want:
                    await asyncio.sleep(0.01)
                label = f"Health/Check, {BLOCKS} blocks" if index else "Health/Check, no blocks"
                return await measure(
                    label, lambda: stub.Check(request, metadata=metadata), server_pids=[pid], seconds=seconds
                )

            for i in range(pairs):
                if i % 2 == 0:
                    none, many = await phase(0), await phase(1)
                else:
                    many, none = await phase(1), await phase(0)
                measured.append((none, many))
                print(
                    f"  pair {i + 1}: {none.rps:.0f} vs {many.rps:.0f} calls/s, Envoy "
                    f"{none.server_cpu_us_per_call:.0f} vs {many.server_cpu_us_per_call:.0f} us/call",
                    flush=True,
                )
    finally:
        await envoy.astop()
        await xds.stop()
    ratios = sorted(many.rps / none.rps for none, many in measured)
    cpu = sorted(none.server_cpu_us_per_call / many.server_cpu_us_per_call for none, many in measured)
    median = min(measured, key=lambda pair: abs(pair[1].rps / pair[0].rps - ratios[len(ratios) // 2]))
    print(table(list(median)))
    report = {
        "pairs": pairs,
        "throughput_ratio_10k_vs_none_median": round(ratios[len(ratios) // 2], 3),
        "throughput_ratio_min": round(ratios[0], 3),
        "throughput_ratio_max": round(ratios[-1], 3),
        "envoy_cpu_efficiency_10k_vs_none_median": round(cpu[len(cpu) // 2], 3),
        "envoy_cpu_us_per_call_no_blocks": round(median[0].server_cpu_us_per_call, 1),
        "envoy_cpu_us_per_call_10k_blocks": round(median[1].server_cpu_us_per_call, 1),
    }
    for key, value in report.items():
        print(f"  {key}: {value:g}")
    return report


async def _block_all(mesh: Mesh, metadata: tuple[tuple[str, str], ...], ranges: list[str]) -> float:
    """Blocks every range (directly at sentinel, 32 calls at a time); returns the seconds it took."""
    queue = list(reversed(ranges))
    t0 = time.perf_counter()
    async with grpc.aio.insecure_channel(mesh.address("sentinel")) as channel:
        stub = bs_grpc.BlockServiceStub(channel)

        async def worker() -> None:
            while queue:
                cidr = queue.pop()
                await stub.BlockAddress(
                    bs.BlockAddressRequest(cidr=cidr, reason="bench"), metadata=metadata, timeout=60
                )

        await asyncio.gather(*(worker() for _ in range(32)))
    return time.perf_counter() - t0


async def _code(stub: health_pb2_grpc.HealthStub, address: str) -> grpc.StatusCode:
    try:
        await stub.Check(
            health_pb2.HealthCheckRequest(service=""),
            metadata=(("x-bhiv-service", "crm"), ("x-forwarded-for", address)),
            timeout=10,
        )
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def _propagation(mesh: Mesh, metadata: tuple[tuple[str, str], ...], trials: int) -> dict[str, float]:
    returned: list[float] = []
    sent: list[float] = []
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        blocks = bs_grpc.BlockServiceStub(channel)
        for trial in range(trials):
            address = f"192.0.2.{trial + 1}"
            assert await _code(health, address) == grpc.StatusCode.OK  # the connection is open
            t0 = time.perf_counter()
            reply = await blocks.BlockAddress(
                bs.BlockAddressRequest(cidr=address, reason="bench"), metadata=metadata, timeout=10
            )
            t1 = time.perf_counter()
            while (code := await _code(health, address)) == grpc.StatusCode.OK:
                if time.perf_counter() - t1 > 10:
                    raise RuntimeError(f"{address} not refused within 10 s")
            assert code == grpc.StatusCode.PERMISSION_DENIED, code
            t2 = time.perf_counter()
            returned.append(t2 - t1)
            sent.append(t2 - t0)
            await blocks.UnblockAddress(bs.UnblockAddressRequest(name=reply.block.name), metadata=metadata)
    report: dict[str, float] = {
        "trials": trials,
        "block_returned_to_refusal_p50_ms": round(_percentile(returned, 50) * 1e3, 1),
        "block_returned_to_refusal_p99_ms": round(_percentile(returned, 99) * 1e3, 1),
        "block_returned_to_refusal_max_ms": round(max(returned) * 1e3, 1),
        "block_sent_to_refusal_p99_ms": round(_percentile(sent, 99) * 1e3, 1),
    }
    return report


async def block_benchmarks(seconds: float = 3.0, trials: int = 60) -> dict[str, object]:
    """Runs the three measurements on a mesh of its own; prints and returns the figures."""
    print("  -- the encoding of 10,000 blocks --")
    report: dict[str, object] = {"encoding": encoding_cost()}
    env = {
        "BHIV_LOG_LEVEL": os.environ.get("BHIV_LOG_LEVEL", "warning"),
        "BHIV_EDGE_RATE_LIMIT_PER_ADDRESS": "1000000",
        "BHIV_EDGE_LOGIN_RATE_LIMIT": "1000000",
        "BHIV_EDGE_XFF_TRUSTED_HOPS": "1",
    }
    with tempfile.TemporaryDirectory() as tmp:
        async with Mesh.with_free_ports(Path(tmp), edge_rate_limit=1_000_000, env=env) as mesh:
            lines = (mesh.data_dir / "admin-credentials").read_text().splitlines()
            creds = dict(line.split("=", 1) for line in lines if "=" in line)
            async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
                login = await auth_service_pb2_grpc.AuthServiceStub(channel).Login(
                    auth_service_pb2.LoginRequest(username=creds["username"], password=creds["password"])
                )
            metadata = (("authorization", f"Bearer {login.tokens.access_token}"),)
            print("  -- edge throughput, no blocks vs 10,000, in alternating pairs --")
            report["throughput"] = await throughput(mesh, seconds)
            print(f"  -- {BLOCKS} BlockAddress calls to sentinel --")
            ranges = block_ranges(BLOCKS)
            took = await _block_all(mesh, metadata, ranges)
            print(f"  {BLOCKS} BlockAddress calls in {took:.1f} s ({BLOCKS / took:.0f}/s)")
            async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
                last = str(ipaddress.ip_network(ranges[-2]).network_address + 1)
                stub = health_pb2_grpc.HealthStub(channel)
                while await _code(stub, last) != grpc.StatusCode.PERMISSION_DENIED:
                    await asyncio.sleep(0.05)
            # Quiet for a moment: sentinel folds the burst into the bulk filter, as it would be.
            await asyncio.sleep(8)
            print(
                f"  -- propagation with {BLOCKS} blocks: BlockAddress until an open connection is refused --"
            )
            report["propagation"] = propagation = await _propagation(mesh, metadata, trials)
            for key, value in propagation.items():
                print(f"  {key}: {value:g}")
    return report


if __name__ == "__main__":
    asyncio.run(block_benchmarks())
