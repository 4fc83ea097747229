"""Social content's setting, read once at start; a bad value fails fast with a ConfigError."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from bhiv_core.runtime.config import RuntimeConfig

__all__ = ["ContentConfig", "LlmMode"]


class LlmMode(enum.StrEnum):
    """When ``GenerateSocialContent`` asks the llm service to write the posts."""

    AUTO = "auto"
    """The model when the llm service has a real one and answers; offline otherwise, said so."""
    OFF = "off"
    """Never the model: every post offline."""
    REQUIRED = "required"
    """Only the model: its failure is the call's (FAILED_PRECONDITION, UNAVAILABLE, RESOURCE_EXHAUSTED)."""


@dataclass(frozen=True, slots=True)
class ContentConfig:
    """What social content needs beyond the shared runtime.

    Attributes:
        llm: ``BHIV_CONTENT_LLM`` (``auto``/``off``/``required``, default ``auto``): see
            :class:`LlmMode`. The llm service is the peer ``BHIV_LLM_ADDR``.

    """

    llm: LlmMode = LlmMode.AUTO

    @classmethod
    def from_runtime(cls, config: RuntimeConfig) -> ContentConfig:
        """Reads the setting once; raises ConfigError naming a bad value."""
        chosen = config.settings.choice("CONTENT_LLM", "auto", tuple(m.value for m in LlmMode))
        return cls(llm=LlmMode(chosen))
