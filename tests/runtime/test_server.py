from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from bhiv.identity.v1 import user_service_pb2 as us
from bhiv.identity.v1 import user_service_pb2_grpc as us_grpc
from bhiv_core.mesh import free_port
from bhiv_core.runtime.config import ConfigError
from bhiv_core.runtime.limits import MAX_REQUEST_HEADER_BYTES, MAX_REQUEST_HEADERS
from bhiv_core.runtime.server import ServiceDefinition, start_service
from bhiv_core.standard_chain import basic_chain
from tests.harness import config_for, serving

USER_SERVICE = us.DESCRIPTOR.services_by_name["UserService"]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


async def health_of(channel: grpc.aio.Channel, service: str = "") -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service))
    return reply.status


async def test_health_follows_named_dependency_checks() -> None:
    state = {"ok": True}

    async def database() -> None:
        if not state["ok"]:
            raise ConnectionError("database unreachable")

    config = config_for(HEALTH_INTERVAL_SECONDS="0.05")
    async with serving([(USER_SERVICE, object())], config=config, checks={"database": database}) as (
        running,
        channel,
    ):
        assert await health_of(channel, USER_SERVICE.full_name) == health_pb2.HealthCheckResponse.SERVING
        state["ok"] = False
        await asyncio.sleep(0.2)
        assert await health_of(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert running.monitor.failures == {"database": "ConnectionError: database unreachable"}
        state["ok"] = True
        await asyncio.sleep(0.2)
        assert await health_of(channel) == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_every_bhiv_service() -> None:
    async with serving([(USER_SERVICE, object())]) as (_, channel):
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def one() -> Any:
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        async for reply in stub.ServerReflectionInfo(one()):
            names = {s.name for s in reply.list_services_response.service}
            break
    assert "bhiv.identity.v1.UserService" in names
    assert "grpc.health.v1.Health" in names


async def test_a_service_accepts_every_header_block_the_edge_forwards() -> None:
    # The most the edge forwards: MAX_REQUEST_HEADERS fields, MAX_REQUEST_HEADER_BYTES of names and
    # values in all. grpc sends 8 fields of its own (the 4 pseudo-headers, te, content-type,
    # user-agent, grpc-accept-encoding), under 400 bytes; the rest are these.
    count = MAX_REQUEST_HEADERS - 8
    value = "v" * ((MAX_REQUEST_HEADER_BYTES - 400) // count - len("x-field-00"))
    metadata = tuple((f"x-field-{i:02}", value) for i in range(count))
    assert sum(len(k) + len(v) for k, v in metadata) > MAX_REQUEST_HEADER_BYTES - 500
    async with serving([(USER_SERVICE, object())]) as (_, channel):
        stub = health_pb2_grpc.HealthStub(channel)
        # gRPC sizes them with 32 bytes more per field; past its max_metadata_size (8 KiB unless
        # set) it refuses a share of calls at random, which 20 calls find.
        for _ in range(20):
            reply = await stub.Check(health_pb2.HealthCheckRequest(), metadata=metadata)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_taken_port_is_a_clear_error() -> None:
    async with serving([(USER_SERVICE, object())]) as (running, _):
        config = config_for(IDENTITY_PORT=str(running.port))
        with pytest.raises(ConfigError, match="BHIV_IDENTITY_PORT"):
            await start_service(
                config, ServiceDefinition("identity", [(USER_SERVICE, object())]), basic_chain
            )


async def test_graceful_stop_drains_in_flight_calls() -> None:
    started = asyncio.Event()

    class Slow:
        async def GetUser(self, request: Any, context: Any) -> us.GetUserResponse:
            started.set()
            await asyncio.sleep(0.3)
            return us.GetUserResponse(user={"name": request.name})

    config = config_for()
    running = await start_service(
        config, ServiceDefinition("identity", [(USER_SERVICE, Slow())]), basic_chain
    )
    async with grpc.aio.insecure_channel(running.address) as channel:
        call = us_grpc.UserServiceStub(channel).GetUser(us.GetUserRequest(name="users/u1"))
        await started.wait()
        stopping = asyncio.create_task(running.stop(grace=5))
        reply = await call
        await stopping
    assert reply.user.name == "users/u1"


def _spawn(*args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, *args], env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


async def _wait_serving(address: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(address) as channel:
        while True:
            try:
                if await health_of(channel) == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            assert time.monotonic() < deadline, "service did not become healthy"
            await asyncio.sleep(0.1)


async def test_sigterm_stops_the_process_cleanly(tmp_path) -> None:
    port = free_port()
    env = {"BHIV_CRM_PORT": str(port), "BHIV_DATA_DIR": str(tmp_path), "BHIV_CRM_METRICS_PORT": "0"}
    proc = _spawn("-m", "bhiv_core.services.crm", env=env)
    try:
        await _wait_serving(f"127.0.0.1:{port}")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert b'"msg": "stopped"' in (proc.stdout.read() if proc.stdout else b"")
    finally:
        proc.kill()


async def test_workers_share_one_port_and_a_second_mesh_on_it_fails(tmp_path) -> None:
    port = free_port()
    env = {
        "BHIV_CRM_PORT": str(port),
        "BHIV_CRM_WORKERS": "2",
        "BHIV_DATA_DIR": str(tmp_path),
        "BHIV_CRM_METRICS_PORT": "0",
    }
    proc = _spawn("-m", "bhiv_core.services.crm", env=env)
    try:
        await _wait_serving(f"127.0.0.1:{port}")
        # A second service on the same port must refuse to start, not silently share it.
        clash = _spawn("-m", "bhiv_core.services.crm", env={**env, "BHIV_CRM_WORKERS": "1"})
        assert clash.wait(timeout=20) != 0
        assert b"BHIV_CRM_PORT" in (clash.stdout.read() if clash.stdout else b"")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
