"""The store contract, run against SQLite always and MongoDB when BHIV_TEST_MONGODB_URL is set."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import replace
from pathlib import Path

import bson.errors
import pytest

from bhiv_core.services.identity.store import (
    IdentityStore,
    RefreshTokenRecord,
    Revocation,
    SigningKeyRecord,
    SpendOutcome,
    UsernameTaken,
    UserRecord,
)
from bhiv_core.services.identity.store.sqlite import SCHEMA_V1, SqliteIdentityStore
from bhiv_core.storage.sqlite import SqliteDatabase

NOW = time.time()


def user(uid: str, username: str, role: str = "ops", **over) -> UserRecord:
    base = UserRecord(
        id=uid,
        username=username,
        display_name=username.title(),
        email=f"{username}@example.com",
        role=role,
        customer="",
        disabled=False,
        password_hash="scrypt$12$8$1$c2FsdA==$aGFzaA==",
        create_time=NOW,
        update_time=NOW,
        etag=f"etag-{uid}",
    )
    return replace(base, **over)


def refresh(token_hash: str, family: str, user_id: str, jti: str, **over) -> RefreshTokenRecord:
    base = RefreshTokenRecord(
        token_hash=token_hash,
        family_id=family,
        user_id=user_id,
        access_jti=jti,
        access_expire_time=NOW + 900,
        create_time=NOW,
        expire_time=NOW + 3600,
    )
    return replace(base, **over)


def key(kid: str, created: float = NOW) -> SigningKeyRecord:
    return SigningKeyRecord(
        kid=kid, private_key_pem=b"encrypted " + kid.encode(), public_key=b"\x01" * 32, create_time=created
    )


async def revoked_jtis(store: IdentityStore) -> set[str]:
    return {r.jti for r in await store.list_revocations(now=NOW, limit=1000)}


# ------------------------------------------------------------------------------------------ users


async def test_created_user_reads_back_by_id_and_by_username_regardless_of_case(store: IdentityStore) -> None:
    ada = user("u1", "Ada")
    assert await store.has_users() is False
    assert await store.create_user(ada, now=NOW) == (ada, True)
    assert await store.get_user("u1") == ada
    assert await store.get_user_by_username("ada") == ada
    assert await store.get_user_by_username("ADA") == ada
    assert await store.get_user("missing") is None
    assert await store.get_user_by_username("bob") is None
    assert await store.has_users() is True


async def test_username_is_unique_regardless_of_case(store: IdentityStore) -> None:
    await store.create_user(user("u1", "ada"), now=NOW)
    with pytest.raises(UsernameTaken):
        await store.create_user(user("u2", "ADA"), now=NOW)
    assert await store.get_user("u2") is None


async def test_create_with_a_seen_request_id_returns_the_first_user(store: IdentityStore) -> None:
    first, created = await store.create_user(user("u1", "ada"), request_id="req-1", now=NOW)
    assert created
    again, created_again = await store.create_user(user("u2", "ada"), request_id="req-1", now=NOW)
    assert (again, created_again) == (first, False)
    assert await store.get_user("u2") is None


async def test_list_users_orders_by_username_pages_and_filters_by_role(store: IdentityStore) -> None:
    for uid, name, role in [
        ("1", "carol", "sales"),
        ("2", "Alice", "ops"),
        ("3", "bob", "sales"),
        ("4", "dave", "ops"),
    ]:
        await store.create_user(user(uid, name, role), now=NOW)
    first = await store.list_users(limit=2)
    assert [u.username for u in first] == ["Alice", "bob"]
    rest = await store.list_users(after=first[-1].username_key, limit=10)
    assert [u.username for u in rest] == ["carol", "dave"]
    assert [u.username for u in await store.list_users(limit=10, role="sales")] == ["bob", "carol"]


async def test_update_user_is_a_compare_and_set_on_the_etag(store: IdentityStore) -> None:
    ada = user("u1", "ada")
    await store.create_user(ada, now=NOW)
    changed = replace(ada, display_name="Ada L.", role="admin", etag="etag-2", update_time=NOW + 1)
    assert await store.update_user(changed, expected_etag="stale") is False
    assert await store.get_user("u1") == ada
    assert await store.update_user(changed, expected_etag=ada.etag) is True
    assert await store.get_user("u1") == changed
    assert await store.update_user(replace(changed, id="missing"), expected_etag="etag-2") is False


def never(failures: int) -> float:
    return 0.0


def after_two(failures: int) -> float:
    return 0.0 if failures < 2 else 30.0


async def count(store: IdentityStore, *keys: str, now: float, policy=never, keep: float = 60, cap: int = 100):
    return await store.count_login_failure(
        dict.fromkeys(keys, policy), now=now, keep_seconds=keep, max_entries=cap
    )


async def test_a_failed_login_counts_on_every_counter_and_locks_as_each_policy_says(
    store: IdentityStore,
) -> None:
    policies = {"a": after_two, "b": never}
    first = await store.count_login_failure(policies, now=NOW, keep_seconds=60, max_entries=100)
    assert [(e.key, e.failures, e.locked_until) for e in first] == [("a", 1, 0.0), ("b", 1, 0.0)]
    second = await store.count_login_failure(policies, now=NOW + 1, keep_seconds=60, max_entries=100)
    assert [(e.key, e.failures, e.locked_until) for e in second] == [("a", 2, NOW + 31), ("b", 2, 0.0)]
    # A counter outlives its lock by the window, so the count does not restart after a backoff.
    assert [e.expire_time for e in second] == [NOW + 31 + 60, NOW + 1 + 60]
    live = await store.login_throttles(["a", "b", "unknown"], now=NOW + 2)
    assert sorted(live, key=lambda e: e.key) == second
    await store.clear_login_failures("a")
    assert [e.key for e in await store.login_throttles(["a", "b"], now=NOW + 2)] == ["b"]


async def test_a_counter_is_forgotten_a_window_after_its_last_failure_and_starts_again(
    store: IdentityStore,
) -> None:
    await count(store, "a", now=NOW)
    assert [e.failures for e in await store.login_throttles(["a"], now=NOW + 59)] == [1]
    assert await store.login_throttles(["a"], now=NOW + 60) == []
    (again,) = await count(store, "a", now=NOW + 61)
    assert (again.failures, again.locked_until) == (1, 0.0)
    await store.prune(now=NOW + 61 + 60, idempotency_ttl=3600)
    assert await store.login_throttles(["a"], now=NOW) == []  # gone, not just expired


async def test_counters_are_capped_forgetting_those_not_backing_off_oldest_first(
    store: IdentityStore,
) -> None:
    await count(store, "locked", now=NOW, policy=lambda failures: 300.0, keep=600, cap=3)
    for i in range(5):
        await count(store, f"k{i}", now=NOW + 1 + i, keep=600, cap=3)
    keys = ["locked", *(f"k{i}" for i in range(5))]
    left = {e.key for e in await store.login_throttles(keys, now=NOW + 10)}
    assert left == {"locked", "k3", "k4"}


async def test_a_user_no_longer_carries_login_counters(tmp_path: Path) -> None:
    path = tmp_path / "identity.db"
    old = SqliteDatabase(path, (SCHEMA_V1,))
    await old.open()
    try:
        await old.write(
            lambda conn: conn.execute(
                "INSERT INTO users (id, username, username_key, role, password_hash, create_time, "
                "update_time, etag, failed_logins, locked_until) "
                "VALUES ('u1', 'ada', 'ada', 'ops', 'x', 0, 0, 'e', 7, ?)",
                (NOW + 900,),
            )
        )
    finally:
        await old.close()
    store = SqliteIdentityStore(path)
    await store.open()
    try:
        migrated = await store.get_user("u1")
        assert migrated is not None and migrated.username == "ada"
        columns = await store.db.read(lambda conn: conn.execute("PRAGMA table_info(users)").fetchall())
        assert not {"failed_logins", "locked_until"} & {c["name"] for c in columns}
    finally:
        await store.close()


# ------------------------------------------------------------------------------- refresh tokens


async def test_spending_a_refresh_token_stores_its_successor(store: IdentityStore) -> None:
    await store.create_user(user("u1", "ada"), now=NOW)
    await store.insert_refresh_token(refresh("h1", "fam", "u1", "jti-1"))
    outcome = await store.spend_refresh_token("h1", refresh("h2", "fam", "u1", "jti-2"), now=NOW + 5)
    assert outcome is SpendOutcome.SPENT
    spent = await store.get_refresh_token("h1")
    assert spent is not None and spent.used_time == NOW + 5 and not spent.revoked
    assert await store.get_refresh_token("h2") == refresh("h2", "fam", "u1", "jti-2")
    assert await store.family_of_access_token("jti-2") == "fam"
    assert await store.family_of_access_token("nope") is None


async def test_a_successor_inherits_its_familys_end_and_never_outlives_it(store: IdentityStore) -> None:
    await store.create_user(user("u1", "ada"), now=NOW)
    await store.insert_refresh_token(refresh("h1", "fam", "u1", "jti-1", family_expire_time=NOW + 100))
    # The successor asks for an hour and no family end: the stored one keeps the family's end.
    asked = refresh("h2", "fam", "u1", "jti-2", expire_time=NOW + 3600)
    assert await store.spend_refresh_token("h1", asked, now=NOW + 5) is SpendOutcome.SPENT
    stored = await store.get_refresh_token("h2")
    assert stored is not None
    assert (stored.family_expire_time, stored.expire_time) == (NOW + 100, NOW + 100)
    # Once the family has ended, its last token is expired like any other.
    third = refresh("h3", "fam", "u1", "jti-3")
    assert await store.spend_refresh_token("h2", third, now=NOW + 100) is SpendOutcome.EXPIRED


async def test_spend_and_successor_are_one_transaction(store: IdentityStore) -> None:
    await store.create_user(user("u1", "ada"), now=NOW)
    await store.insert_refresh_token(refresh("h1", "fam", "u1", "jti-1"))
    await store.insert_refresh_token(refresh("taken", "other", "u1", "jti-x"))
    # The successor's hash collides, so its insert fails: the spend must roll back with it.
    with pytest.raises(Exception):  # noqa: B017 - each store raises its own driver's error
        await store.spend_refresh_token("h1", refresh("taken", "fam", "u1", "jti-2"), now=NOW)
    original = await store.get_refresh_token("h1")
    assert original is not None and original.used_time is None
    assert (
        await store.spend_refresh_token("h1", refresh("h2", "fam", "u1", "jti-2"), now=NOW)
        is SpendOutcome.SPENT
    )


async def test_reusing_a_spent_token_revokes_the_whole_family(store: IdentityStore) -> None:
    await store.create_user(user("u1", "ada"), now=NOW)
    await store.insert_refresh_token(refresh("h1", "fam", "u1", "jti-1"))
    await store.insert_refresh_token(refresh("o1", "other", "u1", "jti-o"))
    await store.spend_refresh_token("h1", refresh("h2", "fam", "u1", "jti-2"), now=NOW)
    outcome = await store.spend_refresh_token("h1", refresh("h3", "fam", "u1", "jti-3"), now=NOW + 1)
    assert outcome is SpendOutcome.REUSED
    assert await store.get_refresh_token("h3") is None
    successor = await store.get_refresh_token("h2")
    assert successor is not None and successor.revoked
    assert await store.spend_refresh_token("h2", refresh("h4", "fam", "u1", "jti-4"), now=NOW + 2) is (
        SpendOutcome.REVOKED
    )
    assert await revoked_jtis(store) == {"jti-1", "jti-2"}
    other = await store.get_refresh_token("o1")
    assert other is not None and not other.revoked


async def test_unknown_and_expired_refresh_tokens_are_not_spent(store: IdentityStore) -> None:
    await store.create_user(user("u1", "ada"), now=NOW)
    await store.insert_refresh_token(refresh("old", "fam", "u1", "jti-1", expire_time=NOW - 1))
    nxt = refresh("h2", "fam", "u1", "jti-2")
    assert await store.spend_refresh_token("nope", nxt, now=NOW) is SpendOutcome.UNKNOWN
    assert await store.spend_refresh_token("old", nxt, now=NOW) is SpendOutcome.EXPIRED
    assert await store.get_refresh_token("h2") is None


async def test_revoke_family_revokes_tokens_and_unexpired_access_tokens(store: IdentityStore) -> None:
    await store.create_user(user("u1", "ada"), now=NOW)
    await store.insert_refresh_token(refresh("h1", "fam", "u1", "jti-1"))
    await store.insert_refresh_token(refresh("h0", "fam", "u1", "jti-0", access_expire_time=NOW - 1))
    await store.revoke_family("fam", now=NOW)
    token = await store.get_refresh_token("h1")
    assert token is not None and token.revoked
    assert await revoked_jtis(store) == {"jti-1"}


async def test_revoke_sessions_revokes_the_families_and_records_the_access_tokens(
    store: IdentityStore,
) -> None:
    await store.create_user(user("u1", "ada"), now=NOW)
    await store.insert_refresh_token(refresh("h1", "fam-1", "u1", "jti-1"))
    await store.insert_refresh_token(refresh("h2", "fam-2", "u1", "jti-2"))
    await store.insert_refresh_token(refresh("h3", "other", "u1", "jti-3"))
    await store.revoke_sessions(["fam-1", "fam-2"], [Revocation("caller", NOW + 600, NOW)], now=NOW)
    for token_hash, revoked in (("h1", True), ("h2", True), ("h3", False)):
        token = await store.get_refresh_token(token_hash)
        assert token is not None and token.revoked is revoked, token_hash
    assert await revoked_jtis(store) == {"jti-1", "jti-2", "caller"}
    await store.revoke_sessions([], [], now=NOW)  # a logout with nothing to revoke is fine


async def test_a_failed_revoke_sessions_changes_nothing(store: IdentityStore) -> None:
    # The second step (recording the access token) fails after the first (revoking the family)
    # ran: one transaction, so the family is not left revoked without its access token recorded.
    await store.create_user(user("u1", "ada"), now=NOW)
    await store.insert_refresh_token(refresh("h1", "fam", "u1", "jti-1"))
    unstorable = Revocation(object(), NOW + 600, NOW)  # type: ignore[arg-type]
    with pytest.raises((sqlite3.Error, bson.errors.InvalidDocument)):
        await store.revoke_sessions(["fam"], [Revocation("caller", NOW + 600, NOW), unstorable], now=NOW)
    token = await store.get_refresh_token("h1")
    assert token is not None and not token.revoked
    assert await revoked_jtis(store) == set()


async def test_update_user_can_revoke_every_session_but_one(store: IdentityStore) -> None:
    ada = user("u1", "ada")
    await store.create_user(ada, now=NOW)
    await store.insert_refresh_token(refresh("h1", "keep", "u1", "jti-1"))
    await store.insert_refresh_token(refresh("h2", "drop", "u1", "jti-2"))
    changed = replace(ada, password_hash="new", etag="etag-2")
    assert await store.update_user(
        changed, expected_etag=ada.etag, revoke_sessions=True, keep_family="keep", now=NOW
    )
    kept, dropped = await store.get_refresh_token("h1"), await store.get_refresh_token("h2")
    assert kept is not None and not kept.revoked
    assert dropped is not None and dropped.revoked
    assert await revoked_jtis(store) == {"jti-2"}


# ---------------------------------------------------------------------------------- revocations


async def test_revocations_list_unexpired_since_a_time_in_pages(store: IdentityStore) -> None:
    await store.add_revocations(
        [
            Revocation("a", NOW + 100, NOW + 1),
            Revocation("b", NOW + 100, NOW + 2),
            Revocation("c", NOW + 100, NOW + 2),
            Revocation("gone", NOW - 1, NOW + 3),
        ]
    )
    await store.add_revocations([Revocation("a", NOW + 500, NOW + 9)])  # first record wins
    every = await store.list_revocations(now=NOW, limit=10)
    assert every == [
        Revocation("a", NOW + 100, NOW + 1),
        Revocation("b", NOW + 100, NOW + 2),
        Revocation("c", NOW + 100, NOW + 2),
    ]
    assert [r.jti for r in await store.list_revocations(now=NOW, since=NOW + 2, limit=10)] == ["b", "c"]
    page = await store.list_revocations(now=NOW, limit=2)
    after = (page[-1].revoke_time, page[-1].jti)
    assert [r.jti for r in await store.list_revocations(now=NOW, after=after, limit=2)] == ["c"]
    await store.prune(now=NOW + 200, idempotency_ttl=60)
    assert await store.list_revocations(now=NOW, limit=10) == []


# --------------------------------------------------------------------------------- signing keys


async def test_rotation_is_a_compare_and_set_on_the_current_key(store: IdentityStore) -> None:
    assert await store.signing_keys() == []
    assert (
        await store.rotate_signing_key(key("k1"), expected_current="k0", retire_time=NOW, not_after=NOW)
        is False
    )
    assert await store.rotate_signing_key(key("k1"), expected_current=None, retire_time=NOW, not_after=NOW)
    assert (
        await store.rotate_signing_key(key("k2"), expected_current=None, retire_time=NOW, not_after=NOW)
        is False
    )
    assert await store.rotate_signing_key(
        key("k2", NOW + 10), expected_current="k1", retire_time=NOW + 10, not_after=NOW + 70
    )
    keys = await store.signing_keys()
    assert [k.kid for k in keys] == ["k2", "k1"]
    assert (keys[0].retire_time, keys[0].not_after) == (None, None)
    assert (keys[1].retire_time, keys[1].not_after) == (NOW + 10, NOW + 70)
    assert keys[0].private_key_pem == b"encrypted k2"
    assert await store.prune_signing_keys(NOW + 69) == []
    assert await store.prune_signing_keys(NOW + 70) == ["k1"]
    assert [k.kid for k in await store.signing_keys()] == ["k2"]


async def test_tokens_stored_before_the_session_cap_end_their_family_with_their_own_expiry(
    tmp_path: Path,
) -> None:
    path = tmp_path / "identity.db"
    old = SqliteDatabase(path, (SCHEMA_V1,))
    await old.open()
    try:

        def seed(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO users (id, username, username_key, role, password_hash, create_time, "
                "update_time, etag) VALUES ('u1', 'ada', 'ada', 'ops', 'x', 0, 0, 'e')"
            )
            conn.execute(
                "INSERT INTO refresh_tokens (token_hash, family_id, user_id, access_jti, "
                "access_expire_time, create_time, expire_time) VALUES ('h1', 'fam', 'u1', 'j1', ?, ?, ?)",
                (NOW + 900, NOW, NOW + 3600),
            )

        await old.write(seed)
    finally:
        await old.close()
    store = SqliteIdentityStore(path)
    await store.open()
    try:
        migrated = await store.get_refresh_token("h1")
        assert migrated is not None and migrated.family_expire_time == NOW + 3600
        asked = refresh("h2", "fam", "u1", "jti-2", expire_time=NOW + 7200)
        assert await store.spend_refresh_token("h1", asked, now=NOW + 5) is SpendOutcome.SPENT
        successor = await store.get_refresh_token("h2")
        assert successor is not None and successor.expire_time == NOW + 3600
    finally:
        await store.close()
