"""Fixtures of the audit contract suite: each test runs on SQLite, and on MongoDB when configured."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bhiv_core.audit.store import AuditStore
from tests.audit.support import MONGO_SKIP, MONGO_URL, Backend, MongoBackend, SqliteBackend


@pytest.fixture(params=["sqlite", "mongo"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "mongo":
        if not MONGO_URL:
            pytest.skip(MONGO_SKIP)
        made: Backend = MongoBackend(MONGO_URL)
    else:
        made = SqliteBackend(tmp_path / "audit.db")
    try:
        yield made
    finally:
        await made.close()


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[AuditStore]:
    opened = backend.new_store()
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()
