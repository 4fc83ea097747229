"""The llm servicer: proto in, domain call, proto out."""

from __future__ import annotations

from collections.abc import AsyncIterator

from bhiv.llm.v1 import completion_service_pb2 as cs
from bhiv.llm.v1 import model_service_pb2 as ms
from bhiv.llm.v1 import usage_service_pb2 as us
from bhiv_core.runtime.chain import Context
from bhiv_core.security.principal import require_principal
from bhiv_core.services.llm.completions import Completions
from bhiv_core.services.llm.usage import Usage

__all__ = ["MISSING", "LlmServicer"]

MISSING = "not built yet in this llm (conversations are a later change of issue 12)"
"""What the runtime says of an RPC this servicer lacks: the ConversationService."""


class LlmServicer:
    """Implements ``bhiv.llm.v1`` CompletionService, ModelService and UsageService.

    ConversationService is not built yet: the runtime answers its RPCs UNIMPLEMENTED with
    :data:`MISSING`.
    """

    def __init__(self, completions: Completions, usage: Usage):
        self._completions = completions
        self._usage = usage

    async def Complete(self, request: cs.CompleteRequest, context: Context) -> cs.CompleteResponse:
        """Completes a chat."""
        return await self._completions.complete(request, require_principal())

    async def StreamComplete(
        self, request: cs.StreamCompleteRequest, context: Context
    ) -> AsyncIterator[cs.StreamCompleteResponse]:
        """Streams a completion: deltas, then the whole completion."""
        async for event in self._completions.stream(request, require_principal()):
            yield event

    async def ListModels(self, request: ms.ListModelsRequest, context: Context) -> ms.ListModelsResponse:
        """Lists the configured models."""
        return self._completions.list_models(request)

    async def GetUsage(self, request: us.GetUsageRequest, context: Context) -> us.GetUsageResponse:
        """Gets a principal's usage and budget standing."""
        return await self._usage.get_usage(request, require_principal())

    async def SetBudget(self, request: us.SetBudgetRequest, context: Context) -> us.SetBudgetResponse:
        """Sets a principal's monthly budget."""
        return await self._usage.set_budget(request)
