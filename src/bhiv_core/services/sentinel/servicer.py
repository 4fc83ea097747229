"""The sentinel servicer: proto in, domain call, proto out."""

from __future__ import annotations

__all__ = ["MISSING", "SentinelServicer"]

MISSING = "sentinel (audit queries, threats, blocks, alerts) is a later issue"


class SentinelServicer:
    """Implements ``bhiv.sentinel.v1``.

    No RPC is built yet: the runtime answers each one UNIMPLEMENTED with :data:`MISSING`.
    """
