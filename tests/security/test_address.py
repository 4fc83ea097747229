from __future__ import annotations

import pytest

from bhiv_core.security import address
from bhiv_core.security.address import client_address, client_address_of, peer_ip


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
    monkeypatch.setattr(address, "_peer_ips", {})
    for port in range(10):
        assert peer_ip(f"ipv4:10.0.0.{port}:1") == f"10.0.0.{port}"
        assert len(address._peer_ips) <= 3


def test_the_edge_header_wins_over_the_peer_in_both_forms() -> None:
    metadata = (("x-envoy-external-address", "203.0.113.9"), ("x-envoy-external-address", "10.9.9.9"))
    assert client_address(metadata, "ipv4:127.0.0.1:1") == "203.0.113.9"
    assert client_address_of(dict(reversed(metadata)), "ipv4:127.0.0.1:1") == "203.0.113.9"
    assert client_address((), "ipv4:127.0.0.1:1") == "127.0.0.1"
    assert client_address_of({}, "ipv4:127.0.0.1:1") == "127.0.0.1"
