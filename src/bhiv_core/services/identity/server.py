"""Builds and serves the identity service on the shared runtime."""

from __future__ import annotations

from bhiv.identity.v1 import auth_service_pb2, role_service_pb2, user_service_pb2
from bhiv_core.interceptors.tracing import client_interceptors
from bhiv_core.runtime import server as runtime
from bhiv_core.runtime.clients import PeerChannels
from bhiv_core.runtime.config import RuntimeConfig
from bhiv_core.runtime.security_events import coalescing_settings
from bhiv_core.runtime.service_credentials import (
    EVENTS_SCOPE,
    RenewingToken,
    load_service_secret,
    service_secret_path,
)
from bhiv_core.security.jwt import RevocationSet
from bhiv_core.services.identity.config import IdentityConfig
from bhiv_core.services.identity.revocation_feed import RevocationFeed
from bhiv_core.services.identity.service import IdentityService, SecurityEventReporter, SentinelReporter
from bhiv_core.services.identity.servicer import AuthServicer, RoleServicer, UserServicer
from bhiv_core.services.identity.store import make_identity_store
from bhiv_core.services.identity.tokens import SERVICE_TOKEN_TTL_SECONDS
from bhiv_core.standard_chain import standard_chain

__all__ = ["NAME", "build_server", "definition", "identity_service", "serve"]

NAME = "identity"

SENTINEL_SCOPES = (EVENTS_SCOPE,)
"""The only permission identity's service token carries: reporting security events."""


def identity_service(
    config: RuntimeConfig, *, reporter: SecurityEventReporter | None = None
) -> IdentityService:
    """Builds the (not yet started) identity domain from the configuration.

    The deployment's service secret (``BHIV_SERVICE_SECRET_FILE``) is read, or created, here: it
    verifies the assertions of ``IssueServiceToken``, and a bad file fails the start.

    Args:
        config: The runtime configuration.
        reporter: Where security events go; defaults to a :class:`SentinelReporter` for the
            ``sentinel`` peer, started and stopped with the service.

    """
    settings = IdentityConfig.from_runtime(config)
    service = IdentityService(
        settings,
        make_identity_store(settings),
        reporter=reporter,
        service_secret=load_service_secret(service_secret_path(config)),
    )
    if reporter is None:
        # Reports carry the login's trace context, so one trace spans identity and sentinel.
        channels = PeerChannels(config.peers, extra_interceptors=client_interceptors)
        service.reporter = SentinelReporter(
            settings.sentinel_address,
            RenewingToken(
                lambda: service.mint_service_token(NAME, SENTINEL_SCOPES), SERVICE_TOKEN_TTL_SECONDS
            ),
            queue_size=settings.report_queue_size,
            service=NAME,
            **coalescing_settings(config.settings),
            channel=lambda: channels.channel("sentinel"),
            close_channel=channels.close,
        )
    return service


def definition(config: RuntimeConfig, *, service: IdentityService | None = None) -> runtime.ServiceDefinition:
    """Returns what the identity service contributes to the runtime.

    Args:
        config: The runtime configuration.
        service: The domain to serve; built from ``config`` by :func:`identity_service` when None.

    """
    service = service or identity_service(config)
    reporter = service.reporter
    # Every committed revocation goes through the feed: to the WatchRevocations streams of the
    # other services and, before the revoking call answers, to this process's own verifier, which
    # checks tokens with its own keys and revocations (no call to itself).
    feed = RevocationFeed(service.store, clock=service.clock)
    revocations = RevocationSet()
    feed.subscribe(lambda batch: revocations.add_all((r.jti, r.expire_time) for r in batch))
    service.on_revoked = feed.poke

    async def start() -> None:
        await service.start()
        await feed.start()
        if isinstance(reporter, SentinelReporter):
            await reporter.start()

    async def drain() -> None:
        feed.close()

    async def stop() -> None:
        await feed.stop()
        if isinstance(reporter, SentinelReporter):
            await reporter.stop()
        await service.stop()

    return runtime.ServiceDefinition(
        name=NAME,
        servicers=[
            (auth_service_pb2.DESCRIPTOR.services_by_name["AuthService"], AuthServicer(service, feed)),
            (user_service_pb2.DESCRIPTOR.services_by_name["UserService"], UserServicer(service)),
            (role_service_pb2.DESCRIPTOR.services_by_name["RoleService"], RoleServicer(service)),
        ],
        missing="every identity RPC is implemented",
        checks={"store": service.store.ping},
        on_start=[start],
        on_stop=[stop],
        on_drain=[drain],
        key_source=service.key_source(),
        revocations=revocations,
        # Its chain reports refused tokens and denied calls through the same reporter.
        reporter=reporter,
    )


async def build_server(config: RuntimeConfig) -> runtime.RunningService:
    """Builds and starts the identity server."""
    return await runtime.start_service(config, definition(config), standard_chain)


def serve() -> None:
    """Runs the identity service until SIGTERM."""
    runtime.serve(NAME, definition, chain=standard_chain)
