"""The identity service seen from other services: its JWKS and its revocations, over gRPC."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.timestamp_pb2 import Timestamp

from bhiv.identity.v1 import auth_service_pb2, auth_service_pb2_grpc
from bhiv_core.security.jwt import RevocationUpdate, keys_from_jwks

__all__ = ["IdentityKeySource", "revocation_fetcher", "revocation_watcher"]


def _seconds(stamp: Timestamp) -> float:
    return stamp.ToNanoseconds() / 1e9


class IdentityKeySource:
    """Reads the public signing keys from identity's ``GetJwks``.

    Args:
        channel: Returns the channel to identity (opened lazily by the caller's channel pool).
        timeout: Seconds per call.
    """

    def __init__(self, channel: Callable[[], grpc.aio.Channel], timeout: float = 2.0):
        self._channel = channel
        self._timeout = timeout

    async def fetch(self) -> Mapping[str, Ed25519PublicKey]:
        """Returns the keys by ``kid``."""
        stub = auth_service_pb2_grpc.AuthServiceStub(self._channel())
        reply = await stub.GetJwks(auth_service_pb2.GetJwksRequest(), timeout=self._timeout)
        return keys_from_jwks(reply.jwks_json)


def revocation_fetcher(
    channel: Callable[[], grpc.aio.Channel], timeout: float = 2.0
) -> Callable[[float], Awaitable[list[tuple[str, float]]]]:
    """Returns a function listing ``(jti, expires_at)`` revoked since a Unix time, from identity."""

    async def fetch(since: float) -> list[tuple[str, float]]:
        stub = auth_service_pb2_grpc.AuthServiceStub(channel())
        request = auth_service_pb2.ListRevocationsRequest(page_size=5000)
        request.since.FromNanoseconds(int(since * 1e9))
        out: list[tuple[str, float]] = []
        while True:
            reply = await stub.ListRevocations(request, timeout=timeout)
            out.extend((r.jti, _seconds(r.expire_time)) for r in reply.revocations)
            if not reply.next_page_token:
                return out
            request.page_token = reply.next_page_token

    return fetch


def revocation_watcher(
    channel: Callable[[], grpc.aio.Channel],
) -> Callable[[float], AsyncGenerator[RevocationUpdate, None]]:
    """Returns a function opening identity's ``WatchRevocations`` stream from a Unix time (0: all).

    The stream has no deadline: it lives as long as both processes do. Closing the iterator
    cancels the call.
    """

    async def watch(since: float) -> AsyncGenerator[RevocationUpdate, None]:
        stub = auth_service_pb2_grpc.AuthServiceStub(channel())
        request = auth_service_pb2.WatchRevocationsRequest()
        if since > 0:
            request.since.FromNanoseconds(int(since * 1e9))
        call = stub.WatchRevocations(request)
        try:
            async for reply in call:
                yield RevocationUpdate(
                    [(r.jti, _seconds(r.expire_time)) for r in reply.revocations], _seconds(reply.resume_time)
                )
        finally:
            call.cancel()

    return watch
