"""The llm servicer: proto in, domain call, proto out."""

from __future__ import annotations

from collections.abc import AsyncIterator

from bhiv.llm.v1 import completion_service_pb2 as cs
from bhiv.llm.v1 import model_service_pb2 as ms
from bhiv_core.runtime.chain import Context
from bhiv_core.services.llm.completions import Completions

__all__ = ["MISSING", "LlmServicer"]

MISSING = "not built yet in this llm (conversations and usage/budgets are a later change of issue 12)"
"""What the runtime says of an RPC this servicer lacks: ConversationService and UsageService."""


class LlmServicer:
    """Implements ``bhiv.llm.v1`` CompletionService and ModelService.

    ConversationService and UsageService are not built yet: the runtime answers their RPCs
    UNIMPLEMENTED with :data:`MISSING`.
    """

    def __init__(self, completions: Completions):
        self._completions = completions

    async def Complete(self, request: cs.CompleteRequest, context: Context) -> cs.CompleteResponse:
        """Completes a chat."""
        return await self._completions.complete(request)

    async def StreamComplete(
        self, request: cs.StreamCompleteRequest, context: Context
    ) -> AsyncIterator[cs.StreamCompleteResponse]:
        """Streams a completion: deltas, then the whole completion."""
        async for event in self._completions.stream(request):
            yield event

    async def ListModels(self, request: ms.ListModelsRequest, context: Context) -> ms.ListModelsResponse:
        """Lists the configured models."""
        return self._completions.list_models(request)
