"""``make demo`` loads its labelled sample dataset through the edge, once (issue 10 item 6)."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from pathlib import Path

import grpc
import pytest

from bhiv.crm.v1 import customer_service_pb2 as cs
from bhiv.crm.v1 import customer_service_pb2_grpc as cs_grpc
from bhiv.crm.v1 import dashboard_service_pb2 as ds
from bhiv.crm.v1 import dashboard_service_pb2_grpc as ds_grpc
from bhiv.logistics.v1 import shipment_pb2
from bhiv.logistics.v1 import shipment_service_pb2 as ss
from bhiv.logistics.v1 import shipment_service_pb2_grpc as ss_grpc
from bhiv_core.mesh import Mesh
from tests.e2e.client import Session, admin_session, login

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


async def run_demo(mesh: Mesh) -> str:
    env = {**os.environ, "BHIV_EDGE": mesh.edge_address, "BHIV_DATA_DIR": str(mesh.data_dir)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "examples" / "demo.py"),
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await proc.communicate()
    assert proc.returncode == 0, output.decode()
    return output.decode()


async def test_the_demo_loads_its_sample_data_once_and_its_customer_sees_only_its_own(mesh: Mesh) -> None:
    first = await run_demo(mesh)
    assert "Loaded:" in first
    second = await run_demo(mesh)
    assert "already loaded" in second
    credentials = mesh.data_dir / "demo-credentials"
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    passwords = dict(
        line.split("=", 1)
        for line in credentials.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    admin: Session = await admin_session(mesh)
    customer = await login(mesh, "demo-customer", passwords["demo-customer"])
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        customers = cs_grpc.CustomerServiceStub(channel)
        sample = await customers.ListCustomers(cs.ListCustomersRequest(tag="sample"), metadata=admin.metadata)
        assert len(sample.customers) == 6  # five sample customers and the converted lead
        own = await customers.ListCustomers(cs.ListCustomersRequest(), metadata=customer.metadata)
        assert [c.name for c in own.customers] == [customer.user.customer]
        shipments = await ss_grpc.ShipmentServiceStub(channel).ListShipments(
            ss.ListShipmentsRequest(), metadata=customer.metadata
        )
        assert {s.customer for s in shipments.shipments} == {customer.user.customer}
        delivered = [s for s in shipments.shipments if s.status == shipment_pb2.SHIPMENT_STATUS_DELIVERED]
        assert len(delivered) == 1 and len(delivered[0].events) == 6
        dashboard = await ds_grpc.DashboardServiceStub(channel).GetDashboard(
            ds.GetDashboardRequest(), metadata=admin.metadata
        )
        assert dashboard.compute_time.seconds > 0
