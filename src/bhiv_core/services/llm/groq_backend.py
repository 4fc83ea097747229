"""The Groq backend, through the official ``groq`` SDK's async client.

Retries: the SDK retries a request Groq answered 408, 409, 429 or 5xx, or did not answer in time,
``max_retries`` times with exponential backoff and jitter, honouring ``retry-after(-ms)``. What
still fails becomes a :class:`~bhiv_core.services.llm.backends.ProviderFailure` with the contract's
fallback reason; a reply that is not a chat completion (no choices, no text) is a provider error too.
Nothing the SDK raises reaches the caller as INTERNAL or UNKNOWN.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import groq
import pydantic

from bhiv.llm.v1 import completion_pb2
from bhiv_core.runtime.errors import clip
from bhiv_core.services.llm.backends import ChatRequest, ChatResult, ProviderFailure, count_tokens
from bhiv_core.services.llm.config import LlmConfig

__all__ = ["GroqBackend"]

_FINISH = {
    "stop": completion_pb2.FINISH_REASON_STOP,
    "length": completion_pb2.FINISH_REASON_LENGTH,
    "content_filter": completion_pb2.FINISH_REASON_CONTENT_FILTER,
}


@contextmanager
def _failures() -> Iterator[None]:
    """Turns what the SDK raises into ProviderFailure (never the key, never a raw body)."""
    try:
        yield
    except groq.APITimeoutError as exc:
        raise ProviderFailure(
            completion_pb2.FALLBACK_REASON_PROVIDER_TIMEOUT, "Groq did not answer in time"
        ) from exc
    except groq.RateLimitError as exc:
        raise ProviderFailure(
            completion_pb2.FALLBACK_REASON_RATE_LIMITED, "Groq answered 429 (rate limited) after every retry"
        ) from exc
    except groq.APIStatusError as exc:
        raise ProviderFailure(
            completion_pb2.FALLBACK_REASON_PROVIDER_ERROR, f"Groq answered HTTP {exc.status_code}"
        ) from exc
    except groq.APIConnectionError as exc:
        raise ProviderFailure(
            completion_pb2.FALLBACK_REASON_PROVIDER_ERROR, "cannot connect to Groq"
        ) from exc
    except (groq.APIError, pydantic.ValidationError, ValueError, TypeError, AttributeError) as exc:
        raise ProviderFailure(
            completion_pb2.FALLBACK_REASON_PROVIDER_ERROR,
            clip(f"malformed reply from Groq: {type(exc).__name__}"),
        ) from exc


def _usage(usage: Any, request: ChatRequest, text: str) -> tuple[int, int]:
    """(input, output) tokens as Groq reported them, else estimated."""
    prompt = getattr(usage, "prompt_tokens", None)
    completion = getattr(usage, "completion_tokens", None)
    if isinstance(prompt, int) and isinstance(completion, int) and prompt >= 0 and completion >= 0:
        return prompt, completion
    return sum(count_tokens(c) for _, c in request.messages), count_tokens(text)


class GroqBackend:
    """The Groq :class:`~bhiv_core.services.llm.backends.Backend`."""

    def __init__(self, config: LlmConfig):
        self._client = groq.AsyncGroq(
            api_key=config.groq_api_key,
            base_url=config.groq_base_url,
            timeout=config.groq_timeout_seconds,
            max_retries=config.groq_max_retries,
        )

    def _arguments(self, request: ChatRequest) -> dict[str, Any]:
        return {
            "model": request.model_id,
            "messages": [{"role": role, "content": content} for role, content in request.messages],
            "max_tokens": request.max_output_tokens,
            "temperature": request.temperature,
        }

    async def complete(self, request: ChatRequest) -> ChatResult:
        """Asks Groq for the whole reply."""
        with _failures():
            reply = await self._client.chat.completions.create(**self._arguments(request))
            if not reply.choices or not isinstance(reply.choices[0].message.content, str):
                raise ValueError("no choice with text")
            text = reply.choices[0].message.content
            inputs, outputs = _usage(reply.usage, request, text)
            return ChatResult(
                text=text,
                finish_reason=_FINISH.get(
                    str(reply.choices[0].finish_reason), completion_pb2.FINISH_REASON_STOP
                ),
                input_tokens=inputs,
                output_tokens=outputs,
            )

    async def stream(self, request: ChatRequest) -> AsyncIterator[str | ChatResult]:
        """Streams Groq's reply: its text pieces, then the whole reply with usage."""
        parts: list[str] = []
        finish: completion_pb2.FinishReason.ValueType = completion_pb2.FINISH_REASON_STOP
        usage: Any = None
        with _failures():
            chunks = await self._client.chat.completions.create(**self._arguments(request), stream=True)
            async for chunk in chunks:
                usage = getattr(chunk.x_groq, "usage", None) or chunk.usage or usage
                for choice in chunk.choices:
                    if choice.finish_reason:
                        finish = _FINISH.get(choice.finish_reason, completion_pb2.FINISH_REASON_STOP)
                    piece = choice.delta.content
                    if piece:
                        parts.append(piece)
                        yield piece
        text = "".join(parts)
        inputs, outputs = _usage(usage, request, text)
        yield ChatResult(text=text, finish_reason=finish, input_tokens=inputs, output_tokens=outputs)

    async def close(self) -> None:
        """Closes the SDK's connection pool."""
        await self._client.close()
