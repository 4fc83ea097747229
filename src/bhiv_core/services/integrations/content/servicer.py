"""``bhiv.integrations.v1.ContentService``: proto in, :func:`~.writer.write`, proto out.

The contract's rules (lengths, counts, the BCP-47 pattern, defined enums) are checked by the
validation interceptor; this servicer adds what rules cannot say: a platform or language given
twice (languages compare case-insensitively), a blank topic, and a ``max_length`` below
:data:`MIN_MAX_LENGTH` — each an INVALID_ARGUMENT field violation, before anything is written.
"""

from __future__ import annotations

from bhiv.integrations.v1 import content_service_pb2 as cs
from bhiv_core.agents.base import Llm
from bhiv_core.runtime.chain import Context
from bhiv_core.runtime.errors import FieldViolation, InvalidArgument
from bhiv_core.services.integrations.content.config import LlmMode
from bhiv_core.services.integrations.content.writer import Brief, write
from bhiv_core.text.social import LIMITS, Platform

__all__ = ["MIN_MAX_LENGTH", "PLATFORMS", "ContentServicer"]

MIN_MAX_LENGTH = 30
"""The least non-zero ``max_length``: room for an opening of a few words and its ellipsis."""

PLATFORMS = {
    cs.SOCIAL_PLATFORM_X: Platform.X,
    cs.SOCIAL_PLATFORM_LINKEDIN: Platform.LINKEDIN,
    cs.SOCIAL_PLATFORM_INSTAGRAM: Platform.INSTAGRAM,
    cs.SOCIAL_PLATFORM_FACEBOOK: Platform.FACEBOOK,
}
_TO_PROTO = {platform: value for value, platform in PLATFORMS.items()}


def brief_of(request: cs.GenerateSocialContentRequest) -> Brief:
    """The request as a :class:`~.writer.Brief`; INVALID_ARGUMENT naming every bad field."""
    found: list[FieldViolation] = []
    if not request.topic.strip():
        found.append(FieldViolation("topic", "holds no text", "REQUIRED"))
    platforms: list[Platform] = []
    for i, value in enumerate(request.platforms):
        platform = PLATFORMS.get(value)
        if platform is None:
            found.append(FieldViolation(f"platforms[{i}]", "is not a platform", "INVALID"))
        elif platform in platforms:
            found.append(FieldViolation(f"platforms[{i}]", f"repeats {LIMITS[platform].name}", "DUPLICATE"))
        else:
            platforms.append(platform)
    languages: list[str] = []
    for i, language in enumerate(request.languages):
        if language.lower() in (known.lower() for known in languages):
            found.append(FieldViolation(f"languages[{i}]", f"repeats {language!r}", "DUPLICATE"))
        else:
            languages.append(language)
    if 0 < request.max_length < MIN_MAX_LENGTH:
        found.append(
            FieldViolation(
                "max_length", f"is too short for any post: 0 or at least {MIN_MAX_LENGTH}", "TOO_SHORT"
            )
        )
    if found:
        raise InvalidArgument(violations=found)
    tone = cs.Tone.Name(request.tone).removeprefix("TONE_").lower()
    return Brief(
        topic=request.topic.strip(),
        platforms=platforms,
        languages=languages or ["en"],
        tone="professional" if tone == "unspecified" else tone,
        hashtags=request.include_hashtags,
        max_length=request.max_length,
    )


class ContentServicer:
    """Implements ``ContentService``.

    Args:
        llm: The llm service's client (forwarding the caller's token), or None for none.
        mode: ``BHIV_CONTENT_LLM``.

    """

    def __init__(self, llm: Llm | None, mode: LlmMode):
        self._llm = llm
        self._mode = mode

    async def GenerateSocialContent(
        self, request: cs.GenerateSocialContentRequest, context: Context
    ) -> cs.GenerateSocialContentResponse:
        """Generates one post per (platform, language) pair."""
        written = await write(brief_of(request), self._llm, self._mode)
        return cs.GenerateSocialContentResponse(
            posts=[
                cs.SocialPost(
                    platform=_TO_PROTO[post.platform],
                    language=post.language,
                    text=post.text,
                    hashtags=post.hashtags,
                    character_count=len(post.text),
                    platform_limit=LIMITS[post.platform].max_length,
                    platform_length=post.platform_length,
                    provider=post.provider,
                    model=post.model,
                )
                for post in written.posts
            ],
            model=written.model,
            provider=written.provider,
        )
