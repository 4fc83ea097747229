"""Calls that come from another loopback address (127.0.0.N), for per-address behaviour at the edge.

grpcio clients cannot bind a source address, so :func:`channel_from` dials the target through a
:class:`tests.harness.Relay` bound to ``source``. The channel opens a connection of its own
(:data:`tests.harness.OWN_CONNECTION`) and keeps it until it closes, so a test can tell an
already-open connection from a new one::

    async with channel_from("127.0.0.7", mesh.edge_address) as channel:
        await stub_of(channel).Check(...)          # the edge sees 127.0.0.7
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc

from tests.harness import OWN_CONNECTION, Relay

__all__ = ["channel_from"]


@contextlib.asynccontextmanager
async def channel_from(source: str, target: str) -> AsyncIterator[grpc.aio.Channel]:
    """A gRPC channel to ``target`` whose connection comes from ``source`` (like ``127.0.0.7``)."""
    async with (
        Relay(target, source) as relay,
        grpc.aio.insecure_channel(relay.address, options=OWN_CONNECTION) as channel,
    ):
        yield channel
