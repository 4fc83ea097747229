"""Orchestration publishes ``orchestration.document.ingested`` in the transaction inserting a document."""

from __future__ import annotations

from pathlib import Path

import grpc

from bhiv.integrations.v1 import event_pb2
from bhiv.orchestration.v1 import knowledge_service_pb2 as ks
from bhiv_core.events.catalog import payload_of
from tests.events.conftest import stored_events
from tests.services.crm.conftest import as_, refused
from tests.services.orchestration.conftest import serve_orchestration

OPS = as_("ops")
GUIDE = "# Receiving\n\nCount every pallet.\n\n# Shipping\n\nSeal every box twice.\n"


async def test_an_ingested_document_is_published_once_with_its_fields(tmp_path: Path) -> None:
    async with serve_orchestration(tmp_path, KNOWLEDGE_SAMPLE_CORPUS="off", EVENTS_RELAY="off") as served:
        kb = served.knowledge
        request = ks.IngestDocumentRequest(
            title="Warehouse guide",
            mime_type="text/plain",
            text=GUIDE,
            tags=["ops", "guide"],
            request_id="r1",
        )
        document = (await kb.IngestDocument(request, metadata=OPS)).document
        assert (await kb.IngestDocument(request, metadata=OPS)).document == document  # a retry
        err = await refused(
            kb.IngestDocument(ks.IngestDocumentRequest(title="Empty", text=" "), metadata=OPS)
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT  # nothing stored, nothing published
    (event,) = stored_events(tmp_path / "orchestration.db")
    assert (event.type, event.source, event.subject) == (
        "orchestration.document.ingested",
        "orchestration",
        document.name,
    )
    assert event.time == document.create_time
    assert payload_of(event) == event_pb2.DocumentIngestedEvent(
        document=document.name,
        title="Warehouse guide",
        mime_type="text/plain",
        passage_count=document.passage_count,
        tags=["ops", "guide"],
    )
    assert document.passage_count > 0


async def test_the_sample_corpus_is_published_as_it_is_ingested(tmp_path: Path) -> None:
    async with serve_orchestration(tmp_path, EVENTS_RELAY="off") as served:
        listed = await served.knowledge.ListDocuments(ks.ListDocumentsRequest(page_size=100), metadata=OPS)
    published = stored_events(tmp_path / "orchestration.db")
    assert {e.subject for e in published} == {d.name for d in listed.documents}
    assert len(published) == len(listed.documents) > 0
