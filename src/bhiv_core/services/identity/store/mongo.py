"""The identity store in MongoDB (deployments), through PyMongo's async client.

Multi-document changes run in transactions, so the database must be a replica set. Expiring
documents carry an ``expire_at`` date for MongoDB's TTL indexes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from pymongo import ASCENDING, DESCENDING, UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.errors import DuplicateKeyError

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
from bhiv_core.storage.mongo import MongoDatabase

__all__ = ["MongoIdentityStore"]

T = TypeVar("T")


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
                entry = after_failure(stored.get(key), key, now, policy, keep_seconds)
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
                _refresh_doc(successor_of(token, successor)),
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

    async def _add_revocations(
        self, revocations: Sequence[Revocation], session: AsyncClientSession | None = None
    ) -> None:
        """Records revoked access tokens; a token revoked before keeps its first record."""
        if revocations:
            await self._revocations.bulk_write(
                [
                    UpdateOne({"_id": r.jti}, {"$setOnInsert": _revocation_doc(r)}, upsert=True)
                    for r in revocations
                ],
                ordered=False,
                session=session,
            )

    async def add_revocations(self, revocations: Sequence[Revocation]) -> None:
        """Records revoked access tokens."""
        await self._add_revocations(revocations)

    async def revoke_sessions(
        self, families: Sequence[str], revocations: Sequence[Revocation], *, now: float
    ) -> None:
        """Revokes the families and records the revocations in one transaction."""

        async def run(session: AsyncClientSession) -> None:
            for family in families:
                await self._revoke_where({"family_id": family}, now, session)
            await self._add_revocations(revocations, session)

        await self._transaction(run)

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
