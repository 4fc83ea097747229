"""The LLM safety filter: neutralises prompt-injection markers in context, withholds unsafe replies.

Like the request screening (:mod:`bhiv_core.agents.threat_detection.screening`), the patterns are
compiled into one Hyperscan database, so a scan is linear in the text whatever it holds (no
backtracking engine ever sees request data). Its rules are its own: the request screening's SQL,
path and shell rules would flag ordinary questions about those topics, which a model may discuss.

- **Context** (every message but the last user message: system prompts, earlier turns, retrieved
  passages a caller put in the request): each span that reads as an instruction to the model
  (``ignore all previous instructions``, ``you are now ...``, chat-template role tokens such as
  ``<|im_start|>`` or ``[INST]``) is replaced by :data:`NEUTRALISED` before any backend sees it.
  The user's own question is sent as written.
- **Replies**: a reply carrying markup that would run in a browser (``<script``, ``javascript:``
  URIs, inline event handlers) or chat-template role tokens is withheld: its text is replaced by
  :data:`WITHHELD` and its finish reason is ``FINISH_REASON_CONTENT_FILTER``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import hyperscan

__all__ = ["NEUTRALISED", "WITHHELD", "SafetyFilter"]

NEUTRALISED: Final = "[instruction-like text removed]"
WITHHELD: Final = "[reply withheld by the safety filter]"

_INJECTION: Final = (
    rb"\b(?:ignore|disregard|forget|override)\s+(?:all\s+|any\s+|the\s+)?(?:previous|prior|above|earlier|preceding)"
    rb"\s+(?:instructions?|prompts?|rules?|directions?|messages?)",
    rb"\b(?:ignore|disregard|reveal|print|repeat)\s+(?:your|the)\s+(?:system\s+prompt|instructions|rules)",
    rb"\byou\s+are\s+now\s+(?:a|an|in|the|dan)\b",
    rb"\b(?:new|updated)\s+instructions?\s*:",
    rb"<\|(?:im_start|im_end|system|user|assistant|endoftext)\|>",
    rb"\[/?INST\]|<</?SYS>>",
    rb"(?:^|\n)\s*#{2,}\s*(?:system|instruction)s?\s*:?",
)
_OUTPUT: Final = (
    rb"<\s*script\b",
    rb"\bjavascript\s*:",
    rb"<[a-z][^>]{0,200}\bon(?:error|load|click|mouseover)\s*=",
    rb"<\|(?:im_start|im_end|system|endoftext)\|>",
)
# Spans to replace need their start (SOM); a yes/no scan does not, and is smaller without it.
_SPAN_FLAGS: Final = hyperscan.HS_FLAG_CASELESS | hyperscan.HS_FLAG_SOM_LEFTMOST
_MATCH_FLAGS: Final = hyperscan.HS_FLAG_CASELESS | hyperscan.HS_FLAG_SINGLEMATCH


def _database(patterns: Sequence[bytes], flags: int) -> hyperscan.Database:
    database = hyperscan.Database()
    database.compile(
        expressions=list(patterns),
        ids=list(range(len(patterns))),
        elements=len(patterns),
        flags=[flags] * len(patterns),
    )
    return database


class SafetyFilter:
    """Neutralises injection markers in context and withholds unsafe replies (one per event loop)."""

    def __init__(self) -> None:
        self._injection = _database(_INJECTION, _SPAN_FLAGS)
        self._output = _database(_OUTPUT, _MATCH_FLAGS)

    @staticmethod
    def _spans(database: hyperscan.Database, data: bytes) -> list[tuple[int, int]]:
        spans: list[tuple[int, int]] = []

        def found(_id: int, start: int, end: int, _flags: int, _context: object) -> None:
            spans.append((start, end))

        database.scan(data, match_event_handler=found)
        return spans

    def neutralise(self, text: str) -> str:
        """``text`` with every instruction-like span replaced by :data:`NEUTRALISED`."""
        data = text.encode("utf-8", "surrogatepass")
        spans = self._spans(self._injection, data)
        if not spans:
            return text
        merged: list[list[int]] = []
        for start, end in sorted(spans):
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        out, at = [], 0
        for start, end in merged:
            out += [data[at:start], NEUTRALISED.encode()]
            at = end
        out.append(data[at:])
        return b"".join(out).decode("utf-8", "replace")

    def unsafe_reply(self, text: str) -> bool:
        """True when a reply holds markup or role tokens that must not reach a client."""
        return bool(self._spans(self._output, text.encode("utf-8", "surrogatepass")))
