"""Tasks (``bhiv.orchestration.v1.TaskService``): one agent query run in the background.

A task is a kit resource (``tasks/{id}``, see
:mod:`~bhiv_core.services.orchestration.resources`): CreateTask stores it PENDING; ExecuteTask
makes it RUNNING (with a lease, see :mod:`~bhiv_core.services.orchestration.runs`) and hands it to
the process's pool. Each attempt runs the agent in process through
:class:`~bhiv_core.services.orchestration.agents.Agents` — ``invoke`` for a named agent, ``ask``
(the router) when ``agent`` is empty — within the task's ``timeout``; a failed or timed-out attempt
is retried after a short backoff while attempts remain. Every change (attempt started, attempt
failed, finished, cancelled) is one transaction with a new etag, checked against the lease.

**Whom a run acts as.** The creator: its subject, role and customer are stored with the task
(never its bearer token, which expires) and the agents get that principal. Calls an agent makes to
other services (the llm) therefore carry no token and are refused there, so a background run's
answers are the agents' offline (extractive) ones.

**After a crash.** The attempt that was running when its worker died counts as used: the task is
resumed with its next attempt when one remains (agents only read, so re-running one is safe),
else it ends FAILED saying the attempt was interrupted.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial

from google.protobuf.duration_pb2 import Duration

from bhiv.orchestration.v1 import agent_pb2, task_pb2
from bhiv.orchestration.v1 import agent_service_pb2 as asv
from bhiv.orchestration.v1 import task_service_pb2 as ts
from bhiv_core.resources import (
    Eq,
    Filter,
    Record,
    Transaction,
    owner_filters,
)
from bhiv_core.runtime.errors import (
    BhivError,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    clip,
)
from bhiv_core.security.principal import Principal, current_principal
from bhiv_core.services.orchestration.agents import AgentDeadlineExceeded, Agents
from bhiv_core.services.orchestration.resources import TASK
from bhiv_core.services.orchestration.runs import backoff
from bhiv_core.services.orchestration.runs_kit import RunKind, record_of, run_as_of

__all__ = [
    "DEFAULT_ATTEMPTS",
    "DEFAULT_TIMEOUT_SECONDS",
    "MAX_TIMEOUT_SECONDS",
    "Outcome",
    "Tasks",
    "check_agent",
    "interrupted",
    "principal_of",
    "record_of",
    "run_agent",
    "run_as_of",
    "timeout_problem",
    "timeout_seconds",
]

log = logging.getLogger(__name__)

DEFAULT_ATTEMPTS = 3
"""Attempts per run when ``max_attempts`` is 0."""
DEFAULT_TIMEOUT_SECONDS = 60.0
"""The time limit of one attempt when ``timeout`` is unset."""
MAX_TIMEOUT_SECONDS = 3600.0
"""The longest ``timeout`` allowed."""
MAX_ERROR_BYTES = 1000
"""The longest ``error_message`` kept."""

_PENDING = task_pb2.TASK_STATUS_PENDING
_RUNNING = task_pb2.TASK_STATUS_RUNNING
_SUCCEEDED = task_pb2.TASK_STATUS_SUCCEEDED
_FAILED = task_pb2.TASK_STATUS_FAILED
_CANCELLED = task_pb2.TASK_STATUS_CANCELLED
_TIMED_OUT = task_pb2.TASK_STATUS_TIMED_OUT


# ---- shared with workflows ---------------------------------------------------------------------


def interrupted(attempts: int) -> str:
    """The error of a run whose last attempt died with its worker."""
    return f"attempt {attempts} was interrupted (the worker running it stopped) and no attempts remain"


def principal_of(record: Record) -> Principal:
    """The principal a stored run acts as."""
    stored = json.loads(str(record.value("run_as")) or "{}")
    return Principal(
        subject=stored.get("subject", ""), role=stored.get("role", ""), customer=stored.get("customer", "")
    )


def timeout_problem(message: object, field: str, path: str) -> FieldViolation | None:
    """Why the optional Duration ``field`` of ``message`` is not a valid attempt timeout, or None."""
    if not message.HasField(field):  # type: ignore[attr-defined]
        return None
    duration: Duration = getattr(message, field)
    seconds = duration.seconds + duration.nanos / 1e9
    if duration.seconds < 0 or duration.nanos < 0 or seconds <= 0:
        return FieldViolation(path, "must be positive when set", "OUT_OF_RANGE")
    if seconds > MAX_TIMEOUT_SECONDS or duration.nanos >= 10**9:
        return FieldViolation(path, "must be at most 1 hour", "OUT_OF_RANGE")
    return None


def timeout_seconds(message: object, field: str = "timeout") -> float:
    """The attempt timeout of a stored task or step: its ``timeout``, or 60 seconds."""
    if not message.HasField(field):  # type: ignore[attr-defined]
        return DEFAULT_TIMEOUT_SECONDS
    duration: Duration = getattr(message, field)
    return duration.seconds + duration.nanos / 1e9


def check_agent(agents: Agents, name: str) -> None:
    """NOT_FOUND for an unknown agent, FAILED_PRECONDITION (``AGENT_DISABLED``) for a disabled one."""
    agent = agents.get_agent(asv.GetAgentRequest(name=name)).agent
    if not agent.enabled:
        raise FailedPrecondition(f"{name} is disabled", reason="AGENT_DISABLED")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt produced: an answer, or an error (and whether it was the timeout)."""

    answer: agent_pb2.Answer | None
    error: str = ""
    timed_out: bool = False


async def run_agent(
    agents: Agents,
    principal: Principal,
    *,
    agent: str,
    query: str,
    attachments: Sequence[agent_pb2.Attachment] = (),
    max_sources: int = 0,
    timeout: float,  # noqa: ASYNC109 - the attempt's own limit, recorded as TIMED_OUT, not a caller's deadline
) -> Outcome:
    """One attempt: the named agent (or the router when ``agent`` is empty) as ``principal``."""
    token = current_principal.set(principal)
    try:
        async with asyncio.timeout(timeout):
            if agent:
                invoked = await agents.invoke(
                    asv.InvokeAgentRequest(
                        name=agent, query=query, attachments=attachments, max_sources=max_sources
                    ),
                    principal,
                )
                return Outcome(invoked.answer)
            asked = await agents.ask(
                asv.AskRequest(query=query, attachments=attachments, max_sources=max_sources), principal
            )
            return Outcome(asked.answer)
    except TimeoutError:
        return Outcome(None, f"the attempt ran longer than its timeout of {timeout:g} s", timed_out=True)
    except AgentDeadlineExceeded as exc:
        return Outcome(None, clip(exc.message, MAX_ERROR_BYTES), timed_out=True)
    except BhivError as exc:
        return Outcome(None, clip(f"{exc.code.name}: {exc.message}", MAX_ERROR_BYTES))
    except Exception as exc:
        log.exception("an attempt failed unexpectedly")
        return Outcome(None, f"INTERNAL: {type(exc).__name__}")
    finally:
        current_principal.reset(token)


# ---- tasks -------------------------------------------------------------------------------------


class Tasks(RunKind[task_pb2.Task]):
    """The task domain of the orchestration service (constructed as :class:`RunKind`)."""

    prefix = "tasks"
    kind = TASK
    pending = _PENDING
    running = _RUNNING
    cancelled = _CANCELLED
    failed = _FAILED
    reason = "TASK"
    status_name = staticmethod(task_pb2.TaskStatus.Name)

    async def create(self, request: ts.CreateTaskRequest, principal: Principal) -> ts.CreateTaskResponse:
        """Stores a PENDING task after checking its fields and agent."""
        given = request.task
        violations: list[FieldViolation] = []
        if not given.query.strip() and not given.attachments:
            violations.append(
                FieldViolation("task.query", "is required unless an attachment is given", "REQUIRED")
            )
        for i, attachment in enumerate(given.attachments):
            if attachment.WhichOneof("content") is None:
                violations.append(
                    FieldViolation(
                        f"task.attachments[{i}].content", "set exactly one of data or text", "REQUIRED"
                    )
                )
        problem = timeout_problem(given, "timeout", "task.timeout")
        if problem is not None:
            violations.append(problem)
        if violations:
            raise InvalidArgument(violations=violations)
        if given.agent:
            check_agent(self._agents, given.agent)
        task = task_pb2.Task(
            agent=given.agent,
            query=given.query,
            attachments=given.attachments,
            max_sources=given.max_sources,
            max_attempts=given.max_attempts,
            status=_PENDING,
        )
        if given.HasField("timeout"):
            task.timeout.CopyFrom(given.timeout)
        return await self._create(
            request, principal, task, rpc="CreateTask", respond=lambda t: ts.CreateTaskResponse(task=t)
        )

    async def get(self, request: ts.GetTaskRequest, principal: Principal) -> ts.GetTaskResponse:
        """The task, if the principal may see it."""
        return ts.GetTaskResponse(task=await self._get(request.name, principal))

    async def list(self, request: ts.ListTasksRequest, principal: Principal) -> ts.ListTasksResponse:
        """A page of tasks, newest first, filtered by status and agent."""
        filters: list[Filter] = owner_filters(principal)
        if request.status:
            filters.append(Eq("status", int(request.status)))
        if request.agent:
            filters.append(Eq("agent", request.agent))
        tasks, token = await self._page(request, filters, rpc="ListTasks")
        return ts.ListTasksResponse(tasks=tasks, next_page_token=token)

    async def execute(self, request: ts.ExecuteTaskRequest, principal: Principal) -> ts.ExecuteTaskResponse:
        """Starts a run (from scratch); waits for its end when ``wait``."""
        return ts.ExecuteTaskResponse(task=await self._execute(request, principal))

    async def cancel(self, request: ts.CancelTaskRequest, principal: Principal) -> ts.CancelTaskResponse:
        """Ends a pending or running task as CANCELLED; a running attempt is abandoned."""
        return ts.CancelTaskResponse(task=await self._cancel(request, principal))

    # ---- running -------------------------------------------------------------------------

    def _reset(self, run: task_pb2.Task) -> None:
        if run.agent:
            check_agent(self._agents, run.agent)
        run.attempts = 0
        run.ClearField("result")
        run.error_message = ""

    def _note(self, run: task_pb2.Task) -> bool:
        if not run.attempts:
            return False
        run.error_message = f"attempt {run.attempts} was interrupted: the worker running it stopped"
        return True

    def _body(self, id: str) -> Callable[[], Awaitable[None]]:
        async def body() -> None:
            while True:
                begun = await self._store.run(partial(self._begin, id=id))
                if begun is None:
                    return
                task, principal = begun
                outcome = await run_agent(
                    self._agents,
                    principal,
                    agent=task.agent,
                    query=task.query,
                    attachments=task.attachments,
                    max_sources=task.max_sources,
                    timeout=timeout_seconds(task),
                )
                pause = await self._store.run(partial(self._end, id=id, outcome=outcome))
                if pause is None:
                    return
                await asyncio.sleep(pause)

        return body

    async def _begin(self, txn: Transaction, *, id: str) -> tuple[task_pb2.Task, Principal] | None:
        held = await self._held(txn, id)
        if held is None:
            return None
        record, task = held
        if task.attempts >= (task.max_attempts or DEFAULT_ATTEMPTS):
            task.status = _FAILED
            task.error_message = interrupted(task.attempts)
            await self._write(txn, record, task, final=True)
            return None
        task.attempts += 1
        await self._write(txn, record, task, final=False)
        return task, principal_of(record)

    async def _end(self, txn: Transaction, *, id: str, outcome: Outcome) -> float | None:
        held = await self._held(txn, id)
        if held is None:
            return None
        record, task = held
        if outcome.answer is not None:
            task.status = _SUCCEEDED
            task.result.CopyFrom(outcome.answer)
            task.error_message = ""
            await self._write(txn, record, task, final=True)
            return None
        task.error_message = outcome.error
        if task.attempts >= (task.max_attempts or DEFAULT_ATTEMPTS):
            task.status = _TIMED_OUT if outcome.timed_out else _FAILED
            await self._write(txn, record, task, final=True)
            return None
        await self._write(txn, record, task, final=False)
        return backoff(task.attempts)
