"""Writing checkpoints of the audit chain, and verifying the chain from them.

:class:`CheckpointWriter` runs in sentinel (the one writer: services only append records). Every
poll it looks at the chain's head; once ``every_records`` records or ``every_seconds`` seconds have
passed since the last checkpoint (and something was appended), it verifies the records the last
checkpoint does not cover (linked to the record that one signed), signs a checkpoint for the new
head, and stores it. It never extends a checkpoint it cannot verify, nor one left after the
checkpoint its witness names was removed. Writing costs one walk over the new records: a
checkpoint vouches that everything before it was verified, so verification never has to walk those
records again.

:class:`AuditVerifier` verifies either from the latest checkpoint (its hash, signature and link,
then the records from its own record to the head: cost bounded by the records since that
checkpoint), or by walking a range record by record while checking every checkpoint in it (the full
walk: it also finds a record changed before the latest checkpoint, and a checkpoint changed, added
or removed in the middle).

:class:`CheckpointWitness` keeps the number, record and hash of the last checkpoint this sentinel
wrote in a small private file outside the audit store, so removing the newest checkpoints from the
store (to rewrite the records after the remaining ones) is found too.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from bhiv_core.audit.checkpoint import Checkpoint, CheckpointKey, checkpoint_problem, link_problem
from bhiv_core.audit.record import GENESIS_HASH, ChainBreak, VerifyResult
from bhiv_core.audit.store import AuditStore
from bhiv_core.runtime.files import fsync_directory, write_private_beside

__all__ = ["AuditVerifier", "CheckpointWitness", "CheckpointWriter", "witness_problem"]

log = logging.getLogger(__name__)

CHECKPOINT_PAGE = 1000
"""Checkpoints read per step of a walk."""

_WITNESS_LINE = re.compile(r"([1-9][0-9]{0,18}) ([1-9][0-9]{0,18}) ([0-9a-f]{64})\n?")


class CheckpointWitness:
    """The last checkpoint this sentinel wrote (number, record, hash), in a private file.

    Args:
        path: The file, ``<data_dir>/audit-checkpoint-last``; written atomically, 0600.

    """

    def __init__(self, path: Path):
        self.path = path

    def read(self) -> tuple[int, int, str] | None:
        """The recorded ``(number, sequence, hash)``; None when nothing was recorded yet.

        Raises:
            ValueError: The file does not hold a witness line.

        """
        try:
            text = self.path.read_text(encoding="ascii", errors="replace")
        except FileNotFoundError:
            return None
        match = _WITNESS_LINE.fullmatch(text)
        if match is None:
            raise ValueError(f"{self.path} does not hold '<number> <sequence> <hash>'")
        return int(match.group(1)), int(match.group(2)), match.group(3)

    def write(self, checkpoint: Checkpoint) -> None:
        """Records ``checkpoint`` (replacing the previous line atomically, durable on return)."""
        line = f"{checkpoint.number} {checkpoint.sequence} {checkpoint.hash}\n".encode("ascii")
        staged = write_private_beside(self.path, line, "staged")
        os.replace(staged, self.path)
        fsync_directory(self.path.parent)


def _broken(
    reason: ChainBreak, sequence: int, detail: str, start: int, end: int, checkpoints: int
) -> VerifyResult:
    return VerifyResult(
        ok=False,
        checked=0,
        first_broken_sequence=sequence,
        reason=reason,
        detail=detail,
        start_sequence=start,
        end_sequence=end,
        checkpoints_checked=checkpoints,
    )


async def witness_problem(store: AuditStore, witness: CheckpointWitness | None) -> tuple[int, str]:
    """The record and description of the checkpoint the witness names when the store lost it.

    Returns:
        ``(sequence, problem)``; ``(0, "")`` when the store still holds that checkpoint unchanged
        (or there is no witness, or nothing was written yet).

    """
    if witness is None:
        return 0, ""
    try:
        seen = await asyncio.to_thread(witness.read)
    except ValueError as exc:
        return 0, str(exc)
    if seen is None:
        return 0, ""
    number, sequence, hash_ = seen
    try:
        stored = await store.get_checkpoint(number)
    except TypeError as exc:
        return sequence, f"checkpoint {number} is unreadable: {exc}"
    if stored is not None and stored.hash == hash_:
        return 0, ""
    state = "missing from the audit store" if stored is None else f"changed (it now hashes to {stored.hash})"
    return sequence, (
        f"checkpoint {number} (record {sequence}, hash {hash_}), which this sentinel wrote, is {state}: "
        f"checkpoints were removed or replaced. If the audit log was reset on purpose, remove "
        f"{witness.path} too"
    )


class AuditVerifier:
    """Verifies the audit chain against its signed checkpoints.

    Args:
        store: The audit store (opened).
        key: The trusted checkpoint key: a checkpoint signed by any other key is invalid.
        witness: The last checkpoint this sentinel wrote; None to skip that check.

    """

    def __init__(self, store: AuditStore, key: CheckpointKey, witness: CheckpointWitness | None = None):
        self._store = store
        self._key = key
        self._witness = witness

    @property
    def key(self) -> CheckpointKey:
        """The trusted checkpoint key."""
        return self._key

    async def from_checkpoint(self, end: int | None = None) -> VerifyResult:
        """Verifies from the latest checkpoint (at or before ``end``) to ``end`` (default the latest).

        Checks the checkpoint's hash, signature and link to the one before it, then the records
        from the checkpoint's own record (which must still hash to what it signed) to ``end``.
        Without any checkpoint, walks from record 1. Records before the checkpoint are not read:
        the full walk (:meth:`walk`) is what finds a change there that kept the links intact.
        """
        latest = await self._store.latest_sequence()
        last = min(end, latest) if end else latest
        sequence, problem = await witness_problem(self._store, self._witness)
        if problem:
            return _broken(ChainBreak.CHECKPOINT_INVALID, sequence, problem, 1, last, 0)
        try:
            checkpoint = await self._store.latest_checkpoint(at_or_before=end or None)
            previous = None
            if checkpoint is not None and checkpoint.number > 1:
                previous = await self._store.get_checkpoint(checkpoint.number - 1)
        except TypeError as exc:
            return _broken(
                ChainBreak.CHECKPOINT_INVALID, 0, f"a stored checkpoint is unreadable: {exc}", 1, last, 0
            )
        if checkpoint is None:
            return await self._store.verify(1, end or None)
        problem = checkpoint_problem(checkpoint, self._key) or link_problem(checkpoint, previous)
        if problem:
            return _broken(
                ChainBreak.CHECKPOINT_INVALID, checkpoint.sequence, problem, checkpoint.sequence, last, 1
            )
        if checkpoint.sequence > latest:
            return _broken(
                ChainBreak.SEQUENCE_GAP,
                latest + 1,
                f"checkpoint {checkpoint.number} vouches for record {checkpoint.sequence} but the chain "
                f"ends at record {latest}: records were removed",
                checkpoint.sequence,
                last,
                1,
            )
        result = await self._store.verify(
            checkpoint.sequence, end or None, anchors={checkpoint.sequence: checkpoint.record_hash}
        )
        return dataclasses.replace(result, checkpoint_sequence=checkpoint.sequence, checkpoints_checked=1)

    async def walk(self, start: int = 1, end: int | None = None) -> VerifyResult:
        """Verifies records ``start`` to ``end`` (default the latest) one by one, with their checkpoints.

        Every checkpoint at a record in the range is checked too: its hash, signature and link to
        the one before it, and that the record it names still has the hash it signed.
        """
        latest = await self._store.latest_sequence()
        last = min(end, latest) if end else latest
        sequence, problem = await witness_problem(self._store, self._witness)
        if problem:
            return _broken(ChainBreak.CHECKPOINT_INVALID, sequence, problem, start, last, 0)
        anchors: dict[int, str] = {}
        checked = 0
        try:
            page = await self._store.checkpoints(min_sequence=start, limit=CHECKPOINT_PAGE)
            previous = None
            if page and page[0].number > 1:
                previous = await self._store.get_checkpoint(page[0].number - 1)
            while page:
                for checkpoint in page:
                    if end and checkpoint.sequence > end:
                        page = []
                        break
                    problem = checkpoint_problem(checkpoint, self._key) or link_problem(checkpoint, previous)
                    if problem:
                        return _broken(
                            ChainBreak.CHECKPOINT_INVALID, checkpoint.sequence, problem, start, last, checked
                        )
                    if checkpoint.sequence > latest:
                        return _broken(
                            ChainBreak.SEQUENCE_GAP,
                            latest + 1,
                            f"checkpoint {checkpoint.number} vouches for record {checkpoint.sequence} but "
                            f"the chain ends at record {latest}: records were removed",
                            start,
                            last,
                            checked,
                        )
                    anchors[checkpoint.sequence] = checkpoint.record_hash
                    checked += 1
                    previous = checkpoint
                else:
                    page = await self._store.checkpoints(after_number=page[-1].number, limit=CHECKPOINT_PAGE)
        except TypeError as exc:
            return _broken(
                ChainBreak.CHECKPOINT_INVALID,
                0,
                f"a stored checkpoint is unreadable: {exc}",
                start,
                last,
                checked,
            )
        result = await self._store.verify(start, end or None, anchors=anchors)
        return dataclasses.replace(result, checkpoints_checked=checked)


class CheckpointWriter:
    """Writes a signed checkpoint every ``every_records`` records or ``every_seconds`` seconds.

    Several writers (sentinel workers or replicas) may run at once: a checkpoint is stored only if it
    extends the latest one, so one of two racing writers stores it and the other skips.

    Args:
        store: The audit store (opened).
        key: The checkpoint key.
        witness: Where the last checkpoint written is recorded outside the store; None for none.
        every_records: Records after the last checkpoint that make the next one due.
        every_seconds: Seconds after the last checkpoint that make the next one due, when at least
            one record was appended since.
        clock: Returns the time in Unix seconds.

    """

    def __init__(
        self,
        store: AuditStore,
        key: CheckpointKey,
        witness: CheckpointWitness | None,
        *,
        every_records: int,
        every_seconds: float,
        clock: Callable[[], float] = time.time,
    ):
        self._store = store
        self._key = key
        self._witness = witness
        self._every_records = every_records
        self._every_us = round(every_seconds * 1_000_000)
        self._poll = min(every_seconds, 1.0)
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._refused = ""

    def _refuse(self, problem: str) -> None:
        # Logged once per distinct problem: the writer polls every second and would repeat it.
        if problem != self._refused:
            self._refused = problem
            log.error("not writing an audit checkpoint: %s", problem)

    async def write_if_due(self) -> Checkpoint | None:
        """Writes the next checkpoint if one is due and the records since the last one verify.

        Returns:
            The checkpoint stored, or None (nothing due, a problem logged, or another writer was
            first).

        """
        latest = await self._store.latest_sequence()
        last = await self._store.latest_checkpoint()
        covered = 0 if last is None else last.sequence
        now_us = round(self._clock() * 1_000_000)
        if latest <= covered:
            return None
        if (
            last is not None
            and latest - covered < self._every_records
            and now_us - last.time_us < self._every_us
        ):
            return None
        # Extending a checkpoint that is not sound, or the survivor of removed ones, would vouch for
        # whatever it covers (and overwrite the witness): an operator has to look first.
        _, problem = await witness_problem(self._store, self._witness)
        if not problem and last is not None:
            problem = checkpoint_problem(last, self._key)
        if problem:
            self._refuse(f"the latest checkpoint is not sound: {problem}")
            return None
        head = await self._store.get(latest)
        if head is None:
            self._refuse(f"record {latest}, the chain's head, is missing")
            return None
        anchors = None if last is None else {last.sequence: last.record_hash}
        result = await self._store.verify(max(covered, 1), latest, anchors=anchors)
        if not result.ok:
            self._refuse(
                f"the audit chain is broken at record {result.first_broken_sequence}: {result.detail}"
            )
            return None
        checkpoint = self._key.sign(
            number=1 if last is None else last.number + 1,
            sequence=latest,
            record_hash=head.hash,
            time_us=now_us,
            prev_hash=GENESIS_HASH if last is None else last.hash,
        )
        if not await self._store.add_checkpoint(checkpoint):
            return None
        if self._witness is not None:
            await asyncio.to_thread(self._witness.write, checkpoint)
        self._refused = ""
        # Also a witness outside the store, wherever the logs are shipped.
        log.info(
            "wrote an audit checkpoint",
            extra={"checkpoint": checkpoint.number, "sequence": checkpoint.sequence, "hash": checkpoint.hash},
        )
        return checkpoint

    async def start(self) -> None:
        """Starts writing in the background."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="audit-checkpoints")

    async def stop(self) -> None:
        """Stops the background writing (a checkpoint being stored completes or is not stored)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._poll)
            try:
                await self.write_if_due()
            except Exception:
                log.exception("writing an audit checkpoint failed; retrying at the next poll")
