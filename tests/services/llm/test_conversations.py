"""Stored conversations: owned by their principal, continued by Complete and AppendMessage."""

from __future__ import annotations

import grpc

from bhiv.llm.v1 import completion_service_pb2 as cs
from bhiv.llm.v1 import conversation_pb2, model_pb2
from bhiv.llm.v1 import conversation_service_pb2 as vs
from bhiv.llm.v1 import usage_service_pb2 as us
from tests.services.crm.conftest import reason, refused, violations
from tests.services.llm.conftest import ADMIN, CUSTOMER, REPLY, FakeGroq, Llm

USER = conversation_pb2.MESSAGE_ROLE_USER
ASSISTANT = conversation_pb2.MESSAGE_ROLE_ASSISTANT
PROMPT = "Refunds are paid within 14 days of the return. Support is open from 9:00 to 17:00 UTC."


async def create(
    llm: Llm, metadata: tuple[tuple[str, str], ...] = ADMIN, **fields: str
) -> conversation_pb2.Conversation:
    request = vs.CreateConversationRequest(
        conversation=conversation_pb2.Conversation(title="Help", system_prompt=PROMPT, **fields)
    )
    return (await llm.conversations.CreateConversation(request, metadata=metadata)).conversation


async def test_append_message_stores_the_turn_and_the_reply_from_the_system_prompt(offline: Llm) -> None:
    conversation = await create(offline)
    assert conversation.name.startswith("conversations/")
    assert conversation.owner == "principals/users:admin"
    assert conversation.message_count == 0
    appended = await offline.conversations.AppendMessage(
        vs.AppendMessageRequest(
            name=conversation.name, content="When is support open?", etag=conversation.etag
        ),
        metadata=ADMIN,
    )
    assert appended.user_message.content == "When is support open?"
    assert appended.user_message.name == f"{conversation.name}/messages/000000"
    assert appended.completion.message.content == "Support is open from 9:00 to 17:00 UTC."
    assert appended.completion.message.name == f"{conversation.name}/messages/000001"
    assert appended.etag and appended.etag != conversation.etag
    got = (
        await offline.conversations.GetConversation(
            vs.GetConversationRequest(name=conversation.name), metadata=ADMIN
        )
    ).conversation
    assert [(m.role, m.content) for m in got.messages] == [
        (USER, "When is support open?"),
        (ASSISTANT, "Support is open from 9:00 to 17:00 UTC."),
    ]
    assert got.message_count == 2 and got.etag == appended.etag
    # A stale etag is ABORTED and appends nothing.
    err = await refused(
        offline.conversations.AppendMessage(
            vs.AppendMessageRequest(name=conversation.name, content="And refunds?", etag=conversation.etag),
            metadata=ADMIN,
        )
    )
    assert err.code() == grpc.StatusCode.ABORTED
    usage = (await offline.usage.GetUsage(us.GetUsageRequest(), metadata=ADMIN)).usage
    assert usage.request_count == 1


async def test_complete_continues_a_conversation_and_sends_its_history(
    keyed: Llm, fake_groq: FakeGroq
) -> None:
    conversation = await create(keyed)
    first = cs.CompleteRequest(
        conversation=conversation.name, messages=[conversation_pb2.Message(role=USER, content="Hi there")]
    )
    await keyed.completions.Complete(first, metadata=ADMIN)
    second = cs.CompleteRequest(
        conversation=conversation.name, messages=[conversation_pb2.Message(role=USER, content="And then?")]
    )
    reply = (await keyed.completions.Complete(second, metadata=ADMIN)).completion
    assert reply.provider == model_pb2.PROVIDER_GROQ
    sent = fake_groq.requests[-1]["messages"]
    assert [(m["role"], m["content"]) for m in sent] == [
        ("system", PROMPT),
        ("user", "Hi there"),
        ("assistant", "".join(REPLY)),
        ("user", "And then?"),
    ]
    got = (
        await keyed.conversations.GetConversation(
            vs.GetConversationRequest(name=conversation.name), metadata=ADMIN
        )
    ).conversation
    assert got.message_count == 4


async def test_another_principals_conversation_is_not_found(offline: Llm) -> None:
    conversation = await create(offline)
    name = conversation.name
    calls = [
        offline.conversations.GetConversation(vs.GetConversationRequest(name=name), metadata=CUSTOMER),
        offline.conversations.AppendMessage(
            vs.AppendMessageRequest(name=name, content="hi"), metadata=CUSTOMER
        ),
        offline.conversations.DeleteConversation(vs.DeleteConversationRequest(name=name), metadata=CUSTOMER),
        offline.completions.Complete(
            cs.CompleteRequest(
                conversation=name, messages=[conversation_pb2.Message(role=USER, content="hi")]
            ),
            metadata=CUSTOMER,
        ),
    ]
    for call in calls:
        err = await refused(call)
        assert err.code() == grpc.StatusCode.NOT_FOUND
    listed = await offline.conversations.ListConversations(vs.ListConversationsRequest(), metadata=CUSTOMER)
    assert list(listed.conversations) == []
    # Still there for its owner.
    await offline.conversations.GetConversation(vs.GetConversationRequest(name=name), metadata=ADMIN)


async def test_list_pages_most_recently_updated_first_and_delete_removes(offline: Llm) -> None:
    first = await create(offline)
    second = await create(offline)
    await offline.conversations.AppendMessage(
        vs.AppendMessageRequest(name=first.name, content="When is support open?"), metadata=ADMIN
    )
    page = await offline.conversations.ListConversations(
        vs.ListConversationsRequest(page_size=1), metadata=ADMIN
    )
    assert [c.name for c in page.conversations] == [first.name]
    assert not page.conversations[0].messages
    rest = await offline.conversations.ListConversations(
        vs.ListConversationsRequest(page_size=1, page_token=page.next_page_token), metadata=ADMIN
    )
    assert [c.name for c in rest.conversations] == [second.name]
    await offline.conversations.DeleteConversation(
        vs.DeleteConversationRequest(name=first.name), metadata=ADMIN
    )
    err = await refused(
        offline.conversations.GetConversation(vs.GetConversationRequest(name=first.name), metadata=ADMIN)
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_create_is_idempotent_by_request_id_and_checks_the_model(offline: Llm) -> None:
    request = vs.CreateConversationRequest(
        conversation=conversation_pb2.Conversation(title="t"), request_id="r1"
    )
    one = await offline.conversations.CreateConversation(request, metadata=ADMIN)
    two = await offline.conversations.CreateConversation(request, metadata=ADMIN)
    assert one.conversation.name == two.conversation.name
    err = await refused(create(offline, model="models/nope"))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert reason(err) == "MODEL_NOT_FOUND"


async def test_hostile_conversation_requests_are_invalid_argument(offline: Llm) -> None:
    bad = [
        (
            offline.conversations.GetConversation(
                vs.GetConversationRequest(name="conversations/../x"), metadata=ADMIN
            ),
            "name",
        ),
        (offline.conversations.GetConversation(vs.GetConversationRequest(), metadata=ADMIN), "name"),
        (
            offline.conversations.AppendMessage(
                vs.AppendMessageRequest(name="conversations/a"), metadata=ADMIN
            ),
            "content",
        ),
        (
            offline.conversations.DeleteConversation(
                vs.DeleteConversationRequest(name="x' OR 1=1"), metadata=ADMIN
            ),
            "name",
        ),
        (
            offline.conversations.ListConversations(
                vs.ListConversationsRequest(page_size=-1), metadata=ADMIN
            ),
            "page_size",
        ),
        (
            offline.conversations.ListConversations(
                vs.ListConversationsRequest(page_token="zz"), metadata=ADMIN
            ),
            "page_token",
        ),
        (
            offline.conversations.CreateConversation(
                vs.CreateConversationRequest(conversation=conversation_pb2.Conversation(title="t" * 201)),
                metadata=ADMIN,
            ),
            "conversation.title",
        ),
        (
            offline.conversations.CreateConversation(vs.CreateConversationRequest(), metadata=ADMIN),
            "conversation",
        ),
    ]
    for call, field in bad:
        err = await refused(call)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert field in [f for f, _ in violations(err)], (field, violations(err))
