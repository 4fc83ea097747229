"""The client address of a call: the edge's view when the call came through Envoy."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["client_address", "client_address_of", "peer_ip"]

_EDGE_HEADER = "x-envoy-external-address"

# A peer is one connection, which carries many calls: each is parsed once (bounded: cleared when full).
_peer_ips: dict[str, str] = {}
_PEER_CACHE_SIZE = 4096


def _parse_peer(peer: str) -> str:
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return rest.rpartition("]")[0].lstrip("[") or rest
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    return peer


def peer_ip(peer: str) -> str:
    """The IP of a gRPC peer string (``ipv4:127.0.0.1:5000``, ``ipv6:[::1]:5000``)."""
    ip = _peer_ips.get(peer)
    if ip is None:
        if len(_peer_ips) >= _PEER_CACHE_SIZE:
            _peer_ips.clear()
        ip = _peer_ips[peer] = _parse_peer(peer)
    return ip


def client_address_of(headers: Mapping[str, Any], peer: str) -> str:
    """:func:`client_address` from metadata already read into a dictionary (first value per key)."""
    value = headers.get(_EDGE_HEADER)
    return str(value) if value else peer_ip(peer)


def client_address(metadata: Any, peer: str) -> str:
    """The client's IP: ``x-envoy-external-address`` set by the edge (``use_remote_address``), else the peer.

    Services are reachable only through the edge in deployments (NetworkPolicy), so the header is
    the edge's; a direct caller on the host network is trusted like the edge.
    """
    for key, value in metadata or ():
        if key == _EDGE_HEADER and value:
            return str(value)
    return peer_ip(peer)
