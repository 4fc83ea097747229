"""The identity store in one SQLite file (``<data_dir>/identity.db``): the embedded default.

The schema is versioned (``PRAGMA user_version``, one script per version in :data:`MIGRATIONS`);
every multi-record change is one ``BEGIN IMMEDIATE`` transaction on the database thread.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path

from bhiv_core.services.identity.store import (
    LockPolicy,
    RefreshTokenRecord,
    Revocation,
    SigningKeyRecord,
    SpendOutcome,
    ThrottleEntry,
    UsernameTaken,
    UserRecord,
    after_failure,
    successor_of,
    username_key,
)
from bhiv_core.storage.sqlite import SqliteDatabase

__all__ = ["MIGRATIONS", "SqliteIdentityStore"]

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


def _insert_revocations(conn: sqlite3.Connection, revocations: Sequence[Revocation]) -> None:
    """Records revoked access tokens; a token revoked before keeps its first record."""
    conn.executemany(
        "INSERT OR IGNORE INTO revocations (jti, expire_time, revoke_time) VALUES (?, ?, ?)",
        [(r.jti, r.expire_time, r.revoke_time) for r in revocations],
    )


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
                entry = after_failure(
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

        def run(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM login_throttle WHERE key = ?", (key,))

        await self.db.write(run)

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
            _insert_refresh(conn, successor_of(token, successor))
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
        await self.db.write(lambda conn: _insert_revocations(conn, revocations))

    async def revoke_sessions(
        self, families: Sequence[str], revocations: Sequence[Revocation], *, now: float
    ) -> None:
        """Revokes the families and records the revocations in one transaction."""

        def run(conn: sqlite3.Connection) -> None:
            for family in families:
                _revoke_families(conn, "family_id = ?", (family,), now)
            _insert_revocations(conn, revocations)

        await self.db.write(run)

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
