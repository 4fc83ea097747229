"""Sentinel's alerts as one unit: store, sealed secrets, dispatcher, servicer, and their lifetime.

:func:`Alerts.from_config` reads the settings and the key-encryption key (failing fast on a bad
one); the server adds :attr:`Alerts.servicer` for ``AlertService``, :meth:`Alerts.start` /
:meth:`Alerts.stop` to its hooks and the store's ping to its health checks. The response policy
raises alerts through :attr:`Alerts.dispatcher` (:meth:`~.delivery.AlertDispatcher.raise_alert`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from bhiv_core.resources import RECEIPT_TTL_SECONDS, ResourceStore
from bhiv_core.runtime.config import RuntimeConfig
from bhiv_core.services.sentinel.alerts.channels import AlertChannels
from bhiv_core.services.sentinel.alerts.config import AlertConfig
from bhiv_core.services.sentinel.alerts.delivery import AlertDispatcher
from bhiv_core.services.sentinel.alerts.resources import make_alert_store
from bhiv_core.services.sentinel.alerts.servicer import AlertServicer
from bhiv_core.storage.sealing import SecretBox

__all__ = ["Alerts"]


@dataclass(frozen=True, slots=True)
class Alerts:
    """What sentinel's alerts are made of.

    Attributes:
        store: The kit store of alert channels and alerts.
        dispatcher: Raises and delivers alerts.
        servicer: ``bhiv.sentinel.v1.AlertService``.
        clock: Unix seconds now.

    """

    store: ResourceStore
    dispatcher: AlertDispatcher
    servicer: AlertServicer
    clock: Callable[[], float]

    @classmethod
    def from_config(cls, config: RuntimeConfig, *, clock: Callable[[], float] = time.time) -> Alerts:
        """Builds the alerts of ``config``; raises ConfigError for a bad setting or key file."""
        settings = AlertConfig.from_runtime(config)
        box = SecretBox.load_or_create(settings.kek_path)
        store = make_alert_store(config.data_dir, settings.store_url)
        dispatcher = AlertDispatcher(store, box, settings, clock=clock)
        return cls(store, dispatcher, AlertServicer(AlertChannels(store, box, dispatcher, clock)), clock)

    async def start(self) -> None:
        """Opens the store, drops expired idempotency receipts, starts delivering."""
        await self.store.open()
        await self.store.prune_receipts(before=self.clock() - RECEIPT_TTL_SECONDS)
        await self.dispatcher.start()

    async def stop(self) -> None:
        """Stops delivering and closes the store."""
        await self.dispatcher.stop()
        await self.store.close()
