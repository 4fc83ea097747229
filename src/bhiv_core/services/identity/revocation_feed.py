"""Revocations pushed to their watchers as they are committed (``AuthService.WatchRevocations``).

Every revoke path of :class:`~bhiv_core.services.identity.service.IdentityService` (logout, a
reused refresh token, disabling a user, a change of role or customer, a password change) awaits
``on_revoked`` once its transaction has committed. In a served identity that is
:meth:`RevocationFeed.poke`: the feed reads the newest revocations from the store and hands them at
once to every subscriber — the watch streams of the other services, and this process's own token
verifier — before the revoking call answers.

Several identity processes (workers on one port, or replicas on one MongoDB) share the store but
not their memory, so a revocation committed by one must reach the watchers connected to another.
Each feed therefore also tails the store by itself every ``tail_interval`` seconds (0.25 s): one
indexed read of the last seconds of revocations, with no RPC and no audit record. A revocation
committed in this process is pushed at once; one committed by another process within a tail
interval.

The tail reads by revoke time, which a revoking call takes before its transaction commits, so each
read reaches ``margin`` seconds (10 s) behind the previous one and drops the ids it has already
passed on. A commit that lands more than ``margin`` after its revoke time is not pushed; the
watchers' periodic catch-up (``BHIV_REVOCATION_POLL_SECONDS``) is the safety net for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from bhiv_core.runtime.errors import Aborted, QuotaViolation, ResourceExhausted, Unavailable
from bhiv_core.services.identity.store import IdentityStore, Revocation

__all__ = [
    "MAX_PENDING",
    "MAX_WATCHERS",
    "RevocationBatch",
    "RevocationFeed",
    "Subscriber",
    "revocations_since",
]

log = logging.getLogger(__name__)

MAX_WATCHERS = 256
"""Watch streams one process serves at once; more are RESOURCE_EXHAUSTED (the RPC is public)."""

MAX_PENDING = 10_000
"""Revocations that may wait for a slow watcher; beyond, its stream ends ABORTED (it reconnects)."""

BATCH_SIZE = 1000
"""Revocations per catch-up message (about 70 bytes each, far below the message limit)."""

_PAGE = 5000


async def revocations_since(store: IdentityStore, *, now: float, since: float) -> list[Revocation]:
    """Every revocation of a token unexpired at ``now`` made at or after ``since``, oldest first."""
    out: list[Revocation] = []
    after: tuple[float, str] | None = None
    while True:
        page = await store.list_revocations(now=now, since=since, after=after, limit=_PAGE)
        out.extend(page)
        if len(page) < _PAGE:
            return out
        after = (page[-1].revoke_time, page[-1].jti)


@dataclass(frozen=True, slots=True)
class RevocationBatch:
    """One message of a watch stream.

    Attributes:
        revocations: Revocations made since the watch's ``since`` (catch-up) or committed since
            the previous batch; empty in a keepalive.
        resume_time: Every revocation made before it was sent: the ``since`` of a reconnect
            (Unix seconds, this process's clock).

    """

    revocations: Sequence[Revocation]
    resume_time: float


Subscriber = Callable[[Sequence[Revocation]], None]
"""Called with each batch of new revocations, synchronously, as the feed learns them."""


@dataclass(eq=False, slots=True)
class _Watcher:
    """A watch stream's mailbox: what the feed published and the stream has not sent yet."""

    pending: list[Revocation] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    overflowed: bool = False


class RevocationFeed:
    """Fans the revocations of one identity store out to subscribers and watch streams.

    Args:
        store: The identity store (opened before :meth:`start`).
        clock: Returns the time in Unix seconds; must be the clock the revoke paths stamp with.
        tail_interval: Seconds between reads of the store for revocations committed elsewhere.
        margin: How far (seconds) before the previous read each read reaches back, for
            revocations committed after their revoke time; also how far behind the present a
            ``resume_time`` is.
        heartbeat: Longest silence (seconds) of a watch stream: a keepalive batch is sent then.
        max_watchers: Concurrent watch streams allowed.
        max_pending: Revocations a watcher may fall behind before its stream is ended.

    """

    def __init__(
        self,
        store: IdentityStore,
        *,
        clock: Callable[[], float] = time.time,
        tail_interval: float = 0.25,
        margin: float = 10.0,
        heartbeat: float = 15.0,
        max_watchers: int = MAX_WATCHERS,
        max_pending: int = MAX_PENDING,
    ):
        self._store = store
        self._clock = clock
        self._tail_interval = tail_interval
        self._margin = margin
        self._heartbeat = heartbeat
        self._max_watchers = max_watchers
        self._max_pending = max_pending
        self._subscribers: list[Subscriber] = []
        self._watchers: set[_Watcher] = set()
        self._seen: dict[str, float] = {}  # jti → revoke time, of the last `margin` seconds
        self._position = 0.0  # clock at the start of the last completed read; 0 before the first
        self._read_began = float("-inf")  # time.monotonic() at the start of the last read
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def watchers(self) -> int:
        """Watch streams open now."""
        return len(self._watchers)

    def subscribe(self, subscriber: Subscriber) -> None:
        """Calls ``subscriber`` with every revocation learnt from now on (all unexpired ones at start)."""
        self._subscribers.append(subscriber)

    async def start(self) -> None:
        """Reads every unexpired revocation (handing them to the subscribers) and starts tailing."""
        self._closed = False
        await self.poke()
        if self._task is None:
            self._task = asyncio.create_task(self._tail_loop(), name="revocation-feed")

    def close(self) -> None:
        """Ends every watch stream and refuses new ones: the first step of a graceful shutdown.

        Open streams would otherwise hold the server's grace period until it runs out.
        """
        self._closed = True
        for watcher in self._watchers:
            watcher.wake.set()

    async def stop(self) -> None:
        """Closes the feed and stops tailing."""
        self.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def poke(self) -> None:
        """Publishes what was committed before this call; returns once every subscriber has it.

        Concurrent pokes share one read: a read that began after this call covers it.
        """
        asked = time.monotonic()
        async with self._lock:
            if self._read_began > asked:
                return
            self._read_began = time.monotonic()
            began = self._clock()
            since = self._position - self._margin if self._position else 0.0
            rows = await revocations_since(self._store, now=began, since=since)
            fresh = [r for r in rows if r.jti not in self._seen]
            for r in fresh:
                self._seen[r.jti] = r.revoke_time
            horizon = began - self._margin
            # Older ids can no longer be read again: the next read starts at the horizon.
            self._seen = {jti: at for jti, at in self._seen.items() if at >= horizon}
            if fresh:
                self._publish(fresh)
            # Set after publishing: a watcher that reads the position has everything before it.
            self._position = began

    def _publish(self, revocations: Sequence[Revocation]) -> None:
        for subscriber in self._subscribers:
            try:
                subscriber(revocations)
            except Exception:
                log.exception("a revocation subscriber failed")
        for watcher in self._watchers:
            if watcher.overflowed:
                continue
            if len(watcher.pending) + len(revocations) > self._max_pending:
                watcher.overflowed = True
                watcher.pending.clear()
            else:
                watcher.pending.extend(revocations)
            watcher.wake.set()

    async def _tail_loop(self) -> None:
        while True:
            await asyncio.sleep(self._tail_interval)
            try:
                await self.poke()
            except Exception:
                log.exception("cannot read new revocations; retrying at the next interval")

    async def watch(self, since: float = 0.0) -> AsyncIterator[RevocationBatch]:
        """Yields the revocations made at or after ``since``, then each new one as it is learnt.

        Raises:
            ResourceExhausted: :data:`MAX_WATCHERS` streams are open already.
            Unavailable: The feed is closed (identity is shutting down).
            Aborted: The watcher fell :data:`MAX_PENDING` revocations behind.

        """
        if self._closed:
            raise Unavailable("identity is shutting down: reconnect", reason="SHUTTING_DOWN")
        if len(self._watchers) >= self._max_watchers:
            raise ResourceExhausted(
                "too many revocation watchers on this identity process",
                violations=[
                    QuotaViolation("revocation watchers", f"at most {self._max_watchers} per process")
                ],
                reason="TOO_MANY_WATCHERS",
            )
        watcher = _Watcher()
        # Subscribed before the catch-up read: what commits in between arrives twice, never not at all.
        self._watchers.add(watcher)
        try:
            began = self._clock()
            caught_up = await revocations_since(self._store, now=began, since=since)
            resume = began - self._margin
            for start in range(0, max(1, len(caught_up)), BATCH_SIZE):
                yield RevocationBatch(caught_up[start : start + BATCH_SIZE], resume)
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._heartbeat):  # wait_for may swallow a cancel (3.11)
                        await watcher.wake.wait()
                if self._closed:
                    return
                if watcher.overflowed:
                    raise Aborted(
                        "this watcher fell too far behind: reconnect with since = the last resume_time",
                        reason="WATCHER_TOO_SLOW",
                    )
                # The position first: every batch published before it is then in `pending`.
                if self._position:
                    resume = max(resume, self._position - self._margin)
                watcher.wake.clear()
                batch, watcher.pending = watcher.pending, []
                yield RevocationBatch(batch, resume)
        finally:
            self._watchers.discard(watcher)
