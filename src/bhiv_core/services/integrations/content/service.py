"""ContentService as integrations serves it: the servicer, its llm client, and the hook that closes it."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from bhiv_core.agents.llm_client import LlmClient
from bhiv_core.interceptors.tracing import client_interceptors
from bhiv_core.runtime.clients import PeerChannels
from bhiv_core.runtime.config import RuntimeConfig
from bhiv_core.services.integrations.content.config import ContentConfig, LlmMode
from bhiv_core.services.integrations.content.servicer import ContentServicer

__all__ = ["content_part"]


def content_part(config: RuntimeConfig) -> tuple[ContentServicer, Callable[[], Coroutine[Any, Any, None]]]:
    """The servicer (``BHIV_CONTENT_LLM`` read once) and the stop hook closing its channel to llm.

    The llm service (``BHIV_LLM_ADDR``) is called through the generated stubs over a peer channel
    that forwards the caller's token and trace context; with ``off`` it is never called.
    """
    channels = PeerChannels(config.peers, extra_interceptors=client_interceptors)
    mode = ContentConfig.from_runtime(config).llm
    llm = LlmClient(lambda: channels.channel("llm")) if mode is not LlmMode.OFF else None
    return ContentServicer(llm, mode), channels.close
