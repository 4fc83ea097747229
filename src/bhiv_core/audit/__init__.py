"""The tamper-evident audit log: hash-chained records of every call, their stores, and the sink.

Every service appends to one chain (:func:`make_audit_store`) through an :class:`AuditSink`, fed by
:class:`~bhiv_core.interceptors.audit.AuditInterceptor`; sentinel reads and verifies it.
"""

from bhiv_core.audit.record import (
    GENESIS_HASH,
    AuditEntry,
    AuditRecord,
    ChainBreak,
    ChainVerifier,
    VerifyResult,
    seal,
)
from bhiv_core.audit.sink import AuditSink, AuditWriteError
from bhiv_core.audit.store import AuditFilter, AuditStore, make_audit_store
from bhiv_core.audit.store.mongo import MongoAuditStore
from bhiv_core.audit.store.sqlite import SqliteAuditStore

__all__ = [
    "GENESIS_HASH",
    "AuditEntry",
    "AuditFilter",
    "AuditRecord",
    "AuditSink",
    "AuditStore",
    "AuditWriteError",
    "ChainBreak",
    "ChainVerifier",
    "MongoAuditStore",
    "SqliteAuditStore",
    "VerifyResult",
    "make_audit_store",
    "seal",
]
