"""The logistics servicer: proto in, domain call, proto out."""

from __future__ import annotations

__all__ = ["MISSING", "LogisticsServicer"]

MISSING = "the logistics module (inventory, suppliers, shipments) is a later issue"


class LogisticsServicer:
    """Implements ``bhiv.logistics.v1``.

    No RPC is built yet: the runtime answers each one UNIMPLEMENTED with :data:`MISSING`.
    """
