"""Fixtures of the outbox and relay tests: a kit store with an outbox, and a recording EventService."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest

from bhiv.integrations.v1 import event_pb2, event_service_pb2, event_service_pb2_grpc
from bhiv_core.events.outbox import COLLECTIONS, OUTBOX, event_of, outbox_migration
from bhiv_core.resources import Collection, Field, ResourceStore
from bhiv_core.resources.mongo import MongoResourceStore
from bhiv_core.resources.sqlite import SqliteResourceStore, schema
from bhiv_core.storage.mongo import MongoDatabase
from tests.harness import config_for, serving

MONGO_URL = os.environ.get("BHIV_TEST_MONGODB_URL", "")

THINGS = Collection("things", (Field("n", "int"),), order=("n",))
"""A service's own collection: the change an event reports."""

MIGRATIONS = (schema((THINGS,)), outbox_migration())
"""A store made before the outbox, then moved forward: the way a service adds it."""


def open_sqlite(path: Path) -> SqliteResourceStore:
    """A store of :data:`THINGS` and the outbox at ``path`` (not opened)."""
    return SqliteResourceStore(path, (THINGS, *COLLECTIONS), MIGRATIONS)


@pytest.fixture(params=["sqlite", "mongo"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ResourceStore]:
    """An opened store of each backend; MongoDB only when BHIV_TEST_MONGODB_URL is set."""
    if request.param == "sqlite":
        opened: ResourceStore = open_sqlite(tmp_path / "svc.db")
        await opened.open()
        try:
            yield opened
        finally:
            await opened.close()
        return
    if not MONGO_URL:
        pytest.skip("BHIV_TEST_MONGODB_URL is not set")
    database = MongoDatabase(MONGO_URL, f"bhiv_outbox_test_{uuid.uuid4().hex[:12]}")
    mongo = MongoResourceStore(database, (THINGS, *COLLECTIONS))
    await mongo.open()
    try:
        yield mongo
    finally:
        await database.client.drop_database(database.name)
        await mongo.close()


async def outbox_events(store: ResourceStore) -> list[event_pb2.Event]:
    """Every event in the outbox (rejected ones too), in commit order."""
    return [event_of(r) for r in await store.find(OUTBOX, [], after=None, limit=10_000)]


class Recorder(event_service_pb2_grpc.EventServiceServicer):
    """A stand-in for integrations' PublishEvents: records each accepted batch and its token.

    ``failures`` holds the status codes the next calls answer, one per call (then it accepts);
    ``refuse`` holds event ids it answers INVALID_ARGUMENT for, whenever a batch carries one.
    """

    def __init__(self) -> None:
        self.batches: list[list[event_pb2.Event]] = []
        self.tokens: list[str] = []
        self.failures: list[grpc.StatusCode] = []
        self.refuse: set[str] = set()
        self.calls = 0
        self.called = asyncio.Event()

    @property
    def events(self) -> list[event_pb2.Event]:
        return [e for batch in self.batches for e in batch]

    async def PublishEvents(
        self, request: event_service_pb2.PublishEventsRequest, context: Any
    ) -> event_service_pb2.PublishEventsResponse:
        self.calls += 1
        self.called.set()
        metadata = dict(context.invocation_metadata())
        if self.failures:
            await context.abort(self.failures.pop(0), "try again later")
        if any(e.id in self.refuse for e in request.events):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad event")
        self.tokens.append(str(metadata.get("authorization", "")))
        self.batches.append(list(request.events))
        return event_service_pb2.PublishEventsResponse(accepted=len(request.events))


@contextlib.asynccontextmanager
async def integrations(recorder: Recorder) -> AsyncIterator[str]:
    """Serves ``recorder`` as EventService on a loopback port; yields its address."""
    service = event_service_pb2.DESCRIPTOR.services_by_name["EventService"]
    async with serving([(service, recorder)], config=config_for("integrations")) as (running, _):
        yield running.address


async def wait_until(predicate: Any, *, rounds: int = 12000) -> None:
    """Yields to the loop until ``predicate()`` (or its awaited result) holds: bounded, never hangs."""
    for _ in range(rounds):
        held = predicate()
        if asyncio.iscoroutine(held):
            held = await held
        if held:
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the condition never held")


async def drained(store: ResourceStore) -> bool:
    """True when the outbox holds no event waiting (the relay sent and deleted everything)."""
    return await store.count(OUTBOX, []) == 0


def stored_events(db: Path) -> list[event_pb2.Event]:
    """The events in the outbox of the SQLite store ``db``, in commit order (read as another process)."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT data FROM outbox ORDER BY f_seq").fetchall()
    return [event_pb2.Event.FromString(row[0]) for row in rows]


def ids(events: Sequence[event_pb2.Event]) -> list[str]:
    return [e.id for e in events]
