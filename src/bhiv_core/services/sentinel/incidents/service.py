"""Sentinel's incidents and threat response as one unit: store, policy, agent, stream, servicer.

:func:`ThreatResponse.from_config` reads the settings and the policy (failing fast on a bad one);
the server hands :attr:`ThreatResponse.sink` to the threat detection agent, serves
:meth:`ThreatResponse.servicer` for ``ThreatService``, and adds :meth:`start`, :meth:`drain` (ends
the live streams before the server drains) and :meth:`stop` to its hooks and the store's ping to its
health checks. Blocking goes through an
:class:`~bhiv_core.agents.threat_response.AddressBlocker` given by the server (sentinel's block
list); without one, the policy's blocks are recorded on the incident as not made.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from bhiv_core.agents.threat_response import AddressBlocker, ThreatResponseAgent, load_policy
from bhiv_core.agents.threat_response.policy import PolicyError
from bhiv_core.resources import RECEIPT_TTL_SECONDS, ResourceStore
from bhiv_core.runtime.config import ConfigError, RuntimeConfig
from bhiv_core.services.sentinel.alerts.delivery import AlertDispatcher
from bhiv_core.services.sentinel.incidents.config import IncidentConfig
from bhiv_core.services.sentinel.incidents.incidents import Incidents
from bhiv_core.services.sentinel.incidents.resources import make_incident_store
from bhiv_core.services.sentinel.incidents.servicer import ThreatServicer
from bhiv_core.services.sentinel.incidents.sink import DispatcherAlerter, ResponseSink, ResponseWorker
from bhiv_core.services.sentinel.incidents.stream import ThreatEventHub
from bhiv_core.services.sentinel.servicer import SentinelServicer
from bhiv_core.services.sentinel.store import SentinelStore

__all__ = ["ThreatResponse"]


@dataclass(frozen=True, slots=True)
class ThreatResponse:
    """What sentinel's incidents and threat response are made of.

    Attributes:
        store: The kit store of incidents and the blocks made.
        incidents: Grouping and the incident RPCs.
        hub: The live threat-event streams.
        worker: Runs the response agent off the detection path.
        sink: The detection sink (store, group, stream, respond).
        clock: Unix seconds now.

    """

    store: ResourceStore
    incidents: Incidents
    hub: ThreatEventHub
    worker: ResponseWorker
    sink: ResponseSink
    clock: Callable[[], float]

    @classmethod
    def from_config(
        cls,
        config: RuntimeConfig,
        events: SentinelStore,
        dispatcher: AlertDispatcher,
        *,
        blocker: AddressBlocker | None = None,
        clock: Callable[[], float] = time.time,
    ) -> ThreatResponse:
        """Builds the threat response of ``config``; raises ConfigError for a bad setting or policy.

        Args:
            config: The runtime configuration.
            events: Sentinel's store, where threat events are kept.
            dispatcher: Sentinel's alert dispatcher.
            blocker: Blocks addresses at the edge; None records blocks as not made.
            clock: Unix seconds now (tests move it).

        """
        settings = IncidentConfig.from_runtime(config)
        try:
            policy = load_policy(settings.policy_file)
        except PolicyError as exc:
            raise ConfigError(f"BHIV_THREAT_RESPONSE_POLICY_FILE: {exc}") from None
        store = make_incident_store(config.data_dir, settings.store_url)
        incidents = Incidents(store, window_seconds=settings.window_seconds, clock=clock)
        hub = ThreatEventHub(buffer=settings.stream_buffer, max_subscribers=settings.stream_max_subscribers)

        def now() -> datetime:
            return datetime.fromtimestamp(clock(), UTC)

        agent = ThreatResponseAgent(policy, incidents, DispatcherAlerter(dispatcher), blocker, clock=now)
        worker = ResponseWorker(agent, limit=settings.response_queue)
        sink = ResponseSink(events, incidents, hub, worker, clock=now)
        return cls(store, incidents, hub, worker, sink, clock)

    def servicer(self, intake: SentinelServicer) -> ThreatServicer:
        """``ThreatService``, taking ``ReportSecurityEvent`` through ``intake``."""
        return ThreatServicer(self.incidents, self.hub, intake)

    async def start(self) -> None:
        """Opens the store and starts the response worker."""
        await self.store.open()
        await self.store.prune_receipts(before=self.clock() - RECEIPT_TTL_SECONDS)
        await self.worker.start()

    async def drain(self) -> None:
        """Ends the live streams (a shutdown begins)."""
        self.hub.close()

    async def stop(self) -> None:
        """Stops the response worker (after the queued incidents, briefly) and closes the store."""
        self.hub.close()
        await self.worker.stop()
        await self.store.close()
