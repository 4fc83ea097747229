"""The orchestration servicers: proto in, domain call, proto out.

``KnowledgeService`` (over :mod:`~bhiv_core.services.orchestration.knowledge`) and
``AgentService`` (over :mod:`~bhiv_core.services.orchestration.agents`) are built;
``TaskService`` and ``WorkflowService`` have no servicer methods yet (issue 13), so the runtime
answers each of their RPCs UNIMPLEMENTED with :data:`MISSING`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from bhiv.orchestration.v1 import agent_service_pb2 as asv
from bhiv.orchestration.v1 import knowledge_service_pb2 as ks
from bhiv_core.runtime.chain import Context
from bhiv_core.security.principal import require_principal
from bhiv_core.services.orchestration.agents import Agents
from bhiv_core.services.orchestration.knowledge import Knowledge

__all__ = ["MISSING", "AgentServicer", "KnowledgeServicer", "OrchestrationServicer"]

MISSING = "tasks and workflows are issue 13 (the knowledge base and the agents are built)"


class OrchestrationServicer:
    """The services of ``bhiv.orchestration.v1`` not built yet: every RPC is UNIMPLEMENTED."""


class KnowledgeServicer:
    """Implements ``bhiv.orchestration.v1.KnowledgeService``."""

    def __init__(self, knowledge: Knowledge):
        self._domain = knowledge

    async def IngestDocument(
        self, request: ks.IngestDocumentRequest, context: Context
    ) -> ks.IngestDocumentResponse:
        """Ingests a document."""
        return await self._domain.ingest(request, require_principal())

    async def GetDocument(self, request: ks.GetDocumentRequest, context: Context) -> ks.GetDocumentResponse:
        """Gets a document."""
        return await self._domain.get(request, require_principal())

    async def ListDocuments(
        self, request: ks.ListDocumentsRequest, context: Context
    ) -> ks.ListDocumentsResponse:
        """Lists documents."""
        return await self._domain.list(request, require_principal())

    async def DeleteDocument(
        self, request: ks.DeleteDocumentRequest, context: Context
    ) -> ks.DeleteDocumentResponse:
        """Deletes a document and its passages."""
        return await self._domain.delete(request, require_principal())

    async def SearchKnowledge(
        self, request: ks.SearchKnowledgeRequest, context: Context
    ) -> ks.SearchKnowledgeResponse:
        """Searches the passages."""
        return await self._domain.search(request, require_principal())


class AgentServicer:
    """Implements ``bhiv.orchestration.v1.AgentService``."""

    def __init__(self, agents: Agents):
        self._domain = agents

    async def ListAgents(self, request: asv.ListAgentsRequest, context: Context) -> asv.ListAgentsResponse:
        """Lists the agents."""
        return self._domain.list_agents(request)

    async def GetAgent(self, request: asv.GetAgentRequest, context: Context) -> asv.GetAgentResponse:
        """Gets an agent."""
        return self._domain.get_agent(request)

    async def Ask(self, request: asv.AskRequest, context: Context) -> asv.AskResponse:
        """Routes a query to an agent and answers."""
        return await self._domain.ask(request, require_principal())

    async def StreamAsk(
        self, request: asv.StreamAskRequest, context: Context
    ) -> AsyncIterator[asv.StreamAskResponse]:
        """Routes a query and streams the answer."""
        async for event in self._domain.stream_ask(request, require_principal()):
            yield event

    async def InvokeAgent(self, request: asv.InvokeAgentRequest, context: Context) -> asv.InvokeAgentResponse:
        """Sends a query to a named agent."""
        return await self._domain.invoke(request, require_principal())
