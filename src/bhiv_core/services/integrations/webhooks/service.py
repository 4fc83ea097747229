"""Integrations' webhooks as one unit: sealed secrets, the outbound client, the engine, servicers.

:meth:`WebhookPart.build` reads the settings and the key-encryption key (failing fast on a bad
one); the server adds :attr:`WebhookPart.servicers` and puts :meth:`WebhookPart.start` after the
store opens and :meth:`WebhookPart.stop` before it closes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from bhiv_core.resources import ResourceStore
from bhiv_core.runtime.config import RuntimeConfig
from bhiv_core.services.integrations.config import IntegrationsConfig
from bhiv_core.services.integrations.external.service import outbound_client, secret_box
from bhiv_core.services.integrations.webhooks.config import WebhookConfig
from bhiv_core.services.integrations.webhooks.delivery import DeliveryEngine
from bhiv_core.services.integrations.webhooks.events import Events
from bhiv_core.services.integrations.webhooks.servicer import EventServicer, WebhookServicer
from bhiv_core.services.integrations.webhooks.subscriptions import Webhooks

__all__ = ["WebhookPart"]


@dataclass(frozen=True, slots=True)
class WebhookPart:
    """What integrations' webhooks are made of.

    Attributes:
        engine: The delivery engine.
        servicers: The servicers by contract service name (``WebhookService``, ``EventService``).

    """

    engine: DeliveryEngine
    servicers: dict[str, object]

    @classmethod
    def build(
        cls, config: RuntimeConfig, store: ResourceStore, *, clock: Callable[[], float] = time.time
    ) -> WebhookPart:
        """The webhooks of ``config`` on ``store``; raises ConfigError for a bad setting or key file."""
        integrations = IntegrationsConfig.from_runtime(config)
        box = secret_box(integrations)
        client = outbound_client(integrations)
        engine = DeliveryEngine(store, box, client, WebhookConfig.from_runtime(config), clock=clock)
        servicers: dict[str, object] = {
            "WebhookService": WebhookServicer(Webhooks(store, box, client, engine, clock)),
            "EventService": EventServicer(Events(store, engine, clock)),
        }
        return cls(engine, servicers)

    async def start(self) -> None:
        """Starts delivering (the queue left by an earlier run included)."""
        await self.engine.start()

    async def stop(self) -> None:
        """Stops delivering; attempts in flight give their claims back."""
        await self.engine.stop()
