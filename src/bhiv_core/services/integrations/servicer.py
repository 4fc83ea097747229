"""The integrations servicer: proto in, domain call, proto out."""

from __future__ import annotations

__all__ = ["MISSING", "IntegrationsServicer"]

MISSING = "integrations and webhooks are a later issue"


class IntegrationsServicer:
    """Implements ``bhiv.integrations.v1``.

    No RPC is built yet: the runtime answers each one UNIMPLEMENTED with :data:`MISSING`.
    """
