"""Sentinel's own data: the security events services report and the threats detected from them.

Incidents, blocks and alerts come later (issue 11 item 8).

:class:`SentinelStore` is the protocol; :class:`SqliteSentinelStore` keeps ``<data_dir>/sentinel.db``
and :class:`MongoSentinelStore` a MongoDB database, chosen by ``BHIV_SENTINEL_STORE_URL``. The audit
chain is not here: it is the mesh-wide :mod:`bhiv_core.audit` store, which sentinel only reads.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from pymongo import ASCENDING
from pymongo.errors import DuplicateKeyError
from pymongo.write_concern import WriteConcern

from bhiv_core.audit.record import from_micros, to_micros
from bhiv_core.runtime.config import RuntimeConfig
from bhiv_core.runtime.errors import AlreadyExists
from bhiv_core.storage.mongo import MongoDatabase, mongo_url_setting
from bhiv_core.storage.pagination import bad_page_token, cut_page, decode_page_token, page_size_of
from bhiv_core.storage.sqlite import SqliteDatabase

__all__ = [
    "EventFilter",
    "EventKind",
    "MongoSentinelStore",
    "SecurityEvent",
    "SentinelStore",
    "SqliteSentinelStore",
    "ThreatEventRecord",
    "make_sentinel_store",
]


class EventKind(StrEnum):
    """The kind of a reported security event (``bhiv.sentinel.v1.SecurityEventKind``)."""

    LOGIN_FAILED = "login_failed"
    """A login with a wrong username or password."""
    LOGIN_SUCCEEDED = "login_succeeded"
    """A successful login (resets brute-force counting for the account)."""
    TOKEN_INVALID = "token_invalid"  # noqa: S105 - a kind name, not a secret
    """A token that failed verification: bad signature, expired, malformed or revoked."""
    TOKEN_REPLAYED = "token_replayed"  # noqa: S105 - a kind name, not a secret
    """A spent refresh token presented again."""
    PERMISSION_DENIED = "permission_denied"
    """A call refused for lack of permission."""
    SUSPICIOUS_INPUT = "suspicious_input"
    """Request text fields a service's screening matched (the event's ``fields``)."""


@dataclass(frozen=True, slots=True)
class SecurityEvent:
    """A fact a service reported to sentinel.

    Attributes:
        event_id: The id sentinel assigned: 12 hex digits of the receive time in milliseconds and
            20 random hex digits, so ids sort by receive time.
        kind: What happened.
        source_address: The client address involved (normalised IP).
        principal: The principal involved, or the username tried; empty when unknown.
        method: The full gRPC method involved; empty when none.
        detail: Extra context for a person; never a secret.
        reporter: The subject of the service that reported it (``services/identity``).
        event_time: When it happened, as reported (UTC).
        receive_time: When sentinel received it (UTC).
        fields: For :attr:`EventKind.SUSPICIOUS_INPUT`, the matched request fields as
            ``(path, excerpt)`` pairs (at most 16, bounded by the contract); empty otherwise.

    """

    event_id: str
    kind: EventKind
    source_address: str
    principal: str
    method: str
    detail: str
    reporter: str
    event_time: datetime
    receive_time: datetime
    fields: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events :meth:`SentinelStore.list_security_events` returns; every set field must match.

    Attributes:
        kind: Only this kind, when set.
        source_address: Only events from this address, when set.
        principal: Only events involving this principal, when set.
        start_time: Only events that happened at or after this time, when set.
        end_time: Only events that happened before this time, when set.

    """

    kind: EventKind | None = None
    source_address: str = ""
    principal: str = ""
    start_time: datetime | None = None
    end_time: datetime | None = None

    def fingerprint(self) -> str:
        """A short digest of the filter, binding page tokens to it."""
        parts = [
            self.kind or "",
            self.source_address,
            self.principal,
            "" if self.start_time is None else str(to_micros(self.start_time)),
            "" if self.end_time is None else str(to_micros(self.end_time)),
        ]
        return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class ThreatEventRecord:
    """One detection of the threat detection agent (``bhiv.sentinel.v1.ThreatEvent``).

    Attributes:
        event_id: The id sentinel assigned (as for security events: sorts by detection time).
        rule_id: The rule or detector that fired, such as ``bruteforce.address``.
        category: The category's name (``injection``, ``brute_force``, ``flood``, ``scanning``,
            ``token_abuse``).
        severity: 1 (low) to 4 (critical).
        source_address: The client address involved; empty when unknown.
        principal: The account involved; empty when none.
        method: The full gRPC method involved; empty when none.
        evidence: What matched, at most 2000 characters; never a secret.
        detect_time: When it was detected (UTC).
        incident: The incident it was grouped into; empty until the response agent groups it.

    """

    event_id: str
    rule_id: str
    category: str
    severity: int
    source_address: str
    principal: str
    method: str
    evidence: str
    detect_time: datetime
    incident: str = ""


class SentinelStore(Protocol):
    """Sentinel's storage."""

    async def open(self) -> None:
        """Opens the store (creates the schema when missing)."""

    async def close(self) -> None:
        """Closes the store."""

    async def ping(self) -> None:
        """Health check: returns when the store answers, raises otherwise."""

    async def add_security_event(self, event: SecurityEvent) -> SecurityEvent:
        """Stores a new event durably and returns it.

        Raises:
            AlreadyExists: An event with the same id is stored.

        """

    async def get_security_event(self, event_id: str) -> SecurityEvent | None:
        """Returns the event with ``event_id``, or None."""

    async def list_security_events(
        self, query: EventFilter, page_size: int = 0, page_token: str = ""
    ) -> tuple[builtins.list[SecurityEvent], str]:
        """Returns one page of matching events in id (receive) order, and the next page token.

        Raises:
            InvalidArgument: A negative ``page_size`` or a token of another query.

        """

    async def add_threat_event(self, event: ThreatEventRecord) -> ThreatEventRecord:
        """Stores a detection durably and returns it.

        Raises:
            AlreadyExists: An event with the same id is stored.

        """

    async def list_threat_events(
        self, source_address: str = "", page_size: int = 0, page_token: str = ""
    ) -> tuple[builtins.list[ThreatEventRecord], str]:
        """Returns one page of detections (of ``source_address`` when set) in id order.

        Raises:
            InvalidArgument: A negative ``page_size`` or a token of another query.

        """


def _decode_token(token: str, query: EventFilter) -> str:
    """Returns the event id a page token continues after (empty for the first page)."""
    if not token:
        return ""
    after = decode_page_token(token, query.fingerprint())
    if not isinstance(after, str):
        raise bad_page_token()
    return after


def _page(
    events: builtins.list[SecurityEvent], size: int, query: EventFilter
) -> tuple[builtins.list[SecurityEvent], str]:
    return cut_page(events, size, lambda event: event.event_id, query.fingerprint())


def _event_from_row(row: sqlite3.Row | dict[str, Any]) -> SecurityEvent:
    return SecurityEvent(
        event_id=str(row["event_id"]),
        kind=EventKind(row["kind"]),
        source_address=str(row["source_address"]),
        principal=str(row["principal"]),
        method=str(row["method"]),
        detail=str(row["detail"]),
        reporter=str(row["reporter"]),
        event_time=from_micros(int(row["event_time_us"])),
        receive_time=from_micros(int(row["receive_time_us"])),
        # Documents written before the fields existed have none.
        fields=_fields_from(row["fields"] if "fields" in row.keys() else None),  # noqa: SIM118 - sqlite3.Row
    )


def _fields_from(stored: Any) -> tuple[tuple[str, str], ...]:
    """The screened fields of a row (a JSON text in SQLite, a list of documents in MongoDB)."""
    items = json.loads(stored) if isinstance(stored, str) else (stored or [])
    return tuple((str(item["path"]), str(item["excerpt"])) for item in items)


def _event_values(event: SecurityEvent) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "kind": event.kind.value,
        "source_address": event.source_address,
        "principal": event.principal,
        "method": event.method,
        "detail": event.detail,
        "reporter": event.reporter,
        "event_time_us": to_micros(event.event_time),
        "receive_time_us": to_micros(event.receive_time),
        "fields": [{"path": path, "excerpt": excerpt} for path, excerpt in event.fields],
    }


def _threat_from_row(row: sqlite3.Row | dict[str, Any]) -> ThreatEventRecord:
    return ThreatEventRecord(
        event_id=str(row["event_id"]),
        rule_id=str(row["rule_id"]),
        category=str(row["category"]),
        severity=int(row["severity"]),
        source_address=str(row["source_address"]),
        principal=str(row["principal"]),
        method=str(row["method"]),
        evidence=str(row["evidence"]),
        detect_time=from_micros(int(row["detect_time_us"])),
        incident=str(row["incident"]),
    )


def _threat_values(event: ThreatEventRecord) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "rule_id": event.rule_id,
        "category": event.category,
        "severity": event.severity,
        "source_address": event.source_address,
        "principal": event.principal,
        "method": event.method,
        "evidence": event.evidence,
        "detect_time_us": to_micros(event.detect_time),
        "incident": event.incident,
    }


def _threat_query(source_address: str) -> EventFilter:
    """Threat pages are bound to their filter like event pages (the fingerprint of the address)."""
    return EventFilter(source_address=f"threats:{source_address}")


# --- SQLite ---------------------------------------------------------------------------------------

_SQLITE_MIGRATIONS = (
    """
    CREATE TABLE security_events (
        event_id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        source_address TEXT NOT NULL,
        principal TEXT NOT NULL,
        method TEXT NOT NULL,
        detail TEXT NOT NULL,
        reporter TEXT NOT NULL,
        event_time_us INTEGER NOT NULL,
        receive_time_us INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX security_events_by_source ON security_events (source_address, event_id);
    CREATE INDEX security_events_by_kind ON security_events (kind, event_id);
    CREATE INDEX security_events_by_principal ON security_events (principal, event_id);
    CREATE INDEX security_events_by_time ON security_events (event_time_us);
    """,
    """
    CREATE TABLE threat_events (
        event_id TEXT PRIMARY KEY,
        rule_id TEXT NOT NULL,
        category TEXT NOT NULL,
        severity INTEGER NOT NULL,
        source_address TEXT NOT NULL,
        principal TEXT NOT NULL,
        method TEXT NOT NULL,
        evidence TEXT NOT NULL,
        detect_time_us INTEGER NOT NULL,
        incident TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX threat_events_by_source ON threat_events (source_address, event_id);
    """,
    # The request fields of SUSPICIOUS_INPUT events, as a JSON list of {path, excerpt}.
    """
    ALTER TABLE security_events ADD COLUMN fields TEXT NOT NULL DEFAULT '[]';
    """,
)

_EVENT_COLUMNS = (
    "event_id",
    "kind",
    "source_address",
    "principal",
    "method",
    "detail",
    "reporter",
    "event_time_us",
    "receive_time_us",
    "fields",
)
_THREAT_COLUMNS = tuple(_threat_values(ThreatEventRecord("", "", "", 0, "", "", "", "", from_micros(0))))
# Composed only from the fixed names above; every value is a bound parameter.
_EVENT_SELECT = "SELECT " + ", ".join(_EVENT_COLUMNS) + " FROM security_events"  # noqa: S608
_EVENT_INSERT = (
    "INSERT INTO security_events ("  # noqa: S608
    + ", ".join(_EVENT_COLUMNS)
    + ") VALUES ("
    + ", ".join(f":{c}" for c in _EVENT_COLUMNS)
    + ")"
)
_THREAT_SELECT = "SELECT " + ", ".join(_THREAT_COLUMNS) + " FROM threat_events"  # noqa: S608
_THREAT_INSERT = (
    "INSERT INTO threat_events ("  # noqa: S608
    + ", ".join(_THREAT_COLUMNS)
    + ") VALUES ("
    + ", ".join(f":{c}" for c in _THREAT_COLUMNS)
    + ")"
)


class SqliteSentinelStore:
    """Sentinel's data in one SQLite file (WAL, ``synchronous=FULL``).

    Args:
        path: The database file, ``<data_dir>/sentinel.db``.

    """

    def __init__(self, path: Path):
        self.path = path
        self._db = SqliteDatabase(path, _SQLITE_MIGRATIONS)

    async def open(self) -> None:
        """Opens the file and applies migrations."""
        await self._db.open()

    async def close(self) -> None:
        """Closes the file."""
        await self._db.close()

    async def ping(self) -> None:
        """Health check: the file answers a query."""
        await self._db.ping()

    async def add_security_event(self, event: SecurityEvent) -> SecurityEvent:
        """Inserts ``event``; durable when this returns."""
        values = _event_values(event)
        values["fields"] = json.dumps(values["fields"], ensure_ascii=False)

        def write(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(_EVENT_INSERT, values)
            except sqlite3.IntegrityError:
                raise AlreadyExists(f"security event {event.event_id} already exists") from None

        await self._db.write(write)
        return event

    async def get_security_event(self, event_id: str) -> SecurityEvent | None:
        """Returns the event with ``event_id``, or None."""

        def read(conn: sqlite3.Connection) -> SecurityEvent | None:
            row = conn.execute(f"{_EVENT_SELECT} WHERE event_id = ?", (event_id,)).fetchone()
            return None if row is None else _event_from_row(row)

        return await self._db.read(read)

    async def list_security_events(
        self, query: EventFilter, page_size: int = 0, page_token: str = ""
    ) -> tuple[builtins.list[SecurityEvent], str]:
        """Returns one page of matching events in id order."""
        size = page_size_of(page_size)
        clauses = ["event_id > ?"]
        params: builtins.list[Any] = [_decode_token(page_token, query)]
        if query.kind is not None:
            clauses.append("kind = ?")
            params.append(query.kind.value)
        for column in ("source_address", "principal"):
            value = getattr(query, column)
            if value:
                clauses.append(f"{column} = ?")
                params.append(value)
        if query.start_time is not None:
            clauses.append("event_time_us >= ?")
            params.append(to_micros(query.start_time))
        if query.end_time is not None:
            clauses.append("event_time_us < ?")
            params.append(to_micros(query.end_time))
        sql = f"{_EVENT_SELECT} WHERE {' AND '.join(clauses)} ORDER BY event_id LIMIT ?"

        def read(conn: sqlite3.Connection) -> builtins.list[SecurityEvent]:
            return [_event_from_row(r) for r in conn.execute(sql, (*params, size + 1)).fetchall()]

        return _page(await self._db.read(read), size, query)

    async def add_threat_event(self, event: ThreatEventRecord) -> ThreatEventRecord:
        """Inserts ``event``; durable when this returns."""
        values = _threat_values(event)

        def write(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(_THREAT_INSERT, values)
            except sqlite3.IntegrityError:
                raise AlreadyExists(f"threat event {event.event_id} already exists") from None

        await self._db.write(write)
        return event

    async def list_threat_events(
        self, source_address: str = "", page_size: int = 0, page_token: str = ""
    ) -> tuple[builtins.list[ThreatEventRecord], str]:
        """Returns one page of detections in id order."""
        size = page_size_of(page_size)
        query = _threat_query(source_address)
        clauses, params = ["event_id > ?"], [_decode_token(page_token, query)]
        if source_address:
            clauses.append("source_address = ?")
            params.append(source_address)
        sql = f"{_THREAT_SELECT} WHERE {' AND '.join(clauses)} ORDER BY event_id LIMIT ?"

        def read(conn: sqlite3.Connection) -> builtins.list[ThreatEventRecord]:
            return [_threat_from_row(r) for r in conn.execute(sql, (*params, size + 1)).fetchall()]

        return cut_page(await self._db.read(read), size, lambda e: e.event_id, query.fingerprint())


# --- MongoDB --------------------------------------------------------------------------------------


class MongoSentinelStore:
    """Sentinel's data in MongoDB: a ``security_events`` collection keyed by event id.

    Args:
        database: The database (``bhiv_sentinel``).

    """

    def __init__(self, database: MongoDatabase):
        self._database = database
        self._events = database.db.get_collection(
            "security_events", write_concern=WriteConcern("majority", j=True)
        )
        self._threats = database.db.get_collection(
            "threat_events", write_concern=WriteConcern("majority", j=True)
        )

    async def open(self) -> None:
        """Creates the indexes."""
        for field in ("source_address", "kind", "principal"):
            await self._events.create_index([(field, ASCENDING), ("_id", ASCENDING)], name=f"by_{field}")
        await self._events.create_index([("event_time_us", ASCENDING)], name="by_time")
        await self._threats.create_index(
            [("source_address", ASCENDING), ("_id", ASCENDING)], name="by_source_address"
        )

    async def close(self) -> None:
        """Closes the client."""
        await self._database.close()

    async def ping(self) -> None:
        """Health check: the server answers ``ping``."""
        await self._database.ping()

    async def add_security_event(self, event: SecurityEvent) -> SecurityEvent:
        """Inserts ``event`` (``_id`` is its id); acknowledged by a majority, journaled."""
        doc = _event_values(event)
        doc["_id"] = doc.pop("event_id")
        try:
            await self._events.insert_one(doc)
        except DuplicateKeyError:
            raise AlreadyExists(f"security event {event.event_id} already exists") from None
        return event

    async def get_security_event(self, event_id: str) -> SecurityEvent | None:
        """Returns the event with ``event_id``, or None."""
        doc = await self._events.find_one({"_id": event_id})
        return None if doc is None else _event_from_row({**doc, "event_id": doc["_id"]})

    async def list_security_events(
        self, query: EventFilter, page_size: int = 0, page_token: str = ""
    ) -> tuple[builtins.list[SecurityEvent], str]:
        """Returns one page of matching events in id order."""
        size = page_size_of(page_size)
        selector: dict[str, Any] = {"_id": {"$gt": _decode_token(page_token, query)}}
        if query.kind is not None:
            selector["kind"] = query.kind.value
        for field in ("source_address", "principal"):
            value = getattr(query, field)
            if value:
                selector[field] = value
        time_range: dict[str, int] = {}
        if query.start_time is not None:
            time_range["$gte"] = to_micros(query.start_time)
        if query.end_time is not None:
            time_range["$lt"] = to_micros(query.end_time)
        if time_range:
            selector["event_time_us"] = time_range
        cursor = self._events.find(selector).sort("_id", ASCENDING).limit(size + 1)
        events = [_event_from_row({**doc, "event_id": doc["_id"]}) async for doc in cursor]
        return _page(events, size, query)

    async def add_threat_event(self, event: ThreatEventRecord) -> ThreatEventRecord:
        """Inserts ``event`` (``_id`` is its id); acknowledged by a majority, journaled."""
        doc = _threat_values(event)
        doc["_id"] = doc.pop("event_id")
        try:
            await self._threats.insert_one(doc)
        except DuplicateKeyError:
            raise AlreadyExists(f"threat event {event.event_id} already exists") from None
        return event

    async def list_threat_events(
        self, source_address: str = "", page_size: int = 0, page_token: str = ""
    ) -> tuple[builtins.list[ThreatEventRecord], str]:
        """Returns one page of detections in id order."""
        size = page_size_of(page_size)
        query = _threat_query(source_address)
        selector: dict[str, Any] = {"_id": {"$gt": _decode_token(page_token, query)}}
        if source_address:
            selector["source_address"] = source_address
        cursor = self._threats.find(selector).sort("_id", ASCENDING).limit(size + 1)
        found = [_threat_from_row({**doc, "event_id": doc["_id"]}) async for doc in cursor]
        return cut_page(found, size, lambda e: e.event_id, query.fingerprint())


def make_sentinel_store(config: RuntimeConfig) -> SentinelStore:
    """Returns sentinel's store: ``<data_dir>/sentinel.db``, or MongoDB by ``BHIV_SENTINEL_STORE_URL``.

    Raises:
        ConfigError: ``BHIV_SENTINEL_STORE_URL`` is set but is not a MongoDB URL.

    """
    url = mongo_url_setting(config.settings, "SENTINEL_STORE_URL", "the SQLite file <data_dir>/sentinel.db")
    if url is None:
        return SqliteSentinelStore(config.data_dir / "sentinel.db")
    return MongoSentinelStore(MongoDatabase(url, "bhiv_sentinel"))
