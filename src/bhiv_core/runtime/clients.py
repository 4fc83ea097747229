"""Service-to-service channels: the same generated stubs users get, carrying identity and trace.

A call made while handling a request forwards the caller's bearer token (so the callee authorizes
the original principal, not the calling service) and the W3C trace context (so one trace spans the
services). Code that acts on its own behalf — identity reporting a failed login — passes its own
``authorization`` metadata, which is then left alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc

from bhiv_core.security.principal import current_principal

__all__ = ["ForwardIdentityInterceptor", "PeerChannels"]


def _with_authorization(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    if "authorization" not in metadata:
        principal = current_principal.get()
        if principal is not None and principal.token:
            metadata.add("authorization", f"Bearer {principal.token}")
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


class _ForwardUnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg,misc]
    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(_with_authorization(client_call_details), request)


class _ForwardUnaryStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg,misc]
    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(_with_authorization(client_call_details), request)


class ForwardIdentityInterceptor:
    """Client interceptors that forward the current principal's bearer token."""

    @staticmethod
    def interceptors() -> list[Any]:  # grpc-stubs types aio interceptors poorly
        """The unary-unary and unary-stream forwarding interceptors."""
        return [_ForwardUnaryUnary(), _ForwardUnaryStream()]


class PeerChannels:
    """One lazily opened channel per peer service, with the forwarding interceptors.

    Args:
        peers: Service name → ``host:port`` (``RuntimeConfig.peers``).
        extra_interceptors: More client interceptors (tracing), applied after identity forwarding.
    """

    def __init__(
        self,
        peers: Mapping[str, str],
        extra_interceptors: Callable[[], Sequence[Any]] | None = None,
    ):
        self._peers = dict(peers)
        self._extra = extra_interceptors
        self._channels: dict[str, grpc.aio.Channel] = {}

    def channel(self, service: str) -> grpc.aio.Channel:
        """The channel to ``service``; raises KeyError for an unknown one."""
        channel = self._channels.get(service)
        if channel is None:
            interceptors = [
                *ForwardIdentityInterceptor.interceptors(),
                *(self._extra() if self._extra else ()),
            ]
            channel = grpc.aio.insecure_channel(
                self._peers[service],
                interceptors=interceptors,
                options=[("grpc.keepalive_time_ms", 60_000), ("grpc.keepalive_permit_without_calls", 0)],
            )
            self._channels[service] = channel
        return channel

    async def close(self) -> None:
        """Closes every channel."""
        for channel in self._channels.values():
            with contextlib.suppress(Exception):
                await channel.close(None)
        self._channels.clear()
