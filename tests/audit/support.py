"""Helpers of the audit tests: entries, and store backends (SQLite; MongoDB with BHIV_TEST_MONGODB_URL).

Each backend makes store instances over the same data (a new instance is another connection, like
another process) and tampers with stored records directly, the way an attacker with database
access would, bypassing the store.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bhiv_core.audit.record import AuditEntry, AuditRecord, to_micros
from bhiv_core.audit.store.mongo import MongoAuditStore
from bhiv_core.audit.store.sqlite import SqliteAuditStore
from bhiv_core.storage.mongo import MongoDatabase

MONGO_URL = os.environ.get("BHIV_TEST_MONGODB_URL", "")
MONGO_SKIP = (
    "BHIV_TEST_MONGODB_URL is not set: the MongoDB run of this contract suite needs a MongoDB "
    "replica set (for transactions), e.g. mongodb://localhost:27017/?replicaSet=rs0"
)


def entry(
    principal: str = "users/u1",
    *,
    role: str = "sales",
    method: str = "/bhiv.crm.v1.CustomerService/GetCustomer",
    resource: str = "customers/c1",
    code: str = "OK",
    number: int = 0,
    address: str = "127.0.0.1",
    time: datetime | None = None,
    duration_ms: float = 1.234567,
    service: str = "crm",
) -> AuditEntry:
    return AuditEntry(
        time_us=to_micros(time or datetime.now(UTC)),
        service=service,
        principal=principal,
        role=role,
        method=method,
        resource=resource,
        outcome_code=code,
        outcome_code_number=number,
        client_address=address,
        trace_id="0af7651916cd43dd8448eb211c80319c",
        duration_ms=duration_ms,
    )


def stored_fields(record: AuditRecord) -> dict[str, Any]:
    """The record as stored columns (time as microseconds)."""
    return record._asdict()


def written_before_the_caps(record: AuditRecord, **fields: str) -> AuditRecord:
    """``record`` with ``fields`` as a release without text caps stored them, hash and all.

    Write it over the original with a backend's ``overwrite``.
    """
    changed = record._replace(**fields)
    return changed._replace(hash=changed.computed_hash())


class SqliteBackend:
    name = "sqlite"

    def __init__(self, path: Path):
        self.path = path

    def new_store(self) -> SqliteAuditStore:
        return SqliteAuditStore(self.path)

    def _tamper(self, *statements: tuple[str, tuple[Any, ...]]) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            # An attacker with file access drops the append-only guards first.
            conn.execute("DROP TRIGGER IF EXISTS audit_records_no_update")
            conn.execute("DROP TRIGGER IF EXISTS audit_records_no_delete")
            conn.execute("DROP TRIGGER IF EXISTS audit_checkpoints_no_update")
            conn.execute("DROP TRIGGER IF EXISTS audit_checkpoints_no_delete")
            conn.execute("BEGIN IMMEDIATE")
            for sql, params in statements:
                conn.execute(sql, params)
            conn.execute("COMMIT")
        finally:
            conn.close()

    async def edit(self, sequence: int, **fields: Any) -> None:
        assignments = ", ".join(f"{k} = ?" for k in fields)
        sql = f"UPDATE audit_records SET {assignments} WHERE sequence = ?"
        self._tamper((sql, (*fields.values(), sequence)))

    async def delete(self, sequence: int) -> None:
        self._tamper(("DELETE FROM audit_records WHERE sequence = ?", (sequence,)))

    async def overwrite(self, sequence: int, record: AuditRecord) -> None:
        fields = stored_fields(record)
        fields.pop("sequence")
        await self.edit(sequence, **fields)

    async def set_head(self, sequence: int, hash_: str) -> None:
        self._tamper(("UPDATE audit_head SET sequence = ?, hash = ? WHERE id = 1", (sequence, hash_)))

    async def edit_checkpoint(self, number: int, **fields: Any) -> None:
        assignments = ", ".join(f"{k} = ?" for k in fields)
        sql = f"UPDATE audit_checkpoints SET {assignments} WHERE number = ?"
        self._tamper((sql, (*fields.values(), number)))

    async def delete_checkpoint(self, number: int) -> None:
        self._tamper(("DELETE FROM audit_checkpoints WHERE number = ?", (number,)))

    async def close(self) -> None:
        pass


class MongoBackend:
    name = "mongo"

    def __init__(self, url: str):
        self.url = url
        self.database = f"bhiv_audit_test_{uuid.uuid4().hex[:12]}"
        self._admin = MongoDatabase(url, self.database)

    def new_store(self) -> MongoAuditStore:
        return MongoAuditStore(MongoDatabase(self.url, self.database))

    async def edit(self, sequence: int, **fields: Any) -> None:
        result = await self._admin.db["audit_records"].update_one({"sequence": sequence}, {"$set": fields})
        assert result.matched_count == 1

    async def delete(self, sequence: int) -> None:
        result = await self._admin.db["audit_records"].delete_one({"sequence": sequence})
        assert result.deleted_count == 1

    async def overwrite(self, sequence: int, record: AuditRecord) -> None:
        fields = stored_fields(record)
        fields.pop("sequence")
        await self.edit(sequence, **fields)

    async def set_head(self, sequence: int, hash_: str) -> None:
        await self._admin.db["audit_head"].update_one(
            {"_id": "chain"}, {"$set": {"sequence": sequence, "hash": hash_}}
        )

    async def edit_checkpoint(self, number: int, **fields: Any) -> None:
        result = await self._admin.db["audit_checkpoints"].update_one({"_id": number}, {"$set": fields})
        assert result.matched_count == 1

    async def delete_checkpoint(self, number: int) -> None:
        result = await self._admin.db["audit_checkpoints"].delete_one({"_id": number})
        assert result.deleted_count == 1

    async def close(self) -> None:
        await self._admin.client.drop_database(self.database)
        await self._admin.close()


Backend = SqliteBackend | MongoBackend
