"""Generates the Envoy edge's bootstrap from the registry of services, with typed Envoy API objects.

The bootstrap is built from ``envoy-data-plane`` messages (so a misspelt field or a wrong type fails
here, in Python, not at Envoy's start) and converted to proto3 JSON, which Envoy reads as it is.
``make run``, the tests and the Kubernetes ConfigMap all go through :func:`build_bootstrap`.

What the edge does, in the order a request meets it:

* One listener; the HTTP connection manager speaks HTTP/2 (gRPC) and HTTP/1.1 (gRPC-web) on the same
  port, trusts only the TCP peer (``use_remote_address``, no client internal, so the client's address
  always reaches the services in ``x-envoy-external-address``), normalises paths, drops header fields
  whose name has an underscore, and caps buffers, streams, header sizes and idle times (Envoy's edge
  best practices).
* Request headers are held to what the services accept (:mod:`bhiv_core.runtime.limits`) by a check
  in the filter chain, not by the codec, because only a filter can answer with a status: over the
  limits is RESOURCE_EXHAUSTED for gRPC and HTTP 431 for gRPC-web, and the connection's other streams
  go on. The codec's own limits sit far above, as a backstop (see :func:`_listener`), and the codec
  is Envoy's oghttp2, which decodes long fields where its default ends the connection
  (:data:`ENVOY_RUNTIME`).
* HTTP filters: ``grpc_web`` → ``cors`` → the IP blocks (two RBAC filters whose config comes
  from sentinel over ECDS, :func:`_block_filters`; only with ``block_xds``) → header limits →
  ``local_ratelimit`` → ``lua`` → ``jwt_authn`` (the token check, :func:`_jwt_authn`) →
  ``grpc_json_transcoder`` → *extra filters* → ``router``. CORS comes before
  the rate limit so preflights are answered without spending tokens, and before the header limits
  so a browser can read their refusal; a refused request spends no token.
  The Lua filter has no default
  script: it runs only on the routes that name one of its scripts (:mod:`bhiv_core.edge.lua_scripts`),
  the protocol refusals and the health router, so other requests pay nothing for it.
* The edge speaks gRPC and gRPC-web only: any other method or content type (the Connect protocol,
  JSON, a browser's GET) is refused at the edge with 405 or 415 and a hint, in the Connect error
  shape (``{"code": "unimplemented", "message": ...}``) and with CORS headers, so a browser page can
  read it, instead of reaching a gRPC server that would reset the stream (Envoy's ``503 upstream
  connect error … remote reset``).
* Routes match the path prefix only. A ``grpc: {}`` match would make gRPC-web POSTs and CORS
  preflights 404, because it requires ``content-type: application/grpc`` before the filters rewrite it.
* Reflection goes to a cluster of every service (each process serves reflection for the whole API).
* Health goes to the service named in ``x-bhiv-service`` (an unknown name is NOT_FOUND at the edge);
  without the header, the health router (:mod:`bhiv_core.edge.lua_scripts`) reads the service
  name from the request and routes by it, and answers an empty name with the edge's view of the
  whole mesh.
* Admin listens on 127.0.0.1 only, whatever the listener's address.
* Upstream connections can leave from an address of their own (``upstream_source_address``), the
  one the services trust to vouch for client addresses.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

import betterproto2
from envoy_data_plane.envoy.config.accesslog.v3 import AccessLog, AccessLogFilter, ExtensionFilter
from envoy_data_plane.envoy.config.bootstrap.v3 import (
    Admin,
    Bootstrap,
    BootstrapDynamicResources,
    BootstrapStaticResources,
    LayeredRuntime,
    RuntimeLayer,
)
from envoy_data_plane.envoy.config.cluster.v3 import (
    CircuitBreakers,
    CircuitBreakersThresholds,
    Cluster,
    ClusterCommonLbConfig,
    ClusterDiscoveryType,
    ClusterDnsLookupFamily,
)
from envoy_data_plane.envoy.config.core.v3 import (
    Address,
    AggregatedConfigSource,
    ApiConfigSource,
    ApiConfigSourceApiType,
    ApiVersion,
    BackoffStrategy,
    BindConfig,
    CidrRange,
    ConfigSource,
    DataSource,
    ExtensionConfigSource,
    GrpcService,
    GrpcServiceEnvoyGrpc,
    HeaderValue,
    HeaderValueOption,
    HeaderValueOptionHeaderAppendAction,
    HealthCheck,
    HealthCheckGrpcHealthCheck,
    Http2ProtocolOptions,
    HttpProtocolOptions,
    HttpProtocolOptionsHeadersWithUnderscoresAction,
    HttpUri,
    KeepaliveSettings,
    Node,
    RetryPolicy,
    RuntimeFractionalPercent,
    SocketAddress,
    SubstitutionFormatString,
)
from envoy_data_plane.envoy.config.endpoint.v3 import (
    ClusterLoadAssignment,
    Endpoint,
    LbEndpoint,
    LocalityLbEndpoints,
)
from envoy_data_plane.envoy.config.listener.v3 import Filter, FilterChain, Listener
from envoy_data_plane.envoy.config.overload.v3 import (
    OverloadAction,
    OverloadManager,
    ResourceMonitor,
    ThresholdTrigger,
    Trigger,
)
from envoy_data_plane.envoy.config.ratelimit.v3 import RateLimitServiceConfig
from envoy_data_plane.envoy.config.rbac.v3 import Permission, Policy, Principal, RbacAction
from envoy_data_plane.envoy.config.rbac.v3 import Rbac as RbacRules
from envoy_data_plane.envoy.config.route.v3 import (
    DirectResponseAction,
    HeaderMatcher,
    RateLimit,
    RateLimitAction,
    RateLimitActionHeaderValueMatch,
    RateLimitActionRemoteAddress,
    Route,
    RouteAction,
    RouteActionMaxStreamDuration,
    RouteConfiguration,
    RouteMatch,
    VirtualHost,
)
from envoy_data_plane.envoy.extensions.access_loggers.file.v3 import FileAccessLog
from envoy_data_plane.envoy.extensions.access_loggers.filters.cel.v3 import ExpressionFilter
from envoy_data_plane.envoy.extensions.access_loggers.grpc.v3 import (
    CommonGrpcAccessLogConfig,
    HttpGrpcAccessLogConfig,
)
from envoy_data_plane.envoy.extensions.access_loggers.stream.v3 import StdoutAccessLog
from envoy_data_plane.envoy.extensions.common.ratelimit.v3 import (
    LocalRateLimitDescriptor,
    RateLimitDescriptorEntry,
)
from envoy_data_plane.envoy.extensions.filters.http.cors.v3 import Cors, CorsPolicy
from envoy_data_plane.envoy.extensions.filters.http.grpc_json_transcoder.v3 import (
    GrpcJsonTranscoder,
    GrpcJsonTranscoderPrintOptions,
    GrpcJsonTranscoderRequestValidationOptions,
)
from envoy_data_plane.envoy.extensions.filters.http.grpc_web.v3 import GrpcWeb
from envoy_data_plane.envoy.extensions.filters.http.jwt_authn.v3 import (
    JwksAsyncFetch,
    JwtAuthentication,
    JwtHeader,
    JwtProvider,
    JwtRequirement,
    RemoteJwks,
    RequirementRule,
)
from envoy_data_plane.envoy.extensions.filters.http.local_ratelimit.v3 import LocalRateLimit
from envoy_data_plane.envoy.extensions.filters.http.lua.v3 import Lua, LuaPerRoute
from envoy_data_plane.envoy.extensions.filters.http.ratelimit.v3 import RateLimit as GlobalRateLimit
from envoy_data_plane.envoy.extensions.filters.http.rbac.v3 import Rbac
from envoy_data_plane.envoy.extensions.filters.http.router.v3 import Router
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (
    HttpConnectionManager,
    HttpConnectionManagerCodecType,
    HttpConnectionManagerInternalAddressConfig,
    HttpConnectionManagerPathWithEscapedSlashesAction,
    HttpFilter,
    LocalReplyConfig,
    ResponseMapper,
)
from envoy_data_plane.envoy.extensions.resource_monitors.downstream_connections.v3 import (
    DownstreamConnectionsConfig,
)
from envoy_data_plane.envoy.extensions.resource_monitors.fixed_heap.v3 import FixedHeapConfig
from envoy_data_plane.envoy.extensions.upstreams.http.v3 import (
    HttpProtocolOptions as UpstreamHttpProtocolOptions,
)
from envoy_data_plane.envoy.extensions.upstreams.http.v3 import (
    HttpProtocolOptionsExplicitHttpConfig,
)
from envoy_data_plane.envoy.type.matcher.v3 import RegexMatcher, StringMatcher
from envoy_data_plane.envoy.type.v3 import (
    FractionalPercent,
    FractionalPercentDenominatorType,
    Int64Range,
    Percent,
    TokenBucket,
)
from envoy_data_plane.google.api.expr.v1alpha1 import Constant, Expr, ExprCall, ExprIdent, ExprSelect
from envoy_data_plane.google.protobuf import Any as AnyProto
from envoy_data_plane.google.protobuf import Struct

from bhiv_core.edge.lua_scripts import (
    NOT_SERVING_HEADER,
    NOT_SERVING_METADATA,
    grpc_status_script,
    health_router_script,
    reply_script,
    rewrite_script,
)
from bhiv_core.registry import (
    ACCESS_LOG_JWT_METADATA,
    EDGE_ADMIN_PORT,
    EDGE_BLOCK_FILTER,
    EDGE_JWKS_ROUTE,
    EDGE_PORT,
    ServiceSpec,
)
from bhiv_core.runtime.config import DEFAULT_JWT_LEEWAY_S, Settings, token_claims
from bhiv_core.runtime.contracts import all_services, descriptor_set, method_path, policy_of
from bhiv_core.runtime.limits import MAX_REQUEST_HEADER_BYTES, MAX_REQUEST_HEADERS

__all__ = [
    "ACCESS_LOG_CLUSTER",
    "ACCESS_LOG_FORMAT",
    "ACCESS_LOG_NAME",
    "ADMIN_HOST",
    "BLOCKED_DETAILS",
    "BLOCK_FILTER",
    "CORS_ALLOW_HEADERS",
    "CORS_EXPOSE_HEADERS",
    "DEFAULT_CORS_ALLOW_ORIGINS",
    "EDGE_SETTINGS",
    "ENVOY_RUNTIME",
    "GRPC_STATUS_FILTER",
    "HEADERS_TOO_LARGE",
    "HEADER_LIMITS_FILTER",
    "HEALTH_PREFIX",
    "HEALTH_ROUTER",
    "JWKS_ROUTE",
    "JWT_PAYLOAD_METADATA",
    "MESH_ONLY_METHODS",
    "NODE_CLUSTER",
    "OVERLOAD_ACTIONS",
    "PROTOCOL_HINT",
    "RECENT_BLOCK_FILTER",
    "REFLECTION_CLUSTER",
    "REFLECTION_PREFIXES",
    "SERVICE_HEADER",
    "TOO_MANY_HEADERS",
    "XDS_CLUSTER",
    "EdgeSettings",
    "Upstream",
    "build_bootstrap",
    "build_route_config",
    "rate_limit_actions",
    "rate_limit_service_config",
    "streaming_methods",
    "write_bootstrap",
]

ADMIN_HOST: Final = "127.0.0.1"
"""Admin is bound here and nowhere else: it can stop Envoy and dump its config."""

REFLECTION_CLUSTER: Final = "reflection"
"""The cluster of every upstream; serves reflection and un-addressed health checks."""

SERVICE_HEADER: Final = "x-bhiv-service"
"""A health check carrying this header (an upstream's name) is routed to that upstream; the health
router fills it in from the name a health check asks about."""

HEALTH_PREFIX: Final = "/grpc.health.v1.Health/"
REFLECTION_PREFIXES: Final = (
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
)

DEFAULT_CORS_ALLOW_ORIGINS: Final = (r"^http://(localhost|127\.0\.0\.1)(:[0-9]+)?$",)
"""Local development origins: ``http://localhost:*`` and ``http://127.0.0.1:*``."""

CORS_ALLOW_HEADERS: Final = (
    "content-type",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    "authorization",
    "keep-alive",
    "user-agent",
    "cache-control",
    SERVICE_HEADER,
    # W3C trace context and a client's request id, which browser tracing and logging libraries send.
    "traceparent",
    "tracestate",
    "x-request-id",
    # Connect clients send these; the edge refuses the Connect protocol itself with a readable hint
    # (415), which a browser shows only when the preflight for them has passed.
    "connect-protocol-version",
    "connect-timeout-ms",
)
CORS_EXPOSE_HEADERS: Final = ("grpc-status", "grpc-message", "grpc-status-details-bin", "x-request-id")
CORS_ALLOW_METHODS: Final = ("POST", "OPTIONS")

ACCESS_LOG_FORMAT: Final[Mapping[str, str]] = {
    "start_time": "%START_TIME%",
    "peer": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "protocol": "%PROTOCOL%",
    "response_code": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%",
    "response_code_details": "%RESPONSE_CODE_DETAILS%",
    "grpc_status": "%GRPC_STATUS%",
    "duration_ms": "%DURATION%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "user_agent": "%REQ(USER-AGENT)%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "upstream_cluster": "%UPSTREAM_CLUSTER%",
    "upstream_host": "%UPSTREAM_HOST%",
}
"""One JSON object per request; sentinel's detection reads these field names.

``grpc_status`` is exact for gRPC. For gRPC-web it is exact only when the status comes in the
response headers (trailers-only replies: Envoy's own rejections and most errors); a gRPC-web reply
with a body logs ``Unknown``, because the grpc_web filter moves the trailers into the body before
the access log sees them (istio/istio#58430); the log cannot tell those requests apart reliably
(the same filter rewrites their content-type to ``application/grpc``), so detection must not read
``Unknown`` with ``response_code`` 200 as a failure.
"""

PROTOCOL_HINT: Final = (
    "This edge speaks gRPC (HTTP/2, content-type application/grpc), gRPC-web (content-type "
    "application/grpc-web, application/grpc-web-text) and, for the unary methods of the bhiv.* "
    "services, JSON (POST /<package>.<Service>/<Method>, content-type application/json), not the "
    "Connect protocol or plain HTTP. Use grpcurl, curl with JSON or a generated gRPC stub, or from a "
    "browser a gRPC-web client (connect-web: createGrpcWebTransport); see the README, Try it."
)
"""What a request in a protocol the edge does not speak is told, with 405 or 415."""

# Extension names, as Envoy registers them.
GRPC_WEB_FILTER: Final = "envoy.filters.http.grpc_web"
LUA_FILTER: Final = "envoy.filters.http.lua"
CORS_FILTER: Final = "envoy.filters.http.cors"
LOCAL_RATELIMIT_FILTER: Final = "envoy.filters.http.local_ratelimit"
GLOBAL_RATELIMIT_FILTER: Final = "envoy.filters.http.ratelimit"
RATE_LIMIT_CLUSTER: Final = "ratelimit"
RATE_LIMIT_DOMAIN: Final = "bhiv-edge"
"""The domain of the edge's descriptors in a global rate-limit service."""
NODE_CLUSTER: Final = "bhiv-edge"
"""The node cluster of every edge replica, and the first replica's node id."""
ROUTER_FILTER: Final = "envoy.filters.http.router"
TRANSCODER_FILTER: Final = "envoy.filters.http.grpc_json_transcoder"
HEADER_LIMITS_FILTER: Final = "bhiv.request_header_limits"
JWT_FILTER: Final = "envoy.filters.http.jwt_authn"
JWT_PROVIDER: Final = "identity"
JWKS_CLUSTER: Final = "edge-jwks"
"""The edge's own listener, as a cluster: Envoy fetches the JWKS through itself (see :func:`_jwt_authn`)."""
JWKS_PATH: Final = "/.well-known/jwks.json"
"""Where the edge serves identity's JWKS as a standard JSON Web Key Set, to Envoy and anyone else."""
JWKS_METHOD: Final = "/bhiv.identity.v1.AuthService/GetJwks"
JWKS_ROUTE: Final = EDGE_JWKS_ROUTE
"""The route of ``GET`` :data:`JWKS_PATH` (Envoy's own JWKS fetches take it, from the edge's address)."""
JWT_PAYLOAD_METADATA: Final = ACCESS_LOG_JWT_METADATA
"""Where jwt_authn leaves a verified token's claims (dynamic metadata namespace and key)."""
ACCESS_LOG_CLUSTER: Final = "sentinel-access-log"
"""The cluster of sentinel's access-log port (Envoy's access-log service, ALS)."""
ACCESS_LOG_NAME: Final = "bhiv-edge"
"""The ``log_name`` the edge's access-log stream identifies itself with."""
ACCESS_LOG_SERVICE_PREFIX: Final = "/envoy.service.accesslog.v3."
GRPC_STATUS_FILTER: Final = "bhiv.grpc_status"
"""The Lua filter, last before the router, that records the upstream's ``grpc-status`` for the access
log (see :func:`_grpc_status_filters`)."""
ACCESS_LOG_HEADERS: Final = ("content-type", "x-grpc-web")
"""Request headers the access-log entries carry (besides Envoy's own fields)."""
JWT_REFUSED: Final = "access token refused at the edge: %RESPONSE_CODE_DETAILS%"
"""The message of the edge's token refusals (the details name the reason)."""
JWKS_REWRITE: Final = "jwks-rewrite"
"""The Lua script turning ``GET /.well-known/jwks.json`` into a JSON call of ``GetJwks``."""
"""The name of the RBAC filter that holds request headers to the limits: a name of its own, so that
per-route RBAC configs meant for the IP-block filter (``envoy.filters.http.rbac``) never reach it."""
BLOCK_FILTER: Final = EDGE_BLOCK_FILTER
"""The IP-block RBAC filter, whose config Envoy discovers from sentinel over ECDS (the resource's name)."""
RBAC_TYPE_URL: Final = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
RECENT_BLOCK_FILTER: Final = f"{BLOCK_FILTER}.recent"
"""The second IP-block filter, holding only the newest blocks: Envoy applies a change to it in
milliseconds, where the whole list (10,000 entries) takes it about 0.1 s; sentinel folds it into
:data:`BLOCK_FILTER` when the list is quiet."""
XDS_CLUSTER: Final = "sentinel-xds"
"""Sentinel's xDS port, as a cluster: the ADS stream every Envoy replica keeps open."""
BLOCKED_DETAILS: Final = "rbac_access_denied_matched_policy[blocked-until-"
"""How the response details of a request the IP-block filter refused start; the action name that
follows says until when (``blocked-until-2026-12-02T16:00:00Z]`` or ``blocked-until-lifted]``)."""
BLOCKED_MESSAGE: Final = (
    "client address blocked at the edge (%RESPONSE_CODE_DETAILS%: until that UTC time, or until an "
    "administrator lifts the block)"
)
CEL_FILTER: Final = "envoy.access_loggers.extension_filters.cel"
HCM_FILTER: Final = "envoy.filters.network.http_connection_manager"
UPSTREAM_HTTP_OPTIONS: Final = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
MAX_CONNECTIONS_MONITOR: Final = "envoy.resource_monitors.global_downstream_max_connections"
HEAP_MONITOR: Final = "envoy.resource_monitors.fixed_heap"
REMOTE_ADDRESS_KEY: Final = "remote_address"
"""The descriptor key Envoy's ``remote_address`` action writes: the client address the edge trusts."""
RULE_KEY: Final = "bhiv_rule"
LOGIN_RULE: Final = "login"
"""``[bhiv_rule=login, remote_address=...]``: the descriptor of ``Login`` and ``RefreshToken`` calls."""
RATE_LIMITED_MESSAGE: Final = "rate limited at the edge: too many requests from this address; retry later"
LOGIN_METHODS: Final = ("/bhiv.identity.v1.AuthService/Login", "/bhiv.identity.v1.AuthService/RefreshToken")
_LOGIN_PATHS: Final = "|".join(re.escape(path) for path in LOGIN_METHODS)

OVERLOAD_ACTIONS: Final[Mapping[str, float]] = {
    # Envoy's edge advice: give memory back first, then stop taking new requests, before the
    # kernel's OOM killer ends every connection at once.
    "envoy.overload_actions.shrink_heap": 0.95,
    "envoy.overload_actions.stop_accepting_requests": 0.98,
}
"""The overload manager's actions and the heap fraction (of ``max_heap_bytes``) that triggers each.

Over ``stop_accepting_requests`` every new request is answered at once with HTTP 503 (gRPC:
UNAVAILABLE, ``envoy overloaded``); the admin stays reachable.
"""
HEALTH_ROUTER: Final = "health-router"
"""The name of the health router's Lua source; the one route that needs it enables it."""

UNKNOWN_SERVICE: Final = "unknown-service"
"""The name of the Lua reply to a health call whose ``x-bhiv-service`` names no service."""

MESH_ONLY: Final = "mesh-only"
"""The name of the Lua reply to a call of a method that only the mesh's own services make."""

MESH_ONLY_METHODS: Final = tuple(
    sorted(method_path(m) for service in all_services() for m in service.methods if policy_of(m).mesh_only)
)
"""Methods the edge refuses (PERMISSION_DENIED): services call them on identity directly.

Read from the contracts (``mesh_only`` in the ``access`` option). ``WatchRevocations`` is public (a
service needs revocations before it can verify a token) and each identity process serves a bounded
number of watchers; through the edge, anyone could hold every slot and keep the services from
reconnecting (outside callers read ``ListRevocations`` instead). ``IssueServiceToken`` is the
service-credentials grant: only the mesh's services hold the secret its assertion needs, and from
outside it would only be a way to guess at it.
"""

TOO_MANY_HEADERS: Final = "too-many-request-headers"
HEADERS_TOO_LARGE: Final = "request-headers-too-large"
"""The header limits' two RBAC policies; a refusal's access-log ``response_code_details`` is
``rbac_access_denied_matched_policy[<policy>]``."""

# The codec's own limits, far above the refusals, only a backstop: over them Envoy's HTTP/2 codec
# resets the stream (the caller sees INTERNAL "Stream removed") and HTTP/1.1 answers 431, since a
# codec cannot send a status. 2 MiB: every header block up to it reaches the header-limit filter,
# which answers with a status; a 1 MiB header (grpc's base64 makes a 1 MiB binary one 1.4 MiB)
# included. It costs little: HTTP/2 sends one header block at a time per connection (CONTINUATION
# frames may not interleave), and the filter frees a refused one at once.
_CODEC_MAX_HEADERS_KB: Final = 2048
_CODEC_MAX_HEADERS: Final = 1000
_GRPC_STATUS: Final = "grpc-status"
_INVALID_ARGUMENT: Final = "3"
_RESOURCE_EXHAUSTED: Final = "8"
_NAME_RE: Final = re.compile(r"^[a-z][a-z0-9_-]*$")
# What the edge takes: gRPC and gRPC-web (application/grpc, application/grpc+proto,
# application/grpc-web-text...), and JSON for the transcoder (application/json; charset=utf-8).
_GRPC_OR_JSON: Final = r"application/(grpc([-+;].*)?|json(\s*;.*)?)"
_INT64_MAX: Final = 2**63 - 1
_DEADLINE_EXCEEDED: Final = "4"
_UNAUTHENTICATED: Final = "16"
_PERMISSION_DENIED: Final = "7"
_JWT_DENIED: Final = "response.code_details.startsWith('jwt_authn_access_denied')"
# HTTP/2 bounds a flow-control window (RFC 9113, 6.9.2); Envoy takes no stream window under 64 KiB - 1.
_MIN_WINDOW: Final = 65_535
_MAX_WINDOW: Final = 2**31 - 1

ENVOY_RUNTIME: Final[Mapping[str, Any]] = {
    # Envoy's HTTP/2 codec oghttp2 instead of its default, nghttp2: nghttp2's header decoder takes
    # no field over 64 KiB, and a longer one (a 64 KiB authorization, a 48 KiB binary header in
    # base64) ended the caller's whole connection with GOAWAY before any filter could refuse it.
    # oghttp2 decodes fields up to the codec's backstop, so the header-limit filter answers them
    # with a status and the connection's other streams go on. It serves upstream connections too.
    "envoy.reloadable_features.http2_use_oghttp2": True,
}
"""Envoy runtime settings of the edge: one static layer of the bootstrap."""
# The edge's "internal" addresses: 0.0.0.0/32, which no TCP peer has, so no client is internal.
_NO_CLIENT_RANGE: Final = CidrRange(address_prefix="0.0.0.0", prefix_len=32)
_LOOPBACK_BY_WILDCARD: Final = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


@dataclass(frozen=True, slots=True)
class Upstream:
    """One service behind the edge.

    Attributes:
        name: The cluster name (the service's name in the registry); also the value of
            ``x-bhiv-service`` that routes a health check to it.
        host: An IP address or a DNS name where the service listens.
        port: Its gRPC port.
        route_prefix: The path prefix of its RPCs, like ``/bhiv.crm.v1.``.

    """

    name: str
    host: str
    port: int
    route_prefix: str

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name) or self.name == REFLECTION_CLUSTER:
            raise ValueError(f"invalid upstream name {self.name!r} (lower-case, not {REFLECTION_CLUSTER!r})")
        if not self.host:
            raise ValueError(f"upstream {self.name!r} has no host")
        if not 0 < self.port < 65536:
            raise ValueError(f"upstream {self.name!r} has port {self.port} out of range")
        if not (self.route_prefix.startswith("/") and self.route_prefix.endswith((".", "/"))):
            raise ValueError(
                f"upstream {self.name!r} route_prefix {self.route_prefix!r} must look like '/bhiv.crm.v1.'"
            )

    @classmethod
    def from_spec(cls, spec: ServiceSpec, *, host: str = "127.0.0.1", port: int | None = None) -> Upstream:
        """Return the upstream of a registry service.

        Args:
            spec: The service, from :data:`bhiv_core.registry.SERVICES`.
            host: Where it listens.
            port: Its port; the registry's default when ``None``.

        """
        return cls(spec.name, host, spec.port if port is None else port, spec.route_prefix)


def _non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError(raw)
    return value


EDGE_SETTINGS: Final[Mapping[str, tuple[str, str]]] = {
    "stream_idle_timeout_s": ("EDGE_STREAM_IDLE_TIMEOUT_SECONDS", "number"),
    "request_headers_timeout_s": ("EDGE_REQUEST_HEADERS_TIMEOUT_SECONDS", "number"),
    "connection_idle_timeout_s": ("EDGE_IDLE_TIMEOUT_SECONDS", "number"),
    "request_timeout_s": ("EDGE_REQUEST_TIMEOUT_SECONDS", "number"),
    "unary_timeout_s": ("EDGE_UNARY_TIMEOUT_SECONDS", "number"),
    "streaming_idle_timeout_s": ("EDGE_STREAMING_IDLE_TIMEOUT_SECONDS", "number"),
    "connect_timeout_s": ("EDGE_CONNECT_TIMEOUT_SECONDS", "number"),
    "buffer_limit_bytes": ("EDGE_BUFFER_LIMIT_BYTES", "integer"),
    "max_concurrent_streams": ("EDGE_MAX_CONCURRENT_STREAMS", "integer"),
    "initial_stream_window_bytes": ("EDGE_INITIAL_STREAM_WINDOW_BYTES", "integer"),
    "initial_connection_window_bytes": ("EDGE_INITIAL_CONNECTION_WINDOW_BYTES", "integer"),
    "max_downstream_connections": ("EDGE_MAX_CONNECTIONS", "integer"),
    "max_heap_bytes": ("EDGE_MAX_HEAP_BYTES", "integer"),
    "xff_num_trusted_hops": ("EDGE_XFF_TRUSTED_HOPS", "count"),
    "rate_limit_per_address": ("EDGE_RATE_LIMIT_PER_ADDRESS", "integer"),
    "login_rate_limit": ("EDGE_LOGIN_RATE_LIMIT", "integer"),
    "rate_limit_addresses": ("EDGE_RATE_LIMIT_ADDRESSES", "integer"),
    "jwks_cache_s": ("EDGE_JWKS_CACHE_SECONDS", "number"),
    "access_log_flush_s": ("EDGE_ACCESS_LOG_FLUSH_SECONDS", "number"),
}
"""Each :class:`EdgeSettings` field read from a setting (``BHIV_<name>``), and its kind: a ``number``
> 0, an ``integer`` >= 1, or a ``count`` >= 0."""

_POSITIVE_FIELDS: Final = tuple(name for name, (_, kind) in EDGE_SETTINGS.items() if kind != "count")


@dataclass(frozen=True, slots=True)
class EdgeSettings:
    """How the edge listens and what it allows.

    Attributes:
        listen_host: The listener's address; ``0.0.0.0`` to accept from other hosts.
        listen_port: The listener's port (gRPC and gRPC-web).
        admin_port: The admin port, always bound to 127.0.0.1.
        cors_allow_origins: Origins allowed to call from a browser. An entry starting with ``^`` is
            an RE2 regex matched against the whole origin; any other entry is an exact origin.
        rate_limit_tokens_per_fill: Tokens added to the edge-wide bucket every fill interval; also
            the bucket's size unless ``rate_limit_max_tokens`` is set.
        rate_limit_fill_interval_s: The fill interval in seconds (Envoy needs at least 0.05).
        rate_limit_max_tokens: The bucket's size (the burst); ``None`` means tokens per fill.
        rate_limit_per_address: Requests one client address may make per fill interval (a bucket
            per address, its size the same number); the client address is the one the edge trusts
            (the TCP peer, or per ``xff_num_trusted_hops``).
        login_rate_limit: ``Login`` and ``RefreshToken`` calls per minute one client address may
            make (a stricter bucket of its own, on top of the others).
        rate_limit_addresses: How many client addresses' buckets Envoy keeps (least recently used
            first out; an evicted address starts again with a full bucket).
        rate_limit_service: ``host:port`` of a global rate-limit service (Envoy's ``ratelimit.v3``
            protocol, such as envoyproxy/ratelimit configured with
            :func:`rate_limit_service_config`), shared by several Envoy replicas; ``None`` keeps
            the limits local to each Envoy. The local buckets stay in front either way.
        access_log_path: Where the JSON-lines access log goes; ``None`` means Envoy's stdout.
        access_log_service: ``host:port`` of sentinel's access-log port
            (``BHIV_EDGE_ACCESS_LOG_SERVICE``; the mesh sets it to sentinel's
            ``BHIV_SENTINEL_ACCESS_LOG_PORT``): Envoy streams every request's log entry there
            (Envoy's access-log service, ``envoy.access_loggers.http_grpc``), from
            ``upstream_source_address``, for threat detection; see :func:`_grpc_access_log`.
            ``None`` logs to the file (or stdout) only.
        access_log_flush_s: How often Envoy sends its buffered access-log entries to the service
            (``BHIV_EDGE_ACCESS_LOG_FLUSH_SECONDS``; it sends sooner once 16 KiB are buffered).
        max_request_bytes: The largest request body the edge forwards when the request declares its
            length (gRPC-web from browsers does); equals the services' message-size limit.
        max_request_header_bytes: The largest request header block the edge forwards (names plus
            values, pseudo-headers and the edge's own headers included); a larger one is
            RESOURCE_EXHAUSTED for gRPC and HTTP 431 for gRPC-web. The services accept at least as
            much (:mod:`bhiv_core.runtime.limits`).
        max_request_headers: The most request header fields the edge forwards, counted the same
            way; more are refused like a block too large.
        stream_idle_timeout_s: A stream with no traffic for this long is reset; server streams that
            may stay silent longer must send heartbeats.
        request_headers_timeout_s: How long a client may take to send its request headers.
        connection_idle_timeout_s: A connection with no streams for this long is closed.
        request_timeout_s: How long a client may take to send a whole request; the timer stops
            when the response starts, so server streams are not cut by it.
        unary_timeout_s: The longest a unary call may wait for its response at the edge (the
            route timeout); over it the caller gets DEADLINE_EXCEEDED. A shorter ``grpc-timeout``
            from the client applies as it is. Streaming methods are exempt.
        streaming_idle_timeout_s: The stream idle timeout of the streaming methods' routes, which
            replaces ``stream_idle_timeout_s`` there: a server stream may stay silent this long.
        buffer_limit_bytes: What Envoy buffers per connection, downstream and upstream, before flow
            control pushes back (Envoy's edge advice: 32 KiB).
        max_concurrent_streams: The most concurrent HTTP/2 streams on one client connection.
        initial_stream_window_bytes: The HTTP/2 flow-control window of each stream.
        initial_connection_window_bytes: The HTTP/2 flow-control window of each connection.
        max_downstream_connections: The most client connections Envoy keeps open at once.
        max_heap_bytes: The heap size the overload manager measures Envoy against: at 95 % it
            returns free memory to the system, at 98 % it refuses new requests
            (:data:`OVERLOAD_ACTIONS`).
        xff_num_trusted_hops: How many proxies in front of the edge append to
            ``x-forwarded-for``: 0 when clients connect to Envoy directly (the client is the TCP
            peer); 1 behind one load balancer that appends the address it saw, and so on. The
            client address taken then is that many entries from the right of the header, so a
            client cannot choose it by sending the header itself.
        health_check_interval_s: How often Envoy checks each upstream with gRPC health.
        connect_timeout_s: How long Envoy waits for a TCP connection to an upstream.
        upstream_source_address: The IP address Envoy connects to the upstreams from, or None for
            the system's choice. The services believe the client address the edge forwards only
            from their trusted edge peers (``BHIV_EDGE_PEERS``), so on one host the mesh gives
            Envoy a loopback address of its own (127.0.0.2), one no direct caller uses by chance.
        jwt_issuer: The ``iss`` the edge requires of access tokens (``BHIV_JWT_ISSUER``).
        jwt_audience: The ``aud`` the edge requires of access tokens (``BHIV_JWT_AUDIENCE``).
        jwt_clock_skew_s: Seconds of clock skew allowed on ``exp`` and ``nbf``, the services'
            leeway (``BHIV_JWT_LEEWAY_SECONDS``) rounded up.
        jwks_cache_s: How long Envoy keeps identity's JWKS before fetching it again
            (``BHIV_EDGE_JWKS_CACHE_SECONDS``): after a key rotation, tokens signed with the new key
            are refused at the edge for at most this long (plus one fetch).
        node_id: This Envoy's node id, which it presents to its control plane (xDS) and its
            access-log service: every replica of the edge has its own (``bhiv-edge``,
            ``bhiv-edge-1``, ...), all in the node cluster ``bhiv-edge``.
        block_xds: ``host:port`` of sentinel's xDS server (``BHIV_SENTINEL_XDS_PORT``), from which
            this replica receives the deny list (the IP-block filter, :func:`_block_filter`);
            None: no IP-block filter (an edge without sentinel).

    """

    listen_host: str = "127.0.0.1"
    listen_port: int = EDGE_PORT
    admin_port: int = EDGE_ADMIN_PORT
    cors_allow_origins: tuple[str, ...] = DEFAULT_CORS_ALLOW_ORIGINS
    rate_limit_tokens_per_fill: int = 1000
    rate_limit_fill_interval_s: float = 1.0
    rate_limit_max_tokens: int | None = None
    rate_limit_per_address: int = 200
    login_rate_limit: int = 20
    rate_limit_addresses: int = 10_000
    rate_limit_service: str | None = None
    access_log_path: Path | str | None = None
    access_log_service: str | None = None
    access_log_flush_s: float = 1.0
    max_request_bytes: int = 4 * 1024 * 1024
    max_request_header_bytes: int = MAX_REQUEST_HEADER_BYTES
    max_request_headers: int = MAX_REQUEST_HEADERS
    stream_idle_timeout_s: float = 300.0
    request_headers_timeout_s: float = 10.0
    connection_idle_timeout_s: float = 3600.0
    request_timeout_s: float = 300.0
    unary_timeout_s: float = 60.0
    streaming_idle_timeout_s: float = 3600.0
    buffer_limit_bytes: int = 32 * 1024
    max_concurrent_streams: int = 100
    initial_stream_window_bytes: int = 64 * 1024
    initial_connection_window_bytes: int = 1024 * 1024
    max_downstream_connections: int = 50_000
    max_heap_bytes: int = 1024 * 1024 * 1024
    xff_num_trusted_hops: int = 0
    health_check_interval_s: float = 5.0
    connect_timeout_s: float = 1.0
    upstream_source_address: str | None = None
    jwt_issuer: str = "bhiv-identity"
    jwt_audience: str = "bhiv-core"
    jwt_clock_skew_s: int = math.ceil(DEFAULT_JWT_LEEWAY_S)
    jwks_cache_s: float = 10.0
    node_id: str = NODE_CLUSTER
    block_xds: str | None = None

    def __post_init__(self) -> None:
        for name in ("listen_port", "admin_port"):
            port = getattr(self, name)
            if not 0 < port < 65536:
                raise ValueError(f"{name} {port} is out of range")
        if self.listen_port == self.admin_port:
            raise ValueError("listen_port and admin_port must differ")
        if self.rate_limit_tokens_per_fill < 1 or (
            self.rate_limit_max_tokens is not None and self.rate_limit_max_tokens < 1
        ):
            raise ValueError("the rate limit needs at least one token per fill and in the bucket")
        if self.rate_limit_fill_interval_s < 0.05:
            raise ValueError("rate_limit_fill_interval_s must be at least 0.05 (Envoy's minimum)")
        # Envoy refills every bucket on the edge-wide bucket's tick: the login bucket's minute
        # must be a whole number of them.
        if (60_000 % round(self.rate_limit_fill_interval_s * 1000)) != 0:
            raise ValueError("rate_limit_fill_interval_s must divide a minute (the login bucket's interval)")
        if self.max_request_bytes < 1:
            raise ValueError("max_request_bytes must be positive")
        # Under the codec's backstop, or Envoy's codec would refuse first, with a reset.
        if not 0 < self.max_request_header_bytes < _CODEC_MAX_HEADERS_KB * 1024 // 2:
            raise ValueError(
                f"max_request_header_bytes must be positive and under {_CODEC_MAX_HEADERS_KB // 2} KiB"
            )
        if not 0 < self.max_request_headers < _CODEC_MAX_HEADERS // 2:
            raise ValueError(f"max_request_headers must be positive and under {_CODEC_MAX_HEADERS // 2}")
        if not self.cors_allow_origins:
            raise ValueError("cors_allow_origins is empty; browsers could not call the edge at all")
        if self.upstream_source_address is not None and not _is_ip(self.upstream_source_address):
            raise ValueError(f"upstream_source_address {self.upstream_source_address!r} is not an IP address")
        for name in _POSITIVE_FIELDS:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        for name in ("initial_stream_window_bytes", "initial_connection_window_bytes"):
            if not _MIN_WINDOW <= getattr(self, name) <= _MAX_WINDOW:
                raise ValueError(f"{name} must be between {_MIN_WINDOW} and {_MAX_WINDOW} (HTTP/2)")
        if self.xff_num_trusted_hops < 0:
            raise ValueError("xff_num_trusted_hops must not be negative")
        if not self.node_id or len(self.node_id) > 128:
            raise ValueError("node_id must be 1 to 128 characters")
        if self.block_xds is not None:
            host, _, port = self.block_xds.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"block_xds {self.block_xds!r} must be host:port")
        for name in ("rate_limit_service", "access_log_service"):
            value = getattr(self, name)
            if value is not None:
                host, _, port = value.rpartition(":")
                if not host or not port.isdigit() or not 0 < int(port) < 65536:
                    raise ValueError(f"{name} {value!r} must be host:port")

    @classmethod
    def from_settings(cls, settings: Settings, **fixed: Any) -> EdgeSettings:
        """Read the edge's limits from ``BHIV_EDGE_*`` settings; each unset one keeps its default.

        Args:
            settings: The launcher's settings (environment over the config file).
            **fixed: Fields the caller decides (ports, addresses, paths); they win over settings.

        Returns:
            The edge settings.

        Raises:
            ConfigError: A setting is malformed (the message names it).
            ValueError: The values are inconsistent (as the constructor checks).

        """
        default = cls()
        issuer, audience = token_claims(settings)
        values: dict[str, Any] = {
            "rate_limit_service": settings.raw("EDGE_RATE_LIMIT_SERVICE"),
            "access_log_service": settings.raw("EDGE_ACCESS_LOG_SERVICE"),
            "jwt_issuer": issuer,
            "jwt_audience": audience,
            "jwt_clock_skew_s": math.ceil(
                settings.positive_float("JWT_LEEWAY_SECONDS", DEFAULT_JWT_LEEWAY_S)
            ),
        }
        for name, (setting, kind) in EDGE_SETTINGS.items():
            current = getattr(default, name)
            if kind == "number":
                values[name] = settings.positive_float(setting, current)
            elif kind == "integer":
                values[name] = settings.positive_int(setting, current)
            else:
                values[name] = settings.get(setting, current, _non_negative_int, "an integer >= 0")
        return cls(**(values | fixed))

    @property
    def connect_host(self) -> str:
        """The address a local client dials to reach the listener (loopback for a wildcard)."""
        return _LOOPBACK_BY_WILDCARD.get(self.listen_host, self.listen_host)


def build_bootstrap(
    upstreams: Sequence[Upstream],
    settings: EdgeSettings,
    *,
    extra_http_filters: Sequence[HttpFilter] = (),
) -> dict[str, Any]:
    """Build the edge's Envoy bootstrap as a JSON-ready dict (proto3 JSON, proto field names).

    Args:
        upstreams: The services behind the edge; names and route prefixes must be unique.
        settings: Listener, admin, CORS, rate-limit, log and limit settings.
        extra_http_filters: Filters inserted after ``local_ratelimit`` and the Lua filter and before
            the router, in order.

    Returns:
        The bootstrap, ready for :func:`json.dumps`.

    Raises:
        ValueError: When ``upstreams`` is empty or repeats a name or a route prefix, or when an
            extra filter is a router.

    """
    _check_upstreams(upstreams)
    for extra in extra_http_filters:
        if extra.name == ROUTER_FILTER:
            raise ValueError("extra_http_filters must not contain the router; it is always last")
    bootstrap = Bootstrap(
        node=Node(id=settings.node_id, cluster=NODE_CLUSTER),
        admin=Admin(address=_socket_address(ADMIN_HOST, settings.admin_port)),
        static_resources=BootstrapStaticResources(
            listeners=[_listener(upstreams, settings, extra_http_filters)],
            clusters=[
                *(_cluster(upstream.name, [upstream], settings) for upstream in upstreams),
                _cluster(REFLECTION_CLUSTER, upstreams, settings, panic_routing=False),
                *_rate_limit_service_clusters(settings),
                *_access_log_service_clusters(settings),
                *([_jwks_cluster(settings)] if _jwks_owner(upstreams) else []),
                *_xds_clusters(settings),
            ],
        ),
        dynamic_resources=_dynamic_resources(settings),
        layered_runtime=LayeredRuntime(
            layers=[RuntimeLayer(name="bhiv-edge", static_layer=Struct.from_dict(dict(ENVOY_RUNTIME)))]
        ),
        overload_manager=_overload_manager(settings),
    )
    return _to_json_dict(bootstrap)


def _overload_manager(settings: EdgeSettings) -> OverloadManager:
    """Bound Envoy's connections and heap, shedding load before memory runs out (Envoy's edge advice)."""
    return OverloadManager(
        refresh_interval=timedelta(milliseconds=250),
        resource_monitors=[
            ResourceMonitor(
                name=MAX_CONNECTIONS_MONITOR,
                typed_config=_pack(
                    DownstreamConnectionsConfig(
                        max_active_downstream_connections=settings.max_downstream_connections
                    )
                ),
            ),
            ResourceMonitor(
                name=HEAP_MONITOR,
                typed_config=_pack(FixedHeapConfig(max_heap_size_bytes=settings.max_heap_bytes)),
            ),
        ],
        actions=[
            OverloadAction(
                name=action, triggers=[Trigger(name=HEAP_MONITOR, threshold=ThresholdTrigger(value=value))]
            )
            for action, value in OVERLOAD_ACTIONS.items()
        ],
    )


def streaming_methods(upstreams: Sequence[Upstream]) -> list[str]:
    """The paths of the contracts' streaming methods served by ``upstreams``, from the descriptors.

    Their routes have no route timeout (a server stream lasts as long as its client wants) and a
    stream idle timeout of their own.
    """
    prefixes = tuple(upstream.route_prefix for upstream in upstreams)
    return sorted(
        method_path(method)
        for service in all_services()
        for method in service.methods
        if (method.server_streaming or method.client_streaming) and method_path(method).startswith(prefixes)
    )


def build_route_config(upstreams: Sequence[Upstream], settings: EdgeSettings) -> RouteConfiguration:
    """Build the route table (a typed message, so RDS can serve the same table later).

    Order matters, first match wins: the refusals of other protocols, the request-size guard,
    health by ``x-bhiv-service`` (then an unknown one refused), health by the name asked about
    (the health router), reflection to every service, one route per streaming method (no route
    timeout), then one prefix route per upstream (its unary methods, with the unary timeout).

    Args:
        upstreams: The services behind the edge.
        settings: Supplies CORS origins and the request-size limit.

    Returns:
        The route configuration named ``edge``.

    """
    routes: list[Route] = []
    jwks_owner = _jwks_owner(upstreams)
    if jwks_owner:
        # GET: before the protocol refusals, which refuse any method but POST.
        routes.append(
            _with_script(
                Route(
                    name=JWKS_ROUTE,
                    match=RouteMatch(
                        prefix=JWKS_PATH,
                        headers=[HeaderMatcher(name=":method", string_match=StringMatcher(exact="GET"))],
                    ),
                    route=RouteAction(cluster=jwks_owner),
                ),
                JWKS_REWRITE,
            )
        )
    routes += [*_protocol_refusal_routes(), _oversized_request_route(settings.max_request_bytes)]
    routes += [
        _with_script(_route(f"mesh-only-{path.rsplit('/', 1)[1]}", path, REFLECTION_CLUSTER), MESH_ONLY)
        for path in MESH_ONLY_METHODS
    ]
    # An empty-name Check the health router sent to a service that is not serving says which are not.
    not_serving = _header(NOT_SERVING_HEADER, "%DYNAMIC_METADATA({}:{})%".format(*NOT_SERVING_METADATA))
    routes += [
        _route(
            f"health-{upstream.name}",
            HEALTH_PREFIX,
            upstream.name,
            headers=[HeaderMatcher(name=SERVICE_HEADER, string_match=StringMatcher(exact=upstream.name))],
            response_headers=[not_serving],
        )
        for upstream in upstreams
    ]
    routes.append(_unknown_service_header_route())
    routes.append(_with_script(_route("health-by-name", HEALTH_PREFIX, REFLECTION_CLUSTER), HEALTH_ROUTER))
    routes += [
        _route(f"reflection-{prefix.split('.')[2]}", prefix, REFLECTION_CLUSTER)
        for prefix in REFLECTION_PREFIXES
    ]
    owner = {upstream.route_prefix: upstream.name for upstream in upstreams}
    routes += [
        _route(
            f"stream-{path.rsplit('/', 1)[1]}",
            path,
            next(name for prefix, name in owner.items() if path.startswith(prefix)),
            idle_timeout=_seconds(settings.streaming_idle_timeout_s),
        )
        for path in streaming_methods(upstreams)
        if path not in MESH_ONLY_METHODS
    ]
    # Every other method of a service is unary: its call may wait this long for its response.
    unary = _seconds(settings.unary_timeout_s)
    routes += [
        _route(upstream.name, upstream.route_prefix, upstream.name, max_duration=unary)
        for upstream in upstreams
    ]
    return RouteConfiguration(
        name="edge",
        virtual_hosts=[
            VirtualHost(
                name="bhiv",
                domains=["*"],
                routes=routes,
                typed_per_filter_config={CORS_FILTER: _pack(_cors_policy(settings.cors_allow_origins))},
            )
        ],
        # Every cluster is static: Envoy refuses, at load, a route to a cluster that does not exist.
        validate_clusters=True,
    )


def write_bootstrap(
    path: Path,
    upstreams: Sequence[Upstream],
    settings: EdgeSettings,
    *,
    extra_http_filters: Sequence[HttpFilter] = (),
) -> Path:
    """Write the bootstrap as JSON, atomically (a temporary file renamed over ``path``).

    A watcher (or an Envoy reading the file) never sees a half-written config.

    Args:
        path: Where to write; the parent directory is created if needed.
        upstreams: The services behind the edge.
        settings: The edge settings.
        extra_http_filters: See :func:`build_bootstrap`.

    Returns:
        ``path``.

    """
    text = json.dumps(build_bootstrap(upstreams, settings, extra_http_filters=extra_http_filters), indent=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as tmp:
            tmp.write(text + "\n")
            tmp.flush()
            os.fsync(tmp.fileno())
        # mkstemp's 0600 stays: the file lives in the private data directory, read by an Envoy
        # running as the same user (a ConfigMap sets its own mode).
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def _check_upstreams(upstreams: Sequence[Upstream]) -> None:
    """Raise ValueError unless there is at least one upstream and names and prefixes are unique."""
    if not upstreams:
        raise ValueError("the edge needs at least one upstream")
    for attribute in ("name", "route_prefix"):
        values = [getattr(upstream, attribute) for upstream in upstreams]
        duplicates = sorted({value for value in values if values.count(value) > 1})
        if duplicates:
            raise ValueError(f"duplicate upstream {attribute}: {', '.join(duplicates)}")


def _listener(
    upstreams: Sequence[Upstream], settings: EdgeSettings, extra_http_filters: Sequence[HttpFilter]
) -> Listener:
    """Build the one listener: an HTTP connection manager for gRPC (h2c) and gRPC-web (HTTP/1.1).

    Hostile request headers, and what the caller gets (found by experiment with Envoy 1.40):

    * a field name with an underscore: dropped, the call goes on without it (see below);
    * more fields or bytes than the limits: RESOURCE_EXHAUSTED (gRPC-web: HTTP 431), from the
      header-limit filter; the connection's other streams go on;
    * more than the codec's backstop (:data:`_CODEC_MAX_HEADERS_KB`, :data:`_CODEC_MAX_HEADERS`):
      HTTP/2 resets that stream (INTERNAL for gRPC; other streams go on), HTTP/1.1 answers 431;
    * a field that is not valid HTTP (upper case, a NUL or CR in a value, ``connection``): HTTP/2
      resets that stream (PROTOCOL_ERROR: INTERNAL for gRPC; other streams go on, which is what
      ``override_stream_error_on_invalid_http_message`` buys, the default would end the connection),
      HTTP/1.1 answers 400;
    * one field longer than about twice the codec's backstop (4 MiB): the HTTP/2 header decoder
      gives up, and a decoding failure must end the connection (RFC 9113, 4.3): GOAWAY, every
      stream of the connection ends UNAVAILABLE (grpc clients do not heed
      SETTINGS_MAX_HEADER_LIST_SIZE). With Envoy's older HTTP/2 codec (nghttp2, its default) that
      was any field over 64 KiB, whatever the config: hence :data:`ENVOY_RUNTIME`.
    """
    hcm = HttpConnectionManager(
        stat_prefix="edge",
        codec_type=HttpConnectionManagerCodecType.AUTO,
        route_config=build_route_config(upstreams, settings),
        http_filters=[
            HttpFilter(name=GRPC_WEB_FILTER, typed_config=_pack(GrpcWeb())),
            HttpFilter(name=CORS_FILTER, typed_config=_pack(Cors())),
            # Before anything spends work (a rate-limit token, a token check) on a blocked
            # client; after gRPC-web and CORS, so their callers can read the refusal.
            *_block_filters(settings),
            HttpFilter(name=HEADER_LIMITS_FILTER, typed_config=_pack(_header_limits(settings))),
            HttpFilter(name=LOCAL_RATELIMIT_FILTER, typed_config=_pack(_local_rate_limit(settings))),
            *(
                []
                if settings.rate_limit_service is None
                else [HttpFilter(name=GLOBAL_RATELIMIT_FILTER, typed_config=_pack(_global_rate_limit()))]
            ),
            HttpFilter(name=LUA_FILTER, typed_config=_pack(_lua(upstreams))),
            # After the Lua filter, which refuses other protocols first (the Connect protocol's
            # JSON among them).
            # Before the transcoder: its refusal of a JSON call is then still known to be one
            # (the transcoder makes the request gRPC), and answered in JSON (:func:`_local_replies`).
            # The paths are the same either way.
            *(
                [HttpFilter(name=JWT_FILTER, typed_config=_pack(_jwt_authn(settings)))]
                if _jwks_owner(upstreams)
                else []
            ),
            HttpFilter(name=TRANSCODER_FILTER, typed_config=_pack(_transcoder(upstreams, settings))),
            *extra_http_filters,
            *_grpc_status_filters(settings),
            HttpFilter(name=ROUTER_FILTER, typed_config=_pack(Router(suppress_envoy_headers=True))),
        ],
        access_log=[_access_log(settings.access_log_path), *_grpc_access_log(settings)],
        # The edge is the first hop: the TCP peer is the client, and a client's own
        # x-forwarded-for or x-request-id is not trusted.
        use_remote_address=True,
        # Behind load balancers that append to x-forwarded-for, the client is that many entries
        # from the right; 0 (direct clients) ignores the header entirely.
        xff_num_trusted_hops=settings.xff_num_trusted_hops,
        # No client is "internal". An empty list would mean Envoy's default (loopback, RFC 1918
        # and ULA peers are internal): their requests would keep the x-envoy-* headers they send,
        # a forged x-envoy-external-address included, and get none from Envoy. A range no TCP
        # peer can come from makes every request an edge request.
        internal_address_config=HttpConnectionManagerInternalAddressConfig(cidr_ranges=[_NO_CLIENT_RANGE]),
        normalize_path=True,
        merge_slashes=True,
        # No gRPC method path contains an escaped slash; one is a probe for a routing bypass.
        path_with_escaped_slashes_action=HttpConnectionManagerPathWithEscapedSlashesAction.REJECT_REQUEST,
        common_http_protocol_options=HttpProtocolOptions(
            idle_timeout=_seconds(settings.connection_idle_timeout_s),
            # Underscores are legal in gRPC metadata names, but some servers read `x_a` as `x-a`,
            # so such a field could pass for another one: Envoy's edge advice is to refuse or drop
            # it. Dropped: refusing would reset the stream over HTTP/2 (INTERNAL, no status can be
            # sent at that point), and no service reads such a field. Envoy counts each drop
            # (http2.dropped_headers_with_underscores, http1.dropped_headers_with_underscores).
            headers_with_underscores_action=HttpProtocolOptionsHeadersWithUnderscoresAction.DROP_HEADER,
            max_headers_count=_CODEC_MAX_HEADERS,
        ),
        http2_protocol_options=Http2ProtocolOptions(
            max_concurrent_streams=settings.max_concurrent_streams,
            initial_stream_window_size=settings.initial_stream_window_bytes,
            initial_connection_window_size=settings.initial_connection_window_bytes,
            # An invalid header field resets its own stream instead of ending the connection.
            override_stream_error_on_invalid_http_message=True,
        ),
        # The codec's backstop; the limits callers meet are the header-limit filter's.
        max_request_headers_kb=_CODEC_MAX_HEADERS_KB,
        local_reply_config=_local_replies(settings),
        stream_idle_timeout=_seconds(settings.stream_idle_timeout_s),
        request_headers_timeout=_seconds(settings.request_headers_timeout_s),
        # The whole request; the timer stops when the response starts, so a server stream (and a
        # client stream the server answers early) outlives it. No contract method streams from
        # the client (a test keeps it so).
        request_timeout=_seconds(settings.request_timeout_s),
        server_name="bhiv-edge",
        always_set_request_id_in_response=True,
    )
    return Listener(
        name="edge",
        address=_socket_address(settings.listen_host, settings.listen_port),
        # Edge best practice: flow control keeps at most this much per connection in Envoy's buffers.
        per_connection_buffer_limit_bytes=settings.buffer_limit_bytes,
        # A port clash must fail loudly instead of two Envoys sharing the port.
        enable_reuse_port=False,
        filter_chains=[FilterChain(filters=[Filter(name=HCM_FILTER, typed_config=_pack(hcm))])],
    )


def rate_limit_actions() -> list[RateLimit]:
    """The descriptors each request yields for the rate limits, local and global alike.

    * ``[remote_address=<client>]``: every request, one bucket per client address;
    * ``[bhiv_rule=login, remote_address=<client>]``: ``Login`` and ``RefreshToken`` only.
    """
    login = RateLimitActionHeaderValueMatch(
        descriptor_key=RULE_KEY,
        descriptor_value=LOGIN_RULE,
        headers=[
            HeaderMatcher(
                name=":path", string_match=StringMatcher(safe_regex=RegexMatcher(regex=_LOGIN_PATHS))
            )
        ],
    )
    client = RateLimitAction(remote_address=RateLimitActionRemoteAddress())
    return [
        RateLimit(actions=[client]),
        RateLimit(actions=[RateLimitAction(header_value_match=login), client]),
    ]


def _local_rate_limit(settings: EdgeSettings) -> LocalRateLimit:
    """Build the edge's token buckets: edge-wide, per client address, and per address for logins.

    Every request takes a token from the edge-wide bucket and from its address's bucket; ``Login``
    and ``RefreshToken`` also from their address's login bucket (a descriptor entry without a
    value is a wildcard: Envoy keeps one bucket per value it meets). Over any of them, gRPC callers
    get RESOURCE_EXHAUSTED, and so do gRPC-web callers (see :func:`_local_replies`).
    """
    everyone = RuntimeFractionalPercent(
        default_value=FractionalPercent(numerator=100, denominator=FractionalPercentDenominatorType.HUNDRED),
    )
    address = RateLimitDescriptorEntry(key=REMOTE_ADDRESS_KEY)
    return LocalRateLimit(
        stat_prefix="edge_rate_limit",
        token_bucket=TokenBucket(
            max_tokens=settings.rate_limit_max_tokens or settings.rate_limit_tokens_per_fill,
            tokens_per_fill=settings.rate_limit_tokens_per_fill,
            fill_interval=_seconds(settings.rate_limit_fill_interval_s),
        ),
        descriptors=[
            LocalRateLimitDescriptor(
                entries=[address],
                token_bucket=TokenBucket(
                    max_tokens=settings.rate_limit_per_address,
                    tokens_per_fill=settings.rate_limit_per_address,
                    fill_interval=_seconds(settings.rate_limit_fill_interval_s),
                ),
            ),
            LocalRateLimitDescriptor(
                entries=[RateLimitDescriptorEntry(key=RULE_KEY, value=LOGIN_RULE), address],
                token_bucket=TokenBucket(
                    max_tokens=settings.login_rate_limit,
                    tokens_per_fill=settings.login_rate_limit,
                    fill_interval=timedelta(minutes=1),
                ),
            ),
        ],
        rate_limits=rate_limit_actions(),
        max_dynamic_descriptors=settings.rate_limit_addresses,
        # The edge-wide bucket applies to every request, whatever else matches.
        always_consume_default_token_bucket=True,
        # Both default to 0 %: without them the filter is configured but never limits anything.
        filter_enabled=everyone,
        filter_enforced=everyone,
        # Envoy's default for gRPC is UNAVAILABLE, which clients treat as retryable.
        rate_limited_as_resource_exhausted=True,
        response_headers_to_add=[
            HeaderValueOption(
                header=HeaderValue(key="x-bhiv-rate-limited", value="edge"),
                append_action=HeaderValueOptionHeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD,
            )
        ],
    )


def _global_rate_limit() -> GlobalRateLimit:
    """Ask the global rate-limit service about every request, with the local buckets' descriptors.

    If the service cannot be reached in time, the request goes on (the local buckets still hold):
    an outage of the limiter must not take the edge down with it.
    """
    return GlobalRateLimit(
        domain=RATE_LIMIT_DOMAIN,
        timeout=timedelta(milliseconds=100),
        failure_mode_deny=False,
        rate_limited_as_resource_exhausted=True,
        rate_limit_service=RateLimitServiceConfig(
            grpc_service=GrpcService(envoy_grpc=GrpcServiceEnvoyGrpc(cluster_name=RATE_LIMIT_CLUSTER)),
            transport_api_version=ApiVersion.V3,
        ),
        rate_limits=rate_limit_actions(),
    )


def _rate_limit_service_clusters(settings: EdgeSettings) -> list[Cluster]:
    """The global rate-limit service's cluster (gRPC, health-checked), when one is configured."""
    if settings.rate_limit_service is None:
        return []
    host, _, port = settings.rate_limit_service.rpartition(":")
    service = Upstream(RATE_LIMIT_CLUSTER, host, int(port), "/envoy.service.ratelimit.v3.")
    return [_cluster(RATE_LIMIT_CLUSTER, [service], settings)]


def rate_limit_service_config(settings: EdgeSettings) -> dict[str, Any]:
    """The global rate-limit service's configuration for the edge's descriptors (envoyproxy/ratelimit).

    Several Envoy replicas each keep their own local buckets, so N replicas admit N times the
    limits; a global service counts for all of them. Write this as the service's YAML (JSON is
    YAML) and set ``BHIV_EDGE_RATE_LIMIT_SERVICE`` on every replica. The service counts in fixed
    windows of a unit (second, minute), not token buckets: the limits are the same per unit.

    Args:
        settings: The edge settings whose limits the service enforces.

    Returns:
        ``{"domain": ..., "descriptors": [...]}``, ready for :func:`json.dumps` or a YAML dumper.

    """
    interval = settings.rate_limit_fill_interval_s
    if interval <= 1:
        per_address = {
            "unit": "second",
            "requests_per_unit": max(1, round(settings.rate_limit_per_address / interval)),
        }
    else:
        per_address = {
            "unit": "minute",
            "requests_per_unit": max(1, round(settings.rate_limit_per_address * 60 / interval)),
        }
    return {
        "domain": RATE_LIMIT_DOMAIN,
        "descriptors": [
            {"key": REMOTE_ADDRESS_KEY, "rate_limit": per_address},
            {
                "key": RULE_KEY,
                "value": LOGIN_RULE,
                "descriptors": [
                    {
                        "key": REMOTE_ADDRESS_KEY,
                        "rate_limit": {"unit": "minute", "requests_per_unit": settings.login_rate_limit},
                    }
                ],
            },
        ],
    }


def _transcoder(upstreams: Sequence[Upstream], settings: EdgeSettings) -> GrpcJsonTranscoder:
    """Build the gRPC-JSON transcoder: ``POST /<package>.<Service>/<Method>`` with a JSON body.

    Fed the contracts' descriptor set (:func:`~bhiv_core.runtime.contracts.descriptor_set`,
    inline in the bootstrap, so one file is the whole config), for every unary method of the
    services behind the edge: no ``google.api.http`` annotations are needed, Envoy maps each method
    to its gRPC path (``auto_mapping``). Errors come back as JSON ``google.rpc.Status`` (code,
    message, details with their ``@type``), with the HTTP status that matches the code. gRPC and
    gRPC-web requests pass through untouched; JSON to a method that does not exist is 404 here.
    """
    prefixes = tuple(upstream.route_prefix.removeprefix("/") for upstream in upstreams)
    return GrpcJsonTranscoder(
        proto_descriptor_bin=descriptor_set().SerializeToString(),
        services=[
            service.full_name for service in all_services() if f"{service.full_name}.".startswith(prefixes)
        ],
        print_options=GrpcJsonTranscoderPrintOptions(
            add_whitespace=False, always_print_primitive_fields=False
        ),
        # Methods without google.api.http annotations (all of ours) map to POST /<package>.<Service>/<Method>.
        auto_mapping=True,
        convert_grpc_status=True,
        request_validation_options=GrpcJsonTranscoderRequestValidationOptions(
            reject_unknown_method=True, reject_unknown_query_parameters=True
        ),
        # A unary request or response is buffered whole to convert it: as large as the services take.
        max_request_body_size=settings.max_request_bytes,
        max_response_body_size=settings.max_request_bytes,
    )


def _jwks_owner(upstreams: Sequence[Upstream]) -> str | None:
    """The upstream serving identity's JWKS RPC, or None: an edge without identity checks no tokens."""
    return next((u.name for u in upstreams if JWKS_METHOD.startswith(u.route_prefix)), None)


def exempt_paths() -> tuple[list[str], list[str]]:
    """What the edge lets through without a token: exact method paths, and path prefixes.

    The contracts' public RPCs (the ``access`` option, read by :mod:`bhiv_core.runtime.contracts`,
    the same rule the services apply), gRPC health and reflection (whole services without
    contracts of ours), and the JWKS document.
    """
    public = sorted(
        method_path(method)
        for service in all_services()
        for method in service.methods
        if policy_of(method).public
    )
    return public, [JWKS_PATH, HEALTH_PREFIX, *REFLECTION_PREFIXES]


def _jwt_authn(settings: EdgeSettings) -> JwtAuthentication:
    """Build the edge's token check: identity's EdDSA access tokens, verified before any service.

    Every call but those of :func:`exempt_paths` needs ``authorization: Bearer <token>`` signed by
    a key of identity's JWKS, with the issuer and audience the services require, and unexpired
    (within the services' leeway). A missing or bad token is answered by Envoy with HTTP 401, which
    Envoy turns into ``grpc-status: 16`` (UNAUTHENTICATED) for gRPC and gRPC-web; JSON callers get
    the transcoder's ``google.rpc.Status``. The token is forwarded: the services verify it again,
    and only they know revocations (logout, a disabled user, a changed role).

    The JWKS comes from identity's ``GetJwks`` through the edge itself (``GET`` :data:`JWKS_PATH`,
    rewritten into a JSON call), fetched when Envoy starts (without holding the listener back:
    identity may not be up yet, and the fetch goes through that very listener), retried every
    second until it succeeds, and fetched again every ``jwks_cache_s``: that bounds how long a
    token signed by a newly rotated key is refused at the edge. Envoy's jwt_authn does not refetch
    on an unknown ``kid``.
    """
    exact, prefixes = exempt_paths()
    return JwtAuthentication(
        providers={
            JWT_PROVIDER: JwtProvider(
                issuer=settings.jwt_issuer,
                audiences=[settings.jwt_audience],
                require_expiration=True,
                clock_skew_seconds=settings.jwt_clock_skew_s,
                remote_jwks=RemoteJwks(
                    http_uri=HttpUri(
                        uri=f"http://{_host_port(settings.connect_host, settings.listen_port)}{JWKS_PATH}",
                        cluster=JWKS_CLUSTER,
                        timeout=_seconds(max(settings.connect_timeout_s, 5.0)),
                    ),
                    cache_duration=_seconds(settings.jwks_cache_s),
                    async_fetch=JwksAsyncFetch(fast_listener=True, failed_refetch_duration=_seconds(1.0)),
                ),
                from_headers=[JwtHeader(name="authorization", value_prefix="Bearer ")],
                # The services verify the token again: it must reach them.
                forward=True,
                # The verified claims, for the access-log service (the caller's `sub`); never the token.
                payload_in_metadata=JWT_PAYLOAD_METADATA[1],
            )
        },
        rules=[
            *(RequirementRule(match=RouteMatch(path=path)) for path in exact),
            *(RequirementRule(match=RouteMatch(prefix=prefix)) for prefix in prefixes),
            RequirementRule(
                match=RouteMatch(prefix="/"), requires=JwtRequirement(provider_name=JWT_PROVIDER)
            ),
        ],
        # The CORS filter answers preflights before; a preflight never carries a token.
        bypass_cors_preflight=True,
        # Without it, the refusal carries `www-authenticate: Bearer realm="<the request's URL>"`,
        # echoing the client's Host: a long one made a response header the client resets the stream
        # over (found by the fuzzer). The reason stays in the reply (see _local_replies).
        strip_failure_response=True,
        stat_prefix="edge_jwt",
    )


def _jwks_cluster(settings: EdgeSettings) -> Cluster:
    """The edge's own listener, over HTTP/1.1, from which Envoy fetches the JWKS."""
    return Cluster(
        name=JWKS_CLUSTER,
        type=ClusterDiscoveryType.STATIC
        if _is_ip(settings.connect_host)
        else ClusterDiscoveryType.STRICT_DNS,
        connect_timeout=_seconds(settings.connect_timeout_s),
        per_connection_buffer_limit_bytes=settings.buffer_limit_bytes,
        load_assignment=ClusterLoadAssignment(
            cluster_name=JWKS_CLUSTER,
            endpoints=[
                LocalityLbEndpoints(
                    lb_endpoints=[
                        LbEndpoint(
                            endpoint=Endpoint(
                                address=_socket_address(settings.connect_host, settings.listen_port)
                            )
                        )
                    ]
                )
            ],
        ),
        upstream_bind_config=_self_bind(settings),
    )


def _host_port(host: str, port: int) -> str:
    """``host:port`` for a URI (an IPv6 address in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _header_limits(settings: EdgeSettings) -> Rbac:
    """Build the filter that refuses request headers over the limits, before anything else reads them.

    An RBAC filter whose two DENY policies are CEL conditions on the request as the filters see it
    (the edge's own headers added): ``size(request.headers)``, the number of fields, and
    ``request.total_size``, the header block's size (names plus values) plus the body received so
    far, which is none yet when the headers are checked. A denial is a 403 local reply, which
    :func:`_local_replies` turns into 431 and RESOURCE_EXHAUSTED.
    """

    def over(value: Expr, limit: int) -> Policy:
        return Policy(
            permissions=[Permission(any=True)],
            principals=[Principal(any=True)],
            condition=_cel_call("_>_", value, Expr(const_expr=Constant(int64_value=limit))),
        )

    request = Expr(ident_expr=ExprIdent(name="request"))
    fields = _cel_call("size", Expr(select_expr=ExprSelect(operand=request, field="headers")))
    size = Expr(select_expr=ExprSelect(operand=request, field="total_size"))
    return Rbac(
        rules=RbacRules(
            action=RbacAction.DENY,
            policies={
                TOO_MANY_HEADERS: over(fields, settings.max_request_headers),
                HEADERS_TOO_LARGE: over(size, settings.max_request_header_bytes),
            },
        ),
        rules_stat_prefix="request_headers_",
    )


def _cel_call(function: str, *args: Expr) -> Expr:
    """A CEL call expression, as Envoy reads a parsed one (``_>_`` is the ``>`` operator)."""
    return Expr(call_expr=ExprCall(function=function, args=list(args)))


def _local_replies(settings: EdgeSettings) -> LocalReplyConfig:
    """Give Envoy's own refusals of hostile headers a gRPC status, and gRPC-web an HTTP status.

    A local reply to a gRPC request carries a ``grpc-status`` derived from its HTTP status, and no
    HTTP status derives RESOURCE_EXHAUSTED or INVALID_ARGUMENT (403 is PERMISSION_DENIED, 400
    INTERNAL, 431 UNKNOWN). Envoy keeps a ``grpc-status`` a mapper adds, so:

    * the header-limit filter's denials: 431, RESOURCE_EXHAUSTED, and a message naming the limit;
    * any other 431 (the HTTP/1.1 codec's backstop): RESOURCE_EXHAUSTED;
    * any 400 (a path with an escaped slash, a malformed HTTP/1.1 header...): INVALID_ARGUMENT,
      unless the reply already has a status;
    * a body larger than a filter may buffer (the health router reads at most a stream's window):
      RESOURCE_EXHAUSTED, with a hint (gRPC-web: HTTP 413);
    * a call past its deadline (its grpc-timeout, or the unary limit): DEADLINE_EXCEEDED, saying so.
    * a token the edge refuses (jwt_authn): UNAUTHENTICATED whatever the reason; JSON callers get a
      ``google.rpc.Status``.
    """
    pseudo = "pseudo-headers and the edge's own headers included"
    too_many = f"too many request header fields: at most {settings.max_request_headers}, {pseudo}"
    too_large = (
        f"request headers too large: at most {settings.max_request_header_bytes} bytes of names "
        f"and values, {pseudo}"
    )
    return LocalReplyConfig(
        mappers=[
            *_blocked_mappers(),
            _mapper(_denied_by(TOO_MANY_HEADERS), _RESOURCE_EXHAUSTED, status_code=431, body=too_many),
            _mapper(_denied_by(HEADERS_TOO_LARGE), _RESOURCE_EXHAUSTED, status_code=431, body=too_large),
            _mapper("response.code == 431", _RESOURCE_EXHAUSTED),
            # Envoy's own 400s mostly have no body: say which check refused the request.
            _mapper(
                "response.code_details == 'request_payload_too_large'",
                _RESOURCE_EXHAUSTED,
                body="request too large for the edge to read: a health request without the "
                f"{SERVICE_HEADER} header must be small enough for the edge to read the service name",
            ),
            _mapper(
                "response.code == 400",
                _INVALID_ARGUMENT,
                body_format="malformed request: %RESPONSE_CODE_DETAILS%",
            ),
            # A gRPC-web call over a rate limit would get HTTP 429, which gRPC-web clients read as
            # UNAVAILABLE (and retry): it gets gRPC's answer instead, a trailers-only 200 with
            # RESOURCE_EXHAUSTED. The grpc_web filter has made its content type application/grpc;
            # other requests (JSON) keep the 429.
            _mapper(
                "response.code_details in ['local_rate_limited', 'request_rate_limited'] && "
                "request.headers['content-type'].startsWith('application/grpc')",
                _RESOURCE_EXHAUSTED,
                status_code=200,
                body="",
                message=RATE_LIMITED_MESSAGE,
            ),
            # The edge's token check: jwt_authn answers 401, or 403 for a token of another
            # audience, where the services answer UNAUTHENTICATED: both become 401, which Envoy
            # makes grpc-status 16 for gRPC (gRPC-web clients read a 401 as UNAUTHENTICATED too,
            # and get the status as well). Its reply has no body (strip_failure_response): the
            # reason comes from the response details, like `jwt_authn_access_denied{Jwt_is_missing}`.
            # JSON gets the transcoder's error shape, a google.rpc.Status.
            _mapper(
                f"{_JWT_DENIED} && request.headers['content-type'].startsWith('application/json')",
                _UNAUTHENTICATED,
                status_code=401,
                body_json={"code": int(_UNAUTHENTICATED), "message": JWT_REFUSED},
            ),
            _mapper(_JWT_DENIED, _UNAUTHENTICATED, status_code=401, body_format=JWT_REFUSED),
            # Envoy's own message ("downstream duration timeout") does not say whose limit it was.
            _mapper(
                "response.code_details == 'max_duration_timeout'",
                _DEADLINE_EXCEEDED,
                body="deadline exceeded at the edge: the call's grpc-timeout, or the edge's limit for "
                f"unary calls ({settings.unary_timeout_s:g} s)",
            ),
        ]
    )


def _denied_by(policy: str) -> str:
    """A CEL condition: the header-limit filter refused the request by ``policy``."""
    return f"response.code_details == 'rbac_access_denied_matched_policy[{policy}]'"


def _mapper(
    condition: str,
    grpc_status: str,
    *,
    status_code: int | None = None,
    body: str | None = None,
    body_format: str | None = None,
    message: str | None = None,
    body_json: Mapping[str, Any] | None = None,
) -> ResponseMapper:
    """Map a local reply matching the CEL ``condition`` to a gRPC status, and maybe a new HTTP status.

    Args:
        condition: A CEL expression on the reply (``response.code``, ``response.code_details``).
        grpc_status: The ``grpc-status`` added when the reply has none, so a filter's own stays.
        status_code: The new HTTP status, or None to keep it.
        body: The new body, which gRPC callers read as the status message; None keeps it.
        body_format: A format (Envoy's command operators) for the body, instead of ``body``.
        message: A ``grpc-message`` to add, for replies whose body is not the message.
        body_json: A JSON body (``application/json``; string values may hold command operators),
            instead of ``body`` or ``body_format``.

    """
    return ResponseMapper(
        filter=AccessLogFilter(
            extension_filter=ExtensionFilter(
                name=CEL_FILTER, typed_config=_pack(ExpressionFilter(expression=condition))
            )
        ),
        status_code=status_code,
        body=None if body is None else DataSource(inline_string=body),
        body_format_override=SubstitutionFormatString(
            json_format=Struct.from_dict(dict(body_json)), content_type="application/json"
        )
        if body_json is not None
        else None
        if body_format is None
        else SubstitutionFormatString(text_format_source=DataSource(inline_string=body_format)),
        headers_to_add=[
            HeaderValueOption(
                header=HeaderValue(key=key, value=value),
                append_action=HeaderValueOptionHeaderAppendAction.ADD_IF_ABSENT,
            )
            for key, value in ((_GRPC_STATUS, grpc_status), ("grpc-message", message))
            if value is not None
        ],
    )


def _lua(upstreams: Sequence[Upstream]) -> Lua:
    """Build the Lua filter: the health router and fixed replies, each run only where a route names it.

    Fixed replies are Lua local replies on ordinary routes, not ``direct_response`` routes, because
    Envoy's CORS filter skips those, and a browser page reads only replies that carry
    ``access-control-allow-origin``.
    """
    owners = [(upstream.route_prefix.strip("/"), upstream.name) for upstream in upstreams]
    # A Connect error: Connect clients show its message as it is; curl prints readable JSON.
    hint = json.dumps({"code": "unimplemented", "message": PROTOCOL_HINT})
    names = ", ".join(upstream.name for upstream in upstreams)
    scripts = {
        HEALTH_ROUTER: health_router_script(owners, SERVICE_HEADER),
        "refuse-method": reply_script(405, hint, {"content-type": "application/json", "allow": "POST"}),
        "refuse-media-type": reply_script(415, hint, {"content-type": "application/json"}),
        # A gRPC trailers-only reply, status and message in headers, so that the grpc_web filter
        # passes the status to gRPC-web callers as it is.
        UNKNOWN_SERVICE: reply_script(
            200,
            "",
            {
                "content-type": "application/grpc",
                "grpc-status": "5",  # NOT_FOUND
                "grpc-message": f"{SERVICE_HEADER} names no service of the mesh ({names})",
            },
        ),
        # GET /.well-known/jwks.json becomes the JSON call of GetJwks: the transcoder (next in the
        # chain) answers it with {"keys": [...], "jwksJson": ...}, a JWKS document for Envoy.
        JWKS_REWRITE: rewrite_script(
            {":method": "POST", ":path": JWKS_METHOD, "content-type": "application/json"}
        ),
        MESH_ONLY: reply_script(
            200,
            "",
            {
                "content-type": "application/grpc",
                "grpc-status": "7",  # PERMISSION_DENIED
                "grpc-message": "only the mesh's services call this method, on its service directly "
                "(outside callers read revocations with ListRevocations)",
            },
        ),
    }
    return Lua(
        stat_prefix="edge_lua",
        # No default_source_code: without a route naming a script, the filter does nothing.
        source_codes={name: DataSource(inline_string=script) for name, script in scripts.items()},
        # The router's choice follows the x-bhiv-service header the health router fills in.
        clear_route_cache=True,
    )


def _cors_policy(origins: Sequence[str]) -> CorsPolicy:
    """Build the browsers' policy: gRPC-web POSTs from the allowed origins, gRPC status readable."""
    return CorsPolicy(
        allow_origin_string_match=[_origin_matcher(origin) for origin in origins],
        allow_methods=",".join(CORS_ALLOW_METHODS),
        allow_headers=",".join(CORS_ALLOW_HEADERS),
        expose_headers=",".join(CORS_EXPOSE_HEADERS),
        max_age="7200",
        # Preflights from other origins are answered here; gRPC servers cannot answer OPTIONS.
        forward_not_matching_preflights=False,
    )


def _origin_matcher(origin: str) -> StringMatcher:
    """Match an origin exactly, or by regex for an entry starting with ``^``."""
    if origin.startswith("^"):
        return StringMatcher(safe_regex=RegexMatcher(regex=origin))
    return StringMatcher(exact=origin)


def _route(
    name: str,
    prefix: str,
    cluster: str,
    *,
    headers: Sequence[HeaderMatcher] = (),
    response_headers: Sequence[HeaderValueOption] = (),
    max_duration: timedelta = timedelta(0),
    idle_timeout: timedelta | None = None,
) -> Route:
    """Route a path prefix to ``cluster``, bounded by the client's grpc-timeout.

    Args:
        name: The route's name.
        prefix: The path prefix it matches.
        cluster: Where it goes.
        headers: Header matchers, all of which must match too.
        response_headers: Headers set on the response.
        max_duration: The longest a call may last, and the cap on a client's ``grpc-timeout``; 0
            (no limit) for routes that carry streams (health ``Watch``, reflection, the streaming
            methods). A route with ``max_stream_duration`` ignores the route ``timeout`` (Envoy's
            rule), and a client's ``grpc-timeout`` would replace it, so both are set here.
        idle_timeout: Replaces the connection manager's stream idle timeout on this route.

    """
    return Route(
        name=name,
        # Prefix only: a `grpc: {}` match would turn gRPC-web POSTs and CORS preflights into 404s.
        match=RouteMatch(prefix=prefix, headers=list(headers)),
        route=RouteAction(
            cluster=cluster,
            # Unused: max_stream_duration governs (0 disables the route timeout, for clarity).
            timeout=timedelta(0),
            idle_timeout=idle_timeout,
            # The client's grpc-timeout becomes the stream's deadline, up to max_duration (0: no cap).
            max_stream_duration=RouteActionMaxStreamDuration(
                max_stream_duration=max_duration or None, grpc_timeout_header_max=max_duration
            ),
        ),
        response_headers_to_add=list(response_headers),
    )


def _header(key: str, value: str) -> HeaderValueOption:
    """Set a response header (replacing one the upstream sent); an empty value adds nothing."""
    return HeaderValueOption(
        header=HeaderValue(key=key, value=value),
        append_action=HeaderValueOptionHeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD,
    )


def _with_script(route: Route, script: str) -> Route:
    """Run the Lua filter's ``script`` on ``route``."""
    route.typed_per_filter_config = {LUA_FILTER: _pack(LuaPerRoute(name=script))}
    return route


def _protocol_refusal_routes() -> list[Route]:
    """Refuse, at the edge, what is neither gRPC, gRPC-web nor JSON for a service, instead of resetting.

    * a method other than POST: 405 (``allow: POST``), except CORS preflights (``OPTIONS`` with
      ``access-control-request-method``), which the CORS filter answers on the routes below;
    * the Connect protocol (a ``connect-protocol-version`` header), whatever its content type,
      JSON included: 415;
    * a POST whose content type is neither ``application/grpc*`` (gRPC-web's
      ``application/grpc-web*`` is) nor ``application/json``: 415 (``application/proto``, forms...);
    * JSON to health or reflection (the transcoder serves the ``bhiv.*`` services only): 415.

    JSON to a ``bhiv.*`` service goes on to the gRPC-JSON transcoder (:func:`_transcoder`). The
    routes name a cluster they never reach: the Lua filter answers first.
    """
    not_post_or_options = HeaderMatcher(
        name=":method",
        string_match=StringMatcher(safe_regex=RegexMatcher(regex="POST|OPTIONS")),
        invert_match=True,
    )
    options = HeaderMatcher(name=":method", string_match=StringMatcher(exact="OPTIONS"))
    not_a_preflight = HeaderMatcher(name="access-control-request-method", present_match=False)
    post = HeaderMatcher(name=":method", string_match=StringMatcher(exact="POST"))
    connect = HeaderMatcher(name="connect-protocol-version", present_match=True)
    not_grpc = HeaderMatcher(
        name="content-type",
        string_match=StringMatcher(prefix="application/grpc"),
        invert_match=True,
        # No content type at all is refused too.
        treat_missing_header_as_empty=True,
    )
    neither_grpc_nor_json = HeaderMatcher(
        name="content-type",
        string_match=StringMatcher(safe_regex=RegexMatcher(regex=_GRPC_OR_JSON)),
        invert_match=True,
        treat_missing_header_as_empty=True,
    )
    refusals = [
        ("refuse-method", "/", [not_post_or_options], "refuse-method"),
        ("refuse-options", "/", [options, not_a_preflight], "refuse-method"),
        ("refuse-connect", "/", [post, connect], "refuse-media-type"),
        ("refuse-media-type", "/", [post, neither_grpc_nor_json], "refuse-media-type"),
        ("refuse-json-health", HEALTH_PREFIX, [post, not_grpc], "refuse-media-type"),
        *(
            (f"refuse-json-reflection-{prefix.split('.')[2]}", prefix, [post, not_grpc], "refuse-media-type")
            for prefix in REFLECTION_PREFIXES
        ),
    ]
    return [
        _with_script(_route(name, prefix, REFLECTION_CLUSTER, headers=headers), script)
        for name, prefix, headers, script in refusals
    ]


def _unknown_service_header_route() -> Route:
    """Answer a health call whose ``x-bhiv-service`` names no upstream NOT_FOUND, at the edge.

    The known names are matched by the routes before this one; without this route the call would
    fall through to some service, which would report its own health (SERVING) under a wrong name.
    """
    present = HeaderMatcher(name=SERVICE_HEADER, present_match=True)
    return _with_script(
        _route("health-unknown-service", HEALTH_PREFIX, REFLECTION_CLUSTER, headers=[present]),
        UNKNOWN_SERVICE,
    )


def _oversized_request_route(max_request_bytes: int) -> Route:
    """Refuse a request whose content-length exceeds the limit, without buffering anything.

    gRPC-web from a browser always declares its length. gRPC over HTTP/2 usually does not; those
    bodies stream through under flow control (Envoy holds at most the buffer limit) and the services
    enforce the same limit per message. What callers see:

    * gRPC: RESOURCE_EXHAUSTED, from the ``grpc-status`` added here (Envoy keeps a ``grpc-status``
      already set on a local reply; it would otherwise map 413 to UNKNOWN);
    * gRPC-web: HTTP 413 (the grpc_web filter turns a non-gRPC local reply into grpc-status UNKNOWN
      and keeps the HTTP status), like HTTP 429 for its rate limit;
    * anything else: HTTP 413.
    """
    return Route(
        name="request-too-large",
        match=RouteMatch(
            prefix="/",
            headers=[
                HeaderMatcher(
                    name="content-length", range_match=Int64Range(start=max_request_bytes + 1, end=_INT64_MAX)
                )
            ],
        ),
        direct_response=DirectResponseAction(
            status=413, body=DataSource(inline_string=f"request larger than {max_request_bytes} bytes")
        ),
        response_headers_to_add=[
            HeaderValueOption(
                header=HeaderValue(key="grpc-status", value="8"),
                append_action=HeaderValueOptionHeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD,
            )
        ],
    )


def _cluster(
    name: str, upstreams: Sequence[Upstream], settings: EdgeSettings, *, panic_routing: bool = True
) -> Cluster:
    """Build a cluster over ``upstreams`` speaking HTTP/2 (h2c), health-checked with gRPC health.

    Args:
        name: The cluster's name.
        upstreams: Its endpoints.
        settings: Timeouts and the health-check interval.
        panic_routing: Whether to spread load over all hosts when most are unhealthy (Envoy's
            default). Off for the all-services cluster: a dead service there must be skipped, since
            any live one can answer.

    """
    all_ips = all(_is_ip(upstream.host) for upstream in upstreams)
    interval = _seconds(settings.health_check_interval_s)
    return Cluster(
        name=name,
        type=ClusterDiscoveryType.STATIC if all_ips else ClusterDiscoveryType.STRICT_DNS,
        dns_lookup_family=ClusterDnsLookupFamily.V4_PREFERRED,
        connect_timeout=_seconds(settings.connect_timeout_s),
        per_connection_buffer_limit_bytes=settings.buffer_limit_bytes,
        load_assignment=ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[
                LocalityLbEndpoints(
                    lb_endpoints=[
                        LbEndpoint(endpoint=Endpoint(address=_socket_address(upstream.host, upstream.port)))
                        for upstream in upstreams
                    ]
                )
            ],
        ),
        typed_extension_protocol_options={
            UPSTREAM_HTTP_OPTIONS: _pack(
                UpstreamHttpProtocolOptions(
                    explicit_http_config=HttpProtocolOptionsExplicitHttpConfig(
                        http2_protocol_options=Http2ProtocolOptions(
                            initial_stream_window_size=settings.initial_stream_window_bytes,
                            initial_connection_window_size=settings.initial_connection_window_bytes,
                            # Finds a dead service process behind a silent connection.
                            connection_keepalive=KeepaliveSettings(
                                interval=timedelta(seconds=30), timeout=timedelta(seconds=5)
                            ),
                        )
                    )
                )
            )
        },
        circuit_breakers=CircuitBreakers(
            thresholds=[
                CircuitBreakersThresholds(
                    max_connections=1024, max_pending_requests=1024, max_requests=10_000, max_retries=3
                )
            ]
        ),
        health_checks=[
            HealthCheck(
                timeout=timedelta(seconds=1),
                interval=interval,
                # Without traffic Envoy would slow checks to once a minute; a restarted service
                # would wait that long to be used again.
                no_traffic_interval=interval,
                unhealthy_threshold=2,
                healthy_threshold=1,
                grpc_health_check=HealthCheckGrpcHealthCheck(),
            )
        ],
        common_lb_config=None
        if panic_routing
        else ClusterCommonLbConfig(healthy_panic_threshold=Percent(value=0.0)),
        upstream_bind_config=_bind(settings),
    )


def _bind(settings: EdgeSettings) -> BindConfig | None:
    """Where upstream connections leave from: ``upstream_source_address``, or the system's choice."""
    if settings.upstream_source_address is None:
        return None
    return BindConfig(source_address=_socket_address(settings.upstream_source_address, 0).socket_address)


def _grpc_status_filters(settings: EdgeSettings) -> list[HttpFilter]:
    """Record the upstream's gRPC status in dynamic metadata, for the access-log service.

    Envoy's access log reads the response as the client gets it, and for gRPC-web and JSON that is
    no longer gRPC: the grpc_web filter moves the trailers (``grpc-status`` among them) into the
    body, the transcoder turns them into JSON, so the log shows no status for a gRPC-web reply with
    a body (``%GRPC_STATUS%`` reads ``Unknown``). This Lua filter sits last before the router, so on
    the way back it is the first to see the upstream's reply, trailers included, whatever the
    client speaks; it copies ``grpc-status`` (from the headers of a trailers-only reply, else from
    the trailers) into :data:`~bhiv_core.edge.lua_scripts.GRPC_STATUS_METADATA`, which every
    access-log entry carries. It waits for the trailers without buffering the body (streams pass
    through). Only with an access-log service: without one nobody reads it.
    """
    if settings.access_log_service is None:
        return []
    script = Lua(
        stat_prefix="edge_grpc_status", default_source_code=DataSource(inline_string=grpc_status_script())
    )
    return [HttpFilter(name=GRPC_STATUS_FILTER, typed_config=_pack(script))]


def _grpc_access_log(settings: EdgeSettings) -> list[AccessLog]:
    """Stream every request's log entry to sentinel over gRPC (Envoy's access-log service), if set.

    Each entry carries the client address the edge trusts (``downstream_remote_address``, per
    ``use_remote_address`` and the trusted hops), the path, the response code and details (the
    edge's own refusals: rate limits, token checks, RBAC, header limits, unknown routes), the
    ``grpc-status`` of the response headers and trailers, and the dynamic metadata: the verified
    token's claims (:data:`JWT_PAYLOAD_METADATA`) and the upstream's status recorded for gRPC-web
    and JSON (:func:`_grpc_status_filters`). Envoy buffers entries and sends them every
    ``access_log_flush_s`` (or per 16 KiB) on one stream per worker; the stream is lossy by design
    (Envoy drops what it cannot send and reconnects).
    """
    if settings.access_log_service is None:
        return []
    config = HttpGrpcAccessLogConfig(
        common_config=CommonGrpcAccessLogConfig(
            log_name=ACCESS_LOG_NAME,
            grpc_service=GrpcService(
                envoy_grpc=GrpcServiceEnvoyGrpc(cluster_name=ACCESS_LOG_CLUSTER),
                timeout=_seconds(max(settings.connect_timeout_s, 1.0)),
            ),
            transport_api_version=ApiVersion.V3,
            buffer_flush_interval=_seconds(settings.access_log_flush_s),
            buffer_size_bytes=16 * 1024,
        ),
        additional_request_headers_to_log=list(ACCESS_LOG_HEADERS),
        additional_response_headers_to_log=[_GRPC_STATUS],
        additional_response_trailers_to_log=[_GRPC_STATUS],
    )
    return [AccessLog(name="envoy.access_loggers.http_grpc", typed_config=_pack(config))]


def _access_log_service_clusters(settings: EdgeSettings) -> list[Cluster]:
    """Sentinel's access-log port (HTTP/2), left from ``upstream_source_address``, when one is set.

    Sentinel takes connections on that port only from the trusted edge addresses, which is why the
    cluster binds the same source address as every upstream. No health check: the port serves the
    access-log service only, and Envoy's logger reconnects by itself.
    """
    if settings.access_log_service is None:
        return []
    host, _, port = settings.access_log_service.rpartition(":")
    service = Upstream(ACCESS_LOG_CLUSTER, host, int(port), ACCESS_LOG_SERVICE_PREFIX)
    cluster = _cluster(ACCESS_LOG_CLUSTER, [service], settings)
    cluster.health_checks = []
    return [cluster]


def _access_log(path: Path | str | None) -> AccessLog:
    """Log JSON lines (one object per request) to ``path``, or to stdout."""
    log_format = SubstitutionFormatString(json_format=Struct.from_dict(dict(ACCESS_LOG_FORMAT)))
    if path is None:
        return AccessLog(
            name="envoy.access_loggers.stdout", typed_config=_pack(StdoutAccessLog(log_format=log_format))
        )
    return AccessLog(
        name="envoy.access_loggers.file",
        typed_config=_pack(FileAccessLog(path=str(path), log_format=log_format)),
    )


def _socket_address(host: str, port: int) -> Address:
    """Build a TCP address."""
    return Address(socket_address=SocketAddress(address=host, port_value=port))


def _seconds(value: float) -> timedelta:
    """Convert seconds to a duration."""
    return timedelta(seconds=value)


def _is_ip(host: str) -> bool:
    """Tell whether ``host`` is an IP literal (a STATIC cluster) rather than a DNS name."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _pack(message: betterproto2.Message) -> AnyProto:
    """Pack a message into ``google.protobuf.Any`` (JSON: its fields plus ``@type``)."""
    return AnyProto.pack(message)


def _to_json_dict(message: betterproto2.Message) -> dict[str, Any]:
    """Convert to proto3 JSON with the proto field names (as in Envoy's docs); Envoy accepts either casing."""
    result: dict[str, Any] = message.to_dict(casing=betterproto2.Casing.SNAKE)
    return result


# ----------------------------------------------------------------------------- IP blocks (sentinel)


def _block_filters(settings: EdgeSettings) -> list[HttpFilter]:
    """The IP-block filter: Envoy's RBAC filter, its config discovered from sentinel over ECDS.

    A discovered filter config (ECDS) reaches connections that are already open within
    milliseconds; a listener-level list would only reach them after a drain. Until sentinel first
    answers, and whenever it cannot be reached, the filter lets everything through (the default
    config, applied without warming, so the edge serves at once) or keeps the last list it got.
    Sentinel builds the config (:mod:`bhiv_core.services.sentinel.blocks.rbac`): the allowlist,
    then a trie of the blocked ranges on the client address the edge trusts (RBAC's
    ``remote_ip``: the TCP peer, or per ``xff_num_trusted_hops``). Two filters: the whole list,
    and the newest blocks alone (:data:`RECENT_BLOCK_FILTER`), the one a new block changes, so
    Envoy applies a few entries at once rather than 10,000 (about 0.1 s).
    """
    if settings.block_xds is None:
        return []
    return [
        HttpFilter(
            name=name,
            config_discovery=ExtensionConfigSource(
                config_source=ConfigSource(ads=AggregatedConfigSource(), resource_api_version=ApiVersion.V3),
                default_config=_pack(Rbac()),
                apply_default_config_without_warming=True,
                type_urls=[RBAC_TYPE_URL],
            ),
        )
        for name in (BLOCK_FILTER, RECENT_BLOCK_FILTER)
    ]


def _xds_clusters(settings: EdgeSettings) -> list[Cluster]:
    """Sentinel's xDS port (HTTP/2), reached from the edge's upstream source address like the services."""
    if settings.block_xds is None:
        return []
    host, _, port = settings.block_xds.rpartition(":")
    host = host.strip("[]")
    return [
        Cluster(
            name=XDS_CLUSTER,
            type=ClusterDiscoveryType.STATIC if _is_ip(host) else ClusterDiscoveryType.STRICT_DNS,
            dns_lookup_family=ClusterDnsLookupFamily.V4_PREFERRED,
            connect_timeout=_seconds(settings.connect_timeout_s),
            load_assignment=ClusterLoadAssignment(
                cluster_name=XDS_CLUSTER,
                endpoints=[
                    LocalityLbEndpoints(
                        lb_endpoints=[LbEndpoint(endpoint=Endpoint(address=_socket_address(host, int(port))))]
                    )
                ],
            ),
            typed_extension_protocol_options={
                UPSTREAM_HTTP_OPTIONS: _pack(
                    UpstreamHttpProtocolOptions(
                        explicit_http_config=HttpProtocolOptionsExplicitHttpConfig(
                            http2_protocol_options=Http2ProtocolOptions(
                                # Finds a sentinel gone silent; Envoy then reconnects.
                                connection_keepalive=KeepaliveSettings(
                                    interval=timedelta(seconds=15), timeout=timedelta(seconds=5)
                                ),
                            )
                        )
                    )
                )
            },
            upstream_bind_config=_bind(settings),
        )
    ]


def _dynamic_resources(settings: EdgeSettings) -> BootstrapDynamicResources | None:
    """The ADS stream to sentinel (state of the world); everything else stays static."""
    if settings.block_xds is None:
        return None
    return BootstrapDynamicResources(
        ads_config=ApiConfigSource(
            api_type=ApiConfigSourceApiType.GRPC,
            transport_api_version=ApiVersion.V3,
            grpc_services=[
                GrpcService(
                    envoy_grpc=GrpcServiceEnvoyGrpc(
                        cluster_name=XDS_CLUSTER,
                        # Reconnects to a restarted sentinel within a second or two (Envoy's
                        # default backoff grows to 30 s); the list it had stays in force meanwhile.
                        retry_policy=RetryPolicy(
                            retry_back_off=BackoffStrategy(
                                base_interval=timedelta(milliseconds=250), max_interval=timedelta(seconds=2)
                            )
                        ),
                    )
                )
            ],
            set_node_on_first_message_only=True,
        )
    )


def _blocked_mappers() -> list[ResponseMapper]:
    """A blocked client's reply: PERMISSION_DENIED (HTTP 403) saying that it is blocked, and until when.

    gRPC (and gRPC-web, which the grpc_web filter has made gRPC) gets ``grpc-status: 7`` and the
    message; JSON gets a ``google.rpc.Status``; anything else a 403 with the message.
    """
    blocked = f"response.code_details.startsWith('{BLOCKED_DETAILS}')"
    return [
        _mapper(
            f"{blocked} && request.headers['content-type'].startsWith('application/json')",
            _PERMISSION_DENIED,
            status_code=403,
            body_json={"code": int(_PERMISSION_DENIED), "message": BLOCKED_MESSAGE},
        ),
        _mapper(blocked, _PERMISSION_DENIED, status_code=403, body_format=BLOCKED_MESSAGE),
    ]


def _self_bind(settings: EdgeSettings) -> BindConfig | None:
    """Where the edge's calls to its own listener (the JWKS fetch) leave from.

    From the host's own 127.0.0.1 (or ::1), which sentinel never blocks, when the listener is on a
    loopback address: the services' source address (``upstream_source_address``, 127.0.0.2 in the
    mesh) is an ordinary client address to the listener, and may be blocked. Otherwise the
    system's choice (the listener's own address, which then belongs in the block allowlist).
    """
    if settings.upstream_source_address is None:
        return None  # the system's choice: the listener's own address, 127.0.0.1 on loopback
    try:
        host = ipaddress.ip_address(settings.connect_host)
    except ValueError:
        return None
    if not host.is_loopback:
        return None
    own = "127.0.0.1" if host.version == 4 else "::1"
    return BindConfig(source_address=_socket_address(own, 0).socket_address)
