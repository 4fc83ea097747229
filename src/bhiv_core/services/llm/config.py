"""The llm service's settings, read once at start; a bad value fails fast with a ConfigError."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bhiv.llm.v1 import model_pb2
from bhiv_core.runtime.config import ConfigError, RuntimeConfig
from bhiv_core.storage.mongo import mongo_url_setting

__all__ = ["GROQ_MODELS", "LOCAL_MODEL", "LlmConfig", "ModelSpec"]


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A model the service knows, with its price (millionths of USD per million tokens).

    Attributes:
        model_id: The id after ``models/``.
        display_name: The human-readable name.
        provider: The backend that serves it.
        context_window_tokens: Input plus output tokens per request.
        input_price_micros: The price of one million input tokens, in micro-USD.
        output_price_micros: The price of one million output tokens, in micro-USD.

    """

    model_id: str
    display_name: str
    provider: model_pb2.Provider.ValueType
    context_window_tokens: int
    input_price_micros: int
    output_price_micros: int


LOCAL_MODEL: Final = ModelSpec(
    "local-extractive",
    "Local extractive responder (offline, picks sentences of the given context)",
    model_pb2.PROVIDER_LOCAL_EXTRACTIVE,
    131072,
    0,
    0,
)
"""The offline model: always available, free."""

GROQ_MODELS: Final = (
    ModelSpec(
        "llama-3.1-8b-instant", "Llama 3.1 8B Instant (Groq)", model_pb2.PROVIDER_GROQ, 131072, 50_000, 80_000
    ),
    ModelSpec(
        "llama-3.3-70b-versatile",
        "Llama 3.3 70B Versatile (Groq)",
        model_pb2.PROVIDER_GROQ,
        131072,
        590_000,
        790_000,
    ),
)
"""The Groq models offered, with Groq's list prices (USD per million tokens, as micro-USD)."""


@dataclass(frozen=True, slots=True)
class LlmConfig:
    """What llm needs beyond the shared runtime.

    Attributes:
        groq_api_key: The Groq API key: the file named by ``BHIV_LLM_GROQ_API_KEY_FILE``, else the
            ``GROQ_API_KEY`` environment variable; None means no Groq (offline only).
        groq_base_url: ``BHIV_LLM_GROQ_BASE_URL``: the Groq API's base URL (an OpenAI-compatible
            server); None means the SDK's default (``https://api.groq.com``).
        groq_timeout_seconds: ``BHIV_LLM_GROQ_TIMEOUT_SECONDS`` (default 30): the deadline of one
            attempt at Groq.
        groq_max_retries: ``BHIV_LLM_GROQ_MAX_RETRIES`` (default 2): retries of a request Groq answered
            429 or 5xx or did not answer in time, with the SDK's exponential backoff (honouring
            ``retry-after``).
        default_model: ``BHIV_LLM_DEFAULT_MODEL``: the model id used when a request names none;
            default ``llama-3.1-8b-instant`` with a key, ``local-extractive`` without.
        fallback: ``BHIV_LLM_FALLBACK`` (default ``on``): when Groq fails, answer with the local
            extractive responder (``fallback`` set in the reply); ``off`` returns UNAVAILABLE instead
            (RESOURCE_EXHAUSTED for a spent budget).
        default_budget_micros: ``BHIV_LLM_DEFAULT_BUDGET_MICROS`` (default 5000000, 5 USD): the
            monthly budget of a principal none was set for with SetBudget.
        store_url: ``BHIV_LLM_STORE_URL``: a ``mongodb://`` URL selects MongoDB; unset means the
            embedded SQLite file ``<data_dir>/llm.db``.

    """

    groq_api_key: str | None
    groq_base_url: str | None
    groq_timeout_seconds: float
    groq_max_retries: int
    default_model: str
    fallback: bool
    default_budget_micros: int
    store_url: str | None

    @classmethod
    def from_runtime(cls, config: RuntimeConfig, environ: Mapping[str, str] | None = None) -> LlmConfig:
        """Reads every llm setting once; raises ConfigError naming a bad one."""
        settings = config.settings
        environ = os.environ if environ is None else environ
        key_file = settings.raw("LLM_GROQ_API_KEY_FILE")
        key: str | None
        if key_file is not None:
            try:
                key = Path(key_file).read_text().strip() or None
            except OSError as exc:
                raise ConfigError(f"BHIV_LLM_GROQ_API_KEY_FILE={key_file}: cannot read: {exc}") from exc
            if key is None:
                raise ConfigError(f"BHIV_LLM_GROQ_API_KEY_FILE={key_file} is empty")
        else:
            key = environ.get("GROQ_API_KEY") or None
        base_url = settings.raw("LLM_GROQ_BASE_URL")
        if base_url is not None and not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"BHIV_LLM_GROQ_BASE_URL must be an http(s) URL, got {base_url!r}")
        retries = settings.get("LLM_GROQ_MAX_RETRIES", 2, _retries, "an integer 0-10")
        known = {m.model_id for m in (LOCAL_MODEL, *GROQ_MODELS)}
        default = settings.raw("LLM_DEFAULT_MODEL") or (
            GROQ_MODELS[0].model_id if key else LOCAL_MODEL.model_id
        )
        if default not in known:
            raise ConfigError(
                f"BHIV_LLM_DEFAULT_MODEL must be one of {', '.join(sorted(known))}, got {default!r}"
            )
        return cls(
            groq_api_key=key,
            groq_base_url=base_url,
            groq_timeout_seconds=settings.positive_float("LLM_GROQ_TIMEOUT_SECONDS", 30.0),
            groq_max_retries=retries,
            default_model=default,
            fallback=settings.choice("LLM_FALLBACK", "on", ("on", "off")) == "on",
            default_budget_micros=settings.get(
                "LLM_DEFAULT_BUDGET_MICROS", 5_000_000, _budget, "an integer >= 0"
            ),
            store_url=mongo_url_setting(settings, "LLM_STORE_URL", "the SQLite file <data_dir>/llm.db"),
        )


def _budget(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError(raw)
    return value


def _retries(raw: str) -> int:
    value = int(raw)
    if not 0 <= value <= 10:
        raise ValueError(raw)
    return value
