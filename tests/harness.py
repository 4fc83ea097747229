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


@contextlib.asynccontextmanager
async def relay(target: str, source: str) -> AsyncIterator[str]:
    """A TCP relay on 127.0.0.1 whose connections reach ``target`` (``host:port``) from ``source``.

    grpcio clients cannot choose their source address: a channel to the yielded ``host:port``
    reaches ``target`` as a peer at ``source`` (any 127.0.0.0/8 address), like the edge or a
    client on another address.
    """
    host, port = target.rsplit(":", 1)

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(host, int(port), local_addr=(source, 0))
        except OSError:
            writer.close()
            return
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(connect, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    """Runs with the process umask ``mask`` (restored after)."""
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)
