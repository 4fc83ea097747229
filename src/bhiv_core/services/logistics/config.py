"""The logistics service's settings, read once at start; a bad value fails fast with a ConfigError."""

from __future__ import annotations

from dataclasses import dataclass

from bhiv_core.runtime.config import RuntimeConfig
from bhiv_core.storage.mongo import mongo_url_setting

__all__ = ["LogisticsConfig"]


@dataclass(frozen=True, slots=True)
class LogisticsConfig:
    """What logistics needs beyond the shared runtime.

    Attributes:
        store_url: ``BHIV_LOGISTICS_STORE_URL``, a MongoDB URL; None (unset) for the embedded
            SQLite file ``<data_dir>/logistics.db``.
        page_bytes: The most bytes of stored resources one list page holds: half the response
            limit (``BHIV_MAX_MESSAGE_BYTES``), so a page of large items or shipments with long
            histories always fits.

    """

    store_url: str | None
    page_bytes: int

    @classmethod
    def from_runtime(cls, config: RuntimeConfig) -> LogisticsConfig:
        """Reads every logistics setting once; raises ConfigError naming a bad one."""
        return cls(
            store_url=mongo_url_setting(config.settings, "LOGISTICS_STORE_URL", "the embedded SQLite file"),
            page_bytes=config.max_message_bytes // 2,
        )
