"""The AlertService servicer: proto in, :class:`~.channels.AlertChannels` call, proto out."""

from __future__ import annotations

from typing import Any

from bhiv.sentinel.v1 import alert_service_pb2 as als
from bhiv_core.security.principal import require_principal
from bhiv_core.services.sentinel.alerts.channels import AlertChannels

__all__ = ["AlertServicer"]


class AlertServicer:
    """Implements ``bhiv.sentinel.v1.AlertService``.

    Args:
        channels: The alert operations.

    """

    def __init__(self, channels: AlertChannels):
        self._channels = channels

    async def CreateAlertChannel(
        self, request: als.CreateAlertChannelRequest, context: Any
    ) -> als.CreateAlertChannelResponse:
        """Creates an alert channel."""
        return await self._channels.create(request, require_principal())

    async def GetAlertChannel(
        self, request: als.GetAlertChannelRequest, context: Any
    ) -> als.GetAlertChannelResponse:
        """Gets an alert channel, its secrets redacted."""
        return await self._channels.get(request, require_principal())

    async def ListAlertChannels(
        self, request: als.ListAlertChannelsRequest, context: Any
    ) -> als.ListAlertChannelsResponse:
        """Lists alert channels, their secrets redacted."""
        return await self._channels.list(request, require_principal())

    async def UpdateAlertChannel(
        self, request: als.UpdateAlertChannelRequest, context: Any
    ) -> als.UpdateAlertChannelResponse:
        """Updates an alert channel."""
        return await self._channels.update(request, require_principal())

    async def DeleteAlertChannel(
        self, request: als.DeleteAlertChannelRequest, context: Any
    ) -> als.DeleteAlertChannelResponse:
        """Deletes an alert channel."""
        return await self._channels.delete(request, require_principal())

    async def SendTestAlert(
        self, request: als.SendTestAlertRequest, context: Any
    ) -> als.SendTestAlertResponse:
        """Sends a test alert and waits for the outcome."""
        return await self._channels.send_test(request, require_principal())

    async def ListAlerts(self, request: als.ListAlertsRequest, context: Any) -> als.ListAlertsResponse:
        """Lists the alerts sent, newest first."""
        return await self._channels.list_alerts(request, require_principal())
