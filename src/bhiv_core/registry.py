"""The one registry of services: name, proto package, default ports.

Everything that needs to know which services exist — the mesh launcher, the Envoy config generator,
the tests and the Kubernetes manifests — reads this list. Ports are defaults; each can be overridden
with ``BHIV_<NAME>_PORT`` (see :mod:`bhiv_core.runtime.config`).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ACCESS_LOG_JWT_METADATA",
    "ACCESS_LOG_STATUS_METADATA",
    "EDGE_ADMIN_PORT",
    "EDGE_BLOCK_FILTER",
    "EDGE_JWKS_ROUTE",
    "EDGE_PORT",
    "EDGE_SOURCE_ADDRESS",
    "SENTINEL_ACCESS_LOG_PORT",
    "SENTINEL_XDS_PORT",
    "SERVICES",
    "ServiceSpec",
    "by_name",
]


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """One service of the mesh.

    Attributes:
        name: The service name, used for the folder, process, k8s objects and Envoy cluster.
        package: The proto package it serves, like ``bhiv.crm.v1``; the edge routes ``/<package>.``.
        port: The default gRPC port.
        metrics_port: The default port of its Prometheus ``/metrics`` endpoint.

    """

    name: str
    package: str
    port: int
    metrics_port: int

    @property
    def route_prefix(self) -> str:
        """The HTTP/2 path prefix of every RPC of this service, like ``/bhiv.crm.v1.``."""
        return f"/{self.package}."


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("identity", "bhiv.identity.v1", 50051, 9461),
    ServiceSpec("logistics", "bhiv.logistics.v1", 50052, 9462),
    ServiceSpec("crm", "bhiv.crm.v1", 50053, 9463),
    ServiceSpec("orchestration", "bhiv.orchestration.v1", 50054, 9464),
    ServiceSpec("llm", "bhiv.llm.v1", 50055, 9465),
    ServiceSpec("integrations", "bhiv.integrations.v1", 50056, 9466),
    ServiceSpec("sentinel", "bhiv.sentinel.v1", 50057, 9467),
)

EDGE_PORT = 8080
EDGE_ADMIN_PORT = 9901
EDGE_BLOCK_FILTER = "bhiv.ip_blocks"
"""The edge's IP-block filter, whose config sentinel serves over xDS (ECDS, by this name); the
newest blocks go to a second one, ``<name>.recent``."""
SENTINEL_XDS_PORT = 50058
"""Sentinel's xDS (ADS) port, from which every Envoy replica receives the deny list
(``BHIV_SENTINEL_XDS_PORT``); only the edge's addresses may connect."""
EDGE_SOURCE_ADDRESS = "127.0.0.2"
"""The address the mesh's Envoy connects to the services from, and the one they trust by default.

A loopback address of its own, so a local process that dials a service directly (from 127.0.0.1)
is not taken for the edge and cannot choose the client address written in the audit log.
"""

SENTINEL_ACCESS_LOG_PORT = 50059
"""Sentinel's Envoy-facing port for the edge's access-log stream (``BHIV_SENTINEL_ACCESS_LOG_PORT``).

Not sentinel's gRPC port, whose interceptor chain requires tokens Envoy does not send: this one
serves only Envoy's access-log service, and only to the trusted edge addresses.
"""

ACCESS_LOG_STATUS_METADATA = ("bhiv.edge", "grpc_status")
"""Where the edge's status step leaves the upstream's ``grpc-status`` for the access log (dynamic
metadata namespace and key); the edge writes it, sentinel reads it."""
ACCESS_LOG_JWT_METADATA = ("envoy.filters.http.jwt_authn", "jwt_payload")
"""Where the edge's jwt_authn leaves a verified token's claims (dynamic metadata namespace and key)."""
EDGE_JWKS_ROUTE = "jwks"
"""The edge's route of ``GET /.well-known/jwks.json``, which Envoy's own JWKS fetches take."""


def by_name(name: str) -> ServiceSpec:
    """Returns the service called ``name``; raises KeyError for an unknown one."""
    for spec in SERVICES:
        if spec.name == name:
            return spec
    raise KeyError(name)
