"""Builds the external part of integrations: its servicers, and the outbound client others share."""

from __future__ import annotations

from bhiv_core.outbound.http import OutboundClient, OutboundPolicy, Resolver
from bhiv_core.resources import ResourceStore
from bhiv_core.runtime.config import ConfigError
from bhiv_core.services.integrations.config import IntegrationsConfig
from bhiv_core.services.integrations.external.calls import ExternalCalls
from bhiv_core.services.integrations.external.integrations import Integrations
from bhiv_core.services.integrations.external.servicer import ExternalApiServicer, IntegrationServicer
from bhiv_core.storage.sealing import SecretBox

__all__ = ["KEK_SETTING", "external_servicers", "outbound_client", "secret_box"]

KEK_SETTING = "BHIV_INTEGRATIONS_KEK_FILE"


def outbound_client(settings: IntegrationsConfig, resolver: Resolver | None = None) -> OutboundClient:
    """The SSRF-safe client over ``BHIV_OUTBOUND_ALLOWLIST``; ConfigError naming a bad entry."""
    try:
        policy = OutboundPolicy(settings.outbound_allowlist)
    except ValueError as exc:
        raise ConfigError(f"BHIV_OUTBOUND_ALLOWLIST: {exc}") from None
    return OutboundClient(policy, resolver)


def secret_box(settings: IntegrationsConfig) -> SecretBox:
    """The box sealing integrations' secrets (its key file created 0600 on first use)."""
    return SecretBox.load_or_create(settings.kek_path, KEK_SETTING)


def external_servicers(
    settings: IntegrationsConfig,
    store: ResourceStore,
    *,
    box: SecretBox | None = None,
    client: OutboundClient | None = None,
) -> dict[str, object]:
    """IntegrationService and ExternalApiService servicers by contract service name."""
    box = box or secret_box(settings)
    client = client or outbound_client(settings)
    return {
        "IntegrationService": IntegrationServicer(Integrations(store, box)),
        "ExternalApiService": ExternalApiServicer(ExternalCalls(store, box, client)),
    }
