"""The runner's recovery scan on a real kit store: live holders kept, dead ones taken over."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from bhiv_core.resources import make_resource_store
from bhiv_core.services.orchestration.resources import COLLECTIONS, MIGRATIONS, RUN_LEASES
from bhiv_core.services.orchestration.runs import Runner


@dataclasses.dataclass
class _Kind:
    prefix: str = "tasks"
    recovered: list[str] = dataclasses.field(default_factory=list)

    async def recover(self, id: str) -> Callable[[], Awaitable[None]] | None:
        self.recovered.append(id)
        return None  # "not running any more": the runner drops the lease


def _dead_pid() -> int:
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True
    )
    return int(child.stdout)


async def test_a_dead_holder_of_this_node_is_found_past_many_live_ones(tmp_path: Path) -> None:
    store = make_resource_store(
        name="orchestration", collections=COLLECTIONS, migrations=MIGRATIONS, data_dir=tmp_path, url=None
    )
    await store.open()
    try:
        runner = Runner(store, concurrency=1, queue=500, lease=600)
        kind = _Kind()
        runner.register(kind)
        live, dead = os.getppid(), _dead_pid()  # the parent outlives this test; the child has exited

        def lease(id: str, pid: int, expires: float) -> object:
            record = runner.lease_record(f"tasks:{id}")
            fields = {**record.fields, "holder": f"{runner.node}|{pid}|x", "pid": pid, "expires": expires}
            return dataclasses.replace(record, fields=fields)

        async def fill(txn: object) -> None:
            for i in range(120):  # live leases first in the scan's order (earlier expiry)
                await txn.insert(RUN_LEASES, lease(f"live{i}", live, 1e12 + i))  # type: ignore[attr-defined]
            await txn.insert(RUN_LEASES, lease("dead", dead, 2e12))  # type: ignore[attr-defined]

        await store.run(fill)  # type: ignore[arg-type]
        assert await runner.recover_once() == 0  # the body is None: nothing started
        assert kind.recovered == ["dead"]
        assert await store.get(RUN_LEASES, "tasks:dead") is None
        assert await store.count(RUN_LEASES, []) == 120  # the live holders' leases untouched
    finally:
        await store.close()
