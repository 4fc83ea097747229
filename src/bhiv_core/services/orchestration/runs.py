"""Where tasks and workflows run: a bounded pool, leases in the store, and recovery after a crash.

Every process of orchestration has one :class:`Runner`. It runs at most ``concurrency`` runs at
once (``BHIV_TASKS_CONCURRENCY``) and accepts at most ``queue`` more waiting for a slot
(``BHIV_TASKS_QUEUE``); :meth:`Runner.admit` past that is RESOURCE_EXHAUSTED with a
``QuotaFailure``, before anything is written.

**Leases.** A run that is RUNNING has a lease record in the store (collection ``run_leases``,
keyed ``tasks:{id}``/``workflows:{id}``), written in the same transaction that makes it RUNNING,
naming the process that runs it (``holder``: node, pid and a random incarnation) and until when
(``expires``). The holder renews it every third of ``BHIV_TASKS_LEASE_SECONDS`` while the run is
queued or running; every write of a run's progress checks, in its transaction, that the lease is
still the writer's (:meth:`Runner.holds`), so a run taken over by another process, or cancelled,
is never written by the one that lost it. A renewal that finds the lease gone or another's
abandons the local run at once (CancelTask on another worker ends the run within a third of the
lease).

**Recovery.** At start and every third of the lease, each process looks for leases whose holder
is gone: expired ones (any host: a worker killed on another machine, or a hung one), and at once
those of a dead process of its own node (same host name and PID namespace, a PID no longer
alive: the previous incarnation of a worker SIGKILLed and restarted). It claims such a lease with
a conditional write (two processes never both win) and asks the run's kind to resume it: see
:mod:`~bhiv_core.services.orchestration.tasks` and
:mod:`~bhiv_core.services.orchestration.workflows` for what resuming means. A graceful stop
(SIGTERM) abandons the local runs and expires their leases, so the next process resumes them at
once. Nothing stays RUNNING without a live holder for longer than the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Protocol

from bhiv_core.resources import Cmp, Eq, Record, ResourceStore, Transaction, Value, new_etag
from bhiv_core.runtime.errors import QuotaViolation, ResourceExhausted
from bhiv_core.services.orchestration.resources import RUN_LEASES

__all__ = ["RecoverableKind", "Runner", "backoff", "node_id"]

log = logging.getLogger(__name__)

_SCAN_BATCH = 50
_SCAN_PAGES = 40
"""At most this many pages of a node's leases are read per scan (2,000 runs); later ones wait for expiry."""


def node_id() -> str:
    """The node of this process: host name and PID namespace (PIDs compare only within one)."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:  # not Linux: PIDs are not compared, only lease expiry recovers
        namespace = f"unknown-{secrets.token_hex(4)}"
    return f"{socket.gethostname()}|{namespace}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def backoff(attempts: int) -> float:
    """The pause after the ``attempts``-th failed attempt: 0.2 s doubling, at most 5 s."""
    return float(min(5.0, 0.2 * 2 ** max(0, attempts - 1)))


class RecoverableKind(Protocol):
    """A kind of run (tasks, workflows) the runner can resume after its holder died."""

    prefix: str
    """The lease key's prefix: ``tasks`` or ``workflows``."""

    async def recover(self, id: str) -> Callable[[], Awaitable[None]] | None:
        """The body that resumes run ``id`` (its lease now ours), or None when it is not running."""
        ...

    async def fail(self, id: str, message: str) -> bool:
        """Ends run ``id`` FAILED with ``message`` (its machinery raised); drops its lease."""
        ...


@dataclasses.dataclass
class _Local:
    task: asyncio.Task[None] | None = None
    done: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)


class Runner:
    """Runs tasks and workflows in this process: bounded, leased, recoverable.

    Args:
        store: Orchestration's kit store (the ``run_leases`` collection).
        concurrency: Runs at once.
        queue: Runs waiting beyond those.
        lease: Seconds a lease lasts without renewal.
        clock: Unix seconds now.

    """

    def __init__(
        self,
        store: ResourceStore,
        *,
        concurrency: int = 4,
        queue: int = 100,
        lease: float = 30.0,
        clock: Callable[[], float] = time.time,
    ):
        self._store = store
        self._concurrency = concurrency
        self._queue = queue
        self._lease = lease
        self._clock = clock
        self._slots = asyncio.Semaphore(concurrency)
        self._admitted = 0
        self._local: dict[str, _Local] = {}
        self._kinds: dict[str, RecoverableKind] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self.node = node_id()
        self.pid = os.getpid()
        self.holder = f"{self.node}|{self.pid}|{secrets.token_hex(6)}"

    def register(self, kind: RecoverableKind) -> None:
        """Adds a kind of run that recovery resumes."""
        self._kinds[kind.prefix] = kind

    # ---- admission -------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        """How many runs this process holds at most (running and waiting)."""
        return self._concurrency + self._queue

    def admit(self) -> None:
        """Reserves room for one run; RESOURCE_EXHAUSTED when running and waiting runs fill the pool.

        The reservation passes to :meth:`start`, or is returned with :meth:`release`.
        """
        if self._admitted >= self.capacity:
            raise ResourceExhausted(
                f"orchestration is running {self._concurrency} runs and has {self._queue} waiting: "
                "retry later",
                violations=[
                    QuotaViolation(
                        "orchestration runs",
                        f"at most {self._concurrency} running and {self._queue} waiting per process "
                        "(BHIV_TASKS_CONCURRENCY, BHIV_TASKS_QUEUE)",
                    )
                ],
                reason="RUN_QUEUE_FULL",
            )
        self._admitted += 1

    def release(self) -> None:
        """Returns a reservation :meth:`admit` made that did not become a run."""
        self._admitted -= 1

    # ---- leases ----------------------------------------------------------------------------

    def lease_record(self, key: str) -> Record:
        """A lease on ``key`` held by this process from now."""
        return Record(
            id=key,
            data=b"",
            fields={"holder": self.holder, "node": self.node, "pid": self.pid, "expires": self._expiry()},
            etag=new_etag(),
        )

    def _expiry(self) -> float:
        return self._clock() + self._lease

    async def take(self, txn: Transaction, key: str) -> None:
        """Inside a transaction that makes ``key`` RUNNING: writes this process's lease on it."""
        current = await txn.get(RUN_LEASES, key)
        if current is None:
            await txn.insert(RUN_LEASES, self.lease_record(key))
        else:
            await txn.replace(RUN_LEASES, self.lease_record(key), expected_etag=current.etag)

    async def holds(self, txn: Transaction, key: str) -> bool:
        """Inside a transaction: whether this process still holds the lease on ``key``."""
        current = await txn.get(RUN_LEASES, key)
        return current is not None and current.value("holder") == self.holder

    @staticmethod
    async def drop(txn: Transaction, *, key: str) -> None:
        """Inside a transaction that ends a run (finished, cancelled): deletes its lease."""
        current = await txn.get(RUN_LEASES, key)
        if current is not None:
            await txn.delete(RUN_LEASES, key, expected_etag=current.etag)

    # ---- running ---------------------------------------------------------------------------

    def start(self, key: str, body: Callable[[], Awaitable[None]]) -> None:
        """Runs ``body`` in the pool under the lease on ``key`` (taken by the caller).

        Uses the reservation of :meth:`admit`. The body deletes the lease in the transaction
        that ends the run; an abandoned body leaves it (cancel deleted it already; stop expires it).
        """
        local = _Local()
        self._local[key] = local

        async def run() -> None:
            try:
                async with self._slots:
                    await body()
            except asyncio.CancelledError:
                pass
            except Exception as exc:
                log.exception("run %s failed unexpectedly", key)
                await self._fail(key, exc)
            finally:
                self._admitted -= 1
                if self._local.get(key) is local:
                    del self._local[key]
                local.done.set()

        local.task = asyncio.get_running_loop().create_task(run(), name=f"run {key}")

    async def _fail(self, key: str, exc: Exception) -> None:
        """Ends the run of ``key`` FAILED after its body raised, so it is not resumed to raise again.

        Best effort: when even that fails (the store is down), the lease expires and another
        worker resumes the run, which is right for a passing fault.
        """
        prefix, _, id = key.partition(":")
        kind = self._kinds.get(prefix)
        if kind is None:
            return
        try:
            await kind.fail(
                id, f"the run stopped on an internal error ({type(exc).__name__}); see the service log"
            )
        except Exception:
            log.exception("could not mark run %s failed; its lease will expire", key)

    def running_here(self, key: str) -> bool:
        """Whether ``key`` runs (or waits) in this process."""
        return key in self._local

    async def wait(self, key: str) -> None:
        """Waits until the local run of ``key`` ends (at once when there is none)."""
        local = self._local.get(key)
        if local is not None:
            await local.done.wait()

    def abandon(self, key: str) -> None:
        """Stops the local run of ``key`` (cancelled, or taken over): its attempt is abandoned."""
        local = self._local.get(key)
        if local is not None and local.task is not None:
            local.task.cancel()

    # ---- the background loop: renewals and recovery -------------------------------------

    async def start_loop(self) -> None:
        """Recovers what dead holders left, then keeps renewing and recovering in the background."""
        await self.recover_once()
        self._loop_task = asyncio.get_running_loop().create_task(self._loop(), name="runs: leases")

    async def stop(self) -> None:
        """Stops the loop, abandons local runs and expires their leases so another resumes them."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        keys = list(self._local)
        for key in keys:
            self.abandon(key)
        await asyncio.gather(*(self.wait(key) for key in keys))
        for key in keys:
            with contextlib.suppress(Exception):
                await self._store.run(partial(self._expire, key=key))

    async def _expire(self, txn: Transaction, *, key: str) -> None:
        current = await txn.get(RUN_LEASES, key)
        if current is not None and current.value("holder") == self.holder:
            expired = dataclasses.replace(current, fields={**current.fields, "expires": 0.0}, etag=new_etag())
            await txn.replace(RUN_LEASES, expired, expected_etag=current.etag)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._lease / 3)
            try:
                await self.renew_once()
                await self.recover_once()
            except Exception:
                log.exception("renewing or recovering runs failed; trying again")

    async def renew_once(self) -> None:
        """Extends the leases of local runs; abandons those whose lease is gone or another's."""
        for key in list(self._local):

            async def renew(txn: Transaction, key: str = key) -> bool:
                current = await txn.get(RUN_LEASES, key)
                if current is None or current.value("holder") != self.holder:
                    return False
                fields = {**current.fields, "expires": self._expiry()}
                renewed = dataclasses.replace(current, fields=fields, etag=new_etag())
                return await txn.replace(RUN_LEASES, renewed, expected_etag=current.etag)

            if not await self._store.run(renew):
                log.info("run %s was cancelled or taken over: abandoning it here", key)
                self.abandon(key)

    async def recover_once(self) -> int:
        """Claims and resumes runs whose holder is gone, while the pool has room; returns how many."""
        now = self._clock()
        expired = await self._store.find(
            RUN_LEASES, [Cmp("expires", "<", now)], after=None, limit=_SCAN_BATCH
        )
        dead: list[Record] = []
        after: list[Value] | None = None
        for _ in range(_SCAN_PAGES):  # every worker of this node holds some: read past the live ones
            mine = await self._store.find(RUN_LEASES, [Eq("node", self.node)], after=after, limit=_SCAN_BATCH)
            dead += [
                r
                for r in mine
                if r.value("holder") != self.holder
                and r.value("pid") != self.pid
                and not _alive(int(str(r.value("pid"))))
            ]
            if len(mine) < _SCAN_BATCH:
                break
            after = [mine[-1].value("expires"), mine[-1].id]
        resumed = 0
        seen: set[str] = set()
        for record in [*expired, *dead]:
            if record.id in seen or record.id in self._local:
                continue
            seen.add(record.id)
            if self._admitted >= self.capacity:
                break
            prefix, _, id = record.id.partition(":")
            kind = self._kinds.get(prefix)
            if kind is None:
                continue
            self.admit()  # reserved before the claim: nothing else can take the room meanwhile

            async def claim(txn: Transaction, record: Record = record) -> bool:
                current = await txn.get(RUN_LEASES, record.id)
                if current is None or current.etag != record.etag:
                    return False  # renewed by a live holder, or claimed by another process
                return await txn.replace(RUN_LEASES, self.lease_record(record.id), expected_etag=current.etag)

            try:
                claimed = await self._store.run(claim)
            except Exception:
                self.release()
                log.exception("claiming run %s failed", record.id)
                continue
            if not claimed:
                self.release()
                continue
            try:
                body = await kind.recover(id)
            except Exception as exc:
                # The lease is ours now: fail the run rather than let it be claimed and raise again.
                self.release()
                log.exception("resuming run %s failed", record.id)
                await self._fail(record.id, exc)
                continue
            log.warning(
                "took over run %s from %s",
                record.id,
                record.value("holder"),
                extra={"run": record.id, "previous_holder": record.value("holder")},
            )
            if body is None:
                self.release()
                await self._store.run(partial(self.drop, key=record.id))
                continue
            self.start(record.id, body)
            resumed += 1
        return resumed
