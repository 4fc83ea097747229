"""The audit sink, between the audit interceptor and the store: durable records at once, the rest batched.

A durable record (a mutation) is committed before :meth:`AuditSink.record` returns; other records
are queued and written in batches by a background task. Both go through one queue, so the chain
keeps the order of the ``record`` calls, and concurrent durable records share a commit.

Its health check (:meth:`AuditSink.check`) judges the writer by what it has done, without waiting
behind it: a busy writer is healthy while its current batch is younger than ``stall_after``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence

from bhiv_core.audit.record import AuditEntry
from bhiv_core.audit.store import AuditStore

__all__ = ["AuditSink", "AuditStalledError", "AuditWriteError"]

log = logging.getLogger(__name__)


class AuditWriteError(RuntimeError):
    """The audit store refused records after retries; the records were logged at ERROR instead."""


class AuditStalledError(RuntimeError):
    """The audit writer is not writing: its current batch has taken too long, or it stopped."""


_Pending = tuple[AuditEntry, "asyncio.Future[None] | None"]
"""An entry waiting for the writer, with the future of a caller who waits for it to be written."""


class AuditSink:
    """Writes audit entries to a store: durable ones before returning, the rest in batches.

    One background task writes everything, in the order entries were queued. It writes a batch as
    soon as a durable entry is waiting or ``batch_size`` entries are, and otherwise
    ``flush_interval`` seconds after the first waiting entry. The queue is bounded: when it is full,
    :meth:`record` waits (backpressure) instead of dropping. A batch the store refuses is retried;
    after the last retry its entries are logged at ERROR (logger ``bhiv_core.audit.sink``), durable
    callers get :class:`AuditWriteError`, and :meth:`check` fails until a write succeeds again.

    :meth:`check` never queues behind the writer (a SQLite store runs everything on one thread,
    so a ping would wait for the batch being written, and a busy writer would look like a dead
    store). While a batch is being written (retries included), the writer is healthy until that
    batch is older than ``stall_after`` seconds; when it is idle, the store is pinged, which then
    waits for nothing.

    The queue is a plain deque, not an ``asyncio.Queue``: every call of the mesh queues an entry,
    and :meth:`offer` costs an append and a length check.

    The sink owns the store: :meth:`start` opens it and :meth:`close` flushes and closes it.

    Args:
        store: Where records go.
        batch_size: The most entries per write (and the queue length that triggers one).
        flush_interval: The longest a batched entry waits, in seconds.
        max_pending: Queue bound; :meth:`record` waits while it is full.
        retry_delays: Pauses between attempts of a refused batch, in seconds.
        stall_after: How long one batch may take (retries included) before :meth:`check` reports
            the writer stuck, in seconds. The default is the SQLite store's wait for another
            process's write lock: past it, the store itself gives up.
        clock: Monotonic seconds (injected by tests).

    """

    def __init__(
        self,
        store: AuditStore,
        *,
        batch_size: int = 256,
        flush_interval: float = 0.05,
        max_pending: int = 8192,
        retry_delays: Sequence[float] = (0.05, 0.5, 2.0),
        stall_after: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.store = store
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._max_pending = max_pending
        self._retry_delays = tuple(retry_delays)
        self._pending: deque[_Pending] = deque()
        self._wake = asyncio.Event()  # for the writer: something to write, or to write now
        self._room = asyncio.Event()  # for callers waiting on a full queue: the writer took a batch
        self._durable_waiting = 0
        self._task: asyncio.Task[None] | None = None
        self._accepting = False  # started, not closing, and the writer alive
        self._closing = False
        self._failure: str | None = None
        self._stall_after = stall_after
        self._clock = clock
        self._writing_since: float | None = None  # when the batch being written was taken

    async def start(self) -> None:
        """Opens the store and starts the writer."""
        await self.store.open()
        self._pending.clear()
        self._closing = False
        self._task = asyncio.create_task(self._run(), name="audit-sink")
        self._task.add_done_callback(self._stopped)
        self._accepting = True

    def _stopped(self, task: asyncio.Task[None]) -> None:
        self._accepting = False
        self._room.set()  # callers waiting for room find out

    def _check_running(self) -> None:
        if self._task is None or self._closing:
            raise RuntimeError("the audit sink is not running (start() it, and record before close())")
        if self._task.done():
            raise RuntimeError("the audit sink's writer stopped; see the error logged by the writer")

    async def _put(self, item: _Pending) -> None:
        """Queues ``item``, waiting while the queue is full."""
        self._check_running()
        pending = self._pending
        while len(pending) >= self._max_pending:
            self._room.clear()
            await self._room.wait()
            self._check_running()
        pending.append(item)
        self._wake.set()

    async def record(self, entry: AuditEntry, durable: bool) -> None:
        """Records ``entry``.

        Args:
            entry: The finished call.
            durable: True to return only once the record is committed (mutations); False to
                return once it is queued (reads, refusals).

        Raises:
            AuditWriteError: ``durable`` and the store refused the record.
            RuntimeError: The sink is not running.

        """
        if not durable:
            if not self.offer(entry):
                await self._put((entry, None))
            return
        self._check_running()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._durable_waiting += 1
        try:
            await self._put((entry, done))
        except BaseException:
            self._durable_waiting -= 1
            raise
        await done

    def offer(self, entry: AuditEntry) -> bool:
        """Queues a non-durable ``entry`` without waiting; False when the queue is full.

        The per-call path of reads and refusals: no coroutine, no await. A caller that gets False
        awaits :meth:`record` instead, which waits for room (backpressure, never a drop).

        Raises:
            RuntimeError: The sink is not running.

        """
        if not self._accepting:
            self._check_running()
        pending = self._pending
        size = len(pending)
        if size >= self._max_pending:
            return False
        pending.append((entry, None))
        # The writer sleeps until the first entry arrives, then until a batch is full.
        if size == 0 or size + 1 >= self._batch_size:
            self._wake.set()
        return True

    async def flush(self) -> None:
        """Returns once every entry recorded before the call is written."""
        # A durable marker: the writer writes everything queued before it, then answers it.
        await self.record(_FLUSH, durable=True)

    @property
    def writing_since(self) -> float | None:
        """When the batch being written was taken (``clock`` seconds); None while the writer is idle."""
        return self._writing_since

    async def check(self) -> None:
        """Health check: is the writer writing? Never waits behind it.

        Raises:
            AuditWriteError: The latest batch was refused after its retries.
            AuditStalledError: The writer stopped, or its current batch is older than
                ``stall_after``.
            Exception: The store's own ping failed (only asked while the writer is idle).

        """
        if self._failure is not None:
            raise AuditWriteError(self._failure)
        if self._task is None or self._task.done():
            raise AuditStalledError("the audit writer is not running")
        since = self._writing_since
        if since is None:
            # Idle: nothing is ahead of the ping on the store's thread.
            await self.store.ping()
            return
        busy = self._clock() - since
        if busy > self._stall_after:
            raise AuditStalledError(
                f"an audit batch has been in writing for {busy:.1f} s (limit {self._stall_after:g} s); "
                f"{len(self._pending)} more records wait"
            )

    async def close(self) -> None:
        """Writes everything queued, stops the writer and closes the store."""
        if self._task is None:
            return
        if not self._closing:
            self._closing = True
            self._accepting = False
            self._wake.set()
            # The writer drains everything queued before close, then exits.
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None
        await self.store.close()

    def _write_now(self) -> bool:
        return self._closing or self._durable_waiting > 0 or len(self._pending) >= self._batch_size

    async def _run(self) -> None:
        pending = self._pending
        while True:
            if not pending:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if not self._write_now():
                # Wait for more, unless something (a durable entry, a full batch, close) wakes us.
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._flush_interval)
            batch = [pending.popleft() for _ in range(min(len(pending), self._batch_size))]
            self._room.set()
            self._writing_since = self._clock()
            try:
                await self._write(batch)
            finally:
                self._writing_since = None

    async def _write(self, batch: list[_Pending]) -> None:
        entries = [entry for entry, _ in batch if entry is not _FLUSH]
        error: Exception | None = None
        for delay in (*self._retry_delays, None) if entries else ():
            try:
                await self.store.append(entries)
            except Exception as exc:
                error = exc
                if delay is None:
                    break
                log.warning("audit append failed; retrying in %.2f s: %s", delay, exc)
                await asyncio.sleep(delay)
            else:
                error = None
                break
        if not entries:
            pass  # only flush markers: nothing was written, the health state stands
        elif error is None:
            self._failure = None
        else:
            self._failure = f"{type(error).__name__}: {error}"
            # Never silently: the records go to the log, the only place left to keep them.
            log.error(
                "audit store refused %d records; they are logged here instead",
                len(entries),
                extra={"audit_records": [e._asdict() for e in entries], "error": self._failure},
            )
        for entry, done in batch:
            if done is None:
                continue
            self._durable_waiting -= 1
            if done.done():  # the caller was cancelled; the record was still written
                continue
            if error is None or entry is _FLUSH:
                done.set_result(None)
            else:
                done.set_exception(AuditWriteError(self._failure or "audit write failed"))


_FLUSH = AuditEntry(
    time_us=0,
    service="",
    principal="",
    role="",
    method="",
    resource="",
    outcome_code="",
    outcome_code_number=0,
    client_address="",
    trace_id="",
    duration_ms=0.0,
)
"""A marker entry :meth:`AuditSink.flush` queues; never written."""
