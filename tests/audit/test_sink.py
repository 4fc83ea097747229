"""The audit sink: durable records before returning, batched ones by a writer, nothing dropped."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from bhiv_core.audit.record import AuditEntry, AuditRecord, VerifyResult
from bhiv_core.audit.sink import AuditSink, AuditStalledError, AuditWriteError
from bhiv_core.audit.store import AuditFilter, AuditStore
from bhiv_core.audit.store.sqlite import SqliteAuditStore
from tests.audit.support import Backend, SqliteBackend, entry


async def stored_principals(backend: Backend) -> list[str]:
    """What another connection (another process, say) sees in the chain right now."""
    reader = backend.new_store()
    await reader.open()
    try:
        records, _ = await reader.list(AuditFilter(), 500)
        return [r.principal for r in records]
    finally:
        await reader.close()


class SlowAppends:
    """Delegates to a real store, but every append first takes a while (a slow disk)."""

    def __init__(self, store: AuditStore):
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def append(self, entries: Sequence[AuditEntry]) -> list[AuditRecord]:
        await asyncio.sleep(0.2)
        return await self._store.append(entries)


async def test_durable_record_is_committed_when_record_returns(backend: Backend) -> None:
    reader = backend.new_store()
    await reader.open()
    sink = AuditSink(SlowAppends(backend.new_store()), flush_interval=30)  # type: ignore[arg-type]
    await sink.start()
    try:
        await sink.record(entry("users/mutator"), durable=True)
        # No flush, no close: another connection reads it at once.
        records, _ = await reader.list(AuditFilter())
        assert [r.principal for r in records] == ["users/mutator"]
    finally:
        await sink.close()
        await reader.close()


async def test_batched_records_wait_for_the_batch_and_are_flushed_on_close(backend: Backend) -> None:
    sink = AuditSink(backend.new_store(), flush_interval=30)
    await sink.start()
    await sink.record(entry("users/reader1"), durable=False)
    await sink.record(entry("users/reader2"), durable=False)
    assert await stored_principals(backend) == []  # queued, not yet written
    await sink.close()
    assert await stored_principals(backend) == ["users/reader1", "users/reader2"]


async def test_batched_records_are_written_after_the_flush_interval(backend: Backend) -> None:
    sink = AuditSink(backend.new_store(), flush_interval=0.05)
    await sink.start()
    try:
        await sink.record(entry("users/reader"), durable=False)
        for _ in range(100):
            if await stored_principals(backend):
                break
            await asyncio.sleep(0.02)
        assert await stored_principals(backend) == ["users/reader"]
    finally:
        await sink.close()


async def test_chain_keeps_the_order_of_record_calls(backend: Backend) -> None:
    sink = AuditSink(backend.new_store(), flush_interval=30)
    await sink.start()
    await sink.record(entry("users/1"), durable=False)
    await sink.record(entry("users/2"), durable=True)
    # The durable write took the batched record queued before it along.
    assert await stored_principals(backend) == ["users/1", "users/2"]
    await sink.record(entry("users/3"), durable=False)
    await sink.flush()
    assert await stored_principals(backend) == ["users/1", "users/2", "users/3"]
    await sink.close()
    reader = backend.new_store()
    await reader.open()
    try:
        assert (await reader.verify()).ok
    finally:
        await reader.close()


async def test_full_batch_is_written_without_waiting(backend: Backend) -> None:
    sink = AuditSink(backend.new_store(), flush_interval=30, batch_size=4)
    await sink.start()
    try:
        for i in range(4):
            await sink.record(entry(f"users/{i}"), durable=False)
        for _ in range(100):
            if len(await stored_principals(backend)) == 4:
                break
            await asyncio.sleep(0.02)
        assert len(await stored_principals(backend)) == 4
    finally:
        await sink.close()


class GatedStore:
    """A store whose appends wait for a gate, or fail, and remember what they wrote."""

    def __init__(self, fail: bool = False):
        self.gate = asyncio.Event()
        self.fail = fail
        self.batches: list[list[str]] = []
        self.opened = self.closed = False

    async def open(self) -> None:
        self.opened = True

    async def close(self) -> None:
        self.closed = True

    async def ping(self) -> None:
        pass

    async def append(self, entries: Sequence[AuditEntry]) -> list[AuditRecord]:
        await self.gate.wait()
        if self.fail:
            raise OSError("disk full")
        self.batches.append([e.principal for e in entries])
        return []

    async def list(
        self, query: AuditFilter, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[AuditRecord], str]:
        return [], ""

    async def get(self, sequence: int) -> AuditRecord | None:
        return None

    async def latest_sequence(self) -> int:
        return 0

    async def verify(self, start_seq: int | None = None, end_seq: int | None = None) -> VerifyResult:
        return VerifyResult(ok=True, checked=0)


async def test_full_queue_makes_callers_wait_and_drops_nothing() -> None:
    store = GatedStore()
    sink = AuditSink(store, batch_size=1, flush_interval=0.001, max_pending=2)
    await sink.start()
    await sink.record(entry("users/0"), durable=False)
    await asyncio.sleep(0.02)  # the writer took users/0 and waits on the gate
    await sink.record(entry("users/1"), durable=False)
    await sink.record(entry("users/2"), durable=False)
    blocked = asyncio.create_task(sink.record(entry("users/3"), durable=False))
    await asyncio.sleep(0.05)
    assert not blocked.done()  # backpressure: the queue is full
    store.gate.set()
    await blocked
    await sink.close()
    assert [p for batch in store.batches for p in batch] == ["users/0", "users/1", "users/2", "users/3"]
    assert store.opened and store.closed


async def test_offer_queues_without_waiting_and_refuses_when_full() -> None:
    store = GatedStore()
    sink = AuditSink(store, batch_size=1, flush_interval=0.001, max_pending=1)
    await sink.start()
    assert sink.offer(entry("users/0"))
    await asyncio.sleep(0.02)  # the writer took users/0 and waits on the gate
    assert sink.offer(entry("users/1"))
    assert not sink.offer(entry("users/2"))  # full: the caller must wait through record()
    store.gate.set()
    await sink.record(entry("users/2"), durable=False)
    await sink.close()
    assert [p for batch in store.batches for p in batch] == ["users/0", "users/1", "users/2"]


async def test_refused_records_are_logged_and_durable_callers_told(caplog: pytest.LogCaptureFixture) -> None:
    store = GatedStore(fail=True)
    store.gate.set()
    sink = AuditSink(store, retry_delays=(0.0,))
    await sink.start()
    with (
        caplog.at_level(logging.WARNING, logger="bhiv_core.audit.sink"),
        pytest.raises(AuditWriteError, match="disk full"),
    ):
        await sink.record(entry("users/lost"), durable=True)
    with pytest.raises(AuditWriteError):
        await sink.check()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].audit_records[0]["principal"] == "users/lost"  # type: ignore[attr-defined]
    store.fail = False
    await sink.record(entry("users/kept"), durable=True)
    await sink.check()  # healthy again once a write succeeds
    await sink.close()


async def test_record_before_start_or_after_close_is_an_error() -> None:
    sink = AuditSink(GatedStore())
    with pytest.raises(RuntimeError, match="not running"):
        await sink.record(entry(), durable=False)
    await sink.start()
    await sink.close()
    with pytest.raises(RuntimeError, match="not running"):
        await sink.record(entry(), durable=False)


async def until(condition: Any, timeout: float = 10.0) -> None:
    """Waits until ``condition()`` holds (polling), so a slow machine only makes the test slower."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "the condition never held"
        await asyncio.sleep(0.005)


async def test_a_caller_still_waiting_for_room_when_the_sink_closes_is_told_not_dropped_silently() -> None:
    store = GatedStore()
    sink = AuditSink(store, batch_size=1, flush_interval=0.001, max_pending=1)
    await sink.start()
    await sink.record(entry("users/0"), durable=False)
    await until(lambda: not sink._pending)  # the writer took users/0 and waits on the gate
    await sink.record(entry("users/1"), durable=False)
    blocked = asyncio.create_task(sink.record(entry("users/2"), durable=False))
    await asyncio.sleep(0.02)
    assert not blocked.done()  # the queue is full
    closing = asyncio.create_task(sink.close())
    await until(lambda: sink._closing)
    store.gate.set()
    await closing
    with pytest.raises(RuntimeError, match="not running"):
        await blocked
    assert [p for batch in store.batches for p in batch] == ["users/0", "users/1"]


async def test_offer_after_the_writer_died_is_an_error_and_the_check_fails() -> None:
    sink = AuditSink(GatedStore())
    await sink.start()
    assert sink._task is not None
    sink._task.cancel()
    await until(lambda: not sink._accepting)
    with pytest.raises(RuntimeError, match="writer stopped"):
        sink.offer(entry())
    with pytest.raises(AuditStalledError, match="not running"):
        await sink.check()
    await sink.close()


# --- health ---------------------------------------------------------------------------------------


class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@contextlib.contextmanager
def write_lock_held(path: Path) -> Iterator[None]:
    """Holds the SQLite file's write lock, as another process of the mesh appending would."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
        conn.execute("COMMIT")
    finally:
        conn.close()


async def test_a_writer_waiting_for_the_database_is_healthy_until_it_stalls(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    clock = FakeClock()
    sink = AuditSink(SqliteAuditStore(path, busy_timeout_ms=120_000), stall_after=30, clock=clock)
    await sink.start()
    try:
        with write_lock_held(path):
            written = asyncio.create_task(sink.record(entry("users/waiting"), durable=True))
            await until(lambda: sink.writing_since is not None)
            # The store's one thread is busy waiting for the lock: a ping would queue behind it.
            await asyncio.wait_for(sink.check(), timeout=30)
            clock.now += 30
            await asyncio.wait_for(sink.check(), timeout=30)  # busy, not yet stuck
            clock.now += 1
            with pytest.raises(AuditStalledError, match=r"31\.0 s"):
                await asyncio.wait_for(sink.check(), timeout=30)
            assert not written.done()
        await written  # the lock is free: the batch commits
        assert sink.writing_since is None
        await sink.check()  # idle again: the store answers its ping
    finally:
        await sink.close()
    assert await stored_principals(SqliteBackend(path)) == ["users/waiting"]


async def test_a_slow_store_that_keeps_committing_stays_healthy() -> None:
    store = GatedStore()
    clock = FakeClock()
    sink = AuditSink(store, batch_size=1, flush_interval=0.001, stall_after=30, clock=clock)
    await sink.start()
    try:
        for i in range(5):  # five batches of 29 s each: 145 s busy in all, each batch in time
            assert sink.offer(entry(f"users/{i}"))
            await until(lambda: sink.writing_since is not None)
            clock.now += 29
            await sink.check()
            store.gate.set()
            await until(lambda i=i: len(store.batches) == i + 1)
            store.gate.clear()
            await until(lambda: sink.writing_since is None)
    finally:
        store.gate.set()
        await sink.close()


async def test_a_stuck_store_makes_the_check_fail_until_it_writes_again() -> None:
    store = GatedStore()
    clock = FakeClock()
    sink = AuditSink(store, flush_interval=0.001, stall_after=30, clock=clock)
    await sink.start()
    try:
        assert sink.offer(entry("users/stuck"))
        await until(lambda: sink.writing_since is not None)
        clock.now += 120
        with pytest.raises(AuditStalledError, match=r"120\.0 s \(limit 30 s\)"):
            await sink.check()
        store.gate.set()
        await until(lambda: sink.writing_since is None)
        await sink.check()
    finally:
        store.gate.set()
        await sink.close()
