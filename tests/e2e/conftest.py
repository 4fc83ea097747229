"""One real mesh — seven services and a real Envoy on free loopback ports — for the e2e tests.

A fake OTLP collector (a real gRPC ``TraceService``) receives the services' spans, so tests can
check that one trace spans several services.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from bhiv_core.mesh import Mesh
from tests.e2e.client import Session, admin_session


@dataclass
class Collector:
    """Spans received, as (service.name, span) pairs."""

    spans: list[tuple[str, Any]] = field(default_factory=list)

    async def Export(self, request: Any, context: Any) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            service = next(
                (a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"),
                "",
            )
            for scope in resource_spans.scope_spans:
                self.spans.extend((service, span) for span in scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    async def wait_for(self, predicate: Any, timeout: float = 15.0) -> list[tuple[str, Any]]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            found = [item for item in self.spans if predicate(*item)]
            if found:
                return found
            await asyncio.sleep(0.1)
        return []


@pytest.fixture(scope="session")
async def collector() -> AsyncIterator[tuple[Collector, str]]:
    sink = Collector()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)  # type: ignore[arg-type]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield sink, f"127.0.0.1:{port}"
    await server.stop(0)


def mesh_env(otlp: str) -> dict[str, str]:
    return {
        "BHIV_OTLP_ENDPOINT": otlp,
        # Identity pushes revocations; the safety-net poll is kept out of the way, so that a
        # revocation honoured elsewhere in a test can only be the push's doing.
        "BHIV_REVOCATION_POLL_SECONDS": "3600",
        "BHIV_SCRYPT_LOG_N": "12",
        "BHIV_LOG_LEVEL": "info",
        # Two logistics workers on one port and one store file, as deployed: the oversell race
        # and every read-after-write of test_logistics span both processes.
        "BHIV_LOGISTICS_WORKERS": "2",
        # Every test calls from 127.0.0.1: the per-address buckets are tested in tests/edge.
        "BHIV_EDGE_RATE_LIMIT_PER_ADDRESS": "100000",
        "BHIV_EDGE_LOGIN_RATE_LIMIT": "100000",
        # A test that rotates the signing key waits for the edge to refetch the JWKS; not long.
        "BHIV_EDGE_JWKS_CACHE_SECONDS": "1",
    }


@pytest.fixture(scope="session")
async def mesh(
    tmp_path_factory: pytest.TempPathFactory, collector: tuple[Collector, str]
) -> AsyncIterator[Mesh]:
    started = Mesh.with_free_ports(
        tmp_path_factory.mktemp("mesh"), env=mesh_env(collector[1]), edge_rate_limit=100_000
    )
    async with started:
        yield started


@pytest.fixture(scope="session")
async def admin(mesh: Mesh) -> Session:
    return await admin_session(mesh)
