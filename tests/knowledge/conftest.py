"""Fixtures of the knowledge tests: a passage index of each backend (SQLite always, MongoDB when set).

``backend`` opens indexes on one store (one SQLite file, one MongoDB database), so two indexes of
the same backend see each other's changes, as two worker processes of the service do.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bhiv_core.knowledge.dense import Embedder
from bhiv_core.knowledge.index import KnowledgeIndex, PassageIndex
from bhiv_core.storage.mongo import MongoDatabase

MONGO_URL = os.environ.get("BHIV_TEST_MONGODB_URL", "")
MONGO_SKIP = "BHIV_TEST_MONGODB_URL is not set: no MongoDB replica set to run the index contract against"


class Backend:
    """Opens passage indexes of one kind on one store, and closes them (dropping a test database)."""

    def __init__(self, kind: str, tmp_path: Path):
        self.kind = kind
        self._path = tmp_path / "knowledge.db"
        self._database = f"bhiv_knowledge_test_{uuid.uuid4().hex[:12]}"
        self._opened: list[PassageIndex] = []

    async def index(self, embedder: Embedder | None = None) -> PassageIndex:
        """An opened index on this backend's store, with dense vectors when given an embedder."""
        index: PassageIndex
        if self.kind == "sqlite":
            index = KnowledgeIndex(self._path, embedder)
        else:
            from bhiv_core.knowledge.index.mongo import MongoKnowledgeIndex

            index = MongoKnowledgeIndex(MongoDatabase(MONGO_URL, self._database), embedder)
        await index.open()
        self._opened.append(index)
        return index

    async def close(self, index: PassageIndex) -> None:
        """Closes one index before the end of the test."""
        self._opened.remove(index)
        await index.close()

    async def close_all(self) -> None:
        if self.kind == "mongo":
            database = MongoDatabase(MONGO_URL, self._database)
            await database.client.drop_database(self._database)
            await database.close()
        for index in self._opened:
            await index.close()


@pytest.fixture(params=["sqlite", "mongo"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """Indexes of each backend; MongoDB only when BHIV_TEST_MONGODB_URL is set."""
    if request.param == "mongo" and not MONGO_URL:
        pytest.skip(MONGO_SKIP)
    opened = Backend(request.param, tmp_path)
    try:
        yield opened
    finally:
        await opened.close_all()
