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
the earliest expire time, so Envoy drops them when they expire, not at the next poll.
One sentinel process owns the list (it serves the xDS port): ``BHIV_SENTINEL_WORKERS`` stays 1.
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
from bhiv_core.services.sentinel.blocks.rbac import RbacConfig
from bhiv_core.services.sentinel.blocks.resources import BLOCK, BLOCKS, FOREVER, until_of

__all__ = ["MAX_REASON", "MAX_TTL", "MIN_TTL", "BlockList", "BlockSource", "IncidentCheck"]

log = logging.getLogger(__name__)

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
        self._config = RbacConfig(filter_name, self.allowlist)
        self._version = 0
        self._changed = asyncio.Condition()
        self._snapshot: tuple[int, bytes] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # Lifetime

    async def start(self) -> None:
        """Opens the store, drops old idempotency receipts and loads the active blocks."""
        await self.store.open()
        await self.store.prune_receipts(before=self._clock() - RECEIPT_TTL_SECONDS)
        now = self._clock()
        after = None
        while True:
            records = await self.store.find(
                BLOCKS, [Eq("live", True), Cmp("until", ">", now)], after=after, limit=1000
            )
            for record in records:
                self._activate(BLOCK.load(record))
            if len(records) < 1000:
                break
            last = records[-1]
            after = [last.value("created"), last.id]
        await self._changed_now()
        log.info("block list loaded", extra={"active_blocks": len(self._active)})

    async def stop(self) -> None:
        """Stops the expiry timer and closes the store."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
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
            filters += [Eq("live", True), Cmp("until", ">", self._clock())]
        if source:
            filters.append(Eq("source", source))
        # The "now" of active_only is not part of the token: a later page takes its own now.
        records, token = await list_page(
            self.store,
            BLOCKS,
            filters,
            page_size=page_size,
            page_token=page_token,
            query=("ListBlocks", active_only, source),
        )
        return [self._present(BLOCK.load(r)) for r in records], token

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

    def snapshot(self) -> tuple[int, bytes]:
        """The current version and the encoded ECDS resource of the edge's IP-block filter.

        Encoded once per version, whatever the number of Envoy replicas asking.
        """
        if self._snapshot is None or self._snapshot[0] != self._version:
            self._snapshot = (self._version, self._config.resource())
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

    def _activate(self, block: block_pb2.Block) -> None:
        network = ipaddress.ip_network(block.cidr)
        until = until_of(block)
        self._active[block.name] = block
        self._by_network[network] = block.name
        self._config.add(block.name, network, None if until >= FOREVER else _datetime(until))
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
        self._config.remove(name)
        self._version += 1
        return True

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
            with contextlib.suppress(RuntimeError):
                task = asyncio.get_running_loop().create_task(self._changed_now())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _expire_due(self) -> bool:
        """Removes the blocks whose expire time has come; True when any was active."""
        now = self._clock()
        changed = False
        while self._expiries and self._expiries[0][0] <= now:
            _, name = heapq.heappop(self._expiries)
            if self._deactivate(name):
                changed = True
                log.info("block expired", extra={"block": name})
        return changed

    async def _changed_now(self) -> None:
        async with self._changed:
            self._changed.notify_all()


def _within(network: Network, allowed: Network) -> bool:
    return network.version == allowed.version and network.subnet_of(allowed)  # type: ignore[arg-type]
