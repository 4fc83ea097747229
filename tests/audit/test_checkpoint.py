"""Signed checkpoints of the audit chain: the writer, the verification from a checkpoint, the full walk.

Tampering goes straight to the database, bypassing the store, the way an attacker with write access
to the audit store (but not to sentinel's checkpoint key) would.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import stat
from pathlib import Path

import pytest

from bhiv_core.audit.checkpoint import (
    CheckpointKey,
    checkpoint_problem,
    link_problem,
    load_or_create_checkpoint_key,
)
from bhiv_core.audit.checkpointing import AuditVerifier, CheckpointWitness, CheckpointWriter
from bhiv_core.audit.record import GENESIS_HASH, AuditEntry, AuditRecord, ChainBreak, seal_batch
from bhiv_core.audit.store import AuditStore
from bhiv_core.runtime.config import ConfigError
from tests.audit.support import Backend, entry


class Clock:
    """Unix seconds that only move when the test says so."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


KEY = CheckpointKey.from_seed(bytes(range(32)))


def writer_for(
    store: AuditStore,
    *,
    key: CheckpointKey = KEY,
    witness: CheckpointWitness | None = None,
    every_records: int = 10,
    every_seconds: float = 60.0,
    clock: Clock | None = None,
) -> CheckpointWriter:
    return CheckpointWriter(
        store, key, witness, every_records=every_records, every_seconds=every_seconds, clock=clock or Clock()
    )


async def fill(store: AuditStore, count: int) -> list[AuditRecord]:
    return await store.append([entry(f"users/u{i}") for i in range(count)])


def as_entry(record: AuditRecord) -> AuditEntry:
    fields = record._asdict()
    for name in ("sequence", "prev_hash", "hash"):
        del fields[name]
    return AuditEntry(**fields)


async def rewrite(backend: Backend, store: AuditStore, sequence: int, principal: str) -> None:
    """Changes one record's principal and re-hashes it and every record after it, head included."""
    latest = await store.latest_sequence()
    records = [await store.get(n) for n in range(sequence, latest + 1)]
    assert all(r is not None for r in records)
    entries = [as_entry(r) for r in records if r is not None]
    entries[0] = entries[0]._replace(principal=principal)
    before = await store.get(sequence - 1) if sequence > 1 else None
    forged = seal_batch(entries, sequence - 1, before.hash if before else GENESIS_HASH)
    for record in forged:
        await backend.overwrite(record.sequence, record)
    await backend.set_head(forged[-1].sequence, forged[-1].hash)


async def checkpointed(store: AuditStore, counts: list[int], **kwargs: object) -> list[int]:
    """Appends ``counts[i]`` records then writes a checkpoint, for each i; returns their records."""
    writer = writer_for(store, every_records=1, **kwargs)  # type: ignore[arg-type]
    sequences = []
    for count in counts:
        await fill(store, count)
        written = await writer.write_if_due()
        assert written is not None
        sequences.append(written.sequence)
    return sequences


# --- the checkpoint itself ------------------------------------------------------------------------


def test_a_checkpoint_is_hashed_signed_and_names_its_key() -> None:
    checkpoint = KEY.sign(number=1, sequence=5, record_hash="a" * 64, time_us=7, prev_hash=GENESIS_HASH)
    assert checkpoint.key == KEY.public and len(KEY.public) == 43
    assert checkpoint_problem(checkpoint, KEY) == ""
    assert link_problem(checkpoint, None) == ""
    assert "content hashes to" in checkpoint_problem(checkpoint._replace(record_hash="b" * 64), KEY)
    other = CheckpointKey.from_seed(bytes(32))
    assert "not by this sentinel's checkpoint key" in checkpoint_problem(checkpoint, other)
    resigned = other.sign(number=1, sequence=5, record_hash="a" * 64, time_us=7, prev_hash=GENESIS_HASH)
    assert "not by this sentinel's checkpoint key" in checkpoint_problem(resigned, KEY)
    # A valid hash over a changed field, with the old signature: the signature no longer verifies.
    changed = checkpoint._replace(sequence=6)
    changed = changed._replace(hash=hashlib.sha256(changed.canonical()).hexdigest())
    assert checkpoint_problem(changed, KEY) == "checkpoint 1 has a signature that does not verify"


def test_checkpoints_link_by_number_and_hash() -> None:
    first = KEY.sign(number=1, sequence=5, record_hash="a" * 64, time_us=7, prev_hash=GENESIS_HASH)
    second = KEY.sign(number=2, sequence=9, record_hash="b" * 64, time_us=8, prev_hash=first.hash)
    assert link_problem(second, first) == ""
    assert "is missing" in link_problem(second, None)
    assert "has prev_hash" in link_problem(second, first._replace(hash="c" * 64))
    backwards = KEY.sign(number=2, sequence=5, record_hash="b" * 64, time_us=8, prev_hash=first.hash)
    assert "not after" in link_problem(backwards, first)


def test_the_checkpoint_key_file_is_created_once_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "audit-checkpoint-key"
    key = load_or_create_checkpoint_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_checkpoint_key(path).public == key.public
    assert [p.name for p in path.parent.iterdir()] == ["audit-checkpoint-key"]


def test_a_checkpoint_key_file_of_the_wrong_size_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "audit-checkpoint-key"
    path.write_bytes(b"short")
    with pytest.raises(ConfigError, match="BHIV_AUDIT_CHECKPOINT_KEY_FILE"):
        load_or_create_checkpoint_key(path)


# --- the writer -----------------------------------------------------------------------------------


async def test_the_writer_checkpoints_after_every_records_or_every_seconds(store: AuditStore) -> None:
    clock = Clock()
    writer = writer_for(store, every_records=10, every_seconds=60, clock=clock)
    assert await writer.write_if_due() is None  # an empty log: nothing to vouch for
    await fill(store, 3)
    first = await writer.write_if_due()  # the first checkpoint is due as soon as there are records
    assert first is not None and (first.number, first.sequence, first.prev_hash) == (1, 3, GENESIS_HASH)
    assert first.record_hash == (await store.get(3)).hash  # type: ignore[union-attr]
    await fill(store, 9)
    assert await writer.write_if_due() is None  # 9 records, 0 s: not due
    await fill(store, 1)
    second = await writer.write_if_due()  # 10 records
    assert second is not None and (second.number, second.sequence, second.prev_hash) == (2, 13, first.hash)
    await fill(store, 1)
    clock.now += 59
    assert await writer.write_if_due() is None
    clock.now += 1
    third = await writer.write_if_due()  # 60 s, and a record appended since
    assert third is not None and third.sequence == 14
    clock.now += 600
    assert await writer.write_if_due() is None  # nothing appended: no checkpoint, however long
    assert [c.number for c in await store.checkpoints()] == [1, 2, 3]


async def test_two_writers_racing_store_one_chain_of_checkpoints(backend: Backend) -> None:
    stores = [backend.new_store() for _ in range(2)]
    for opened in stores:
        await opened.open()
    try:
        writers = [writer_for(opened, every_records=1) for opened in stores]
        for _ in range(5):
            await fill(stores[0], 3)
            written = await asyncio.gather(*(w.write_if_due() for w in writers))
            assert sum(c is not None for c in written) == 1
        verified = await AuditVerifier(stores[1], KEY).walk()
        assert (verified.ok, verified.checkpoints_checked, verified.checked) == (True, 5, 15)
    finally:
        for opened in stores:
            await opened.close()


async def test_the_writer_does_not_checkpoint_a_broken_chain_and_says_so_once(
    backend: Backend, store: AuditStore, caplog: pytest.LogCaptureFixture
) -> None:
    writer = writer_for(store, every_records=1)
    await fill(store, 5)
    await backend.edit(3, principal="users/mallory")
    with caplog.at_level(logging.ERROR, logger="bhiv_core.audit.checkpointing"):
        assert await writer.write_if_due() is None
        assert await writer.write_if_due() is None
    assert await store.latest_checkpoint() is None
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "broken at record 3" in errors[0]


async def test_the_writer_does_not_extend_a_forged_checkpoint(backend: Backend, store: AuditStore) -> None:
    await checkpointed(store, [5])
    await backend.edit_checkpoint(1, record_hash="f" * 64)
    await fill(store, 5)
    assert await writer_for(store, every_records=1).write_if_due() is None
    assert [c.number for c in await store.checkpoints()] == [1]


# --- verifying from the latest checkpoint ---------------------------------------------------------


async def test_verification_from_the_latest_checkpoint_reads_only_the_records_after_it(
    store: AuditStore,
) -> None:
    sequences = await checkpointed(store, [1000, 500])
    await fill(store, 7)
    result = await AuditVerifier(store, KEY).from_checkpoint()
    assert sequences == [1000, 1500]
    # The checkpoint's own record (re-hashed and compared with the signature) and the 7 after it.
    assert (result.ok, result.checked, result.start_sequence, result.end_sequence) == (True, 8, 1500, 1507)
    assert (result.checkpoint_sequence, result.checkpoints_checked) == (1500, 1)


async def test_verification_from_a_checkpoint_up_to_an_end_uses_the_latest_checkpoint_before_it(
    store: AuditStore,
) -> None:
    await checkpointed(store, [10, 10, 10])
    result = await AuditVerifier(store, KEY).from_checkpoint(end=25)
    assert (result.ok, result.checkpoint_sequence, result.start_sequence, result.end_sequence) == (
        True,
        20,
        20,
        25,
    )


async def test_without_a_checkpoint_verification_walks_from_the_first_record(store: AuditStore) -> None:
    await fill(store, 4)
    result = await AuditVerifier(store, KEY).from_checkpoint()
    assert (result.ok, result.checked, result.checkpoint_sequence) == (True, 4, 0)


async def test_a_record_changed_before_the_checkpoint_is_found_by_the_full_walk(
    backend: Backend, store: AuditStore
) -> None:
    await checkpointed(store, [10, 10])
    await fill(store, 3)
    await backend.edit(4, principal="users/mallory")  # content changed, its hash left as it was
    verifier = AuditVerifier(store, KEY)
    assert (await verifier.from_checkpoint()).ok  # records before the checkpoint are not read
    walked = await verifier.walk()
    assert (walked.ok, walked.first_broken_sequence, walked.reason) == (False, 4, ChainBreak.HASH_MISMATCH)


async def test_a_rewritten_and_rehashed_chain_is_a_checkpoint_mismatch(
    backend: Backend, store: AuditStore
) -> None:
    await checkpointed(store, [10, 10])
    await fill(store, 3)
    # Every hash recomputed from record 4 on, the head too: the links alone show nothing.
    await rewrite(backend, store, 4, "users/mallory")
    assert (await store.verify()).ok
    verifier = AuditVerifier(store, KEY)
    walked = await verifier.walk()
    assert (walked.ok, walked.first_broken_sequence, walked.reason) == (
        False,
        10,
        ChainBreak.CHECKPOINT_MISMATCH,
    )
    assert "record 10" in walked.detail
    # The latest checkpoint's record changed with it: the cheap verification finds it as well.
    latest = await verifier.from_checkpoint()
    assert (latest.ok, latest.first_broken_sequence, latest.reason) == (
        False,
        20,
        ChainBreak.CHECKPOINT_MISMATCH,
    )


async def test_a_modified_checkpoint_is_invalid(backend: Backend, store: AuditStore) -> None:
    await checkpointed(store, [10, 10])
    await backend.edit_checkpoint(2, record_hash="f" * 64)
    verifier = AuditVerifier(store, KEY)
    for result in (await verifier.from_checkpoint(), await verifier.walk()):
        assert (result.ok, result.reason, result.first_broken_sequence) == (
            False,
            ChainBreak.CHECKPOINT_INVALID,
            20,
        )
        assert "checkpoint 2" in result.detail


async def test_a_checkpoint_resigned_with_another_key_is_invalid(backend: Backend, store: AuditStore) -> None:
    await checkpointed(store, [10])
    intruder = CheckpointKey.from_seed(os.urandom(32))
    forged = intruder.sign(number=1, sequence=10, record_hash="f" * 64, time_us=1, prev_hash=GENESIS_HASH)
    await backend.edit_checkpoint(1, **{k: v for k, v in forged._asdict().items() if k != "number"})
    result = await AuditVerifier(store, KEY).from_checkpoint()
    assert (result.ok, result.reason) == (False, ChainBreak.CHECKPOINT_INVALID)
    assert intruder.public in result.detail


async def test_a_removed_checkpoint_in_the_middle_breaks_the_links(
    backend: Backend, store: AuditStore
) -> None:
    await checkpointed(store, [10, 10, 10])
    await backend.delete_checkpoint(2)
    result = await AuditVerifier(store, KEY).walk()
    assert (result.ok, result.reason, result.first_broken_sequence) == (
        False,
        ChainBreak.CHECKPOINT_INVALID,
        30,
    )
    assert "checkpoint 2, which checkpoint 3 must link to, is missing" in result.detail


async def test_removed_newest_checkpoints_are_found_by_the_witness(
    backend: Backend, store: AuditStore, tmp_path: Path
) -> None:
    witness = CheckpointWitness(tmp_path / "audit-checkpoint-last")
    await checkpointed(store, [10, 10, 10], witness=witness)
    assert witness.read() is not None and witness.read()[:2] == (3, 30)  # type: ignore[index]
    assert stat.S_IMODE(witness.path.stat().st_mode) == 0o600
    await backend.delete_checkpoint(3)  # so the records after checkpoint 2 could be rewritten
    verifier = AuditVerifier(store, KEY, witness)
    for result in (await verifier.from_checkpoint(), await verifier.walk()):
        assert (result.ok, result.reason, result.first_broken_sequence) == (
            False,
            ChainBreak.CHECKPOINT_INVALID,
            30,
        )
        assert "missing from the audit store" in result.detail
    # Without the witness, the store alone cannot tell.
    assert (await AuditVerifier(store, KEY).walk()).ok
    # Nor does the writer build on the survivor, which would overwrite the witness.
    await fill(store, 5)
    assert await writer_for(store, witness=witness, every_records=1).write_if_due() is None
    assert [c.number for c in await store.checkpoints()] == [1, 2]
    assert witness.read()[:2] == (3, 30)  # type: ignore[index]


async def test_records_removed_behind_a_checkpoint_are_a_gap(backend: Backend, store: AuditStore) -> None:
    await checkpointed(store, [10])
    eighth = await store.get(8)
    assert eighth is not None
    for sequence in (10, 9):
        await backend.delete(sequence)
    await backend.set_head(8, eighth.hash)
    assert (await store.verify()).ok  # the truncated chain is consistent in itself
    for result in (await AuditVerifier(store, KEY).from_checkpoint(), await AuditVerifier(store, KEY).walk()):
        assert (result.ok, result.reason, result.first_broken_sequence) == (False, ChainBreak.SEQUENCE_GAP, 9)


async def test_a_range_walk_checks_the_checkpoints_inside_it(backend: Backend, store: AuditStore) -> None:
    await checkpointed(store, [10, 10, 10])
    verifier = AuditVerifier(store, KEY)
    result = await verifier.walk(11, 25)
    assert (result.ok, result.checked, result.checkpoints_checked) == (True, 15, 1)
    await backend.edit_checkpoint(3, signature="00" * 64)
    assert (await verifier.walk(11, 25)).ok  # checkpoint 3 (record 30) is outside the range
    broken = await verifier.walk(11, 30)
    assert (broken.ok, broken.reason, broken.first_broken_sequence) == (
        False,
        ChainBreak.CHECKPOINT_INVALID,
        30,
    )
