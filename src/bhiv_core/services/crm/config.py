"""The crm service's settings, read once at start; a bad value fails fast with a ConfigError."""

from __future__ import annotations

from dataclasses import dataclass

from bhiv_core.runtime.config import RuntimeConfig
from bhiv_core.storage.mongo import mongo_url_setting

__all__ = ["CrmConfig"]


@dataclass(frozen=True, slots=True)
class CrmConfig:
    """What crm needs beyond the shared runtime.

    Attributes:
        store_url: ``BHIV_CRM_STORE_URL``: a ``mongodb://`` URL selects MongoDB; unset means the
            embedded SQLite file ``<data_dir>/crm.db``.

    """

    store_url: str | None

    @classmethod
    def from_runtime(cls, config: RuntimeConfig) -> CrmConfig:
        """Reads every crm setting once; raises ConfigError naming a bad one."""
        return cls(
            store_url=mongo_url_setting(config.settings, "CRM_STORE_URL", "the SQLite file <data_dir>/crm.db")
        )
