"""The llm servicer: proto in, domain call, proto out."""

from __future__ import annotations

__all__ = ["MISSING", "LlmServicer"]

MISSING = "the LLM service (Groq with an offline fallback) is a later issue"


class LlmServicer:
    """Implements ``bhiv.llm.v1``.

    No RPC is built yet: the runtime answers each one UNIMPLEMENTED with :data:`MISSING`.
    """
