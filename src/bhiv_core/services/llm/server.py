"""Builds and serves the llm service on the shared runtime."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from bhiv_core.resources import make_resource_store
from bhiv_core.resources.sqlite import schema
from bhiv_core.runtime import server as runtime
from bhiv_core.runtime.config import RuntimeConfig
from bhiv_core.services.llm.backends import Backend
from bhiv_core.services.llm.completions import Completions
from bhiv_core.services.llm.config import LlmConfig
from bhiv_core.services.llm.conversations import CONVERSATIONS, MESSAGES, Conversations
from bhiv_core.services.llm.extractive import ExtractiveBackend
from bhiv_core.services.llm.groq_backend import GroqBackend
from bhiv_core.services.llm.servicer import MISSING, LlmServicer
from bhiv_core.services.llm.usage import BUDGETS, USAGE_RECORDS, Usage
from bhiv_core.standard_chain import standard_chain

__all__ = ["COLLECTIONS", "MIGRATIONS", "NAME", "build_server", "definition", "serve"]

NAME = "llm"
COLLECTIONS = (USAGE_RECORDS, BUDGETS, CONVERSATIONS, MESSAGES)
MIGRATIONS = (schema(COLLECTIONS),)
"""llm's SQLite schema versions: a later change appends a script."""


def definition(
    config: RuntimeConfig, environ: Mapping[str, str] | None = None, *, clock: Callable[[], float] = time.time
) -> runtime.ServiceDefinition:
    """Returns what the llm service contributes to the runtime.

    Groq is used when a key is configured (``BHIV_LLM_GROQ_API_KEY_FILE`` or ``GROQ_API_KEY``);
    the local extractive responder always is. The usage ledger and budgets live in
    ``<data_dir>/llm.db`` (or ``BHIV_LLM_STORE_URL``), opened before the server accepts calls.
    """
    llm = LlmConfig.from_runtime(config, environ)
    groq: Backend | None = GroqBackend(llm) if llm.groq_api_key else None
    store = make_resource_store(
        name=NAME, collections=COLLECTIONS, migrations=MIGRATIONS, data_dir=config.data_dir, url=llm.store_url
    )
    usage = Usage(store, llm.default_budget_micros, clock)
    conversations = Conversations(store, clock)
    completions = Completions(llm, ExtractiveBackend(), groq, usage, conversations)
    built = runtime.package_definition(NAME, LlmServicer(completions, usage, conversations), MISSING)
    built.checks = {"store": store.ping}
    built.on_start = [store.open]
    built.on_stop = [completions.close, store.close]
    return built


async def build_server(config: RuntimeConfig) -> runtime.RunningService:
    """Builds and starts the llm server."""
    return await runtime.start_service(config, definition(config), standard_chain)


def serve() -> None:
    """Runs the llm service until SIGTERM."""
    runtime.serve(NAME, definition, chain=standard_chain)
