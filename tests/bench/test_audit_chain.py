"""The audit-verification bench runs, at a small size, and verifies what it generated."""

from __future__ import annotations

from bench.audit_chain import EVERY_RECORDS, TAIL, audit_verification


async def test_the_bench_verifies_from_the_latest_checkpoint_only_the_tail() -> None:
    total = 3 * EVERY_RECORDS + TAIL
    figures = await audit_verification((total,))
    assert figures[f"{total}_checkpoints"] == 3
    assert figures[f"{total}_from_checkpoint_records"] == TAIL + 1
    assert figures[f"{total}_full_walk_seconds"] > 0
