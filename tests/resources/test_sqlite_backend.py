"""What only the SQLite backend does: files, migrations, and writers in several processes."""

from __future__ import annotations

import asyncio
import stat
import sys
import textwrap
from pathlib import Path

import pytest

from bhiv_core.resources import Collection, Field, Record, Transaction
from bhiv_core.resources.sqlite import SqliteResourceStore, schema
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
