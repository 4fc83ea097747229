"""The crm servicers: proto in, domain call, proto out.

One servicer per service of ``bhiv.crm.v1``; each RPC hands its request and the caller to the
domain (:mod:`~bhiv_core.services.crm.customers` and its siblings), which answers with the
response message or raises a typed error that the error interceptor maps.
"""

from __future__ import annotations

from bhiv.crm.v1 import customer_service_pb2 as cs
from bhiv_core.runtime.chain import Context
from bhiv_core.security.principal import require_principal
from bhiv_core.services.crm.customers import Customers

__all__ = ["MISSING", "CustomerServicer"]

MISSING = "leads, tickets, interactions and the dashboard are being built (issue 10)"


class CustomerServicer:
    """Implements ``bhiv.crm.v1.CustomerService``."""

    def __init__(self, customers: Customers):
        self._customers = customers

    async def CreateCustomer(
        self, request: cs.CreateCustomerRequest, context: Context
    ) -> cs.CreateCustomerResponse:
        """Creates a customer."""
        return await self._customers.create(request, require_principal())

    async def GetCustomer(self, request: cs.GetCustomerRequest, context: Context) -> cs.GetCustomerResponse:
        """Gets a customer."""
        return await self._customers.get(request, require_principal())

    async def ListCustomers(
        self, request: cs.ListCustomersRequest, context: Context
    ) -> cs.ListCustomersResponse:
        """Lists customers."""
        return await self._customers.list(request, require_principal())

    async def UpdateCustomer(
        self, request: cs.UpdateCustomerRequest, context: Context
    ) -> cs.UpdateCustomerResponse:
        """Updates a customer."""
        return await self._customers.update(request, require_principal())

    async def DeleteCustomer(
        self, request: cs.DeleteCustomerRequest, context: Context
    ) -> cs.DeleteCustomerResponse:
        """Deletes a customer."""
        return await self._customers.delete(request, require_principal())
