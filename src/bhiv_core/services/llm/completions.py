"""Completions and models: checks a chat, picks the backend, falls back, and says who answered.

Errors (the contract's, mapped by the error interceptor):

* INVALID_ARGUMENT with field violations: a system message after another role, a last message that
  is not the user's, an input that does not fit the model's context window, a bad page token.
* NOT_FOUND: an unknown model.
* NOT_FOUND: a ``conversation`` that does not exist or is another principal's.
* ABORTED (``STALE_ETAG``): the conversation changed while the reply was written.
* RESOURCE_EXHAUSTED (reason ``BUDGET_EXHAUSTED``, with a ``QuotaFailure`` naming the principal):
  a Groq model was asked for, the caller's monthly budget is used up and ``BHIV_LLM_FALLBACK=off``;
  with the default (``on``) the local responder answers, with ``FALLBACK_REASON_BUDGET_EXHAUSTED``,
  as the contract says.
* UNAVAILABLE (reason ``PROVIDER_TIMEOUT``, ``PROVIDER_RATE_LIMITED`` or ``PROVIDER_ERROR``): Groq
  failed and ``BHIV_LLM_FALLBACK=off``; with the default (``on``) the local extractive responder
  answers instead, with ``fallback`` and its reason set. A stream that already sent text when Groq
  failed ends with UNAVAILABLE (it cannot switch provider mid-reply).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Final

from bhiv.llm.v1 import (
    completion_pb2,
    completion_service_pb2,
    conversation_pb2,
    conversation_service_pb2,
    model_pb2,
    model_service_pb2,
    usage_pb2,
)
from bhiv_core.resources.fixed_pages import fixed_page
from bhiv_core.runtime.errors import (
    Aborted,
    FieldViolation,
    InvalidArgument,
    NotFound,
    QuotaViolation,
    ResourceExhausted,
    Unavailable,
)
from bhiv_core.security.principal import Principal
from bhiv_core.services.llm.backends import (
    Backend,
    ChatRequest,
    ChatResult,
    ProviderFailure,
    Role,
    count_tokens,
)
from bhiv_core.services.llm.config import GROQ_MODELS, LOCAL_MODEL, LlmConfig, ModelSpec
from bhiv_core.services.llm.conversations import Conversations, History
from bhiv_core.services.llm.safety import WITHHELD, SafetyFilter
from bhiv_core.services.llm.usage import Usage, principal_name

__all__ = ["Completions"]

DEFAULT_OUTPUT_TOKENS: Final = 1024
DEFAULT_TEMPERATURE: Final = 0.7
DEFAULT_PAGE_SIZE: Final = 50
MAX_PAGE_SIZE: Final = 500
NO_KEY: Final = "GROQ_API_KEY is not set"
_SCREEN_WINDOW: Final = 1024
"""Characters of a streamed reply screened again with each new piece (longer than any marker)."""

_ROLES: Final[dict[int, Role]] = {
    conversation_pb2.MESSAGE_ROLE_SYSTEM: "system",
    conversation_pb2.MESSAGE_ROLE_USER: "user",
    conversation_pb2.MESSAGE_ROLE_ASSISTANT: "assistant",
}
_UNAVAILABLE_REASONS: Final = {
    completion_pb2.FALLBACK_REASON_PROVIDER_TIMEOUT: "PROVIDER_TIMEOUT",
    completion_pb2.FALLBACK_REASON_RATE_LIMITED: "PROVIDER_RATE_LIMITED",
}

ChatRequestProto = completion_service_pb2.CompleteRequest | completion_service_pb2.StreamCompleteRequest


class Completions:
    """The completion and model domain of the llm service.

    Args:
        config: The llm settings.
        local: The offline backend.
        groq: The Groq backend, or None when no key is configured.
        usage: The ledger every completion is recorded in and priced ones are checked against.

    """

    def __init__(
        self,
        config: LlmConfig,
        local: Backend,
        groq: Backend | None,
        usage: Usage,
        conversations: Conversations,
    ):
        self._usage = usage
        self._conversations = conversations
        self._safety = SafetyFilter()
        self._config = config
        self._local = local
        self._groq = groq
        self._models = {m.model_id: m for m in (LOCAL_MODEL, *GROQ_MODELS)}

    def _available(self, spec: ModelSpec) -> bool:
        return spec.provider == model_pb2.PROVIDER_LOCAL_EXTRACTIVE or self._groq is not None

    def _prepare(self, request: ChatRequestProto, history: History | None) -> tuple[ModelSpec, ChatRequest]:
        """The model and the checked chat of a request; raises the contract's errors.

        With a conversation, the chat sent is its system prompt, the request's system messages,
        its stored messages, then the request's other messages.
        """
        stored_model = history.conversation.model if history is not None else ""
        given = request.model or stored_model
        model_id = given.removeprefix("models/") if given else self._config.default_model
        spec = self._models.get(model_id)
        if spec is None:
            raise NotFound(
                f"model models/{model_id} does not exist (see ListModels)", reason="MODEL_NOT_FOUND"
            )
        if not request.messages:
            raise InvalidArgument(
                violations=[FieldViolation("messages", "at least one message is required", "REQUIRED")]
            )
        violations = []
        seen_other = False
        for i, message in enumerate(request.messages):
            if message.role not in _ROLES:
                violations.append(
                    FieldViolation(f"messages[{i}].role", "must be a defined role", "UNDEFINED")
                )
            if message.role == conversation_pb2.MESSAGE_ROLE_SYSTEM and seen_other:
                violations.append(
                    FieldViolation(
                        f"messages[{i}].role", "system messages must come first", "SYSTEM_NOT_FIRST"
                    )
                )
            seen_other = seen_other or message.role != conversation_pb2.MESSAGE_ROLE_SYSTEM
        last = len(request.messages) - 1
        if request.messages[last].role != conversation_pb2.MESSAGE_ROLE_USER:
            violations.append(
                FieldViolation(f"messages[{last}].role", "the last message must be the user's", "NOT_USER")
            )
        if violations:
            raise InvalidArgument(violations=violations)
        max_output = request.max_output_tokens or DEFAULT_OUTPUT_TOKENS
        messages = tuple((_ROLES[m.role], m.content) for m in request.messages)
        if history is not None:
            prompt = history.conversation.system_prompt
            messages = (
                *((("system", prompt),) if prompt else ()),
                *(m for m in messages if m[0] == "system"),
                *((_ROLES[m.role], m.content) for m in history.messages if m.role in _ROLES),
                *(m for m in messages if m[0] != "system"),
            )
        # The safety filter: instruction-like text in the context never reaches a model.
        messages = (*((role, self._safety.neutralise(text)) for role, text in messages[:-1]), messages[-1])
        if sum(count_tokens(c) for _, c in messages) + max_output > spec.context_window_tokens:
            violations.append(
                FieldViolation(
                    "messages",
                    "the input plus max_output_tokens exceeds the model's "
                    f"{spec.context_window_tokens}-token window",
                    "TOO_LONG",
                )
            )
        if violations:
            raise InvalidArgument(violations=violations)
        temperature = request.temperature if request.HasField("temperature") else DEFAULT_TEMPERATURE
        return spec, ChatRequest(model_id, messages, max_output, temperature)

    async def _backend(self, spec: ModelSpec, principal: str) -> tuple[Backend, ProviderFailure | None]:
        """The backend that serves ``spec`` for ``principal``, and why it is not the model's own."""
        if spec.provider == model_pb2.PROVIDER_GROQ:
            if self._groq is not None:
                budget, left = await self._usage.remaining(principal)
                if left > 0:
                    return self._groq, None
                detail = f"the monthly budget of {principal} ({budget} micro-USD) is used up"
                if not self._config.fallback:
                    raise ResourceExhausted(
                        detail, violations=[QuotaViolation(principal, detail)], reason="BUDGET_EXHAUSTED"
                    )
                return self._local, ProviderFailure(completion_pb2.FALLBACK_REASON_BUDGET_EXHAUSTED, detail)
            return self._local, self._fallback(
                ProviderFailure(completion_pb2.FALLBACK_REASON_MODEL_UNAVAILABLE, NO_KEY)
            )
        return self._local, None

    def _fallback(self, failure: ProviderFailure) -> ProviderFailure:
        """The failure, when falling back is allowed; else UNAVAILABLE."""
        if not self._config.fallback:
            raise Unavailable(
                f"{failure.detail}; the local fallback is off (BHIV_LLM_FALLBACK=off)",
                reason=_UNAVAILABLE_REASONS.get(failure.reason, "PROVIDER_ERROR"),
            )
        return failure

    def _completion(
        self, spec: ModelSpec, result: ChatResult, failure: ProviderFailure | None
    ) -> completion_pb2.Completion:
        served = LOCAL_MODEL if failure is not None else spec
        cost = (
            result.input_tokens * served.input_price_micros
            + result.output_tokens * served.output_price_micros
        ) // 1_000_000
        text, finish = result.text, result.finish_reason
        if self._safety.unsafe_reply(text):
            text, finish = WITHHELD, completion_pb2.FINISH_REASON_CONTENT_FILTER
        completion = completion_pb2.Completion(
            message=conversation_pb2.Message(role=conversation_pb2.MESSAGE_ROLE_ASSISTANT, content=text),
            finish_reason=finish,
            usage=usage_pb2.TokenUsage(
                input_tokens=result.input_tokens,
                output_tokens=result.output_tokens,
                total_tokens=result.input_tokens + result.output_tokens,
                cost_micros=cost,
                currency_code="USD",
            ),
            model=f"models/{served.model_id}",
            provider=served.provider,
        )
        if failure is not None:
            completion.fallback = True
            completion.fallback_reason = failure.reason
            completion.fallback_detail = (
                f"models/{spec.model_id}: {failure.detail}; answered by the local extractive responder"
            )
        return completion

    async def _record(self, principal: str, completion: completion_pb2.Completion) -> None:
        usage = completion.usage
        await self._usage.record(principal, usage.input_tokens, usage.output_tokens, usage.cost_micros)

    async def _history(self, request: ChatRequestProto, caller: Principal) -> History | None:
        if not request.conversation:
            return None
        return await self._conversations.history(request.conversation, caller)

    async def _keep(
        self,
        history: History | None,
        caller: Principal,
        request: ChatRequestProto,
        completion: completion_pb2.Completion,
    ) -> tuple[list[conversation_pb2.Message], str]:
        """Appends the request's non-system messages and the reply to the conversation, if any."""
        if history is None:
            return [], ""
        kept = [m for m in request.messages if m.role != conversation_pb2.MESSAGE_ROLE_SYSTEM]
        stored, etag = await self._conversations.append(history, caller, [*kept, completion.message])
        completion.message.CopyFrom(stored[-1])
        return stored[:-1], etag

    def check_model(self, model: str) -> None:
        """NOT_FOUND for a named model the service does not know (empty: the default)."""
        if model and model.removeprefix("models/") not in self._models:
            raise NotFound(f"model {model} does not exist (see ListModels)", reason="MODEL_NOT_FOUND")

    async def append_message(
        self, request: conversation_service_pb2.AppendMessageRequest, caller: Principal
    ) -> conversation_service_pb2.AppendMessageResponse:
        """Appends a user message to one of the caller's conversations and completes it."""
        chat = completion_service_pb2.CompleteRequest(
            model=request.model,
            messages=[
                conversation_pb2.Message(role=conversation_pb2.MESSAGE_ROLE_USER, content=request.content)
            ],
            max_output_tokens=request.max_output_tokens,
            conversation=request.name,
        )
        if request.HasField("temperature"):
            chat.temperature = request.temperature
        if request.etag:
            history = await self._conversations.history(request.name, caller)
            if history.etag != request.etag:
                raise Aborted(f"{request.name} changed since it was read (stale etag)", reason="STALE_ETAG")
        completion, stored, etag = await self.complete_and_keep(chat, caller)
        return conversation_service_pb2.AppendMessageResponse(
            user_message=stored[0], completion=completion, etag=etag
        )

    async def complete(
        self, request: completion_service_pb2.CompleteRequest, caller: Principal
    ) -> completion_service_pb2.CompleteResponse:
        """Completes a chat, falling back to the local responder when Groq cannot answer."""
        completion, _, _ = await self.complete_and_keep(request, caller)
        return completion_service_pb2.CompleteResponse(completion=completion)

    async def complete_and_keep(
        self, request: completion_service_pb2.CompleteRequest, caller: Principal
    ) -> tuple[completion_pb2.Completion, list[conversation_pb2.Message], str]:
        """Completes a chat; with a conversation, also the stored request messages and its new etag."""
        principal = principal_name(caller)
        history = await self._history(request, caller)
        spec, chat = self._prepare(request, history)
        backend, failure = await self._backend(spec, principal)
        try:
            result = await backend.complete(chat)
        except ProviderFailure as exc:
            failure = self._fallback(exc)
            result = await self._local.complete(chat)
        completion = self._completion(spec, result, failure)
        await self._record(principal, completion)
        stored, etag = await self._keep(history, caller, request, completion)
        return completion, stored, etag

    async def stream(
        self, request: completion_service_pb2.StreamCompleteRequest, caller: Principal
    ) -> AsyncIterator[completion_service_pb2.StreamCompleteResponse]:
        """Streams a completion: deltas, then the whole completion; falls back before the first delta."""
        principal = principal_name(caller)
        history = await self._history(request, caller)
        spec, chat = self._prepare(request, history)
        backend, failure = await self._backend(spec, principal)
        events = backend.stream(chat)
        try:
            first = await anext(events)
        except ProviderFailure as exc:
            failure = self._fallback(exc)
            events = self._local.stream(chat)
            first = await anext(events)
        item: str | ChatResult = first
        tail, withheld = "", False
        while True:
            if isinstance(item, ChatResult):
                completion = self._completion(spec, item, failure)
                await self._record(principal, completion)
                await self._keep(history, caller, request, completion)
                yield completion_service_pb2.StreamCompleteResponse(completion=completion)
                return
            # Screen each piece with the text before it (a marker may straddle two pieces); from
            # the first unsafe one on, no more text is sent and the completion is withheld.
            window = tail + item
            withheld = withheld or self._safety.unsafe_reply(window)
            tail = window[-_SCREEN_WINDOW:]
            if not withheld:
                yield completion_service_pb2.StreamCompleteResponse(
                    delta=completion_service_pb2.CompletionDelta(content=item)
                )
            try:
                item = await anext(events)
            except ProviderFailure as exc:
                raise Unavailable(
                    f"{exc.detail} after part of the reply was sent",
                    reason=_UNAVAILABLE_REASONS.get(exc.reason, "PROVIDER_ERROR"),
                ) from exc

    def list_models(
        self, request: model_service_pb2.ListModelsRequest
    ) -> model_service_pb2.ListModelsResponse:
        """Lists the configured models, the default first, then by id."""
        specs = sorted(
            self._models.values(), key=lambda m: (m.model_id != self._config.default_model, m.model_id)
        )
        models = [self._model(m) for m in specs]
        if request.provider:
            models = [m for m in models if m.provider == request.provider]
        if request.available_only:
            models = [m for m in models if m.available]
        page, token = fixed_page(
            "models",
            models,
            request.page_size,
            request.page_token,
            default=DEFAULT_PAGE_SIZE,
            maximum=MAX_PAGE_SIZE,
        )
        return model_service_pb2.ListModelsResponse(models=page, next_page_token=token)

    def _model(self, spec: ModelSpec) -> model_pb2.Model:
        available = self._available(spec)
        return model_pb2.Model(
            name=f"models/{spec.model_id}",
            display_name=spec.display_name,
            provider=spec.provider,
            context_window_tokens=spec.context_window_tokens,
            input_price_per_million_micros=spec.input_price_micros,
            output_price_per_million_micros=spec.output_price_micros,
            currency_code="USD",
            available=available,
            unavailable_reason="" if available else NO_KEY,
            is_default=spec.model_id == self._config.default_model,
        )

    async def close(self) -> None:
        """Closes the backends."""
        for backend in self._backends():
            await backend.close()

    def _backends(self) -> Sequence[Backend]:
        return [self._local] if self._groq is None else [self._local, self._groq]
