"""Builds and serves the llm service on the shared runtime."""

from __future__ import annotations

from collections.abc import Mapping

from bhiv_core.runtime import server as runtime
from bhiv_core.runtime.config import RuntimeConfig
from bhiv_core.services.llm.backends import Backend
from bhiv_core.services.llm.completions import Completions
from bhiv_core.services.llm.config import LlmConfig
from bhiv_core.services.llm.extractive import ExtractiveBackend
from bhiv_core.services.llm.groq_backend import GroqBackend
from bhiv_core.services.llm.servicer import MISSING, LlmServicer
from bhiv_core.standard_chain import standard_chain

__all__ = ["NAME", "build_server", "definition", "serve"]

NAME = "llm"


def definition(config: RuntimeConfig, environ: Mapping[str, str] | None = None) -> runtime.ServiceDefinition:
    """Returns what the llm service contributes to the runtime.

    Groq is used when a key is configured (``BHIV_LLM_GROQ_API_KEY_FILE`` or ``GROQ_API_KEY``);
    the local extractive responder always is.
    """
    llm = LlmConfig.from_runtime(config, environ)
    groq: Backend | None = GroqBackend(llm) if llm.groq_api_key else None
    completions = Completions(llm, ExtractiveBackend(), groq)
    built = runtime.package_definition(NAME, LlmServicer(completions), MISSING)
    built.on_stop = [*built.on_stop, completions.close]
    return built


async def build_server(config: RuntimeConfig) -> runtime.RunningService:
    """Builds and starts the llm server."""
    return await runtime.start_service(config, definition(config), standard_chain)


def serve() -> None:
    """Runs the llm service until SIGTERM."""
    runtime.serve(NAME, definition, chain=standard_chain)
