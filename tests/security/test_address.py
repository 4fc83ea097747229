from __future__ import annotations

import pytest

from bhiv_core.registry import EDGE_SOURCE_ADDRESS
from bhiv_core.security import address
from bhiv_core.security.address import (
    client_address,
    client_address_of,
    parse_edge_peers,
    peer_ip,
    trusted_edge_peers,
)
from tests.harness import trusting_edge

EDGE = f"ipv4:{EDGE_SOURCE_ADDRESS}:41000"
FORGED = (("x-envoy-external-address", "6.6.6.6"),)


@pytest.mark.parametrize(
    "peer,ip",
    [
        ("ipv4:127.0.0.1:5000", "127.0.0.1"),
        ("ipv6:[::1]:5000", "::1"),
        ("ipv6:[2001:db8::7]:443", "2001:db8::7"),
        ("unix:/tmp/socket", "unix:/tmp/socket"),
    ],
)
def test_peer_ip_reads_the_address_of_every_peer_form(peer: str, ip: str) -> None:
    assert peer_ip(peer) == ip
    assert peer_ip(peer) == ip  # again, from the cache


def test_the_peer_cache_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(address, "_PEER_CACHE_SIZE", 3)
    monkeypatch.setattr(address, "_peers", {})
    for port in range(10):
        assert peer_ip(f"ipv4:10.0.0.{port}:1") == f"10.0.0.{port}"
        assert len(address._peers) <= 3


def test_by_default_only_the_mesh_edge_source_address_is_trusted() -> None:
    assert trusted_edge_peers() == parse_edge_peers("127.0.0.2")


def test_the_edge_header_wins_over_the_edge_peer_in_both_forms() -> None:
    metadata = (("x-envoy-external-address", "203.0.113.9"), ("x-envoy-external-address", "10.9.9.9"))
    assert client_address(metadata, EDGE) == "203.0.113.9"
    assert client_address_of(dict(reversed(metadata)), EDGE) == "203.0.113.9"
    assert client_address((), EDGE) == EDGE_SOURCE_ADDRESS
    assert client_address_of({}, EDGE) == EDGE_SOURCE_ADDRESS


@pytest.mark.parametrize(
    "peer,ip",
    [
        ("ipv4:127.0.0.1:5000", "127.0.0.1"),  # a local process dialling a service port
        ("ipv4:10.1.2.3:5000", "10.1.2.3"),
        ("ipv6:[::1]:5000", "::1"),
        ("unix:/tmp/socket", "unix:/tmp/socket"),
    ],
)
def test_a_direct_caller_cannot_choose_its_address(peer: str, ip: str) -> None:
    forwarded = (("x-forwarded-for", "6.6.6.6"),)
    assert client_address(FORGED, peer) == ip
    assert client_address_of(dict(FORGED), peer) == ip
    assert client_address(forwarded, peer) == ip
    assert client_address_of(dict(forwarded), peer) == ip


def test_configured_edge_networks_are_trusted_and_nothing_else() -> None:
    with trusting_edge("10.20.0.0/16", "192.0.2.7"):
        assert client_address(FORGED, "ipv4:10.20.3.4:1") == "6.6.6.6"
        assert client_address(FORGED, "ipv4:192.0.2.7:1") == "6.6.6.6"
        assert client_address(FORGED, "ipv6:[::ffff:10.20.3.4]:1") == "6.6.6.6"
        assert client_address(FORGED, "ipv4:10.21.0.1:1") == "10.21.0.1"
        assert client_address(FORGED, EDGE) == EDGE_SOURCE_ADDRESS  # the default is replaced
    assert client_address(FORGED, "ipv4:10.20.3.4:1") == "10.20.3.4"  # and back


@pytest.mark.parametrize("text", ["", " , ", "127.0.0.300", "edge.internal", "10.0.0.1/33"])
def test_edge_peers_that_are_not_addresses_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_edge_peers(text)
