"""Builds and serves the llm service on the shared runtime."""

from __future__ import annotations

from bhiv_core.runtime import server as runtime
from bhiv_core.runtime.config import RuntimeConfig
from bhiv_core.services.llm.servicer import MISSING, LlmServicer
from bhiv_core.standard_chain import standard_chain

__all__ = ["NAME", "build_server", "definition", "serve"]

NAME = "llm"


def definition(config: RuntimeConfig) -> runtime.ServiceDefinition:
    """Returns what the llm service contributes to the runtime."""
    return runtime.package_definition(NAME, LlmServicer(), MISSING)


async def build_server(config: RuntimeConfig) -> runtime.RunningService:
    """Builds and starts the llm server."""
    return await runtime.start_service(config, definition(config), standard_chain)


def serve() -> None:
    """Runs the llm service until SIGTERM."""
    runtime.serve(NAME, definition, chain=standard_chain)
