"""The client address of a call: the edge's view when the call came through Envoy."""

from __future__ import annotations

from typing import Any

__all__ = ["client_address", "peer_ip"]


def peer_ip(peer: str) -> str:
    """The IP of a gRPC peer string (``ipv4:127.0.0.1:5000``, ``ipv6:[::1]:5000``)."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return rest.rpartition("]")[0].lstrip("[") or rest
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    return peer


def client_address(metadata: Any, peer: str) -> str:
    """The client's IP: ``x-envoy-external-address`` set by the edge (``use_remote_address``), else the peer.

    Services are reachable only through the edge in deployments (NetworkPolicy), so the header is
    the edge's; a direct caller on the host network is trusted like the edge.
    """
    for key, value in metadata or ():
        if key == "x-envoy-external-address" and value:
            return str(value)
    return peer_ip(peer)
