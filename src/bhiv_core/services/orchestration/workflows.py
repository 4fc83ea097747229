"""Workflows (``bhiv.orchestration.v1.WorkflowService``): steps run in order, each fed by earlier ones.

A workflow is a kit resource (``workflows/{id}``). Its steps' templates are checked at create:
``{{input}}`` and ``{{step_N}}`` (1 ≤ N < the step's own number) are the only placeholders;
anything else, or a reference to the step itself or a later one, is INVALID_ARGUMENT with the
step's ``input_template`` as the field. ExecuteWorkflow resets the step results and hands the
workflow to the process's pool (:mod:`~bhiv_core.services.orchestration.runs`); the run then
takes the first step that has not succeeded, renders its query (the workflow's input and the
answer texts of earlier steps; a rendered query is cut to :data:`MAX_RENDERED_CHARS`), runs its
agent in process as the workflow's creator (see :mod:`~bhiv_core.services.orchestration.tasks`)
within the step's timeout, and records the result. A failed or timed-out attempt is retried
after a short backoff while the step's attempts remain; then the step is FAILED or TIMED_OUT, the
later steps SKIPPED and the workflow FAILED, its ``error_message`` naming the step. Every change
is one transaction with a new etag, checked against the run's lease.

CancelWorkflow ends a pending or running workflow CANCELLED: the running step's attempt is
abandoned and the step recorded SKIPPED with an ``error_message`` saying so, and the steps not
run yet are SKIPPED.

**After a crash** the workflow resumes from its first unfinished step, keeping the results of the
finished ones; the step that was running when its worker died has used that attempt: it is
retried when attempts remain, else it fails (interrupted) and the workflow fails.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Sequence
from functools import partial

from bhiv.orchestration.v1 import workflow_pb2
from bhiv.orchestration.v1 import workflow_service_pb2 as ws
from bhiv_core.resources import (
    Eq,
    Filter,
    Transaction,
    owner_filters,
)
from bhiv_core.runtime.errors import FieldViolation, InvalidArgument, clip
from bhiv_core.runtime.times import to_timestamp
from bhiv_core.security.principal import Principal
from bhiv_core.services.orchestration.resources import WORKFLOW
from bhiv_core.services.orchestration.runs import backoff
from bhiv_core.services.orchestration.runs_kit import RunKind
from bhiv_core.services.orchestration.tasks import (
    DEFAULT_ATTEMPTS,
    Outcome,
    check_agent,
    interrupted,
    principal_of,
    run_agent,
    timeout_problem,
    timeout_seconds,
)

__all__ = ["MAX_RENDERED_CHARS", "Workflows", "render", "template_problems"]

MAX_RENDERED_CHARS = 10000
"""The longest query a step sends (the contract's query limit); a longer rendering is cut."""

_PLACEHOLDER = re.compile(r"\{\{([^{}]*)\}\}")
"""A placeholder: no brace inside, so a scan never crosses another ``{{`` (linear in the template)."""
_STEP = re.compile(r"step_([0-9]{1,6})")

_PENDING = workflow_pb2.WORKFLOW_STATUS_PENDING
_RUNNING = workflow_pb2.WORKFLOW_STATUS_RUNNING
_SUCCEEDED = workflow_pb2.WORKFLOW_STATUS_SUCCEEDED
_FAILED = workflow_pb2.WORKFLOW_STATUS_FAILED
_CANCELLED = workflow_pb2.WORKFLOW_STATUS_CANCELLED


def template_problems(template: str, number: int, path: str) -> list[FieldViolation]:
    """What is wrong with the placeholders of step ``number``'s template (1-based)."""
    problems = []
    for match in _PLACEHOLDER.finditer(template):
        name = match.group(1).strip()
        if name == "input":
            continue
        step = _STEP.fullmatch(name)
        shown = clip(match.group(0), 80)
        if step is None:
            problems.append(
                FieldViolation(
                    path,
                    f"{shown} is not a placeholder: use {{{{input}}}} or {{{{step_N}}}}",
                    "UNKNOWN_PLACEHOLDER",
                )
            )
        elif not 1 <= int(step.group(1)) < number:
            problems.append(
                FieldViolation(
                    path,
                    f"{shown} is not an earlier step: step {number} may use step_1 to step_{number - 1}"
                    if number > 1
                    else f"{shown}: the first step may only use {{{{input}}}}",
                    "FORWARD_REFERENCE",
                )
            )
    return problems


def render(template: str, input: str, answers: Sequence[str]) -> str:
    """The template with ``{{input}}`` and ``{{step_N}}`` filled in (checked at create).

    Stops at :data:`MAX_RENDERED_CHARS`: a template repeating a long answer costs no more than that.
    """
    parts: list[str] = []
    size = 0
    at = 0
    for match in _PLACEHOLDER.finditer(template):
        name = match.group(1).strip()
        step = _STEP.fullmatch(name)
        if name == "input":
            value = input
        elif step is not None and 1 <= int(step.group(1)) <= len(answers):
            value = answers[int(step.group(1)) - 1]
        else:
            value = match.group(0)
        for piece in (template[at : match.start()], value):
            parts.append(piece[: MAX_RENDERED_CHARS - size])
            size += len(parts[-1])
        at = match.end()
        if size >= MAX_RENDERED_CHARS:
            return "".join(parts)
    parts.append(template[at:][: MAX_RENDERED_CHARS - size])
    return "".join(parts)


def _attempts(step: workflow_pb2.WorkflowStep) -> int:
    return step.max_attempts or DEFAULT_ATTEMPTS


class Workflows(RunKind[workflow_pb2.Workflow]):
    """The workflow domain of the orchestration service (constructed as :class:`RunKind`)."""

    prefix = "workflows"
    kind = WORKFLOW
    pending = _PENDING
    running = _RUNNING
    cancelled = _CANCELLED
    failed = _FAILED
    reason = "WORKFLOW"
    status_name = staticmethod(workflow_pb2.WorkflowStatus.Name)

    async def create(
        self, request: ws.CreateWorkflowRequest, principal: Principal
    ) -> ws.CreateWorkflowResponse:
        """Stores a PENDING workflow after checking its templates, timeouts and agents."""
        given = request.workflow
        violations: list[FieldViolation] = []
        if not given.display_name.strip():
            violations.append(FieldViolation("workflow.display_name", "must not be blank", "REQUIRED"))
        for i, given_step in enumerate(given.steps):
            at = f"workflow.steps[{i}]"
            if not given_step.input_template.strip():
                violations.append(FieldViolation(f"{at}.input_template", "must not be blank", "REQUIRED"))
            violations += template_problems(given_step.input_template, i + 1, f"{at}.input_template")
            problem = timeout_problem(given_step, "timeout", f"{at}.timeout")
            if problem is not None:
                violations.append(problem)
        if violations:
            raise InvalidArgument(violations=violations)
        for given_step in given.steps:
            check_agent(self._agents, given_step.agent)
        workflow = workflow_pb2.Workflow(
            display_name=given.display_name, input=given.input, steps=given.steps, status=_PENDING
        )
        return await self._create(
            request,
            principal,
            workflow,
            rpc="CreateWorkflow",
            respond=lambda w: ws.CreateWorkflowResponse(workflow=w),
        )

    async def get(self, request: ws.GetWorkflowRequest, principal: Principal) -> ws.GetWorkflowResponse:
        """The workflow with its step results, if the principal may see it."""
        return ws.GetWorkflowResponse(workflow=await self._get(request.name, principal))

    async def list(self, request: ws.ListWorkflowsRequest, principal: Principal) -> ws.ListWorkflowsResponse:
        """A page of workflows, newest first, filtered by status."""
        filters: list[Filter] = owner_filters(principal)
        if request.status:
            filters.append(Eq("status", int(request.status)))
        workflows, token = await self._page(request, filters, rpc="ListWorkflows")
        return ws.ListWorkflowsResponse(workflows=workflows, next_page_token=token)

    async def execute(
        self, request: ws.ExecuteWorkflowRequest, principal: Principal
    ) -> ws.ExecuteWorkflowResponse:
        """Starts a run from the first step; waits for its end when ``wait``."""
        return ws.ExecuteWorkflowResponse(workflow=await self._execute(request, principal))

    async def cancel(
        self, request: ws.CancelWorkflowRequest, principal: Principal
    ) -> ws.CancelWorkflowResponse:
        """Ends a pending or running workflow as CANCELLED: the running step abandoned, the rest skipped."""
        return ws.CancelWorkflowResponse(workflow=await self._cancel(request, principal))

    # ---- running -------------------------------------------------------------------------

    def _reset(self, run: workflow_pb2.Workflow) -> None:
        for s in run.steps:
            check_agent(self._agents, s.agent)
        run.error_message = ""
        del run.step_results[:]
        run.step_results.extend(
            workflow_pb2.WorkflowStepResult(
                step_number=i + 1, agent=s.agent, status=workflow_pb2.STEP_STATUS_PENDING
            )
            for i, s in enumerate(run.steps)
        )

    def _on_cancel(self, run: workflow_pb2.Workflow, now: float) -> None:
        for result in run.step_results:
            if result.status == workflow_pb2.STEP_STATUS_RUNNING:
                result.error_message = f"attempt {result.attempts} was abandoned: the workflow was cancelled"
                result.end_time.CopyFrom(to_timestamp(now))
                result.status = workflow_pb2.STEP_STATUS_SKIPPED
            elif result.status == workflow_pb2.STEP_STATUS_PENDING:
                result.status = workflow_pb2.STEP_STATUS_SKIPPED

    def _on_fail(self, run: workflow_pb2.Workflow, now: float) -> None:
        for result in run.step_results:
            if result.status == workflow_pb2.STEP_STATUS_RUNNING:
                result.status = workflow_pb2.STEP_STATUS_FAILED
                result.error_message = run.error_message
                result.end_time.CopyFrom(to_timestamp(now))
            elif result.status == workflow_pb2.STEP_STATUS_PENDING:
                result.status = workflow_pb2.STEP_STATUS_SKIPPED

    def _note(self, run: workflow_pb2.Workflow) -> bool:
        for result in run.step_results:
            if result.status == workflow_pb2.STEP_STATUS_RUNNING:
                result.error_message = (
                    f"attempt {result.attempts} was interrupted: the worker running it stopped"
                )
        return True

    def _body(self, id: str) -> Callable[[], Awaitable[None]]:
        async def body() -> None:
            while True:
                begun = await self._store.run(partial(self._begin, id=id))
                if begun is None:
                    return
                index, rendered, step, principal = begun
                outcome = await run_agent(
                    self._agents, principal, agent=step.agent, query=rendered, timeout=timeout_seconds(step)
                )
                pause = await self._store.run(partial(self._end, id=id, index=index, outcome=outcome))
                if pause is None:
                    return
                if pause:
                    await asyncio.sleep(pause)

        return body

    def _fail_at(self, workflow: workflow_pb2.Workflow, index: int, status: int) -> None:
        """Step ``index`` ends with ``status``; the later steps are skipped and the workflow fails."""
        now = to_timestamp(self._clock())
        result = workflow.step_results[index]
        result.status = status  # type: ignore[assignment]
        result.end_time.CopyFrom(now)
        for later in workflow.step_results[index + 1 :]:
            later.status = workflow_pb2.STEP_STATUS_SKIPPED
        workflow.status = _FAILED
        workflow.error_message = clip(
            f"step {index + 1} ({result.agent}) failed after {result.attempts} attempt"
            f"{'s' if result.attempts != 1 else ''}: {result.error_message}",
            1000,
        )

    async def _begin(
        self, txn: Transaction, *, id: str
    ) -> tuple[int, str, workflow_pb2.WorkflowStep, Principal] | None:
        held = await self._held(txn, id)
        if held is None:
            return None
        record, workflow = held
        results = workflow.step_results
        index = next(
            (i for i, r in enumerate(results) if r.status != workflow_pb2.STEP_STATUS_SUCCEEDED), None
        )
        if index is None:
            workflow.status = _SUCCEEDED
            await self._write(txn, record, workflow, final=True)
            return None
        step, result = workflow.steps[index], results[index]
        if result.attempts >= _attempts(step):
            result.error_message = interrupted(result.attempts)
            self._fail_at(workflow, index, workflow_pb2.STEP_STATUS_FAILED)
            await self._write(txn, record, workflow, final=True)
            return None
        rendered = render(step.input_template, workflow.input, [r.answer.text for r in results[:index]])
        result.status = workflow_pb2.STEP_STATUS_RUNNING
        result.rendered_input = rendered
        result.attempts += 1
        if not result.HasField("start_time"):
            result.start_time.CopyFrom(to_timestamp(self._clock()))
        await self._write(txn, record, workflow, final=False)
        return index, rendered, step, principal_of(record)

    async def _end(self, txn: Transaction, *, id: str, index: int, outcome: Outcome) -> float | None:
        held = await self._held(txn, id)
        if held is None:
            return None
        record, workflow = held
        step, result = workflow.steps[index], workflow.step_results[index]
        if outcome.answer is not None:
            result.status = workflow_pb2.STEP_STATUS_SUCCEEDED
            result.answer.CopyFrom(outcome.answer)
            result.error_message = ""
            result.end_time.CopyFrom(to_timestamp(self._clock()))
            await self._write(txn, record, workflow, final=False)
            return 0.0
        result.error_message = outcome.error
        if result.attempts >= _attempts(step):
            status = (
                workflow_pb2.STEP_STATUS_TIMED_OUT if outcome.timed_out else workflow_pb2.STEP_STATUS_FAILED
            )
            self._fail_at(workflow, index, status)
            await self._write(txn, record, workflow, final=True)
            return None
        await self._write(txn, record, workflow, final=False)
        return backoff(result.attempts)
