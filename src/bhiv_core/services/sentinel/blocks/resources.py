"""Blocks on the resource kit, in a kit store of their own (``sentinel-blocks``).

``blocks/{id}``, newest first. Store-only fields: ``cidr`` (the normalised range, to find an
active block of the same range), ``live`` (the stored message's ``active``: cleared when the block
is lifted, and by sentinel soon after it expires, or at its next start), ``until`` (the expire time
in Unix seconds, or :data:`FOREVER` when the block lasts until lifted) and ``source``. A block's
``active`` is computed again on every read from its lift and expire times, so an expired block
reads inactive at once, before its record is rewritten.

``<data_dir>/sentinel-blocks.db``, or the MongoDB database ``bhiv_sentinel-blocks`` of
``BHIV_SENTINEL_STORE_URL``.
"""

from __future__ import annotations

from pathlib import Path

from bhiv.sentinel.v1 import block_pb2
from bhiv_core.resources import Collection, Field, ResourceStore, ResourceType, Value, make_resource_store
from bhiv_core.resources.sqlite import schema
from bhiv_core.runtime.times import seconds_of

__all__ = ["BLOCK", "BLOCKS", "FOREVER", "MIGRATIONS", "STORE_NAME", "make_block_store", "until_of"]

STORE_NAME = "sentinel-blocks"
FOREVER = 1e18
"""The ``until`` of a block without an expire time."""

BLOCKS = Collection(
    "blocks",
    (
        Field("created", "real"),
        Field("cidr", "text"),
        Field("live", "bool"),
        Field("until", "real"),
        Field("source", "int"),
    ),
    order=("created",),
    descending=True,
    indexes=(("live", "until"), ("cidr", "live"), ("source",)),
)


def until_of(block: block_pb2.Block) -> float:
    """When a block ends, in Unix seconds; :data:`FOREVER` when it lasts until lifted."""
    return seconds_of(block.expire_time) if block.HasField("expire_time") else FOREVER


def _fields(m: block_pb2.Block) -> dict[str, Value]:
    return {
        "created": seconds_of(m.create_time),
        "cidr": m.cidr,
        "live": m.active,
        "until": until_of(m),
        "source": int(m.source),
    }


BLOCK: ResourceType[block_pb2.Block] = ResourceType(
    message=block_pb2.Block,
    collection=BLOCKS,
    index=_fields,
    mutable=frozenset(),  # changed only by UnblockAddress
    label="block",
    request_field="block",
)

MIGRATIONS = (schema((BLOCKS,)),)


def make_block_store(data_dir: Path, url: str | None) -> ResourceStore:
    """The blocks' kit store: ``<data_dir>/sentinel-blocks.db``, or MongoDB by ``url``."""
    return make_resource_store(
        name=STORE_NAME, collections=(BLOCKS,), migrations=MIGRATIONS, data_dir=data_dir, url=url
    )
