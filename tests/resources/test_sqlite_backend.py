"""What only the SQLite backend does: files, migrations, and writers in several processes."""

from __future__ import annotations

import asyncio
import stat
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from bhiv_core.resources import Collection, Field, Record, Transaction
from bhiv_core.resources.sqlite import ForeignAwait, SqliteResourceStore, schema
from tests.resources.conftest import COLLECTIONS, ITEMS, MIGRATIONS


async def test_the_database_files_are_private_to_their_owner(tmp_path: Path) -> None:
    store = SqliteResourceStore(tmp_path / "data" / "svc.db", COLLECTIONS, MIGRATIONS)
    await store.open()
    await store.run(lambda txn: txn.insert(ITEMS, Record(id="a", data=b"", fields={"sku": "a"}, etag="e")))
    await store.close()
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700
    for path in (tmp_path / "data").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


async def test_a_later_migration_keeps_the_data_and_an_older_release_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "svc.db"
    v1 = SqliteResourceStore(path, COLLECTIONS, MIGRATIONS)
    await v1.open()
    await v1.run(lambda txn: txn.insert(ITEMS, Record(id="a", data=b"kept", fields={"sku": "a"}, etag="e")))
    await v1.close()

    wider = Collection(
        "items", (*ITEMS.fields, Field("weight", "int")), order=ITEMS.order, unique=ITEMS.unique
    )
    v2_script = "ALTER TABLE items ADD COLUMN f_weight INTEGER NOT NULL DEFAULT 0"
    v2 = SqliteResourceStore(path, (wider,), (*MIGRATIONS, v2_script))
    await v2.open()
    got = await v2.get(wider, "a")
    assert got is not None and got.data == b"kept" and got.fields["weight"] == 0
    await v2.close()

    with pytest.raises(RuntimeError, match="newer than this code"):
        await SqliteResourceStore(path, COLLECTIONS, MIGRATIONS).open()


def test_the_schema_has_an_index_for_the_order_every_unique_key_and_every_declared_index() -> None:
    script = schema(COLLECTIONS)
    assert "CREATE INDEX items_by_order ON items (f_sku, id)" in script
    assert "CREATE UNIQUE INDEX items_unique_0 ON items (f_sku)" in script
    assert "CREATE INDEX items_by_0 ON items (f_category, f_sku, id)" in script
    assert "CREATE INDEX items_by_1 ON items (owner, f_sku, id)" in script
    assert "CREATE INDEX events_by_order ON events (f_time, id)" in script


ROOT = Path(__file__).resolve().parents[2]

_WORKER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from bhiv_core.resources import Record
    from tests.resources.conftest import COLLECTIONS, ITEMS, MIGRATIONS
    from bhiv_core.resources.sqlite import SqliteResourceStore

    async def main() -> None:
        store = SqliteResourceStore(Path(sys.argv[1]), COLLECTIONS, MIGRATIONS)
        await store.open()
        async def bump(txn):
            current = await txn.get(ITEMS, "counter")
            fields = {**current.fields, "quantity": current.fields["quantity"] + 1}
            changed = Record(id="counter", data=b"", fields=fields, etag=str(fields["quantity"]))
            assert await txn.replace(ITEMS, changed, expected_etag=current.etag)
        for _ in range(int(sys.argv[2])):
            await store.run(bump)
        await store.close()

    asyncio.run(main())
    """
)


async def test_writers_in_two_processes_lose_no_update(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    store = SqliteResourceStore(path, COLLECTIONS, MIGRATIONS)
    await store.open()

    async def seed(txn: Transaction) -> None:
        await txn.insert(ITEMS, Record(id="counter", data=b"", fields={"sku": "c", "quantity": 0}, etag="0"))

    await store.run(seed)
    workers = [
        await asyncio.create_subprocess_exec(sys.executable, "-c", _WORKER, str(path), "60", cwd=ROOT)
        for _ in range(2)
    ]
    assert [await w.wait() for w in workers] == [0, 0]
    got = await store.get(ITEMS, "counter")
    await store.close()
    assert got is not None and got.fields["quantity"] == 120


async def test_reads_never_see_nor_wait_for_a_transaction_in_progress(tmp_path: Path) -> None:
    store = SqliteResourceStore(tmp_path / "svc.db", COLLECTIONS, MIGRATIONS)
    await store.open()
    inside, release = threading.Event(), threading.Event()

    async def slow(txn: Transaction) -> None:
        await txn.insert(ITEMS, Record(id="pending", data=b"", fields={"sku": "p"}, etag="e"))
        inside.set()
        release.wait(timeout=30)  # holds the writer's thread, inside the open transaction
        raise RuntimeError("rolled back")

    task = asyncio.create_task(store.run(slow))
    await asyncio.get_running_loop().run_in_executor(None, inside.wait, 30)
    # The reader answers while the writer is held, and sees only committed data.
    assert await store.get(ITEMS, "pending") is None
    assert await store.find(ITEMS, [], after=None, limit=10) == []
    release.set()
    with pytest.raises(RuntimeError, match="rolled back"):
        await task
    assert await store.get(ITEMS, "pending") is None
    await store.close()


async def test_awaiting_anything_but_the_transaction_inside_one_is_refused_and_rolled_back(
    tmp_path: Path,
) -> None:
    store = SqliteResourceStore(tmp_path / "svc.db", COLLECTIONS, MIGRATIONS)
    await store.open()

    async def calls_out(txn: Transaction) -> None:
        await txn.insert(ITEMS, Record(id="a", data=b"", fields={"sku": "a"}, etag="e"))
        await asyncio.sleep(0.01)  # stands for a call to another service

    with pytest.raises(ForeignAwait):
        await store.run(calls_out)
    assert await store.get(ITEMS, "a") is None
    # The writer is free again.
    await store.run(lambda txn: txn.insert(ITEMS, Record(id="b", data=b"", fields={"sku": "b"}, etag="e")))
    assert await store.get(ITEMS, "b") is not None
    await store.close()
