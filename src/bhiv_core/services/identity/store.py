"""Where identity keeps its data: users, keys, refresh tokens, revocations, idempotency, throttling.

:class:`IdentityStore` is the storage contract; :class:`SqliteIdentityStore` (the embedded default,
``<data_dir>/identity.db``) and :class:`MongoIdentityStore` (deployments) implement it, and one
contract test suite runs against both. Every change that touches several records is one
transaction: spending a refresh token and inserting its successor, revoking a family together with
the access tokens issued from it, creating a user together with its idempotency key, rotating the
signing key, counting one failed login on all its throttle counters. Refresh tokens are stored
only as their SHA-256 hex digest; private signing keys only encrypted with the key-encryption key;
throttle counters only under hashed keys (see :mod:`bhiv_core.services.identity.throttle`).

Times are Unix seconds (floats) everywhere, so the service logic is the same over both stores.
"""

from __future__ import annotations

import enum
import sqlite3
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pymongo import ASCENDING, DESCENDING, UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.errors import DuplicateKeyError

from bhiv_core.services.identity.config import IdentityConfig
from bhiv_core.storage.mongo import MongoDatabase
from bhiv_core.storage.sqlite import SqliteDatabase

__all__ = [
    "IdentityStore",
    "MongoIdentityStore",
    "RefreshTokenRecord",
    "Revocation",
    "SigningKeyRecord",
    "SpendOutcome",
    "SqliteIdentityStore",
    "ThrottleEntry",
    "UserRecord",
    "UsernameTaken",
    "capped_expiry",
    "make_identity_store",
]


@dataclass(frozen=True, slots=True)
class UserRecord:
    """A stored user.

    Attributes:
        id: The id of ``users/{id}``.
        username: The login name as given; unique regardless of case.
        display_name: The display name.
        email: The e-mail address, or empty.
        role: The role in lower case (``admin``, ``ops``, ``sales``, ``support``, ``customer``).
        customer: ``customers/{id}`` for customer accounts, empty otherwise.
        disabled: True when the account may not log in.
        password_hash: The encoded scrypt hash.
        create_time: When it was created (Unix seconds).
        update_time: When it last changed (Unix seconds).
        etag: The version for optimistic concurrency; changes on every update.

    """

    id: str
    username: str
    display_name: str
    email: str
    role: str
    customer: str
    disabled: bool
    password_hash: str
    create_time: float
    update_time: float
    etag: str

    @property
    def name(self) -> str:
        """The resource name, ``users/{id}``."""
        return f"users/{self.id}"

    @property
    def username_key(self) -> str:
        """The case-folded username that uniqueness and ordering use."""
        return username_key(self.username)


def username_key(username: str) -> str:
    """The case-folded form of a username: ``Ada`` and ``ada`` are the same account."""
    return username.lower()


@dataclass(frozen=True, slots=True)
class SigningKeyRecord:
    """A stored Ed25519 signing key.

    Attributes:
        kid: The key id.
        private_key_pem: The PKCS#8 PEM of the private key, encrypted with the key-encryption key.
        public_key: The raw 32-byte public key.
        create_time: When it was generated (Unix seconds).
        retire_time: When it stopped signing; None while it is the current key.
        not_after: Until when it stays published after retiring; None while current.

    """

    kid: str
    private_key_pem: bytes
    public_key: bytes
    create_time: float
    retire_time: float | None = None
    not_after: float | None = None


@dataclass(frozen=True, slots=True)
class RefreshTokenRecord:
    """A stored refresh token (only its hash).

    Attributes:
        token_hash: SHA-256 hex of the token; the token itself is never stored.
        family_id: The login session the token belongs to; every rotation stays in the family.
        user_id: The owner's id.
        access_jti: The ``jti`` of the access token issued together with it.
        access_expire_time: When that access token expires (Unix seconds).
        create_time: When it was issued.
        expire_time: When it expires; never after ``family_expire_time``.
        used_time: When it was spent; None while unused.
        revoked: True once its family is revoked.
        family_expire_time: When the whole family (the login session) ends, whatever its
            rotations: set at login, inherited by every successor. 0 means no cap (a record built
            before the cap existed; the migration gives stored ones their own expiry).

    """

    token_hash: str
    family_id: str
    user_id: str
    access_jti: str
    access_expire_time: float
    create_time: float
    expire_time: float
    used_time: float | None = None
    revoked: bool = False
    family_expire_time: float = 0.0


@dataclass(frozen=True, slots=True)
class Revocation:
    """A revoked access token.

    Attributes:
        jti: The token's ``jti``.
        expire_time: When the token expires; the revocation can be forgotten after it.
        revoke_time: When it was revoked.

    """

    jti: str
    expire_time: float
    revoke_time: float


@dataclass(frozen=True, slots=True)
class ThrottleEntry:
    """One login-throttle counter.

    Attributes:
        key: The counter's (hashed) key.
        failures: Failed logins counted since the counter was last forgotten.
        locked_until: Until when logins it covers are refused (Unix seconds; 0 when never).
        expire_time: When the counter is forgotten if nothing more fails.
        update_time: When it last counted a failure.

    """

    key: str
    failures: int
    locked_until: float
    expire_time: float
    update_time: float


class SpendOutcome(enum.Enum):
    """What spending a refresh token did."""

    SPENT = "spent"
    """It was valid: it is now spent and its successor stored."""
    UNKNOWN = "unknown"
    """No such token."""
    EXPIRED = "expired"
    """It expired."""
    REVOKED = "revoked"
    """Its family was revoked before."""
    REUSED = "reused"
    """It had been spent already: its whole family is now revoked."""


class UsernameTaken(Exception):
    """Another user has this username (compared regardless of case)."""


T = TypeVar("T")

LockPolicy = Callable[[int], float]
"""Maps a count of failed logins to how many seconds logins it covers are refused (0 = none)."""


def _after_failure(
    entry: ThrottleEntry | None, key: str, now: float, lock_seconds: LockPolicy, keep_seconds: float
) -> ThrottleEntry:
    """Counter ``key`` after one more failure at ``now`` (``entry`` is its stored state, if any).

    An expired counter starts again from one. It is kept ``keep_seconds`` past the later of this
    failure and the end of its lock, so the count outlives a backoff instead of restarting after it.
    """
    live = entry is not None and entry.expire_time > now
    failures = entry.failures + 1 if entry is not None and live else 1
    locked_until = entry.locked_until if entry is not None and live else 0.0
    lock = lock_seconds(failures)
    if lock > 0:
        locked_until = max(locked_until, now + lock)
    return ThrottleEntry(key, failures, locked_until, max(now, locked_until) + keep_seconds, now)


class IdentityStore(Protocol):
    """The storage contract of identity. Every method is atomic."""

    async def open(self) -> None:
        """Connects and brings the schema or indexes up to date."""

    async def close(self) -> None:
        """Releases connections."""

    async def ping(self) -> None:
        """Health check: returns when the store answers, raises otherwise."""

    async def create_user(
        self, user: UserRecord, *, request_id: str = "", now: float
    ) -> tuple[UserRecord, bool]:
        """Inserts ``user``; with ``request_id``, a repeated request returns the first result.

        Returns:
            The user and True when it was created now, or the user an earlier request with the
            same ``request_id`` created and False.

        Raises:
            UsernameTaken: Another user has the username.

        """

    async def get_user(self, user_id: str) -> UserRecord | None:
        """Returns the user with ``user_id``, or None."""

    async def get_user_by_username(self, username: str) -> UserRecord | None:
        """Returns the user with ``username`` (regardless of case), or None."""

    async def list_users(self, *, after: str = "", limit: int, role: str = "") -> list[UserRecord]:
        """Returns up to ``limit`` users ordered by case-folded username, after the key ``after``.

        Args:
            after: A :func:`username_key`; only users whose key sorts after it.
            limit: The most users to return.
            role: Only users with this role, when not empty.

        """

    async def has_users(self) -> bool:
        """True when at least one user exists."""

    async def update_user(
        self,
        user: UserRecord,
        *,
        expected_etag: str,
        revoke_sessions: bool = False,
        keep_family: str = "",
        now: float = 0.0,
    ) -> bool:
        """Replaces the mutable fields of ``user`` if its stored etag is still ``expected_etag``.

        Writes display name, e-mail, role, customer, disabled, password hash, update time and etag.

        Args:
            user: The new state (same id).
            expected_etag: The etag the caller read; a different stored one means a concurrent change.
            revoke_sessions: Also revokes every refresh-token family of the user (in the same
                transaction), with the access tokens issued from them.
            keep_family: A family spared by ``revoke_sessions`` (the caller's own session).
            now: The revocation time.

        Returns:
            False (and no change) when the user is gone or the etag is stale.

        """

    async def login_throttles(self, keys: Sequence[str], *, now: float) -> list[ThrottleEntry]:
        """Returns the throttle counters among ``keys`` that have not expired by ``now``."""

    async def count_login_failure(
        self,
        counters: Mapping[str, LockPolicy],
        *,
        now: float,
        keep_seconds: float,
        max_entries: int,
    ) -> list[ThrottleEntry]:
        """Counts one failed login on every counter in ``counters``, atomically.

        Args:
            counters: Each counter's key and the lock its new count earns (``policy(failures)``
                seconds from ``now``). A counter that does not exist, or expired, starts at one.
            now: The time of the failure.
            keep_seconds: How long a counter is kept after its last failure or the end of its lock.
            max_entries: The most counters kept: beyond it, those whose lock ended earliest (never
                locked first), then the least recently counted, are forgotten.

        Returns:
            The counters as stored now, in the order of ``counters``.

        """

    async def clear_login_failures(self, key: str) -> None:
        """Forgets the throttle counter ``key`` (a successful login)."""

    async def signing_keys(self) -> list[SigningKeyRecord]:
        """Returns every stored signing key, the current one first, then newest first."""

    async def rotate_signing_key(
        self, new: SigningKeyRecord, *, expected_current: str | None, retire_time: float, not_after: float
    ) -> bool:
        """Makes ``new`` the current key if the current one is still ``expected_current``.

        The previous key is retired at ``retire_time`` and stays published until ``not_after``.
        ``expected_current=None`` means "there is no current key yet". Returns False (no change)
        when another process rotated first.
        """

    async def prune_signing_keys(self, now: float) -> list[str]:
        """Deletes retired keys whose publication ended before ``now``; returns their kids."""

    async def insert_refresh_token(self, token: RefreshTokenRecord) -> None:
        """Stores a new refresh token (the first of a family)."""

    async def get_refresh_token(self, token_hash: str) -> RefreshTokenRecord | None:
        """Returns the refresh token with this hash, or None."""

    async def spend_refresh_token(
        self, token_hash: str, successor: RefreshTokenRecord, *, now: float
    ) -> SpendOutcome:
        """Spends a refresh token and stores its successor, in one transaction.

        A token spent before revokes its whole family instead (:attr:`SpendOutcome.REUSED`).
        """

    async def revoke_family(self, family_id: str, *, now: float) -> None:
        """Revokes every refresh token of the family and the unexpired access tokens issued with them."""

    async def family_of_access_token(self, jti: str) -> str | None:
        """The family whose refresh token was issued with the access token ``jti``, or None."""

    async def add_revocations(self, revocations: Sequence[Revocation]) -> None:
        """Records revoked access tokens (a token revoked twice keeps its first record)."""

    async def list_revocations(
        self, *, now: float, since: float = 0.0, after: tuple[float, str] | None = None, limit: int
    ) -> list[Revocation]:
        """Returns unexpired revocations made at or after ``since``, ordered by (revoke time, jti).

        Args:
            now: Revocations of tokens expired by then are left out.
            since: The earliest revoke time.
            after: A (revoke time, jti) cursor: only revocations after it.
            limit: The most to return.

        """

    async def prune(self, *, now: float, idempotency_ttl: float) -> None:
        """Forgets expired revocations, refresh tokens and throttle counters, and old idempotency keys."""


# --------------------------------------------------------------------------------------------- SQLite

SCHEMA_V1 = """
CREATE TABLE users (
    id TEXT PRIMARY KEY,
    username TEXT NOT NULL,
    username_key TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL DEFAULT '',
    email TEXT NOT NULL DEFAULT '',
    role TEXT NOT NULL,
    customer TEXT NOT NULL DEFAULT '',
    disabled INTEGER NOT NULL DEFAULT 0,
    password_hash TEXT NOT NULL,
    create_time REAL NOT NULL,
    update_time REAL NOT NULL,
    etag TEXT NOT NULL,
    failed_logins INTEGER NOT NULL DEFAULT 0,
    locked_until REAL NOT NULL DEFAULT 0
);
CREATE INDEX users_by_role ON users (role, username_key);

CREATE TABLE signing_keys (
    kid TEXT PRIMARY KEY,
    private_key_pem BLOB NOT NULL,
    public_key BLOB NOT NULL,
    create_time REAL NOT NULL,
    retire_time REAL,
    not_after REAL
);
CREATE UNIQUE INDEX signing_keys_one_current
    ON signing_keys ((retire_time IS NULL)) WHERE retire_time IS NULL;

CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    family_id TEXT NOT NULL,
    user_id TEXT NOT NULL REFERENCES users (id),
    access_jti TEXT NOT NULL,
    access_expire_time REAL NOT NULL,
    create_time REAL NOT NULL,
    expire_time REAL NOT NULL,
    used_time REAL,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX refresh_tokens_by_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_by_user ON refresh_tokens (user_id, family_id);
CREATE INDEX refresh_tokens_by_access ON refresh_tokens (access_jti);
CREATE INDEX refresh_tokens_by_expiry ON refresh_tokens (expire_time);

CREATE TABLE revocations (
    jti TEXT PRIMARY KEY,
    expire_time REAL NOT NULL,
    revoke_time REAL NOT NULL
);
CREATE INDEX revocations_by_time ON revocations (revoke_time, jti);
CREATE INDEX revocations_by_expiry ON revocations (expire_time);

CREATE TABLE idempotency (
    request_id TEXT PRIMARY KEY,
    user_name TEXT NOT NULL,
    create_time REAL NOT NULL
);
CREATE INDEX idempotency_by_time ON idempotency (create_time)
"""

# A refresh family's absolute end. Tokens stored before it get their own expiry as their family's
# end: a session then lasts at most until the token it holds expires, and rotation cannot extend it.
SCHEMA_V2 = """
ALTER TABLE refresh_tokens ADD COLUMN family_expire_time REAL NOT NULL DEFAULT 0;
UPDATE refresh_tokens SET family_expire_time = expire_time
"""

# Login throttling moves from per-user columns (a lock anyone could set on any account, from
# anywhere) to counters keyed by username and client address, which unknown usernames get too.
SCHEMA_V3 = """
CREATE TABLE login_throttle (
    key TEXT PRIMARY KEY,
    failures INTEGER NOT NULL,
    locked_until REAL NOT NULL,
    expire_time REAL NOT NULL,
    update_time REAL NOT NULL
);
CREATE INDEX login_throttle_by_expiry ON login_throttle (expire_time);
CREATE INDEX login_throttle_by_eviction ON login_throttle (locked_until, update_time);
ALTER TABLE users DROP COLUMN failed_logins;
ALTER TABLE users DROP COLUMN locked_until
"""

MIGRATIONS: tuple[str, ...] = (SCHEMA_V1, SCHEMA_V2, SCHEMA_V3)
"""The SQLite schema, one script per version (``PRAGMA user_version``)."""

_USER_COLUMNS = (
    "id, username, display_name, email, role, customer, disabled, password_hash, "
    "create_time, update_time, etag"
)


def _user_from_row(row: sqlite3.Row) -> UserRecord:
    return UserRecord(
        id=row["id"],
        username=row["username"],
        display_name=row["display_name"],
        email=row["email"],
        role=row["role"],
        customer=row["customer"],
        disabled=bool(row["disabled"]),
        password_hash=row["password_hash"],
        create_time=row["create_time"],
        update_time=row["update_time"],
        etag=row["etag"],
    )


def _key_from_row(row: sqlite3.Row) -> SigningKeyRecord:
    return SigningKeyRecord(
        kid=row["kid"],
        private_key_pem=bytes(row["private_key_pem"]),
        public_key=bytes(row["public_key"]),
        create_time=row["create_time"],
        retire_time=row["retire_time"],
        not_after=row["not_after"],
    )


def _refresh_from_row(row: sqlite3.Row) -> RefreshTokenRecord:
    return RefreshTokenRecord(
        token_hash=row["token_hash"],
        family_id=row["family_id"],
        user_id=row["user_id"],
        access_jti=row["access_jti"],
        access_expire_time=row["access_expire_time"],
        create_time=row["create_time"],
        expire_time=row["expire_time"],
        used_time=row["used_time"],
        revoked=bool(row["revoked"]),
        family_expire_time=row["family_expire_time"],
    )


def _throttle_from_row(row: sqlite3.Row) -> ThrottleEntry:
    return ThrottleEntry(
        key=row["key"],
        failures=row["failures"],
        locked_until=row["locked_until"],
        expire_time=row["expire_time"],
        update_time=row["update_time"],
    )


def _select_user(conn: sqlite3.Connection, where: str, *args: object) -> UserRecord | None:
    row = conn.execute(f"SELECT {_USER_COLUMNS} FROM users WHERE {where}", args).fetchone()  # noqa: S608
    return None if row is None else _user_from_row(row)


def capped_expiry(expire_time: float, family_expire_time: float) -> float:
    """A refresh token's expiry: ``expire_time``, but never after its family ends (0: no end)."""
    return min(expire_time, family_expire_time) if family_expire_time else expire_time


def _successor_of(token: RefreshTokenRecord, successor: RefreshTokenRecord) -> RefreshTokenRecord:
    """``successor`` as stored: in ``token``'s family, for its user, never outliving the family."""
    end = token.family_expire_time
    return replace(
        successor,
        family_id=token.family_id,
        user_id=token.user_id,
        family_expire_time=end,
        expire_time=capped_expiry(successor.expire_time, end),
    )


def _insert_refresh(conn: sqlite3.Connection, t: RefreshTokenRecord) -> None:
    conn.execute(
        "INSERT INTO refresh_tokens (token_hash, family_id, user_id, access_jti, access_expire_time, "
        "create_time, expire_time, used_time, revoked, family_expire_time) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            t.token_hash,
            t.family_id,
            t.user_id,
            t.access_jti,
            t.access_expire_time,
            t.create_time,
            t.expire_time,
            t.used_time,
            int(t.revoked),
            t.family_expire_time,
        ),
    )


def _revoke_families(conn: sqlite3.Connection, where: str, args: tuple[object, ...], now: float) -> None:
    """Revokes the refresh tokens matching ``where`` and the access tokens issued with them."""
    conn.execute(
        "INSERT OR IGNORE INTO revocations (jti, expire_time, revoke_time) "  # noqa: S608
        f"SELECT access_jti, access_expire_time, ? FROM refresh_tokens WHERE ({where}) "
        "AND access_expire_time > ?",
        (now, *args, now),
    )
    conn.execute(f"UPDATE refresh_tokens SET revoked = 1 WHERE ({where}) AND revoked = 0", args)  # noqa: S608


class SqliteIdentityStore:
    """The identity store in one SQLite file (``<data_dir>/identity.db``).

    Args:
        path: The database file.

    """

    def __init__(self, path: Path):
        # Password hashes live here: the file is created owner-only.
        self.db = SqliteDatabase(path, MIGRATIONS, file_mode=0o600)

    async def open(self) -> None:
        """Opens the file (created owner-only) and applies pending migrations."""
        await self.db.open()

    async def close(self) -> None:
        """Closes the file."""
        await self.db.close()

    async def ping(self) -> None:
        """Health check: the database answers a query."""
        await self.db.ping()

    async def create_user(
        self, user: UserRecord, *, request_id: str = "", now: float
    ) -> tuple[UserRecord, bool]:
        """Inserts ``user`` (see :meth:`IdentityStore.create_user`)."""

        def run(conn: sqlite3.Connection) -> tuple[UserRecord, bool]:
            if request_id:
                row = conn.execute(
                    "SELECT user_name FROM idempotency WHERE request_id = ?", (request_id,)
                ).fetchone()
                if row is not None:
                    earlier = _select_user(conn, "id = ?", str(row["user_name"]).removeprefix("users/"))
                    if earlier is not None:
                        return earlier, False
            try:
                conn.execute(
                    f"INSERT INTO users ({_USER_COLUMNS}, username_key) "  # noqa: S608 - constant columns
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        user.id,
                        user.username,
                        user.display_name,
                        user.email,
                        user.role,
                        user.customer,
                        int(user.disabled),
                        user.password_hash,
                        user.create_time,
                        user.update_time,
                        user.etag,
                        user.username_key,
                    ),
                )
            except sqlite3.IntegrityError as exc:
                if "username_key" in str(exc):
                    raise UsernameTaken(user.username) from None
                raise
            if request_id:
                conn.execute(
                    "INSERT OR REPLACE INTO idempotency (request_id, user_name, create_time) "
                    "VALUES (?, ?, ?)",
                    (request_id, user.name, now),
                )
            return user, True

        return await self.db.write(run)

    async def get_user(self, user_id: str) -> UserRecord | None:
        """Returns the user with ``user_id``, or None."""
        return await self.db.read(lambda conn: _select_user(conn, "id = ?", user_id))

    async def get_user_by_username(self, username: str) -> UserRecord | None:
        """Returns the user with ``username`` (regardless of case), or None."""
        return await self.db.read(lambda conn: _select_user(conn, "username_key = ?", username_key(username)))

    async def list_users(self, *, after: str = "", limit: int, role: str = "") -> list[UserRecord]:
        """Returns a page of users ordered by case-folded username."""
        sql = f"SELECT {_USER_COLUMNS} FROM users WHERE username_key > ?"  # noqa: S608
        args: list[object] = [after]
        if role:
            sql += " AND role = ?"
            args.append(role)
        sql += " ORDER BY username_key LIMIT ?"
        args.append(limit)
        rows = await self.db.read(lambda conn: conn.execute(sql, args).fetchall())
        return [_user_from_row(r) for r in rows]

    async def has_users(self) -> bool:
        """True when at least one user exists."""
        row = await self.db.read(lambda conn: conn.execute("SELECT EXISTS (SELECT 1 FROM users)").fetchone())
        return bool(row[0])

    async def update_user(
        self,
        user: UserRecord,
        *,
        expected_etag: str,
        revoke_sessions: bool = False,
        keep_family: str = "",
        now: float = 0.0,
    ) -> bool:
        """Replaces the mutable fields of ``user`` if the etag still matches."""

        def run(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE users SET display_name = ?, email = ?, role = ?, customer = ?, disabled = ?, "
                "password_hash = ?, update_time = ?, etag = ? WHERE id = ? AND etag = ?",
                (
                    user.display_name,
                    user.email,
                    user.role,
                    user.customer,
                    int(user.disabled),
                    user.password_hash,
                    user.update_time,
                    user.etag,
                    user.id,
                    expected_etag,
                ),
            )
            if cursor.rowcount != 1:
                return False
            if revoke_sessions:
                _revoke_families(conn, "user_id = ? AND family_id != ?", (user.id, keep_family), now)
            return True

        return await self.db.write(run)

    async def login_throttles(self, keys: Sequence[str], *, now: float) -> list[ThrottleEntry]:
        """Returns the unexpired throttle counters among ``keys``."""
        marks = ", ".join("?" * len(keys))
        sql = f"SELECT * FROM login_throttle WHERE key IN ({marks}) AND expire_time > ?"  # noqa: S608
        rows = await self.db.read(lambda conn: conn.execute(sql, (*keys, now)).fetchall())
        return [_throttle_from_row(r) for r in rows]

    async def count_login_failure(
        self,
        counters: Mapping[str, LockPolicy],
        *,
        now: float,
        keep_seconds: float,
        max_entries: int,
    ) -> list[ThrottleEntry]:
        """Counts one failed login on every counter (one transaction); see the protocol."""

        def run(conn: sqlite3.Connection) -> list[ThrottleEntry]:
            out: list[ThrottleEntry] = []
            inserted = False
            for key, policy in counters.items():
                row = conn.execute("SELECT * FROM login_throttle WHERE key = ?", (key,)).fetchone()
                inserted = inserted or row is None
                entry = _after_failure(
                    None if row is None else _throttle_from_row(row), key, now, policy, keep_seconds
                )
                conn.execute(
                    "INSERT OR REPLACE INTO login_throttle "
                    "(key, failures, locked_until, expire_time, update_time) VALUES (?, ?, ?, ?, ?)",
                    (entry.key, entry.failures, entry.locked_until, entry.expire_time, entry.update_time),
                )
                out.append(entry)
            if inserted:
                # Only a new counter can push the table past its cap.
                excess = conn.execute("SELECT count(*) FROM login_throttle").fetchone()[0] - max_entries
                if excess > 0:
                    conn.execute(
                        "DELETE FROM login_throttle WHERE key IN (SELECT key FROM login_throttle "
                        "ORDER BY locked_until, update_time LIMIT ?)",
                        (excess,),
                    )
            return out

        return await self.db.write(run)

    async def clear_login_failures(self, key: str) -> None:
        """Forgets the throttle counter ``key``."""
        await self.db.write(lambda conn: conn.execute("DELETE FROM login_throttle WHERE key = ?", (key,)))

    async def signing_keys(self) -> list[SigningKeyRecord]:
        """Returns every signing key, the current one first, then newest first."""
        rows = await self.db.read(
            lambda conn: conn.execute(
                "SELECT * FROM signing_keys ORDER BY retire_time IS NOT NULL, create_time DESC, kid"
            ).fetchall()
        )
        return [_key_from_row(r) for r in rows]

    async def rotate_signing_key(
        self, new: SigningKeyRecord, *, expected_current: str | None, retire_time: float, not_after: float
    ) -> bool:
        """Makes ``new`` current if the current key is still ``expected_current``."""

        def run(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT kid FROM signing_keys WHERE retire_time IS NULL").fetchone()
            current = None if row is None else row["kid"]
            if current != expected_current:
                return False
            conn.execute(
                "UPDATE signing_keys SET retire_time = ?, not_after = ? WHERE retire_time IS NULL",
                (retire_time, not_after),
            )
            conn.execute(
                "INSERT INTO signing_keys (kid, private_key_pem, public_key, create_time, "
                "retire_time, not_after) VALUES (?, ?, ?, ?, NULL, NULL)",
                (new.kid, new.private_key_pem, new.public_key, new.create_time),
            )
            return True

        return await self.db.write(run)

    async def prune_signing_keys(self, now: float) -> list[str]:
        """Deletes retired keys past their publication window."""

        def run(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT kid FROM signing_keys WHERE not_after IS NOT NULL AND not_after <= ?", (now,)
            ).fetchall()
            conn.execute("DELETE FROM signing_keys WHERE not_after IS NOT NULL AND not_after <= ?", (now,))
            return [r["kid"] for r in rows]

        return await self.db.write(run)

    async def insert_refresh_token(self, token: RefreshTokenRecord) -> None:
        """Stores a new refresh token."""
        await self.db.write(lambda conn: _insert_refresh(conn, token))

    async def get_refresh_token(self, token_hash: str) -> RefreshTokenRecord | None:
        """Returns the refresh token with this hash, or None."""
        row = await self.db.read(
            lambda conn: conn.execute(
                "SELECT * FROM refresh_tokens WHERE token_hash = ?", (token_hash,)
            ).fetchone()
        )
        return None if row is None else _refresh_from_row(row)

    async def spend_refresh_token(
        self, token_hash: str, successor: RefreshTokenRecord, *, now: float
    ) -> SpendOutcome:
        """Spends the token and stores its successor, or revokes the family of a reused one."""

        def run(conn: sqlite3.Connection) -> SpendOutcome:
            row = conn.execute("SELECT * FROM refresh_tokens WHERE token_hash = ?", (token_hash,)).fetchone()
            if row is None:
                return SpendOutcome.UNKNOWN
            token = _refresh_from_row(row)
            if token.revoked:
                return SpendOutcome.REVOKED
            if token.used_time is not None:
                _revoke_families(conn, "family_id = ?", (token.family_id,), now)
                return SpendOutcome.REUSED
            if token.expire_time <= now:
                return SpendOutcome.EXPIRED
            conn.execute("UPDATE refresh_tokens SET used_time = ? WHERE token_hash = ?", (now, token_hash))
            _insert_refresh(conn, _successor_of(token, successor))
            return SpendOutcome.SPENT

        return await self.db.write(run)

    async def revoke_family(self, family_id: str, *, now: float) -> None:
        """Revokes the family and its unexpired access tokens."""
        await self.db.write(lambda conn: _revoke_families(conn, "family_id = ?", (family_id,), now))

    async def family_of_access_token(self, jti: str) -> str | None:
        """The family that issued the access token ``jti``."""
        row = await self.db.read(
            lambda conn: conn.execute(
                "SELECT family_id FROM refresh_tokens WHERE access_jti = ? LIMIT 1", (jti,)
            ).fetchone()
        )
        return None if row is None else str(row["family_id"])

    async def add_revocations(self, revocations: Sequence[Revocation]) -> None:
        """Records revoked access tokens."""
        rows = [(r.jti, r.expire_time, r.revoke_time) for r in revocations]
        await self.db.write(
            lambda conn: conn.executemany(
                "INSERT OR IGNORE INTO revocations (jti, expire_time, revoke_time) VALUES (?, ?, ?)", rows
            )
        )

    async def list_revocations(
        self, *, now: float, since: float = 0.0, after: tuple[float, str] | None = None, limit: int
    ) -> list[Revocation]:
        """Returns a page of unexpired revocations ordered by (revoke time, jti)."""
        sql = (
            "SELECT jti, expire_time, revoke_time FROM revocations WHERE expire_time > ? AND revoke_time >= ?"
        )
        args: list[object] = [now, since]
        if after is not None:
            sql += " AND (revoke_time > ? OR (revoke_time = ? AND jti > ?))"
            args += [after[0], after[0], after[1]]
        sql += " ORDER BY revoke_time, jti LIMIT ?"
        args.append(limit)
        rows = await self.db.read(lambda conn: conn.execute(sql, args).fetchall())
        return [Revocation(r["jti"], r["expire_time"], r["revoke_time"]) for r in rows]

    async def prune(self, *, now: float, idempotency_ttl: float) -> None:
        """Forgets expired revocations, refresh tokens and throttle counters, and old idempotency keys."""

        def run(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM revocations WHERE expire_time <= ?", (now,))
            conn.execute("DELETE FROM refresh_tokens WHERE expire_time <= ?", (now,))
            conn.execute("DELETE FROM idempotency WHERE create_time <= ?", (now - idempotency_ttl,))
            conn.execute("DELETE FROM login_throttle WHERE expire_time <= ?", (now,))

        await self.db.write(run)


# --------------------------------------------------------------------------------------------- MongoDB


def _is_username_conflict(exc: DuplicateKeyError) -> bool:
    details = exc.details or {}
    return "username_key" in (details.get("keyPattern") or {}) or "username_unique" in str(exc)


def _date(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _user_doc(user: UserRecord) -> dict[str, Any]:
    return {
        "_id": user.id,
        "username": user.username,
        "username_key": user.username_key,
        "display_name": user.display_name,
        "email": user.email,
        "role": user.role,
        "customer": user.customer,
        "disabled": user.disabled,
        "password_hash": user.password_hash,
        "create_time": user.create_time,
        "update_time": user.update_time,
        "etag": user.etag,
    }


def _user_from_doc(doc: dict[str, Any]) -> UserRecord:
    return UserRecord(
        id=doc["_id"],
        username=doc["username"],
        display_name=doc["display_name"],
        email=doc["email"],
        role=doc["role"],
        customer=doc["customer"],
        disabled=bool(doc["disabled"]),
        password_hash=doc["password_hash"],
        create_time=float(doc["create_time"]),
        update_time=float(doc["update_time"]),
        etag=doc["etag"],
    )


def _refresh_doc(t: RefreshTokenRecord) -> dict[str, Any]:
    return {
        "_id": t.token_hash,
        "family_id": t.family_id,
        "user_id": t.user_id,
        "access_jti": t.access_jti,
        "access_expire_time": t.access_expire_time,
        "create_time": t.create_time,
        "expire_time": t.expire_time,
        "used_time": t.used_time,
        "revoked": t.revoked,
        "family_expire_time": t.family_expire_time,
        # A TTL index deletes the document once this date passes.
        "expire_at": _date(t.expire_time),
    }


def _refresh_from_doc(doc: dict[str, Any]) -> RefreshTokenRecord:
    used = doc.get("used_time")
    return RefreshTokenRecord(
        token_hash=doc["_id"],
        family_id=doc["family_id"],
        user_id=doc["user_id"],
        access_jti=doc["access_jti"],
        access_expire_time=float(doc["access_expire_time"]),
        create_time=float(doc["create_time"]),
        expire_time=float(doc["expire_time"]),
        used_time=None if used is None else float(used),
        revoked=bool(doc["revoked"]),
        # Documents stored before the cap existed end with their own expiry, as in SQLite.
        family_expire_time=float(doc.get("family_expire_time", doc["expire_time"])),
    )


def _key_from_doc(doc: dict[str, Any]) -> SigningKeyRecord:
    retire, not_after = doc.get("retire_time"), doc.get("not_after")
    return SigningKeyRecord(
        kid=doc["_id"],
        private_key_pem=bytes(doc["private_key_pem"]),
        public_key=bytes(doc["public_key"]),
        create_time=float(doc["create_time"]),
        retire_time=None if retire is None else float(retire),
        not_after=None if not_after is None else float(not_after),
    )


def _throttle_doc(entry: ThrottleEntry) -> dict[str, Any]:
    return {
        "failures": entry.failures,
        "locked_until": entry.locked_until,
        "expire_time": entry.expire_time,
        "update_time": entry.update_time,
        # A TTL index deletes the document once this date passes.
        "expire_at": _date(entry.expire_time),
    }


def _throttle_from_doc(doc: dict[str, Any]) -> ThrottleEntry:
    return ThrottleEntry(
        key=doc["_id"],
        failures=int(doc["failures"]),
        locked_until=float(doc["locked_until"]),
        expire_time=float(doc["expire_time"]),
        update_time=float(doc["update_time"]),
    )


def _revocation_doc(r: Revocation) -> dict[str, Any]:
    return {
        "expire_time": r.expire_time,
        "revoke_time": r.revoke_time,
        "expire_at": _date(r.expire_time),
    }


class MongoIdentityStore:
    """The identity store in MongoDB: one collection per record kind, unique indexes, transactions.

    Transactions need a replica set (a single-node one is enough).

    Args:
        database: The service's database.

    """

    def __init__(self, database: MongoDatabase):
        self.database = database
        db = database.db
        self._users = db["users"]
        self._keys = db["signing_keys"]
        self._refresh = db["refresh_tokens"]
        self._revocations = db["revocations"]
        self._idempotency = db["idempotency"]
        self._throttle = db["login_throttle"]

    async def open(self) -> None:
        """Creates the indexes (a no-op when they exist)."""
        await self._users.create_index([("username_key", ASCENDING)], unique=True, name="username_unique")
        await self._users.create_index([("role", ASCENDING), ("username_key", ASCENDING)], name="by_role")
        # At most one current key: only current keys carry `current: true`.
        await self._keys.create_index(
            [("current", ASCENDING)],
            unique=True,
            partialFilterExpression={"current": True},
            name="one_current",
        )
        await self._refresh.create_index([("family_id", ASCENDING)], name="by_family")
        await self._refresh.create_index([("user_id", ASCENDING), ("family_id", ASCENDING)], name="by_user")
        await self._refresh.create_index([("access_jti", ASCENDING)], name="by_access")
        await self._refresh.create_index([("expire_at", ASCENDING)], expireAfterSeconds=0, name="ttl")
        await self._revocations.create_index([("revoke_time", ASCENDING), ("_id", ASCENDING)], name="by_time")
        await self._revocations.create_index([("expire_at", ASCENDING)], expireAfterSeconds=0, name="ttl")
        await self._idempotency.create_index([("create_time", ASCENDING)], name="by_time")
        await self._throttle.create_index([("expire_at", ASCENDING)], expireAfterSeconds=0, name="ttl")
        await self._throttle.create_index(
            [("locked_until", ASCENDING), ("update_time", ASCENDING)], name="by_eviction"
        )
        # Throttling once lived on the users (per account, lockable from anywhere): drop that state.
        await self._users.update_many(
            {"$or": [{"failed_logins": {"$exists": True}}, {"locked_until": {"$exists": True}}]},
            {"$unset": {"failed_logins": "", "locked_until": ""}},
        )

    async def close(self) -> None:
        """Closes the client."""
        await self.database.close()

    async def ping(self) -> None:
        """Health check: the server answers ``ping``."""
        await self.database.ping()

    async def _transaction(self, fn: Callable[[AsyncClientSession], Awaitable[T]]) -> T:
        async with self.database.client.start_session() as session:
            return await session.with_transaction(fn)

    async def create_user(
        self, user: UserRecord, *, request_id: str = "", now: float
    ) -> tuple[UserRecord, bool]:
        """Inserts ``user`` with its idempotency key in one transaction."""

        async def run(session: AsyncClientSession) -> tuple[UserRecord, bool]:
            if request_id:
                seen = await self._idempotency.find_one({"_id": request_id}, session=session)
                if seen is not None:
                    doc = await self._users.find_one(
                        {"_id": str(seen["user_name"]).removeprefix("users/")}, session=session
                    )
                    if doc is not None:
                        return _user_from_doc(doc), False
            try:
                await self._users.insert_one(_user_doc(user), session=session)
            except DuplicateKeyError as exc:
                if _is_username_conflict(exc):
                    raise UsernameTaken(user.username) from None
                raise
            if request_id:
                await self._idempotency.replace_one(
                    {"_id": request_id},
                    {"user_name": user.name, "create_time": now},
                    upsert=True,
                    session=session,
                )
            return user, True

        try:
            result = await self._transaction(run)
        except DuplicateKeyError:
            # A concurrent request with the same request_id committed first: answer with its user.
            if request_id:
                seen = await self._idempotency.find_one({"_id": request_id})
                if seen is not None:
                    found = await self.get_user(str(seen["user_name"]).removeprefix("users/"))
                    if found is not None:
                        return found, False
            raise
        return result

    async def get_user(self, user_id: str) -> UserRecord | None:
        """Returns the user with ``user_id``, or None."""
        doc = await self._users.find_one({"_id": user_id})
        return None if doc is None else _user_from_doc(doc)

    async def get_user_by_username(self, username: str) -> UserRecord | None:
        """Returns the user with ``username`` (regardless of case), or None."""
        doc = await self._users.find_one({"username_key": username_key(username)})
        return None if doc is None else _user_from_doc(doc)

    async def list_users(self, *, after: str = "", limit: int, role: str = "") -> list[UserRecord]:
        """Returns a page of users ordered by case-folded username."""
        query: dict[str, Any] = {"username_key": {"$gt": after}}
        if role:
            query["role"] = role
        cursor = self._users.find(query).sort("username_key", ASCENDING).limit(limit)
        return [_user_from_doc(doc) async for doc in cursor]

    async def has_users(self) -> bool:
        """True when at least one user exists."""
        return await self._users.find_one({}, {"_id": 1}) is not None

    async def _revoke_where(self, query: dict[str, Any], now: float, session: AsyncClientSession) -> None:
        """Revokes the refresh tokens matching ``query`` and the access tokens issued with them."""
        upserts = []
        cursor = self._refresh.find(
            {**query, "access_expire_time": {"$gt": now}},
            {"access_jti": 1, "access_expire_time": 1},
            session=session,
        )
        async for doc in cursor:
            revocation = Revocation(doc["access_jti"], float(doc["access_expire_time"]), now)
            upserts.append(
                UpdateOne({"_id": revocation.jti}, {"$setOnInsert": _revocation_doc(revocation)}, upsert=True)
            )
        if upserts:
            await self._revocations.bulk_write(upserts, ordered=False, session=session)
        await self._refresh.update_many(
            {**query, "revoked": False}, {"$set": {"revoked": True}}, session=session
        )

    async def update_user(
        self,
        user: UserRecord,
        *,
        expected_etag: str,
        revoke_sessions: bool = False,
        keep_family: str = "",
        now: float = 0.0,
    ) -> bool:
        """Replaces the mutable fields of ``user`` if the etag still matches (one transaction)."""

        async def run(session: AsyncClientSession) -> bool:
            result = await self._users.update_one(
                {"_id": user.id, "etag": expected_etag},
                {
                    "$set": {
                        "display_name": user.display_name,
                        "email": user.email,
                        "role": user.role,
                        "customer": user.customer,
                        "disabled": user.disabled,
                        "password_hash": user.password_hash,
                        "update_time": user.update_time,
                        "etag": user.etag,
                    }
                },
                session=session,
            )
            if result.matched_count != 1:
                return False
            if revoke_sessions:
                await self._revoke_where(
                    {"user_id": user.id, "family_id": {"$ne": keep_family}}, now, session
                )
            return True

        return await self._transaction(run)

    async def login_throttles(self, keys: Sequence[str], *, now: float) -> list[ThrottleEntry]:
        """Returns the unexpired throttle counters among ``keys``."""
        cursor = self._throttle.find({"_id": {"$in": list(keys)}, "expire_time": {"$gt": now}})
        return [_throttle_from_doc(doc) async for doc in cursor]

    async def count_login_failure(
        self,
        counters: Mapping[str, LockPolicy],
        *,
        now: float,
        keep_seconds: float,
        max_entries: int,
    ) -> list[ThrottleEntry]:
        """Counts one failed login on every counter (one transaction; a conflicting one retries)."""

        async def run(session: AsyncClientSession) -> tuple[list[ThrottleEntry], bool]:
            cursor = self._throttle.find({"_id": {"$in": list(counters)}}, session=session)
            stored = {doc["_id"]: _throttle_from_doc(doc) async for doc in cursor}
            out: list[ThrottleEntry] = []
            for key, policy in counters.items():
                entry = _after_failure(stored.get(key), key, now, policy, keep_seconds)
                await self._throttle.replace_one(
                    {"_id": key}, _throttle_doc(entry), upsert=True, session=session
                )
                out.append(entry)
            return out, len(stored) < len(counters)

        entries, inserted = await self._transaction(run)
        if inserted:
            # Only a new counter can push the collection past its cap; the count is an estimate
            # from the collection's metadata (cheap), which is all a cap needs.
            excess = await self._throttle.estimated_document_count() - max_entries
            if excess > 0:
                oldest = self._throttle.find({}, {"_id": 1}).sort(
                    [("locked_until", ASCENDING), ("update_time", ASCENDING)]
                )
                ids = [doc["_id"] async for doc in oldest.limit(excess)]
                await self._throttle.delete_many({"_id": {"$in": ids}})
        return entries

    async def clear_login_failures(self, key: str) -> None:
        """Forgets the throttle counter ``key``."""
        await self._throttle.delete_one({"_id": key})

    async def signing_keys(self) -> list[SigningKeyRecord]:
        """Returns every signing key, the current one first, then newest first."""
        keys = [_key_from_doc(doc) async for doc in self._keys.find({}).sort("create_time", DESCENDING)]
        return sorted(keys, key=lambda k: k.retire_time is not None)

    async def rotate_signing_key(
        self, new: SigningKeyRecord, *, expected_current: str | None, retire_time: float, not_after: float
    ) -> bool:
        """Makes ``new`` current if the current key is still ``expected_current`` (one transaction)."""

        async def run(session: AsyncClientSession) -> bool:
            doc = await self._keys.find_one({"current": True}, {"_id": 1}, session=session)
            if (None if doc is None else doc["_id"]) != expected_current:
                return False
            await self._keys.update_many(
                {"current": True},
                {"$set": {"retire_time": retire_time, "not_after": not_after}, "$unset": {"current": ""}},
                session=session,
            )
            await self._keys.insert_one(
                {
                    "_id": new.kid,
                    "private_key_pem": new.private_key_pem,
                    "public_key": new.public_key,
                    "create_time": new.create_time,
                    "retire_time": None,
                    "not_after": None,
                    "current": True,
                },
                session=session,
            )
            return True

        try:
            return await self._transaction(run)
        except DuplicateKeyError:
            # Another process inserted its new current key first.
            return False

    async def prune_signing_keys(self, now: float) -> list[str]:
        """Deletes retired keys past their publication window."""
        query = {"not_after": {"$ne": None, "$lte": now}}
        kids = [doc["_id"] async for doc in self._keys.find(query, {"_id": 1})]
        if kids:
            await self._keys.delete_many({"_id": {"$in": kids}, **query})
        return kids

    async def insert_refresh_token(self, token: RefreshTokenRecord) -> None:
        """Stores a new refresh token."""
        await self._refresh.insert_one(_refresh_doc(token))

    async def get_refresh_token(self, token_hash: str) -> RefreshTokenRecord | None:
        """Returns the refresh token with this hash, or None."""
        doc = await self._refresh.find_one({"_id": token_hash})
        return None if doc is None else _refresh_from_doc(doc)

    async def spend_refresh_token(
        self, token_hash: str, successor: RefreshTokenRecord, *, now: float
    ) -> SpendOutcome:
        """Spends the token and stores its successor, or revokes the family of a reused one."""

        async def run(session: AsyncClientSession) -> SpendOutcome:
            doc = await self._refresh.find_one({"_id": token_hash}, session=session)
            if doc is None:
                return SpendOutcome.UNKNOWN
            token = _refresh_from_doc(doc)
            if token.revoked:
                return SpendOutcome.REVOKED
            if token.used_time is not None:
                await self._revoke_where({"family_id": token.family_id}, now, session)
                return SpendOutcome.REUSED
            if token.expire_time <= now:
                return SpendOutcome.EXPIRED
            # The filter on used_time makes the spend a compare-and-set inside the transaction too.
            result = await self._refresh.update_one(
                {"_id": token_hash, "used_time": None, "revoked": False},
                {"$set": {"used_time": now}},
                session=session,
            )
            if result.modified_count != 1:
                await self._revoke_where({"family_id": token.family_id}, now, session)
                return SpendOutcome.REUSED
            await self._refresh.insert_one(
                _refresh_doc(_successor_of(token, successor)),
                session=session,
            )
            return SpendOutcome.SPENT

        return await self._transaction(run)

    async def revoke_family(self, family_id: str, *, now: float) -> None:
        """Revokes the family and its unexpired access tokens (one transaction)."""

        async def run(session: AsyncClientSession) -> None:
            await self._revoke_where({"family_id": family_id}, now, session)

        await self._transaction(run)

    async def family_of_access_token(self, jti: str) -> str | None:
        """The family that issued the access token ``jti``."""
        doc = await self._refresh.find_one({"access_jti": jti}, {"family_id": 1})
        return None if doc is None else str(doc["family_id"])

    async def add_revocations(self, revocations: Sequence[Revocation]) -> None:
        """Records revoked access tokens."""
        if revocations:
            await self._revocations.bulk_write(
                [
                    UpdateOne({"_id": r.jti}, {"$setOnInsert": _revocation_doc(r)}, upsert=True)
                    for r in revocations
                ],
                ordered=False,
            )

    async def list_revocations(
        self, *, now: float, since: float = 0.0, after: tuple[float, str] | None = None, limit: int
    ) -> list[Revocation]:
        """Returns a page of unexpired revocations ordered by (revoke time, jti)."""
        query: dict[str, Any] = {"expire_time": {"$gt": now}, "revoke_time": {"$gte": since}}
        if after is not None:
            query["$or"] = [
                {"revoke_time": {"$gt": after[0]}},
                {"revoke_time": after[0], "_id": {"$gt": after[1]}},
            ]
        cursor = (
            self._revocations.find(query).sort([("revoke_time", ASCENDING), ("_id", ASCENDING)]).limit(limit)
        )
        return [
            Revocation(doc["_id"], float(doc["expire_time"]), float(doc["revoke_time"]))
            async for doc in cursor
        ]

    async def prune(self, *, now: float, idempotency_ttl: float) -> None:
        """Forgets expired records now instead of waiting for the TTL monitor."""
        await self._revocations.delete_many({"expire_time": {"$lte": now}})
        await self._refresh.delete_many({"expire_time": {"$lte": now}})
        await self._idempotency.delete_many({"create_time": {"$lte": now - idempotency_ttl}})
        await self._throttle.delete_many({"expire_time": {"$lte": now}})


def make_identity_store(config: IdentityConfig) -> IdentityStore:
    """Returns the configured store, not yet opened: MongoDB for a ``mongodb://`` URL, else SQLite."""
    if config.store_url:
        return MongoIdentityStore(MongoDatabase(config.store_url, config.mongo_database))
    return SqliteIdentityStore(config.sqlite_path)
