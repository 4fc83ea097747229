"""The passage index contract: every backend passes it (SQLite always, MongoDB when configured).

Lexical scores differ between backends (BM25 vs MongoDB's textScore), so the cases assert what
both promise: verbatim spans, the order where the section title or the tags decide it, filters,
removal, markers, and a query's syntax never reaching the engine.
"""

from __future__ import annotations

from collections.abc import Sequence

from bhiv_core.knowledge import chunk, extract_text, load_embedder
from bhiv_core.knowledge.index import PassageIndex
from tests.knowledge.conftest import Backend

HARBOUR = (
    "# Harbour\n\nThe ferry to the island departs every hour from the eastern pier.\n\n"
    "# Tickets\n\nTickets are sold at the kiosk beside the pier; children travel free."
)
MARKET = "# Market\n\nThe market opens at dawn; fishermen sell the night's catch by the harbour wall."


async def add(
    index: PassageIndex, name: str, text: str, tags: Sequence[str] = ("x",), title: str = ""
) -> str:
    extracted = extract_text(text, field="text")
    await index.add(
        f"documents/{name}",
        title or name.title(),
        tags,
        extracted.text,
        chunk(extracted.text, extracted.sections),
    )
    return extracted.text


async def test_passages_are_verbatim_spans_with_stable_ids(backend: Backend) -> None:
    index = await backend.index()
    text = await add(index, "harbour", HARBOUR, title="The Harbour")
    found = await index.search("when does the ferry depart", limit=5)
    assert found, "a word of the passage matches"
    top = found[0]
    assert top.id == "documents/harbour#0"
    assert (top.document, top.document_title, top.section) == ("documents/harbour", "The Harbour", "Harbour")
    assert text[top.span_start : top.span_end] == top.text
    assert top.text.startswith("The ferry to the island")
    assert all(0.0 < p.score <= 1.0 for p in found)
    assert [p.score for p in found] == sorted((p.score for p in found), reverse=True)


async def test_the_section_title_weighs_above_the_text(backend: Backend) -> None:
    index = await backend.index()
    await add(index, "harbour", HARBOUR, title="Island ferry")
    await add(index, "market", MARKET, title="Market")
    # "harbour" is the Harbour passage's section title and a word in the Market passage's text.
    found = await index.search("harbour", limit=5)
    assert [p.id for p in found[:2]] == ["documents/harbour#0", "documents/market#0"]


async def test_tags_keep_only_documents_carrying_every_one(backend: Backend) -> None:
    index = await backend.index()
    await add(index, "harbour", HARBOUR, tags=["travel", "island"])
    await add(index, "market", MARKET, tags=["travel"])
    both = await index.search("harbour pier market", tags=["travel"], limit=10)
    assert {p.document for p in both} == {"documents/harbour", "documents/market"}
    island = await index.search("harbour pier market", tags=["travel", "island"], limit=10)
    assert {p.document for p in island} == {"documents/harbour"}
    assert await index.search("harbour pier market", tags=["travel", "food"], limit=10) == []


async def test_removing_a_document_removes_its_passages_only(backend: Backend) -> None:
    index = await backend.index()
    await add(index, "harbour", HARBOUR)
    await add(index, "market", MARKET)
    assert sorted(await index.documents()) == ["documents/harbour", "documents/market"]
    assert await index.remove("documents/harbour") == 2
    assert await index.remove("documents/harbour") == 0
    assert await index.documents() == ["documents/market"]
    assert {p.document for p in await index.search("harbour pier ferry", limit=10)} == {"documents/market"}


async def test_markers_are_stored_and_replaced(backend: Backend) -> None:
    index = await backend.index()
    assert await index.get_meta("sample_corpus") is None
    await index.set_meta("sample_corpus", "done")
    await index.set_meta("sample_corpus", "again")
    assert await index.get_meta("sample_corpus") == "again"
    other = await backend.index()
    assert await other.get_meta("sample_corpus") == "again"


async def test_query_syntax_never_reaches_the_engine(backend: Backend) -> None:
    index = await backend.index()
    await add(index, "harbour", HARBOUR)
    # FTS5 (quotes, NEAR, column filters, *) and $text (phrases, -negation) syntax are plain words.
    for query in ['"ferry', "ferry -island", "text: ferry NEAR(island) *", "ferry $where {} \\ '"]:
        found = await index.search(query, limit=5)
        assert [p.id for p in found][:1] == ["documents/harbour#0"], query


async def test_nothing_to_search_finds_nothing(backend: Backend) -> None:
    index = await backend.index()
    await add(index, "harbour", HARBOUR)
    assert await index.search("the of and", limit=5) == []
    assert await index.search("  ", limit=5) == []
    assert await index.search("ferry", limit=0) == []
    assert await index.search("zeppelin", limit=5) == []


async def test_limit_bounds_the_results(backend: Backend) -> None:
    index = await backend.index()
    await add(index, "harbour", HARBOUR)
    await add(index, "market", MARKET)
    assert len(await index.search("harbour pier ferry market tickets", limit=1)) == 1


async def test_dense_and_hybrid_find_a_paraphrase_and_follow_other_writers(backend: Backend) -> None:
    embedder = load_embedder()
    assert embedder is not None, "wordllama is a runtime requirement"
    lexical = await backend.index()
    await add(lexical, "harbour", HARBOUR)  # ingested while dense retrieval is off: no vectors
    assert await lexical.search("boat schedule", mode="dense") == []  # no embedder: no dense ranking
    await backend.close(lexical)

    dense = await backend.index(embedder)  # embeds what has no vector when it opens
    found = await dense.search("ferry schedule to the island", mode="dense", limit=1)
    assert [p.id for p in found] == ["documents/harbour#0"]
    assert await dense.search("ferry schedule to the island", mode="dense", tags=["y"]) == []

    writer = await backend.index(embedder)  # another process adds: the reader reloads its vectors
    await add(writer, "market", MARKET, tags=["y"])
    found = await dense.search("fish sold early in the morning", mode="dense", tags=["y"], limit=1)
    assert [p.id for p in found] == ["documents/market#0"]

    hybrid = await dense.search("when does the boat leave for the island", limit=3)  # hybrid by default
    assert hybrid[0].id == "documents/harbour#0"
    assert all(0.0 < p.score <= 1.0 for p in hybrid)
    assert [p.score for p in hybrid] == sorted((p.score for p in hybrid), reverse=True)

    await writer.remove("documents/harbour")
    assert all(p.document != "documents/harbour" for p in await dense.search("ferry island pier"))
    assert all(p.document != "documents/harbour" for p in await dense.search("ferry island", mode="dense"))
