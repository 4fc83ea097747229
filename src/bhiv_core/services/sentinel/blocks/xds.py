"""Sentinel's xDS control plane: the deny list to every Envoy replica over ADS (state of the world).

Each Envoy replica opens one ``StreamAggregatedResources`` stream to ``BHIV_SENTINEL_XDS_PORT``
and subscribes to the ECDS resource of its IP-block filter
(``envoy.config.core.v3.TypedExtensionConfig``, named for the filter). The server answers with the
block list's current config, then pushes a new one whenever the list changes; a burst of changes
reaches a replica as the versions it can take (each stream sends the latest version once its
previous response is answered). A NACK (a config Envoy refused) is logged with the replica's node
id and not resent; Envoy keeps its last good config, and it keeps it too while sentinel is away
(it reconnects with backoff and gets the current list).

The port speaks only to the edge: a call from a peer outside ``BHIV_EDGE_PEERS`` (the addresses the
edge connects from, the same rule by which only the edge vouches for a client address) is refused
with PERMISSION_DENIED before anything is read, and the server binds the service's own host
(loopback by default). The main gRPC port is no place for it: its chain requires access tokens,
which Envoy does not have.

:attr:`XdsServer.nodes` tells which replicas are connected and the version each last acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import grpc
from envoy_data_plane.envoy.service.discovery.v3 import DiscoveryRequest

from bhiv_core.security.address import Network, peer_ip
from bhiv_core.services.sentinel.blocks.rbac import _any, _field, _text

__all__ = ["ADS_METHOD", "ECDS_TYPE_URL", "NodeState", "Snapshots", "XdsServer"]

log = logging.getLogger(__name__)

ADS_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
ECDS_TYPE_URL = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"


class Snapshots(Protocol):
    """What the server serves: :class:`~bhiv_core.services.sentinel.blocks.service.BlockList`."""

    def snapshot(self) -> tuple[int, tuple[bytes, ...]]:
        """The current version and the encoded ECDS resources (``TypedExtensionConfig``)."""
        ...

    async def wait_change(self, seen: int) -> int:
        """Waits until the version differs from ``seen``; returns the new one."""
        ...


@dataclass
class NodeState:
    """One connected Envoy replica.

    Attributes:
        node_id: Its ``--service-node`` / bootstrap node id.
        peer: The TCP peer of its stream.
        sent: The version last sent to it ('' before the first).
        acked: The version it last acknowledged ('' before the first).
        nacked: The error of the last config it refused, if any.

    """

    node_id: str
    peer: str
    sent: str = ""
    acked: str = ""
    nacked: str = ""


def _allowed(peer: str, networks: Sequence[Network]) -> bool:
    try:
        address = ipaddress.ip_address(peer_ip(peer))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


class XdsServer:
    """The ADS server of the block list.

    Args:
        blocks: The block list (or anything with its snapshots) it serves.
        host: The address to bind.
        port: The port (0: any free one; :attr:`port` tells which).
        edge_peers: The only peers answered.

    """

    def __init__(self, blocks: Snapshots, host: str, port: int, edge_peers: Sequence[Network]):
        self._blocks = blocks
        self._host = host
        self.port = port
        self._edge_peers = tuple(edge_peers)
        self._server: grpc.aio.Server | None = None
        self._prefix = os.urandom(4).hex()  # versions of this process differ from a restarted one's
        self._streams = 0
        self.nodes: dict[int, NodeState] = {}

    async def start(self) -> None:
        """Binds the port and starts serving; raises OSError-like RuntimeError when the port is taken."""
        server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_send_message_length", -1),
                ("grpc.max_receive_message_length", 4 * 1024 * 1024),
                # Envoy keeps the stream open for good: notice a replica that went away.
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.keepalive_timeout_ms", 10_000),
                ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
            ]
        )
        handler = grpc.stream_stream_rpc_method_handler(
            self._stream, request_deserializer=DiscoveryRequest.parse, response_serializer=lambda b: b
        )
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    ADS_METHOD.split("/")[1], {ADS_METHOD.split("/")[2]: handler}
                ),
            )
        )
        address = f"[{self._host}]:{self.port}" if ":" in self._host else f"{self._host}:{self.port}"
        self.port = server.add_insecure_port(address)
        await server.start()
        self._server = server
        log.info("xDS server started", extra={"address": address, "port": self.port})

    async def stop(self) -> None:
        """Ends every stream and stops (Envoy keeps its last config and reconnects later)."""
        if self._server is not None:
            await self._server.stop(grace=0)
            self._server = None

    def _response(self, version: int, resources: Sequence[bytes], nonce: str) -> bytes:
        """An encoded ``DiscoveryResponse`` with every ECDS resource (state of the world)."""
        return (
            _text(1, f"{self._prefix}-{version}")
            + b"".join(_field(2, _any(ECDS_TYPE_URL, resource)) for resource in resources)
            + _text(4, ECDS_TYPE_URL)
            + _text(5, nonce)
        )

    async def _stream(
        self,
        requests: AsyncIterator[DiscoveryRequest],
        context: grpc.aio.ServicerContext[DiscoveryRequest, bytes],
    ) -> AsyncIterator[bytes]:
        peer = context.peer()
        if not _allowed(peer, self._edge_peers):
            log.warning("xDS stream refused: not an edge peer", extra={"peer": peer})
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, "only the edge may subscribe to the deny list"
            )
        self._streams += 1
        key = self._streams
        state = NodeState(node_id="", peer=peer)
        self.nodes[key] = state
        wake = asyncio.Event()
        subscribed = False
        resend = False
        nonces = 0
        # The nonce of the response Envoy has not answered yet: nothing more is sent until it
        # does (ACK or NACK), so a burst of changes is coalesced into the version current then,
        # instead of queueing config after config in Envoy while it applies the first.
        in_flight = ""

        async def read() -> None:
            try:
                await read_requests()
            finally:
                wake.set()

        async def read_requests() -> None:
            nonlocal subscribed, resend, in_flight
            async for request in requests:
                if request.node is not None and request.node.id:
                    state.node_id = request.node.id
                if request.type_url != ECDS_TYPE_URL:
                    continue
                if request.error_detail is not None and request.error_detail.code:
                    state.nacked = request.error_detail.message
                    log.error(
                        "an Envoy refused the deny list",
                        extra={"node": state.node_id, "error": request.error_detail.message[:500]},
                    )
                elif request.response_nonce:
                    state.acked = request.version_info
                if not request.response_nonce:
                    # A (re)subscription: Envoy has nothing from this stream yet.
                    subscribed = True
                    resend = True
                    in_flight = ""
                elif request.response_nonce == in_flight:
                    in_flight = ""
                wake.set()

        async def changes() -> None:
            seen = -1
            while True:
                seen = await self._blocks.wait_change(seen)
                wake.set()

        reader = asyncio.create_task(read())
        watcher = asyncio.create_task(changes())
        sent_version = -1
        try:
            while True:
                await wake.wait()
                wake.clear()
                if reader.done():
                    break
                version, resources = self._blocks.snapshot()
                if subscribed and not in_flight and (resend or version != sent_version):
                    resend = False
                    nonces += 1
                    in_flight = str(nonces)
                    sent_version = version
                    state.sent = f"{self._prefix}-{version}"
                    yield self._response(version, resources, str(nonces))
        finally:
            for task in (reader, watcher):
                task.cancel()
            for task in (reader, watcher):
                with contextlib.suppress(BaseException):
                    await task
            self.nodes.pop(key, None)
