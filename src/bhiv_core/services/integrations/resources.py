"""Integrations' kit store: ``<data_dir>/integrations.db``, or MongoDB by ``BHIV_INTEGRATIONS_STORE_URL``.

Each part declares its own collections (:mod:`.external.resources`, :mod:`.webhooks.resources`);
the store holds them all.
"""

from __future__ import annotations

from bhiv_core.resources import ResourceStore, make_resource_store
from bhiv_core.resources.sqlite import schema
from bhiv_core.runtime.config import RuntimeConfig
from bhiv_core.services.integrations.config import IntegrationsConfig
from bhiv_core.services.integrations.external.resources import COLLECTIONS as EXTERNAL
from bhiv_core.services.integrations.webhooks.resources import COLLECTIONS as WEBHOOKS

__all__ = ["COLLECTIONS", "MIGRATIONS", "make_integrations_store"]

COLLECTIONS = EXTERNAL + WEBHOOKS
MIGRATIONS = (schema(COLLECTIONS),)


def make_integrations_store(config: RuntimeConfig) -> ResourceStore:
    """Integrations' kit store, as its settings select."""
    return make_resource_store(
        name="integrations",
        collections=COLLECTIONS,
        migrations=MIGRATIONS,
        data_dir=config.data_dir,
        url=IntegrationsConfig.from_runtime(config).store_url,
    )
