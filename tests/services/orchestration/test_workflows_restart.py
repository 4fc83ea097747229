"""Tasks and workflows on real processes (a mesh of its own): the README's examples, and a SIGKILL.

The README's "Tasks and workflows" examples run as written (grpcurl through the edge).

The mesh's orchestration is a real process (``python -m bhiv_core.services.orchestration``) on a
data directory of its own; the test calls through the edge as the bootstrap admin. Its second step
fails honestly on every attempt — the image agent refuses a query without an image — so the
workflow stays RUNNING through several backoffs; orchestration is SIGKILLed part way and started
again. The new process finds the run its dead predecessor held (same node, PID gone) and resumes
it from the unfinished step: the first step's answer is kept (one attempt), the second step's
attempts continue from where they were and the workflow ends FAILED with a clear message — never
RUNNING.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import grpc
import pytest

from bhiv.orchestration.v1 import workflow_pb2
from bhiv.orchestration.v1 import workflow_service_pb2 as ws
from bhiv.orchestration.v1 import workflow_service_pb2_grpc as ws_grpc
from bhiv_core.mesh import Mesh
from tests.e2e.client import CALL_TIMEOUT, admin_session
from tests.e2e.readme import LOGIN, readme_block, run_as_written

pytestmark = pytest.mark.e2e

ATTEMPTS = 6
"""The second step's attempts: their backoffs (0.2 s doubling) keep it running about 6 s."""


@pytest.fixture(scope="module")
async def own_mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    started = Mesh.with_free_ports(
        tmp_path_factory.mktemp("workflow-restart"),
        env={
            "BHIV_SCRYPT_LOG_N": "12",
            "BHIV_KNOWLEDGE_DENSE": "off",
            "BHIV_AGENTS_LLM": "off",
            # Far longer than the test waits: only the dead-PID check can hand the run over.
            "BHIV_TASKS_LEASE_SECONDS": "600",
        },
    )
    async with started:
        yield started


async def test_the_readme_examples_run_as_written(own_mesh: Mesh) -> None:
    ran = run_as_written(LOGIN + readme_block("workflow-examples"), own_mesh, stop_on_error=False)
    out = ran.stdout
    # grpcurl prints one JSON document per call; the refused template is the only error.
    assert ran.stderr.count("ERROR:") == 1, ran.stderr
    assert "Code: InvalidArgument" in ran.stderr
    assert "FORWARD_REFERENCE" in ran.stderr and "UNKNOWN_PLACEHOLDER" in ran.stderr
    documents = [json.loads(d) for d in _documents(out)]
    executed = [
        d["task"] for d in documents if "task" in d and d["task"].get("status") != "TASK_STATUS_PENDING"
    ]
    vedas, routed, cancelled = executed[0], executed[1], executed[-1]
    assert vedas["status"] == "TASK_STATUS_SUCCEEDED" and vedas["result"]["agent"] == "agents/vedas"
    assert "fruits" in vedas["result"]["text"] and vedas["result"]["sources"]
    assert routed["status"] == "TASK_STATUS_SUCCEEDED"
    assert cancelled["status"] == "TASK_STATUS_CANCELLED"
    listed = next(d for d in documents if "tasks" in d)
    assert {t["status"] for t in listed["tasks"]} == {"TASK_STATUS_SUCCEEDED"}
    workflows = [d["workflow"] for d in documents if "workflow" in d]
    done = workflows[-2]  # ExecuteWorkflow (wait) and GetWorkflow agree
    assert done == workflows[-1] or workflows[-1]["name"] == done["name"]
    assert done["status"] == "WORKFLOW_STATUS_SUCCEEDED", done
    steps = done["stepResults"] if "stepResults" in done else done["step_results"]
    first = steps[0]
    assert first.get("renderedInput", first.get("rendered_input")) == "What are the eight limbs of yoga?"
    second_input = steps[1].get("renderedInput", steps[1].get("rendered_input"))
    assert second_input == "Summarize this: " + first["answer"]["text"]
    assert all(s["status"] == "STEP_STATUS_SUCCEEDED" for s in steps)


def _documents(out: str) -> list[str]:
    """The top-level JSON documents of concatenated grpcurl outputs."""
    decoder = json.JSONDecoder()
    found, at = [], 0
    while True:
        start = out.find("{", at)
        if start < 0:
            return found
        _, end = decoder.raw_decode(out, start)
        found.append(out[start:end])
        at = end


async def test_a_workflow_killed_mid_run_is_resumed_after_restart(own_mesh: Mesh) -> None:
    admin = await admin_session(own_mesh)
    workflow = workflow_pb2.Workflow(
        display_name="survives a crash",
        input="What does the Gita say about acting without attachment to results?",
        steps=[
            workflow_pb2.WorkflowStep(agent="agents/vedas", input_template="{{input}}"),
            workflow_pb2.WorkflowStep(
                agent="agents/image", input_template="Describe: {{step_1}}", max_attempts=ATTEMPTS
            ),
            workflow_pb2.WorkflowStep(agent="agents/qna", input_template="{{step_2}}"),
        ],
    )

    async def get(stub: ws_grpc.WorkflowServiceStub, name: str) -> workflow_pb2.Workflow:
        reply = await stub.GetWorkflow(
            ws.GetWorkflowRequest(name=name), metadata=admin.metadata, timeout=CALL_TIMEOUT
        )
        return reply.workflow

    async with grpc.aio.insecure_channel(own_mesh.edge_address) as channel:
        stub = ws_grpc.WorkflowServiceStub(channel)
        created = await stub.CreateWorkflow(
            ws.CreateWorkflowRequest(workflow=workflow), metadata=admin.metadata, timeout=CALL_TIMEOUT
        )
        name = created.workflow.name
        running = await stub.ExecuteWorkflow(
            ws.ExecuteWorkflowRequest(name=name), metadata=admin.metadata, timeout=CALL_TIMEOUT
        )
        assert running.workflow.status == workflow_pb2.WORKFLOW_STATUS_RUNNING
        for _ in range(400):
            before = await get(stub, name)
            if before.step_results[1].attempts >= 2:
                break
            await asyncio.sleep(0.02)
        own_mesh.kill("orchestration")
    assert before.status == workflow_pb2.WORKFLOW_STATUS_RUNNING
    assert before.step_results[0].status == workflow_pb2.STEP_STATUS_SUCCEEDED
    assert 2 <= before.step_results[1].attempts < ATTEMPTS

    await own_mesh.restart("orchestration")
    async with grpc.aio.insecure_channel(own_mesh.edge_address) as channel:
        stub = ws_grpc.WorkflowServiceStub(channel)
        for _ in range(600):
            after = await get(stub, name)
            if after.status != workflow_pb2.WORKFLOW_STATUS_RUNNING:
                break
            await asyncio.sleep(0.1)
    assert after.status == workflow_pb2.WORKFLOW_STATUS_FAILED, after
    first, second, third = after.step_results
    assert first == before.step_results[0]  # kept, not run again
    assert (second.status, second.attempts) == (workflow_pb2.STEP_STATUS_FAILED, ATTEMPTS)
    assert second.error_message.startswith("INVALID_ARGUMENT") and "agents/image" in second.error_message
    assert third.status == workflow_pb2.STEP_STATUS_SKIPPED
    assert after.error_message.startswith(f"step 2 (agents/image) failed after {ATTEMPTS} attempts")
    # Taken over at start because its holder's PID is gone (the 600 s lease had not run out).
    log = (own_mesh.log_dir / "orchestration.log").read_text()
    assert f"took over run workflows:{name.split('/')[1]}" in log, log[-3000:]
