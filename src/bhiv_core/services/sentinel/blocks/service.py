"""The block list: durable blocks, the active set in memory, expiry on time, and the edge's config.

:class:`BlockList` is what sentinel's other parts call (the threat-response agent among them):

- ``await blocks.block(cidr, ttl=..., reason=..., source=BlockSource.AUTOMATIC, incident=...,
  created_by="sentinel")`` blocks a range now and returns the stored block (``bhiv.sentinel.v1.
  Block``); it raises :class:`~bhiv_core.runtime.errors.InvalidArgument` for a bad range or TTL,
  :class:`~bhiv_core.runtime.errors.AlreadyExists` when an active block of the same range exists,
  :class:`~bhiv_core.runtime.errors.FailedPrecondition` for a range of allowlisted addresses only,
  and :class:`~bhiv_core.runtime.errors.NotFound` for an incident that does not exist;
- ``await blocks.active_blocks_for(address)``: the active blocks covering an address, most specific
  first (empty for an allowlisted address, which is never blocked);
- ``await blocks.unblock(name, lifted_by=...)``, ``get``, ``list_page``, ``check``.

Every change is committed to the store first, then applied to the active set, whose version the
xDS server (:mod:`.xds`) pushes to every Envoy replica; a burst of changes is coalesced into the
versions each Envoy can take. Blocks with a TTL are removed from the active set by a timer set for
the earliest expire time, so Envoy drops them when they expire, not at the next poll (and their
records are rewritten inactive soon after). The edge has two IP-block filters: a new block goes to
the small "recent" one, which Envoy applies in milliseconds, and moves to the "bulk" one once the
list has been quiet for :data:`FOLD_QUIET_SECONDS` (or :data:`FOLD_SIZE` blocks wait), since Envoy
takes 6 to 9 µs per entry to apply a config (10,000: 60 to 100 ms). One sentinel process owns the list
(it serves the xDS port): ``BHIV_SENTINEL_WORKERS`` must be 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import heapq
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta

from bhiv.sentinel.v1 import block_pb2, block_service_pb2
from bhiv_core.resources import (
    RECEIPT_TTL_SECONDS,
    Cmp,
    Eq,
    Filter,
    ResourceStore,
    Transaction,
    idempotent,
    list_page,
)
from bhiv_core.runtime.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
)
from bhiv_core.runtime.times import to_timestamp
from bhiv_core.security.address import Network
from bhiv_core.services.sentinel.blocks.cidr import Address, parse_address, parse_cidr
from bhiv_core.services.sentinel.blocks.rbac import RbacConfig, recent_filter_name
from bhiv_core.services.sentinel.blocks.resources import BLOCK, BLOCKS, FOREVER, until_of

__all__ = ["MAX_REASON", "MAX_TTL", "MIN_TTL", "BlockList", "BlockSource", "IncidentCheck"]

log = logging.getLogger(__name__)

FOLD_SIZE = 1000
"""Blocks in the "recent" filter that make it fold into the "bulk" one at once."""
FOLD_QUIET_SECONDS = 1.0
"""A list unchanged this long folds "recent" into "bulk"."""
FOLD_GRACE_SECONDS = 5.0
"""How long folded blocks stay in "recent" too, while every Envoy applies the new "bulk"."""
MIN_TTL = timedelta(seconds=1)
MAX_TTL = timedelta(days=30)
MAX_REASON = 1000

IncidentCheck = Callable[[str], Awaitable[bool]]
"""Tells whether an incident (``incidents/{id}``) exists."""


class BlockSource(enum.IntEnum):
    """Who created a block (``bhiv.sentinel.v1.BlockSource``)."""

    MANUAL = block_pb2.BLOCK_SOURCE_MANUAL
    AUTOMATIC = block_pb2.BLOCK_SOURCE_AUTOMATIC


def _datetime(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


class BlockList:
    """Sentinel's blocks: stored durably, the active ones in memory and in the edge's RBAC config.

    Args:
        store: The ``sentinel-blocks`` kit store.
        allowlist: Ranges that are never blocked.
        filter_name: The edge's IP-block filter (the ECDS resource's name).
        incident_exists: Tells whether an incident exists; None refuses every ``incident``
            (NOT_FOUND) until incidents are wired in.
        clock: Unix seconds now.

    """

    def __init__(
        self,
        store: ResourceStore,
        allowlist: Sequence[Network],
        *,
        filter_name: str,
        incident_exists: IncidentCheck | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.store = store
        self.allowlist = tuple(allowlist)
        self._incident_exists = incident_exists
        self._clock = clock
        self._active: dict[str, block_pb2.Block] = {}
        self._by_network: dict[Network, str] = {}
        self._expiries: list[tuple[float, str]] = []
        self._timer: asyncio.TimerHandle | None = None
        # Two configs, two filters at the edge: new blocks go to the small "recent" one, which Envoy
        # applies in milliseconds; when the list is quiet (or "recent" grows), they move to the
        # "bulk" one, whose 10,000 entries take Envoy ~0.1 s to apply, off the critical path.
        self._bulk = RbacConfig(filter_name, self.allowlist)
        self._recent = RbacConfig(recent_filter_name(filter_name), self.allowlist)
        self._in_recent: set[str] = set()
        self._in_bulk: set[str] = set()
        self._fold_timer: asyncio.TimerHandle | None = None
        self._bulk_bytes: tuple[int, bytes] | None = None
        self._bulk_version = 0
        self._version = 0
        self._changed = asyncio.Condition()
        self._snapshot: tuple[int, tuple[bytes, ...]] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # Lifetime

    async def start(self) -> None:
        """Opens the store, drops old idempotency receipts and loads the active blocks."""
        await self.store.open()
        await self.store.prune_receipts(before=self._clock() - RECEIPT_TTL_SECONDS)
        now = self._clock()
        while expired := await self.store.find(
            BLOCKS, [Eq("live", True), Cmp("until", "<=", now)], after=None, limit=1000
        ):
            # Expired while sentinel was down.
            await self._retire([BLOCK.load(r).name for r in expired], now)
        after = None
        while True:
            records = await self.store.find(
                BLOCKS, [Eq("live", True), Cmp("until", ">", now)], after=after, limit=1000
            )
            for record in records:
                self._activate(BLOCK.load(record), recent=False)
            if len(records) < 1000:
                break
            last = records[-1]
            after = [last.value("created"), last.id]
        await self._changed_now()
        log.info("block list loaded", extra={"active_blocks": len(self._active)})

    async def stop(self) -> None:
        """Stops the expiry and fold timers and closes the store."""
        for timer in (self._timer, self._fold_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._fold_timer = None
        await asyncio.gather(*self._tasks, return_exceptions=True)  # expired blocks being recorded
        await self.store.close()

    # The API of sentinel's other parts

    async def block(
        self,
        cidr: str,
        *,
        ttl: timedelta | None,
        reason: str,
        source: BlockSource,
        incident: str = "",
        created_by: str,
        request_id: str = "",
        request: block_service_pb2.BlockAddressRequest | None = None,
    ) -> block_pb2.Block:
        """Blocks ``cidr`` now, for ``ttl`` or until lifted; see the module docstring for errors.

        Args:
            cidr: An address or CIDR range, host bits zero.
            ttl: How long, 1 s to 30 days; None until lifted.
            reason: Why, 1 to 1000 characters.
            source: Who decided.
            incident: The motivating incident, ``incidents/{id}``, or empty.
            created_by: The principal (``users/...``), or ``sentinel`` for automatic blocks.
            request_id: An idempotency key (BlockAddress's), scoped to ``created_by``.
            request: The request the key belongs to (to tell a retry from a reuse of the key).

        """
        network = parse_cidr(cidr)
        violations = []
        if ttl is not None and not MIN_TTL <= ttl <= MAX_TTL:
            violations.append(FieldViolation("ttl", "must be from 1 second to 30 days", "OUT_OF_RANGE"))
        if not reason.strip():
            violations.append(FieldViolation("reason", "is required", "REQUIRED"))
        elif len(reason) > MAX_REASON:
            violations.append(
                FieldViolation("reason", f"must be at most {MAX_REASON} characters", "TOO_LONG")
            )
        if violations:
            raise InvalidArgument(violations=violations)
        covering = next((n for n in self.allowlist if _within(network, n)), None)
        if covering is not None:
            raise FailedPrecondition(
                f"{network} is allowlisted ({covering}): the edge never blocks it; remove it from "
                "BHIV_SENTINEL_BLOCK_ALLOWLIST first if it must be blocked",
                reason="ALLOWLISTED",
            )
        # Without a checker (incidents not wired in), no incident can be shown to exist.
        if incident and (self._incident_exists is None or not await self._incident_exists(incident)):
            raise NotFound(f"{incident} not found", reason="INCIDENT_NOT_FOUND")

        async def step(txn: Transaction) -> block_service_pb2.BlockAddressResponse:
            now = self._clock()
            clash = await txn.find(
                BLOCKS, [Eq("cidr", str(network)), Eq("live", True), Cmp("until", ">", now)], limit=1
            )
            if clash:
                raise AlreadyExists(
                    f"{network!s} is already blocked by blocks/{clash[0].id}", reason="ALREADY_BLOCKED"
                )
            message = block_pb2.Block(
                active=True,
                cidr=str(network),
                reason=reason,
                created_by=created_by,
                source=block_pb2.BlockSource.ValueType(source),
                incident=incident,
            )
            if ttl is not None:
                message.expire_time.CopyFrom(to_timestamp(now + ttl.total_seconds()))
            fresh = BLOCK.fresh(message, now=now)
            await txn.insert(BLOCKS, BLOCK.record(fresh))
            return block_service_pb2.BlockAddressResponse(block=fresh)

        response = await idempotent(
            self.store,
            scope=f"BlockAddress:{created_by}",
            request_id=request_id,
            request=request or block_service_pb2.BlockAddressRequest(),
            response_type=block_service_pb2.BlockAddressResponse,
            step=step,
            clock=self._clock,
        )
        block = response.block
        if self._live(block) and block.name not in self._active:
            self._activate(block)
            await self._changed_now()
        log.info(
            "address blocked",
            extra={"block": block.name, "cidr": block.cidr, "created_by": created_by, "source": source.name},
        )
        return self._present(block)

    async def unblock(self, name: str, *, lifted_by: str) -> block_pb2.Block:
        """Lifts a block now; NOT_FOUND when it does not exist, FAILED_PRECONDITION when inactive."""
        id = BLOCK.id_of(name)

        async def step(txn: Transaction) -> block_pb2.Block:
            record = await txn.get(BLOCKS, id)
            if record is None:
                raise NotFound(f"{name} not found", reason="NOT_FOUND")
            block = BLOCK.load(record)
            if not self._live(block):
                raise FailedPrecondition(
                    f"{name} is no longer active (expired or lifted)", reason="NOT_ACTIVE"
                )
            block.lift_time.CopyFrom(to_timestamp(self._clock()))
            block.active = False
            block.lifted_by = lifted_by
            if not await txn.replace(BLOCKS, BLOCK.record(block), expected_etag=record.etag):
                raise NotFound(f"{name} not found", reason="NOT_FOUND")
            return block

        block = await self.store.run(step)
        if self._deactivate(block.name):
            await self._changed_now()
        log.info("address unblocked", extra={"block": block.name, "cidr": block.cidr, "lifted_by": lifted_by})
        return self._present(block)

    async def get(self, name: str) -> block_pb2.Block:
        """One block; NOT_FOUND when it does not exist."""
        record = await self.store.get(BLOCKS, BLOCK.id_of(name))
        if record is None:
            raise NotFound(f"{name} not found", reason="NOT_FOUND")
        return self._present(BLOCK.load(record))

    async def list_page(
        self, *, page_size: int, page_token: str, active_only: bool, source: int
    ) -> tuple[list[block_pb2.Block], str]:
        """A page of blocks, newest first, maybe only the active ones or those of one source."""
        filters: list[Filter] = []
        if active_only:
            # Not "until > now" in the store: the filters are part of the page token, and now moves.
            # A block that expired a moment ago, before sentinel rewrote it, is left out below (the
            # page is then one short, which a page may be).
            filters.append(Eq("live", True))
        if source:
            filters.append(Eq("source", source))
        records, token = await list_page(
            self.store,
            BLOCKS,
            filters,
            page_size=page_size,
            page_token=page_token,
            query=("ListBlocks", active_only, source),
        )
        blocks = [self._present(BLOCK.load(r)) for r in records]
        return [b for b in blocks if b.active or not active_only], token

    def check(self, address: str | Address) -> block_pb2.Block | None:
        """The most specific active block covering ``address``, or None (always for an allowlisted one)."""
        found = self.active_for(address)
        return found[0] if found else None

    async def active_blocks_for(self, address: str | Address) -> list[block_pb2.Block]:
        """The active blocks covering ``address``, most specific first (none for an allowlisted one)."""
        return self.active_for(address)

    def active_for(self, address: str | Address) -> list[block_pb2.Block]:
        """:meth:`active_blocks_for`, without awaiting."""
        ip = parse_address(address) if isinstance(address, str) else address
        if any(ip in network for network in self.allowlist):
            return []
        self._expire_and_notify()
        found = []
        for prefix in range(ip.max_prefixlen, -1, -1):
            name = self._by_network.get(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))
            if name is not None:
                found.append(self._present(self._active[name]))
        return found

    # What the xDS server reads

    @property
    def version(self) -> int:
        """The active set's version: it grows by one or more with every change."""
        return self._version

    def snapshot(self) -> tuple[int, tuple[bytes, ...]]:
        """The current version and the encoded ECDS resources of the edge's two IP-block filters.

        Encoded once per version, whatever the number of Envoy replicas asking; the bulk
        filter's only when it changed.
        """
        if self._snapshot is None or self._snapshot[0] != self._version:
            if self._bulk_bytes is None or self._bulk_bytes[0] != self._bulk_version:
                self._bulk_bytes = (self._bulk_version, self._bulk.resource())
            self._snapshot = (self._version, (self._bulk_bytes[1], self._recent.resource()))
        return self._snapshot

    async def wait_change(self, seen: int) -> int:
        """Waits until the version differs from ``seen``; returns the new one."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._version != seen)
            return self._version

    def __len__(self) -> int:
        return len(self._active)

    # Internals

    def _live(self, block: block_pb2.Block) -> bool:
        return not block.HasField("lift_time") and until_of(block) > self._clock()

    def _present(self, block: block_pb2.Block) -> block_pb2.Block:
        """The block as read now: ``active`` computed from its lift and expire times."""
        shown = block_pb2.Block()
        shown.CopyFrom(block)
        shown.active = self._live(block)
        return shown

    def _activate(self, block: block_pb2.Block, *, recent: bool = True) -> None:
        network = ipaddress.ip_network(block.cidr)
        until = until_of(block)
        expire = None if until >= FOREVER else _datetime(until)
        self._active[block.name] = block
        self._by_network[network] = block.name
        if recent:
            self._recent.add(block.name, network, expire)
            self._in_recent.add(block.name)
            self._plan_fold()
        else:  # loading the list at start: straight into "bulk"
            self._bulk.add(block.name, network, expire)
            self._in_bulk.add(block.name)
            self._bulk_version += 1
        self._version += 1
        if until < FOREVER:
            heapq.heappush(self._expiries, (until, block.name))
            self._schedule()

    def _deactivate(self, name: str) -> bool:
        block = self._active.pop(name, None)
        if block is None:
            return False
        network = ipaddress.ip_network(block.cidr)
        if self._by_network.get(network) == name:
            del self._by_network[network]
        if name in self._in_recent:
            self._in_recent.discard(name)
            self._recent.remove(name)
        if name in self._in_bulk:
            self._in_bulk.discard(name)
            self._bulk.remove(name)
            self._bulk_version += 1
        self._version += 1
        return True

    def _plan_fold(self) -> None:
        """Folds "recent" into "bulk" when it is large, or once the list has been quiet a while."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # loading at start, before serving: fold at once
            self._fold()
            return
        if self._fold_timer is not None:
            self._fold_timer.cancel()
            self._fold_timer = None
        if len(self._in_recent) >= FOLD_SIZE:
            self._fold()
        elif self._in_recent:
            self._fold_timer = loop.call_later(FOLD_QUIET_SECONDS, self._fold_and_notify)

    def _fold_and_notify(self) -> None:
        self._fold_timer = None
        if self._fold():
            self._notify_soon()

    def _fold(self) -> bool:
        """Copies "recent" into "bulk" now, and empties "recent" of them a little later.

        In two steps, so that no Envoy ever has a block in neither filter: Envoy applies a later
        version only after the earlier one (one response in flight per stream).
        """
        moving = [name for name in self._in_recent if name not in self._in_bulk]
        if not moving:
            return False
        for name in moving:
            block = self._active[name]
            until = until_of(block)
            self._bulk.add(
                name, ipaddress.ip_network(block.cidr), None if until >= FOREVER else _datetime(until)
            )
            self._in_bulk.add(name)
        self._bulk_version += 1
        self._version += 1
        try:
            asyncio.get_running_loop().call_later(FOLD_GRACE_SECONDS, self._clear_folded, moving)
        except RuntimeError:
            self._clear_folded(moving, notify=False)
        return True

    def _clear_folded(self, names: Sequence[str], notify: bool = True) -> None:
        cleared = False
        for name in names:
            if name in self._in_recent and name in self._in_bulk:
                self._in_recent.discard(name)
                self._recent.remove(name)
                cleared = True
        if cleared:
            self._version += 1
            if notify:
                self._notify_soon()

    def _notify_soon(self) -> None:
        with contextlib.suppress(RuntimeError):
            task = asyncio.get_running_loop().create_task(self._changed_now())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _schedule(self) -> None:
        """Sets the timer for the earliest expire time (stale heap entries are skipped when due)."""
        if not self._expiries:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no running loop: expiry is checked when the list is read
            return
        when = loop.time() + max(0.0, self._expiries[0][0] - self._clock())
        if self._timer is not None:
            if self._timer.when() <= when:
                return
            self._timer.cancel()
        self._timer = loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._expire_and_notify()
        self._schedule()

    def _expire_and_notify(self) -> None:
        if self._expire_due():
            self._notify_soon()

    def _expire_due(self) -> bool:
        """Removes the blocks whose expire time has come; True when any was active."""
        now = self._clock()
        expired = []
        while self._expiries and self._expiries[0][0] <= now:
            _, name = heapq.heappop(self._expiries)
            if self._deactivate(name):
                expired.append(name)
                log.info("block expired", extra={"block": name})
        if expired:
            with contextlib.suppress(RuntimeError):
                task = asyncio.get_running_loop().create_task(self._retire(expired, now))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        return bool(expired)

    async def _retire(self, names: Sequence[str], now: float) -> None:
        """Records that these blocks expired (``active`` false), so lists of active ones skip them."""

        async def step(txn: Transaction) -> None:
            for name in names:
                record = await txn.get(BLOCKS, BLOCK.id_of(name))
                if record is None:
                    continue
                block = BLOCK.load(record)
                if block.active and until_of(block) <= now:
                    block.active = False
                    await txn.replace(BLOCKS, BLOCK.record(block), expected_etag=record.etag)

        try:
            await self.store.run(step)
        except Exception:  # the next start retires them; reads already show them inactive
            log.exception("could not record expired blocks", extra={"blocks": len(names)})

    async def _changed_now(self) -> None:
        async with self._changed:
            self._changed.notify_all()


def _within(network: Network, allowed: Network) -> bool:
    return network.version == allowed.version and network.subnet_of(allowed)  # type: ignore[arg-type]
