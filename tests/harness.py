"""One harness for tests: real ``grpc.aio`` servers on port 0 with a chosen chain and servicer."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterator, Sequence

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from bhiv_core.runtime.config import RuntimeConfig, load_config
from bhiv_core.runtime.server import (
    ChainFactory,
    RunningService,
    ServiceDefinition,
    basic_chain,
    start_service,
)


def config_for(service: str = "identity", **env: str) -> RuntimeConfig:
    """A config on port 0 with no metrics port, plus ``env`` overrides (``BHIV_`` added)."""
    base = {f"BHIV_{service.upper()}_PORT": "0", f"BHIV_{service.upper()}_METRICS_PORT": "0"}
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
def umask(mask: int) -> Iterator[None]:
    """Runs with the process umask ``mask`` (restored after)."""
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)
