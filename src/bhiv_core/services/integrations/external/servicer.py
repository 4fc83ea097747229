"""The IntegrationService and ExternalApiService servicers: proto in, domain call, proto out."""

from __future__ import annotations

from bhiv.integrations.v1 import external_api_service_pb2 as eas
from bhiv.integrations.v1 import integration_service_pb2 as ins
from bhiv_core.runtime.chain import Context
from bhiv_core.security.principal import require_principal
from bhiv_core.services.integrations.external.calls import ExternalCalls
from bhiv_core.services.integrations.external.integrations import Integrations

__all__ = ["ExternalApiServicer", "IntegrationServicer"]


class IntegrationServicer:
    """Implements ``bhiv.integrations.v1.IntegrationService``.

    Args:
        integrations: The integration operations.

    """

    def __init__(self, integrations: Integrations):
        self._domain = integrations

    async def CreateIntegration(
        self, request: ins.CreateIntegrationRequest, context: Context
    ) -> ins.CreateIntegrationResponse:
        """Creates an integration."""
        return await self._domain.create(request, require_principal())

    async def GetIntegration(
        self, request: ins.GetIntegrationRequest, context: Context
    ) -> ins.GetIntegrationResponse:
        """Gets an integration, without its secret."""
        return await self._domain.get(request, require_principal())

    async def ListIntegrations(
        self, request: ins.ListIntegrationsRequest, context: Context
    ) -> ins.ListIntegrationsResponse:
        """Lists integrations, without secrets."""
        return await self._domain.list(request, require_principal())

    async def UpdateIntegration(
        self, request: ins.UpdateIntegrationRequest, context: Context
    ) -> ins.UpdateIntegrationResponse:
        """Updates an integration."""
        return await self._domain.update(request, require_principal())

    async def DeleteIntegration(
        self, request: ins.DeleteIntegrationRequest, context: Context
    ) -> ins.DeleteIntegrationResponse:
        """Deletes an integration and its secret."""
        return await self._domain.delete(request, require_principal())


class ExternalApiServicer:
    """Implements ``bhiv.integrations.v1.ExternalApiService``.

    Args:
        calls: The external-call operation.

    """

    def __init__(self, calls: ExternalCalls):
        self._domain = calls

    async def CallExternalApi(
        self, request: eas.CallExternalApiRequest, context: Context
    ) -> eas.CallExternalApiResponse:
        """Calls an external API through an integration, within the caller's deadline."""
        return await self._domain.call(request, require_principal(), context.time_remaining())
