"""Stored conversations, owned by the principal that created them, on the resource kit.

A conversation is one ``conversations`` record (the message whole, its owner's principal name and
update time beside it); each stored message is one ``conversation_messages`` record, numbered in
order. Another principal's conversation is NOT_FOUND, as if it did not exist. Appending (by
AppendMessage or by a completion that names the conversation) is conditional on the conversation's
etag read before the completion: two concurrent appends never interleave, the later is ABORTED.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Final

from bhiv.llm.v1 import conversation_pb2, conversation_service_pb2
from bhiv_core.resources import (
    Cmp,
    Collection,
    Eq,
    Field,
    Record,
    ResourceStore,
    ResourceType,
    Transaction,
    Value,
    check_etag,
    idempotent,
    list_page,
)
from bhiv_core.runtime.errors import Aborted, NotFound
from bhiv_core.runtime.times import to_timestamp
from bhiv_core.security.principal import Principal
from bhiv_core.services.llm.usage import principal_name

__all__ = ["CONVERSATION", "CONVERSATIONS", "MESSAGES", "Conversations", "History"]

MAX_HISTORY: Final = 1000
"""The most stored messages a conversation keeps sending (and GetConversation returns)."""

CONVERSATIONS: Final = Collection(
    "conversations",
    (Field("principal", "text"), Field("updated", "real")),
    order=("updated",),
    descending=True,
    indexes=(("principal",),),
)
MESSAGES: Final = Collection(
    "conversation_messages",
    (Field("conversation", "text"), Field("seq", "int")),
    order=("conversation", "seq"),
)
CONVERSATION: Final = ResourceType(
    message=conversation_pb2.Conversation,
    collection=CONVERSATIONS,
    index=lambda c: {"principal": c.owner, "updated": c.update_time.seconds + c.update_time.nanos / 1e9},
    mutable=frozenset(),
    label="conversation",
    request_field="conversation",
)


class History:
    """A caller's conversation as read before a completion, and what it sends to the model.

    Attributes:
        conversation: The conversation (without messages).
        messages: Its stored messages, oldest first.
        etag: Its etag when read: the append is conditional on it.

    """

    def __init__(
        self, conversation: conversation_pb2.Conversation, messages: Sequence[conversation_pb2.Message]
    ):
        self.conversation = conversation
        self.messages = list(messages)
        self.etag = conversation.etag


class Conversations:
    """The conversation store of the llm service.

    Args:
        store: The llm service's resource store.
        clock: Unix seconds now.

    """

    def __init__(self, store: ResourceStore, clock: Callable[[], float] = time.time):
        self._store = store
        self._clock = clock

    async def _owned(self, reader: ResourceStore | Transaction, name: str, caller: Principal) -> Record:
        record = await reader.get(CONVERSATIONS, CONVERSATION.id_of(name))
        if record is None or record.fields.get("principal") != principal_name(caller):
            raise NotFound(f"{name} not found", reason="NOT_FOUND")
        return record

    async def _messages(self, conversation_id: str, count: int) -> list[conversation_pb2.Message]:
        """The last :data:`MAX_HISTORY` of a conversation's ``count`` messages, oldest first."""
        records = await self._store.find(
            MESSAGES,
            [Eq("conversation", conversation_id), Cmp("seq", ">=", max(0, count - MAX_HISTORY))],
            after=None,
            limit=MAX_HISTORY,
        )
        return [conversation_pb2.Message.FromString(r.data) for r in records]

    async def create(
        self, request: conversation_service_pb2.CreateConversationRequest, caller: Principal
    ) -> conversation_service_pb2.CreateConversationResponse:
        """Creates an empty conversation owned by the caller (idempotent by ``request_id``)."""
        given = conversation_pb2.Conversation(
            title=request.conversation.title,
            system_prompt=request.conversation.system_prompt,
            model=request.conversation.model,
        )
        owner = principal_name(caller)

        async def step(tx: Transaction) -> conversation_service_pb2.CreateConversationResponse:
            conversation = CONVERSATION.fresh(given, now=self._clock())
            conversation.owner = owner
            await tx.insert(CONVERSATIONS, CONVERSATION.record(conversation))
            return conversation_service_pb2.CreateConversationResponse(conversation=conversation)

        return await idempotent(
            self._store,
            scope=f"CreateConversation:{owner}",
            request_id=request.request_id,
            request=request,
            response_type=conversation_service_pb2.CreateConversationResponse,
            step=step,
            clock=self._clock,
        )

    async def history(self, name: str, caller: Principal) -> History:
        """One of the caller's conversations with its stored messages (NOT_FOUND otherwise)."""
        record = await self._owned(self._store, name, caller)
        conversation = CONVERSATION.load(record)
        return History(conversation, await self._messages(record.id, conversation.message_count))

    async def get(
        self, request: conversation_service_pb2.GetConversationRequest, caller: Principal
    ) -> conversation_service_pb2.GetConversationResponse:
        """One of the caller's conversations with its messages."""
        found = await self.history(request.name, caller)
        conversation = found.conversation
        conversation.messages.extend(found.messages)
        return conversation_service_pb2.GetConversationResponse(conversation=conversation)

    async def list_own(
        self, request: conversation_service_pb2.ListConversationsRequest, caller: Principal
    ) -> conversation_service_pb2.ListConversationsResponse:
        """The caller's conversations, most recently updated first."""
        owner = principal_name(caller)
        records, token = await list_page(
            self._store,
            CONVERSATIONS,
            [Eq("principal", owner)],
            page_size=request.page_size,
            page_token=request.page_token,
            query=("ListConversations", owner),
        )
        return conversation_service_pb2.ListConversationsResponse(
            conversations=[CONVERSATION.load(r) for r in records], next_page_token=token
        )

    async def delete(
        self, request: conversation_service_pb2.DeleteConversationRequest, caller: Principal
    ) -> conversation_service_pb2.DeleteConversationResponse:
        """Deletes one of the caller's conversations and its messages."""

        async def step(tx: Transaction) -> None:
            record = await self._owned(tx, request.name, caller)
            for message in await tx.find(MESSAGES, [Eq("conversation", record.id)], limit=10**9):
                await tx.delete(MESSAGES, message.id, expected_etag=message.etag)
            if not await tx.delete(CONVERSATIONS, record.id, expected_etag=record.etag):
                raise Aborted(f"{request.name} changed while it was deleted: retry", reason="STALE_ETAG")

        await self._store.run(step)
        return conversation_service_pb2.DeleteConversationResponse()

    async def append(
        self, history: History, caller: Principal, messages: Sequence[conversation_pb2.Message]
    ) -> tuple[list[conversation_pb2.Message], str]:
        """Appends ``messages`` to a conversation read as ``history``; ABORTED when it changed since.

        Returns:
            The stored messages (with names and create times) and the conversation's new etag.

        """
        name = history.conversation.name

        async def step(tx: Transaction) -> tuple[list[conversation_pb2.Message], str]:
            record = await self._owned(tx, name, caller)
            check_etag(history.etag, record, name)
            conversation = CONVERSATION.load(record)
            now = self._clock()
            stored = []
            for message in messages:
                seq = conversation.message_count
                conversation.message_count += 1
                kept = conversation_pb2.Message(
                    name=f"{name}/messages/{seq:06d}",
                    role=message.role,
                    content=message.content,
                    create_time=to_timestamp(now),
                )
                fields: dict[str, Value] = {"conversation": record.id, "seq": seq}
                await tx.insert(
                    MESSAGES,
                    Record(
                        id=f"{record.id}.{seq:06d}", data=kept.SerializeToString(), fields=fields, etag="1"
                    ),
                )
                stored.append(kept)
            CONVERSATION.stamp(conversation, now=now)
            if not await tx.replace(
                CONVERSATIONS, CONVERSATION.record(conversation), expected_etag=record.etag
            ):
                raise Aborted(
                    f"{name} changed since it was read (stale etag): re-read and retry", reason="STALE_ETAG"
                )
            return stored, conversation.etag

        return await self._store.run(step)
