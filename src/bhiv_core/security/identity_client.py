"""The identity service seen from other services: its JWKS and its revocation list, over gRPC."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bhiv.identity.v1 import auth_service_pb2, auth_service_pb2_grpc
from bhiv_core.security.jwt import keys_from_jwks

__all__ = ["IdentityKeySource", "revocation_fetcher"]


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
            out.extend((r.jti, r.expire_time.ToNanoseconds() / 1e9) for r in reply.revocations)
            if not reply.next_page_token:
                return out
            request.page_token = reply.next_page_token

    return fetch
