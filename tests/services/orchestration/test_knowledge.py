"""KnowledgeService against a served orchestration: ingest, get, list, search, delete, the corpus."""

from __future__ import annotations

import stat
from pathlib import Path

import grpc

from bhiv.orchestration.v1 import knowledge_service_pb2 as ks
from bhiv_core.knowledge.corpus import SAMPLES, read_sample
from tests.services.crm.conftest import as_, refused, violations
from tests.services.orchestration.conftest import Orchestration, serve_orchestration
from tests.services.orchestration.pdf import pdf_of

ADMIN = as_("admin")
OPS = as_("ops")
SUPPORT = as_("support")
CUSTOMER = as_("customer", subject="users/cu", customer="customers/c1")

GUIDE = """# Warehouse Guide

Opening words of the guide.

## Cold Storage

Saffron and cardamom are kept in the cold room at eight degrees.

## Night Shift

The night shift loads the monsoon trucks after midnight.
"""


def ingest_text(text: str = GUIDE, **fields: object) -> ks.IngestDocumentRequest:
    values: dict[str, object] = {"title": "Warehouse guide", "mime_type": "text/plain", "text": text}
    values.update(fields)
    return ks.IngestDocumentRequest(**values)  # type: ignore[arg-type]


async def test_ingested_markdown_is_found_by_section_with_its_exact_span(
    orchestration: Orchestration,
) -> None:
    kb = orchestration.knowledge
    doc = (await kb.IngestDocument(ingest_text(tags=["ops", "guide"]), metadata=OPS)).document
    assert doc.name.startswith("documents/")
    assert (doc.section_count, doc.passage_count, list(doc.tags)) == (3, 3, ["ops", "guide"])
    assert doc.size_bytes == len(GUIDE.encode())

    found = (
        await kb.SearchKnowledge(ks.SearchKnowledgeRequest(query="where is saffron stored?"), metadata=OPS)
    ).passages
    top = found[0]
    assert (top.document, top.document_title, top.section) == (doc.name, "Warehouse guide", "Cold Storage")
    assert GUIDE[top.span_start : top.span_end] == top.text
    assert top.text.startswith("Saffron and cardamom")
    assert 0 < top.score <= 1

    got = (await kb.GetDocument(ks.GetDocumentRequest(name=doc.name), metadata=SUPPORT)).document
    assert got == doc


async def test_tags_filter_search_and_list(orchestration: Orchestration) -> None:
    kb = orchestration.knowledge
    a = (await kb.IngestDocument(ingest_text(tags=["north"]), metadata=OPS)).document
    b = (await kb.IngestDocument(ingest_text(title="Other", tags=["south", "x"]), metadata=OPS)).document
    query = "saffron cold room"
    both = await kb.SearchKnowledge(ks.SearchKnowledgeRequest(query=query), metadata=OPS)
    assert {p.document for p in both.passages} == {a.name, b.name}
    south = await kb.SearchKnowledge(
        ks.SearchKnowledgeRequest(query=query, tags=["south", "x"]), metadata=OPS
    )
    assert {p.document for p in south.passages} == {b.name}
    none = await kb.SearchKnowledge(
        ks.SearchKnowledgeRequest(query=query, tags=["south", "north"]), metadata=OPS
    )
    assert list(none.passages) == []
    top1 = await kb.SearchKnowledge(ks.SearchKnowledgeRequest(query=query, top_k=1), metadata=OPS)
    assert len(top1.passages) == 1

    listed = await kb.ListDocuments(ks.ListDocumentsRequest(), metadata=OPS)
    assert [d.name for d in listed.documents] == [b.name, a.name]  # newest first
    tagged = await kb.ListDocuments(ks.ListDocumentsRequest(tag="north"), metadata=OPS)
    assert [d.name for d in tagged.documents] == [a.name]
    page = await kb.ListDocuments(ks.ListDocumentsRequest(page_size=1), metadata=OPS)
    rest = await kb.ListDocuments(
        ks.ListDocumentsRequest(page_size=1, page_token=page.next_page_token), metadata=OPS
    )
    assert [d.name for d in (*page.documents, *rest.documents)] == [b.name, a.name]
    assert rest.next_page_token == ""
    pdfs = await kb.ListDocuments(ks.ListDocumentsRequest(mime_type="application/pdf"), metadata=OPS)
    assert list(pdfs.documents) == []


async def test_delete_removes_the_document_and_its_passages(orchestration: Orchestration) -> None:
    kb = orchestration.knowledge
    doc = (await kb.IngestDocument(ingest_text(), metadata=OPS)).document
    await kb.DeleteDocument(ks.DeleteDocumentRequest(name=doc.name), metadata=ADMIN)
    found = await kb.SearchKnowledge(ks.SearchKnowledgeRequest(query="saffron monsoon trucks"), metadata=OPS)
    assert list(found.passages) == []
    err = await refused(kb.GetDocument(ks.GetDocumentRequest(name=doc.name), metadata=OPS))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    err = await refused(kb.DeleteDocument(ks.DeleteDocumentRequest(name=doc.name), metadata=ADMIN))
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_pdf_pages_are_sections(orchestration: Orchestration) -> None:
    kb = orchestration.knowledge
    data = pdf_of(["The monsoon warehouse ships saffron on Tuesdays.", "Cardamom is stored in sealed tins."])
    request = ks.IngestDocumentRequest(
        title="Manual", mime_type="application/pdf", data=data, source="manual.pdf"
    )
    doc = (await kb.IngestDocument(request, metadata=OPS)).document
    assert (doc.mime_type, doc.section_count, doc.size_bytes) == ("application/pdf", 2, len(data))
    found = (
        await kb.SearchKnowledge(ks.SearchKnowledgeRequest(query="cardamom tins"), metadata=OPS)
    ).passages
    assert (found[0].document, found[0].section, found[0].text) == (
        doc.name,
        "Page 2",
        "Cardamom is stored in sealed tins.",
    )
    # The extracted text is the pages joined by a blank line: page 2 starts after page 1 and "\n\n".
    assert found[0].span_start == len("The monsoon warehouse ships saffron on Tuesdays.") + 2
    pdfs = await kb.ListDocuments(ks.ListDocumentsRequest(mime_type="application/pdf"), metadata=OPS)
    assert [d.name for d in pdfs.documents] == [doc.name]


async def test_a_retried_ingest_returns_the_first_document_and_indexes_once(
    orchestration: Orchestration,
) -> None:
    kb = orchestration.knowledge
    request = ingest_text(request_id="r-1")
    first = (await kb.IngestDocument(request, metadata=OPS)).document
    again = (await kb.IngestDocument(request, metadata=OPS)).document
    assert again == first
    found = await kb.SearchKnowledge(
        ks.SearchKnowledgeRequest(query="saffron cardamom", top_k=50), metadata=OPS
    )
    assert [p.section for p in found.passages] == ["Cold Storage"]
    listed = await kb.ListDocuments(ks.ListDocumentsRequest(), metadata=OPS)
    assert len(listed.documents) == 1
    err = await refused(kb.IngestDocument(ingest_text(title="Else", request_id="r-1"), metadata=OPS))
    assert violations(err) == [("request_id", "REQUEST_ID_REUSED")]


async def test_hostile_input_is_invalid_argument_with_field_violations(orchestration: Orchestration) -> None:
    kb = orchestration.knowledge
    pdf = "application/pdf"
    cases = [
        (ks.IngestDocumentRequest(title="t", mime_type=pdf, data=b"hello, not a pdf"), ("data", "NOT_PDF")),
        (
            ks.IngestDocumentRequest(title="t", mime_type=pdf, data=b"%PDF-1.7\n\x00garbage"),
            ("data", "BAD_PDF"),
        ),
        (ks.IngestDocumentRequest(title="t", mime_type=pdf, text="some text"), ("text", "TEXT_WITH_PDF")),
        (
            ks.IngestDocumentRequest(title="t", mime_type="text/plain", text=" \n\t "),
            ("text", "EMPTY_CONTENT"),
        ),
        (
            ks.IngestDocumentRequest(title="t", mime_type="text/plain", data=b"\xff\xfe\xfa"),
            ("data", "NOT_UTF8"),
        ),
        (ks.IngestDocumentRequest(title="t", mime_type="text/plain"), ("content", "REQUIRED")),
        (ingest_text(tags=["ok", "Bad Tag"]), ("tags[1]", "BAD_TAG")),
        (ingest_text(tags=[""]), ("tags[0]", "BAD_TAG")),
        (ingest_text(title="   "), ("title", "REQUIRED")),
    ]
    for request, expected in cases:
        err = await refused(kb.IngestDocument(request, metadata=OPS))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (expected, err.details())
        assert expected in violations(err), (expected, violations(err))

    bad_searches = [
        ks.SearchKnowledgeRequest(query="x" * 10_001),
        ks.SearchKnowledgeRequest(query="ok", tags=["NO"]),
        ks.SearchKnowledgeRequest(query="ok", top_k=51),
        ks.SearchKnowledgeRequest(query="   "),
    ]
    for search in bad_searches:
        err = await refused(kb.SearchKnowledge(search, metadata=OPS))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, search
        assert violations(err)
    err = await refused(kb.ListDocuments(ks.ListDocumentsRequest(tag="Not A Tag"), metadata=OPS))
    assert violations(err) == [("tag", "BAD_TAG")]
    # A query of FTS5 syntax and punctuation is only words to the index, never a syntax error.
    odd = await kb.SearchKnowledge(ks.SearchKnowledgeRequest(query='" OR NEAR( * ) AND -- ;'), metadata=OPS)
    assert list(odd.passages) == []


async def test_roles_follow_the_matrix(orchestration: Orchestration) -> None:
    kb = orchestration.knowledge
    err = await refused(kb.IngestDocument(ingest_text(), metadata=CUSTOMER))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    err = await refused(kb.SearchKnowledge(ks.SearchKnowledgeRequest(query="saffron"), metadata=CUSTOMER))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    doc = (await kb.IngestDocument(ingest_text(), metadata=OPS)).document
    for role in (OPS, SUPPORT, CUSTOMER):
        err = await refused(kb.DeleteDocument(ks.DeleteDocumentRequest(name=doc.name), metadata=role))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    found = await kb.SearchKnowledge(ks.SearchKnowledgeRequest(query="saffron"), metadata=SUPPORT)
    assert found.passages


async def test_sample_corpus_is_ingested_once_on_first_start(tmp_path: Path) -> None:
    async with serve_orchestration(tmp_path) as served:
        kb = served.knowledge
        listed = await kb.ListDocuments(ks.ListDocumentsRequest(), metadata=OPS)
        assert len(listed.documents) == len(SAMPLES)
        question = "What does the Gita say about acting without attachment to results?"
        found = (
            await kb.SearchKnowledge(ks.SearchKnowledgeRequest(query=question), metadata=SUPPORT)
        ).passages
        top = found[0]
        assert (top.document_title, top.section) == (
            "The Bhagavad Gita on Action",
            "Acting Without Attachment to Results",
        )
        source = read_sample(next(s for s in SAMPLES if s.title == top.document_title))
        assert source[top.span_start : top.span_end] == top.text
        for p in found:  # every returned passage is verbatim text of its document
            sample = next(s for s in SAMPLES if s.title == p.document_title)
            assert read_sample(sample)[p.span_start : p.span_end] == p.text
        gone = listed.documents[0].name
        await kb.DeleteDocument(ks.DeleteDocumentRequest(name=gone), metadata=ADMIN)
    async with serve_orchestration(tmp_path) as served:
        listed = await served.knowledge.ListDocuments(ks.ListDocumentsRequest(), metadata=OPS)
        assert len(listed.documents) == len(SAMPLES) - 1  # not ingested again
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in sorted(tmp_path.iterdir())}  # noqa: ASYNC240
    assert modes.get("orchestration-knowledge.db") == 0o600
    assert set(modes.values()) == {0o600}, modes
