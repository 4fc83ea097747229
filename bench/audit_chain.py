"""What verifying the audit chain costs: the full walk against verification from a checkpoint.

For each size, records are generated straight into a SQLite audit store in a temporary folder
(``AuditStore.append`` in batches of 50,000: one transaction each, sealed and inserted in bulk),
with a signed checkpoint every :data:`EVERY_RECORDS` records as sentinel writes them by default,
and a tail of :data:`TAIL` records after the last checkpoint (half the interval: the tail a default
verification meets on average). Then it times:

- the full walk (``AUDIT_VERIFY_MODE_FULL``): every record, and every checkpoint's signature and link;
- the default verification from the latest checkpoint: that checkpoint, then the tail;
- the writer's next checkpoint: verifying the tail and signing (what sentinel pays per checkpoint).

Run alone with ``python -m bench.audit_chain [sizes...]``; ``make bench`` runs it for 10^5 and 10^6.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

from bhiv_core.audit.checkpoint import CheckpointKey
from bhiv_core.audit.checkpointing import AuditVerifier, CheckpointWriter
from bhiv_core.audit.record import GENESIS_HASH, AuditEntry
from bhiv_core.audit.store.sqlite import SqliteAuditStore

EVERY_RECORDS = 10_000
"""Records between two checkpoints (sentinel's default, ``BHIV_AUDIT_CHECKPOINT_RECORDS``)."""

TAIL = EVERY_RECORDS // 2
"""Records after the last checkpoint."""

BATCH = 50_000
"""Records per append (one transaction)."""

SIZES = (100_000, 1_000_000)

_T0_US = 1_800_000_000_000_000


def _entries(first: int, count: int) -> list[AuditEntry]:
    """Plausible records: every field filled, as a mesh call would write them."""
    return [
        AuditEntry(
            time_us=_T0_US + n * 1000,
            service="crm",
            principal=f"users/u{n % 97}",
            role="sales",
            method="/bhiv.crm.v1.CustomerService/GetCustomer",
            resource=f"customers/c{n}",
            outcome_code="OK",
            outcome_code_number=0,
            client_address="198.51.100.7",
            trace_id=f"{n:032x}",
            duration_ms=1.25,
        )
        for n in range(first, first + count)
    ]


async def _generate(store: SqliteAuditStore, key: CheckpointKey, total: int) -> None:
    """Appends ``total`` records, the first ``total - TAIL`` checkpointed every :data:`EVERY_RECORDS`.

    The checkpoints are signed directly, without the writer's walk: this process just wrote them.
    """
    checkpointed = total - TAIL
    written = 0
    number, prev_hash = 0, GENESIS_HASH
    while written < total:
        count = min(BATCH, total - written)
        records = await store.append(_entries(written, count))
        for record in records:
            if record.sequence <= checkpointed and (checkpointed - record.sequence) % EVERY_RECORDS == 0:
                number += 1
                checkpoint = key.sign(
                    number=number,
                    sequence=record.sequence,
                    record_hash=record.hash,
                    time_us=record.time_us,
                    prev_hash=prev_hash,
                )
                assert await store.add_checkpoint(checkpoint)
                prev_hash = checkpoint.hash
        written += count


async def measure(total: int) -> dict[str, float]:
    """Generates ``total`` records in a temporary store and times the three verifications."""
    key = CheckpointKey.from_seed(os.urandom(32))
    with tempfile.TemporaryDirectory() as folder:
        store = SqliteAuditStore(Path(folder) / "audit.db")
        await store.open()
        try:
            started = time.perf_counter()
            await _generate(store, key, total)
            generated = time.perf_counter() - started
            verifier = AuditVerifier(store, key)

            started = time.perf_counter()
            full = await verifier.walk()
            full_seconds = time.perf_counter() - started
            assert full.ok and full.checked == total, full

            started = time.perf_counter()
            incremental = await verifier.from_checkpoint()
            incremental_seconds = time.perf_counter() - started
            assert incremental.ok and incremental.checked == TAIL + 1, incremental

            writer = CheckpointWriter(store, key, None, every_records=TAIL, every_seconds=3600)
            started = time.perf_counter()
            assert await writer.write_if_due() is not None
            checkpoint_seconds = time.perf_counter() - started
        finally:
            await store.close()
    return {
        "records": total,
        "checkpoints": full.checkpoints_checked,
        "generate_seconds": round(generated, 2),
        "full_walk_seconds": round(full_seconds, 3),
        "full_walk_us_per_record": round(full_seconds / total * 1e6, 2),
        "from_checkpoint_seconds": round(incremental_seconds, 4),
        "from_checkpoint_records": incremental.checked,
        "write_checkpoint_seconds": round(checkpoint_seconds, 4),
    }


async def audit_verification(sizes: tuple[int, ...] = SIZES) -> dict[str, float]:
    """Measures every size, printing one line each; returns the figures as ``<records>_<figure>``."""
    figures: dict[str, float] = {}
    for total in sizes:
        row = await measure(total)
        print(
            f"  {total:>9,} records ({row['checkpoints']:g} checkpoints): generated in "
            f"{row['generate_seconds']} s; full walk {row['full_walk_seconds']} s "
            f"({row['full_walk_us_per_record']} µs/record); from the latest checkpoint "
            f"{row['from_checkpoint_seconds'] * 1000:.1f} ms ({row['from_checkpoint_records']:g} records); "
            f"next checkpoint written in {row['write_checkpoint_seconds'] * 1000:.1f} ms"
        )
        figures |= {f"{total}_{name}": value for name, value in row.items() if name != "records"}
    return figures


if __name__ == "__main__":
    asyncio.run(audit_verification(tuple(int(arg) for arg in sys.argv[1:]) or SIZES))
