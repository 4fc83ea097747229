"""The orchestration servicer: proto in, domain call, proto out."""

from __future__ import annotations

__all__ = ["MISSING", "OrchestrationServicer"]

MISSING = "agent orchestration and retrieval are a later issue"


class OrchestrationServicer:
    """Implements ``bhiv.orchestration.v1``.

    No RPC is built yet: the runtime answers each one UNIMPLEMENTED with :data:`MISSING`.
    """
