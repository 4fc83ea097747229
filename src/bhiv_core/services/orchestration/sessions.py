"""The turns of an agent session (``session_id`` of Ask, StreamAsk and InvokeAgent), per principal.

A session is one record of the kit store's ``sessions`` collection, its id a SHA-256 of the
principal's subject and the session id: another principal using the same session id has another
record and never sees these turns. The record keeps the last ``max_turns`` turns (each answer
clipped to :data:`MAX_ANSWER_CHARS`), so its size is bounded whatever the session's length.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable

from bhiv_core.agents.base import Turn
from bhiv_core.resources import Record, ResourceStore, Transaction, new_etag
from bhiv_core.security.principal import Principal
from bhiv_core.services.orchestration.resources import SESSIONS

__all__ = ["MAX_ANSWER_CHARS", "MAX_QUERY_CHARS", "Sessions"]

MAX_ANSWER_CHARS = 2000
"""The most characters of an answer kept as history."""

MAX_QUERY_CHARS = 2000
"""The most characters of a query kept as history."""


def _id(principal: Principal, session_id: str) -> str:
    return hashlib.sha256(f"{principal.subject}\x00{session_id}".encode()).hexdigest()[:32]


def _turns(record: Record | None) -> list[Turn]:
    if record is None:
        return []
    return [Turn(query, answer) for query, answer in json.loads(record.data)["turns"]]


class Sessions:
    """Loads and appends the turns of sessions.

    Args:
        store: Orchestration's kit store.
        max_turns: The most turns kept per session (``BHIV_AGENTS_SESSION_TURNS``).
        clock: Unix seconds now.

    """

    def __init__(self, store: ResourceStore, max_turns: int, clock: Callable[[], float] = time.time):
        self._store = store
        self._max_turns = max_turns
        self._clock = clock

    async def history(self, principal: Principal, session_id: str) -> list[Turn]:
        """The session's earlier turns, oldest first; empty without a session id."""
        if not session_id:
            return []
        return _turns(await self._store.get(SESSIONS, _id(principal, session_id)))

    async def append(self, principal: Principal, session_id: str, turn: Turn) -> None:
        """Adds a turn, dropping the oldest beyond the bound; nothing without a session id."""
        if not session_id:
            return
        id = _id(principal, session_id)
        kept = Turn(turn.query[:MAX_QUERY_CHARS], turn.answer[:MAX_ANSWER_CHARS])

        async def write(txn: Transaction) -> None:
            record = await txn.get(SESSIONS, id)
            turns = [*_turns(record), kept][-self._max_turns :]
            data = json.dumps({"turns": [[t.query, t.answer] for t in turns]}, ensure_ascii=False).encode()
            fresh = Record(id=id, data=data, fields={"updated": self._clock()}, etag=new_etag())
            if record is None:
                await txn.insert(SESSIONS, fresh)
            else:
                await txn.replace(SESSIONS, fresh, expected_etag=record.etag)

        await self._store.run(write)
