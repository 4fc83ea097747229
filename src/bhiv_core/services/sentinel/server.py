"""Builds and serves the sentinel service on the shared runtime."""

from __future__ import annotations

from bhiv_core.agents.threat_detection import ThreatDetectionAgent
from bhiv_core.audit.checkpoint import load_or_create_checkpoint_key
from bhiv_core.audit.checkpointing import AuditVerifier, CheckpointWitness, CheckpointWriter
from bhiv_core.audit.store import make_audit_store
from bhiv_core.runtime import server as runtime
from bhiv_core.runtime.config import RuntimeConfig
from bhiv_core.runtime.contracts import services_of_package
from bhiv_core.services.sentinel.alerts.service import Alerts
from bhiv_core.services.sentinel.blocks import Blocks
from bhiv_core.services.sentinel.config import SentinelConfig
from bhiv_core.services.sentinel.service import SentinelService, audit_page_bytes
from bhiv_core.services.sentinel.servicer import MISSING, SentinelServicer
from bhiv_core.services.sentinel.store import make_sentinel_store
from bhiv_core.services.sentinel.threats import StoreDetectionSink, observation_of
from bhiv_core.standard_chain import standard_chain

__all__ = ["NAME", "build_server", "definition", "serve"]

NAME = "sentinel"


def definition(config: RuntimeConfig) -> runtime.ServiceDefinition:
    """Returns what the sentinel service contributes to the runtime.

    Sentinel reads the mesh's audit chain (``make_audit_store``: ``<data_dir>/audit.db`` or
    ``BHIV_AUDIT_STORE_URL``) and keeps its own data in ``<data_dir>/sentinel.db`` or
    ``BHIV_SENTINEL_STORE_URL``. Both open before the server accepts calls and close after it stopped.
    Sentinel is the one writer of the chain's signed checkpoints (:mod:`bhiv_core.audit.checkpointing`),
    with the key in ``BHIV_AUDIT_CHECKPOINT_KEY_FILE``, read (or created) here so a bad one fails fast.
    It runs the threat detection agent in process (:mod:`bhiv_core.services.sentinel.threats`): every
    reported security event is queued for it, and its detections are stored and logged.
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
    detection = ThreatDetectionAgent(StoreDetectionSink(store))
    sentinel = SentinelService(
        audit,
        store,
        AuditVerifier(audit, key, witness),
        observe=lambda event: detection.submit(observation_of(event)),
        page_bytes=audit_page_bytes(config.max_message_bytes),
    )
    servicer = SentinelServicer(sentinel)
    # Alert channels and alerts (<data_dir>/sentinel-alerts.db): see services/sentinel/alerts.
    alerts = Alerts.from_config(config)
    # Blocks (<data_dir>/sentinel-blocks.db) and the edge's deny list over xDS
    # (BHIV_SENTINEL_XDS_PORT): see services/sentinel/blocks. Incidents are wired in at merge.
    blocks = Blocks.from_config(config)
    servicers = {"AlertService": alerts.servicer, "BlockService": blocks.servicer}
    return runtime.ServiceDefinition(
        name=NAME,
        servicers=[(s, servicers.get(s.name, servicer)) for s in services_of_package("bhiv.sentinel.v1")],
        missing=MISSING,
        checks={
            "audit_store": audit.ping,
            "sentinel_store": store.ping,
            "alert_store": alerts.store.ping,
            "block_store": blocks.blocks.store.ping,
        },
        on_start=[audit.open, store.open, writer.start, detection.start, alerts.start, blocks.start],
        on_stop=[blocks.stop, alerts.stop, detection.stop, writer.stop, store.close, audit.close],
    )


async def build_server(config: RuntimeConfig) -> runtime.RunningService:
    """Builds and starts the sentinel server."""
    return await runtime.start_service(config, definition(config), standard_chain)


def serve() -> None:
    """Runs the sentinel service until SIGTERM."""
    runtime.serve(NAME, definition, chain=standard_chain)
