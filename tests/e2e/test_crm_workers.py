"""CRM with two worker processes on one port: one store, so uniqueness and reads hold across them."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from bhiv.crm.v1 import customer_pb2
from bhiv.crm.v1 import customer_service_pb2 as cs
from bhiv.crm.v1 import customer_service_pb2_grpc as cs_grpc
from bhiv_core.mesh import Mesh
from tests.e2e.client import CALL_TIMEOUT, admin_session
from tests.e2e.conftest import mesh_env

pytestmark = pytest.mark.e2e

CHANNELS = 8
"""Connections opened to crm: the kernel spreads them over both workers (SO_REUSEPORT)."""


@pytest.fixture(scope="module")
async def two_worker_mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    env = mesh_env("") | {"BHIV_CRM_WORKERS": "2"}
    env.pop("BHIV_OTLP_ENDPOINT")
    started = Mesh.with_free_ports(tmp_path_factory.mktemp("crm-workers"), env=env, edge_rate_limit=100_000)
    async with started:
        yield started


def served_by(log_dir: Path, method: str) -> set[str]:
    """The worker log files that record a call of ``method``."""
    return {path.name for path in log_dir.glob("crm-*.log") if method in path.read_text(errors="replace")}


async def test_two_workers_share_uniqueness_and_every_created_customer_reads_back(
    two_worker_mesh: Mesh,
) -> None:
    admin = await admin_session(two_worker_mesh)
    # Each channel its own connection (grpc shares one per target in a process by default).
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [
        grpc.aio.insecure_channel(two_worker_mesh.address("crm"), options=options) for _ in range(CHANNELS)
    ]
    try:
        stubs = [cs_grpc.CustomerServiceStub(channel) for channel in channels]
        email = f"race-{secrets.token_hex(4)}@example.org"

        async def create(n: int) -> str:
            variant = email.upper() if n % 2 else email
            request = cs.CreateCustomerRequest(
                customer=customer_pb2.Customer(first_name=f"R{n}", email=variant)
            )
            try:
                await stubs[n % CHANNELS].CreateCustomer(
                    request, metadata=admin.metadata, timeout=CALL_TIMEOUT
                )
            except grpc.aio.AioRpcError as err:
                return f"{err.code().name} {err.details()}"
            return "OK"

        codes = await asyncio.gather(*(create(n) for n in range(32)))
        assert sorted(set(codes)) == [
            "ALREADY_EXISTS another customer has this e-mail address (addresses are compared ignoring case)",
            "OK",
        ], codes
        assert codes.count("OK") == 1

        # Created on one connection, read at once on every other: never NOT_FOUND.
        for n in range(24):
            request = cs.CreateCustomerRequest(
                customer=customer_pb2.Customer(
                    first_name="Read", email=f"read-{n}-{secrets.token_hex(3)}@example.org"
                )
            )
            created = await stubs[n % CHANNELS].CreateCustomer(
                request, metadata=admin.metadata, timeout=CALL_TIMEOUT
            )
            for stub in stubs:
                got = await stub.GetCustomer(
                    cs.GetCustomerRequest(name=created.customer.name),
                    metadata=admin.metadata,
                    timeout=CALL_TIMEOUT,
                )
                assert got.customer == created.customer
    finally:
        for channel in channels:
            await channel.close()
    # Both workers served: each logged requests of its own.
    assert served_by(two_worker_mesh.log_dir, "/bhiv.crm.v1.CustomerService/GetCustomer") == {
        "crm-1.log",
        "crm-2.log",
    }
