"""A served orchestration whose ``planner`` is a scripted test agent, for tasks and workflows.

The scripted agent has the planner's spec (so the catalog still holds the twelve ids) and does
what the test tells it: answer with a text derived from its query, fail, or hang. Every other
agent is the real one. The server is the real definition (kit store, index, runner, servicers)
behind the real error mapper, RBAC and validation; the principal comes from test headers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bhiv.orchestration.v1 import task_service_pb2_grpc, workflow_service_pb2_grpc
from bhiv_core.agents.base import AGENT_INTENTS, AgentRequest, AgentSpec, InputType, Reply, Tools
from bhiv_core.agents.catalog import build_catalog
from bhiv_core.runtime.errors import Unavailable
from bhiv_core.security.principal import Principal, current_principal
from bhiv_core.services.orchestration.runs import Runner
from bhiv_core.services.orchestration.server import definition
from tests.harness import config_for, serving
from tests.services.orchestration.conftest import chain


@dataclass
class Scripted:
    """A stand-in ``planner``: ``mode`` is ``answer``, ``fail`` or ``hang``; it records its queries.

    ``fail_times`` makes an ``answer`` agent fail its first calls (a flaky agent).
    """

    mode: str = "answer"
    fail_times: int = 0
    queries: list[str] = field(default_factory=list)
    principals: list[Principal | None] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    spec: AgentSpec = field(
        default_factory=lambda: AgentSpec(
            "planner", "Planner (scripted)", "a test agent", (InputType.TEXT,), AGENT_INTENTS["planner"]
        )
    )

    async def answer(self, request: AgentRequest, tools: Tools) -> Reply:
        self.queries.append(request.query)
        self.principals.append(current_principal.get())
        self.started.set()
        if self.mode == "hang":
            await asyncio.sleep(3600)
        if self.mode == "fail" or len(self.queries) <= self.fail_times:
            raise Unavailable(f"the scripted planner refused call {len(self.queries)}", reason="SCRIPTED")
        return Reply.of_text(f"PLAN[{request.query}]")


@dataclass
class Served:
    """A served orchestration with the scripted planner."""

    channel: grpc.aio.Channel
    planner: Scripted
    data_dir: Path
    runner: Runner
    servicers: dict[str, object]

    def crash(self) -> None:
        """Stops the runner as a killed process would: no lease renewed, expired or released."""
        if self.runner._loop_task is not None:
            self.runner._loop_task.cancel()
            self.runner._loop_task = None
        for key in list(self.runner._local):
            local = self.runner._local.pop(key)
            if local.task is not None:
                local.task.cancel()

    @property
    def tasks(self) -> Any:
        return task_service_pb2_grpc.TaskServiceStub(self.channel)

    @property
    def workflows(self) -> Any:
        return workflow_service_pb2_grpc.WorkflowServiceStub(self.channel)


@contextlib.asynccontextmanager
async def serve_with_planner(
    data_dir: Path, planner: Scripted | None = None, **env: str
) -> AsyncIterator[Served]:
    """Starts orchestration on ``data_dir`` with ``planner``; offline agents, BM25, no samples."""
    planner = planner or Scripted()
    catalog = dict(build_catalog())
    catalog["planner"] = planner  # type: ignore[assignment]
    settings = {"KNOWLEDGE_DENSE": "off", "AGENTS_LLM": "off", "KNOWLEDGE_SAMPLE_CORPUS": "off"} | env
    config = config_for("orchestration", DATA_DIR=str(data_dir), **settings)
    built = definition(config, catalog=catalog)
    runner = next(getattr(hook, "__self__", None) for hook in built.on_start if hook.__name__ == "start_loop")
    assert isinstance(runner, Runner)
    for hook in built.on_start:
        await hook()
    try:
        async with serving(built.servicers, chain=chain, config=config, checks=dict(built.checks)) as (
            _,
            channel,
        ):
            servicers = {descriptor.name: servicer for descriptor, servicer in built.servicers}
            yield Served(channel, planner, data_dir, runner, servicers)
    finally:
        for hook in built.on_stop:
            await hook()


async def until(predicate: Any, *, attempts: int = 400, pause: float = 0.05) -> Any:
    """Polls ``predicate`` (an async function) until it returns something truthy; fails after ~20 s."""
    for _ in range(attempts):
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(pause)
    raise AssertionError("the condition never held")
