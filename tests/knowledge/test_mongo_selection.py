"""The MongoDB index without a server: what its setting selects and what PyMongo is given.

The contract itself runs against a real MongoDB only (``tests/knowledge/test_index_contract.py``,
skipped without ``BHIV_TEST_MONGODB_URL``); these cases check what needs no server: the selection
by ``BHIV_ORCHESTRATION_STORE_URL``, the index definitions and query filters handed to PyMongo,
and that an unreachable server fails the start instead of leaving an empty index.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pymongo.errors import ServerSelectionTimeoutError

from bhiv_core.knowledge.index import KnowledgeIndex, query_terms
from bhiv_core.knowledge.index.mongo import PASSAGE_INDEXES, MongoKnowledgeIndex, text_query
from bhiv_core.mesh import free_port
from bhiv_core.runtime.config import ConfigError
from bhiv_core.services.orchestration.server import make_orchestration_index, make_orchestration_store
from bhiv_core.storage.mongo import MongoDatabase
from tests.harness import config_for


async def test_the_store_url_selects_mongodb_for_the_index_and_the_documents(tmp_path: Path) -> None:
    url = f"mongodb://127.0.0.1:{free_port()}/?replicaSet=rs0"
    config = config_for("orchestration", DATA_DIR=str(tmp_path), ORCHESTRATION_STORE_URL=url)
    index = make_orchestration_index(config)
    store = make_orchestration_store(config)
    try:
        assert isinstance(index, MongoKnowledgeIndex)
        assert (index.database.url, index.database.name) == (url, "bhiv_orchestration")
        assert index.passages.name == "knowledge_passages"
        assert type(store).__name__ == "MongoResourceStore"
    finally:
        await index.close()  # the client connects lazily: nothing was contacted
        await store.close()
    assert not (tmp_path / "orchestration-knowledge.db").exists()


def test_unset_selects_the_sqlite_file(tmp_path: Path) -> None:
    index = make_orchestration_index(config_for("orchestration", DATA_DIR=str(tmp_path)))
    assert isinstance(index, KnowledgeIndex)


def test_a_store_url_that_is_not_mongodb_fails_fast(tmp_path: Path) -> None:
    config = config_for("orchestration", DATA_DIR=str(tmp_path), ORCHESTRATION_STORE_URL="sqlite:///x.db")
    with pytest.raises(ConfigError, match="BHIV_ORCHESTRATION_STORE_URL"):
        make_orchestration_index(config)


def test_the_text_index_weighs_the_section_above_title_and_text() -> None:
    text = PASSAGE_INDEXES[0].document
    assert text["key"] == {"title": "text", "section": "text", "text": "text"}
    assert text["weights"] == {"title": 1, "section": 2, "text": 1}
    assert text["default_language"] == "english"
    assert text["language_override"] not in {"language", "title", "section", "text", "tags", "document"}
    by_document = PASSAGE_INDEXES[1].document
    assert by_document["unique"] is True
    assert list(by_document["key"]) == ["document", "seq"]


def test_the_text_filter_ors_words_and_carries_no_phrase_or_negation() -> None:
    terms = query_terms('"acting without" -attachment to results OR $regex')
    query = text_query(terms, ["gita", "vedas"])
    search = query["$text"]["$search"]
    assert search == "acting without attachment results regex"
    assert '"' not in search and not any(word.startswith("-") for word in search.split())
    assert query["tags"] == {"$all": ["gita", "vedas"]}
    assert "tags" not in text_query(terms, [])


async def test_an_unreachable_server_fails_the_open() -> None:
    database = MongoDatabase(f"mongodb://127.0.0.1:{free_port()}/", "bhiv_unreachable", timeout_ms=200)
    index = MongoKnowledgeIndex(database)
    try:
        with pytest.raises(ServerSelectionTimeoutError):
            await index.open()
    finally:
        await index.close()
