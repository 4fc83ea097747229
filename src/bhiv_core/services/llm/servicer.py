"""The llm servicer: proto in, domain call, proto out."""

from __future__ import annotations

from collections.abc import AsyncIterator

from bhiv.llm.v1 import completion_service_pb2 as cs
from bhiv.llm.v1 import conversation_service_pb2 as vs
from bhiv.llm.v1 import model_service_pb2 as ms
from bhiv.llm.v1 import usage_service_pb2 as us
from bhiv_core.runtime.chain import Context
from bhiv_core.security.principal import require_principal
from bhiv_core.services.llm.completions import Completions
from bhiv_core.services.llm.conversations import Conversations
from bhiv_core.services.llm.usage import Usage

__all__ = ["MISSING", "LlmServicer"]

MISSING = "this build of llm predates it (every RPC of its contract is built)"
"""What the runtime says of an RPC no servicer has: only one added to the contract after this build."""


class LlmServicer:
    """Implements every service of ``bhiv.llm.v1``."""

    def __init__(self, completions: Completions, usage: Usage, conversations: Conversations):
        self._completions = completions
        self._usage = usage
        self._conversations = conversations

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

    async def CreateConversation(
        self, request: vs.CreateConversationRequest, context: Context
    ) -> vs.CreateConversationResponse:
        """Creates a conversation owned by the caller."""
        self._completions.check_model(request.conversation.model)
        return await self._conversations.create(request, require_principal())

    async def GetConversation(
        self, request: vs.GetConversationRequest, context: Context
    ) -> vs.GetConversationResponse:
        """Gets one of the caller's conversations with its messages."""
        return await self._conversations.get(request, require_principal())

    async def ListConversations(
        self, request: vs.ListConversationsRequest, context: Context
    ) -> vs.ListConversationsResponse:
        """Lists the caller's conversations."""
        return await self._conversations.list_own(request, require_principal())

    async def AppendMessage(
        self, request: vs.AppendMessageRequest, context: Context
    ) -> vs.AppendMessageResponse:
        """Appends a user message to a conversation and the model's reply."""
        return await self._completions.append_message(request, require_principal())

    async def DeleteConversation(
        self, request: vs.DeleteConversationRequest, context: Context
    ) -> vs.DeleteConversationResponse:
        """Deletes one of the caller's conversations."""
        return await self._conversations.delete(request, require_principal())
