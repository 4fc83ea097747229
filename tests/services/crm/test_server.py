"""crm's service definition: its store opens on start, drives health, closes on stop; settings fail fast."""

from __future__ import annotations

import stat
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bhiv_core.runtime.config import ConfigError
from bhiv_core.runtime.server import start_service
from bhiv_core.services.crm import server
from tests.harness import config_for
from tests.services.crm.conftest import chain


def test_a_store_url_that_is_not_mongodb_fails_naming_the_setting(tmp_path: Path) -> None:
    config = config_for("crm", DATA_DIR=str(tmp_path), CRM_STORE_URL="postgres://db")
    with pytest.raises(ConfigError, match="BHIV_CRM_STORE_URL"):
        server.definition(config)


async def test_the_store_opens_with_the_server_and_drives_health(tmp_path: Path) -> None:
    config = config_for("crm", DATA_DIR=str(tmp_path))
    definition = server.definition(config)
    assert set(definition.checks) == {"store"}
    running = await start_service(config, definition, chain)
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for name in ("", "bhiv.crm.v1.CustomerService", "bhiv.crm.v1.DashboardService"):
                reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await running.stop(grace=0.5)
    assert stat.S_IMODE((tmp_path / "crm.db").stat().st_mode) == 0o600
    with pytest.raises(Exception):  # noqa: B017 - closed: any error will do
        await definition.checks["store"]()
