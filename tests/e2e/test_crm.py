"""CRM through the real edge, with real tokens: the main flows and what a customer may see."""

from __future__ import annotations

import json
import secrets

import grpc
import pytest

from bhiv.crm.v1 import customer_pb2
from bhiv.crm.v1 import customer_service_pb2 as cs
from bhiv.crm.v1 import customer_service_pb2_grpc as cs_grpc
from bhiv_core.mesh import Mesh
from tests.e2e.client import CALL_TIMEOUT, Session, create_user
from tests.e2e.test_edge import grpcurl

pytestmark = pytest.mark.e2e


def unique_email(prefix: str = "c") -> str:
    return f"{prefix}-{secrets.token_hex(4)}@Example.org"


async def create_customer(
    channel: grpc.aio.Channel, session: Session, **fields: object
) -> customer_pb2.Customer:
    customer = customer_pb2.Customer(**fields)  # type: ignore[arg-type]
    reply = await cs_grpc.CustomerServiceStub(channel).CreateCustomer(
        cs.CreateCustomerRequest(customer=customer), metadata=session.metadata, timeout=CALL_TIMEOUT
    )
    return reply.customer


async def test_customers_through_the_edge_with_a_customer_token_seeing_only_its_own(
    mesh: Mesh, admin: Session
) -> None:
    sales = await create_user(mesh, admin, "sales")
    ops = await create_user(mesh, admin, "ops")
    async with grpc.aio.insecure_channel(mesh.edge_address) as channel:
        stub = cs_grpc.CustomerServiceStub(channel)
        mine = await create_customer(
            channel, sales, first_name="Seán", last_name="O'Brien", email=unique_email()
        )
        other = await create_customer(channel, sales, first_name="नमस्ते", last_name="🙂", email=unique_email())
        # Logistics reads customers with the caller's (ops) token.
        got = await stub.GetCustomer(
            cs.GetCustomerRequest(name=other.name), metadata=ops.metadata, timeout=CALL_TIMEOUT
        )
        assert got.customer == other
        assert got.customer.first_name.encode() == "नमस्ते".encode()
        with pytest.raises(grpc.aio.AioRpcError) as taken:
            await create_customer(channel, sales, first_name="X", email=mine.email.upper())
        assert taken.value.code() == grpc.StatusCode.ALREADY_EXISTS

        me = await create_user(mesh, admin, "customer", customer=mine.name)
        own = await stub.GetCustomer(
            cs.GetCustomerRequest(name=mine.name), metadata=me.metadata, timeout=CALL_TIMEOUT
        )
        assert own.customer == mine
        with pytest.raises(grpc.aio.AioRpcError) as hidden:
            await stub.GetCustomer(
                cs.GetCustomerRequest(name=other.name), metadata=me.metadata, timeout=CALL_TIMEOUT
            )
        assert hidden.value.code() == grpc.StatusCode.NOT_FOUND
        listed = await stub.ListCustomers(
            cs.ListCustomersRequest(), metadata=me.metadata, timeout=CALL_TIMEOUT
        )
        assert [c.name for c in listed.customers] == [mine.name]
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await create_customer(channel, me, first_name="X", email=unique_email())
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_grpcurl_creates_and_lists_customers_through_the_edge(mesh: Mesh, admin: Session) -> None:
    bearer = f"authorization: Bearer {admin.access_token}"
    email = unique_email("grpcurl")
    body = json.dumps(
        {"customer": {"first_name": "Asha", "last_name": "O'Brien", "email": email}, "request_id": "g-1"}
    )
    created = grpcurl(mesh, "-H", bearer, "-d", body, "bhiv.crm.v1.CustomerService/CreateCustomer")
    assert created.returncode == 0, created.stderr
    customer = json.loads(created.stdout)["customer"]
    assert customer["last_name"] == "O'Brien" and customer["status"] == "CUSTOMER_STATUS_ACTIVE"
    again = grpcurl(mesh, "-H", bearer, "-d", body, "bhiv.crm.v1.CustomerService/CreateCustomer")
    assert json.loads(again.stdout)["customer"] == customer
    listed = grpcurl(
        mesh,
        "-H",
        bearer,
        "-d",
        json.dumps({"query": "o'brien"}),
        "bhiv.crm.v1.CustomerService/ListCustomers",
    )
    assert listed.returncode == 0, listed.stderr
    assert customer["name"] in [c["name"] for c in json.loads(listed.stdout)["customers"]]
    bad = grpcurl(
        mesh,
        "-H",
        bearer,
        "-d",
        '{"customer": {"first_name": "A"}}',
        "bhiv.crm.v1.CustomerService/CreateCustomer",
    )
    assert "Code: InvalidArgument" in bad.stderr
    assert "customer.email: is required" in bad.stderr
