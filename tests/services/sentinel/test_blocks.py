"""The block list on a real SQLite kit store: parsing, storage, expiry, and the edge's encoded config.

The edge's side (a real Envoy refusing a blocked client over ECDS) is in ``tests/e2e/test_blocks.py``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from envoy_data_plane.envoy.config.core.v3 import CidrRange
from envoy_data_plane.envoy.config.rbac.v3 import Action, RbacAction
from envoy_data_plane.envoy.extensions.filters.http.rbac.v3 import Rbac

from bhiv.sentinel.v1 import block_pb2
from bhiv.sentinel.v1 import block_service_pb2 as bs
from bhiv_core.runtime.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from bhiv_core.services.sentinel.blocks import service
from bhiv_core.services.sentinel.blocks.cidr import parse_address, parse_cidr, parse_networks
from bhiv_core.services.sentinel.blocks.config import DEFAULT_ALLOWLIST
from bhiv_core.services.sentinel.blocks.rbac import RbacConfig, _action, _cidr, action_name
from bhiv_core.services.sentinel.blocks.resources import BLOCKS, make_block_store
from bhiv_core.services.sentinel.blocks.service import BlockList, BlockSource

MANUAL = BlockSource.MANUAL


class Clock:
    """Unix seconds, moved by the test."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def make_list(path: Path, clock: Clock | None = None, **kwargs: object) -> BlockList:
    return BlockList(
        make_block_store(path, None),
        DEFAULT_ALLOWLIST,
        filter_name="bhiv.ip_blocks",
        clock=clock or time.time,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture
async def blocks(tmp_path: Path) -> AsyncIterator[BlockList]:
    started = make_list(tmp_path)
    await started.start()
    yield started
    await started.stop()


# ----------------------------------------------------------------------------- the strict parser


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("203.0.113.7", "203.0.113.7/32"),
        ("203.0.113.0/24", "203.0.113.0/24"),
        ("0.0.0.0/0", "0.0.0.0/0"),
        ("2001:DB8::/32", "2001:db8::/32"),
        ("2001:db8::1", "2001:db8::1/128"),
        ("::/0", "::/0"),
    ],
)
def test_a_range_is_read_and_normalised(text: str, normal: str) -> None:
    assert str(parse_cidr(text)) == normal


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("203.0.113.7/24", "HOST_BITS_SET"),
        ("2001:db8::1/64", "HOST_BITS_SET"),
        ("203.0.113.0/255.255.255.0", "INVALID_CIDR"),
        ("203.0.113.0/024", "INVALID_CIDR"),
        ("203.0.113.0/33", "INVALID_CIDR"),
        ("2001:db8::/129", "INVALID_CIDR"),
        ("203.0.113.07", "INVALID_CIDR"),
        ("::ffff:203.0.113.7", "INVALID_CIDR"),
        ("fe80::1%eth0", "INVALID_CIDR"),
        (" 203.0.113.7", "INVALID_CIDR"),
        ("203.0.113.7/", "INVALID_CIDR"),
        ("", "INVALID_CIDR"),
        ("1" * 10_000, "INVALID_CIDR"),
    ],
)
def test_a_bad_range_is_invalid_argument(text: str, reason: str) -> None:
    with pytest.raises(InvalidArgument) as bad:
        parse_cidr(text)
    [violation] = bad.value.violations
    assert violation.field == "cidr" and violation.reason == reason


def test_an_address_is_one_address_and_a_mapped_one_reads_as_ipv4() -> None:
    assert parse_address("::ffff:203.0.113.7") == ipaddress.ip_address("203.0.113.7")
    for bad in ("203.0.113.0/24", "999.1.1.1", "fe80::1%eth0", ""):
        with pytest.raises(InvalidArgument):
            parse_address(bad)


def test_the_allowlist_setting_is_a_list_of_ranges() -> None:
    assert [str(n) for n in parse_networks("10.0.0.0/8, 192.0.2.1,,2001:db8::/32")] == [
        "10.0.0.0/8",
        "192.0.2.1/32",
        "2001:db8::/32",
    ]
    with pytest.raises(ValueError, match="host bits"):
        parse_networks("10.0.0.1/8")


# ----------------------------------------------------------------------------- the encoded config


def fields(data: bytes) -> list[tuple[int, bytes | int]]:
    """The top-level fields of an encoded message: (number, payload or varint)."""
    out: list[tuple[int, bytes | int]] = []
    i = 0

    def varint() -> int:
        nonlocal i
        value = shift = 0
        while True:
            byte = data[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    while i < len(data):
        key = varint()
        if key & 7 == 0:
            out.append((key >> 3, varint()))
        else:
            assert key & 7 == 2
            length = varint()
            out.append((key >> 3, data[i : i + length]))
            i += length
    return out


def field(data: bytes, *path: int) -> bytes:
    for number in path:
        data = next(v for n, v in fields(data) if n == number)  # type: ignore[assignment]
    return data


def test_the_parts_encode_as_envoys_own_messages() -> None:
    assert _cidr(ipaddress.ip_network("203.0.113.0/24")) == bytes(
        CidrRange(address_prefix="203.0.113.0", prefix_len=24)
    )
    # OnMatch{action: TypedExtensionConfig{typed_config: Any{value: Action}}}.
    action = field(_action("blocked-until-lifted", 1), 2, 2, 2)
    assert Action.parse(action) == Action(name="blocked-until-lifted", action=RbacAction.DENY)


def test_the_config_is_the_allowlist_then_a_trie_of_the_blocks_by_when_they_end() -> None:
    from datetime import UTC, datetime

    later = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    config = RbacConfig("bhiv.ip_blocks", DEFAULT_ALLOWLIST)
    config.add("blocks/a", ipaddress.ip_network("203.0.113.0/24"), None)
    config.add("blocks/b", ipaddress.ip_network("2001:db8::/32"), later)
    config.add("blocks/c", ipaddress.ip_network("198.51.100.7/32"), None)
    config.add("blocks/d", ipaddress.ip_network("198.51.100.8/32"), later)
    config.add("blocks/e", ipaddress.ip_network("198.51.100.9/32"), None)
    config.remove("blocks/c")
    config.add("blocks/d", ipaddress.ip_network("198.51.100.8/32"), None)  # replaced
    assert len(config) == 4
    assert field(config.resource(), 1) == b"bhiv.ip_blocks"
    rbac = Rbac.parse(config.filter_config())
    assert rbac.matcher is not None and rbac.matcher.matcher_list is not None
    [allow] = rbac.matcher.matcher_list.matchers
    single = allow.predicate.single_predicate  # type: ignore[union-attr]
    assert single.input.name == "envoy.matching.inputs.source_ip"  # type: ignore[union-attr]
    assert single.custom_match.name == "envoy.matching.input_matchers.ip"  # type: ignore[union-attr]
    assert b"127.0.0.1" in single.custom_match.typed_config.value  # type: ignore[union-attr]
    tree = rbac.matcher.on_no_match.matcher.matcher_tree  # type: ignore[union-attr]
    assert tree.custom_match.typed_config.type_url.endswith("xds.type.matcher.v3.IPMatcher")  # type: ignore[union-attr]
    matchers = [v for n, v in fields(tree.custom_match.typed_config.value) if n == 1]  # type: ignore[union-attr]
    groups = {}
    for matcher in matchers:
        ranges = [CidrRange.parse(v) for n, v in fields(matcher) if n == 1]  # type: ignore[arg-type]
        action = Action.parse(field(matcher, 2, 2, 2, 2))  # type: ignore[arg-type]
        assert action.action == RbacAction.DENY
        groups[action.name] = [f"{r.address_prefix}/{r.prefix_len}" for r in ranges]
    assert groups == {
        "blocked-until-lifted": ["203.0.113.0/24", "198.51.100.9/32", "198.51.100.8/32"],
        "blocked-until-2030-01-02T03:04:05Z": ["2001:db8::/32"],
    }


def test_an_action_says_until_when() -> None:
    from datetime import UTC, datetime

    assert action_name(None) == "blocked-until-lifted"
    assert (
        action_name(datetime(2026, 12, 2, 16, 0, 5, 900, tzinfo=UTC)) == "blocked-until-2026-12-02T16:00:05Z"
    )


# ----------------------------------------------------------------------------- the block list


async def test_a_block_is_stored_active_and_covers_its_range(blocks: BlockList) -> None:
    block = await blocks.block("203.0.113.0/24", ttl=None, reason="scan", source=MANUAL, created_by="users/a")
    assert block.active and block.name.startswith("blocks/") and block.cidr == "203.0.113.0/24"
    assert (await blocks.get(block.name)) == block
    assert blocks.check("203.0.113.9") == block
    assert blocks.check("203.0.114.9") is None
    with pytest.raises(AlreadyExists):
        await blocks.block("203.0.113.0/24", ttl=None, reason="again", source=MANUAL, created_by="users/a")
    inner = await blocks.block("203.0.113.9", ttl=None, reason="x", source=MANUAL, created_by="users/a")
    assert [b.name for b in await blocks.active_blocks_for("203.0.113.9")] == [inner.name, block.name]


async def test_unblocking_lifts_once_and_keeps_the_record(blocks: BlockList) -> None:
    block = await blocks.block("198.51.100.7", ttl=None, reason="x", source=MANUAL, created_by="users/a")
    version = blocks.version
    lifted = await blocks.unblock(block.name, lifted_by="users/b")
    assert not lifted.active and lifted.lifted_by == "users/b" and lifted.HasField("lift_time")
    assert blocks.version > version and blocks.check("198.51.100.7") is None
    with pytest.raises(FailedPrecondition):
        await blocks.unblock(block.name, lifted_by="users/b")
    with pytest.raises(NotFound):
        await blocks.unblock("blocks/nope", lifted_by="users/b")
    # The range can be blocked again once the first block is lifted.
    await blocks.block("198.51.100.7", ttl=None, reason="x", source=MANUAL, created_by="users/a")


async def test_a_retried_request_gets_the_first_block(blocks: BlockList) -> None:
    request = bs.BlockAddressRequest(cidr="192.0.2.1", reason="x", request_id="r1")

    async def call(req: bs.BlockAddressRequest) -> block_pb2.Block:
        return await blocks.block(
            req.cidr, ttl=None, reason=req.reason, source=MANUAL, created_by="users/a",
            request_id=req.request_id, request=req,
        )  # fmt: skip

    first = await call(request)
    assert (await call(request)).name == first.name
    with pytest.raises(InvalidArgument):
        await call(bs.BlockAddressRequest(cidr="192.0.2.2", reason="x", request_id="r1"))


@pytest.mark.parametrize("ttl", [timedelta(0), timedelta(milliseconds=999), timedelta(days=30, seconds=1)])
async def test_a_ttl_out_of_range_is_invalid(blocks: BlockList, ttl: timedelta) -> None:
    with pytest.raises(InvalidArgument) as bad:
        await blocks.block("192.0.2.1", ttl=ttl, reason="x", source=MANUAL, created_by="users/a")
    assert [v.field for v in bad.value.violations] == ["ttl"]


async def test_allowlisted_addresses_are_never_blocked(blocks: BlockList) -> None:
    for cidr in ("127.0.0.1", "::1"):
        with pytest.raises(FailedPrecondition, match="allowlisted"):
            await blocks.block(cidr, ttl=None, reason="x", source=MANUAL, created_by="users/a")
    wide = await blocks.block("127.0.0.0/8", ttl=None, reason="x", source=MANUAL, created_by="users/a")
    assert blocks.check("127.0.0.1") is None
    assert blocks.check("127.0.0.2") == wide


async def test_an_incident_must_exist(tmp_path: Path) -> None:
    async def exists(name: str) -> bool:
        return name == "incidents/known"

    without = make_list(tmp_path / "a")
    with_checker = make_list(tmp_path / "b", incident_exists=exists)
    for blocks in (without, with_checker):
        await blocks.start()
    try:
        with pytest.raises(NotFound):
            await without.block(
                "192.0.2.1", ttl=None, reason="x", source=BlockSource.AUTOMATIC, incident="incidents/known",
                created_by="sentinel",
            )  # fmt: skip
        with pytest.raises(NotFound):
            await with_checker.block(
                "192.0.2.1", ttl=None, reason="x", source=BlockSource.AUTOMATIC, incident="incidents/other",
                created_by="sentinel",
            )  # fmt: skip
        block = await with_checker.block(
            "192.0.2.1", ttl=None, reason="x", source=BlockSource.AUTOMATIC, incident="incidents/known",
            created_by="sentinel",
        )  # fmt: skip
        assert block.incident == "incidents/known" and block.source == block_pb2.BLOCK_SOURCE_AUTOMATIC
    finally:
        for blocks in (without, with_checker):
            await blocks.stop()


async def test_a_block_expires_by_its_timer(blocks: BlockList) -> None:
    block = await blocks.block(
        "192.0.2.9", ttl=timedelta(seconds=1), reason="x", source=MANUAL, created_by="u"
    )
    seen = blocks.version
    # The timer removes it: no read, no poll.
    await asyncio.wait_for(blocks.wait_change(seen), 10)
    assert len(blocks) == 0
    assert not (await blocks.get(block.name)).active
    page, _ = await blocks.list_page(page_size=0, page_token="", active_only=True, source=0)
    assert page == []
    # Its record says so too, soon after (lists of active blocks read the stored flag).
    for _ in range(500):
        record = await blocks.store.get(BLOCKS, block.name.split("/")[1])
        if record is not None and record.fields["live"] is False:
            break
        await asyncio.sleep(0.01)
    assert record is not None and not record.fields["live"]


async def test_a_restarted_list_serves_the_same_active_blocks(tmp_path: Path) -> None:
    clock = Clock()
    first = make_list(tmp_path, clock)
    await first.start()
    kept = await first.block("192.0.2.1", ttl=None, reason="x", source=MANUAL, created_by="u")
    short = await first.block(
        "192.0.2.2", ttl=timedelta(seconds=5), reason="x", source=MANUAL, created_by="u"
    )
    lifted = await first.block("192.0.2.3", ttl=None, reason="x", source=MANUAL, created_by="u")
    await first.unblock(lifted.name, lifted_by="u")
    await first.stop()
    clock.now += 10  # the short block expired while sentinel was down
    second = make_list(tmp_path, clock)
    await second.start()
    try:
        assert len(second) == 1 and second.check("192.0.2.1") == (await second.get(kept.name))
        assert second.check("192.0.2.2") is None and not (await second.get(short.name)).active
    finally:
        await second.stop()


async def test_lists_filter_and_page(blocks: BlockList) -> None:
    made = [
        await blocks.block(f"192.0.2.{i}", ttl=None, reason="x", source=source, created_by="u")
        for i, source in enumerate([MANUAL, BlockSource.AUTOMATIC, MANUAL], start=1)
    ]
    await blocks.unblock(made[0].name, lifted_by="u")
    names: list[str] = []
    token = ""
    while True:
        page, token = await blocks.list_page(page_size=1, page_token=token, active_only=False, source=0)
        names += [b.name for b in page]
        if not token:
            break
    assert names == [b.name for b in reversed(made)]
    active: list[str] = []
    token = ""
    while True:  # the active ones, a page at a time
        page, token = await blocks.list_page(page_size=1, page_token=token, active_only=True, source=0)
        active += [b.name for b in page]
        if not token:
            break
    assert active == [made[2].name, made[1].name]
    automatic, _ = await blocks.list_page(
        page_size=0, page_token="", active_only=False, source=int(BlockSource.AUTOMATIC)
    )
    assert [b.name for b in automatic] == [made[1].name]


async def test_new_blocks_go_to_the_recent_filter_then_fold_into_the_bulk_one(
    blocks: BlockList, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "FOLD_QUIET_SECONDS", 0.05)
    monkeypatch.setattr(service, "FOLD_GRACE_SECONDS", 0.05)
    version, (bulk, recent) = blocks.snapshot()
    assert field(bulk, 1) == b"bhiv.ip_blocks" and field(recent, 1) == b"bhiv.ip_blocks.recent"
    for i in range(20):
        await blocks.block(f"10.0.{i}.0/24", ttl=None, reason="x", source=MANUAL, created_by="u")
    later, (bulk_now, recent_now) = blocks.snapshot()
    assert later == version + 20 and blocks.snapshot()[1][1] is recent_now  # encoded once per version
    assert bulk_now is bulk and len(recent_now) > len(recent) + 20 * 8  # the bulk one is untouched
    seen = later
    while blocks.snapshot()[1][1] != recent:  # folded, then cleared from "recent"
        seen = await asyncio.wait_for(blocks.wait_change(seen), 10)
    assert len(blocks.snapshot()[1][0]) > len(bulk) + 20 * 8
    assert blocks.check("10.0.7.1") is not None
    # Lifting a folded block changes the bulk filter.
    lifted = blocks.check("10.0.7.1")
    assert lifted is not None
    await blocks.unblock(lifted.name, lifted_by="u")
    assert blocks.check("10.0.7.1") is None


def test_sentinel_refuses_several_workers_for_the_block_list() -> None:
    from bhiv_core.runtime.config import ConfigError
    from bhiv_core.services.sentinel.blocks.config import BlockConfig
    from tests.harness import config_for

    with pytest.raises(ConfigError, match="BHIV_SENTINEL_WORKERS"):
        BlockConfig.from_runtime(config_for("sentinel", SENTINEL_WORKERS="2"))
    settings = BlockConfig.from_runtime(
        config_for("sentinel", SENTINEL_BLOCK_ALLOWLIST="10.1.0.0/16, 192.0.2.1")
    )
    assert [str(n) for n in settings.allowlist] == ["127.0.0.1/32", "::1/128", "10.1.0.0/16", "192.0.2.1/32"]
    with pytest.raises(ConfigError, match="BHIV_SENTINEL_BLOCK_ALLOWLIST"):
        BlockConfig.from_runtime(config_for("sentinel", SENTINEL_BLOCK_ALLOWLIST="10.1.0.1/16"))
