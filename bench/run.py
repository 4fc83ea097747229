"""``make bench``: the cost of the edge (direct vs through Envoy) for a cheap RPC, as ratios in one run.

Phases alternate (direct, edge, direct, edge) and the better of each pair is kept, so a noisy
neighbour hurts both sides alike. CPU per call counts the service process, plus Envoy for the edge.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.load import Result, measure, table
from bhiv_core.mesh import Mesh

RESULTS = Path(__file__).resolve().parent / "results"


def _best(results: list[Result]) -> Result:
    return max(results, key=lambda r: r.rps)


async def edge_vs_direct(mesh: Mesh, seconds: float) -> dict[str, float]:
    """Health/Check on the crm service, called directly and through the edge."""
    request = health_pb2.HealthCheckRequest(service="bhiv.crm.v1.CustomerService")
    metadata = (("x-bhiv-service", "crm"),)
    crm_pid = mesh.procs["crm"].pid
    assert mesh.envoy is not None and mesh.envoy.pid is not None
    envoy_pid = mesh.envoy.pid
    direct_results: list[Result] = []
    edge_results: list[Result] = []
    async with (
        grpc.aio.insecure_channel(mesh.address("crm")) as direct,
        grpc.aio.insecure_channel(mesh.edge_address) as edge,
    ):
        direct_stub, edge_stub = health_pb2_grpc.HealthStub(direct), health_pb2_grpc.HealthStub(edge)
        for _ in range(2):
            direct_results.append(
                await measure(
                    "health check, direct",
                    lambda: direct_stub.Check(request, metadata=metadata),
                    server_pids=[crm_pid],
                    seconds=seconds,
                )
            )
            edge_results.append(
                await measure(
                    "health check, through Envoy",
                    lambda: edge_stub.Check(request, metadata=metadata),
                    server_pids=[crm_pid, envoy_pid],
                    seconds=seconds,
                )
            )
    d, e = _best(direct_results), _best(edge_results)
    print(table([d, e]))
    ratio = {
        "edge_vs_direct_throughput": round(e.rps / d.rps, 3),
        "edge_vs_direct_p50_latency": round(e.p50_ms / d.p50_ms, 3),
        "edge_vs_direct_cpu_per_call": round(e.server_cpu_us_per_call / d.server_cpu_us_per_call, 3),
    }
    for key, value in ratio.items():
        print(f"  {key}: {value}x")
    return ratio


async def main(seconds: float = 3.0) -> None:
    """Starts a mesh on free ports, runs every scenario, prints and saves the ratios."""
    with tempfile.TemporaryDirectory() as tmp:
        # The edge's rate limit is lifted: the bench measures cost, not the limiter.
        async with Mesh.with_free_ports(Path(tmp), edge_rate_limit=1_000_000) as mesh:
            print("== edge cost: a cheap RPC direct vs through Envoy ==")
            report = {"edge": await edge_vs_direct(mesh, seconds)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(report, indent=2))
    print(f"saved {RESULTS / 'latest.json'}")


if __name__ == "__main__":
    asyncio.run(main())
