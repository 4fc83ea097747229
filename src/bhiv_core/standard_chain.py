"""The chain wiring: the concerns composed with their collaborators, for the runtime to run.

The runtime knows no concern: each service's ``server.py`` hands :func:`standard_chain` to
:func:`~bhiv_core.runtime.server.serve` and :func:`~bhiv_core.runtime.server.start_service`.
Imports only go down — services → this module → interceptors, audit, storage → runtime → security
(``tests/test_layers.py`` holds every module to it).

The standard chain: tracing → metrics → audit → errors → auth → decode → RBAC → validation →
screening → handler (see :func:`~bhiv_core.runtime.chain.chain_order`). Health and reflection are
not traced (probes would flood the traces), skip auth, RBAC and screening, and are not audited (see
:func:`chain_order`); they are still counted.

Auth and RBAC report what they refuse to sentinel as security events (a refused token as
``TOKEN_INVALID`` with the reason, a denied call as ``PERMISSION_DENIED`` with the method and the
caller), through the service's one reporter (:mod:`bhiv_core.runtime.security_events`): the
definition's when it lends one (identity, sentinel), else a ``SentinelReporter`` whose token comes
from identity with this service's credentials (:mod:`bhiv_core.runtime.service_credentials`).
The returned :class:`~bhiv_core.runtime.server.Chain` exposes it as ``reporter`` for concerns that
report too.
"""

from __future__ import annotations

import asyncio

from bhiv_core.audit.sink import AuditSink
from bhiv_core.audit.store import make_audit_store
from bhiv_core.interceptors.audit import AuditInterceptor
from bhiv_core.interceptors.auth import AuthInterceptor
from bhiv_core.interceptors.errors import ErrorMappingInterceptor
from bhiv_core.interceptors.metrics import MetricsInterceptor, auth_failures
from bhiv_core.interceptors.rbac import RbacInterceptor, RolePolicy
from bhiv_core.interceptors.screening import (
    INLINE_CHARS,
    QUEUE_CHARS,
    OnHit,
    ScreeningInterceptor,
    log_hit,
    report_to,
)
from bhiv_core.interceptors.tracing import TracingInterceptor, client_interceptors
from bhiv_core.interceptors.validation import ValidationInterceptor
from bhiv_core.runtime import telemetry
from bhiv_core.runtime.chain import Selector, chain_order, is_infrastructure
from bhiv_core.runtime.clients import PeerChannels
from bhiv_core.runtime.config import (
    DEFAULT_JWT_LEEWAY_S,
    RuntimeConfig,
    jwt_settings,
    revocation_poll_seconds,
)
from bhiv_core.runtime.security_events import (
    CallEvents,
    SecurityEventReporter,
    SentinelReporter,
    coalescing_settings,
)
from bhiv_core.runtime.server import Chain, ServiceDefinition
from bhiv_core.runtime.service_credentials import ServiceTokenSource, load_service_secret, service_secret_path
from bhiv_core.security.identity_client import IdentityKeySource, revocation_fetcher, revocation_watcher
from bhiv_core.security.jwt import JwtVerifier, RevocationSet

__all__ = ["basic_chain", "chain_reporter", "screening_concern", "standard_chain"]


def chain_reporter(
    config: RuntimeConfig, definition: ServiceDefinition, channels: PeerChannels
) -> tuple[SecurityEventReporter, SentinelReporter | None]:
    """The reporter of a service's chain, and the one the chain itself must start and stop (or None).

    The definition's own when it has one; else a :class:`SentinelReporter` to the ``sentinel`` peer
    whose service token comes from identity for the deployment's service secret (read, or
    created, now: a bad secret file fails the start).
    """
    if definition.reporter is not None:
        return definition.reporter, None
    secret = load_service_secret(service_secret_path(config))
    tokens = ServiceTokenSource(config.service, secret, lambda: channels.channel("identity"))
    owned = SentinelReporter(
        config.peers.get("sentinel", ""),
        tokens,
        service=config.service,
        channel=lambda: channels.channel("sentinel"),
        queue_size=config.settings.positive_int("SECURITY_EVENT_QUEUE_SIZE", 1000),
        **coalescing_settings(config.settings),
    )
    return owned, owned


def standard_chain(
    config: RuntimeConfig,
    definition: ServiceDefinition,
    *,
    audit: bool = True,
    on_screening_hit: OnHit | None = None,
) -> Chain:
    """Builds the full chain of one service; its hooks open and close the audit sink and pollers.

    Args:
        config: The service's configuration.
        definition: What the service serves.
        audit: False leaves the audit concern out: only ``make bench`` does, to measure what
            durable audit costs. Every service runs with it.
        on_screening_hit: Receives each request whose text fields match the injection rules
            (``BHIV_SCREENING=on``, the default); by default each is logged and reported to
            sentinel through the chain's reporter (:func:`~bhiv_core.interceptors.screening.report_to`).

    """
    settings = config.settings
    channels = PeerChannels(config.peers, extra_interceptors=client_interceptors)
    identity_channel = lambda: channels.channel("identity")  # noqa: E731
    # Identity pushes revocations over a stream as it commits them; the poll is the safety net.
    revocations = definition.revocations or RevocationSet(
        revocation_fetcher(identity_channel),
        interval=revocation_poll_seconds(config),
        watch=revocation_watcher(identity_channel),
    )
    issuer, audience = jwt_settings(config)
    verifier = JwtVerifier(
        definition.key_source or IdentityKeySource(identity_channel),
        revocations,
        issuer=issuer,
        audience=audience,
        leeway=settings.positive_float("JWT_LEEWAY_SECONDS", DEFAULT_JWT_LEEWAY_S),
        cache_size=settings.positive_int("TOKEN_CACHE_SIZE", 10_000),
    )
    sink = AuditSink(make_audit_store(config))
    reporter, owned_reporter = chain_reporter(config, definition, channels)
    events = CallEvents(reporter)
    failures = {
        reason: auth_failures.labels(config.service, reason)
        for reason in ("missing", "malformed", "revoked", "expired", "unknown kid", "bad signature", "other")
    }

    def count_failure(reason: str) -> None:
        (failures.get(reason) or failures["other"]).inc()

    interceptors = chain_order(
        observability=[
            # Spans are only built when an exporter takes them; trace ids are assigned regardless.
            Selector(
                TracingInterceptor(recording=telemetry.spans_exported()), lambda m: not is_infrastructure(m)
            ),
            MetricsInterceptor(config.service),
        ],
        audit=AuditInterceptor(sink, config.service) if audit else None,
        errors=ErrorMappingInterceptor(domain=f"{config.service}.bhiv.core"),
        auth=AuthInterceptor(verifier, on_failure=count_failure, on_refused=events.token_refused),
        rbac=RbacInterceptor(RolePolicy(), on_denied=events.denied),
        validation=ValidationInterceptor(),
        screening=(screening := screening_concern(config, on_screening_hit or report_to(reporter))),
    )

    async def start() -> None:
        if audit:
            await sink.start()
        revocations.start()
        if owned_reporter is not None:
            await owned_reporter.start()

    async def stop() -> None:
        await revocations.stop()
        if owned_reporter is not None:
            await owned_reporter.stop()
        if screening is not None:
            await asyncio.to_thread(screening.close)  # joins the background worker
        if audit:
            await sink.close()
        await channels.close()

    checks = {"audit_sink": sink.check} if audit else {}
    return Chain(interceptors, on_start=[start], on_stop=[stop], checks=checks, reporter=reporter)


def screening_concern(config: RuntimeConfig, on_hit: OnHit = log_hit) -> ScreeningInterceptor | None:
    """The injection screening of requests' text fields, or None when ``BHIV_SCREENING`` is off."""
    settings = config.settings
    if settings.choice("SCREENING", "on", ("on", "off")) == "off":
        return None
    return ScreeningInterceptor(
        on_hit=on_hit,
        inline_chars=settings.positive_int("SCREENING_INLINE_CHARS", INLINE_CHARS),
        queue_chars=settings.positive_int("SCREENING_QUEUE_CHARS", QUEUE_CHARS),
        service=config.service,
    )


def basic_chain(config: RuntimeConfig, definition: ServiceDefinition | None = None) -> Chain:
    """Error mapping and validation only: for tests of concerns in isolation."""
    return Chain(
        chain_order(
            errors=ErrorMappingInterceptor(domain=f"{config.service}.bhiv.core"),
            validation=ValidationInterceptor(),
        )
    )
