"""The llm service for its callers (the agents, integrations' content): ``CompletionService`` via the stubs.

Calls go over :class:`~bhiv_core.runtime.clients.PeerChannels` (``PeerChannels.channel("llm")``),
so they carry the caller's bearer token (the llm service authorizes and meters the original
principal, not orchestration) and the W3C trace context (one trace spans edge, orchestration and
llm). :class:`LlmClient` implements the :class:`~bhiv_core.agents.base.Llm` protocol:

- The default model is read from ``ListModels`` (kept :data:`MODELS_TTL_SECONDS`; an llm that
  does not answer it within :data:`MODELS_TIMEOUT_SECONDS` is not asked again for
  :data:`UNREACHABLE_TTL_SECONDS`): when it is the
  llm service's local extractive responder, or unavailable (no Groq key), :meth:`LlmClient.stream`
  raises :class:`~bhiv_core.agents.base.LlmUnavailable` at once, so the agent's own extractive
  path answers (it knows the passages; the llm's responder only sees text).
- Any error before the first piece (RESOURCE_EXHAUSTED when the caller's budget is spent,
  UNAVAILABLE, DEADLINE_EXCEEDED, a refused or too long prompt) is ``LlmUnavailable`` too, whose
  ``status`` says why (``RESOURCE_EXHAUSTED``, ``UNAVAILABLE``, or empty for "no real model").
- A stream that fails after its first piece raises ``LlmUnavailable`` from the pieces iterator;
  one that the llm service answered with its local responder (a fallback after the first call
  was made) ends with ``model`` empty, so the agent reports the extractive method.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from bhiv.llm.v1 import (
    completion_pb2,
    completion_service_pb2,
    completion_service_pb2_grpc,
    conversation_pb2,
    model_pb2,
    model_service_pb2,
    model_service_pb2_grpc,
)
from bhiv_core.agents.base import LlmReply, LlmUnavailable

__all__ = [
    "LLM_TIMEOUT_SECONDS",
    "MODELS_TIMEOUT_SECONDS",
    "MODELS_TTL_SECONDS",
    "RESOURCE_EXHAUSTED",
    "UNAVAILABLE",
    "UNREACHABLE_TTL_SECONDS",
    "LlmClient",
]

LLM_TIMEOUT_SECONDS = 30.0
"""The deadline of one completion (the agent's own deadline usually ends it first)."""

MODELS_TTL_SECONDS = 60.0
"""How long the llm service's default model is remembered."""

MODELS_TIMEOUT_SECONDS = 2.0
"""The deadline of ListModels: a slow or unreachable llm must not eat the agent's deadline."""

UNREACHABLE_TTL_SECONDS = 10.0
"""How long an llm that did not list its models is not asked again (answers are extractive)."""

log = logging.getLogger(__name__)

UNAVAILABLE = "UNAVAILABLE"
RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"

_FALLBACK_STATUS = {
    completion_pb2.FALLBACK_REASON_MODEL_UNAVAILABLE: "",
    completion_pb2.FALLBACK_REASON_RATE_LIMITED: RESOURCE_EXHAUSTED,
    completion_pb2.FALLBACK_REASON_BUDGET_EXHAUSTED: RESOURCE_EXHAUSTED,
}
"""A fallback's reason as an LlmUnavailable status (provider errors and timeouts: UNAVAILABLE)."""


def _provider(value: int) -> str:
    """``PROVIDER_GROQ`` → ``groq``; empty when unset."""
    if value == model_pb2.PROVIDER_UNSPECIFIED:
        return ""
    return str(model_pb2.Provider.Name(value)).removeprefix("PROVIDER_").lower()  # type: ignore[arg-type]


def _status(code: grpc.StatusCode) -> str:
    """An llm call's failure as an LlmUnavailable status: quota spent, or not reachable."""
    return RESOURCE_EXHAUSTED if code == grpc.StatusCode.RESOURCE_EXHAUSTED else UNAVAILABLE


class LlmClient:
    """The :class:`~bhiv_core.agents.base.Llm` of the agents, over the llm service's stubs.

    Args:
        channel: The channel to llm (``PeerChannels.channel("llm")``), asked for on each call.
        timeout: The deadline of one completion, seconds.
        clock: Monotonic seconds (for the model cache).

    """

    def __init__(
        self,
        channel: Callable[[], grpc.aio.Channel],
        *,
        timeout: float = LLM_TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._channel = channel
        self._timeout = timeout
        self._clock = clock
        self._model: tuple[float, str] | None = None
        self._unreachable = ""  # the status of the last failed ListModels, while it is remembered

    async def _default_model(self) -> str:
        """``models/{id}`` of the default model when it is a real, available one, else empty."""
        now = self._clock()
        if self._model is not None and now - self._model[0] < MODELS_TTL_SECONDS:
            return self._model[1]
        stub: Any = model_service_pb2_grpc.ModelServiceStub(self._channel())
        try:
            listed = await stub.ListModels(
                model_service_pb2.ListModelsRequest(), timeout=min(self._timeout, MODELS_TIMEOUT_SECONDS)
            )
        except grpc.aio.AioRpcError as error:
            # Remembered as "no model" for a short while (the TTL counts from an earlier time).
            self._model = (now - MODELS_TTL_SECONDS + UNREACHABLE_TTL_SECONDS, "")
            self._unreachable = _status(error.code())
            raise LlmUnavailable(
                f"the llm service did not list its models ({error.code().name})", status=_status(error.code())
            ) from None
        chosen = ""
        for model in listed.models:
            if model.is_default and model.available and model.provider != model_pb2.PROVIDER_LOCAL_EXTRACTIVE:
                chosen = model.name
        self._model, self._unreachable = (now, chosen), ""
        return chosen

    async def stream(self, system: str, user: str, *, max_output_tokens: int = 1024) -> LlmReply:
        """Starts a completion of the default model; LlmUnavailable when offline is possible."""
        model = await self._default_model()
        if not model and self._unreachable:
            raise LlmUnavailable("the llm service did not list its models lately", status=self._unreachable)
        if not model:
            raise LlmUnavailable("the llm service has no model beyond its extractive responder")
        request = completion_service_pb2.StreamCompleteRequest(
            model=model,
            messages=[
                conversation_pb2.Message(role=conversation_pb2.MESSAGE_ROLE_SYSTEM, content=system),
                conversation_pb2.Message(role=conversation_pb2.MESSAGE_ROLE_USER, content=user),
            ],
            max_output_tokens=max_output_tokens,
        )
        stub: Any = completion_service_pb2_grpc.CompletionServiceStub(self._channel())
        call = stub.StreamComplete(request, timeout=self._timeout)
        events = aiter(call)
        try:
            first = await anext(events)
        except grpc.aio.AioRpcError as error:
            raise LlmUnavailable(
                f"the llm service refused the completion ({error.code().name})", status=_status(error.code())
            ) from None
        except StopAsyncIteration:
            raise LlmUnavailable(
                "the llm service ended the completion without a reply", status=UNAVAILABLE
            ) from None
        if first.WhichOneof("event") == "completion" and first.completion.fallback:
            call.cancel()
            raise LlmUnavailable(
                f"the llm service fell back: {first.completion.fallback_detail}",
                status=_FALLBACK_STATUS.get(first.completion.fallback_reason, UNAVAILABLE),
            )
        reply = LlmReply(pieces=_no_pieces(), model=model)
        reply.pieces = _pieces(call, events, first, reply)
        return reply


async def _no_pieces() -> AsyncIterator[str]:
    return
    yield  # pragma: no cover - makes this an async generator


async def _pieces(call: Any, events: Any, first: Any, reply: LlmReply) -> AsyncIterator[str]:
    """The deltas of a StreamComplete call; sets ``reply.model`` to empty if a fallback answered."""
    event = first
    try:
        while True:
            kind = event.WhichOneof("event")
            if kind == "delta" and event.delta.content:
                yield event.delta.content
            elif kind == "completion":
                completion = event.completion
                if completion.fallback or completion.provider == model_pb2.PROVIDER_LOCAL_EXTRACTIVE:
                    reply.model = ""
                    reply.fallback = _FALLBACK_STATUS.get(completion.fallback_reason, UNAVAILABLE)
                else:
                    reply.model = completion.model or reply.model
                    reply.provider = _provider(completion.provider)
            try:
                event = await anext(events)
            except StopAsyncIteration:
                return
    except grpc.aio.AioRpcError as error:
        raise LlmUnavailable(
            f"the completion failed part way ({error.code().name})", status=_status(error.code())
        ) from None
    finally:
        call.cancel()
