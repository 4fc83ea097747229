"""Sentinel's store contract: runs on SQLite, and on MongoDB when BHIV_TEST_MONGODB_URL is set."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sqlite3
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bhiv_core.runtime.config import ConfigError
from bhiv_core.runtime.errors import AlreadyExists, InvalidArgument
from bhiv_core.services.sentinel.store import (
    _SQLITE_MIGRATIONS,
    EventFilter,
    EventKind,
    MongoSentinelStore,
    SecurityEvent,
    SentinelStore,
    SqliteSentinelStore,
    make_sentinel_store,
)
from bhiv_core.storage.mongo import MongoDatabase
from tests.harness import config_for

MONGO_URL = os.environ.get("BHIV_TEST_MONGODB_URL", "")
T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "mongo"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SentinelStore]:
    if request.param == "mongo":
        if not MONGO_URL:
            pytest.skip(
                "BHIV_TEST_MONGODB_URL is not set: the MongoDB run of sentinel's store contract is skipped"
            )
        name = f"bhiv_sentinel_test_{uuid.uuid4().hex[:12]}"
        opened: SentinelStore = MongoSentinelStore(MongoDatabase(MONGO_URL, name))
    else:
        opened = SqliteSentinelStore(tmp_path / "sentinel.db")
    await opened.open()
    try:
        yield opened
    finally:
        if isinstance(opened, MongoSentinelStore):
            cleanup = MongoDatabase(MONGO_URL, name)
            await cleanup.client.drop_database(name)
            await cleanup.close()
        await opened.close()


def event(n: int, *, kind: EventKind = EventKind.LOGIN_FAILED, address: str = "203.0.113.7") -> SecurityEvent:
    return SecurityEvent(
        event_id=f"{n:032x}",
        kind=kind,
        source_address=address,
        principal=f"user{n}",
        method="/bhiv.identity.v1.AuthService/Login",
        detail="wrong password",
        reporter="services/identity",
        event_time=T0 + timedelta(seconds=n),
        receive_time=T0 + timedelta(seconds=n, milliseconds=5),
    )


async def test_added_event_reads_back_exactly(store: SentinelStore) -> None:
    added = await store.add_security_event(event(1))
    assert await store.get_security_event(added.event_id) == event(1)
    assert await store.get_security_event("nope") is None


async def test_suspicious_input_fields_read_back_in_order_on_get_and_list(store: SentinelStore) -> None:
    fields = (("ticket.subject", "x'; DROP TABLE t;--"), ("labels[env]#key", 'a\r\nb "q" धर्म'))
    added = dataclasses.replace(event(1, kind=EventKind.SUSPICIOUS_INPUT), fields=fields)
    await store.add_security_event(added)
    await store.add_security_event(event(2))
    assert await store.get_security_event(added.event_id) == added
    listed, _ = await store.list_security_events(EventFilter())
    assert [e.fields for e in listed] == [fields, ()]


async def test_a_database_of_the_previous_schema_gains_empty_fields(tmp_path: Path) -> None:
    # A sentinel.db written before events had fields (schema version 2): its events read back with none.
    path = tmp_path / "sentinel.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        for script in _SQLITE_MIGRATIONS[:2]:
            conn.executescript(script)
        conn.execute(
            "INSERT INTO security_events VALUES (?, 'login_failed', '203.0.113.7', 'u', '', 'd', 'r', 1, 2)",
            ("e1",),
        )
        conn.execute("PRAGMA user_version = 2")
        conn.commit()
    current = SqliteSentinelStore(path)
    await current.open()
    try:
        found = await current.get_security_event("e1")
        assert found is not None and found.fields == ()
    finally:
        await current.close()


async def test_duplicate_event_id_already_exists(store: SentinelStore) -> None:
    await store.add_security_event(event(1))
    with pytest.raises(AlreadyExists):
        await store.add_security_event(event(1))


async def test_list_filters_and_pages_in_id_order(store: SentinelStore) -> None:
    for n in range(1, 7):
        await store.add_security_event(
            event(
                n,
                kind=EventKind.TOKEN_INVALID if n % 3 == 0 else EventKind.LOGIN_FAILED,
                address="198.51.100.1" if n % 2 else "203.0.113.7",
            )
        )

    async def ids(query: EventFilter, size: int = 0) -> list[int]:
        out, token = [], ""
        while True:
            events, token = await store.list_security_events(query, size, token)
            out += [int(e.event_id, 16) for e in events]
            if not token:
                return out

    assert await ids(EventFilter()) == [1, 2, 3, 4, 5, 6]
    assert await ids(EventFilter(), size=4) == [1, 2, 3, 4, 5, 6]
    assert await ids(EventFilter(kind=EventKind.TOKEN_INVALID)) == [3, 6]
    assert await ids(EventFilter(source_address="198.51.100.1"), size=1) == [1, 3, 5]
    assert await ids(EventFilter(principal="user4")) == [4]
    assert await ids(
        EventFilter(start_time=T0 + timedelta(seconds=2), end_time=T0 + timedelta(seconds=4))
    ) == [2, 3]


async def test_list_rejects_a_token_of_another_query(store: SentinelStore) -> None:
    for n in range(1, 4):
        await store.add_security_event(event(n))
    _, token = await store.list_security_events(EventFilter(), 1)
    with pytest.raises(InvalidArgument):
        await store.list_security_events(EventFilter(kind=EventKind.LOGIN_FAILED), 1, token)
    with pytest.raises(InvalidArgument):
        await store.list_security_events(EventFilter(), -1)


def test_store_is_sqlite_by_default_and_mongo_by_url(tmp_path: Path) -> None:
    default = make_sentinel_store(config_for("sentinel", DATA_DIR=str(tmp_path)))
    assert isinstance(default, SqliteSentinelStore) and default.path == tmp_path / "sentinel.db"
    mongo = make_sentinel_store(
        config_for("sentinel", SENTINEL_STORE_URL="mongodb://127.0.0.1:1/?replicaSet=rs0")
    )
    assert isinstance(mongo, MongoSentinelStore)
    with pytest.raises(ConfigError, match="BHIV_SENTINEL_STORE_URL"):
        make_sentinel_store(config_for("sentinel", SENTINEL_STORE_URL="file:///tmp/x"))
