"""The relay that lets grpcio clients call from another loopback address (``tests.harness.Relay``).

The threat-loop tests act as an attacker at 127.0.0.2 with ordinary generated stubs; what they
assert about "an already-open connection" and "a new connection" rests on what is checked here: a
channel kept open stays on one connection from the relay's source address, a new channel opens
another, and a cut connection is replaced by a new one on the next call.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from tests.harness import OWN_CONNECTION, Relay

pytestmark = pytest.mark.e2e

PEER_PATH = "/test.Peer/Which"


async def _which(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return context.peer().encode()


@pytest.fixture
async def peer_server() -> AsyncIterator[str]:
    """A gRPC server on 127.0.0.1 whose one method answers the caller's peer (``ipv4:host:port``)."""
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(_which)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Peer", {"Which": handler})])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(0)


async def peer(channel: grpc.aio.Channel) -> str:
    """The peer the server saw for one call on ``channel``."""
    reply: bytes = await channel.unary_unary(PEER_PATH)(b"", timeout=10)
    return reply.decode()


async def test_calls_through_the_relay_come_from_its_source_address(peer_server: str) -> None:
    async with Relay(peer_server, "127.0.0.2") as relay, grpc.aio.insecure_channel(relay.address) as channel:
        seen = await peer(channel)
    assert seen.startswith("ipv4:127.0.0.2:"), seen
    assert relay.peers == [("127.0.0.2", int(seen.rsplit(":", 1)[1]))]


async def test_an_open_channel_keeps_its_connection_and_a_new_channel_opens_another(peer_server: str) -> None:
    async with (
        Relay(peer_server, "127.0.0.2") as relay,
        grpc.aio.insecure_channel(relay.address, options=OWN_CONNECTION) as kept,
    ):
        first = await peer(kept)
        assert await peer(kept) == first  # the already-open connection
        assert relay.connections == 1
        async with grpc.aio.insecure_channel(relay.address, options=OWN_CONNECTION) as fresh:
            other = await peer(fresh)  # a new connection, from the same address
            assert other != first and other.startswith("ipv4:127.0.0.2:")
            assert (relay.connections, relay.open_connections) == (2, 2)
            assert await peer(kept) == first


async def test_without_own_connection_a_second_channel_shares_the_open_one(peer_server: str) -> None:
    """Why OWN_CONNECTION exists: grpcio's global subchannel pool hands a new channel to the same
    target the connection another channel opened."""
    async with Relay(peer_server, "127.0.0.2") as relay:
        async with grpc.aio.insecure_channel(relay.address) as one:
            first = await peer(one)
            async with grpc.aio.insecure_channel(relay.address) as two:
                assert await peer(two) == first
        assert relay.connections == 1


async def test_a_cut_connection_is_replaced_by_a_new_one_on_the_next_call(peer_server: str) -> None:
    async with (
        Relay(peer_server, "127.0.0.2") as relay,
        grpc.aio.insecure_channel(relay.address, options=OWN_CONNECTION) as channel,
    ):
        before = await peer(channel)
        assert await relay.cut() == 1
        # A call made before grpcio notices the closed socket fails UNAVAILABLE, as on a network.
        await asyncio.wait_for(channel.wait_for_state_change(grpc.ChannelConnectivity.READY), 10)
        after = await peer(channel)  # grpcio reconnects: through the relay again
    assert after != before and after.startswith("ipv4:127.0.0.2:")
    assert relay.connections == 2


async def test_closing_the_relay_closes_the_connections_it_carries(peer_server: str) -> None:
    relay = await Relay(peer_server, "127.0.0.3").start()
    async with grpc.aio.insecure_channel(relay.address) as channel:
        await peer(channel)
        assert relay.open_connections == 1
        await relay.close()
        assert relay.open_connections == 0
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await peer(channel)
    assert gone.value.code() == grpc.StatusCode.UNAVAILABLE
