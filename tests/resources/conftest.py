"""Fixtures of the resource kit's tests: a store of each backend over a small collection."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bhiv_core.resources import Collection, Field, ResourceStore
from bhiv_core.resources.mongo import MongoResourceStore
from bhiv_core.resources.sqlite import SqliteResourceStore, schema
from bhiv_core.storage.mongo import MongoDatabase

MONGO_URL = os.environ.get("BHIV_TEST_MONGODB_URL", "")
MONGO_SKIP = "BHIV_TEST_MONGODB_URL is not set: no MongoDB replica set to run the kit's contract against"

ITEMS = Collection(
    "items",
    (
        Field("sku", "text"),
        Field("category", "text"),
        Field("quantity", "int"),
        Field("reorder_level", "int"),
        Field("price", "real"),
        Field("active", "bool"),
        Field("tags", "list"),
        Field("search", "text"),
    ),
    order=("sku",),
    unique=(("sku",),),
    indexes=(("category",), ("owner",)),
)
"""Items listed by SKU (unique), with fields of every kind."""

EVENTS = Collection(
    "events",
    (Field("time", "real"), Field("kind", "text")),
    order=("time",),
    descending=True,
)
"""Events listed newest first."""

COLLECTIONS = (ITEMS, EVENTS)
MIGRATIONS = (schema(COLLECTIONS),)


@pytest.fixture(params=["sqlite", "mongo"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ResourceStore]:
    """An opened store of each backend; MongoDB only when BHIV_TEST_MONGODB_URL is set."""
    if request.param == "sqlite":
        opened: ResourceStore = SqliteResourceStore(tmp_path / "kit.db", COLLECTIONS, MIGRATIONS)
        await opened.open()
        try:
            yield opened
        finally:
            await opened.close()
        return
    if not MONGO_URL:
        pytest.skip(MONGO_SKIP)
    database = MongoDatabase(MONGO_URL, f"bhiv_kit_test_{uuid.uuid4().hex[:12]}")
    mongo = MongoResourceStore(database, COLLECTIONS)
    await mongo.open()
    try:
        yield mongo
    finally:
        await database.client.drop_database(database.name)
        await mongo.close()
