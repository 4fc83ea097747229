"""The audit store contract: every test runs on SQLite, and on MongoDB when BHIV_TEST_MONGODB_URL is set."""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bhiv_core.audit.record import GENESIS_HASH, RESOURCE_LIMIT, AuditEntry, AuditRecord, ChainBreak, seal
from bhiv_core.audit.store import PAGE_BYTES, AuditFilter, AuditStore, make_audit_store
from bhiv_core.audit.store.common import record_bytes
from bhiv_core.audit.store.mongo import MongoAuditStore
from bhiv_core.audit.store.sqlite import SqliteAuditStore
from bhiv_core.runtime.config import ConfigError
from bhiv_core.runtime.errors import InvalidArgument
from tests.audit.support import Backend, SqliteBackend, entry, written_before_the_caps
from tests.harness import config_for


async def fill(store: AuditStore, count: int) -> list[AuditRecord]:
    return await store.append([entry(f"users/u{i}") for i in range(1, count + 1)])


def as_entry(record: AuditRecord) -> AuditEntry:
    fields = record._asdict()
    for key in ("sequence", "prev_hash", "hash"):
        del fields[key]
    return AuditEntry(**fields)


# --- appending ------------------------------------------------------------------------------------


async def test_append_assigns_consecutive_sequences_and_chains_hashes(store: AuditStore) -> None:
    first = await store.append([entry("users/a"), entry("users/b")])
    second = await store.append([entry("users/c")])
    records = first + second
    assert [r.sequence for r in records] == [1, 2, 3]
    assert records[0].prev_hash == GENESIS_HASH
    assert [r.prev_hash for r in records[1:]] == [r.hash for r in records[:-1]]
    assert all(r.hash == r.computed_hash() for r in records)
    assert await store.latest_sequence() == 3


async def test_stored_records_read_back_exactly(store: AuditStore) -> None:
    appended = await store.append(
        [entry(duration_ms=0.1 + 0.2, time=datetime(2026, 1, 2, 3, 4, 5, 678901, UTC))]
    )
    assert await store.get(1) == appended[0]
    assert (await store.get(1)).computed_hash() == appended[0].hash  # type: ignore[union-attr]


async def test_get_missing_sequence_is_none(store: AuditStore) -> None:
    await fill(store, 1)
    assert await store.get(2) is None
    assert await store.get(0) is None
    assert await store.get(2**64) is None


async def test_append_of_nothing_is_nothing(store: AuditStore) -> None:
    assert await store.append([]) == []
    assert await store.latest_sequence() == 0


async def test_concurrent_appenders_build_one_unbroken_chain(backend: Backend) -> None:
    stores = [backend.new_store() for _ in range(3)]
    for s in stores:
        await s.open()
    try:

        async def appender(s: AuditStore, n: int) -> None:
            for i in range(20):
                await s.append([entry(f"users/w{n}-{i}")] * (1 + i % 2))

        await asyncio.gather(*(appender(s, n) for n, s in enumerate(stores)))
        total = 3 * sum(1 + i % 2 for i in range(20))
        result = await stores[0].verify()
        assert (result.ok, result.checked) == (True, total)
        assert await stores[1].latest_sequence() == total
    finally:
        for s in stores:
            await s.close()


def _append_in_process(path: str, worker: int, count: int) -> None:
    async def main() -> None:
        store = SqliteAuditStore(Path(path))
        await store.open()
        try:
            for i in range(count):
                await store.append([entry(f"users/p{worker}-{i}")] * (1 + i % 3))
        finally:
            await store.close()

    asyncio.run(main())


def test_appends_from_three_processes_to_one_file_make_one_unbroken_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    ctx = multiprocessing.get_context("spawn")
    count = 40
    procs = [ctx.Process(target=_append_in_process, args=(str(path), n, count)) for n in range(3)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
        assert proc.exitcode == 0
    total = 3 * sum(1 + i % 3 for i in range(count))
    conn = sqlite3.connect(path)
    try:
        sequences = [row[0] for row in conn.execute("SELECT sequence FROM audit_records ORDER BY sequence")]
        principals = {row[0] for row in conn.execute("SELECT DISTINCT principal FROM audit_records")}
    finally:
        conn.close()
    assert sequences == list(range(1, total + 1))  # no gap, no duplicate
    assert len(principals) == 3 * count  # every process's every append landed

    async def verify() -> None:
        store = SqliteAuditStore(path)
        await store.open()
        try:
            result = await store.verify()
        finally:
            await store.close()
        assert (result.ok, result.checked) == (True, total)

    asyncio.run(verify())


# --- verifying ------------------------------------------------------------------------------------


async def test_empty_chain_verifies_ok_with_nothing_checked(store: AuditStore) -> None:
    result = await store.verify()
    assert (result.ok, result.checked, result.start_sequence, result.end_sequence) == (True, 0, 1, 0)


async def test_intact_chain_verifies_ok(store: AuditStore) -> None:
    await fill(store, 5)
    result = await store.verify()
    assert (result.ok, result.checked, result.first_broken_sequence, result.reason, result.detail) == (
        True,
        5,
        0,
        None,
        "",
    )
    assert (result.start_sequence, result.end_sequence) == (1, 5)


async def test_sub_range_verifies_and_end_beyond_latest_is_clamped(store: AuditStore) -> None:
    await fill(store, 5)
    result = await store.verify(2, 4)
    assert (result.ok, result.checked, result.start_sequence, result.end_sequence) == (True, 3, 2, 4)
    result = await store.verify(4, 99)
    assert (result.ok, result.checked, result.end_sequence) == (True, 2, 5)


@pytest.mark.parametrize(
    "column,value",
    [("outcome_code", "OK"), ("principal", "users/someone-else"), ("duration_ms", 0.5)],
)
async def test_edited_record_is_a_hash_mismatch_at_its_sequence(
    backend: Backend, store: AuditStore, column: str, value: object
) -> None:
    await store.append([entry(code="PERMISSION_DENIED", number=7) for _ in range(5)])
    await backend.edit(3, **{column: value})
    result = await store.verify()
    assert (result.ok, result.first_broken_sequence, result.reason, result.checked) == (
        False,
        3,
        ChainBreak.HASH_MISMATCH,
        3,
    )
    assert "record 3" in result.detail


async def test_edited_and_rehashed_record_breaks_the_next_link(backend: Backend, store: AuditStore) -> None:
    records = await fill(store, 5)
    forged = seal(as_entry(records[2])._replace(principal="users/mallory"), 3, records[1].hash)
    await backend.overwrite(3, forged)
    result = await store.verify()
    assert (result.ok, result.first_broken_sequence, result.reason) == (
        False,
        4,
        ChainBreak.PREV_HASH_MISMATCH,
    )


async def test_edited_and_rehashed_last_record_is_caught_by_the_head(
    backend: Backend, store: AuditStore
) -> None:
    records = await fill(store, 3)
    forged = seal(as_entry(records[2])._replace(principal="users/mallory"), 3, records[1].hash)
    await backend.overwrite(3, forged)
    result = await store.verify()
    assert (result.ok, result.first_broken_sequence, result.reason) == (False, 3, ChainBreak.HASH_MISMATCH)


async def test_deleted_record_is_a_sequence_gap(backend: Backend, store: AuditStore) -> None:
    await fill(store, 5)
    await backend.delete(2)
    result = await store.verify()
    assert (result.ok, result.first_broken_sequence, result.reason, result.checked) == (
        False,
        2,
        ChainBreak.SEQUENCE_GAP,
        1,
    )


async def test_deleted_last_record_is_a_sequence_gap(backend: Backend, store: AuditStore) -> None:
    await fill(store, 4)
    await backend.delete(4)
    result = await store.verify()
    assert (result.ok, result.first_broken_sequence, result.reason) == (False, 4, ChainBreak.SEQUENCE_GAP)


async def test_swapped_records_are_a_hash_mismatch_at_the_first(backend: Backend, store: AuditStore) -> None:
    records = await fill(store, 5)
    await backend.overwrite(2, records[3]._replace(sequence=2))
    await backend.overwrite(4, records[1]._replace(sequence=4))
    result = await store.verify()
    assert (result.ok, result.first_broken_sequence, result.reason) == (False, 2, ChainBreak.HASH_MISMATCH)


async def test_swapped_and_resealed_records_break_the_link(backend: Backend, store: AuditStore) -> None:
    records = await fill(store, 5)
    # The attacker re-hashes each moved record at its new place but cannot fix its neighbours.
    await backend.overwrite(2, seal(as_entry(records[3]), 2, records[0].hash))
    await backend.overwrite(4, seal(as_entry(records[1]), 4, records[2].hash))
    result = await store.verify()
    assert (result.ok, result.first_broken_sequence, result.reason) == (
        False,
        3,
        ChainBreak.PREV_HASH_MISMATCH,
    )


async def test_range_after_a_deleted_record_reports_the_missing_link(
    backend: Backend, store: AuditStore
) -> None:
    await fill(store, 5)
    await backend.delete(2)
    result = await store.verify(3)
    assert (result.ok, result.first_broken_sequence, result.reason, result.start_sequence) == (
        False,
        2,
        ChainBreak.SEQUENCE_GAP,
        3,
    )


async def test_range_before_a_break_is_ok(backend: Backend, store: AuditStore) -> None:
    await fill(store, 5)
    await backend.edit(4, principal="users/mallory")
    assert (await store.verify(1, 3)).ok
    assert not (await store.verify(1, 4)).ok


async def test_verify_stops_at_the_first_of_several_breaks(backend: Backend, store: AuditStore) -> None:
    await fill(store, 6)
    await backend.edit(5, principal="users/x")
    await backend.edit(2, principal="users/y")
    result = await store.verify()
    assert (result.first_broken_sequence, result.checked) == (2, 2)


async def test_long_chain_is_verified_across_batches(backend: Backend, store: AuditStore) -> None:
    for _ in range(3):
        await store.append([entry() for _ in range(1500)])
    assert ((await store.verify()).ok, (await store.verify()).checked) == (True, 4500)
    await backend.edit(4100, resource="customers/hidden")
    result = await store.verify()
    assert (result.first_broken_sequence, result.reason) == (4100, ChainBreak.HASH_MISMATCH)
    assert result.checked == 4100


# --- listing --------------------------------------------------------------------------------------


async def test_list_filters_by_every_field(store: AuditStore) -> None:
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    await store.append(
        [
            entry("users/a", code="OK", time=t0),
            entry("users/b", code="PERMISSION_DENIED", number=7, time=t0 + timedelta(minutes=1)),
            entry(
                "users/a",
                method="/bhiv.crm.v1.LeadService/GetLead",
                resource="leads/l1",
                time=t0 + timedelta(minutes=2),
            ),
            entry("users/a", code="NOT_FOUND", number=5, time=t0 + timedelta(minutes=3)),
        ]
    )

    async def sequences(**fields: object) -> list[int]:
        records, token = await store.list(AuditFilter(**fields))  # type: ignore[arg-type]
        assert token == ""
        return [r.sequence for r in records]

    assert await sequences() == [1, 2, 3, 4]
    assert await sequences(principal="users/a") == [1, 3, 4]
    assert await sequences(method="/bhiv.crm.v1.LeadService/GetLead") == [3]
    assert await sequences(resource="customers/c1") == [1, 2, 4]
    assert await sequences(outcome_code="PERMISSION_DENIED") == [2]
    assert await sequences(principal="users/a", outcome_code="OK") == [1, 3]
    assert await sequences(start_time=t0 + timedelta(minutes=1)) == [2, 3, 4]
    assert await sequences(end_time=t0 + timedelta(minutes=2)) == [1, 2]
    assert await sequences(start_time=t0 + timedelta(minutes=1), end_time=t0 + timedelta(minutes=3)) == [2, 3]
    assert await sequences(principal="users/nobody") == []


async def test_list_pages_through_in_sequence_order(store: AuditStore) -> None:
    await store.append([entry(f"users/u{i % 2}") for i in range(7)])
    query = AuditFilter(principal="users/u0")
    seen, token, pages = [], "", 0
    while True:
        records, token = await store.list(query, 2, token)
        seen += [r.sequence for r in records]
        pages += 1
        if not token:
            break
    assert seen == [1, 3, 5, 7]
    assert pages == 2


async def test_list_page_size_defaults_to_50_and_caps_at_500(store: AuditStore) -> None:
    await store.append([entry() for _ in range(501)])
    records, token = await store.list(AuditFilter())
    assert (len(records), bool(token)) == (50, True)
    records, token = await store.list(AuditFilter(), 1000)
    assert (len(records), bool(token)) == (500, True)
    records, token = await store.list(AuditFilter(), 1000, token)
    assert ([r.sequence for r in records], token) == ([501], "")


async def test_list_rejects_negative_page_size(store: AuditStore) -> None:
    with pytest.raises(InvalidArgument) as err:
        await store.list(AuditFilter(), -1)
    assert [v.field for v in err.value.violations] == ["page_size"]


@pytest.mark.parametrize("token", ["garbage!", "eyJhZnRlciI6IDF9"])
async def test_list_rejects_a_malformed_page_token(store: AuditStore, token: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        await store.list(AuditFilter(), 1, token)
    assert err.value.violations[0].reason == "BAD_PAGE_TOKEN"


async def test_list_rejects_a_page_token_of_other_filters(store: AuditStore) -> None:
    await fill(store, 3)
    _, token = await store.list(AuditFilter(), 1)
    with pytest.raises(InvalidArgument):
        await store.list(AuditFilter(principal="users/u1"), 1, token)


async def test_list_cuts_a_page_by_bytes_as_well_as_count(store: AuditStore) -> None:
    await store.append([entry(resource=f"customers/{i:02d}-" + "r" * 480) for i in range(30)])
    everything, _ = await store.list(AuditFilter(), 500)
    size = max(record_bytes(r) for r in everything)
    budget = 7 * size + size // 2  # seven records and a half
    seen, token, pages = [], "", []
    while True:
        records, token = await store.list(AuditFilter(), 500, token, max_bytes=budget)
        assert sum(record_bytes(r) for r in records) <= budget
        pages.append(len(records))
        seen += [r.sequence for r in records]
        if not token:
            break
    assert seen == list(range(1, 31))
    assert pages == [7, 7, 7, 7, 2]


async def test_a_default_page_of_records_written_before_the_caps_fits_the_default_budget(
    backend: Backend, store: AuditStore
) -> None:
    records = await fill(store, 4)
    for record in records:  # 1.5 MiB each: a default page of them would hold 6 MiB
        await backend.overwrite(
            record.sequence, written_before_the_caps(record, resource="customers/" + "x" * 1_572_864)
        )
    seen, token, pages = [], "", 0
    while True:
        page, token = await store.list(AuditFilter(), 0, token)
        assert sum(record_bytes(r) for r in page) <= PAGE_BYTES
        assert [len(r.resource) for r in page] == [1_572_874] * len(page)  # shown as stored
        seen += [r.sequence for r in page]
        pages += 1
        if not token:
            break
    assert (seen, pages) == ([1, 2, 3, 4], 2)


async def test_a_record_larger_than_a_page_starts_a_page_with_its_text_capped(
    backend: Backend, store: AuditStore
) -> None:
    records = await fill(store, 3)
    huge = written_before_the_caps(records[1], resource="customers/" + "x" * 3_000_000)
    await backend.overwrite(2, huge)
    budget = 64 * 1024
    first, token = await store.list(AuditFilter(), 50, max_bytes=budget)
    second, token = await store.list(AuditFilter(), 50, token, max_bytes=budget)
    assert ([r.sequence for r in first], [r.sequence for r in second], token) == ([1], [2, 3], "")
    shown = second[0]
    assert shown.resource.endswith("\u2026[truncated from 3000010 bytes]")
    assert len(shown.resource.encode()) <= RESOURCE_LIMIT
    assert (shown.hash, shown.principal) == (huge.hash, huge.principal)  # the stored hash, not a new one
    assert (await store.get(2)) == huge  # stored as it was


# --- SQLite specifics -----------------------------------------------------------------------------


async def test_sqlite_refuses_updates_and_deletes_through_sql(tmp_path: Path) -> None:
    store = SqliteAuditStore(tmp_path / "audit.db")
    await store.open()
    try:
        await fill(store, 2)
        conn = sqlite3.connect(tmp_path / "audit.db")
        try:
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                conn.execute("UPDATE audit_records SET principal = 'x' WHERE sequence = 1")
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                conn.execute("DELETE FROM audit_records WHERE sequence = 1")
        finally:
            conn.close()
        assert (await store.verify()).ok
    finally:
        await store.close()


async def test_sqlite_file_is_wal_with_full_sync(tmp_path: Path) -> None:
    store = SqliteAuditStore(tmp_path / "audit.db")
    await store.open()
    await store.close()
    conn = sqlite3.connect(tmp_path / "audit.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


async def test_retyped_column_is_reported_not_raised(tmp_path: Path) -> None:
    backend = SqliteBackend(tmp_path / "audit.db")
    store = backend.new_store()
    await store.open()
    try:
        await fill(store, 3)
        await backend.edit(2, duration_ms="fast")
        result = await store.verify()
        assert (result.first_broken_sequence, result.reason) == (2, ChainBreak.HASH_MISMATCH)
        assert "unreadable" in result.detail
    finally:
        await store.close()


# --- configuration --------------------------------------------------------------------------------


def test_default_audit_store_is_the_shared_sqlite_file(tmp_path: Path) -> None:
    store = make_audit_store(config_for("crm", DATA_DIR=str(tmp_path)))
    assert isinstance(store, SqliteAuditStore)
    assert store.path == tmp_path / "audit.db"


async def test_mongodb_url_selects_the_mongo_store(tmp_path: Path) -> None:
    store = make_audit_store(config_for("crm", AUDIT_STORE_URL="mongodb://127.0.0.1:1/?replicaSet=rs0"))
    assert isinstance(store, MongoAuditStore)
    await store.close()


def test_other_audit_store_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="BHIV_AUDIT_STORE_URL"):
        make_audit_store(config_for("crm", AUDIT_STORE_URL="postgres://db/audit"))
