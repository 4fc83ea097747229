"""Builds and serves the integrations service on the shared runtime."""

from __future__ import annotations

from bhiv_core.runtime import server as runtime
from bhiv_core.runtime.config import RuntimeConfig
from bhiv_core.services.integrations.servicer import MISSING, IntegrationsServicer
from bhiv_core.standard_chain import standard_chain

__all__ = ["NAME", "build_server", "definition", "serve"]

NAME = "integrations"


def definition(config: RuntimeConfig) -> runtime.ServiceDefinition:
    """Returns what the integrations service contributes to the runtime."""
    return runtime.package_definition(NAME, IntegrationsServicer(), MISSING)


async def build_server(config: RuntimeConfig) -> runtime.RunningService:
    """Builds and starts the integrations server."""
    return await runtime.start_service(config, definition(config), standard_chain)


def serve() -> None:
    """Runs the integrations service until SIGTERM."""
    runtime.serve(NAME, definition, chain=standard_chain)
