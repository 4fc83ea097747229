"""The agents' RPCs (``bhiv.orchestration.v1.AgentService``): decode, route, run the agent, answer.

A request goes through the same steps for Ask, StreamAsk and InvokeAgent:

1. **Decode** (INVALID_ARGUMENT with field violations, before anything runs): a query or at least
   one attachment; each attachment has exactly one of ``data``/``text``; its type is detected by
   the router's ``detect_input_type`` (content, media type, file name), and a declared
   ``input_type`` that contradicts the content is refused.
2. **Route**: the router (:class:`~bhiv_core.agents.router.Router`) picks the agent, intent and
   confidence; when that agent is disabled or does not accept every attachment's type, a general
   agent that does (qna, knowledge, then the summarizer for documents) answers instead, with its
   own first intent; none → FAILED_PRECONDITION.
   InvokeAgent names the agent: NOT_FOUND for an unknown one, FAILED_PRECONDITION when disabled,
   INVALID_ARGUMENT when it does not accept an attachment's type.
3. **Answer**: the agent gets the earlier turns of the caller's session as history and the tools
   of this request (the knowledge index, the LLM client carrying the caller's identity). It has
   :attr:`OrchestrationConfig.agent_deadline` seconds to finish (DEADLINE_EXCEEDED after). Its own
   errors keep their status (INVALID_ARGUMENT for unreadable input, FAILED_PRECONDITION for a
   missing engine); an unexpected exception is INTERNAL with the agent named.
4. **Remember**: with a ``session_id``, the query and the answer become the session's next turn.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import grpc

from bhiv.orchestration.v1 import agent_pb2, document_pb2
from bhiv.orchestration.v1 import agent_service_pb2 as asv
from bhiv_core.agents.base import (
    Agent,
    AgentRequest,
    Attachment,
    InputType,
    Llm,
    Method,
    Reply,
    Turn,
)
from bhiv_core.agents.router import Router, detect_input_type
from bhiv_core.knowledge.index import Passage, PassageIndex
from bhiv_core.resources.fixed_pages import fixed_page
from bhiv_core.runtime.errors import (
    BhivError,
    FailedPrecondition,
    FieldViolation,
    Internal,
    InvalidArgument,
    NotFound,
)
from bhiv_core.security.principal import Principal
from bhiv_core.services.orchestration.sessions import Sessions

__all__ = ["DEFAULT_PAGE_SIZE", "DEFAULT_SOURCES", "MAX_PAGE_SIZE", "AgentDeadlineExceeded", "Agents"]

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
DEFAULT_SOURCES = 5
"""The sources an answer cites at most when ``max_sources`` is 0."""

_FALLBACKS = ("qna", "knowledge", "summarizer", "file_search")
"""The general agents tried, in order, when the intent's own agent cannot take the request."""

log = logging.getLogger(__name__)

T = TypeVar("T")


class AgentDeadlineExceeded(BhivError):
    """An agent did not answer within its deadline."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "AGENT_DEADLINE_EXCEEDED"


@dataclass(frozen=True, slots=True)
class _Tools:
    """The :class:`~bhiv_core.agents.base.Tools` of one request."""

    index: PassageIndex
    llm_client: Llm | None

    async def search(self, query: str, *, limit: int, tags: Sequence[str] = ()) -> list[Passage]:
        return await self.index.search(query, tags=tags, limit=limit)

    @property
    def llm(self) -> Llm | None:
        return self.llm_client


@dataclass(frozen=True, slots=True)
class _Routed:
    agent: Agent
    intent: str
    confidence: float
    input_type: InputType
    request: AgentRequest


_TYPE_NAMES = {t: f"INPUT_TYPE_{t.name}" for t in InputType}


def _decode(attachments: Sequence[agent_pb2.Attachment]) -> list[Attachment]:
    """The attachments typed and checked; INVALID_ARGUMENT naming each bad field.

    The type comes from the router's :func:`~bhiv_core.agents.router.detect_input_type` (content,
    then media type, then file name); a declared ``input_type`` must agree with it.
    """
    decoded: list[Attachment] = []
    violations: list[FieldViolation] = []
    for i, given in enumerate(attachments):
        at = f"attachments[{i}]"
        content = given.WhichOneof("content")
        if content is None:
            violations.append(FieldViolation(f"{at}.content", "set exactly one of data or text", "REQUIRED"))
            continue
        text = given.text if content == "text" else None
        data = given.data if content == "data" else None
        try:
            kind, mime = detect_input_type(given.mime_type, given.file_name, data, text, field=at)
        except InvalidArgument as refused:
            violations += refused.violations
            continue
        declared = InputType(given.input_type)
        if declared and declared != kind:
            violations.append(
                FieldViolation(
                    f"{at}.input_type",
                    f"is {_TYPE_NAMES[declared]} but the content is {_TYPE_NAMES[kind]}",
                    "TYPE_MISMATCH",
                )
            )
            continue
        if text is None and kind == InputType.TEXT and data is not None:
            text = data.decode("utf-8")  # the router detects text only when it is UTF-8
        raw = data if data is not None else (text or "").encode("utf-8")
        decoded.append(Attachment(i, kind, mime, given.file_name, raw, text))
    if violations:
        raise InvalidArgument(violations=violations)
    return decoded


def _passage(p: Passage) -> document_pb2.Passage:
    return document_pb2.Passage(
        document=p.document,
        document_title=p.document_title,
        section=p.section,
        span_start=p.span_start,
        span_end=p.span_end,
        score=p.score,
        text=p.text,
    )


class Agents:
    """The agent domain of the orchestration service.

    Args:
        catalog: The twelve agents by id (:func:`~bhiv_core.agents.catalog.build_catalog`).
        index: The knowledge index the grounded agents search.
        sessions: Where session turns are kept.
        disabled: Ids of the agents switched off (``BHIV_AGENTS_DISABLED``).
        deadline: Seconds an agent may take for one request.
        llm: The LLM client, or None when agents answer offline only.
        router: The trained router; None: trained (in a worker thread) on first use, or by
            :meth:`load_router` at start.

    """

    def __init__(
        self,
        catalog: Mapping[str, Agent],
        index: PassageIndex,
        sessions: Sessions,
        *,
        disabled: frozenset[str] = frozenset(),
        deadline: float = 30.0,
        llm: Llm | None = None,
        router: Router | None = None,
        min_confidence: float | None = None,
    ):
        self._catalog = dict(sorted(catalog.items()))
        self._tools = _Tools(index, llm)
        self._sessions = sessions
        self._disabled = disabled
        self._deadline = deadline
        self._owner = {intent: id for id, agent in self._catalog.items() for intent in agent.spec.intents}
        self._router = router
        self._min_confidence = min_confidence
        self._router_lock = asyncio.Lock()

    async def load_router(self) -> Router:
        """Trains the router once, in a worker thread (under a second)."""
        async with self._router_lock:
            if self._router is None:
                if self._min_confidence is None:
                    self._router = await asyncio.to_thread(Router)
                else:
                    self._router = await asyncio.to_thread(Router, self._min_confidence)
            return self._router

    # ---- the catalog -------------------------------------------------------------------------

    def _message(self, agent: Agent) -> agent_pb2.Agent:
        spec = agent.spec
        return agent_pb2.Agent(
            name=f"agents/{spec.id}",
            display_name=spec.display_name,
            description=spec.description,
            input_types=[agent_pb2.InputType.ValueType(t) for t in spec.input_types],
            intents=list(spec.intents),
            enabled=spec.id not in self._disabled,
        )

    def list_agents(self, request: asv.ListAgentsRequest) -> asv.ListAgentsResponse:
        """A page of agents by id, filtered by input type and enabled state."""
        if request.page_size < 0:
            raise InvalidArgument(
                violations=[FieldViolation("page_size", "must not be negative", "OUT_OF_RANGE")]
            )
        agents = [
            self._message(agent)
            for id, agent in self._catalog.items()
            if (not request.input_type or InputType(request.input_type) in agent.spec.input_types)
            and (not request.enabled_only or id not in self._disabled)
        ]
        page, token = fixed_page(
            "agents",
            agents,
            request.page_size,
            request.page_token,
            default=DEFAULT_PAGE_SIZE,
            maximum=MAX_PAGE_SIZE,
        )
        return asv.ListAgentsResponse(agents=page, next_page_token=token)

    def _named(self, name: str) -> Agent:
        agent = self._catalog.get(name.removeprefix("agents/")) if name.startswith("agents/") else None
        if agent is None:
            raise NotFound(f"{name} not found (see ListAgents)", reason="AGENT_NOT_FOUND")
        return agent

    def get_agent(self, request: asv.GetAgentRequest) -> asv.GetAgentResponse:
        """The agent; NOT_FOUND when there is none of that name."""
        return asv.GetAgentResponse(agent=self._message(self._named(request.name)))

    # ---- routing -----------------------------------------------------------------------------

    def _accepts(self, id: str, types: set[InputType]) -> bool:
        agent = self._catalog.get(id)
        return agent is not None and id not in self._disabled and types <= set(agent.spec.input_types)

    async def _prepare(
        self,
        principal: Principal,
        query: str,
        attachments: Sequence[agent_pb2.Attachment],
        session_id: str,
        max_sources: int,
        invoked: str = "",
    ) -> _Routed:
        """Decodes, routes (or checks the invoked agent) and loads the session's history."""
        if not query.strip() and not attachments:
            raise InvalidArgument(
                violations=[FieldViolation("query", "is required unless an attachment is given", "REQUIRED")]
            )
        decoded = _decode(attachments)
        input_type = decoded[0].input_type if decoded else InputType.TEXT
        types = {a.input_type for a in decoded} or {InputType.TEXT}
        if invoked:
            agent = self._named(invoked)
            id = agent.spec.id
            if id in self._disabled:
                raise FailedPrecondition(f"agents/{id} is disabled", reason="AGENT_DISABLED")
            refused = [a for a in decoded if a.input_type not in agent.spec.input_types]
            if refused or (not decoded and InputType.TEXT not in agent.spec.input_types):
                violations = [
                    FieldViolation(
                        f"attachments[{a.index}].input_type",
                        f"agents/{id} does not accept {_TYPE_NAMES[a.input_type]}",
                        "TYPE_NOT_ACCEPTED",
                    )
                    for a in refused
                ] or [FieldViolation("attachments", f"agents/{id} needs an attachment", "REQUIRED")]
                raise InvalidArgument(violations=violations)
            # The router's reading when it is one of this agent's intents (the text agent told to
            # "extract the keywords"), else the agent's first; the confidence is 1 by contract.
            routed = (await self.load_router()).route(query, [a.input_type for a in decoded])
            intent = routed.intent if routed.intent in agent.spec.intents else agent.spec.intents[0]
            confidence = 1.0
        else:
            route = (await self.load_router()).route(query, [a.input_type for a in decoded])
            id, intent, confidence = route.agent, route.intent, route.confidence
            if not self._accepts(id, types):
                fallback = next((f for f in _FALLBACKS if self._accepts(f, types)), None)
                if fallback is None:
                    fallback = next((f for f in self._catalog if self._accepts(f, types)), None)
                if fallback is None:
                    names = ", ".join(sorted(_TYPE_NAMES[t] for t in types))
                    raise FailedPrecondition(
                        f"no enabled agent accepts {names}", reason="NO_AGENT_FOR_INPUT_TYPE"
                    )
                id, intent = fallback, self._catalog[fallback].spec.intents[0]
            agent = self._catalog[id]
        history = await self._sessions.history(principal, session_id)
        request = AgentRequest(
            query=query,
            attachments=decoded,
            history=history,
            max_sources=max_sources or DEFAULT_SOURCES,
            intent=intent,
        )
        return _Routed(agent, intent, confidence, input_type, request)

    # ---- answering ---------------------------------------------------------------------------

    async def _within(self, routed: _Routed, deadline: float, step: Awaitable[T]) -> T:
        """Awaits ``step`` until ``deadline``; maps its failures to the contract's statuses."""
        try:
            async with asyncio.timeout_at(deadline):
                return await step
        except TimeoutError:
            raise AgentDeadlineExceeded(
                f"agents/{routed.agent.spec.id} did not answer within {self._deadline:g} s"
            ) from None
        except (BhivError, StopAsyncIteration):
            raise
        except Exception as exc:
            log.exception("agents/%s failed", routed.agent.spec.id)
            raise Internal(
                f"agents/{routed.agent.spec.id} failed: {type(exc).__name__}", reason="AGENT_FAILED"
            ) from exc

    async def _start(self, routed: _Routed) -> tuple[Reply, float]:
        deadline = asyncio.get_running_loop().time() + self._deadline
        reply = await self._within(routed, deadline, routed.agent.answer(routed.request, self._tools))
        return reply, deadline

    async def _chunks(self, routed: _Routed, reply: Reply, deadline: float) -> AsyncIterator[str]:
        iterator = aiter(reply.chunks)
        while True:
            try:
                piece = await self._within(routed, deadline, anext(iterator))
            except StopAsyncIteration:
                return
            yield piece

    def _answer(self, routed: _Routed, reply: Reply, text: str) -> agent_pb2.Answer:
        return agent_pb2.Answer(
            agent=f"agents/{routed.agent.spec.id}",
            intent=routed.intent,
            confidence=routed.confidence,
            input_type=agent_pb2.InputType.ValueType(routed.input_type),
            text=text,
            sources=[_passage(p) for p in reply.sources],
            method=agent_pb2.AnswerMethod.ValueType(reply.method or Method.EXTRACTIVE),
            model=reply.model if reply.method == Method.LLM else "",
        )

    async def _whole(self, principal: Principal, session_id: str, routed: _Routed) -> agent_pb2.Answer:
        reply, deadline = await self._start(routed)
        text = "".join([piece async for piece in self._chunks(routed, reply, deadline)])
        await self._sessions.append(principal, session_id, Turn(routed.request.query, text))
        return self._answer(routed, reply, text)

    async def ask(self, request: asv.AskRequest, principal: Principal) -> asv.AskResponse:
        """Routes the query and returns the whole answer."""
        routed = await self._prepare(
            principal, request.query, request.attachments, request.session_id, request.max_sources
        )
        return asv.AskResponse(answer=await self._whole(principal, request.session_id, routed))

    async def invoke(self, request: asv.InvokeAgentRequest, principal: Principal) -> asv.InvokeAgentResponse:
        """Sends the query to the named agent (confidence 1)."""
        routed = await self._prepare(
            principal,
            request.query,
            request.attachments,
            request.session_id,
            request.max_sources,
            invoked=request.name,
        )
        return asv.InvokeAgentResponse(answer=await self._whole(principal, request.session_id, routed))

    async def stream_ask(
        self, request: asv.StreamAskRequest, principal: Principal
    ) -> AsyncIterator[asv.StreamAskResponse]:
        """Routing, the answer's pieces as the agent produces them, the sources, then done.

        Every error of decoding, routing and starting the agent comes before the first event.
        """
        routed = await self._prepare(
            principal, request.query, request.attachments, request.session_id, request.max_sources
        )
        reply, deadline = await self._start(routed)
        yield asv.StreamAskResponse(
            routing=asv.RoutingDecision(
                agent=f"agents/{routed.agent.spec.id}",
                intent=routed.intent,
                confidence=routed.confidence,
                input_type=agent_pb2.InputType.ValueType(routed.input_type),
            )
        )
        text: list[str] = []
        async for piece in self._chunks(routed, reply, deadline):
            if piece:
                text.append(piece)
                yield asv.StreamAskResponse(chunk=asv.AnswerChunk(text=piece))
        yield asv.StreamAskResponse(sources=asv.AnswerSources(sources=[_passage(p) for p in reply.sources]))
        await self._sessions.append(principal, request.session_id, Turn(request.query, "".join(text)))
        answer = self._answer(routed, reply, "")
        yield asv.StreamAskResponse(done=asv.AnswerDone(method=answer.method, model=answer.model))
