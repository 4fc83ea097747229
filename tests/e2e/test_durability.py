"""Durability and tamper evidence on a mesh of its own (these tests kill a service and edit files).

A mutation's response means both the change and its audit record are on disk: SIGKILL right after
the response loses neither. Editing a stored audit record is found by sentinel's verification.
"""

from __future__ import annotations

import os
import secrets
import signal
import sqlite3
from collections.abc import AsyncIterator

import grpc
import pytest

from bhiv.identity.v1 import user_pb2
from bhiv.identity.v1 import user_service_pb2 as us
from bhiv.identity.v1 import user_service_pb2_grpc as us_grpc
from bhiv.sentinel.v1 import audit_record_pb2
from bhiv.sentinel.v1 import audit_service_pb2 as audit
from bhiv.sentinel.v1 import audit_service_pb2_grpc as audit_grpc
from bhiv_core.mesh import Mesh
from tests.e2e.client import Session, admin_session
from tests.e2e.conftest import mesh_env

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
async def own_mesh(tmp_path_factory: pytest.TempPathFactory, collector) -> AsyncIterator[Mesh]:
    started = Mesh.with_free_ports(tmp_path_factory.mktemp("durability"), env=mesh_env(collector[1]))
    async with started:
        yield started


@pytest.fixture(scope="module")
async def admin(own_mesh: Mesh) -> Session:
    return await admin_session(own_mesh)


def rows(path, sql: str, *args: object) -> list[tuple]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return conn.execute(sql, args).fetchall()


async def test_editing_a_stored_audit_record_is_reported_by_sentinel(own_mesh: Mesh, admin: Session) -> None:
    metadata = admin.metadata
    async with grpc.aio.insecure_channel(own_mesh.edge_address) as channel:
        stub = audit_grpc.AuditServiceStub(channel)
        before = await stub.VerifyAuditChain(audit.VerifyAuditChainRequest(), metadata=metadata)
        assert before.ok, before.detail
        path = own_mesh.data_dir / "audit.db"
        with sqlite3.connect(path) as conn:
            # An attacker with file access drops the append-only guards and rewrites history.
            for trigger in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
                conn.execute(f"DROP TRIGGER {trigger[0]}")
            victim = conn.execute(
                "SELECT MIN(sequence) FROM audit_records WHERE outcome_code = 'OK'"
            ).fetchone()[0]
            conn.execute(
                "UPDATE audit_records SET outcome_code = 'PERMISSION_DENIED' WHERE sequence = ?", (victim,)
            )
        # The earliest records lie behind sentinel's latest checkpoint, which the default verification
        # starts from: the full walk is the one that reads them.
        full = audit.VerifyAuditChainRequest(mode=audit.AUDIT_VERIFY_MODE_FULL)
        after = await stub.VerifyAuditChain(full, metadata=metadata)
    assert not after.ok
    assert after.first_broken_sequence == victim
    assert after.reason == audit_record_pb2.CHAIN_BREAK_REASON_HASH_MISMATCH


async def test_sigkill_after_a_mutation_loses_neither_it_nor_its_audit_record(
    own_mesh: Mesh, admin: Session
) -> None:
    username = f"durable-{secrets.token_hex(4)}"
    user = user_pb2.User(username=username, role=user_pb2.ROLE_SALES)
    async with grpc.aio.insecure_channel(own_mesh.edge_address) as channel:
        # Let sentinel learn the signing key now: identity is about to die.
        await audit_grpc.AuditServiceStub(channel).VerifyAuditChain(
            audit.VerifyAuditChainRequest(), metadata=admin.metadata
        )
        reply = await us_grpc.UserServiceStub(channel).CreateUser(
            us.CreateUserRequest(user=user, password=secrets.token_urlsafe(16)), metadata=admin.metadata
        )
    os.kill(own_mesh.procs["identity"].pid, signal.SIGKILL)
    own_mesh.procs["identity"].wait(timeout=10)

    assert rows(own_mesh.data_dir / "identity.db", "SELECT username FROM users WHERE username = ?", username)
    audited = rows(
        own_mesh.data_dir / "audit.db",
        "SELECT principal, outcome_code FROM audit_records WHERE method = ? ORDER BY sequence DESC LIMIT 1",
        "/bhiv.identity.v1.UserService/CreateUser",
    )
    assert audited == [(admin.user.name, "OK")]
    assert reply.user.username == username
