"""Sentinel's service definition: its stores open on start, drive health, and close on stop."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bhiv.sentinel.v1 import alert_service_pb2 as als
from bhiv.sentinel.v1 import alert_service_pb2_grpc as als_grpc
from bhiv.sentinel.v1 import audit_service_pb2 as aus
from bhiv.sentinel.v1 import audit_service_pb2_grpc as aus_grpc
from bhiv.sentinel.v1 import block_service_pb2 as bs
from bhiv.sentinel.v1 import block_service_pb2_grpc as bs_grpc
from bhiv.sentinel.v1 import threat_service_pb2 as ts
from bhiv.sentinel.v1 import threat_service_pb2_grpc as ts_grpc
from bhiv_core.audit.checkpoint import load_or_create_checkpoint_key
from bhiv_core.audit.checkpointing import CheckpointWitness
from bhiv_core.audit.store.sqlite import SqliteAuditStore
from bhiv_core.interceptors.errors import ErrorMappingInterceptor
from bhiv_core.runtime.chain import CallInfo, PreCheckInterceptor, chain_order
from bhiv_core.runtime.config import ConfigError
from bhiv_core.runtime.server import start_service
from bhiv_core.security.principal import Principal, current_principal
from bhiv_core.services.sentinel import server
from tests.audit.support import SqliteBackend, entry, written_before_the_caps
from tests.harness import config_for


class AsAdmin(PreCheckInterceptor):
    async def check(self, call: CallInfo, request: Any, context: Any) -> None:
        call.principal = Principal(subject="users/root", role="admin")
        current_principal.set(call.principal)


def chain(*_: Any) -> Any:
    return chain_order(errors=ErrorMappingInterceptor("sentinel.bhiv.core"), auth=AsAdmin())


async def test_sentinel_reads_the_shared_audit_file_and_reports_health(tmp_path: Path) -> None:
    # Another service of the mesh appended to the shared chain.
    writer = SqliteAuditStore(tmp_path / "audit.db")
    await writer.open()
    await writer.append([entry("users/a"), entry("users/b")])
    await writer.close()

    config = config_for("sentinel", DATA_DIR=str(tmp_path))
    definition = server.definition(config)
    assert set(definition.checks) == {
        "audit_store",
        "sentinel_store",
        "alert_store",
        "incident_store",
        "block_store",
    }
    running = await start_service(config, definition, chain)
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for name in (
                "",
                "bhiv.sentinel.v1.AuditService",
                "bhiv.sentinel.v1.ThreatService",
                "bhiv.sentinel.v1.AlertService",
            ):
                reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            audit = aus_grpc.AuditServiceStub(channel)
            listed = await audit.ListAuditRecords(aus.ListAuditRecordsRequest())
            assert [r.principal for r in listed.audit_records] == ["users/a", "users/b"]
            assert (await audit.VerifyAuditChain(aus.VerifyAuditChainRequest())).ok
            # ThreatService is served whole (incidents on their own kit store).
            listed_incidents = await ts_grpc.ThreatServiceStub(channel).ListIncidents(
                ts.ListIncidentsRequest()
            )
            assert not listed_incidents.incidents
            # BlockService is served by the blocks servicer, on its own kit store.
            blocks = bs_grpc.BlockServiceStub(channel)
            assert not (await blocks.CheckAddress(bs.CheckAddressRequest(address="192.0.2.1"))).blocked
            # AlertService is served by the alerts servicer, on its own kit store.
            alerts = als_grpc.AlertServiceStub(channel)
            assert not (await alerts.ListAlertChannels(als.ListAlertChannelsRequest())).alert_channels
    finally:
        await running.stop(grace=0.5)
    assert (tmp_path / "sentinel.db").exists()
    assert (tmp_path / "sentinel-alerts.db").exists()
    assert (tmp_path / "sentinel-incidents.db").exists()
    assert (tmp_path / "sentinel-blocks.db").exists()
    # on_stop closed both stores: their checks fail now.
    for check in definition.checks.values():
        with pytest.raises(RuntimeError, match="not open"):
            await check()


async def test_sentinel_writes_signed_checkpoints_of_the_shared_chain_as_it_grows(tmp_path: Path) -> None:
    appender = SqliteAuditStore(tmp_path / "audit.db")
    await appender.open()
    config = config_for("sentinel", DATA_DIR=str(tmp_path), AUDIT_CHECKPOINT_SECONDS="0.05")
    running = await start_service(config, server.definition(config), chain)
    try:
        key_file = tmp_path / "audit-checkpoint-key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        key = load_or_create_checkpoint_key(key_file)
        for count in (3, 2):
            head = (await appender.append([entry(f"users/u{i}") for i in range(count)]))[-1].sequence
            checkpoint = await eventually(
                appender.latest_checkpoint, lambda c, head=head: c is not None and c.sequence == head
            )
            assert checkpoint.key == key.public and key.verifies(checkpoint)
        async with grpc.aio.insecure_channel(running.address) as channel:
            reply = await aus_grpc.AuditServiceStub(channel).VerifyAuditChain(aus.VerifyAuditChainRequest())
        assert (reply.ok, reply.checkpoint_sequence, reply.checkpoint_key) == (True, 5, key.public)
        # The witness is written just after the checkpoint is stored.
        witness = CheckpointWitness(tmp_path / "audit-checkpoint-last")
        await eventually(
            lambda: asyncio.to_thread(witness.read), lambda seen: seen == (2, 5, checkpoint.hash)
        )
    finally:
        await running.stop(grace=0.5)
        await appender.close()


async def eventually(read: Any, done: Any, timeout: float = 30.0) -> Any:
    """Polls ``read()`` until ``done(value)``; the value, or a failed assertion after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await read()
        if done(value):
            return value
        assert loop.time() < deadline, f"still {value!r} after {timeout} s"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"AUDIT_CHECKPOINT_RECORDS": "0"}, "BHIV_AUDIT_CHECKPOINT_RECORDS"),
        ({"AUDIT_CHECKPOINT_SECONDS": "nan"}, "BHIV_AUDIT_CHECKPOINT_SECONDS"),
        ({"AUDIT_CHECKPOINT_SECONDS": "-1"}, "BHIV_AUDIT_CHECKPOINT_SECONDS"),
    ],
)
def test_bad_checkpoint_setting_fails_fast(tmp_path: Path, env: dict[str, str], setting: str) -> None:
    with pytest.raises(ConfigError, match=setting):
        server.definition(config_for("sentinel", DATA_DIR=str(tmp_path), **env))


def test_a_bad_checkpoint_key_file_fails_fast(tmp_path: Path) -> None:
    key_file = tmp_path / "elsewhere" / "key"
    key_file.parent.mkdir()
    key_file.write_bytes(b"not a key")
    with pytest.raises(ConfigError, match="BHIV_AUDIT_CHECKPOINT_KEY_FILE"):
        server.definition(
            config_for("sentinel", DATA_DIR=str(tmp_path), AUDIT_CHECKPOINT_KEY_FILE=str(key_file))
        )


def test_bad_store_url_fails_fast() -> None:
    with pytest.raises(ConfigError, match="BHIV_AUDIT_STORE_URL"):
        server.definition(config_for("sentinel", AUDIT_STORE_URL="sqlite:///x"))
    with pytest.raises(ConfigError, match="BHIV_SENTINEL_STORE_URL"):
        server.definition(config_for("sentinel", SENTINEL_STORE_URL="sqlite:///x"))


def test_server_module_keeps_its_entry_points() -> None:
    assert server.NAME == "sentinel"
    assert callable(server.build_server) and callable(server.serve)


async def list_every_page(config: Any, page_size: int) -> tuple[list[int], list[int]]:
    """Walks ListAuditRecords on a sentinel built from ``config``: the sequences, and each reply's size."""
    running = await start_service(config, server.definition(config), chain)
    seen: list[int] = []
    sizes: list[int] = []
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            audit = aus_grpc.AuditServiceStub(channel)
            token = ""
            while True:
                reply = await audit.ListAuditRecords(
                    aus.ListAuditRecordsRequest(page_size=page_size, page_token=token), timeout=60
                )
                seen += [r.sequence for r in reply.audit_records]
                sizes.append(reply.ByteSize())
                token = reply.next_page_token
                if not token:
                    return seen, sizes
    finally:
        await running.stop(grace=0.5)


async def test_a_page_of_the_largest_records_fits_the_message_limit(tmp_path: Path) -> None:
    writer = SqliteAuditStore(tmp_path / "audit.db")
    await writer.open()
    big = "\u00e9" * 4096  # every text field at its cap
    await writer.append(
        [
            entry(big, role=big, method=big, resource=big, address=big, service=big)._replace(trace_id=big)
            for _ in range(120)
        ]
    )
    await writer.close()
    config = config_for("sentinel", DATA_DIR=str(tmp_path), MAX_MESSAGE_BYTES=str(64 * 1024))
    seen, sizes = await list_every_page(config, 500)
    assert seen == list(range(1, 121))
    assert max(sizes) <= 64 * 1024
    assert len(sizes) > 1


async def test_a_default_page_of_records_written_before_the_caps_fits_the_message_limit(
    tmp_path: Path,
) -> None:
    # A log written before the caps: records of 1.5 and 5 MiB (any two exceed the 4 MiB limit).
    backend = SqliteBackend(tmp_path / "audit.db")
    writer = backend.new_store()
    await writer.open()
    records = await writer.append([entry(f"users/u{i}") for i in range(1, 5)])
    await writer.close()
    for record, size in zip(records, (1_572_864, 5_242_880, 1_572_864, 1_572_864), strict=True):
        huge = written_before_the_caps(record, resource="customers/" + "x" * size)
        await backend.overwrite(record.sequence, huge)
    seen, sizes = await list_every_page(config_for("sentinel", DATA_DIR=str(tmp_path)), 0)
    assert seen == [1, 2, 3, 4]
    assert max(sizes) <= 4 * 1024 * 1024
