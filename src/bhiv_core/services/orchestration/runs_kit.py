"""The skeleton tasks and workflows share: a run is a kit resource driven by the :class:`Runner`.

:class:`RunKind` holds what both kinds do the same way over their resource type: the owned record
with ``run_as`` stored idempotently on create, get and list pages, the execute transaction (etag,
status check, reset, stamp, conditional replace, lease) and its optional wait, the cancel
transaction, the note written when a worker died, and the lease-checked reads and writes of a
running run. Each kind supplies only its own parts: how a run is reset, what cancelling or an
interrupted worker changes inside it, and the attempt loop (:meth:`RunKind._body`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from google.protobuf.message import Message

from bhiv_core.resources import (
    Filter,
    Record,
    ResourceStore,
    ResourceType,
    Transaction,
    check_etag,
    idempotent,
    list_page,
)
from bhiv_core.runtime.errors import Aborted, FailedPrecondition
from bhiv_core.runtime.times import to_timestamp
from bhiv_core.security.principal import Principal
from bhiv_core.services.orchestration.agents import Agents
from bhiv_core.services.orchestration.runs import Runner

__all__ = ["RunKind", "record_of", "run_as_of"]

M = TypeVar("M", bound=Message)
R = TypeVar("R", bound=Message)


def run_as_of(principal: Principal) -> str:
    """What a run needs to act as ``principal`` later: subject, role, customer (no token)."""
    return json.dumps({"subject": principal.subject, "role": principal.role, "customer": principal.customer})


def record_of(record: Record, fresh: Record) -> Record:
    """``fresh`` (a message's stored form) keeping the owner and ``run_as`` of ``record``."""
    return dataclasses.replace(
        fresh, owner=record.owner, fields={**fresh.fields, "run_as": record.value("run_as")}
    )


class RunKind(Generic[M]):
    """The shared part of a kind of run (a task, a workflow).

    Subclasses set the class attributes and implement :meth:`_reset` and :meth:`_body`; they may
    override :meth:`_on_cancel` and :meth:`_note`.

    Args:
        store: Orchestration's kit store.
        agents: The in-process agents.
        runner: The process's pool of runs.
        clock: Unix seconds now.

    """

    prefix: str
    """The runner key prefix (also the collection name)."""
    kind: ResourceType[M]
    pending: int
    running: int
    cancelled: int
    failed: int
    reason: str
    """The prefix of this kind's reasons: ``TASK`` gives ``TASK_RUNNING`` and ``TASK_FINISHED``."""
    status_name: Callable[[Any], str]

    def __init__(
        self, store: ResourceStore, agents: Agents, runner: Runner, clock: Callable[[], float] = time.time
    ):
        self._store = store
        self._agents = agents
        self._runner = runner
        self._clock = clock
        runner.register(self)

    def _key(self, id: str) -> str:
        return f"{self.prefix}:{id}"

    # ---- the requests --------------------------------------------------------------------

    async def _create(
        self, request: Any, principal: Principal, message: M, *, rpc: str, respond: Callable[[M], R]
    ) -> R:
        """Stores ``message`` (fresh) owned by the principal's customer, once per request id."""
        message = self.kind.fresh(message, now=self._clock())
        stored = self.kind.record(message)
        stored = dataclasses.replace(
            stored,
            owner=principal.customer if principal.is_customer else "",
            fields={**stored.fields, "run_as": run_as_of(principal)},
        )

        async def step(txn: Transaction) -> R:
            await txn.insert(self.kind.collection, stored)
            return respond(message)

        result: R = await idempotent(
            self._store,
            scope=f"{rpc}:{principal.subject}",
            request_id=request.request_id,
            request=request,
            response_type=type(respond(message)),
            step=step,
            clock=self._clock,
        )
        return result

    async def _get(self, name: str, principal: Principal) -> M:
        return self.kind.load(await self.kind.get(self._store, name, principal))

    async def _page(self, request: Any, filters: Sequence[Filter], *, rpc: str) -> tuple[list[M], str]:
        records, token = await list_page(
            self._store,
            self.kind.collection,
            list(filters),
            page_size=request.page_size,
            page_token=request.page_token,
            query=(rpc,),
            max_bytes=2 << 20,
        )
        return [self.kind.load(r) for r in records], token

    async def _execute(self, request: Any, principal: Principal) -> M:
        """Starts a run from scratch (:meth:`_reset`); waits for its end when ``wait``."""
        id = self.kind.id_of(request.name)
        key = self._key(id)
        self._runner.admit()
        try:

            async def step(txn: Transaction) -> M:
                record = await self.kind.get(txn, request.name, principal)
                check_etag(request.etag, record, request.name)
                run: Any = self.kind.load(record)
                if run.status == self.running:
                    raise FailedPrecondition(
                        f"{request.name} is already running", reason=f"{self.reason}_RUNNING"
                    )
                self._reset(run)
                now = self._clock()
                run.status = self.running
                run.start_time.CopyFrom(to_timestamp(now))
                run.ClearField("end_time")
                self.kind.stamp(run, now=now)
                await self._replace_checked(txn, record, run, request.name)
                await self._runner.take(txn, key)
                return run  # type: ignore[no-any-return]

            run = await self._store.run(step)
        except BaseException:
            self._runner.release()
            raise
        self._runner.start(key, self._body(id))
        if request.wait:
            await asyncio.shield(self._runner.wait(key))
            record = await self._store.get(self.kind.collection, id)
            if record is not None:
                run = self.kind.load(record)
        return run

    async def _cancel(self, request: Any, principal: Principal) -> M:
        """Ends a pending or running run as CANCELLED; a running attempt is abandoned."""
        id = self.kind.id_of(request.name)

        async def step(txn: Transaction) -> M:
            record = await self.kind.get(txn, request.name, principal)
            check_etag(request.etag, record, request.name)
            run: Any = self.kind.load(record)
            if run.status not in (self.pending, self.running):
                raise FailedPrecondition(
                    f"{request.name} has already finished ({self.status_name(run.status)})",
                    reason=f"{self.reason}_FINISHED",
                )
            now = self._clock()
            self._on_cancel(run, now)
            run.status = self.cancelled
            run.end_time.CopyFrom(to_timestamp(now))
            self.kind.stamp(run, now=now)
            await self._replace_checked(txn, record, run, request.name)
            await self._runner.drop(txn, key=self._key(id))
            return run  # type: ignore[no-any-return]

        run = await self._store.run(step)
        self._runner.abandon(self._key(id))
        return run

    async def _replace_checked(self, txn: Transaction, record: Record, run: M, name: str) -> None:
        if not await txn.replace(
            self.kind.collection, record_of(record, self.kind.record(run)), expected_etag=record.etag
        ):
            raise Aborted(f"{name} changed meanwhile: retry", reason="CONCURRENT_UPDATE")

    # ---- what each kind supplies ---------------------------------------------------------

    def _reset(self, run: M) -> None:
        """Checks the run's agents and clears what the previous run left (before it starts)."""
        raise NotImplementedError

    def _on_cancel(self, run: M, now: float) -> None:
        """What cancelling changes inside the run besides its status and end time."""

    def _note(self, run: M) -> bool:
        """Notes in the run that its worker died; True when that changed it."""
        return False

    def _on_fail(self, run: M, now: float) -> None:
        """What failing on an internal error changes inside the run besides its status."""

    def _body(self, id: str) -> Callable[[], Awaitable[None]]:
        """The run's attempt loop, as the runner calls it."""
        raise NotImplementedError

    # ---- running -------------------------------------------------------------------------

    async def recover(self, id: str) -> Callable[[], Awaitable[None]] | None:
        """Resumes a run whose worker died after :meth:`_note`; None if it is not running."""

        async def note(txn: Transaction) -> bool:
            record = await txn.get(self.kind.collection, id)
            if record is None:
                return False
            run: Any = self.kind.load(record)
            if run.status != self.running:
                return False
            if self._note(run):
                self.kind.stamp(run, now=self._clock())
                await txn.replace(
                    self.kind.collection, record_of(record, self.kind.record(run)), expected_etag=record.etag
                )
            return True

        return self._body(id) if await self._store.run(note) else None

    async def fail(self, id: str, message: str) -> bool:
        """Ends run ``id`` FAILED with ``message`` when it is still running; drops its lease.

        For a run whose machinery (not its agent) raised: without this it would stay RUNNING
        until its lease expired, then be resumed, raise again, and so on for ever.
        """

        async def step(txn: Transaction) -> bool:
            record = await txn.get(self.kind.collection, id)
            run: Any = None if record is None else self.kind.load(record)
            if record is None or run.status != self.running:
                await self._runner.drop(txn, key=self._key(id))
                return False
            run.status = self.failed
            run.error_message = message[:1000]
            self._on_fail(run, self._clock())
            await self._write(txn, record, run, final=True)
            return True

        return await self._store.run(step)

    async def _held(self, txn: Transaction, id: str) -> tuple[Record, M] | None:
        """The running run while this worker holds its lease; else None (the lease dropped)."""
        record = await txn.get(self.kind.collection, id)
        if record is None or not await self._runner.holds(txn, self._key(id)):
            return None
        run: Any = self.kind.load(record)
        if run.status != self.running:
            await self._runner.drop(txn, key=self._key(id))
            return None
        return record, run

    async def _write(self, txn: Transaction, record: Record, run: M, *, final: bool) -> None:
        """Stores a change of a running run; ``final`` ends it (end time, lease dropped)."""
        now = self._clock()
        if final:
            run.end_time.CopyFrom(to_timestamp(now))  # type: ignore[attr-defined]
            await self._runner.drop(txn, key=self._key(self.kind.id_of(run.name)))  # type: ignore[attr-defined]
        self.kind.stamp(run, now=now)
        await txn.replace(
            self.kind.collection, record_of(record, self.kind.record(run)), expected_etag=record.etag
        )
