"""TaskService against a served orchestration: create, run, retries, timeouts, cancel, the pool.

The orchestration runs its real definition (kit store, runner, the real agents except a scripted
``planner``) behind the real error mapper, RBAC and validation; the principal comes from test
headers.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from bhiv.orchestration.v1 import agent_pb2, task_pb2
from bhiv.orchestration.v1 import task_service_pb2 as ts
from tests.services.crm.conftest import as_, reason, refused, status_of, violations
from tests.services.orchestration.scripted import Scripted, serve_with_planner, until

ADMIN = as_("admin")
OPS = as_("ops", subject="users/olga")
SUPPORT = as_("support")


def _task(**fields: object) -> task_pb2.Task:
    return task_pb2.Task(**fields)  # type: ignore[arg-type]


async def test_a_task_runs_its_agent_and_keeps_the_answer(tmp_path: Path) -> None:
    async with serve_with_planner(tmp_path) as s:
        created = (
            await s.tasks.CreateTask(
                ts.CreateTaskRequest(task=_task(agent="agents/planner", query="ship the order")), metadata=OPS
            )
        ).task
        assert created.name.startswith("tasks/")
        assert created.status == task_pb2.TASK_STATUS_PENDING
        assert created.etag and created.HasField("create_time") and not created.HasField("start_time")

        done = (
            await s.tasks.ExecuteTask(ts.ExecuteTaskRequest(name=created.name, wait=True), metadata=OPS)
        ).task
        assert done.status == task_pb2.TASK_STATUS_SUCCEEDED
        assert done.result.agent == "agents/planner"
        assert "PLAN[ship the order]" in done.result.text
        assert (done.attempts, done.error_message) == (1, "")
        assert done.start_time.ToNanoseconds() <= done.end_time.ToNanoseconds()
        assert done.etag != created.etag
        assert s.planner.queries == ["ship the order"]
        got = (await s.tasks.GetTask(ts.GetTaskRequest(name=created.name), metadata=ADMIN)).task
        assert got == done


async def test_a_task_without_an_agent_is_routed_like_ask(tmp_path: Path) -> None:
    async with serve_with_planner(tmp_path) as s:
        task = (
            await s.tasks.CreateTask(ts.CreateTaskRequest(task=_task(query="hello there")), metadata=OPS)
        ).task
        done = (
            await s.tasks.ExecuteTask(ts.ExecuteTaskRequest(name=task.name, wait=True), metadata=OPS)
        ).task
        assert done.status == task_pb2.TASK_STATUS_SUCCEEDED
        assert (done.result.agent, done.result.intent) == ("agents/qna", "greeting")
        assert done.result.method == agent_pb2.ANSWER_METHOD_EXTRACTIVE


async def test_a_failing_agent_is_retried_max_attempts_times_then_the_task_fails(tmp_path: Path) -> None:
    async with serve_with_planner(tmp_path, Scripted(mode="fail")) as s:
        task = (
            await s.tasks.CreateTask(
                ts.CreateTaskRequest(task=_task(agent="agents/planner", query="q", max_attempts=2)),
                metadata=OPS,
            )
        ).task
        done = (
            await s.tasks.ExecuteTask(ts.ExecuteTaskRequest(name=task.name, wait=True), metadata=OPS)
        ).task
        assert done.status == task_pb2.TASK_STATUS_FAILED
        assert done.attempts == 2
        assert "UNAVAILABLE" in done.error_message and "call 2" in done.error_message
        assert not done.HasField("result")
        assert len(s.planner.queries) == 2


async def test_a_flaky_agent_succeeds_on_a_later_attempt(tmp_path: Path) -> None:
    async with serve_with_planner(tmp_path, Scripted(fail_times=2)) as s:
        task = (
            await s.tasks.CreateTask(
                ts.CreateTaskRequest(task=_task(agent="agents/planner", query="q")), metadata=OPS
            )
        ).task
        done = (
            await s.tasks.ExecuteTask(ts.ExecuteTaskRequest(name=task.name, wait=True), metadata=OPS)
        ).task
        assert (done.status, done.attempts, done.error_message) == (task_pb2.TASK_STATUS_SUCCEEDED, 3, "")


async def test_an_attempt_past_its_timeout_ends_timed_out(tmp_path: Path) -> None:
    async with serve_with_planner(tmp_path, Scripted(mode="hang")) as s:
        task = (
            await s.tasks.CreateTask(
                ts.CreateTaskRequest(
                    task=_task(
                        agent="agents/planner", query="q", max_attempts=2, timeout=Duration(nanos=100_000_000)
                    )
                ),
                metadata=OPS,
            )
        ).task
        done = (
            await s.tasks.ExecuteTask(ts.ExecuteTaskRequest(name=task.name, wait=True), metadata=OPS)
        ).task
        assert done.status == task_pb2.TASK_STATUS_TIMED_OUT
        assert done.attempts == 2
        assert "timeout of 0.1 s" in done.error_message


async def test_execute_without_wait_returns_running_and_cancel_abandons_the_attempt(tmp_path: Path) -> None:
    async with serve_with_planner(tmp_path, Scripted(mode="hang")) as s:
        task = (
            await s.tasks.CreateTask(
                ts.CreateTaskRequest(task=_task(agent="agents/planner", query="q")), metadata=OPS
            )
        ).task
        running = (await s.tasks.ExecuteTask(ts.ExecuteTaskRequest(name=task.name), metadata=OPS)).task
        assert running.status == task_pb2.TASK_STATUS_RUNNING
        assert running.HasField("start_time") and not running.HasField("end_time")
        await asyncio.wait_for(s.planner.started.wait(), 20)

        err = await refused(s.tasks.ExecuteTask(ts.ExecuteTaskRequest(name=task.name), metadata=OPS))
        assert (err.code(), reason(err)) == (grpc.StatusCode.FAILED_PRECONDITION, "TASK_RUNNING")

        err = await refused(
            s.tasks.CancelTask(ts.CancelTaskRequest(name=task.name, etag="stale"), metadata=OPS)
        )
        assert err.code() == grpc.StatusCode.ABORTED

        async def current() -> task_pb2.Task:
            return (await s.tasks.GetTask(ts.GetTaskRequest(name=task.name), metadata=OPS)).task

        cancelled = (
            await s.tasks.CancelTask(
                ts.CancelTaskRequest(name=task.name, etag=(await current()).etag), metadata=OPS
            )
        ).task
        assert cancelled.status == task_pb2.TASK_STATUS_CANCELLED
        assert cancelled.HasField("end_time")
        await asyncio.sleep(0.3)  # an abandoned attempt writes nothing after the cancel
        assert (await current()) == cancelled

        err = await refused(s.tasks.CancelTask(ts.CancelTaskRequest(name=task.name), metadata=OPS))
        assert (err.code(), reason(err)) == (grpc.StatusCode.FAILED_PRECONDITION, "TASK_FINISHED")

        s.planner.mode = "answer"
        rerun = (
            await s.tasks.ExecuteTask(ts.ExecuteTaskRequest(name=task.name, wait=True), metadata=OPS)
        ).task
        assert (rerun.status, rerun.attempts) == (task_pb2.TASK_STATUS_SUCCEEDED, 1)


async def test_a_full_pool_answers_resource_exhausted_with_a_quota_failure(tmp_path: Path) -> None:
    async with serve_with_planner(
        tmp_path, Scripted(mode="hang"), TASKS_CONCURRENCY="1", TASKS_QUEUE="1"
    ) as s:
        names = []
        for _ in range(3):
            task = await s.tasks.CreateTask(
                ts.CreateTaskRequest(task=_task(agent="agents/planner", query="q")), metadata=OPS
            )
            names.append(task.task.name)
        for name in names[:2]:  # one runs, one waits
            running = await s.tasks.ExecuteTask(ts.ExecuteTaskRequest(name=name), metadata=OPS)
            assert running.task.status == task_pb2.TASK_STATUS_RUNNING
        err = await refused(s.tasks.ExecuteTask(ts.ExecuteTaskRequest(name=names[2]), metadata=OPS))
        assert (err.code(), reason(err)) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RUN_QUEUE_FULL")
        from google.rpc import error_details_pb2

        quota = [d for d in status_of(err).details if d.Is(error_details_pb2.QuotaFailure.DESCRIPTOR)]
        assert quota
        third = (await s.tasks.GetTask(ts.GetTaskRequest(name=names[2]), metadata=OPS)).task
        assert third.status == task_pb2.TASK_STATUS_PENDING  # refused before anything was written

        # Cancelling the waiting one frees its place.
        await s.tasks.CancelTask(ts.CancelTaskRequest(name=names[1]), metadata=OPS)

        async def admitted() -> bool:
            try:
                await s.tasks.ExecuteTask(ts.ExecuteTaskRequest(name=names[2]), metadata=OPS)
            except grpc.aio.AioRpcError as e:
                assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                return False
            return True

        await until(admitted)


async def test_bad_tasks_are_invalid_argument_with_field_violations(tmp_path: Path) -> None:
    async with serve_with_planner(tmp_path, AGENTS_DISABLED="image") as s:
        cases = {
            "task.query": _task(agent="agents/planner"),
            "task.timeout": _task(query="q", timeout=Duration(seconds=3601)),
            "task.attachments[0].content": _task(
                query="q", attachments=[agent_pb2.Attachment(file_name="x")]
            ),
        }
        for field, task in cases.items():
            err = await refused(s.tasks.CreateTask(ts.CreateTaskRequest(task=task), metadata=OPS))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, field
            assert field in [f for f, _ in violations(err)], (field, violations(err))
        err = await refused(
            s.tasks.CreateTask(
                ts.CreateTaskRequest(task=_task(query="q", timeout=Duration(seconds=-1))), metadata=OPS
            )
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        err = await refused(
            s.tasks.CreateTask(ts.CreateTaskRequest(task=_task(query="q", max_attempts=11)), metadata=OPS)
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        err = await refused(
            s.tasks.CreateTask(
                ts.CreateTaskRequest(task=_task(agent="agents/oracle", query="q")), metadata=OPS
            )
        )
        assert err.code() == grpc.StatusCode.NOT_FOUND
        err = await refused(
            s.tasks.CreateTask(
                ts.CreateTaskRequest(task=_task(agent="agents/image", query="q")), metadata=OPS
            )
        )
        assert (err.code(), reason(err)) == (grpc.StatusCode.FAILED_PRECONDITION, "AGENT_DISABLED")
        err = await refused(s.tasks.GetTask(ts.GetTaskRequest(name="tasks/nope"), metadata=OPS))
        assert err.code() == grpc.StatusCode.NOT_FOUND
        err = await refused(s.tasks.ListTasks(ts.ListTasksRequest(page_size=-1), metadata=OPS))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_create_is_idempotent_lists_filter_and_roles_are_enforced(tmp_path: Path) -> None:
    async with serve_with_planner(tmp_path) as s:
        request = ts.CreateTaskRequest(task=_task(agent="agents/planner", query="q"), request_id="r-1")
        first = (await s.tasks.CreateTask(request, metadata=OPS)).task
        again = (await s.tasks.CreateTask(request, metadata=OPS)).task
        assert again == first
        other = (await s.tasks.CreateTask(ts.CreateTaskRequest(task=_task(query="hello")), metadata=OPS)).task
        await s.tasks.ExecuteTask(ts.ExecuteTaskRequest(name=other.name, wait=True), metadata=OPS)

        listed = (await s.tasks.ListTasks(ts.ListTasksRequest(), metadata=ADMIN)).tasks
        assert [t.name for t in listed] == [other.name, first.name]  # newest first
        done = await s.tasks.ListTasks(
            ts.ListTasksRequest(status=task_pb2.TASK_STATUS_SUCCEEDED), metadata=OPS
        )
        assert [t.name for t in done.tasks] == [other.name]
        planner = await s.tasks.ListTasks(ts.ListTasksRequest(agent="agents/planner"), metadata=OPS)
        assert [t.name for t in planner.tasks] == [first.name]
        page = await s.tasks.ListTasks(ts.ListTasksRequest(page_size=1), metadata=OPS)
        assert len(page.tasks) == 1 and page.next_page_token

        err = await refused(s.tasks.ListTasks(ts.ListTasksRequest(), metadata=SUPPORT))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        customer = as_("customer", subject="users/cu", customer="customers/c1")
        err = await refused(s.tasks.GetTask(ts.GetTaskRequest(name=first.name), metadata=customer))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_run_acts_as_its_creator_without_a_token(tmp_path: Path) -> None:
    async with serve_with_planner(tmp_path) as s:
        task = (
            await s.tasks.CreateTask(
                ts.CreateTaskRequest(task=_task(agent="agents/planner", query="q")), metadata=OPS
            )
        ).task
        # Executed by someone else: the run still acts as users/olga, who created it.
        await s.tasks.ExecuteTask(ts.ExecuteTaskRequest(name=task.name, wait=True), metadata=ADMIN)
        (principal,) = s.planner.principals
        assert principal is not None
        assert (principal.subject, principal.role, principal.token) == ("users/olga", "ops", "")


async def test_customers_see_only_their_own_runs(tmp_path: Path) -> None:
    """Customers hold no task permission today; ownership is still kept, as the kit does for all."""
    from bhiv_core.security.principal import Principal, current_principal
    from bhiv_core.services.orchestration.servicer import TaskServicer

    async with serve_with_planner(tmp_path) as s:
        servicer = s.servicers["TaskService"]
        assert isinstance(servicer, TaskServicer)
        mine = Principal("users/cu", "customer", "customers/c1")
        theirs = Principal("users/cv", "customer", "customers/c2")
        current_principal.set(mine)
        created = (await servicer.CreateTask(ts.CreateTaskRequest(task=_task(query="hello")), None)).task
        assert [t.name for t in (await servicer.ListTasks(ts.ListTasksRequest(), None)).tasks] == [
            created.name
        ]
        current_principal.set(theirs)
        assert list((await servicer.ListTasks(ts.ListTasksRequest(), None)).tasks) == []
        for call in (
            servicer.GetTask(ts.GetTaskRequest(name=created.name), None),
            servicer.ExecuteTask(ts.ExecuteTaskRequest(name=created.name), None),
            servicer.CancelTask(ts.CancelTaskRequest(name=created.name), None),
        ):
            try:
                await call
            except Exception as exc:  # the typed error the mapper turns into NOT_FOUND
                assert type(exc).__name__ == "NotFound"
            else:
                raise AssertionError("another customer's task was reachable")
        current_principal.set(None)
        staff = (await s.tasks.GetTask(ts.GetTaskRequest(name=created.name), metadata=ADMIN)).task
        assert staff.name == created.name


async def test_a_run_whose_machinery_raises_ends_failed_not_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A bug or a store fault after the agent answered: the run must end FAILED at once, not stay
    # RUNNING until its lease expires and then be resumed to raise again, for ever.
    from bhiv_core.services.orchestration.tasks import Tasks

    async def broken_end(self: Tasks, txn: object, *, id: str, outcome: object) -> float | None:
        raise RuntimeError("simulated fault while recording the attempt")

    monkeypatch.setattr(Tasks, "_end", broken_end)
    async with serve_with_planner(tmp_path) as s:
        task = (
            await s.tasks.CreateTask(
                ts.CreateTaskRequest(task=_task(agent="agents/planner", query="q")), metadata=OPS
            )
        ).task
        done = (
            await s.tasks.ExecuteTask(ts.ExecuteTaskRequest(name=task.name, wait=True), metadata=OPS)
        ).task
        assert done.status == task_pb2.TASK_STATUS_FAILED
        assert done.error_message.startswith("the run stopped on an internal error (RuntimeError)")
        assert done.HasField("end_time")
        # Ended, so it can be run again (the lease is gone): a second Execute is accepted.
        monkeypatch.undo()
        again = (
            await s.tasks.ExecuteTask(ts.ExecuteTaskRequest(name=task.name, wait=True), metadata=OPS)
        ).task
        assert again.status == task_pb2.TASK_STATUS_SUCCEEDED
