"""The integrations servicers not built yet: the runtime answers their RPCs UNIMPLEMENTED."""

from __future__ import annotations

__all__ = ["MISSING", "IntegrationsServicer"]

MISSING = "this part of integrations is not built yet (issue 13)"


class IntegrationsServicer:
    """Stands in for every service of ``bhiv.integrations.v1`` without a servicer yet."""
