"""WorkflowService against a served orchestration: templating, retries, failure, cancel, recovery.

The orchestration runs its real definition (kit store, runner, the real agents except a scripted
``planner``) behind the real error mapper, RBAC and validation; the principal comes from test
headers.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
from google.protobuf.duration_pb2 import Duration

from bhiv.orchestration.v1 import workflow_pb2
from bhiv.orchestration.v1 import workflow_service_pb2 as ws
from bhiv_core.resources import make_resource_store
from bhiv_core.services.orchestration.resources import COLLECTIONS, MIGRATIONS, RUN_LEASES
from tests.services.crm.conftest import as_, reason, refused, violations
from tests.services.orchestration.scripted import Scripted, serve_with_planner, until

OPS = as_("ops", subject="users/olga")
ADMIN = as_("admin")

S = workflow_pb2.WorkflowStep
SUCCEEDED = workflow_pb2.STEP_STATUS_SUCCEEDED
SKIPPED = workflow_pb2.STEP_STATUS_SKIPPED


def _workflow(*steps: S, input: str = "a trip to Pune") -> workflow_pb2.Workflow:
    return workflow_pb2.Workflow(display_name="three steps", input=input, steps=steps)


async def test_three_steps_run_in_order_each_fed_by_the_one_before(tmp_path: Path) -> None:
    async with serve_with_planner(tmp_path) as s:
        workflow = _workflow(
            S(agent="agents/planner", input_template="Plan {{input}}"),
            S(agent="agents/planner", input_template="Check: {{step_1}}"),
            S(agent="agents/text", input_template="Extract the keywords: {{step_2}} and {{input}}"),
        )
        created = (
            await s.workflows.CreateWorkflow(ws.CreateWorkflowRequest(workflow=workflow), metadata=OPS)
        ).workflow
        assert created.status == workflow_pb2.WORKFLOW_STATUS_PENDING and not created.step_results

        done = (
            await s.workflows.ExecuteWorkflow(
                ws.ExecuteWorkflowRequest(name=created.name, wait=True), metadata=OPS
            )
        ).workflow
        assert done.status == workflow_pb2.WORKFLOW_STATUS_SUCCEEDED, done.error_message
        results = done.step_results
        assert [r.status for r in results] == [SUCCEEDED] * 3
        assert [r.step_number for r in results] == [1, 2, 3]
        assert [r.attempts for r in results] == [1, 1, 1]
        assert results[0].rendered_input == "Plan a trip to Pune"
        assert "PLAN[Plan a trip to Pune]" in results[0].answer.text
        assert results[1].rendered_input == f"Check: {results[0].answer.text}"
        assert "PLAN[Check: PLAN[Plan a trip to Pune]]" in results[1].answer.text
        assert (
            results[2].rendered_input == f"Extract the keywords: {results[1].answer.text} and a trip to Pune"
        )
        assert results[2].answer.agent == "agents/text" and results[2].answer.text
        assert s.planner.queries == ["Plan a trip to Pune", f"Check: {results[0].answer.text}"]
        for r in results:
            assert r.start_time.ToNanoseconds() <= r.end_time.ToNanoseconds()
        assert results[0].end_time.ToNanoseconds() <= results[1].start_time.ToNanoseconds()
        got = (
            await s.workflows.GetWorkflow(ws.GetWorkflowRequest(name=created.name), metadata=ADMIN)
        ).workflow
        assert got == done


async def test_a_failing_step_is_retried_then_the_workflow_fails_and_later_steps_are_skipped(
    tmp_path: Path,
) -> None:
    async with serve_with_planner(tmp_path, Scripted(mode="fail")) as s:
        workflow = _workflow(
            S(agent="agents/qna", input_template="hello {{input}}"),
            S(agent="agents/planner", input_template="{{step_1}}", max_attempts=3),
            S(agent="agents/qna", input_template="{{step_2}}"),
        )
        created = (
            await s.workflows.CreateWorkflow(ws.CreateWorkflowRequest(workflow=workflow), metadata=OPS)
        ).workflow
        done = (
            await s.workflows.ExecuteWorkflow(
                ws.ExecuteWorkflowRequest(name=created.name, wait=True), metadata=OPS
            )
        ).workflow
        assert done.status == workflow_pb2.WORKFLOW_STATUS_FAILED
        first, second, third = done.step_results
        assert (first.status, first.attempts) == (SUCCEEDED, 1)
        assert (second.status, second.attempts) == (workflow_pb2.STEP_STATUS_FAILED, 3)
        assert "UNAVAILABLE" in second.error_message and second.HasField("end_time")
        assert (third.status, third.attempts, third.rendered_input) == (SKIPPED, 0, "")
        assert len(s.planner.queries) == 3
        assert done.error_message.startswith("step 2 (agents/planner) failed after 3 attempts: UNAVAILABLE")

        # A re-run starts over from the first step.
        s.planner.mode = "answer"
        rerun = (
            await s.workflows.ExecuteWorkflow(
                ws.ExecuteWorkflowRequest(name=created.name, wait=True), metadata=OPS
            )
        ).workflow
        assert rerun.status == workflow_pb2.WORKFLOW_STATUS_SUCCEEDED
        assert [r.attempts for r in rerun.step_results] == [1, 1, 1]


async def test_a_step_past_its_timeout_is_timed_out(tmp_path: Path) -> None:
    async with serve_with_planner(tmp_path, Scripted(mode="hang")) as s:
        workflow = _workflow(
            S(
                agent="agents/planner",
                input_template="{{input}}",
                timeout=Duration(nanos=50_000_000),
                max_attempts=2,
            ),
            S(agent="agents/qna", input_template="{{step_1}}"),
        )
        created = (
            await s.workflows.CreateWorkflow(ws.CreateWorkflowRequest(workflow=workflow), metadata=OPS)
        ).workflow
        done = (
            await s.workflows.ExecuteWorkflow(
                ws.ExecuteWorkflowRequest(name=created.name, wait=True), metadata=OPS
            )
        ).workflow
        assert done.status == workflow_pb2.WORKFLOW_STATUS_FAILED
        assert [r.status for r in done.step_results] == [workflow_pb2.STEP_STATUS_TIMED_OUT, SKIPPED]
        assert done.step_results[0].attempts == 2
        assert "timeout of 0.05 s" in done.error_message


async def test_cancel_abandons_the_running_step_and_skips_the_rest(tmp_path: Path) -> None:
    async with serve_with_planner(tmp_path, Scripted(mode="hang")) as s:
        workflow = _workflow(
            S(agent="agents/qna", input_template="hello"),
            S(agent="agents/planner", input_template="{{step_1}}"),
            S(agent="agents/qna", input_template="{{step_2}}"),
        )
        created = (
            await s.workflows.CreateWorkflow(ws.CreateWorkflowRequest(workflow=workflow), metadata=OPS)
        ).workflow
        running = (
            await s.workflows.ExecuteWorkflow(ws.ExecuteWorkflowRequest(name=created.name), metadata=OPS)
        ).workflow
        assert running.status == workflow_pb2.WORKFLOW_STATUS_RUNNING
        await asyncio.wait_for(s.planner.started.wait(), 20)

        err = await refused(
            s.workflows.ExecuteWorkflow(ws.ExecuteWorkflowRequest(name=created.name), metadata=OPS)
        )
        assert (err.code(), reason(err)) == (grpc.StatusCode.FAILED_PRECONDITION, "WORKFLOW_RUNNING")
        cancelled = (
            await s.workflows.CancelWorkflow(ws.CancelWorkflowRequest(name=created.name), metadata=OPS)
        ).workflow
        assert cancelled.status == workflow_pb2.WORKFLOW_STATUS_CANCELLED
        assert [r.status for r in cancelled.step_results] == [SUCCEEDED, SKIPPED, SKIPPED]
        assert "abandoned" in cancelled.step_results[1].error_message
        await asyncio.sleep(0.3)
        again = (
            await s.workflows.GetWorkflow(ws.GetWorkflowRequest(name=created.name), metadata=OPS)
        ).workflow
        assert again == cancelled
        err = await refused(
            s.workflows.CancelWorkflow(ws.CancelWorkflowRequest(name=created.name), metadata=OPS)
        )
        assert (err.code(), reason(err)) == (grpc.StatusCode.FAILED_PRECONDITION, "WORKFLOW_FINISHED")


async def test_bad_templates_and_fields_are_invalid_argument_with_field_violations(tmp_path: Path) -> None:
    async with serve_with_planner(tmp_path, AGENTS_DISABLED="image") as s:
        workflow = _workflow(
            S(agent="agents/qna", input_template="{{step_1}} {{input}}"),
            S(agent="agents/qna", input_template="{{ step_3 }} and {{ whatever }}"),
            S(agent="agents/qna", input_template="{{step_2}}", timeout=Duration(seconds=7200)),
        )
        err = await refused(
            s.workflows.CreateWorkflow(ws.CreateWorkflowRequest(workflow=workflow), metadata=OPS)
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert sorted(violations(err)) == [
            ("workflow.steps[0].input_template", "FORWARD_REFERENCE"),
            ("workflow.steps[1].input_template", "FORWARD_REFERENCE"),
            ("workflow.steps[1].input_template", "UNKNOWN_PLACEHOLDER"),
            ("workflow.steps[2].timeout", "OUT_OF_RANGE"),
        ]
        for bad in (
            workflow_pb2.Workflow(display_name="none"),
            workflow_pb2.Workflow(steps=[S(agent="agents/qna", input_template="x")]),
            _workflow(S(agent="agents/qna", input_template="")),
            _workflow(S(agent="qna", input_template="x")),
            _workflow(*[S(agent="agents/qna", input_template="x")] * 21),
        ):
            err = await refused(
                s.workflows.CreateWorkflow(ws.CreateWorkflowRequest(workflow=bad), metadata=OPS)
            )
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
            assert violations(err)
        err = await refused(
            s.workflows.CreateWorkflow(
                ws.CreateWorkflowRequest(workflow=_workflow(S(agent="agents/oracle", input_template="x"))),
                metadata=OPS,
            )
        )
        assert err.code() == grpc.StatusCode.NOT_FOUND
        err = await refused(
            s.workflows.CreateWorkflow(
                ws.CreateWorkflowRequest(workflow=_workflow(S(agent="agents/image", input_template="x"))),
                metadata=OPS,
            )
        )
        assert (err.code(), reason(err)) == (grpc.StatusCode.FAILED_PRECONDITION, "AGENT_DISABLED")
        listed = await s.workflows.ListWorkflows(ws.ListWorkflowsRequest(), metadata=OPS)
        assert not listed.workflows  # nothing half-written


async def test_a_workflow_whose_worker_died_is_resumed_from_its_unfinished_step(tmp_path: Path) -> None:
    """A worker that stops without releasing (a crash) leaves RUNNING: the next one resumes it."""
    workflow = _workflow(
        S(agent="agents/qna", input_template="hello"),
        S(agent="agents/planner", input_template="after {{step_1}}", max_attempts=2),
        S(agent="agents/planner", input_template="then {{step_2}}"),
    )
    crashed = Scripted(mode="hang")
    async with serve_with_planner(tmp_path, crashed, TASKS_LEASE_SECONDS="0.6") as s:
        created = (
            await s.workflows.CreateWorkflow(ws.CreateWorkflowRequest(workflow=workflow), metadata=OPS)
        ).workflow
        await s.workflows.ExecuteWorkflow(ws.ExecuteWorkflowRequest(name=created.name), metadata=OPS)
        await asyncio.wait_for(crashed.started.wait(), 20)
        # The crash: the lease stops being renewed and nothing is released (stop() would expire it).
        store = make_resource_store(
            name="orchestration", collections=COLLECTIONS, migrations=MIGRATIONS, data_dir=tmp_path, url=None
        )
        await store.open()
        leases = await store.find(RUN_LEASES, [], after=None, limit=10)
        assert [r.id for r in leases] == [f"workflows:{created.name.split('/')[1]}"]
        await store.close()
        stopped = (
            await s.workflows.GetWorkflow(ws.GetWorkflowRequest(name=created.name), metadata=OPS)
        ).workflow
        assert stopped.status == workflow_pb2.WORKFLOW_STATUS_RUNNING
        assert [r.status for r in stopped.step_results][:2] == [SUCCEEDED, workflow_pb2.STEP_STATUS_RUNNING]
        first_answer = stopped.step_results[0].answer
        s.crash()

    async with serve_with_planner(tmp_path, Scripted(), TASKS_LEASE_SECONDS="0.6") as s:

        async def finished() -> workflow_pb2.Workflow | None:
            got = (
                await s.workflows.GetWorkflow(ws.GetWorkflowRequest(name=created.name), metadata=OPS)
            ).workflow
            return got if got.status != workflow_pb2.WORKFLOW_STATUS_RUNNING else None

        done = await until(finished)
        assert done.status == workflow_pb2.WORKFLOW_STATUS_SUCCEEDED, done.error_message
        first, second, third = done.step_results
        assert first.answer == first_answer and first.attempts == 1  # kept, not re-run
        assert second.attempts == 2  # the interrupted attempt counted
        assert s.planner.queries[0] == f"after {first_answer.text}"
        assert third.status == SUCCEEDED


async def test_a_task_whose_worker_died_on_its_last_attempt_fails_clearly(tmp_path: Path) -> None:
    from bhiv.orchestration.v1 import task_pb2
    from bhiv.orchestration.v1 import task_service_pb2 as ts

    crashed = Scripted(mode="hang")
    async with serve_with_planner(tmp_path, crashed, TASKS_LEASE_SECONDS="0.6") as s:
        task = (
            await s.tasks.CreateTask(
                ts.CreateTaskRequest(task=task_pb2.Task(agent="agents/planner", query="q", max_attempts=1)),
                metadata=OPS,
            )
        ).task
        await s.tasks.ExecuteTask(ts.ExecuteTaskRequest(name=task.name), metadata=OPS)
        await asyncio.wait_for(crashed.started.wait(), 20)
        s.crash()

    async with serve_with_planner(tmp_path, Scripted(), TASKS_LEASE_SECONDS="0.6") as s:

        async def finished() -> task_pb2.Task | None:
            got = (await s.tasks.GetTask(ts.GetTaskRequest(name=task.name), metadata=OPS)).task
            return got if got.status != task_pb2.TASK_STATUS_RUNNING else None

        done = await until(finished)
        assert done.status == task_pb2.TASK_STATUS_FAILED
        assert done.error_message == (
            "attempt 1 was interrupted (the worker running it stopped) and no attempts remain"
        )
        assert s.planner.queries == []


async def test_workers_sharing_a_store_never_steal_a_live_run_and_take_over_a_dead_ones(
    tmp_path: Path,
) -> None:
    """Two workers on one store: the live holder keeps renewing; after it dies, the other resumes."""
    workflow = _workflow(S(agent="agents/planner", input_template="{{input}}"))
    holder, other = Scripted(mode="hang"), Scripted()
    async with (
        serve_with_planner(tmp_path, holder, TASKS_LEASE_SECONDS="2") as a,
        serve_with_planner(tmp_path, other, TASKS_LEASE_SECONDS="2") as b,
    ):
        created = (
            await a.workflows.CreateWorkflow(ws.CreateWorkflowRequest(workflow=workflow), metadata=OPS)
        ).workflow
        await a.workflows.ExecuteWorkflow(ws.ExecuteWorkflowRequest(name=created.name), metadata=OPS)
        await asyncio.wait_for(holder.started.wait(), 20)
        await asyncio.sleep(5)  # two and a half leases: renewed by its holder, never taken by b
        assert other.queries == [] and len(holder.queries) == 1
        assert a.runner.running_here(f"workflows:{created.name.split('/')[1]}")
        seen = (
            await b.workflows.GetWorkflow(ws.GetWorkflowRequest(name=created.name), metadata=OPS)
        ).workflow
        assert seen.status == workflow_pb2.WORKFLOW_STATUS_RUNNING

        a.crash()

        async def finished() -> workflow_pb2.Workflow | None:
            got = (
                await b.workflows.GetWorkflow(ws.GetWorkflowRequest(name=created.name), metadata=OPS)
            ).workflow
            return got if got.status != workflow_pb2.WORKFLOW_STATUS_RUNNING else None

        done = await until(finished)
        assert done.status == workflow_pb2.WORKFLOW_STATUS_SUCCEEDED
        assert other.queries == ["a trip to Pune"]
        assert done.step_results[0].attempts == 2


def test_rendering_is_bounded_and_placeholders_never_span_braces() -> None:
    from bhiv_core.services.orchestration.workflows import MAX_RENDERED_CHARS, render, template_problems

    assert render("{{input}} then {{ step_2 }}", "in", ["one", "two"]) == "in then two"
    assert render("{{input}}" * 5000, "x" * 10000, []) == "x" * MAX_RENDERED_CHARS
    assert render("a{{step_1}}b", "", ["y" * 20000]) == "a" + "y" * (MAX_RENDERED_CHARS - 1)
    # Unclosed and nested braces are text, found in one pass (a hostile template costs linear time).
    assert render("{{" * 5000, "in", []) == "{{" * 5000
    assert template_problems("{{" * 5000 + "x", 1, "t") == []
    assert [v.reason for v in template_problems("{{ {input} }} {{date}}", 2, "t")] == ["UNKNOWN_PLACEHOLDER"]


async def test_a_graceful_stop_hands_running_workflows_to_the_next_start_at_once(tmp_path: Path) -> None:
    workflow = _workflow(
        S(agent="agents/qna", input_template="hello"), S(agent="agents/planner", input_template="x")
    )
    stopping = Scripted(mode="hang")
    async with serve_with_planner(tmp_path, stopping, TASKS_LEASE_SECONDS="600") as s:
        created = (
            await s.workflows.CreateWorkflow(ws.CreateWorkflowRequest(workflow=workflow), metadata=OPS)
        ).workflow
        await s.workflows.ExecuteWorkflow(ws.ExecuteWorkflowRequest(name=created.name), metadata=OPS)
        await asyncio.wait_for(stopping.started.wait(), 20)
    # Stopped (SIGTERM's path): the lease was expired, so the next start takes it over at once.
    async with serve_with_planner(tmp_path, Scripted(), TASKS_LEASE_SECONDS="600") as s:

        async def finished() -> workflow_pb2.Workflow | None:
            got = (
                await s.workflows.GetWorkflow(ws.GetWorkflowRequest(name=created.name), metadata=OPS)
            ).workflow
            return got if got.status != workflow_pb2.WORKFLOW_STATUS_RUNNING else None

        done = await until(finished)
        assert done.status == workflow_pb2.WORKFLOW_STATUS_SUCCEEDED
        assert [r.attempts for r in done.step_results] == [1, 2]
