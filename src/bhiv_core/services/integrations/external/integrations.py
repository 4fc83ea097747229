"""Integrations: create, get, list, update and delete (``bhiv.integrations.v1.IntegrationService``).

An integration's secret (a bearer token, an API key, ``user:password`` for basic auth) is
write-only: it is sealed into the store-only ``sealed`` field (:mod:`.resources`) and never put
in a message, so responses, idempotency receipts (keyed fingerprints instead of the value),
logs and the audit log (resource names only) never carry it; ``has_secret`` says whether one is
stored. An update that does not name ``secret`` keeps the sealed value as it is, without
opening it. The base URL's form is checked here; whether its host is allowlisted (and what it
resolves to) is decided at call time, since the allowlist is configuration that may change.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable

from google.protobuf.field_mask_pb2 import FieldMask

from bhiv.integrations.v1 import integration_pb2
from bhiv.integrations.v1 import integration_service_pb2 as ins
from bhiv_core.outbound.http import RESERVED_HEADERS, url_form_problem
from bhiv_core.resources import (
    Eq,
    Filter,
    ResourceStore,
    Transaction,
    check_etag,
    idempotent,
    list_page,
)
from bhiv_core.runtime.errors import Aborted, FieldViolation, InvalidArgument
from bhiv_core.security.principal import Principal
from bhiv_core.services.integrations.external.resources import (
    INTEGRATION,
    INTEGRATIONS,
    open_secret,
    sealed_record,
)
from bhiv_core.storage.sealing import SecretBox

__all__ = ["Integrations", "check_integration"]

Integration = integration_pb2.Integration
NONE = integration_pb2.AUTH_KIND_NONE
API_KEY = integration_pb2.AUTH_KIND_API_KEY_HEADER
BASIC = integration_pb2.AUTH_KIND_BASIC
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Besides the framing headers the client sets, a proxy credential header is never an API key.
_NOT_AN_API_KEY_HEADER = RESERVED_HEADERS | {"proxy-authorization"}


def check_integration(
    integration: Integration, *, has_secret: bool, new_secret: str | None, prefix: str = "integration"
) -> list[FieldViolation]:
    """The rules of CreateIntegration beyond the contract's field rules (which the chain checks).

    Args:
        integration: The integration as it would be stored.
        has_secret: Whether it would hold a secret.
        new_secret: The secret the request sets (checked for its form), or None when kept.
        prefix: The request field holding the integration.

    """
    out: list[FieldViolation] = []
    if not integration.display_name.strip():
        out.append(FieldViolation(f"{prefix}.display_name", "is required", "REQUIRED"))
    if integration.kind == integration_pb2.INTEGRATION_KIND_UNSPECIFIED:
        out.append(FieldViolation(f"{prefix}.kind", "is required", "REQUIRED"))
    if not integration.base_url:
        out.append(FieldViolation(f"{prefix}.base_url", "is required", "REQUIRED"))
    else:
        problem = url_form_problem(integration.base_url)
        if problem:
            out.append(FieldViolation(f"{prefix}.base_url", problem, "BAD_URL"))
    kind = integration.auth_kind
    if kind == integration_pb2.AUTH_KIND_UNSPECIFIED:
        out.append(FieldViolation(f"{prefix}.auth_kind", "is required", "REQUIRED"))
    elif kind == NONE and has_secret:
        out.append(FieldViolation("secret", "must be empty for AUTH_KIND_NONE", "NOT_ALLOWED"))
    elif kind != NONE and not has_secret:
        out.append(FieldViolation("secret", "is required for this auth_kind", "REQUIRED"))
    if kind == API_KEY:
        header = integration.api_key_header
        if not header:
            out.append(
                FieldViolation(
                    f"{prefix}.api_key_header", "is required for AUTH_KIND_API_KEY_HEADER", "REQUIRED"
                )
            )
        elif header.lower() in _NOT_AN_API_KEY_HEADER:
            out.append(
                FieldViolation(
                    f"{prefix}.api_key_header", f"{header!r} cannot carry a key", "FORBIDDEN_HEADER"
                )
            )
    elif integration.api_key_header and kind != integration_pb2.AUTH_KIND_UNSPECIFIED:
        out.append(
            FieldViolation(f"{prefix}.api_key_header", "is only for AUTH_KIND_API_KEY_HEADER", "NOT_ALLOWED")
        )
    if new_secret:
        # Descriptions never quote the secret: they end up in status messages and logs.
        if _CONTROL.search(new_secret):
            out.append(
                FieldViolation("secret", "must not contain control characters or line breaks", "BAD_FORMAT")
            )
        elif kind != BASIC and not new_secret.isascii():
            out.append(
                FieldViolation("secret", "must be ASCII (it is sent in a header as it is)", "BAD_FORMAT")
            )
        elif kind == BASIC and ":" not in new_secret:
            out.append(
                FieldViolation("secret", "must be <username>:<password> for AUTH_KIND_BASIC", "BAD_FORMAT")
            )
    return out


def _refuse(violations: list[FieldViolation]) -> None:
    if violations:
        raise InvalidArgument(violations=violations)


def _changed(name: str) -> Aborted:
    return Aborted(f"{name} changed while this call ran: re-read it and retry", reason="CONCURRENT_CHANGE")


class Integrations:
    """The IntegrationService operations over integrations' kit store.

    Args:
        store: Integrations' kit store.
        box: Seals integration secrets.
        clock: Unix seconds now.

    """

    def __init__(self, store: ResourceStore, box: SecretBox, clock: Callable[[], float] = time.time):
        self._store = store
        self._box = box
        self._clock = clock

    async def create(
        self, request: ins.CreateIntegrationRequest, principal: Principal
    ) -> ins.CreateIntegrationResponse:
        """Creates an integration (its secret sealed), once per ``request_id``."""
        integration = INTEGRATION.fresh(request.integration, now=self._clock())
        secret = request.secret
        integration.has_secret = bool(secret)
        _refuse(check_integration(integration, has_secret=bool(secret), new_secret=secret))

        async def insert(txn: Transaction) -> ins.CreateIntegrationResponse:
            await txn.insert(INTEGRATIONS, sealed_record(integration, secret, self._box))
            return ins.CreateIntegrationResponse(integration=integration)

        # The receipt's digest must not be a plain hash of the secret: fingerprint it with a key.
        digested = ins.CreateIntegrationRequest()
        digested.CopyFrom(request)
        digested.secret = self._box.fingerprint(secret) if secret else ""
        return await idempotent(
            self._store,
            scope=f"CreateIntegration:{principal.subject}",
            request_id=request.request_id,
            request=digested,
            response_type=ins.CreateIntegrationResponse,
            step=insert,
            clock=self._clock,
        )

    async def get(
        self, request: ins.GetIntegrationRequest, principal: Principal
    ) -> ins.GetIntegrationResponse:
        """The integration, without its secret; NOT_FOUND when it does not exist."""
        record = await INTEGRATION.get(self._store, request.name, principal)
        return ins.GetIntegrationResponse(integration=INTEGRATION.load(record))

    async def list(
        self, request: ins.ListIntegrationsRequest, principal: Principal
    ) -> ins.ListIntegrationsResponse:
        """A page of integrations by display name, then name, filtered as the request asks."""
        filters: list[Filter] = []
        if request.kind:
            filters.append(Eq("kind", int(request.kind)))
        if request.enabled_only:
            filters.append(Eq("enabled", True))
        records, token = await list_page(
            self._store,
            INTEGRATIONS,
            filters,
            page_size=request.page_size,
            page_token=request.page_token,
            query=("ListIntegrations",),
        )
        response = ins.ListIntegrationsResponse(next_page_token=token)
        for record in records:
            response.integrations.add().MergeFromString(record.data)
        return response

    async def update(
        self, request: ins.UpdateIntegrationRequest, principal: Principal
    ) -> ins.UpdateIntegrationResponse:
        """Applies ``update_mask``; ``secret`` in the mask replaces the stored secret.

        Setting ``auth_kind`` to AUTH_KIND_NONE removes the stored secret. The result must meet
        the rules of CreateIntegration; ABORTED for a stale etag.
        """
        patch = request.integration
        if not patch.name:
            raise InvalidArgument(violations=[FieldViolation("integration.name", "is required", "REQUIRED")])
        mask: FieldMask = request.update_mask
        replace_secret = "secret" in mask.paths
        now = self._clock()

        async def update(txn: Transaction) -> ins.UpdateIntegrationResponse:
            record = await INTEGRATION.get(txn, patch.name, principal)
            check_etag(patch.etag, record, patch.name)
            current = INTEGRATION.load(record)
            merged = INTEGRATION.merge(current, patch, mask, request_only=frozenset({"secret"}))
            if replace_secret:
                secret: str | None = request.secret
                has_secret = bool(request.secret)
                checked = secret
            else:
                secret = None  # kept sealed as it is
                has_secret = merged.auth_kind != NONE and bool(record.fields.get("sealed"))
                # A kept secret is opened only to check it still fits a changed auth kind.
                changed_kind = has_secret and merged.auth_kind != current.auth_kind
                checked = open_secret(record, self._box) if changed_kind else None
            if merged.auth_kind != API_KEY and "api_key_header" not in mask.paths:
                merged.api_key_header = ""  # a header of a former API-key integration goes with it
            _refuse(check_integration(merged, has_secret=has_secret, new_secret=checked))
            merged.has_secret = has_secret
            INTEGRATION.stamp(merged, now=now)
            if secret is not None:
                stored = sealed_record(merged, secret, self._box)
            else:
                kept = record.fields.get("sealed", "") if has_secret else ""
                plain = INTEGRATION.record(merged)
                stored = dataclasses.replace(plain, fields={**plain.fields, "sealed": kept})
            if not await txn.replace(INTEGRATIONS, stored, expected_etag=record.etag):
                raise _changed(patch.name)
            return ins.UpdateIntegrationResponse(integration=merged)

        return await self._store.run(update)

    async def delete(
        self, request: ins.DeleteIntegrationRequest, principal: Principal
    ) -> ins.DeleteIntegrationResponse:
        """Deletes the integration and its sealed secret."""

        async def delete(txn: Transaction) -> ins.DeleteIntegrationResponse:
            record = await INTEGRATION.get(txn, request.name, principal)
            check_etag(request.etag, record, request.name)
            if not await txn.delete(INTEGRATIONS, record.id, expected_etag=record.etag):
                raise _changed(request.name)
            return ins.DeleteIntegrationResponse()

        return await self._store.run(delete)
