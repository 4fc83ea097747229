"""What the summarizer, planner, text and content agents share: input reading and LLM-or-offline replies.

:func:`read_input` separates a request's instruction from the text to work on (the query's
payload, a text attachment, or a PDF attachment's extracted text). :func:`llm_or_offline` builds a
:class:`~bhiv_core.agents.base.Reply` that streams the model's answer when ``tools.llm`` can give
one and the offline answer otherwise: when the model is unavailable before its first piece, when it
produces nothing, or when it fails half-way (then a note and the offline answer follow what it had
streamed, and the reply's method is EXTRACTIVE, as base.py prescribes). :func:`complete` collects a
whole completion for agents that check it before showing it (content).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass

from bhiv_core.agents.base import AgentRequest, InputType, Llm, LlmUnavailable, Method, Reply, pieces
from bhiv_core.knowledge.extract import extract_pdf
from bhiv_core.knowledge.index import Passage
from bhiv_core.runtime.errors import FieldViolation, InvalidArgument
from bhiv_core.text.instructions import Instruction, split_instruction
from bhiv_core.text.sentences import content_words

__all__ = ["INTERRUPTED", "RELEVANCE_FLOOR", "Input", "complete", "llm_or_offline", "read_input", "relevant"]

INTERRUPTED = "\n\n[The model stopped before finishing; the offline answer follows.]\n\n"

RELEVANCE_FLOOR = 0.3
"""The least search score for a passage to ground a plan, a summary or a post."""


def relevant(passages: Iterable[Passage], terms: Sequence[str]) -> list[Passage]:
    """The passages above the floor that mention the subject words ``terms``: one of up to two, else two."""
    if not terms:
        return []
    needed = 1 if len(terms) <= 2 else 2
    kept = []
    for passage in passages:
        words = set(content_words(f"{passage.section} {passage.text}"))
        if passage.score >= RELEVANCE_FLOOR and sum(t in words for t in terms) >= needed:
            kept.append(passage)
    return kept


@dataclass(frozen=True, slots=True)
class Input:
    """What an agent works on: the instruction, the text, and where the text came from."""

    instruction: str
    text: str
    origin: str


async def read_input(request: AgentRequest, verbs: re.Pattern[str], *, required: bool = True) -> Input:
    """The instruction and text of ``request``: the first text or PDF attachment, else the query's payload.

    Raises:
        InvalidArgument: A PDF attachment cannot be read (on ``attachments[i].data``), or
            ``required`` and there is no text at all (on ``query``).

    """
    for attachment in request.attachments:
        if attachment.text is not None and attachment.text.strip():
            return Input(request.query.strip(), attachment.text, attachment.file_name or "the attached text")
        if attachment.input_type == InputType.PDF:
            try:
                extracted = await asyncio.to_thread(extract_pdf, attachment.data)
            except InvalidArgument as err:
                raise InvalidArgument(
                    violations=[
                        FieldViolation(attachment.field, v.description, v.reason) for v in err.violations
                    ]
                ) from None
            return Input(request.query.strip(), extracted.text, attachment.file_name or "the attached PDF")
    split: Instruction = split_instruction(request.query, verbs)
    if required and not split.payload.strip():
        raise InvalidArgument(
            violations=[
                FieldViolation("query", "holds no text to work on (nor does any attachment)", "EMPTY")
            ]
        )
    return Input(split.instruction, split.payload, "the query")


async def complete(
    llm: Llm | None, system: str, user: str, *, max_output_tokens: int = 1024
) -> tuple[str, str] | None:
    """The whole completion and its model, or None when no model answers (or it answers nothing)."""
    if llm is None:
        return None
    try:
        reply = await llm.stream(system, user, max_output_tokens=max_output_tokens)
        text = "".join([piece async for piece in reply.pieces])
    except LlmUnavailable:
        return None
    return (text, reply.model) if text.strip() else None


def llm_or_offline(
    llm: Llm | None,
    *,
    system: str,
    user: str,
    offline: Callable[[], str],
    sources: Iterable[Passage] = (),
    max_output_tokens: int = 1024,
    note: str = "",
) -> Reply:
    """A reply streaming the model's answer, or ``offline()`` (computed in a thread) when there is none.

    ``note`` follows the model's answer (such as what of the input it did not see).
    """
    reply = Reply(chunks=pieces(""), sources=list(sources))

    async def fallback() -> AsyncIterator[str]:
        reply.method, reply.model = Method.EXTRACTIVE, ""
        async for piece in pieces(await asyncio.to_thread(offline)):
            yield piece

    async def run() -> AsyncIterator[str]:
        if llm is None:
            async for piece in fallback():
                yield piece
            return
        try:
            started = await llm.stream(system, user, max_output_tokens=max_output_tokens)
        except LlmUnavailable:
            async for piece in fallback():
                yield piece
            return
        reply.method, reply.model = Method.LLM, started.model
        produced = False
        try:
            async for piece in started.pieces:
                produced = produced or bool(piece.strip())
                yield piece
        except LlmUnavailable:
            if produced:
                yield INTERRUPTED
            async for piece in fallback():
                yield piece
            return
        if not produced:
            async for piece in fallback():
                yield piece
        elif note:
            yield note

    reply.chunks = run()
    return reply
