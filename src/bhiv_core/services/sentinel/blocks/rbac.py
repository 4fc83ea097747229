"""The edge's deny list as Envoy's RBAC filter config, encoded by concatenation in O(n).

Envoy discovers the IP-block filter's config over ECDS (an ``envoy.config.core.v3.
TypedExtensionConfig`` holding an ``envoy.extensions.filters.http.rbac.v3.RBAC``), so a change
reaches open HTTP/2 connections at once. Building that message with typed objects took seconds for
10,000 ranges; here every block's part is encoded once, when it is added, and the whole config is
the concatenation of those parts inside a few length-prefixed wrappers: a protobuf repeated field is
the concatenation of its encoded elements, so a new list costs one ``bytes.join``.

The config is the RBAC filter's ``matcher`` (Envoy's unified matcher API), on the client address
the edge trusts (``envoy.matching.inputs.source_ip``: the TCP peer, or the ``x-forwarded-for``
entry of ``xff_num_trusted_hops``, the same address as RBAC's ``remote_ip``):

1. the allowlist (``envoy.matching.input_matchers.ip``, one LC-trie of its ranges) → ALLOW
   ``allowlisted``: a block that covers an allowlisted address never catches it;
2. otherwise the blocks, an ``xds.type.matcher.v3.IPMatcher`` (a trie, longest prefix first):
   the blocks are grouped by when they end, one range matcher per group with a DENY action named
   for it (``blocked-until-2026-12-02T16:00:00Z`` or ``blocked-until-lifted``), so Envoy's reply
   details (``rbac_access_denied_matched_policy[<name>]``) tell the caller until when, and a list
   of blocks with few distinct ends (those lifted by hand; a burst of automatic ones) holds few
   actions, which Envoy parses once each;
3. nothing matched → ALLOW ``not-blocked``.

Each request costs two trie lookups whatever the list's length. Envoy logs that the ``xds.type.
matcher.v3.IPMatcher`` proto is "work in progress"; it is the only trie matcher with an action per
range (the stable ``Ip`` input matcher has one answer for all its ranges, so it could not say until
when).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from bhiv_core.security.address import Network

__all__ = ["FILTER_TYPE_URL", "RbacConfig", "action_name", "recent_filter_name"]

FILTER_TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
_ACTION_TYPE = "type.googleapis.com/envoy.config.rbac.v3.Action"
_EXTENSION_TYPE = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
_SOURCE_IP_TYPE = "type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.SourceIPInput"
_IP_INPUT_MATCHER_TYPE = "type.googleapis.com/envoy.extensions.matching.input_matchers.ip.v3.Ip"
_IP_MATCHER_TYPE = "type.googleapis.com/xds.type.matcher.v3.IPMatcher"
_ALLOW, _DENY = 0, 1
BLOCKED_PREFIX = "blocked-until-"
"""Every block's action name starts so; the edge's reply mapper recognises a block by it."""


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2): a string, bytes or a message."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _fields(number: int, parts: Iterable[bytes]) -> bytes:
    """One length-delimited field whose payload is the concatenation of ``parts``."""
    payload = b"".join(parts)
    return _field(number, payload)


def _text(number: int, text: str) -> bytes:
    return _field(number, text.encode()) if text else b""


def _enum(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value) if value else b""


def _any(type_url: str, value: bytes) -> bytes:
    return _text(1, type_url) + _field(2, value)


def _extension(name: str, type_url: str, value: bytes) -> bytes:
    """``TypedExtensionConfig{name, typed_config: Any}`` (xds and envoy core share the layout)."""
    return _text(1, name) + _field(2, _any(type_url, value))


def _cidr(network: Network) -> bytes:
    """``CidrRange{address_prefix, prefix_len: UInt32Value}`` (xds and envoy core share it)."""
    return _text(1, str(network.network_address)) + _field(2, _enum(1, network.prefixlen))


def _action(name: str, action: int) -> bytes:
    """``Matcher.OnMatch{action: TypedExtensionConfig{envoy.config.rbac.v3.Action}}``."""
    return _field(2, _extension("action", _ACTION_TYPE, _text(1, name) + _enum(2, action)))


_SOURCE_IP = _extension("envoy.matching.inputs.source_ip", _SOURCE_IP_TYPE, b"")


def action_name(expire: datetime | None) -> str:
    """The name of a block's DENY action: when it ends, to the second, in UTC."""
    if expire is None:
        return BLOCKED_PREFIX + "lifted"
    return BLOCKED_PREFIX + expire.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _range_matcher(ranges: Iterable[bytes], action: bytes) -> bytes:
    """One ``IPMatcher.IPRangeMatcher`` (an element of ``range_matchers``): ranges, one action."""
    return _field(1, b"".join(ranges) + _field(2, action))


def _wrap(allowlist: bytes, range_matchers: Iterable[bytes]) -> bytes:
    """The RBAC filter's ``matcher``: the allowlist first, then the blocks' trie."""
    tree = _field(1, _SOURCE_IP) + _field(
        4, _extension("envoy.matching.custom_matchers.ip_matcher", _IP_MATCHER_TYPE, b"".join(range_matchers))
    )
    blocks = _field(2, tree) + _field(3, _action("not-blocked", _ALLOW))
    if not allowlist:
        return blocks
    # Matcher{matcher_list: the allowlist, on_no_match: OnMatch{matcher: the blocks}}.
    return allowlist + _field(3, _field(1, blocks))


class RbacConfig:
    """The deny list's encoded parts, kept up to date block by block, and the whole config.

    Args:
        filter_name: The ECDS resource's name: the name of the edge's IP-block filter.
        allowlist: Ranges that are never blocked.

    """

    def __init__(self, filter_name: str, allowlist: Iterable[Network]):
        self.filter_name = filter_name
        ranges = list(allowlist)
        predicate = _field(
            1,
            _field(1, _SOURCE_IP)
            + _field(
                3,
                _extension(
                    "envoy.matching.input_matchers.ip",
                    _IP_INPUT_MATCHER_TYPE,
                    b"".join(_field(1, _cidr(network)) for network in ranges) + _text(2, "edge_allowlist"),
                ),
            ),
        )
        # MatcherList{matchers: [FieldMatcher{predicate, on_match: allow}]}, as Matcher field 1.
        self._allowlist = (
            _field(1, _field(1, _field(1, predicate) + _field(2, _action("allowlisted", _ALLOW))))
            if ranges
            else b""
        )
        # The blocks grouped by their action (when they end): one range matcher per group, each
        # range an element of its ``ranges``; a group's encoding is kept until the group changes.
        self._groups: dict[str, dict[str, bytes]] = {}
        self._group_of: dict[str, str] = {}
        self._encoded: dict[str, bytes] = {}

    def __len__(self) -> int:
        return len(self._group_of)

    def add(self, key: str, network: Network, expire: datetime | None) -> None:
        """Adds (or replaces) the part of one block."""
        self.remove(key)
        name = action_name(expire)
        self._groups.setdefault(name, {})[key] = _field(1, _cidr(network))
        self._group_of[key] = name
        self._encoded.pop(name, None)

    def remove(self, key: str) -> None:
        """Removes the part of one block, if present."""
        name = self._group_of.pop(key, None)
        if name is None:
            return
        group = self._groups[name]
        del group[key]
        if not group:
            del self._groups[name]
        self._encoded.pop(name, None)

    def _range_matchers(self) -> list[bytes]:
        matchers = []
        for name, group in self._groups.items():
            encoded = self._encoded.get(name)
            if encoded is None:
                encoded = self._encoded[name] = _range_matcher(group.values(), _action(name, _DENY))
            matchers.append(encoded)
        return matchers

    def filter_config(self) -> bytes:
        """The encoded ``envoy.extensions.filters.http.rbac.v3.RBAC`` (its ``matcher``)."""
        return _field(4, _wrap(self._allowlist, self._range_matchers()))

    def resource(self) -> bytes:
        """The encoded ECDS resource, a ``TypedExtensionConfig`` named for the filter."""
        return _extension(self.filter_name, FILTER_TYPE_URL, self.filter_config())


def recent_filter_name(filter_name: str) -> str:
    """The name of the small filter that holds the newest blocks, beside ``filter_name``."""
    return f"{filter_name}.recent"
