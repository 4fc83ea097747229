"""The BlockService servicer: proto in, :class:`~.service.BlockList` call, proto out."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from bhiv.sentinel.v1 import block_service_pb2 as bs
from bhiv_core.runtime.errors import FieldViolation, InvalidArgument
from bhiv_core.security.principal import require_principal
from bhiv_core.services.sentinel.blocks.service import BlockList, BlockSource

__all__ = ["BlockServicer"]


def _ttl(request: bs.BlockAddressRequest) -> timedelta | None:
    if not request.HasField("ttl"):
        return None
    ttl = request.ttl
    # A Duration's nanos must be in range and share the seconds' sign; anything else is not a time.
    if not -999_999_999 <= ttl.nanos <= 999_999_999 or (
        ttl.seconds and ttl.nanos and (ttl.seconds < 0) != (ttl.nanos < 0)
    ):
        raise InvalidArgument(
            violations=[FieldViolation("ttl", "is not a valid duration", "INVALID_DURATION")]
        )
    if abs(ttl.seconds) > 10**10:
        raise InvalidArgument(
            violations=[FieldViolation("ttl", "must be from 1 second to 30 days", "OUT_OF_RANGE")]
        )
    return timedelta(seconds=ttl.seconds, microseconds=ttl.nanos / 1000)


class BlockServicer:
    """Implements ``bhiv.sentinel.v1.BlockService``.

    Args:
        blocks: The block list.

    """

    def __init__(self, blocks: BlockList):
        self._blocks = blocks

    async def BlockAddress(self, request: bs.BlockAddressRequest, context: Any) -> bs.BlockAddressResponse:
        """Blocks an address or range at the edge, now."""
        principal = require_principal()
        block = await self._blocks.block(
            request.cidr,
            ttl=_ttl(request),
            reason=request.reason,
            source=BlockSource.MANUAL,
            incident=request.incident,
            created_by=principal.subject,
            request_id=request.request_id,
            request=request,
        )
        return bs.BlockAddressResponse(block=block)

    async def UnblockAddress(
        self, request: bs.UnblockAddressRequest, context: Any
    ) -> bs.UnblockAddressResponse:
        """Lifts a block, now."""
        block = await self._blocks.unblock(request.name, lifted_by=require_principal().subject)
        return bs.UnblockAddressResponse(block=block)

    async def ListBlocks(self, request: bs.ListBlocksRequest, context: Any) -> bs.ListBlocksResponse:
        """Lists blocks, newest first."""
        blocks, token = await self._blocks.list_page(
            page_size=request.page_size,
            page_token=request.page_token,
            active_only=request.active_only,
            source=int(request.source),
        )
        return bs.ListBlocksResponse(blocks=blocks, next_page_token=token)

    async def GetBlock(self, request: bs.GetBlockRequest, context: Any) -> bs.GetBlockResponse:
        """Gets a block."""
        return bs.GetBlockResponse(block=await self._blocks.get(request.name))

    async def CheckAddress(self, request: bs.CheckAddressRequest, context: Any) -> bs.CheckAddressResponse:
        """Tells whether an address is blocked now, and by which block (the most specific)."""
        block = self._blocks.check(request.address)
        if block is None:
            return bs.CheckAddressResponse(blocked=False)
        return bs.CheckAddressResponse(blocked=True, block=block)
