"""Sentinel's block list: ``bhiv.sentinel.v1.BlockService`` and the edge's deny list over xDS.

- :mod:`.cidr`: the strict parser of addresses and CIDR ranges.
- :mod:`.resources`: blocks on the resource kit, in ``<data_dir>/sentinel-blocks.db`` (or the
  MongoDB of ``BHIV_SENTINEL_STORE_URL``), so a restarted sentinel serves the same list.
- :mod:`.service`: :class:`~.service.BlockList`, the API the rest of sentinel calls::

      block = await blocks.block("203.0.113.7", ttl=timedelta(minutes=5), reason="brute force",
                                 source=BlockSource.AUTOMATIC, incident="incidents/abc",
                                 created_by="sentinel")
      covering = await blocks.active_blocks_for("203.0.113.7")   # most specific first

- :mod:`.rbac`: the list as the RBAC filter config of the edge, encoded by concatenation.
- :mod:`.xds`: the ADS server every Envoy replica subscribes to (``BHIV_SENTINEL_XDS_PORT``).
- :mod:`.servicer`: ``BlockService``.
- :class:`Blocks` (here): all of it as one unit, with its lifetime; :class:`EdgeBlocker` (here):
  the block list as the threat response agent's ``AddressBlocker`` (automatic blocks).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from bhiv_core.registry import EDGE_BLOCK_FILTER
from bhiv_core.runtime.config import RuntimeConfig
from bhiv_core.services.sentinel.blocks.config import BlockConfig
from bhiv_core.services.sentinel.blocks.resources import make_block_store
from bhiv_core.services.sentinel.blocks.service import BlockList, BlockSource, IncidentCheck
from bhiv_core.services.sentinel.blocks.servicer import BlockServicer
from bhiv_core.services.sentinel.blocks.xds import XdsServer

__all__ = ["BlockList", "BlockSource", "Blocks", "EdgeBlocker", "IncidentCheck"]


@dataclass(frozen=True, slots=True)
class Blocks:
    """What sentinel's block list is made of.

    Attributes:
        blocks: The block list (the API of sentinel's other parts).
        xds: The ADS server of the edge.
        servicer: ``bhiv.sentinel.v1.BlockService``.

    """

    blocks: BlockList
    xds: XdsServer
    servicer: BlockServicer

    @classmethod
    def from_config(
        cls,
        config: RuntimeConfig,
        *,
        incident_exists: IncidentCheck | None = None,
        clock: Callable[[], float] = time.time,
    ) -> Blocks:
        """Builds the block list of ``config``; raises ConfigError for a bad setting.

        Args:
            config: The runtime configuration.
            incident_exists: Tells whether an incident exists; None refuses every ``incident``
                reference (NOT_FOUND) until incidents are wired in.
            clock: Unix seconds now.

        """
        settings = BlockConfig.from_runtime(config)
        blocks = BlockList(
            make_block_store(config.data_dir, settings.store_url),
            settings.allowlist,
            filter_name=EDGE_BLOCK_FILTER,
            incident_exists=incident_exists,
            clock=clock,
        )
        xds = XdsServer(blocks, settings.xds_host, settings.xds_port, settings.edge_peers)
        return cls(blocks, xds, BlockServicer(blocks))

    async def start(self) -> None:
        """Loads the list, then serves it to Envoy."""
        await self.blocks.start()
        await self.xds.start()

    async def stop(self) -> None:
        """Stops serving Envoy (which keeps its last list), then closes the store."""
        await self.xds.stop()
        await self.blocks.stop()


@dataclass(frozen=True, slots=True)
class EdgeBlocker:
    """The block list as the threat response agent blocks through it: automatic blocks by ``sentinel``.

    A refusal (an allowlisted address, a bad range) raises, and the agent records it on the
    incident as a failed block.
    """

    blocks: BlockList

    async def block(self, cidr: str, *, ttl: timedelta | None, reason: str, incident: str) -> str:
        """Blocks ``cidr`` for ``ttl`` (None: until lifted); returns ``until <time>`` or ``until lifted``."""
        block = await self.blocks.block(
            cidr,
            ttl=ttl,
            reason=reason[:1000],
            source=BlockSource.AUTOMATIC,
            incident=incident,
            created_by="sentinel",
        )
        if not block.HasField("expire_time"):
            return "until lifted"
        return f"until {block.expire_time.ToJsonString()}"

    async def blocked(self, address: str) -> str | None:
        """The active block covering ``address`` (the most specific), as ``until <time> (blocks/…)``.

        None when none does: expired and lifted blocks are not active.
        """
        covering = await self.blocks.active_blocks_for(address)
        if not covering:
            return None
        first = covering[0]
        until = first.expire_time.ToJsonString() if first.HasField("expire_time") else "lifted"
        return f"until {until} ({first.name})"
