"""Builds and serves the sentinel service on the shared runtime."""

from __future__ import annotations

from bhiv_core.runtime import server as runtime
from bhiv_core.runtime.config import RuntimeConfig
from bhiv_core.runtime.contracts import services_of_package
from bhiv_core.services.sentinel.servicer import MISSING, SentinelServicer

__all__ = ["NAME", "build_server", "definition", "serve"]

NAME = "sentinel"


def definition(config: RuntimeConfig) -> runtime.ServiceDefinition:
    """Returns what the sentinel service contributes to the runtime."""
    servicer = SentinelServicer()
    return runtime.ServiceDefinition(
        name=NAME,
        servicers=[(service, servicer) for service in services_of_package("bhiv.sentinel.v1")],
        missing=MISSING,
    )


async def build_server(config: RuntimeConfig) -> runtime.RunningService:
    """Builds and starts the sentinel server."""
    return await runtime.start_service(config, definition(config))


def serve() -> None:
    """Runs the sentinel service until SIGTERM."""
    runtime.serve(NAME, definition)
