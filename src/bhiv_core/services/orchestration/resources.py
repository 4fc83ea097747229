"""Orchestration's resources on the resource kit: documents of the knowledge base.

- **documents** (``documents/{id}``): newest first; immutable (no etag, no update). Stored
  fields: ``created`` (the create time, for the order), ``tags`` (for ``ListDocuments.tag``) and
  ``mime`` (for ``ListDocuments.mime_type``). Their passages live in the FTS5 index of
  :mod:`bhiv_core.knowledge.index`, not here.

- **sessions** (no resource name: internal): the earlier turns of an ``Ask`` session, one record
  per (principal, ``session_id``), its id a hash of both so another principal's session is never
  read. Stored field: ``updated`` (Unix seconds of the last turn). The record's data is JSON, the
  last turns only (see :mod:`bhiv_core.services.orchestration.sessions`).

- **outbox**, **outbox_state**: the ``orchestration.document.ingested`` events written in the
  transaction that inserts a document, until the relay hands them to integrations
  (:mod:`bhiv_core.events.outbox`).

The kit store is ``<data_dir>/orchestration.db``.
"""

from __future__ import annotations

from bhiv.orchestration.v1 import document_pb2
from bhiv_core.events import outbox
from bhiv_core.resources import Collection, Field, ResourceType, Value
from bhiv_core.resources.sqlite import RECEIPTS, schema
from bhiv_core.runtime.times import seconds_of

__all__ = ["COLLECTIONS", "DOCUMENT", "DOCUMENTS", "MIGRATIONS", "SESSIONS"]

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

COLLECTIONS = (DOCUMENTS, SESSIONS, *outbox.COLLECTIONS)
MIGRATIONS = (
    schema((DOCUMENTS,)),
    # A later collection: its tables without a second receipts table.
    schema((SESSIONS,)).removesuffix(RECEIPTS).rstrip(";\n"),
    outbox.outbox_migration(),
)
