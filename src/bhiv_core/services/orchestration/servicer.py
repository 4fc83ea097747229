"""The orchestration servicers: proto in, domain call, proto out.

``KnowledgeService`` is built (over :mod:`~bhiv_core.services.orchestration.knowledge`);
``AgentService``, ``TaskService`` and ``WorkflowService`` have no servicer methods yet, so the
runtime answers each of their RPCs UNIMPLEMENTED with :data:`MISSING`.
"""

from __future__ import annotations

from bhiv.orchestration.v1 import knowledge_service_pb2 as ks
from bhiv_core.runtime.chain import Context
from bhiv_core.security.principal import require_principal
from bhiv_core.services.orchestration.knowledge import Knowledge

__all__ = ["MISSING", "KnowledgeServicer", "OrchestrationServicer"]

MISSING = "agents, tasks and workflows are a later part of issue 12 (the knowledge base is built)"


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
