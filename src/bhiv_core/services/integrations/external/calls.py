"""External API calls through an integration (``bhiv.integrations.v1.ExternalApiService``).

A call is ``method`` on the integration's base URL joined with ``path``, sent by the one
SSRF-safe client (:class:`~bhiv_core.outbound.http.OutboundClient`): the host must be on
``BHIV_OUTBOUND_ALLOWLIST``, every address it resolves to is checked and the connection goes to a
checked address, redirects are followed only when the request asks (each hop checked again,
credentials dropped on a change of origin). The integration's secret is opened only here, put
into the request's headers (``Authorization: Bearer``, the API-key header, or HTTP Basic), and
never logged, returned or put in an error: the client's errors name the host at most. A caller's
header that would carry or override a credential, or the framing, is INVALID_ARGUMENT.

How the client's outcomes map to codes: HOST_NOT_ALLOWED and ADDRESS_FORBIDDEN are
PERMISSION_DENIED with that ``ErrorInfo`` reason and the host in its metadata; a timeout is
DEADLINE_EXCEEDED (``EXTERNAL_TIMEOUT``); DNS, connect, TLS failures and answers that are not
HTTP are UNAVAILABLE (``EXTERNAL_UNAVAILABLE``).
"""

from __future__ import annotations

import base64
import logging
import re
import time
from collections.abc import Callable
from urllib.parse import quote, urlencode

import grpc
from google.protobuf.duration_pb2 import Duration

from bhiv.integrations.v1 import external_api_service_pb2 as eas
from bhiv.integrations.v1 import integration_pb2
from bhiv_core.outbound.http import (
    OutboundBadRequest,
    OutboundClient,
    OutboundRefused,
    OutboundTimeout,
    OutboundUnavailable,
)
from bhiv_core.resources import ResourceStore
from bhiv_core.runtime.errors import (
    BhivError,
    FailedPrecondition,
    FieldViolation,
    Internal,
    InvalidArgument,
    PermissionDenied,
    Unavailable,
)
from bhiv_core.security.principal import Principal
from bhiv_core.services.integrations.external.resources import INTEGRATION, open_secret
from bhiv_core.storage.sealing import SecretBox

__all__ = [
    "DEFAULT_TIMEOUT_SECONDS",
    "FORBIDDEN_HEADERS",
    "MAX_RESPONSE_BYTES",
    "MAX_TIMEOUT_SECONDS",
    "ExternalCalls",
    "ExternalTimeout",
]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_SECONDS = 10.0
MAX_TIMEOUT_SECONDS = 60.0
MAX_RESPONSE_BYTES = 1 << 20
"""The most body bytes a response carries (the contract's 1 MiB); longer bodies are truncated."""
FORBIDDEN_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "host", "content-length", "connection", "transfer-encoding"}
    | {"te", "upgrade"}
)
"""Request headers a caller may not set (lowercase); the integration's API-key header neither."""

_METHODS = {
    eas.HTTP_METHOD_GET: "GET",
    eas.HTTP_METHOD_POST: "POST",
    eas.HTTP_METHOD_PUT: "PUT",
    eas.HTTP_METHOD_PATCH: "PATCH",
    eas.HTTP_METHOD_DELETE: "DELETE",
    eas.HTTP_METHOD_HEAD: "HEAD",
}
_HEADER_NAME = re.compile(r"[A-Za-z0-9-]{1,128}")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class ExternalTimeout(BhivError):
    """The external system did not answer within the call's timeout."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "EXTERNAL_TIMEOUT"


def _check_request(request: eas.CallExternalApiRequest, api_key_header: str) -> float:
    """INVALID_ARGUMENT unless the request's headers, query, body and timeout are acceptable; the timeout."""
    out: list[FieldViolation] = []
    forbidden = FORBIDDEN_HEADERS | ({api_key_header.lower()} if api_key_header else set())
    for name in sorted(request.headers):
        value = request.headers[name]
        where = f"headers[{name[:128]!r}]"
        if not _HEADER_NAME.fullmatch(name):
            out.append(FieldViolation(where, "the name must be 1-128 letters, digits or '-'", "BAD_FORMAT"))
        elif name.lower() in forbidden:
            out.append(
                FieldViolation(
                    where, "is set by the service (credentials come from the integration)", "FORBIDDEN_HEADER"
                )
            )
        elif len(value) > 4096 or _CONTROL.search(value) or not value.isascii():
            out.append(
                FieldViolation(
                    where, "the value must be at most 4096 ASCII characters, no line breaks", "BAD_FORMAT"
                )
            )
    for name in sorted(request.query_params):
        where = f"query_params[{name[:256]!r}]"
        if not name or len(name) > 256:
            out.append(FieldViolation(where, "the name must be 1-256 characters", "BAD_LENGTH"))
        elif len(request.query_params[name]) > 2048:
            out.append(FieldViolation(where, "the value must be at most 2048 characters", "BAD_LENGTH"))
    if request.body and request.method in (eas.HTTP_METHOD_GET, eas.HTTP_METHOD_HEAD):
        out.append(FieldViolation("body", "must be empty for GET and HEAD", "NOT_ALLOWED"))
    timeout = DEFAULT_TIMEOUT_SECONDS
    if request.HasField("timeout"):
        timeout = request.timeout.seconds + request.timeout.nanos / 1e9
        if not 0 < timeout <= MAX_TIMEOUT_SECONDS:
            out.append(
                FieldViolation("timeout", "must be more than 0 and at most 60 seconds", "OUT_OF_RANGE")
            )
    if out:
        raise InvalidArgument(violations=out)
    return timeout


def _credentials(integration: integration_pb2.Integration, secret: str) -> dict[str, str]:
    kind = integration.auth_kind
    if kind == integration_pb2.AUTH_KIND_BEARER:
        return {"Authorization": f"Bearer {secret}"}
    if kind == integration_pb2.AUTH_KIND_API_KEY_HEADER:
        return {integration.api_key_header: secret}
    if kind == integration_pb2.AUTH_KIND_BASIC:
        return {"Authorization": "Basic " + base64.b64encode(secret.encode()).decode("ascii")}
    return {}


def _url(base_url: str, path: str, query: dict[str, str]) -> str:
    url = base_url.rstrip("/") + path if path else base_url
    if query:
        url += "?" + urlencode(sorted(query.items()), quote_via=quote)
    return url


class ExternalCalls:
    """The ExternalApiService operation.

    Args:
        store: Integrations' kit store (the integrations).
        box: Opens integration secrets.
        client: The SSRF-safe client, with the configured allowlist.
        clock: A monotonic clock in seconds (for the deadline left).

    """

    def __init__(
        self,
        store: ResourceStore,
        box: SecretBox,
        client: OutboundClient,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._store = store
        self._box = box
        self._client = client
        self._clock = clock

    async def call(
        self, request: eas.CallExternalApiRequest, principal: Principal, time_left: float | None = None
    ) -> eas.CallExternalApiResponse:
        """Sends the request through the integration and returns what the external system answered.

        Args:
            request: The call.
            principal: The caller.
            time_left: Seconds left of the caller's gRPC deadline, if it set one: the external
                call never outlives it.

        """
        record = await INTEGRATION.get(self._store, request.integration, principal)
        integration = INTEGRATION.load(record)
        timeout = _check_request(request, integration.api_key_header)
        if not integration.enabled:
            raise FailedPrecondition(
                f"{integration.name} is disabled: enable it to call through it", reason="INTEGRATION_DISABLED"
            )
        if time_left is not None:
            timeout = max(0.001, min(timeout, time_left))
        try:
            secret = open_secret(record, self._box)
        except ValueError:
            # Another KEK file than the one that sealed it: an operator's problem, not the caller's.
            raise Internal(
                f"the secret of {integration.name} does not open with this service's key"
                " (BHIV_INTEGRATIONS_KEK_FILE changed?)",
                reason="SECRET_UNREADABLE",
            ) from None
        headers = dict(request.headers)
        headers.update(_credentials(integration, secret))
        method = _METHODS[request.method]
        url = _url(integration.base_url, request.path, dict(request.query_params))
        started = self._clock()
        try:
            answer = await self._client.request(
                method,
                url,
                headers=headers,
                body=request.body,
                timeout=timeout,
                max_redirects=request.max_redirects,
                max_response_bytes=MAX_RESPONSE_BYTES,
                credential_headers=(integration.api_key_header,) if integration.api_key_header else (),
            )
        except OutboundRefused as exc:
            log.info(
                "external call refused",
                extra={"integration": integration.name, "reason": exc.reason, "host": exc.host},
            )
            raise PermissionDenied(str(exc), reason=exc.reason, metadata={"host": exc.host}) from None
        except OutboundTimeout as exc:
            raise ExternalTimeout(str(exc)) from None
        except OutboundUnavailable as exc:
            raise Unavailable(str(exc), reason="EXTERNAL_UNAVAILABLE") from None
        except OutboundBadRequest as exc:
            raise InvalidArgument(str(exc), reason="BAD_REQUEST") from None
        log.info(
            "external call",
            extra={
                "integration": integration.name,
                "method": method,
                "status": answer.status,
                "seconds": round(self._clock() - started, 4),
            },
        )
        response = eas.CallExternalApiResponse(
            status_code=answer.status,
            body=answer.body,
            body_truncated=answer.truncated,
        )
        response.duration.CopyFrom(Duration(seconds=int(answer.seconds), nanos=int(answer.seconds % 1 * 1e9)))
        response.headers.update(answer.headers)
        return response
