"""What every one of the twelve orchestrator agents is: a spec and an ``answer`` coroutine.

The orchestration service decodes a request into an :class:`AgentRequest` (attachments typed and
size-checked, earlier turns of the session loaded), picks an agent (the router, or the caller for
``InvokeAgent``) and calls :meth:`Agent.answer` with the :class:`Tools` it may use. The agent
returns a :class:`Reply`: its sources (known before the text, so they can be cited) and the answer
text as an async stream of pieces; ``method`` and ``model`` are final once the stream is exhausted
(a model that fails half-way leaves the extractive method behind it).

Agents raise :class:`~bhiv_core.runtime.errors.InvalidArgument` (with the attachment's field path,
``attachments[0].data``) for input they cannot read, and
:class:`~bhiv_core.runtime.errors.FailedPrecondition` when an engine they need is missing.
"""

from __future__ import annotations

import enum
import re
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from bhiv_core.knowledge.index import Passage
from bhiv_core.runtime.errors import FieldViolation, InvalidArgument

__all__ = [
    "AGENT_INTENTS",
    "Agent",
    "AgentRequest",
    "AgentSpec",
    "Attachment",
    "InputType",
    "Llm",
    "LlmReply",
    "LlmUnavailable",
    "Method",
    "Reply",
    "Tools",
    "Turn",
    "attachments_of",
    "pieces",
]


class InputType(enum.IntEnum):
    """``bhiv.orchestration.v1.InputType``, by value."""

    UNSPECIFIED = 0
    TEXT = 1
    PDF = 2
    IMAGE = 3
    AUDIO = 4


AGENT_INTENTS: dict[str, tuple[str, ...]] = {
    "vedas": ("vedic_knowledge",),
    "edumentor": ("learning",),
    "wellness": ("wellness",),
    "knowledge": ("knowledge_lookup",),
    "qna": ("question", "greeting", "small_talk"),
    "summarizer": ("summarize",),
    "planner": ("plan",),
    "file_search": ("find_documents",),
    "text": ("translate", "rewrite", "extract_keywords", "detect_language"),
    "content": ("social_post",),
    "image": ("describe_image",),
    "audio": ("transcribe_audio",),
}
"""The twelve agents (ids as in the contract) and the intents each handles: the router's labels.

An intent belongs to exactly one agent. ``question`` (qna) is also where a low-confidence query
goes; greetings and small talk are answered by qna too.
"""


class Method(enum.IntEnum):
    """``bhiv.orchestration.v1.AnswerMethod``, by value."""

    UNSPECIFIED = 0
    LLM = 1
    EXTRACTIVE = 2


@dataclass(frozen=True, slots=True)
class AgentSpec:
    """An agent as ``ListAgents`` shows it.

    Attributes:
        id: The agent id, ``agents/{id}``: one of the twelve.
        display_name: For people.
        description: What it does.
        input_types: The input types it accepts.
        intents: The router's intents it handles (lower_snake).

    """

    id: str
    display_name: str
    description: str
    input_types: tuple[InputType, ...]
    intents: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Attachment:
    """A decoded attachment: its type is detected (never UNSPECIFIED) and its size checked.

    Attributes:
        index: Its position in the request, for field paths (``attachments[index].data``).
        input_type: The detected or declared type.
        mime_type: The declared or detected media type.
        file_name: As sent; may be empty.
        data: The raw bytes (a text attachment's UTF-8 encoding).
        text: The text of a text attachment; None for binary content.

    """

    index: int
    input_type: InputType
    mime_type: str
    file_name: str
    data: bytes
    text: str | None = None

    @property
    def field(self) -> str:
        """The request field path of its content, for errors."""
        return f"attachments[{self.index}].{'text' if self.text is not None else 'data'}"


@dataclass(frozen=True, slots=True)
class Turn:
    """An earlier turn of the same session: the query and the answer given."""

    query: str
    answer: str


@dataclass(frozen=True, slots=True)
class AgentRequest:
    """What an agent is asked.

    Attributes:
        query: The query text; may be empty when attachments are given.
        attachments: The decoded attachments, in request order.
        history: Earlier turns of the session, oldest first (bounded by the service).
        max_sources: The most sources to return (1-50).
        intent: The classified intent (the agent's first intent when invoked directly).

    """

    query: str
    attachments: Sequence[Attachment] = ()
    history: Sequence[Turn] = ()
    max_sources: int = 5
    intent: str = ""


class LlmUnavailable(Exception):
    """No model can answer now (none configured, budget spent, provider down): answer offline.

    Args:
        message: What happened, for logs and error details.
        status: Why, for callers that must say so: ``UNAVAILABLE`` (the llm service or its
            provider cannot be reached), ``RESOURCE_EXHAUSTED`` (a budget or rate limit is used up),
            or empty (no real model is configured).

    """

    def __init__(self, message: str = "", *, status: str = "") -> None:
        super().__init__(message)
        self.status = status


@dataclass(slots=True)
class LlmReply:
    """A streamed completion: iterate ``pieces``; ``model`` is ``models/{id}`` of the llm domain.

    ``provider`` (such as ``groq``) is known once ``pieces`` is exhausted; empty before, and when
    the llm service does not say. A stream the llm service answered with its extractive responder
    after all ends with ``model`` empty and ``fallback`` saying why, as ``LlmUnavailable.status``.
    """

    pieces: AsyncIterator[str]
    model: str
    provider: str = ""
    fallback: str = ""


class Llm(Protocol):
    """The LLM service as agents see it (implemented over the generated stubs, with the caller's identity)."""

    async def stream(self, system: str, user: str, *, max_output_tokens: int = 1024) -> LlmReply:
        """Starts a completion; raises :class:`LlmUnavailable` when only an offline answer is possible."""
        ...


class Tools(Protocol):
    """What the service lends an agent for one request."""

    async def search(self, query: str, *, limit: int, tags: Sequence[str] = ()) -> list[Passage]:
        """Searches the knowledge base (hybrid when dense retrieval is on)."""
        ...

    @property
    def llm(self) -> Llm | None:
        """The LLM service, or None when the orchestrator has none configured."""
        ...


@dataclass(slots=True)
class Reply:
    """An agent's answer.

    Attributes:
        chunks: The answer text, piece by piece (their concatenation is the answer).
        sources: The passages the answer cites, most relevant first.
        method: How the text is produced; final once ``chunks`` is exhausted.
        model: ``models/{id}`` for an LLM answer, else empty; final once ``chunks`` is exhausted.

    """

    chunks: AsyncIterator[str]
    sources: list[Passage] = field(default_factory=list)
    method: Method = Method.EXTRACTIVE
    model: str = ""

    @classmethod
    def of_text(cls, text: str, sources: Iterable[Passage] = ()) -> Reply:
        """An extractive reply whose text is known at once, streamed sentence by sentence."""
        return cls(chunks=pieces(text), sources=list(sources))


def attachments_of(request: AgentRequest, input_type: InputType, needs: str) -> list[Attachment]:
    """The request's attachments of ``input_type``; INVALID_ARGUMENT ``REQUIRED`` on ``attachments`` if none.

    Args:
        request: The request.
        input_type: The type the agent works on.
        needs: The violation's description, such as ``the image agent needs an image attachment``.

    """
    found = [a for a in request.attachments if a.input_type == input_type]
    if not found:
        raise InvalidArgument(violations=[FieldViolation("attachments", needs, "REQUIRED")])
    return found


_PIECE = re.compile(r".*?(?:[.!?:;]\s+|\n+|$)", re.S)


async def pieces(text: str) -> AsyncIterator[str]:
    """Yields ``text`` in sentence-sized pieces whose concatenation is ``text``."""
    for match in _PIECE.finditer(text):
        if match.group():
            yield match.group()


class Agent(Protocol):
    """One of the twelve agents."""

    spec: AgentSpec

    async def answer(self, request: AgentRequest, tools: Tools) -> Reply:
        """Answers ``request``; raises InvalidArgument for unreadable input."""
        ...
