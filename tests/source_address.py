"""Calls that come from another loopback address (127.0.0.N), for per-address behaviour at the edge.

grpcio clients cannot bind a source address, so :class:`SourceForwarder` listens on 127.0.0.1 and
relays each connection to the target from ``source``; :func:`channel_from` wraps it as a gRPC
channel. Each channel is one HTTP/2 connection, kept open until the channel closes, so a test can
tell an already-open connection from a new one::

    async with channel_from("127.0.0.7", mesh.edge_address) as channel:
        await stub_of(channel).Check(...)          # the edge sees 127.0.0.7
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc

__all__ = ["SourceForwarder", "channel_from"]


class SourceForwarder:
    """A TCP forwarder whose connections to ``target`` (``host:port``) leave from ``source``.

    Clients dial :attr:`address` (on 127.0.0.1); the target sees them as ``source``.
    """

    def __init__(self, target: str, source: str) -> None:
        self._target = target.rsplit(":", 1)
        self._source = source
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> SourceForwarder:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def address(self) -> str:
        """Where to dial."""
        assert self._server is not None
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = self._target
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                host.strip("[]"), int(port), local_addr=(self._source, 0)
            )
        except OSError:
            writer.close()
            return
        self._writers |= {writer, upstream_writer}
        for pipe in (self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer)):
            task = asyncio.create_task(pipe)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def channel_from(source: str, target: str) -> AsyncIterator[grpc.aio.Channel]:
    """A gRPC channel to ``target`` whose connections come from ``source`` (like ``127.0.0.7``)."""
    async with SourceForwarder(target, source) as forwarder:
        # One connection for the channel's life: no subchannel shared with other channels.
        options = [("grpc.use_local_subchannel_pool", 1)]
        async with grpc.aio.insecure_channel(forwarder.address, options=options) as channel:
            yield channel
