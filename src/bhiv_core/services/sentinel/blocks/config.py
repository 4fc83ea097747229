"""The block list's settings, read once at start; a bad value fails fast with a ConfigError."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from bhiv_core.registry import SENTINEL_XDS_PORT
from bhiv_core.runtime.config import ConfigError, RuntimeConfig
from bhiv_core.security.address import Network
from bhiv_core.services.sentinel.blocks.cidr import parse_networks
from bhiv_core.storage.mongo import mongo_url_setting

__all__ = ["DEFAULT_ALLOWLIST", "BlockConfig"]

DEFAULT_ALLOWLIST: tuple[Network, ...] = (
    ipaddress.ip_network("127.0.0.1/32"),
    ipaddress.ip_network("::1/128"),
)
"""Never blocked, whatever the settings: the host's own 127.0.0.1 and ::1, not the whole loopback
range, so tests (and local tools) can act as other clients from 127.0.0.2 and beyond."""


@dataclass(frozen=True, slots=True)
class BlockConfig:
    """Where sentinel serves the deny list to Envoy, and what may never be blocked.

    Attributes:
        xds_host: The address the xDS (ADS) server binds: the service's own ``BHIV_HOST``
            (loopback by default, a pod address in a cluster), never a public one by default.
        xds_port: ``BHIV_SENTINEL_XDS_PORT`` (default 50058): Envoy's ADS connection to sentinel,
            apart from the gRPC port, whose chain requires tokens Envoy does not have.
        edge_peers: ``BHIV_EDGE_PEERS``: the only peers the xDS server answers (the edge).
        allowlist: :data:`DEFAULT_ALLOWLIST`, the mesh's own service addresses (the IP hosts of
            ``BHIV_<SERVICE>_ADDR`` and ``BHIV_HOST``) and ``BHIV_SENTINEL_BLOCK_ALLOWLIST``
            (comma-separated addresses or CIDR ranges: admin networks, health checkers).
        store_url: ``BHIV_SENTINEL_STORE_URL`` (MongoDB), or None for ``<data_dir>/sentinel-blocks.db``.

    """

    xds_host: str
    xds_port: int
    edge_peers: tuple[Network, ...]
    allowlist: tuple[Network, ...]
    store_url: str | None

    @classmethod
    def from_runtime(cls, config: RuntimeConfig) -> BlockConfig:
        """Reads the block settings once; raises ConfigError naming a bad one."""
        if config.workers != 1:
            # The active list, its expiry timers and the xDS port live in one process.
            raise ConfigError(
                "BHIV_SENTINEL_WORKERS must be 1: one sentinel process serves the edge's deny list"
            )
        s = config.settings
        none: tuple[Network, ...] = ()
        configured = s.get("SENTINEL_BLOCK_ALLOWLIST", none, parse_networks, "addresses or CIDR ranges")
        mesh: list[Network] = []
        for host in {
            config.host,
            *(address.rpartition(":")[0].strip("[]") for address in config.peers.values()),
        }:
            try:
                address = ipaddress.ip_address(host)
            except ValueError:
                continue  # a DNS name: its pods' addresses come and go; list them in the setting
            if not address.is_unspecified:
                mesh.append(ipaddress.ip_network(address))
        allowlist: list[Network] = []
        for network in (*DEFAULT_ALLOWLIST, *sorted(mesh, key=str), *configured):
            if network not in allowlist:
                allowlist.append(network)
        return cls(
            xds_host=config.host,
            xds_port=s.port("SENTINEL_XDS_PORT", SENTINEL_XDS_PORT),
            edge_peers=config.edge_peers,
            allowlist=tuple(allowlist),
            store_url=mongo_url_setting(
                s, "SENTINEL_STORE_URL", "the SQLite file <data_dir>/sentinel-blocks.db"
            ),
        )
