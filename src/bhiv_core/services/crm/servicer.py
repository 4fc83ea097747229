"""The crm servicers: proto in, domain call, proto out.

One servicer per service of ``bhiv.crm.v1``; each RPC hands its request and the caller to the
domain (:mod:`~bhiv_core.services.crm.customers`, ``leads``, ``tickets``, ``interactions``,
``dashboard``), which answers with the response message or raises a typed error that the error
interceptor maps.
"""

from __future__ import annotations

from bhiv.crm.v1 import customer_service_pb2 as cs
from bhiv.crm.v1 import dashboard_service_pb2 as ds
from bhiv.crm.v1 import interaction_service_pb2 as its
from bhiv.crm.v1 import lead_service_pb2 as ls
from bhiv.crm.v1 import ticket_service_pb2 as ts
from bhiv_core.runtime.chain import Context
from bhiv_core.security.principal import require_principal
from bhiv_core.services.crm.customers import Customers
from bhiv_core.services.crm.dashboard import Dashboard
from bhiv_core.services.crm.interactions import Interactions
from bhiv_core.services.crm.leads import Leads
from bhiv_core.services.crm.tickets import Tickets

__all__ = [
    "MISSING",
    "CustomerServicer",
    "DashboardServicer",
    "InteractionServicer",
    "LeadServicer",
    "TicketServicer",
]

MISSING = "this build of crm predates it (every RPC of its contract is built)"
"""What the runtime says of an RPC no servicer has: only one added to the contract after this build."""


class CustomerServicer:
    """Implements ``bhiv.crm.v1.CustomerService``."""

    def __init__(self, customers: Customers):
        self._domain = customers

    async def CreateCustomer(
        self, request: cs.CreateCustomerRequest, context: Context
    ) -> cs.CreateCustomerResponse:
        """Creates a customer."""
        return await self._domain.create(request, require_principal())

    async def GetCustomer(self, request: cs.GetCustomerRequest, context: Context) -> cs.GetCustomerResponse:
        """Gets a customer."""
        return await self._domain.get(request, require_principal())

    async def ListCustomers(
        self, request: cs.ListCustomersRequest, context: Context
    ) -> cs.ListCustomersResponse:
        """Lists customers."""
        return await self._domain.list(request, require_principal())

    async def UpdateCustomer(
        self, request: cs.UpdateCustomerRequest, context: Context
    ) -> cs.UpdateCustomerResponse:
        """Updates a customer."""
        return await self._domain.update(request, require_principal())

    async def DeleteCustomer(
        self, request: cs.DeleteCustomerRequest, context: Context
    ) -> cs.DeleteCustomerResponse:
        """Deletes a customer."""
        return await self._domain.delete(request, require_principal())


class LeadServicer:
    """Implements ``bhiv.crm.v1.LeadService``."""

    def __init__(self, leads: Leads):
        self._domain = leads

    async def CreateLead(self, request: ls.CreateLeadRequest, context: Context) -> ls.CreateLeadResponse:
        """Creates a lead."""
        return await self._domain.create(request, require_principal())

    async def GetLead(self, request: ls.GetLeadRequest, context: Context) -> ls.GetLeadResponse:
        """Gets a lead."""
        return await self._domain.get(request, require_principal())

    async def ListLeads(self, request: ls.ListLeadsRequest, context: Context) -> ls.ListLeadsResponse:
        """Lists leads."""
        return await self._domain.list(request, require_principal())

    async def UpdateLead(self, request: ls.UpdateLeadRequest, context: Context) -> ls.UpdateLeadResponse:
        """Updates a lead."""
        return await self._domain.update(request, require_principal())

    async def DeleteLead(self, request: ls.DeleteLeadRequest, context: Context) -> ls.DeleteLeadResponse:
        """Deletes a lead."""
        return await self._domain.delete(request, require_principal())

    async def ConvertLead(self, request: ls.ConvertLeadRequest, context: Context) -> ls.ConvertLeadResponse:
        """Converts a lead into a customer."""
        return await self._domain.convert(request, require_principal())


class TicketServicer:
    """Implements ``bhiv.crm.v1.TicketService``."""

    def __init__(self, tickets: Tickets):
        self._domain = tickets

    async def CreateTicket(
        self, request: ts.CreateTicketRequest, context: Context
    ) -> ts.CreateTicketResponse:
        """Creates a ticket."""
        return await self._domain.create(request, require_principal())

    async def GetTicket(self, request: ts.GetTicketRequest, context: Context) -> ts.GetTicketResponse:
        """Gets a ticket."""
        return await self._domain.get(request, require_principal())

    async def ListTickets(self, request: ts.ListTicketsRequest, context: Context) -> ts.ListTicketsResponse:
        """Lists tickets."""
        return await self._domain.list(request, require_principal())

    async def UpdateTicket(
        self, request: ts.UpdateTicketRequest, context: Context
    ) -> ts.UpdateTicketResponse:
        """Updates a ticket."""
        return await self._domain.update(request, require_principal())

    async def AssignTicket(
        self, request: ts.AssignTicketRequest, context: Context
    ) -> ts.AssignTicketResponse:
        """Assigns a ticket."""
        return await self._domain.assign(request, require_principal())

    async def ResolveTicket(
        self, request: ts.ResolveTicketRequest, context: Context
    ) -> ts.ResolveTicketResponse:
        """Resolves a ticket."""
        return await self._domain.resolve(request, require_principal())

    async def CloseTicket(self, request: ts.CloseTicketRequest, context: Context) -> ts.CloseTicketResponse:
        """Closes a ticket."""
        return await self._domain.close(request, require_principal())

    async def ReopenTicket(
        self, request: ts.ReopenTicketRequest, context: Context
    ) -> ts.ReopenTicketResponse:
        """Reopens a ticket."""
        return await self._domain.reopen(request, require_principal())


class InteractionServicer:
    """Implements ``bhiv.crm.v1.InteractionService``."""

    def __init__(self, interactions: Interactions):
        self._domain = interactions

    async def CreateInteraction(
        self, request: its.CreateInteractionRequest, context: Context
    ) -> its.CreateInteractionResponse:
        """Records an interaction."""
        return await self._domain.create(request, require_principal())

    async def GetInteraction(
        self, request: its.GetInteractionRequest, context: Context
    ) -> its.GetInteractionResponse:
        """Gets an interaction."""
        return await self._domain.get(request, require_principal())

    async def ListInteractions(
        self, request: its.ListInteractionsRequest, context: Context
    ) -> its.ListInteractionsResponse:
        """Lists interactions."""
        return await self._domain.list(request, require_principal())


class DashboardServicer:
    """Implements ``bhiv.crm.v1.DashboardService``."""

    def __init__(self, dashboard: Dashboard):
        self._domain = dashboard

    async def GetDashboard(
        self, request: ds.GetDashboardRequest, context: Context
    ) -> ds.GetDashboardResponse:
        """Returns the dashboard."""
        return await self._domain.get(request, require_principal())
