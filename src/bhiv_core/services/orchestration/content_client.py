"""The content agent's writer: integrations' ``ContentService.GenerateSocialContent`` through the stubs.

Calls go over :class:`~bhiv_core.runtime.clients.PeerChannels` (``channel("integrations")``), so
they carry the caller's bearer token (integrations authorizes the caller, and meters the llm use
to the caller) and the trace context. Any failure of the call — integrations unreachable, a
caller whose role lacks ``integrations.content.generate``, a model that could not write — is
:class:`~bhiv_core.agents.content.SocialWriterUnavailable`, naming the status, so the agent drafts
the posts itself and says so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import grpc

from bhiv.integrations.v1 import content_service_pb2 as cs
from bhiv.integrations.v1 import content_service_pb2_grpc as cs_grpc
from bhiv_core.agents.base import Method
from bhiv_core.agents.content import SocialWriterUnavailable, WrittenSocial
from bhiv_core.text.social import Platform, Post

__all__ = ["CONTENT_TIMEOUT_SECONDS", "ContentClient"]

CONTENT_TIMEOUT_SECONDS = 20.0
"""The deadline of one GenerateSocialContent call (within the agent's own deadline)."""

OFFLINE_PROVIDER = "offline"
"""The ``provider`` integrations names when its offline generator wrote a post."""

_TO_PROTO = {
    Platform.X: cs.SOCIAL_PLATFORM_X,
    Platform.LINKEDIN: cs.SOCIAL_PLATFORM_LINKEDIN,
    Platform.INSTAGRAM: cs.SOCIAL_PLATFORM_INSTAGRAM,
    Platform.FACEBOOK: cs.SOCIAL_PLATFORM_FACEBOOK,
}
_FROM_PROTO = {value: platform for platform, value in _TO_PROTO.items()}


class ContentClient:
    """A :class:`~bhiv_core.agents.content.SocialWriter` over integrations' generated stub.

    Args:
        channel: The channel to integrations (``PeerChannels.channel("integrations")``).
        timeout: The deadline of one call, seconds.

    """

    def __init__(self, channel: Callable[[], grpc.aio.Channel], *, timeout: float = CONTENT_TIMEOUT_SECONDS):
        self._channel = channel
        self._timeout = timeout

    async def write(self, topic: str, platforms: Sequence[Platform], *, language: str) -> WrittenSocial:
        """One post per platform in ``language``, hashtags included, in the professional tone."""
        stub: Any = cs_grpc.ContentServiceStub(self._channel())
        request = cs.GenerateSocialContentRequest(
            topic=topic,
            platforms=[_TO_PROTO[p] for p in platforms],
            languages=[language],
            include_hashtags=True,
        )
        try:
            response = await stub.GenerateSocialContent(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as error:
            raise SocialWriterUnavailable(f"{error.code().name}: {error.details()}") from None
        posts = [
            Post(
                _FROM_PROTO[post.platform],
                post.text,
                post.platform_length,
                post.platform_limit,
                tuple(post.hashtags),
            )
            for post in response.posts
        ]
        by_model = any(post.provider != OFFLINE_PROVIDER for post in response.posts)
        return WrittenSocial(
            posts=posts,
            method=Method.LLM if by_model else Method.EXTRACTIVE,
            model=f"models/{response.model}" if by_model else "",
            described=f"{response.provider} {response.model}",
        )
