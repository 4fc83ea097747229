"""A served crm behind the real error mapper, RBAC and validation, with principals chosen per call.

Authentication is the one stand-in: :class:`AsCaller` takes the principal from test headers
(``x-test-role``, ``x-test-subject``, ``x-test-customer``) instead of a token, so each call can act
as any role; RBAC (the real role matrix read from the contracts), validation and the error mapper
are the mesh's own.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from bhiv.crm.v1 import customer_pb2
from bhiv.crm.v1 import customer_service_pb2 as cs
from bhiv.crm.v1 import customer_service_pb2_grpc as cs_grpc
from bhiv.crm.v1 import dashboard_service_pb2_grpc as ds_grpc
from bhiv.crm.v1 import interaction_service_pb2_grpc as is_grpc
from bhiv.crm.v1 import lead_service_pb2_grpc as ls_grpc
from bhiv.crm.v1 import ticket_service_pb2_grpc as ts_grpc
from bhiv_core.interceptors.errors import ErrorMappingInterceptor
from bhiv_core.interceptors.rbac import RbacInterceptor, RolePolicy
from bhiv_core.interceptors.validation import ValidationInterceptor
from bhiv_core.runtime.chain import CallInfo, PreCheckInterceptor, chain_order
from bhiv_core.runtime.errors import Unauthenticated
from bhiv_core.security.principal import Principal, current_principal
from bhiv_core.services.crm.server import definition
from tests.harness import config_for, serving


class AsCaller(PreCheckInterceptor):
    """Test stand-in for auth: the principal named by the call's ``x-test-*`` headers."""

    async def check(self, call: CallInfo, request: Any, context: Any) -> None:
        role = call.headers.get("x-test-role")
        if not role:
            raise Unauthenticated("no test principal")
        call.principal = Principal(
            subject=call.headers.get("x-test-subject", f"users/{role}"),
            role=role,
            customer=call.headers.get("x-test-customer", ""),
        )
        current_principal.set(call.principal)


def chain(*_: Any) -> Any:
    return chain_order(
        errors=ErrorMappingInterceptor("crm.bhiv.core"),
        auth=AsCaller(),
        rbac=RbacInterceptor(RolePolicy()),
        validation=ValidationInterceptor(),
    )


def as_(role: str, *, subject: str = "", customer: str = "") -> tuple[tuple[str, str], ...]:
    """Call metadata acting as ``role`` (a customer principal names its ``customers/{id}``)."""
    metadata = [("x-test-role", role), ("x-test-subject", subject or f"users/{role}")]
    if customer:
        metadata.append(("x-test-customer", customer))
    return tuple(metadata)


ADMIN = as_("admin")
SALES = as_("sales")
SUPPORT = as_("support")
OPS = as_("ops")


class Clock:
    """Real time plus an offset the test can move."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class Crm:
    """A served crm and stubs to it."""

    channel: grpc.aio.Channel
    clock: Clock
    data_dir: Path

    @property
    def customers(self) -> cs_grpc.CustomerServiceAsyncStub:
        return cs_grpc.CustomerServiceStub(self.channel)

    @property
    def leads(self) -> ls_grpc.LeadServiceAsyncStub:
        return ls_grpc.LeadServiceStub(self.channel)

    @property
    def tickets(self) -> ts_grpc.TicketServiceAsyncStub:
        return ts_grpc.TicketServiceStub(self.channel)

    @property
    def interactions(self) -> is_grpc.InteractionServiceAsyncStub:
        return is_grpc.InteractionServiceStub(self.channel)

    @property
    def dashboard(self) -> ds_grpc.DashboardServiceAsyncStub:
        return ds_grpc.DashboardServiceStub(self.channel)

    async def customer(self, email: str, first: str = "Ana", last: str = "Silva", **fields: Any) -> Any:
        """Creates a customer as sales and returns it."""
        request = cs.CreateCustomerRequest(
            customer=customer_pb2.Customer(first_name=first, last_name=last, email=email, **fields)
        )
        return (await self.customers.CreateCustomer(request, metadata=SALES)).customer


@contextlib.asynccontextmanager
async def serve_crm(data_dir: Path, clock: Clock | None = None, **env: str) -> AsyncIterator[Crm]:
    """Starts crm on ``data_dir`` (its store opened by the definition's hooks)."""
    clock = clock or Clock()
    config = config_for("crm", DATA_DIR=str(data_dir), **env)
    built = definition(config, clock=clock)
    for hook in built.on_start:
        await hook()
    try:
        async with serving(built.servicers, chain=chain, config=config, checks=dict(built.checks)) as (
            _,
            channel,
        ):
            yield Crm(channel, clock, data_dir)
    finally:
        for hook in built.on_stop:
            await hook()


@pytest.fixture
async def crm(tmp_path: Path) -> AsyncIterator[Crm]:
    async with serve_crm(tmp_path) as served:
        yield served


def violations(err: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    """The (field, reason) of every field violation an error carries."""
    found = []
    for detail in status_of(err).details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            found += [(v.field, v.reason) for v in bad.field_violations]
    return found


def reason(err: grpc.aio.AioRpcError) -> str:
    """The ``ErrorInfo`` reason of an error."""
    return error_info(err).reason


def error_info(err: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    for detail in status_of(err).details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info
    raise AssertionError("no ErrorInfo")


def status_of(err: grpc.aio.AioRpcError) -> status_pb2.Status:
    raw = dict(err.trailing_metadata() or ()).get("grpc-status-details-bin", b"")
    return status_pb2.Status.FromString(raw if isinstance(raw, bytes) else b"")


async def refused(call: Any) -> grpc.aio.AioRpcError:
    """The error an awaited call fails with (fails the test when it succeeds)."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value
