"""Tasks and workflows through the real edge: a three-step chain fed step to step, a failing step
retried then failing the workflow cleanly, a step past its timeout, cancellation, a full pool, and
a SIGKILL of orchestration in the middle of a run, after which the workflow resumes or fails,
never stays "running".

Background runs act as their creator without a token, so their agents answer offline (see
``services/orchestration/tasks.py``): every step here runs real agents, in orchestration's
process. A long run is a chain of twenty summaries of a long text; this module's mesh runs one
run at a time with one more queued, so a third is refused.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from bhiv.orchestration.v1 import task_pb2, workflow_pb2
from bhiv.orchestration.v1 import task_service_pb2 as tks
from bhiv.orchestration.v1 import task_service_pb2_grpc as tks_grpc
from bhiv.orchestration.v1 import workflow_service_pb2 as wfs
from bhiv.orchestration.v1 import workflow_service_pb2_grpc as wfs_grpc
from bhiv_core.knowledge.corpus import SAMPLES, read_sample
from bhiv_core.mesh import Mesh
from tests.e2e.client import CALL_TIMEOUT, Session, admin_session
from tests.e2e.conftest import mesh_env
from tests.e2e.receiver import until

pytestmark = pytest.mark.e2e

GITA = "What does the Gita say about acting without attachment to results?"
RUN_TIMEOUT = 240.0
"""Seconds a run may take to finish here: agents load their models on first use, the host is shared."""
FINISHED = {workflow_pb2.WORKFLOW_STATUS_SUCCEEDED, workflow_pb2.WORKFLOW_STATUS_FAILED}
LONG_TEXT = read_sample(SAMPLES[0])[:9000]
"""A long text to summarise: each step of a long run takes a while."""


@pytest.fixture(scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory, collector: Any) -> AsyncIterator[Mesh]:
    env = mesh_env(collector[1]) | {"BHIV_TASKS_CONCURRENCY": "1", "BHIV_TASKS_QUEUE": "1"}
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
    agent: str, template: str, *, timeout: Duration | None = None, max_attempts: int = 0
) -> workflow_pb2.WorkflowStep:
    return workflow_pb2.WorkflowStep(
        agent=f"agents/{agent}", input_template=template, timeout=timeout, max_attempts=max_attempts
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


async def test_a_failing_step_is_retried_then_the_workflow_fails_and_the_rest_is_skipped(
    channel: grpc.aio.Channel, admin: Session
) -> None:
    created = await create_workflow(
        channel,
        admin,
        [
            step("knowledge", "{{input}}"),
            # The image agent needs an image: a query alone fails every attempt.
            step("image", "Describe the picture of {{step_1}}", max_attempts=3),
            step("text", "Extract the keywords: {{step_2}}"),
        ],
    )
    done = await execute(channel, admin, created.name, wait=True)
    assert done.status == workflow_pb2.WORKFLOW_STATUS_FAILED
    assert statuses(done) == [
        workflow_pb2.STEP_STATUS_SUCCEEDED,
        workflow_pb2.STEP_STATUS_FAILED,
        workflow_pb2.STEP_STATUS_SKIPPED,
    ]
    first, failed, skipped = done.step_results
    assert first.attempts == 1 and first.answer.text.strip()
    assert failed.attempts == 3
    assert failed.error_message.startswith("INVALID_ARGUMENT"), failed.error_message
    assert failed.rendered_input == f"Describe the picture of {first.answer.text}"
    assert not failed.HasField("answer")
    assert done.error_message.startswith("step 2 (agents/image) failed after 3 attempts: INVALID_ARGUMENT")
    assert skipped.attempts == 0 and skipped.rendered_input == "" and not skipped.HasField("start_time")
    # Re-running it starts again from the first step.
    again = await execute(channel, admin, created.name, wait=True)
    assert again.status == workflow_pb2.WORKFLOW_STATUS_FAILED
    assert [r.attempts for r in again.step_results] == [1, 3, 0]


async def test_a_step_past_its_timeout_on_every_attempt_is_timed_out(
    channel: grpc.aio.Channel, admin: Session
) -> None:
    created = await create_workflow(
        channel,
        admin,
        [
            # One microsecond: no summary of a long text is done that fast.
            step("summarizer", f"Summarize: {LONG_TEXT}", timeout=Duration(nanos=1000), max_attempts=2),
            step("text", "Extract the keywords: {{step_1}}"),
        ],
    )
    done = await execute(channel, admin, created.name, wait=True)
    assert done.status == workflow_pb2.WORKFLOW_STATUS_FAILED
    assert statuses(done) == [workflow_pb2.STEP_STATUS_TIMED_OUT, workflow_pb2.STEP_STATUS_SKIPPED]
    assert done.step_results[0].attempts == 2
    assert "timeout" in done.step_results[0].error_message
    assert done.error_message.startswith("step 1 (agents/summarizer) failed after 2 attempts")


def long_run() -> list[workflow_pb2.WorkflowStep]:
    """Twenty summaries of a long text, the last few fed by earlier answers."""
    steps = [step("summarizer", "Summarize: {{input}}") for _ in range(17)]
    return [
        *steps,
        step("text", "Extract the keywords: {{step_1}}"),
        step("qna", "{{step_2}}"),
        step("knowledge", "{{step_3}}"),
    ]


async def started(channel: grpc.aio.Channel, admin: Session, name: str) -> workflow_pb2.Workflow:
    """The workflow once it runs and its first step is done (the rest still to run, or finished)."""
    return await until(
        lambda: get_workflow(channel, admin, name),
        lambda w: (
            w.status != workflow_pb2.WORKFLOW_STATUS_PENDING
            and w.step_results
            and w.step_results[0].status == workflow_pb2.STEP_STATUS_SUCCEEDED
        ),
        timeout=RUN_TIMEOUT,
        interval=0.02,
    )


async def caught_running(channel: grpc.aio.Channel, admin: Session) -> workflow_pb2.Workflow:
    """A long run seen RUNNING with most of its steps still ahead.

    On a fast host a run can get far between two polls: then it is left to finish and another is
    started, so what a test does next meets a run in the middle, never one about to end.
    """
    for _ in range(5):
        created = await create_workflow(channel, admin, long_run(), input=LONG_TEXT)
        await execute(channel, admin, created.name, wait=False)
        seen = await started(channel, admin, created.name)
        done = statuses(seen).count(workflow_pb2.STEP_STATUS_SUCCEEDED)
        if seen.status == workflow_pb2.WORKFLOW_STATUS_RUNNING and done <= 4:
            return seen
        name = created.name
        await until(
            lambda: get_workflow(channel, admin, name),  # noqa: B023 - awaited within this iteration
            lambda w: w.status in FINISHED,
            timeout=RUN_TIMEOUT,
        )
    raise AssertionError("five long runs in a row got past their fourth step before a poll saw them")


async def test_a_running_workflow_is_cancelled_and_stays_cancelled(
    channel: grpc.aio.Channel, admin: Session
) -> None:
    stub = wfs_grpc.WorkflowServiceStub(channel)
    created = await caught_running(channel, admin)
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
    again = await refused(
        stub.CancelWorkflow(
            wfs.CancelWorkflowRequest(name=created.name), metadata=admin.metadata, timeout=CALL_TIMEOUT
        )
    )
    assert busy.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert again.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert cancelled.status == workflow_pb2.WORKFLOW_STATUS_CANCELLED
    assert cancelled.step_results[0].status == workflow_pb2.STEP_STATUS_SUCCEEDED
    assert cancelled.step_results[-1].status == workflow_pb2.STEP_STATUS_SKIPPED
    assert workflow_pb2.STEP_STATUS_RUNNING not in statuses(cancelled)
    assert workflow_pb2.STEP_STATUS_PENDING not in statuses(cancelled)
    # Whatever the abandoned step was doing, nothing runs on: the pool takes (and finishes) a task.
    task = await run_task(channel, admin, "agents/vedas", GITA)
    assert task.status == task_pb2.TASK_STATUS_SUCCEEDED
    after = await get_workflow(channel, admin, created.name)
    assert after == cancelled


async def test_a_full_pool_refuses_more_work_with_resource_exhausted(
    channel: grpc.aio.Channel, admin: Session
) -> None:
    stub = wfs_grpc.WorkflowServiceStub(channel)
    second = await create_workflow(channel, admin, long_run(), input=LONG_TEXT)
    third = await create_workflow(channel, admin, [step("qna", "{{input}}")])
    first = await caught_running(channel, admin)
    queued = await execute(channel, admin, second.name, wait=False)
    full = await refused(execute(channel, admin, third.name, wait=False))
    for name in (first.name, second.name):
        await stub.CancelWorkflow(
            wfs.CancelWorkflowRequest(name=name), metadata=admin.metadata, timeout=CALL_TIMEOUT
        )
    untouched = await get_workflow(channel, admin, third.name)
    assert queued.status == workflow_pb2.WORKFLOW_STATUS_RUNNING
    assert full.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert untouched.status == workflow_pb2.WORKFLOW_STATUS_PENDING and not untouched.step_results
    # Room again: it runs.
    done = await execute(channel, admin, third.name, wait=True)
    assert done.status == workflow_pb2.WORKFLOW_STATUS_SUCCEEDED


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


async def test_a_workflow_killed_mid_run_is_resumed_or_failed_after_a_restart_never_left_running(
    mesh: Mesh, channel: grpc.aio.Channel, admin: Session
) -> None:
    midway = created = await caught_running(channel, admin)
    mesh.kill("orchestration")
    # What the SIGKILL left on disk: a run in the middle, not finished.
    with sqlite3.connect(f"file:{mesh.data_dir / 'orchestration.db'}?mode=ro", uri=True) as db:
        [(status,)] = db.execute(
            "SELECT f_status FROM workflows WHERE id = ?", (created.name.removeprefix("workflows/"),)
        ).fetchall()
    assert status == workflow_pb2.WORKFLOW_STATUS_RUNNING
    await mesh.restart("orchestration")

    after = await until(
        lambda: get_workflow(channel, admin, created.name),
        lambda w: w.status in FINISHED,
        timeout=RUN_TIMEOUT,
    )
    done_before = [r for r in midway.step_results if r.status == workflow_pb2.STEP_STATUS_SUCCEEDED]
    outcome = workflow_pb2.WorkflowStatus.Name(after.status)
    steps_ms = [
        round((r.end_time.ToNanoseconds() - r.start_time.ToNanoseconds()) / 1e6) for r in after.step_results
    ]
    print(
        f"\nkilled after {len(done_before)} of 20 steps; after the restart: {outcome} {after.error_message}"
    )
    print(f"steps took (ms): {steps_ms}")
    assert done_before
    if after.status == workflow_pb2.WORKFLOW_STATUS_SUCCEEDED:
        assert statuses(after) == [workflow_pb2.STEP_STATUS_SUCCEEDED] * 20
        # Resumed, not re-run: the steps finished before the crash kept their results.
        for before in done_before:
            kept = after.step_results[before.step_number - 1]
            assert (kept.start_time, kept.end_time, kept.answer) == (
                before.start_time,
                before.end_time,
                before.answer,
            )
    else:
        assert after.error_message
        assert workflow_pb2.STEP_STATUS_RUNNING not in statuses(after)
        assert workflow_pb2.STEP_STATUS_PENDING not in statuses(after)
    running = await wfs_grpc.WorkflowServiceStub(channel).ListWorkflows(
        wfs.ListWorkflowsRequest(status=workflow_pb2.WORKFLOW_STATUS_RUNNING, page_size=500),
        metadata=admin.metadata,
        timeout=CALL_TIMEOUT,
    )
    assert created.name not in [w.name for w in running.workflows]


async def run_task(channel: grpc.aio.Channel, admin: Session, agent: str, query: str) -> task_pb2.Task:
    tasks = tks_grpc.TaskServiceStub(channel)
    created = (
        await tasks.CreateTask(
            tks.CreateTaskRequest(task=task_pb2.Task(agent=agent, query=query)),
            metadata=admin.metadata,
            timeout=CALL_TIMEOUT,
        )
    ).task
    reply = await tasks.ExecuteTask(
        tks.ExecuteTaskRequest(name=created.name, wait=True), metadata=admin.metadata, timeout=RUN_TIMEOUT
    )
    return reply.task


async def _task(tasks: Any, admin: Session, name: str) -> task_pb2.Task:
    reply = await tasks.GetTask(tks.GetTaskRequest(name=name), metadata=admin.metadata, timeout=CALL_TIMEOUT)
    return reply.task


async def refused(call: Any) -> grpc.aio.AioRpcError:
    """The error ``call`` (an awaitable RPC) fails with; the test fails when it succeeds."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value
