"""The revocation feed: catch-up then push, other processes' commits, keepalives, limits, shutdown."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bhiv_core.runtime.errors import Aborted, ResourceExhausted, Unavailable
from bhiv_core.services.identity.revocation_feed import RevocationBatch, RevocationFeed
from bhiv_core.services.identity.store import Revocation
from bhiv_core.services.identity.store.sqlite import SqliteIdentityStore

DEADLINE = 10.0
"""Seconds a test waits for something that takes milliseconds, so a loaded machine does not fail it."""


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteIdentityStore]:
    opened = SqliteIdentityStore(tmp_path / "identity.db")
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


def revocation(jti: str, revoked_at: float | None = None) -> Revocation:
    now = time.time() if revoked_at is None else revoked_at
    return Revocation(jti, now + 900, now)


async def next_batch(stream: AsyncIterator[RevocationBatch]) -> RevocationBatch:
    return await asyncio.wait_for(anext(stream), DEADLINE)


async def next_revoked(stream: AsyncIterator[RevocationBatch]) -> list[str]:
    """The ids of the next batch that has any (skipping keepalives)."""
    while True:
        batch = await next_batch(stream)
        if batch.revocations:
            return [r.jti for r in batch.revocations]


async def test_a_watch_catches_up_since_a_time_then_gets_each_new_revocation(
    store: SqliteIdentityStore,
) -> None:
    now = time.time()
    await store.add_revocations([revocation("old", now - 60), revocation("recent", now - 1)])
    feed = RevocationFeed(store, tail_interval=3600)
    await feed.start()
    try:
        stream = feed.watch(since=now - 30)
        first = await next_batch(stream)
        assert [r.jti for r in first.revocations] == ["recent"]
        assert first.resume_time <= now
        await store.add_revocations([revocation("new")])
        await feed.poke()  # what a revoke path does after its commit
        assert await next_revoked(stream) == ["new"]
        await stream.aclose()
    finally:
        await feed.stop()


async def test_subscribers_get_every_unexpired_revocation_at_start_and_new_ones_before_poke_returns(
    store: SqliteIdentityStore,
) -> None:
    await store.add_revocations(
        [revocation("before"), Revocation("expired", time.time() - 1, time.time() - 5)]
    )
    seen: list[str] = []
    feed = RevocationFeed(store, tail_interval=3600)
    feed.subscribe(lambda batch: seen.extend(r.jti for r in batch))
    await feed.start()
    try:
        assert seen == ["before"]
        await store.add_revocations([revocation("after")])
        await feed.poke()
        assert seen == ["before", "after"]
        await feed.poke()  # nothing new: nothing handed out twice
        assert seen == ["before", "after"]
    finally:
        await feed.stop()


async def test_a_revocation_committed_by_another_process_reaches_this_process_watchers(
    tmp_path: Path, store: SqliteIdentityStore
) -> None:
    # Two identity workers share the store file; only the first learns of the commit directly.
    other = SqliteIdentityStore(tmp_path / "identity.db")
    await other.open()
    here = RevocationFeed(store, tail_interval=0.05)
    there = RevocationFeed(other, tail_interval=3600)
    await here.start()
    await there.start()
    try:
        stream = here.watch()
        assert (await next_batch(stream)).revocations == []
        await other.add_revocations([revocation("from-the-other-worker")])
        await there.poke()
        assert await next_revoked(stream) == ["from-the-other-worker"]
        await stream.aclose()
    finally:
        await here.stop()
        await there.stop()
        await other.close()


async def test_a_late_commit_within_the_margin_is_still_pushed(store: SqliteIdentityStore) -> None:
    feed = RevocationFeed(store, tail_interval=3600, margin=10.0)
    await feed.start()
    try:
        stream = feed.watch()
        await next_batch(stream)
        await feed.poke()
        # Revoked 5 s ago (the revoking call took its time) but committed only now.
        await store.add_revocations([revocation("slow-commit", time.time() - 5)])
        await feed.poke()
        assert await next_revoked(stream) == ["slow-commit"]
        await stream.aclose()
    finally:
        await feed.stop()


async def test_a_quiet_stream_sends_keepalives_with_a_resume_time(store: SqliteIdentityStore) -> None:
    feed = RevocationFeed(store, tail_interval=0.05, heartbeat=0.05, margin=1.0)
    await feed.start()
    try:
        stream = feed.watch()
        first = await next_batch(stream)
        while (later := await next_batch(stream)).resume_time <= first.resume_time:
            assert later.revocations == []
        assert later.revocations == []
        await stream.aclose()
    finally:
        await feed.stop()


async def test_closing_the_feed_ends_every_stream_and_refuses_new_ones(store: SqliteIdentityStore) -> None:
    feed = RevocationFeed(store, tail_interval=3600)
    await feed.start()
    streams = [feed.watch() for _ in range(3)]
    for stream in streams:
        await next_batch(stream)
    assert feed.watchers == 3
    feed.close()
    for stream in streams:
        with pytest.raises(StopAsyncIteration):
            await next_batch(stream)
    assert feed.watchers == 0
    with pytest.raises(Unavailable):
        await next_batch(feed.watch())
    await feed.stop()


async def test_more_watchers_than_allowed_is_resource_exhausted(store: SqliteIdentityStore) -> None:
    feed = RevocationFeed(store, tail_interval=3600, max_watchers=2)
    await feed.start()
    try:
        open_streams = [feed.watch(), feed.watch()]
        for stream in open_streams:
            await next_batch(stream)
        with pytest.raises(ResourceExhausted) as err:
            await next_batch(feed.watch())
        assert err.value.reason == "TOO_MANY_WATCHERS"
        await open_streams[0].aclose()
        await next_batch(feed.watch())  # a slot is free again
    finally:
        await feed.stop()


async def test_a_watcher_too_far_behind_is_aborted(store: SqliteIdentityStore) -> None:
    feed = RevocationFeed(store, tail_interval=3600, max_pending=2)
    await feed.start()
    try:
        stream = feed.watch()
        await next_batch(stream)
        await store.add_revocations([revocation(f"r{i}") for i in range(3)])
        await feed.poke()  # three pending, the watcher has not read: it is dropped
        with pytest.raises(Aborted) as err:
            await next_batch(stream)
        assert err.value.reason == "WATCHER_TOO_SLOW"
    finally:
        await feed.stop()


async def test_a_large_catch_up_comes_in_messages_of_at_most_1000(store: SqliteIdentityStore) -> None:
    now = time.time()
    await store.add_revocations([revocation(f"r{i:05}", now - 1) for i in range(2500)])
    feed = RevocationFeed(store, tail_interval=3600)
    await feed.start()
    try:
        stream = feed.watch()
        sizes = [len((await next_batch(stream)).revocations) for _ in range(3)]
        assert sizes == [1000, 1000, 500]
        await stream.aclose()
    finally:
        await feed.stop()
