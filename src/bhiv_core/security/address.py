"""The client address of a call: the edge's word for it when the edge sent the call, else the peer.

The edge (Envoy, ``use_remote_address``) puts the client's address in ``x-envoy-external-address``.
Anyone who reaches a service port directly could send that header too, so a service believes it
only from a TCP peer in the trusted edge addresses (``BHIV_EDGE_PEERS``, by default
:data:`~bhiv_core.registry.EDGE_SOURCE_ADDRESS`, where the mesh's Envoy connects from). From
anyone else the header (and ``x-forwarded-for``, which is never read) is ignored and the peer's
own address is the client's.

The trust is process-wide, set once at start (:func:`trust_edge_peers`), so every reader of a
client address (audit, login throttling, security events) answers the same.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from bhiv_core.registry import EDGE_SOURCE_ADDRESS

__all__ = [
    "EDGE_HEADER",
    "Network",
    "client_address",
    "client_address_of",
    "parse_edge_peers",
    "peer_ip",
    "trust_edge_peers",
    "trusted_edge_peers",
]

EDGE_HEADER = "x-envoy-external-address"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_edge_peers(text: str) -> tuple[Network, ...]:
    """Parses a comma-separated list of addresses and networks (``127.0.0.2, 10.20.0.0/16``).

    Raises:
        ValueError: An entry is neither an address nor a network, or the list is empty.

    """
    networks = tuple(ipaddress.ip_network(item.strip()) for item in text.split(",") if item.strip())
    if not networks:
        raise ValueError("no address")
    return networks


# A peer is one connection, which carries many calls: each is looked at once, its IP and whether
# it is the edge kept (bounded: cleared when full).
_peers: dict[str, tuple[str, bool]] = {}
_PEER_CACHE_SIZE = 4096
_edge: tuple[Network, ...] = parse_edge_peers(EDGE_SOURCE_ADDRESS)


def trust_edge_peers(networks: Iterable[Network]) -> None:
    """Makes ``networks`` the only peers whose ``x-envoy-external-address`` is believed."""
    global _edge
    _edge = tuple(networks)
    _peers.clear()


def trusted_edge_peers() -> tuple[Network, ...]:
    """The peers whose ``x-envoy-external-address`` is believed."""
    return _edge


def _parse_peer(peer: str) -> str:
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return rest.rpartition("]")[0].lstrip("[") or rest
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    return peer


def _is_edge(ip: str) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:  # a Unix socket or an unparsable peer is never the edge
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in _edge)


def _learn(peer: str) -> tuple[str, bool]:
    if len(_peers) >= _PEER_CACHE_SIZE:
        _peers.clear()
    ip = _parse_peer(peer)
    _peers[peer] = known = (ip, _is_edge(ip))
    return known


def peer_ip(peer: str) -> str:
    """The IP of a gRPC peer string (``ipv4:127.0.0.1:5000``, ``ipv6:[::1]:5000``)."""
    return (_peers.get(peer) or _learn(peer))[0]


def client_address_of(headers: Mapping[str, Any], peer: str) -> str:
    """:func:`client_address` from metadata already read into a dictionary (first value per key)."""
    ip, edge = _peers.get(peer) or _learn(peer)
    if edge:
        value = headers.get(EDGE_HEADER)
        if value:
            return str(value)
    return ip


def client_address(metadata: Any, peer: str) -> str:
    """The client's IP: the edge's ``x-envoy-external-address`` when the peer is the edge, else the peer."""
    ip, edge = _peers.get(peer) or _learn(peer)
    if edge:
        for key, value in metadata or ():
            if key == EDGE_HEADER and value:
                return str(value)
    return ip
