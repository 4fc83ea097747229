"""Tasks and workflows through the real edge: a three-step chain fed step to step, a step that
times out on every attempt failing the workflow cleanly, cancellation, and a SIGKILL of
orchestration in the middle of a step, after which the workflow resumes or fails, never "running".

The llm service of this module's mesh is keyed to a fake Groq on loopback (the one the llm tests
use): it answers every completion at once, except those whose prompt holds a marker a test
registered, which it holds unanswered until the test releases the marker. That is how a step is
made slow or stuck, deterministically, with real agents, a real llm service and real Groq HTTP.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from bhiv.orchestration.v1 import task_pb2, workflow_pb2
from bhiv.orchestration.v1 import task_service_pb2 as tks
from bhiv.orchestration.v1 import task_service_pb2_grpc as tks_grpc
from bhiv.orchestration.v1 import workflow_service_pb2 as wfs
from bhiv.orchestration.v1 import workflow_service_pb2_grpc as wfs_grpc
from bhiv_core.mesh import Mesh
from tests.e2e.client import CALL_TIMEOUT, Session, admin_session
from tests.e2e.conftest import mesh_env
from tests.e2e.receiver import until
from tests.services.llm.conftest import FakeGroq

pytestmark = pytest.mark.e2e

GITA = "What does the Gita say about acting without attachment to results?"
RUN_TIMEOUT = 180.0
"""Seconds a workflow may take to finish here: agents load their models on first use."""
FINISHED = {workflow_pb2.WORKFLOW_STATUS_SUCCEEDED, workflow_pb2.WORKFLOW_STATUS_FAILED}


@dataclass
class HoldingGroq(FakeGroq):
    """The llm tests' fake Groq, holding back the completions whose request names a held marker."""

    held: dict[str, asyncio.Event] = field(default_factory=dict)
    seen: dict[str, int] = field(default_factory=dict)

    def hold(self) -> str:
        """A new marker: completions whose prompt holds it wait until :meth:`release`."""
        marker = f"HOLD{secrets.token_hex(6)}"
        self.held[marker] = asyncio.Event()
        self.seen[marker] = 0
        return marker

    def release(self, marker: str) -> None:
        """Answers the held completions of ``marker`` now, and later ones at once."""
        self.held[marker].set()

    async def _answer(self, behaviour: str, body: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        text = json.dumps(body)
        for marker, released in self.held.items():
            if marker in text:
                self.seen[marker] += 1
                await released.wait()
        await super()._answer(behaviour, body, writer)

    def release_all(self) -> None:
        for released in self.held.values():
            released.set()


@pytest.fixture(scope="module")
async def groq() -> AsyncIterator[HoldingGroq]:
    fake = HoldingGroq()
    server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
    fake.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield fake
    finally:
        fake.release_all()
        server.close()


@pytest.fixture(scope="module")
async def mesh(
    tmp_path_factory: pytest.TempPathFactory, collector: Any, groq: HoldingGroq
) -> AsyncIterator[Mesh]:
    secrets_dir: Path = tmp_path_factory.mktemp("groq")
    key = secrets_dir / "groq.key"
    key.write_text("gsk_test_not_a_real_key\n")
    key.chmod(0o600)
    env = mesh_env(collector[1]) | {
        "BHIV_LLM_GROQ_API_KEY_FILE": str(key),
        "BHIV_LLM_GROQ_BASE_URL": groq.url,
        # A held completion stays held: neither Groq's client nor the agent gives up first.
        "BHIV_LLM_GROQ_TIMEOUT_SECONDS": "300",
        "BHIV_LLM_GROQ_MAX_RETRIES": "0",
        "BHIV_AGENTS_DEADLINE_SECONDS": "300",
    }
    started = Mesh.with_free_ports(tmp_path_factory.mktemp("workflows"), env=env, edge_rate_limit=100_000)
    async with started:
        yield started


@pytest.fixture(scope="module")
async def admin(mesh: Mesh) -> Session:
    return await admin_session(mesh)


@pytest.fixture
async def channel(mesh: Mesh) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(mesh.edge_address) as opened:
        yield opened


def step(
    agent: str, template: str, *, timeout: float = 0, max_attempts: int = 0
) -> workflow_pb2.WorkflowStep:
    return workflow_pb2.WorkflowStep(
        agent=f"agents/{agent}",
        input_template=template,
        timeout=Duration(seconds=int(timeout)) if timeout else None,
        max_attempts=max_attempts,
    )


async def create_workflow(
    channel: grpc.aio.Channel, admin: Session, steps: list[workflow_pb2.WorkflowStep], input: str = GITA
) -> workflow_pb2.Workflow:
    reply = await wfs_grpc.WorkflowServiceStub(channel).CreateWorkflow(
        wfs.CreateWorkflowRequest(
            workflow=workflow_pb2.Workflow(
                display_name=f"e2e {secrets.token_hex(3)}", input=input, steps=steps
            )
        ),
        metadata=admin.metadata,
        timeout=CALL_TIMEOUT,
    )
    return reply.workflow


async def get_workflow(channel: grpc.aio.Channel, admin: Session, name: str) -> workflow_pb2.Workflow:
    reply = await wfs_grpc.WorkflowServiceStub(channel).GetWorkflow(
        wfs.GetWorkflowRequest(name=name), metadata=admin.metadata, timeout=CALL_TIMEOUT
    )
    return reply.workflow


async def execute(
    channel: grpc.aio.Channel, admin: Session, name: str, *, wait: bool
) -> workflow_pb2.Workflow:
    reply = await wfs_grpc.WorkflowServiceStub(channel).ExecuteWorkflow(
        wfs.ExecuteWorkflowRequest(name=name, wait=wait),
        metadata=admin.metadata,
        timeout=RUN_TIMEOUT if wait else CALL_TIMEOUT,
    )
    return reply.workflow


def statuses(workflow: workflow_pb2.Workflow) -> list[int]:
    return [r.status for r in workflow.step_results]


async def test_a_three_step_workflow_runs_to_completion_each_step_fed_by_the_one_before(
    channel: grpc.aio.Channel, admin: Session
) -> None:
    created = await create_workflow(
        channel,
        admin,
        [
            step("vedas", "{{input}}"),
            step("knowledge", "Find passages about: {{step_1}}"),
            step("text", "Extract the keywords: {{step_2}} / {{step_1}}"),
        ],
    )
    assert created.name.startswith("workflows/")
    assert created.status == workflow_pb2.WORKFLOW_STATUS_PENDING
    done = await execute(channel, admin, created.name, wait=True)
    assert done.status == workflow_pb2.WORKFLOW_STATUS_SUCCEEDED, done.error_message
    assert statuses(done) == [workflow_pb2.STEP_STATUS_SUCCEEDED] * 3
    first, second, third = done.step_results
    assert [r.step_number for r in done.step_results] == [1, 2, 3]
    assert [r.agent for r in done.step_results] == ["agents/vedas", "agents/knowledge", "agents/text"]
    assert [r.attempts for r in done.step_results] == [1, 1, 1]
    assert first.rendered_input == GITA
    assert first.answer.text.strip()
    assert second.rendered_input == f"Find passages about: {first.answer.text}"
    assert third.rendered_input == f"Extract the keywords: {second.answer.text} / {first.answer.text}"
    assert third.answer.agent == "agents/text" and third.answer.text.strip()
    assert done.error_message == ""
    assert done.HasField("start_time") and done.HasField("end_time")
    for result in done.step_results:
        assert result.start_time.ToNanoseconds() <= result.end_time.ToNanoseconds()
    assert (await get_workflow(channel, admin, created.name)) == done
    listed = await wfs_grpc.WorkflowServiceStub(channel).ListWorkflows(
        wfs.ListWorkflowsRequest(status=workflow_pb2.WORKFLOW_STATUS_SUCCEEDED, page_size=500),
        metadata=admin.metadata,
        timeout=CALL_TIMEOUT,
    )
    assert created.name in [w.name for w in listed.workflows]


async def test_a_step_timing_out_on_every_attempt_fails_the_workflow_and_skips_the_rest(
    channel: grpc.aio.Channel, admin: Session, groq: HoldingGroq
) -> None:
    marker = groq.hold()
    try:
        created = await create_workflow(
            channel,
            admin,
            [
                step("knowledge", "{{input}}"),
                step("text", f"Rewrite this text: {marker} {{{{step_1}}}}", timeout=2, max_attempts=2),
                step("text", "Extract the keywords: {{step_2}}"),
            ],
        )
        done = await execute(channel, admin, created.name, wait=True)
    finally:
        groq.release(marker)
    assert done.status == workflow_pb2.WORKFLOW_STATUS_FAILED
    assert statuses(done) == [
        workflow_pb2.STEP_STATUS_SUCCEEDED,
        workflow_pb2.STEP_STATUS_TIMED_OUT,
        workflow_pb2.STEP_STATUS_SKIPPED,
    ]
    first, failed, skipped = done.step_results
    assert failed.attempts == 2
    assert failed.error_message and done.error_message
    assert failed.rendered_input == f"Rewrite this text: {marker} {first.answer.text}"
    assert not failed.HasField("answer")
    assert skipped.attempts == 0 and skipped.rendered_input == "" and not skipped.HasField("start_time")
    # The held completions were real attempts that reached the model.
    assert groq.seen[marker] >= 1


async def test_a_running_workflow_is_cancelled_and_stays_cancelled(
    channel: grpc.aio.Channel, admin: Session, groq: HoldingGroq
) -> None:
    stub = wfs_grpc.WorkflowServiceStub(channel)
    marker = groq.hold()
    try:
        created = await create_workflow(
            channel,
            admin,
            [
                step("text", f"Rewrite this text: {marker} {{{{input}}}}"),
                step("text", "Extract the keywords: {{step_1}}"),
            ],
        )
        running = await execute(channel, admin, created.name, wait=False)
        assert running.status == workflow_pb2.WORKFLOW_STATUS_RUNNING
        await until(lambda: groq.seen[marker], timeout=RUN_TIMEOUT)
        busy = await refused(
            stub.ExecuteWorkflow(
                wfs.ExecuteWorkflowRequest(name=created.name), metadata=admin.metadata, timeout=CALL_TIMEOUT
            )
        )
        cancelled = (
            await stub.CancelWorkflow(
                wfs.CancelWorkflowRequest(name=created.name), metadata=admin.metadata, timeout=CALL_TIMEOUT
            )
        ).workflow
    finally:
        groq.release(marker)
    again = await refused(
        stub.CancelWorkflow(
            wfs.CancelWorkflowRequest(name=created.name), metadata=admin.metadata, timeout=CALL_TIMEOUT
        )
    )
    assert busy.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert cancelled.status == workflow_pb2.WORKFLOW_STATUS_CANCELLED
    assert cancelled.step_results[1].status == workflow_pb2.STEP_STATUS_SKIPPED
    assert cancelled.step_results[0].status != workflow_pb2.STEP_STATUS_RUNNING
    assert again.code() == grpc.StatusCode.FAILED_PRECONDITION
    # The abandoned step's answer, now released, changes nothing.
    after = await get_workflow(channel, admin, created.name)
    assert after.status == workflow_pb2.WORKFLOW_STATUS_CANCELLED
    assert statuses(after) == statuses(cancelled)


async def test_bad_workflows_and_tasks_are_refused_with_exact_codes(
    channel: grpc.aio.Channel, admin: Session
) -> None:
    later = await refused(create_workflow(channel, admin, [step("qna", "{{step_1}}")]))
    unknown = await refused(create_workflow(channel, admin, [step("qna", "{{nonsense}}")]))
    missing = await refused(create_workflow(channel, admin, [step("nosuchagent", "{{input}}")]))
    none = await refused(
        tks_grpc.TaskServiceStub(channel).CreateTask(
            tks.CreateTaskRequest(task=task_pb2.Task(agent="agents/qna")),
            metadata=admin.metadata,
            timeout=CALL_TIMEOUT,
        )
    )
    gone = await refused(get_workflow(channel, admin, "workflows/doesnotexist"))
    assert later.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert unknown.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    assert none.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert gone.code() == grpc.StatusCode.NOT_FOUND


async def test_a_task_runs_an_agent_through_the_edge(channel: grpc.aio.Channel, admin: Session) -> None:
    tasks = tks_grpc.TaskServiceStub(channel)
    created = (
        await tasks.CreateTask(
            tks.CreateTaskRequest(task=task_pb2.Task(agent="agents/vedas", query=GITA)),
            metadata=admin.metadata,
            timeout=CALL_TIMEOUT,
        )
    ).task
    assert created.status == task_pb2.TASK_STATUS_PENDING
    done = (
        await tasks.ExecuteTask(
            tks.ExecuteTaskRequest(name=created.name, wait=True), metadata=admin.metadata, timeout=RUN_TIMEOUT
        )
    ).task
    listed = await tasks.ListTasks(
        tks.ListTasksRequest(agent="agents/vedas", page_size=500),
        metadata=admin.metadata,
        timeout=CALL_TIMEOUT,
    )
    finished = await refused(
        tasks.CancelTask(
            tks.CancelTaskRequest(name=created.name), metadata=admin.metadata, timeout=CALL_TIMEOUT
        )
    )
    assert done.status == task_pb2.TASK_STATUS_SUCCEEDED, done.error_message
    assert done.attempts == 1 and done.result.agent == "agents/vedas" and done.result.text.strip()
    assert created.name in [t.name for t in listed.tasks]
    assert finished.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_work_killed_mid_step_is_resumed_or_failed_after_a_restart_never_left_running(
    mesh: Mesh, channel: grpc.aio.Channel, admin: Session, groq: HoldingGroq
) -> None:
    marker = groq.hold()
    tasks = tks_grpc.TaskServiceStub(channel)
    try:
        created = await create_workflow(
            channel,
            admin,
            [
                step("text", f"Rewrite this text: {marker} {{{{input}}}}", timeout=120, max_attempts=1),
                step("text", "Extract the keywords: {{step_1}}"),
            ],
            input="the quick brown fox jumps over the lazy dog near the river bank",
        )
        task = (
            await tasks.CreateTask(
                tks.CreateTaskRequest(
                    task=task_pb2.Task(
                        agent="agents/text", query=f"Rewrite this text: {marker} slowly, please"
                    )
                ),
                metadata=admin.metadata,
                timeout=CALL_TIMEOUT,
            )
        ).task
        await execute(channel, admin, created.name, wait=False)
        await tasks.ExecuteTask(
            tks.ExecuteTaskRequest(name=task.name, wait=False), metadata=admin.metadata, timeout=CALL_TIMEOUT
        )
        # Both are inside a model call when orchestration dies.
        await until(lambda: groq.seen[marker], lambda n: n >= 2, timeout=RUN_TIMEOUT)
        midway = await get_workflow(channel, admin, created.name)
        assert midway.status == workflow_pb2.WORKFLOW_STATUS_RUNNING
        assert statuses(midway)[0] == workflow_pb2.STEP_STATUS_RUNNING
        mesh.kill("orchestration")
    finally:
        groq.release(marker)
    await mesh.restart("orchestration")

    after = await until(
        lambda: get_workflow(channel, admin, created.name),
        lambda w: w.status in FINISHED,
        timeout=RUN_TIMEOUT,
    )
    task_after = await until(
        lambda: _task(tasks, admin, task.name),
        lambda t: t.status in (task_pb2.TASK_STATUS_SUCCEEDED, task_pb2.TASK_STATUS_FAILED),
        timeout=RUN_TIMEOUT,
    )
    if after.status == workflow_pb2.WORKFLOW_STATUS_SUCCEEDED:
        assert statuses(after) == [workflow_pb2.STEP_STATUS_SUCCEEDED] * 2
    else:
        assert after.error_message
        assert statuses(after)[0] in (workflow_pb2.STEP_STATUS_FAILED, workflow_pb2.STEP_STATUS_TIMED_OUT)
        assert statuses(after)[1] == workflow_pb2.STEP_STATUS_SKIPPED
    if task_after.status == task_pb2.TASK_STATUS_SUCCEEDED:
        assert task_after.result.text.strip()
    else:
        assert task_after.error_message
    running = await wfs_grpc.WorkflowServiceStub(channel).ListWorkflows(
        wfs.ListWorkflowsRequest(status=workflow_pb2.WORKFLOW_STATUS_RUNNING, page_size=500),
        metadata=admin.metadata,
        timeout=CALL_TIMEOUT,
    )
    assert created.name not in [w.name for w in running.workflows]


async def _task(tasks: Any, admin: Session, name: str) -> task_pb2.Task:
    reply = await tasks.GetTask(tks.GetTaskRequest(name=name), metadata=admin.metadata, timeout=CALL_TIMEOUT)
    return reply.task


async def refused(call: Any) -> grpc.aio.AioRpcError:
    """The error ``call`` (an awaitable RPC) fails with; the test fails when it succeeds."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value
