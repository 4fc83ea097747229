"""The knowledge base's RPCs (``bhiv.orchestration.v1.KnowledgeService``) over the kit and the index.

Documents are stored whole in the kit store (immutable; ``request_id`` makes IngestDocument
idempotent); their passages are in the :class:`~bhiv_core.knowledge.index.PassageIndex` (SQLite FTS5,
or MongoDB).
Ingestion extracts and chunks the content in a worker thread (linear in its size, at most the
contract's 20 MiB), indexes the passages, then inserts the document; a retried request whose first
attempt already stored a document gets that document, and the passages indexed for nothing are
removed again. Deletion removes the document, then its passages; :meth:`Knowledge.reconcile`
(run at start) removes passages whose document is gone, so a crash between the two steps leaves
nothing searchable behind. Inserting a document publishes ``orchestration.document.ingested`` in
the same transaction (:func:`~bhiv_core.events.outbox.publish`).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Sequence

from bhiv.integrations.v1 import event_pb2
from bhiv.orchestration.v1 import document_pb2
from bhiv.orchestration.v1 import knowledge_service_pb2 as ks
from bhiv_core.events.outbox import publish
from bhiv_core.knowledge.chunking import chunk
from bhiv_core.knowledge.extract import PDF, Extracted, decode_text, extract_pdf, extract_text
from bhiv_core.knowledge.index import PassageIndex
from bhiv_core.resources import Eq, Filter, HasItem, ResourceStore, Transaction, idempotent, list_page, new_id
from bhiv_core.runtime.errors import FieldViolation, InvalidArgument, NotFound
from bhiv_core.security.principal import Principal
from bhiv_core.services.orchestration.resources import DOCUMENT, DOCUMENTS

__all__ = ["DEFAULT_TOP_K", "TAG", "Knowledge", "check_tags"]

DEFAULT_TOP_K = 5
"""The passages SearchKnowledge returns when ``top_k`` is 0."""

TAG = re.compile(r"[a-z0-9_.-]{1,64}")
"""What a tag is: 1-64 lowercase letters, digits, ``_``, ``-`` and ``.``."""


def check_tags(tags: Sequence[str], field: str) -> list[FieldViolation]:
    """A violation per tag that is not a :data:`TAG`, at ``field[i]``."""
    return [
        FieldViolation(f"{field}[{i}]", "must be 1-64 lowercase letters, digits, '_', '-' or '.'", "BAD_TAG")
        for i, tag in enumerate(tags)
        if not TAG.fullmatch(tag)
    ]


def _refuse(violations: list[FieldViolation]) -> None:
    if violations:
        raise InvalidArgument(violations=violations)


def _extract(request: ks.IngestDocumentRequest) -> Extracted:
    """The request's content as text and sections (blocking: runs in a worker thread)."""
    if request.WhichOneof("content") == "text":
        return extract_text(request.text, field="text")
    if request.mime_type == PDF:
        return extract_pdf(request.data)
    return extract_text(decode_text(request.data), field="data")


class Knowledge:
    """The knowledge base: documents in the kit store, passages in the index.

    Args:
        store: Orchestration's kit store.
        index: The passage index.
        clock: Unix seconds now.

    """

    def __init__(self, store: ResourceStore, index: PassageIndex, clock: Callable[[], float] = time.time):
        self._store = store
        self.index = index
        self._clock = clock

    async def ingest(
        self, request: ks.IngestDocumentRequest, principal: Principal
    ) -> ks.IngestDocumentResponse:
        """Extracts, chunks and indexes a document, then stores it; idempotent by ``request_id``."""
        violations: list[FieldViolation] = []
        if not request.title.strip():
            violations.append(FieldViolation("title", "is required", "REQUIRED"))
        content = request.WhichOneof("content")
        if content is None:
            violations.append(FieldViolation("content", "set exactly one of data or text", "REQUIRED"))
        elif content == "text" and request.mime_type == PDF:
            violations.append(
                FieldViolation("text", "is only for text/plain: send a PDF as data", "TEXT_WITH_PDF")
            )
        violations += check_tags(request.tags, "tags")
        _refuse(violations)
        extracted = await asyncio.to_thread(_extract, request)
        chunks = await asyncio.to_thread(chunk, extracted.text, extracted.sections)
        if not chunks:
            raise InvalidArgument(
                violations=[FieldViolation(content or "content", "holds no text", "EMPTY_CONTENT")]
            )
        now = self._clock()
        document = DOCUMENT.fresh(document_pb2.Document(), now=now, id=new_id())
        document.title = request.title.strip()
        document.source = request.source
        document.mime_type = request.mime_type
        document.size_bytes = len(request.data) if content == "data" else len(request.text.encode("utf-8"))
        document.section_count = len({s.title for s in extracted.sections if s.title})
        document.passage_count = len(chunks)
        document.tags.extend(dict.fromkeys(request.tags))
        await self.index.add(document.name, document.title, list(document.tags), extracted.text, chunks)

        async def insert(txn: Transaction) -> ks.IngestDocumentResponse:
            await txn.insert(DOCUMENTS, DOCUMENT.record(document))
            ingested = event_pb2.DocumentIngestedEvent(
                document=document.name,
                title=document.title,
                mime_type=document.mime_type,
                passage_count=document.passage_count,
                tags=document.tags,
            )
            await publish(txn, ingested, source="orchestration", subject=document.name, time=now)
            return ks.IngestDocumentResponse(document=document)

        try:
            response = await idempotent(
                self._store,
                scope=f"IngestDocument:{principal.subject}",
                request_id=request.request_id,
                request=request,
                response_type=ks.IngestDocumentResponse,
                step=insert,
                clock=self._clock,
            )
        except BaseException:
            await self.index.remove(document.name)
            raise
        if response.document.name != document.name:  # a retry: the first attempt's document stands
            await self.index.remove(document.name)
        return response

    async def get(self, request: ks.GetDocumentRequest, principal: Principal) -> ks.GetDocumentResponse:
        """The document; NOT_FOUND when it does not exist."""
        record = await DOCUMENT.get(self._store, request.name, principal)
        return ks.GetDocumentResponse(document=DOCUMENT.load(record))

    async def list(self, request: ks.ListDocumentsRequest, principal: Principal) -> ks.ListDocumentsResponse:
        """A page of documents, newest first, filtered by tag and media type."""
        filters: list[Filter] = []
        if request.tag:
            if not TAG.fullmatch(request.tag):
                _refuse(
                    [
                        FieldViolation(
                            "tag", "must be 1-64 lowercase letters, digits, '_', '-' or '.'", "BAD_TAG"
                        )
                    ]
                )
            filters.append(HasItem("tags", request.tag))
        if request.mime_type:
            filters.append(Eq("mime", request.mime_type))
        records, token = await list_page(
            self._store,
            DOCUMENTS,
            filters,
            page_size=request.page_size,
            page_token=request.page_token,
            query=("ListDocuments",),
        )
        return ks.ListDocumentsResponse(documents=[DOCUMENT.load(r) for r in records], next_page_token=token)

    async def delete(
        self, request: ks.DeleteDocumentRequest, principal: Principal
    ) -> ks.DeleteDocumentResponse:
        """Deletes the document, then its passages; NOT_FOUND when it does not exist."""
        id = DOCUMENT.id_of(request.name)

        async def remove(txn: Transaction) -> None:
            if not await txn.delete(DOCUMENTS, id, expected_etag=""):
                raise NotFound(f"{request.name} not found", reason="NOT_FOUND")

        await self._store.run(remove)
        await self.index.remove(request.name)
        return ks.DeleteDocumentResponse()

    async def search(
        self, request: ks.SearchKnowledgeRequest, principal: Principal
    ) -> ks.SearchKnowledgeResponse:
        """The passages best matching the query, most relevant first."""
        violations = check_tags(request.tags, "tags")
        if not request.query.strip():
            violations.append(FieldViolation("query", "is required", "REQUIRED"))
        _refuse(violations)
        found = await self.index.search(
            request.query, tags=request.tags, limit=request.top_k or DEFAULT_TOP_K
        )
        return ks.SearchKnowledgeResponse(
            passages=[
                document_pb2.Passage(
                    document=p.document,
                    document_title=p.document_title,
                    section=p.section,
                    span_start=p.span_start,
                    span_end=p.span_end,
                    score=p.score,
                    text=p.text,
                )
                for p in found
            ]
        )

    async def reconcile(self) -> int:
        """Removes the passages of documents that are not stored; returns how many documents."""
        removed = 0
        for name in await self.index.documents():
            if await self._store.get(DOCUMENTS, DOCUMENT.id_of(name)) is None:
                await self.index.remove(name)
                removed += 1
        return removed

    async def count(self) -> int:
        """How many documents are stored."""
        return await self._store.count(DOCUMENTS, [])
