"""Builds and serves the sentinel service on the shared runtime."""

from __future__ import annotations

from datetime import UTC, datetime

from bhiv_core.agents.threat_detection import ThreatDetectionAgent
from bhiv_core.agents.threat_response import AddressBlocker
from bhiv_core.audit.checkpoint import load_or_create_checkpoint_key
from bhiv_core.audit.checkpointing import AuditVerifier, CheckpointWitness, CheckpointWriter
from bhiv_core.audit.store import make_audit_store
from bhiv_core.events.relay import outbox_relay
from bhiv_core.runtime import server as runtime
from bhiv_core.runtime.config import RuntimeConfig
from bhiv_core.runtime.contracts import services_of_package
from bhiv_core.runtime.security_events import QueuedReporter, SecurityEvent, coalescing_settings
from bhiv_core.services.sentinel.access_log import AccessLogServer
from bhiv_core.services.sentinel.alerts.service import Alerts
from bhiv_core.services.sentinel.blocks import Blocks, EdgeBlocker
from bhiv_core.services.sentinel.config import SentinelConfig
from bhiv_core.services.sentinel.incidents.service import ThreatResponse
from bhiv_core.services.sentinel.service import SentinelService, audit_page_bytes
from bhiv_core.services.sentinel.servicer import MISSING, SentinelServicer
from bhiv_core.services.sentinel.store import EventKind, make_sentinel_store
from bhiv_core.services.sentinel.threats import observation_of
from bhiv_core.standard_chain import standard_chain

__all__ = ["NAME", "build_server", "definition", "serve"]

NAME = "sentinel"


def definition(config: RuntimeConfig, *, blocker: AddressBlocker | None = None) -> runtime.ServiceDefinition:
    """Returns what the sentinel service contributes to the runtime.

    Sentinel reads the mesh's audit chain (``make_audit_store``: ``<data_dir>/audit.db`` or
    ``BHIV_AUDIT_STORE_URL``) and keeps its own data in ``<data_dir>/sentinel.db`` or
    ``BHIV_SENTINEL_STORE_URL``. Both open before the server accepts calls and close after it stopped.
    Sentinel is the one writer of the chain's signed checkpoints (:mod:`bhiv_core.audit.checkpointing`),
    with the key in ``BHIV_AUDIT_CHECKPOINT_KEY_FILE``, read (or created) here so a bad one fails fast.
    It runs the threat detection agent in process (:mod:`bhiv_core.services.sentinel.threats`): every
    reported security event is queued for it. Its detections are grouped into incidents, stored,
    logged, streamed and acted on by the threat response agent
    (:mod:`bhiv_core.services.sentinel.incidents`), which blocks addresses through ``blocker``
    (None: sentinel's own block list, :mod:`bhiv_core.services.sentinel.blocks`, served to every
    Envoy over xDS) and alerts through the alert channels. The edge's access log arrives on a port
    of its own (``BHIV_SENTINEL_ACCESS_LOG_PORT``, served to the trusted edge peers only,
    :mod:`bhiv_core.services.sentinel.access_log`): every entry is queued for the detection agent too.
    """
    settings = SentinelConfig.from_runtime(config)
    audit = make_audit_store(config)
    store = make_sentinel_store(config)
    key = load_or_create_checkpoint_key(settings.checkpoint_key_path)
    witness = CheckpointWitness(settings.checkpoint_witness_path)
    writer = CheckpointWriter(
        audit,
        key,
        witness,
        every_records=settings.checkpoint_records,
        every_seconds=settings.checkpoint_seconds,
    )
    # Alert channels and alerts (<data_dir>/sentinel-alerts.db): see services/sentinel/alerts.
    alerts = Alerts.from_config(config)
    # Incidents and the response agent (<data_dir>/sentinel-incidents.db): see services/sentinel/incidents.
    # Blocks (<data_dir>/sentinel-blocks.db) and the edge's deny list over xDS
    # (BHIV_SENTINEL_XDS_PORT): see services/sentinel/blocks. BlockAddress checks its incident here.
    blocks = Blocks.from_config(config, incident_exists=lambda name: response.incidents.exists(name))
    response = ThreatResponse.from_config(
        config,
        store,
        alerts.dispatcher,
        blocker=blocker if blocker is not None else EdgeBlocker(blocks.blocks),
    )
    # Incidents opened are published through the incident store's outbox.
    relay = outbox_relay(config, response.store)
    detection = ThreatDetectionAgent(response.sink)
    sentinel = SentinelService(
        audit,
        store,
        AuditVerifier(audit, key, witness),
        observe=lambda event: detection.submit(observation_of(event)),
        page_bytes=audit_page_bytes(config.max_message_bytes),
    )
    servicer = SentinelServicer(sentinel)

    async def record(event: SecurityEvent, metadata: tuple[tuple[str, str], ...]) -> None:
        await sentinel.report_security_event(
            kind=EventKind[event.kind.name],
            source_address=event.source_address,
            principal=event.principal[:256],
            method=event.method[:256],
            detail=event.detail[:2000],
            event_time=datetime.fromtimestamp(event.event_time, UTC) if event.event_time else None,
            reporter=f"services/{NAME}",
            fields=event.fields,
        )

    # What sentinel's own chain refuses is recorded in process: no call, no token, so no report of
    # sentinel's can cause another (a refused report would otherwise be reported, and so on).
    reporter = QueuedReporter(
        record,
        queue_size=config.settings.positive_int("SECURITY_EVENT_QUEUE_SIZE", 1000),
        **coalescing_settings(config.settings),
        service=NAME,
        name="sentinel-own-security-events",
    )
    access_log = AccessLogServer(
        detection.submit,
        host=config.host,
        port=settings.access_log_port,
        edge=config.edge_peers,
        rate=settings.access_log_rate,
        max_message_bytes=settings.access_log_max_message_bytes,
        max_connections=settings.access_log_max_connections,
        reuse_port=config.workers > 1,
    )
    servicers = {
        "AlertService": alerts.servicer,
        "ThreatService": response.servicer(servicer),
        "BlockService": blocks.servicer,
    }
    return runtime.ServiceDefinition(
        name=NAME,
        servicers=[(s, servicers.get(s.name, servicer)) for s in services_of_package("bhiv.sentinel.v1")],
        missing=MISSING,
        checks={
            "audit_store": audit.ping,
            "sentinel_store": store.ping,
            "alert_store": alerts.store.ping,
            "incident_store": response.store.ping,
            "block_store": blocks.blocks.store.ping,
        },
        on_start=[
            audit.open,
            store.open,
            writer.start,
            alerts.start,
            blocks.start,
            response.start,
            relay.start,
            detection.start,
            access_log.start,
            reporter.start,
        ],
        on_stop=[
            reporter.stop,
            access_log.stop,
            detection.stop,
            relay.stop,
            response.stop,
            blocks.stop,
            alerts.stop,
            writer.stop,
            store.close,
            audit.close,
        ],
        on_drain=[response.drain],
        reporter=reporter,
    )


async def build_server(config: RuntimeConfig) -> runtime.RunningService:
    """Builds and starts the sentinel server."""
    return await runtime.start_service(config, definition(config), standard_chain)


def serve() -> None:
    """Runs the sentinel service until SIGTERM."""
    runtime.serve(NAME, definition, chain=standard_chain)
