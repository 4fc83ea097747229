"""Builds and serves the integrations service on the shared runtime.

One kit store (:mod:`.resources`) holds integrations, webhooks, deliveries and events; each part
contributes its servicers, start and stop hooks below.
"""

from __future__ import annotations

from bhiv_core.runtime import server as runtime
from bhiv_core.runtime.config import RuntimeConfig
from bhiv_core.runtime.contracts import services_of_package
from bhiv_core.services.integrations.config import IntegrationsConfig
from bhiv_core.services.integrations.external.service import external_servicers
from bhiv_core.services.integrations.resources import make_integrations_store
from bhiv_core.services.integrations.servicer import MISSING, IntegrationsServicer
from bhiv_core.services.integrations.webhooks.service import WebhookPart
from bhiv_core.standard_chain import standard_chain

__all__ = ["NAME", "build_server", "definition", "serve"]

NAME = "integrations"


def definition(config: RuntimeConfig) -> runtime.ServiceDefinition:
    """Returns what the integrations service contributes to the runtime."""
    store = make_integrations_store(config)
    servicers: dict[str, object] = {}
    on_start = [store.open]
    on_stop = [store.close]
    # external: IntegrationService, ExternalApiService
    servicers |= external_servicers(IntegrationsConfig.from_runtime(config), store)

    # webhooks: WebhookService, EventService
    webhooks = WebhookPart.build(config, store)
    servicers.update(webhooks.servicers)
    on_start.append(webhooks.start)
    on_stop.insert(0, webhooks.stop)  # before the store closes: in-flight claims are given back

    # content: ContentService
    # Imported here, so that each part's wiring stays inside its own block.
    from bhiv_core.services.integrations.content.service import content_part

    servicers["ContentService"], close_content = content_part(config)
    on_stop.append(close_content)

    rest = IntegrationsServicer()
    return runtime.ServiceDefinition(
        name=NAME,
        servicers=[(s, servicers.get(s.name, rest)) for s in services_of_package("bhiv.integrations.v1")],
        missing=MISSING,
        checks={"store": store.ping},
        on_start=on_start,
        on_stop=on_stop,
    )


async def build_server(config: RuntimeConfig) -> runtime.RunningService:
    """Builds and starts the integrations server."""
    return await runtime.start_service(config, definition(config), standard_chain)


def serve() -> None:
    """Runs the integrations service until SIGTERM."""
    runtime.serve(NAME, definition, chain=standard_chain)
