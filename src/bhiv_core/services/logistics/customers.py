"""Whether a shipment's customer exists: logistics asks CRM through the generated stubs.

The call goes over :class:`~bhiv_core.runtime.clients.PeerChannels`, so it carries the caller's
bearer token (CRM authorizes the original principal: a customer can only find itself) and the
trace context (one trace spans both services). It is made before logistics opens its store
transaction, which must never wait on another service.

CRM's answer becomes logistics' error:

- NOT_FOUND (or INVALID_ARGUMENT for a name CRM refuses): NOT_FOUND ``CUSTOMER_NOT_FOUND`` naming
  ``shipment.customer`` — the same code as a line item naming no item;
- PERMISSION_DENIED and UNAUTHENTICATED: the same code, since it is the caller's credential that
  CRM refused;
- anything else (unreachable, deadline, an error of CRM's own): UNAVAILABLE ``CRM_UNAVAILABLE``,
  and nothing is reserved.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import grpc

from bhiv.crm.v1 import customer_service_pb2, customer_service_pb2_grpc
from bhiv_core.runtime.errors import BhivError, NotFound, PermissionDenied, Unauthenticated, Unavailable

__all__ = ["CRM_TIMEOUT_SECONDS", "CrmCustomers", "CustomerDirectory", "customer_not_found"]

CRM_TIMEOUT_SECONDS = 5.0
"""How long a lookup may take before the create is UNAVAILABLE."""

FIELD = "shipment.customer"


class CustomerDirectory(Protocol):
    """Answers whether a CRM customer exists, for the calling principal."""

    async def require(self, customer: str) -> None:
        """Returns when ``customer`` exists; raises the logistics error otherwise."""
        ...


def customer_not_found(customer: str) -> NotFound:
    """The NOT_FOUND of a shipment whose customer CRM does not know (or the caller may not see)."""
    return NotFound(
        f"{FIELD} {customer!r} is not a CRM customer",
        reason="CUSTOMER_NOT_FOUND",
        metadata={"field": FIELD, "customer": customer},
    )


def _mapped(error: grpc.aio.AioRpcError, customer: str) -> BhivError:
    code = error.code()
    if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
        return customer_not_found(customer)
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDenied(
            f"CRM refused to show {FIELD} {customer!r} to the caller (crm.customers.read)",
            reason="CUSTOMER_NOT_READABLE",
            metadata={"field": FIELD},
        )
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return Unauthenticated("invalid or expired credentials")
    return Unavailable(
        f"CRM could not confirm {FIELD} ({code.name}); nothing was reserved, retry later",
        reason="CRM_UNAVAILABLE",
        metadata={"field": FIELD, "crm_code": code.name},
    )


class CrmCustomers:
    """Looks customers up with CRM's ``CustomerService.GetCustomer``.

    Args:
        channel: The channel to CRM (``PeerChannels.channel("crm")``), asked for on each call
            so a closed set of channels is reopened.
        timeout: Seconds a lookup may take.

    """

    def __init__(self, channel: Callable[[], grpc.aio.Channel], *, timeout: float = CRM_TIMEOUT_SECONDS):
        self._channel = channel
        self._timeout = timeout
        self._stub: customer_service_pb2_grpc.CustomerServiceAsyncStub | None = None
        self._stub_channel: grpc.aio.Channel | None = None

    def _customers(self) -> customer_service_pb2_grpc.CustomerServiceAsyncStub:
        channel = self._channel()
        if self._stub is None or self._stub_channel is not channel:
            self._stub, self._stub_channel = customer_service_pb2_grpc.CustomerServiceStub(channel), channel
        return self._stub

    async def require(self, customer: str) -> None:
        """Returns when CRM shows ``customer`` to the caller; raises the mapped error otherwise."""
        request = customer_service_pb2.GetCustomerRequest(name=customer)
        try:
            await self._customers().GetCustomer(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as error:
            raise _mapped(error, customer) from None
