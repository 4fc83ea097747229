"""The orchestration servicers: proto in, domain call, proto out.

``KnowledgeService`` (over :mod:`~bhiv_core.services.orchestration.knowledge`),
``AgentService`` (over :mod:`~bhiv_core.services.orchestration.agents`), ``TaskService`` (over
:mod:`~bhiv_core.services.orchestration.tasks`) and ``WorkflowService`` (over
:mod:`~bhiv_core.services.orchestration.workflows`) are built; a service of the package without a
servicer would answer UNIMPLEMENTED with :data:`MISSING`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from bhiv.orchestration.v1 import agent_service_pb2 as asv
from bhiv.orchestration.v1 import knowledge_service_pb2 as ks
from bhiv.orchestration.v1 import task_service_pb2 as ts
from bhiv.orchestration.v1 import workflow_service_pb2 as ws
from bhiv_core.runtime.chain import Context
from bhiv_core.security.principal import require_principal
from bhiv_core.services.orchestration.agents import Agents
from bhiv_core.services.orchestration.knowledge import Knowledge
from bhiv_core.services.orchestration.tasks import Tasks
from bhiv_core.services.orchestration.workflows import Workflows

__all__ = [
    "MISSING",
    "AgentServicer",
    "KnowledgeServicer",
    "OrchestrationServicer",
    "TaskServicer",
    "WorkflowServicer",
]

MISSING = "not built in orchestration"


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


class TaskServicer:
    """Implements ``bhiv.orchestration.v1.TaskService``."""

    def __init__(self, tasks: Tasks):
        self._domain = tasks

    async def CreateTask(self, request: ts.CreateTaskRequest, context: Context) -> ts.CreateTaskResponse:
        """Creates a pending task."""
        return await self._domain.create(request, require_principal())

    async def GetTask(self, request: ts.GetTaskRequest, context: Context) -> ts.GetTaskResponse:
        """Gets a task."""
        return await self._domain.get(request, require_principal())

    async def ListTasks(self, request: ts.ListTasksRequest, context: Context) -> ts.ListTasksResponse:
        """Lists tasks."""
        return await self._domain.list(request, require_principal())

    async def ExecuteTask(self, request: ts.ExecuteTaskRequest, context: Context) -> ts.ExecuteTaskResponse:
        """Runs a task."""
        return await self._domain.execute(request, require_principal())

    async def CancelTask(self, request: ts.CancelTaskRequest, context: Context) -> ts.CancelTaskResponse:
        """Cancels a task."""
        return await self._domain.cancel(request, require_principal())


class WorkflowServicer:
    """Implements ``bhiv.orchestration.v1.WorkflowService``."""

    def __init__(self, workflows: Workflows):
        self._domain = workflows

    async def CreateWorkflow(
        self, request: ws.CreateWorkflowRequest, context: Context
    ) -> ws.CreateWorkflowResponse:
        """Creates a pending workflow."""
        return await self._domain.create(request, require_principal())

    async def GetWorkflow(self, request: ws.GetWorkflowRequest, context: Context) -> ws.GetWorkflowResponse:
        """Gets a workflow."""
        return await self._domain.get(request, require_principal())

    async def ListWorkflows(
        self, request: ws.ListWorkflowsRequest, context: Context
    ) -> ws.ListWorkflowsResponse:
        """Lists workflows."""
        return await self._domain.list(request, require_principal())

    async def ExecuteWorkflow(
        self, request: ws.ExecuteWorkflowRequest, context: Context
    ) -> ws.ExecuteWorkflowResponse:
        """Runs a workflow."""
        return await self._domain.execute(request, require_principal())

    async def CancelWorkflow(
        self, request: ws.CancelWorkflowRequest, context: Context
    ) -> ws.CancelWorkflowResponse:
        """Cancels a workflow."""
        return await self._domain.cancel(request, require_principal())
