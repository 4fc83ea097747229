"""Where identity keeps its data: users, keys, refresh tokens, revocations, idempotency, throttling.

:class:`IdentityStore` is the storage contract; :class:`SqliteIdentityStore` (the embedded default,
``<data_dir>/identity.db``) and :class:`MongoIdentityStore` (deployments) implement it, and one
contract test suite runs against both. Every change that touches several records is one
transaction: spending a refresh token and inserting its successor, revoking a family together with
the access tokens issued from it, a logout (its families and the caller's access token), creating
a user together with its idempotency key, rotating the signing key, counting one failed login on
all its throttle counters. Refresh tokens are stored
only as their SHA-256 hex digest; private signing keys only encrypted with the key-encryption key;
throttle counters only under hashed keys (see :mod:`bhiv_core.services.identity.throttle`).

Times are Unix seconds (floats) everywhere, so the service logic is the same over both stores.

One backend per module: :mod:`~bhiv_core.services.identity.store.sqlite` (``SqliteIdentityStore``,
the embedded default) and :mod:`~bhiv_core.services.identity.store.mongo`
(``MongoIdentityStore``). This package holds the contract, its records, what both backends
compute the same way, and the factory.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from bhiv_core.services.identity.config import IdentityConfig
from bhiv_core.storage.mongo import MongoDatabase

__all__ = [
    "IdentityStore",
    "LockPolicy",
    "RefreshTokenRecord",
    "Revocation",
    "SigningKeyRecord",
    "SpendOutcome",
    "ThrottleEntry",
    "UserRecord",
    "UsernameTaken",
    "after_failure",
    "capped_expiry",
    "make_identity_store",
    "successor_of",
    "username_key",
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


LockPolicy = Callable[[int], float]
"""Maps a count of failed logins to how many seconds logins it covers are refused (0 = none)."""


def after_failure(
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

    async def revoke_sessions(
        self, families: Sequence[str], revocations: Sequence[Revocation], *, now: float
    ) -> None:
        """Revokes ``families`` (as :meth:`revoke_family`) and records ``revocations``, in one transaction.

        A logout: either every family and every access token ends up revoked, or, when the call
        fails, nothing changed.
        """

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


def capped_expiry(expire_time: float, family_expire_time: float) -> float:
    """A refresh token's expiry: ``expire_time``, but never after its family ends (0: no end)."""
    return min(expire_time, family_expire_time) if family_expire_time else expire_time


def successor_of(token: RefreshTokenRecord, successor: RefreshTokenRecord) -> RefreshTokenRecord:
    """``successor`` as stored: in ``token``'s family, for its user, never outliving the family."""
    end = token.family_expire_time
    return replace(
        successor,
        family_id=token.family_id,
        user_id=token.user_id,
        family_expire_time=end,
        expire_time=capped_expiry(successor.expire_time, end),
    )


def make_identity_store(config: IdentityConfig) -> IdentityStore:
    """Returns the configured store, not yet opened: MongoDB for a ``mongodb://`` URL, else SQLite."""
    # The backends import this package (its records), so they are imported once one is chosen.
    from bhiv_core.services.identity.store.mongo import MongoIdentityStore
    from bhiv_core.services.identity.store.sqlite import SqliteIdentityStore

    if config.store_url:
        return MongoIdentityStore(MongoDatabase(config.store_url, config.mongo_database))
    return SqliteIdentityStore(config.sqlite_path)
