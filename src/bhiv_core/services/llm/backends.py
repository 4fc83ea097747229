"""The one small interface every completion backend implements, and what crosses it."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol

from bhiv.llm.v1 import completion_pb2

__all__ = ["Backend", "ChatRequest", "ChatResult", "ProviderFailure", "Role", "count_tokens"]

Role = Literal["system", "user", "assistant"]

_TOKEN = re.compile(r"\w+|[^\w\s]")


def count_tokens(text: str) -> int:
    """An estimate of a text's tokens (words and punctuation marks), for backends that report none."""
    return len(_TOKEN.findall(text))


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A chat to complete, already validated.

    Attributes:
        model_id: The model, without ``models/``.
        messages: ``(role, content)`` pairs, oldest first; the last is the user's.
        max_output_tokens: The most tokens to write (1-8192).
        temperature: The sampling temperature (0-2).

    """

    model_id: str
    messages: tuple[tuple[Role, str], ...]
    max_output_tokens: int
    temperature: float


@dataclass(frozen=True, slots=True)
class ChatResult:
    """A backend's whole reply.

    Attributes:
        text: The reply text.
        finish_reason: Why it stopped.
        input_tokens: The prompt's tokens (as the backend counted them).
        output_tokens: The reply's tokens.

    """

    text: str
    finish_reason: completion_pb2.FinishReason.ValueType
    input_tokens: int
    output_tokens: int


class ProviderFailure(Exception):
    """A backend could not answer; the service falls back or answers UNAVAILABLE.

    Attributes:
        reason: The contract's fallback reason.
        detail: What happened, for a person (never a key or a raw body).

    """

    def __init__(self, reason: completion_pb2.FallbackReason.ValueType, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class Backend(Protocol):
    """A provider of completions."""

    async def complete(self, request: ChatRequest) -> ChatResult:
        """Returns the whole reply; raises ProviderFailure when the provider cannot answer."""
        ...

    def stream(self, request: ChatRequest) -> AsyncIterator[str | ChatResult]:
        """Yields text pieces, then one ChatResult with the whole reply; raises ProviderFailure."""
        ...

    async def close(self) -> None:
        """Releases connections."""
        ...
