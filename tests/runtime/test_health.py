"""The health service of every process: List next to Check, through the runtime's chain."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bhiv.identity.v1 import user_service_pb2 as us
from bhiv.identity.v1 import user_service_pb2_grpc as us_grpc
from bhiv_core.standard_chain import standard_chain
from tests.harness import config_for, serving

USER_SERVICE = us.DESCRIPTOR.services_by_name["UserService"]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_list_reports_the_server_and_each_of_its_services() -> None:
    async with serving([(USER_SERVICE, object())]) as (_, channel):
        reply = await health_pb2_grpc.HealthStub(channel).List(health_pb2.HealthListRequest(), timeout=10)
    assert {name: status.status for name, status in reply.statuses.items()} == {
        "": SERVING,
        "bhiv.identity.v1.UserService": SERVING,
    }


async def test_list_answers_through_the_full_chain_without_a_token(tmp_path) -> None:
    config = config_for(DATA_DIR=str(tmp_path))
    async with serving([(USER_SERVICE, object())], chain=standard_chain, config=config) as (_, channel):
        reply = await health_pb2_grpc.HealthStub(channel).List(health_pb2.HealthListRequest(), timeout=10)
    assert set(reply.statuses) == {"", "bhiv.identity.v1.UserService"}


async def test_list_follows_a_failing_dependency_check() -> None:
    state = {"ok": True}

    async def database() -> None:
        if not state["ok"]:
            raise ConnectionError("database unreachable")

    config = config_for(HEALTH_INTERVAL_SECONDS="0.05")
    async with serving([(USER_SERVICE, object())], config=config, checks={"database": database}) as (
        _,
        channel,
    ):
        stub = health_pb2_grpc.HealthStub(channel)
        state["ok"] = False
        deadline = time.monotonic() + 10
        while True:
            reply = await stub.List(health_pb2.HealthListRequest(), timeout=10)
            statuses = {name: status.status for name, status in reply.statuses.items()}
            if set(statuses.values()) == {NOT_SERVING} or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
    assert statuses == {"": NOT_SERVING, "bhiv.identity.v1.UserService": NOT_SERVING}


async def test_a_service_whose_audit_writer_waits_for_the_database_stays_serving(tmp_path) -> None:
    # Another process holds the audit file's write lock for a while (a busy mesh): this service's
    # audit writer waits for it on the store's only thread. Its health must not queue behind it.
    config = config_for(DATA_DIR=str(tmp_path), HEALTH_INTERVAL_SECONDS="0.1")
    async with serving([(USER_SERVICE, object())], chain=standard_chain, config=config) as (_, channel):
        health = health_pb2_grpc.HealthStub(channel)
        users = us_grpc.UserServiceStub(channel)
        lock = sqlite3.connect(tmp_path / "audit.db", isolation_level=None)
        try:
            lock.execute("BEGIN IMMEDIATE")
            with pytest.raises(grpc.aio.AioRpcError) as err:  # audited: the writer takes the record
                await users.GetUser(us.GetUserRequest(name="users/u2"), timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            seen = set()
            deadline = time.monotonic() + 2  # twenty health intervals with the writer waiting
            while time.monotonic() < deadline:
                reply = await health.List(health_pb2.HealthListRequest(), timeout=10)
                seen |= {status.status for status in reply.statuses.values()}
                await asyncio.sleep(0.05)
            lock.execute("COMMIT")
        finally:
            lock.close()
    assert seen == {SERVING}
