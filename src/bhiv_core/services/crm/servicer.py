"""The crm servicer: proto in, domain call, proto out."""

from __future__ import annotations

__all__ = ["MISSING", "CrmServicer"]

MISSING = "the CRM module (customers, leads, tickets, interactions) is a later issue"


class CrmServicer:
    """Implements ``bhiv.crm.v1``.

    No RPC is built yet: the runtime answers each one UNIMPLEMENTED with :data:`MISSING`.
    """
