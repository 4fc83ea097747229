"""The integrations service's settings, read once at start; a bad value fails fast with a ConfigError."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bhiv_core.runtime.config import RuntimeConfig
from bhiv_core.storage.mongo import mongo_url_setting

__all__ = ["IntegrationsConfig"]


@dataclass(frozen=True, slots=True)
class IntegrationsConfig:
    """What integrations needs beyond the shared runtime.

    Attributes:
        store_url: ``BHIV_INTEGRATIONS_STORE_URL``: a ``mongodb://`` URL selects MongoDB; unset
            means the embedded SQLite file ``<data_dir>/integrations.db``.
        kek_path: ``BHIV_INTEGRATIONS_KEK_FILE``: the AES-256 key that seals integration secrets
            and webhook signing secrets at rest; by default ``<data_dir>/integrations-kek``
            (created 0600 on first start).
        outbound_allowlist: ``BHIV_OUTBOUND_ALLOWLIST``: comma-separated host names
            (``api.example.com``, ``*.example.com``), addresses and CIDR ranges that external
            calls and webhook deliveries may reach; empty (the default) allows nothing. A private,
            loopback, link-local, multicast or metadata address is reached only when an address or
            range entry covers it, whatever the host name.

    """

    store_url: str | None
    kek_path: Path
    outbound_allowlist: tuple[str, ...]

    @classmethod
    def from_runtime(cls, config: RuntimeConfig) -> IntegrationsConfig:
        """Reads every integrations setting once; raises ConfigError naming a bad one."""
        s = config.settings
        kek = s.raw("INTEGRATIONS_KEK_FILE")
        allow = s.raw("OUTBOUND_ALLOWLIST") or ""
        return cls(
            store_url=mongo_url_setting(
                s, "INTEGRATIONS_STORE_URL", "the SQLite file <data_dir>/integrations.db"
            ),
            kek_path=Path(kek).resolve() if kek else config.data_dir / "integrations-kek",
            outbound_allowlist=tuple(entry.strip() for entry in allow.split(",") if entry.strip()),
        )
