"""The offline backend: an extractive responder that only ever repeats sentences it was given.

The question is the last user message (its last question sentence when it carries context too);
the context is every other message's text (system prompt, earlier turns, passages the caller put
in the request). Each context sentence is scored by the IDF-weighted overlap of its word stems with
the question's; the best few (at most :data:`MAX_SENTENCES`, within the output budget) are returned
in their original order. Nothing is invented: with no overlapping sentence the reply says that the
context holds no answer. Deterministic: the same request gives the same reply.
"""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator
from typing import Final

from bhiv.llm.v1 import completion_pb2
from bhiv_core.services.llm.backends import ChatRequest, ChatResult, count_tokens

__all__ = ["NO_ANSWER", "ExtractiveBackend", "answer"]

MAX_SENTENCES: Final = 3
NO_ANSWER: Final = (
    "The given context does not contain an answer to this question (offline extractive responder)."
)

_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
_PIECE = re.compile(r"(?<=[.!?] )")
_WORD = re.compile(r"[a-z0-9]+")
_STOP_WORDS: Final = (
    "a an the and or but if of to in on at by for with from as is are was were be been being do does did "
    "what which who whom whose when where why how this that these those it its i you he she we they me my "
    "your our their his her them us about into than then there here so not no can could should would will "
    "shall may might must have has had say says said tell please give any some all"
)
_STOP: Final = frozenset(_STOP_WORDS.split())


def _stem(word: str) -> str:
    for suffix in ("ingly", "edly", "ing", "ies", "ied", "ed", "es", "ly", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def _terms(text: str) -> list[str]:
    return [_stem(w) for w in _WORD.findall(text.lower()) if w not in _STOP]


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text) if s and s.strip()]


def _split_question(messages: tuple[tuple[str, str], ...]) -> tuple[str, list[str]]:
    """The question and the context sentences of a chat."""
    *earlier, (_, last) = messages
    context = [s for _, text in earlier for s in _sentences(text)]
    own = _sentences(last)
    if context or len(own) <= 1:
        return last, context
    # The user message carries its own context: the question is its last sentence asking one.
    asking = [i for i, s in enumerate(own) if s.endswith("?")]
    at = asking[-1] if asking else len(own) - 1
    return own[at], own[:at] + own[at + 1 :]


def answer(messages: tuple[tuple[str, str], ...], max_tokens: int) -> tuple[str, bool]:
    """The extractive reply to a chat and whether it was cut by ``max_tokens``."""
    question, context = _split_question(messages)
    wanted = set(_terms(question))
    if not wanted or not context:
        return NO_ANSWER, False
    bags = [set(_terms(s)) for s in context]
    df: dict[str, int] = {}
    for bag in bags:
        for term in bag & wanted:
            df[term] = df.get(term, 0) + 1
    n = len(bags)
    scored = []
    for index, bag in enumerate(bags):
        score = sum(math.log(1 + n / df[t]) for t in bag & wanted)
        if score > 0:
            # Longer sentences match more by chance: a mild length normalisation.
            scored.append((score / math.sqrt(1 + len(bag) / 12), index))
    if not scored:
        return NO_ANSWER, False
    scored.sort(key=lambda pair: (-pair[0], pair[1]))
    chosen = sorted({index for _, index in scored[:MAX_SENTENCES]})
    text, cut = "", False
    for index in chosen:
        candidate = f"{text} {context[index]}".strip()
        if count_tokens(candidate) > max_tokens:
            cut = True
            break
        text = candidate
    if not text:  # even the best sentence is longer than the budget: its head
        words = context[chosen[0]].split()
        text, cut = " ".join(words[: max(1, max_tokens // 2)]), True
    return text, cut


class ExtractiveBackend:
    """The offline :class:`~bhiv_core.services.llm.backends.Backend`: free, always available."""

    async def complete(self, request: ChatRequest) -> ChatResult:
        """Answers with the context sentences that best match the question."""
        text, cut = answer(request.messages, request.max_output_tokens)
        return ChatResult(
            text=text,
            finish_reason=completion_pb2.FINISH_REASON_LENGTH if cut else completion_pb2.FINISH_REASON_STOP,
            input_tokens=sum(count_tokens(content) for _, content in request.messages),
            output_tokens=count_tokens(text),
        )

    async def stream(self, request: ChatRequest) -> AsyncIterator[str | ChatResult]:
        """Streams the same reply as :meth:`complete`, one sentence per piece."""
        result = await self.complete(request)
        for piece in _PIECE.split(result.text):
            if piece:
                yield piece
        yield result

    async def close(self) -> None:
        """Nothing to release."""
