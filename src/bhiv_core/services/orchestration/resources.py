"""Orchestration's resources on the resource kit: documents of the knowledge base.

- **documents** (``documents/{id}``): newest first; immutable (no etag, no update). Stored
  fields: ``created`` (the create time, for the order), ``tags`` (for ``ListDocuments.tag``) and
  ``mime`` (for ``ListDocuments.mime_type``). Their passages live in the FTS5 index of
  :mod:`bhiv_core.knowledge.index`, not here.

- **sessions** (no resource name: internal): the earlier turns of an ``Ask`` session, one record
  per (principal, ``session_id``), its id a hash of both so another principal's session is never
  read. Stored field: ``updated`` (Unix seconds of the last turn). The record's data is JSON, the
  last turns only (see :mod:`bhiv_core.services.orchestration.sessions`).

- **tasks** (``tasks/{id}``) and **workflows** (``workflows/{id}``): newest first, versioned
  (etag). Stored fields: ``created``, ``status`` (for the lists' filter), ``agent`` (tasks only)
  and ``run_as`` (JSON of the creator's subject, role and customer: whom a run acts as; never a
  token). The kit's ``owner`` is the creating customer, so customers see only their own.

- **run_leases** (no resource name: internal): one per running task or workflow
  (``tasks:{id}``/``workflows:{id}``), naming the worker process that runs it (``holder``,
  ``node``, ``pid``) and until when (``expires``, Unix seconds, renewed while it runs); see
  :mod:`bhiv_core.services.orchestration.runs`.

- **outbox**, **outbox_state**: the ``orchestration.document.ingested`` events written in the
  transaction that inserts a document, until the relay hands them to integrations
  (:mod:`bhiv_core.events.outbox`).

The kit store is ``<data_dir>/orchestration.db``.
"""

from __future__ import annotations

from bhiv.orchestration.v1 import document_pb2, task_pb2, workflow_pb2
from bhiv_core.events import outbox
from bhiv_core.resources import Collection, Field, ResourceType, Value
from bhiv_core.resources.sqlite import RECEIPTS, schema
from bhiv_core.runtime.times import seconds_of

__all__ = [
    "COLLECTIONS",
    "DOCUMENT",
    "DOCUMENTS",
    "MIGRATIONS",
    "RUN_LEASES",
    "SESSIONS",
    "TASK",
    "TASKS",
    "WORKFLOW",
    "WORKFLOWS",
]

DOCUMENTS = Collection(
    "documents",
    (Field("created", "real"), Field("tags", "list"), Field("mime", "text")),
    order=("created",),
    descending=True,
    indexes=(("mime",),),
)


def _document_fields(m: document_pb2.Document) -> dict[str, Value]:
    return {"created": seconds_of(m.create_time), "tags": list(m.tags), "mime": m.mime_type}


DOCUMENT: ResourceType[document_pb2.Document] = ResourceType(
    message=document_pb2.Document,
    collection=DOCUMENTS,
    index=_document_fields,
    mutable=frozenset(),
    label="document",
    request_field="document",
)

SESSIONS = Collection("sessions", (Field("updated", "real"),), order=("updated",))

TASKS = Collection(
    "tasks",
    (Field("created", "real"), Field("status", "int"), Field("agent", "text"), Field("run_as", "text")),
    order=("created",),
    descending=True,
    indexes=(("status",), ("agent",)),
)
WORKFLOWS = Collection(
    "workflows",
    (Field("created", "real"), Field("status", "int"), Field("run_as", "text")),
    order=("created",),
    descending=True,
    indexes=(("status",),),
)
RUN_LEASES = Collection(
    "run_leases",
    (Field("holder", "text"), Field("node", "text"), Field("pid", "int"), Field("expires", "real")),
    order=("expires",),
    indexes=(("node",),),
)


def _task_fields(m: task_pb2.Task) -> dict[str, Value]:
    return {"created": seconds_of(m.create_time), "status": int(m.status), "agent": m.agent}


def _workflow_fields(m: workflow_pb2.Workflow) -> dict[str, Value]:
    return {"created": seconds_of(m.create_time), "status": int(m.status)}


TASK: ResourceType[task_pb2.Task] = ResourceType(
    message=task_pb2.Task,
    collection=TASKS,
    index=_task_fields,
    mutable=frozenset(),
    label="task",
    request_field="task",
)
WORKFLOW: ResourceType[workflow_pb2.Workflow] = ResourceType(
    message=workflow_pb2.Workflow,
    collection=WORKFLOWS,
    index=_workflow_fields,
    mutable=frozenset(),
    label="workflow",
    request_field="workflow",
)

COLLECTIONS = (DOCUMENTS, SESSIONS, *outbox.COLLECTIONS, TASKS, WORKFLOWS, RUN_LEASES)
MIGRATIONS = (
    schema((DOCUMENTS,)),
    # Later collections: their tables without a second receipts table.
    schema((SESSIONS,)).removesuffix(RECEIPTS).rstrip(";\n"),
    outbox.outbox_migration(),
    schema((TASKS, WORKFLOWS, RUN_LEASES)).removesuffix(RECEIPTS).rstrip(";\n"),
)
