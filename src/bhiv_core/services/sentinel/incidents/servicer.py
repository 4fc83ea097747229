"""The ThreatService servicer: incidents, the live event stream, and security-event intake."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from bhiv.sentinel.v1 import threat_service_pb2 as ts
from bhiv_core.security.principal import require_principal
from bhiv_core.services.sentinel.incidents.incidents import Incidents
from bhiv_core.services.sentinel.incidents.stream import ThreatEventHub
from bhiv_core.services.sentinel.servicer import SentinelServicer

__all__ = ["ThreatServicer"]


class ThreatServicer:
    """Implements ``bhiv.sentinel.v1.ThreatService``.

    Args:
        incidents: The incident operations.
        hub: The live threat-event fan-out.
        intake: Sentinel's servicer, which takes ``ReportSecurityEvent``.

    """

    def __init__(self, incidents: Incidents, hub: ThreatEventHub, intake: SentinelServicer):
        self._incidents = incidents
        self._hub = hub
        self._intake = intake

    async def ListIncidents(self, request: ts.ListIncidentsRequest, context: Any) -> ts.ListIncidentsResponse:
        """Lists incidents, most recently seen first."""
        return await self._incidents.list(request)

    async def GetIncident(self, request: ts.GetIncidentRequest, context: Any) -> ts.GetIncidentResponse:
        """Gets one incident."""
        return await self._incidents.get(request, require_principal())

    async def UpdateIncident(
        self, request: ts.UpdateIncidentRequest, context: Any
    ) -> ts.UpdateIncidentResponse:
        """Changes an incident's status or notes."""
        return await self._incidents.update(request, require_principal())

    async def StreamThreatEvents(
        self, request: ts.StreamThreatEventsRequest, context: Any
    ) -> AsyncIterator[ts.StreamThreatEventsResponse]:
        """Streams threat events as they are detected, until the client cancels or sentinel stops."""
        subscription = self._hub.subscribe(min_severity=request.min_severity, category=request.category)
        try:
            # The response headers go out now, not with the first event (which may be hours away):
            # a client (and a gRPC-web client through the edge) knows it is subscribed.
            await context.send_initial_metadata(())
            while (event := await subscription.next()) is not None:
                yield ts.StreamThreatEventsResponse(event=event)
        finally:
            self._hub.remove(subscription)

    async def ReportSecurityEvent(
        self, request: ts.ReportSecurityEventRequest, context: Any
    ) -> ts.ReportSecurityEventResponse:
        """Stores a reported security event (see :class:`SentinelServicer`)."""
        return await self._intake.ReportSecurityEvent(request, context)
