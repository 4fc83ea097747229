"""One harness for tests: real ``grpc.aio`` servers on port 0 with a chosen chain and servicer."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterator, Sequence

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from bhiv_core.registry import EDGE_SOURCE_ADDRESS
from bhiv_core.runtime.config import RuntimeConfig, load_config
from bhiv_core.runtime.server import ChainFactory, RunningService, ServiceDefinition, start_service
from bhiv_core.security.address import parse_edge_peers, trust_edge_peers
from bhiv_core.standard_chain import basic_chain


def config_for(service: str = "identity", **env: str) -> RuntimeConfig:
    """A config on port 0 (sentinel's access-log and xDS ports too) with no metrics port, plus ``env``."""
    base = {f"BHIV_{service.upper()}_PORT": "0", f"BHIV_{service.upper()}_METRICS_PORT": "0"}
    if service == "sentinel":  # its Envoy-facing ports (access log, deny list), on free ports too
        base["BHIV_SENTINEL_ACCESS_LOG_PORT"] = "0"
        base["BHIV_SENTINEL_XDS_PORT"] = "0"
    base |= {f"BHIV_{k}": v for k, v in env.items()}
    return load_config(service, base)


@contextlib.asynccontextmanager
async def serving(
    servicers: Sequence[tuple[ServiceDescriptor, object]],
    *,
    chain: ChainFactory = basic_chain,
    config: RuntimeConfig | None = None,
    checks: dict | None = None,
) -> AsyncIterator[tuple[RunningService, grpc.aio.Channel]]:
    """Starts a server with ``servicers`` and yields it with a channel to it."""
    config = config or config_for()
    definition = ServiceDefinition(config.service, servicers, missing="test", checks=checks or {})
    running = await start_service(config, definition, chain)
    channel = grpc.aio.insecure_channel(running.address)
    try:
        yield running, channel
    finally:
        await channel.close()
        await running.stop(grace=0.5)


@contextlib.contextmanager
def trusting_edge(*peers: str) -> Iterator[None]:
    """Makes ``peers`` the trusted edge addresses of this process for a while (default after)."""
    trust_edge_peers(parse_edge_peers(",".join(peers)))
    try:
        yield
    finally:
        trust_edge_peers(parse_edge_peers(EDGE_SOURCE_ADDRESS))


OWN_CONNECTION: tuple[tuple[str, int], ...] = (("grpc.use_local_subchannel_pool", 1),)
"""Options for a channel that opens a connection of its own.

grpcio shares connections between the channels of a process that dial one target with the same
options (a global subchannel pool): without these, a "new" channel rides an already-open connection.
"""


class Relay:
    """A TCP relay on 127.0.0.1 whose connections reach ``target`` (``host:port``) from ``source``.

    grpcio clients cannot choose their source address: a channel to :attr:`address` reaches
    ``target`` as a peer at ``source`` (any 127.0.0.0/8 address), like the edge or a client on
    another address. Each client connection is relayed over one upstream connection of its own, so
    a channel kept open stays on one connection to ``target`` (an *already-open* connection) while
    a new channel, or one whose connection :meth:`cut` closed, opens another (a *new* one):
    :attr:`connections` counts them and :attr:`peers` says where each came from.

    Example::

        async with Relay(mesh.edge_address, "127.0.0.2") as client_at_127_0_0_2:
            channel = grpc.aio.insecure_channel(client_at_127_0_0_2.address, options=OWN_CONNECTION)
    """

    def __init__(self, target: str, source: str) -> None:
        """Prepares (not starts) a relay to ``target`` from ``source``; see :meth:`start`."""
        host, port = target.rsplit(":", 1)
        self.target = (host.strip("[]"), int(port))
        self.source = source
        self.address = ""
        self.peers: list[tuple[str, int]] = []
        """``(address, port)`` of every upstream connection so far, as ``target`` saw its peer."""
        self._server: asyncio.Server | None = None
        # Each relayed connection's two writers (client side, upstream side) and the task relaying it.
        self._open: dict[tuple[asyncio.StreamWriter, asyncio.StreamWriter], asyncio.Future[object]] = {}

    @property
    def connections(self) -> int:
        """How many upstream connections the relay has opened so far."""
        return len(self.peers)

    @property
    def open_connections(self) -> int:
        """How many relayed connections are open now."""
        return len(self._open)

    async def start(self) -> Relay:
        """Listens on a free port of 127.0.0.1 (:attr:`address`); returns itself."""
        self._server = await asyncio.start_server(self._connect, "127.0.0.1", 0)
        self.address = f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def cut(self) -> int:
        """Closes every relayed connection, both ways, as a network would; returns how many.

        A channel whose connection was cut opens a new one on its next call.
        """
        relaying = dict(self._open)
        for client, upstream in relaying:
            client.close()
            upstream.close()
        await asyncio.gather(*relaying.values(), return_exceptions=True)
        for pair in relaying:
            self._open.pop(pair, None)
        return len(relaying)

    async def close(self) -> None:
        """Stops listening and closes every relayed connection."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        await self.cut()

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target, local_addr=(self.source, 0))
        except OSError:
            writer.close()
            return
        host, port = up_writer.get_extra_info("sockname")[:2]
        self.peers.append((host, port))
        pair = (writer, up_writer)
        relaying = asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        self._open[pair] = relaying
        try:
            await relaying
        finally:
            self._open.pop(pair, None)

    async def __aenter__(self) -> Relay:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copies ``reader`` to ``writer`` until either side ends, then closes ``writer``."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def relay(target: str, source: str) -> AsyncIterator[str]:
    """A :class:`Relay` from ``source`` to ``target``; yields the ``host:port`` a client dials."""
    async with Relay(target, source) as running:
        yield running.address


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    """Runs with the process umask ``mask`` (restored after)."""
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)
