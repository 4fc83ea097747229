"""Login throttling through a real server: what known and unknown usernames get, per-address
backoff, password spraying, the per-username ceiling, and what sentinel hears."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from bhiv.identity.v1 import user_service_pb2 as us
from bhiv_core.runtime.errors import ResourceExhausted, Unauthenticated
from bhiv_core.services.identity.service import ClientInfo, SecurityEventKind
from bhiv_core.services.identity.store.sqlite import SqliteIdentityStore
from bhiv_core.services.identity.throttle import ThrottleKeys, address_key
from tests.services.identity.conftest import Served, admin_password, bearer, serve_identity
from tests.services.identity.test_servicer import PASSWORD, create

LOGIN = "/bhiv.identity.v1.AuthService/Login"


def raw_details(err: grpc.aio.AioRpcError) -> bytes:
    return dict(err.trailing_metadata() or ())["grpc-status-details-bin"]


def from_address(address: str) -> ClientInfo:
    return ClientInfo(address, LOGIN)


def test_counters_are_keyed_by_the_case_folded_username_and_the_address_or_ipv6_slash_64() -> None:
    assert ThrottleKeys.of("Admin", "198.51.100.1") == ThrottleKeys.of("admin", "198.51.100.1")
    assert (
        ThrottleKeys.of("admin", "198.51.100.1").account_address
        != ThrottleKeys.of("admin", "198.51.100.2").account_address
    )
    assert address_key("2001:db8:1:2::a") == address_key("2001:db8:1:2:ffff::1") == "2001:db8:1:2::/64"
    assert address_key("::ffff:198.51.100.1") == "198.51.100.1"
    assert address_key("unix:/tmp/socket") == "unix:/tmp/socket"
    keys = ThrottleKeys.of("admin", "198.51.100.1")
    # Stored keys are digests: no typed username (or password typed into the wrong field) at rest.
    assert all(len(k) == 32 and "admin" not in k for k in (keys.account_address, keys.address, keys.account))


async def attempts(served: Served, username: str, rounds: int) -> list[tuple[grpc.StatusCode, str, bytes]]:
    """Wrong-password logins of ``username``, 1.5 s apart (frozen clock): what each answered."""
    seen = []
    for _ in range(rounds):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await served.login(username, "wrong password")
        seen.append((err.value.code(), err.value.details(), raw_details(err.value)))
        served.clock.advance(1.5)
    return seen


async def test_known_and_unknown_usernames_get_identical_answers_over_repeated_failures(
    tmp_path: Path,
) -> None:
    # Low thresholds, so all three counters (username from here, here, username) back off in turn.
    thresholds = {
        "LOGIN_BACKOFF_AFTER": "3",
        "LOGIN_ADDRESS_BACKOFF_AFTER": "5",
        "LOGIN_ACCOUNT_BACKOFF_AFTER": "7",
    }
    runs = {}
    for username in ("admin", "nobody"):
        async with serve_identity(tmp_path / username, **thresholds) as served:
            served.clock.freeze()
            runs[username] = await attempts(served, username, 12)
    assert runs["admin"] == runs["nobody"]
    codes = [code for code, _, _ in runs["admin"]]
    assert grpc.StatusCode.UNAUTHENTICATED in codes and grpc.StatusCode.RESOURCE_EXHAUSTED in codes


async def test_known_and_unknown_usernames_cost_the_same_store_work_and_hashing(served: Served) -> None:
    served.clock.freeze()
    store, hasher = served.service.store, served.service.hasher
    assert isinstance(store, SqliteIdentityStore)
    work: list[str] = []
    read, write, derive = store.db.read, store.db.write, hasher._derive

    async def counted_read(fn):
        work.append("read")
        return await read(fn)

    async def counted_write(fn):
        work.append("write")
        return await write(fn)

    def counted_derive(*args):
        work.append("hash")
        return derive(*args)

    store.db.read, store.db.write, hasher._derive = counted_read, counted_write, counted_derive  # type: ignore[method-assign]
    costs = {}
    for username in ("admin", "nobody"):
        runs = []
        for _ in range(3):
            work.clear()
            with pytest.raises(grpc.aio.AioRpcError):
                await served.login(username, "wrong password")
            runs.append(sorted(work))
        costs[username] = runs
    assert costs["admin"] == costs["nobody"]
    assert costs["admin"][0] == ["hash", "read", "read", "write"]


async def test_a_lockout_from_one_address_does_not_lock_the_account_from_another(served: Served) -> None:
    served.clock.freeze()
    service, password = served.service, admin_password(served.data_dir)
    for _ in range(5):
        with pytest.raises(Unauthenticated):
            await service.login("admin", "wrong password", from_address("198.51.100.1"))
    with pytest.raises(ResourceExhausted):
        await service.login("admin", password, from_address("198.51.100.1"))
    _, user = await service.login("admin", password, from_address("198.51.100.2"))
    assert user.username == "admin"
    # An IPv6 client is one /64: another address in the same /64 is the same client.
    for _ in range(5):
        with pytest.raises(Unauthenticated):
            await service.login("admin", "wrong password", from_address("2001:db8:1:2::a"))
    with pytest.raises(ResourceExhausted):
        await service.login("admin", password, from_address("2001:db8:1:2::b"))
    await service.login("admin", password, from_address("2001:db8:1:3::a"))


async def test_password_spraying_from_one_address_backs_off_every_username_there(served: Served) -> None:
    served.clock.freeze()
    service, password = served.service, admin_password(served.data_dir)
    sprayer = from_address("203.0.113.9")
    for i in range(20):  # one guess each at twenty usernames, known or not
        with pytest.raises(Unauthenticated):
            await service.login("admin" if i == 0 else f"user{i}", "Summer2026!", sprayer)
    with pytest.raises(ResourceExhausted):
        await service.login("someone-new", "Summer2026!", sprayer)
    with pytest.raises(ResourceExhausted):
        await service.login("admin", password, sprayer)
    await service.login("admin", password, from_address("203.0.113.10"))


async def test_a_username_backs_off_everywhere_only_past_the_much_higher_ceiling_from_all_addresses(
    tmp_path: Path,
) -> None:
    async with serve_identity(tmp_path, LOGIN_ACCOUNT_BACKOFF_AFTER="12") as served:
        served.clock.freeze()
        service, password = served.service, admin_password(served.data_dir)
        for n in range(12):
            with pytest.raises(Unauthenticated):
                await service.login("admin", "wrong password", from_address(f"198.51.100.{n // 4}"))
            if n == 10:  # eleven failures from three addresses: a fresh address still gets in
                await service.login("admin", password, from_address("192.0.2.1"))
        with pytest.raises(ResourceExhausted):
            await service.login("admin", password, from_address("192.0.2.2"))
        served.clock.advance(1.5)
        await service.login("admin", password, from_address("192.0.2.2"))


async def test_wrong_current_passwords_back_off_like_failed_logins(served: Served) -> None:
    served.clock.freeze()
    await create(served, await served.admin_token(), "olivia")
    token = (await served.login("olivia", PASSWORD)).tokens.access_token
    request = us.ChangePasswordRequest(
        current_password="not my password", new_password="a brand new password"
    )
    for _ in range(5):
        with pytest.raises(grpc.aio.AioRpcError) as wrong:
            await served.users.ChangePassword(request, metadata=bearer(token))
        assert wrong.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as locked:
        await served.users.ChangePassword(request, metadata=bearer(token))
    assert locked.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(grpc.aio.AioRpcError) as login:
        await served.login("olivia", PASSWORD)
    assert login.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_failures_and_throttled_attempts_reach_sentinel_with_their_counts_and_address(
    served: Served,
) -> None:
    served.clock.freeze()
    for _ in range(6):
        with pytest.raises(grpc.aio.AioRpcError):
            await served.login("admin", "wrong password")
    with pytest.raises(grpc.aio.AioRpcError):
        await served.login("nobody", "wrong password")
    failed = [e for e in served.reporter.events if e.kind is SecurityEventKind.LOGIN_FAILED]
    assert {e.source_address for e in failed} == {"127.0.0.1"}
    assert failed[0].detail == (
        "wrong password; failures: 1 of this username from this address, 1 from this address, "
        "1 of this username from all addresses"
    )
    assert failed[4].detail.endswith("5 of this username from all addresses; backing off 1 s")
    assert failed[5].detail == "throttled for 1 s (backing off: account_address)"
    assert failed[6].detail == (
        "unknown username; failures: 1 of this username from this address, 6 from this address, "
        "1 of this username from all addresses"
    )
