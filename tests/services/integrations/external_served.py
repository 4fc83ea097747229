"""IntegrationService and ExternalApiService served behind the real chain, for the external tests.

The error mapper, RBAC (the contract's permissions) and validation are the mesh's own; only
authentication is the crm tests' header stand-in. The outbound client gets an injected resolver
(names such as ``api.partner.test`` map to loopback addresses) and the allowlist of the test.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bhiv.integrations.v1 import external_api_service_pb2_grpc, integration_pb2, integration_service_pb2_grpc
from bhiv.integrations.v1 import integration_service_pb2 as ins
from bhiv_core.interceptors.errors import ErrorMappingInterceptor
from bhiv_core.interceptors.rbac import RbacInterceptor, RolePolicy
from bhiv_core.interceptors.validation import ValidationInterceptor
from bhiv_core.outbound.http import OutboundClient, OutboundPolicy
from bhiv_core.runtime.chain import chain_order
from bhiv_core.runtime.contracts import services_of_package
from bhiv_core.services.integrations.config import IntegrationsConfig
from bhiv_core.services.integrations.external.service import external_servicers
from bhiv_core.services.integrations.resources import make_integrations_store
from tests.harness import config_for, serving
from tests.services.crm.conftest import AsCaller, as_

ADMIN = as_("admin")
OPS = as_("ops")
SALES = as_("sales")
PARTNER = "api.partner.test"


def chain(*_: Any) -> Any:
    return chain_order(
        errors=ErrorMappingInterceptor("integrations.bhiv.core"),
        auth=AsCaller(),
        rbac=RbacInterceptor(RolePolicy()),
        validation=ValidationInterceptor(),
    )


class Dns:
    """Injected DNS: name → its addresses; counts questions."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    def __call__(self, host: str) -> Iterable[str]:
        self.asked.append(host)
        if host not in self.answers:
            raise OSError("name not known")
        return self.answers[host]


@dataclass
class External:
    """Served integrations (the external part) and stubs to it."""

    integrations: integration_service_pb2_grpc.IntegrationServiceAsyncStub
    calls: external_api_service_pb2_grpc.ExternalApiServiceAsyncStub
    data_dir: Path
    dns: Dns

    async def create(
        self, base_url: str, secret: str = "", request_id: str = "", **fields: Any
    ) -> integration_pb2.Integration:
        """Creates an enabled REST integration as admin and returns it."""
        fields.setdefault("enabled", True)
        fields.setdefault("display_name", "Partner")
        fields.setdefault("kind", integration_pb2.INTEGRATION_KIND_REST_API)
        fields.setdefault(
            "auth_kind", integration_pb2.AUTH_KIND_BEARER if secret else integration_pb2.AUTH_KIND_NONE
        )
        request = ins.CreateIntegrationRequest(
            integration=integration_pb2.Integration(base_url=base_url, **fields),
            secret=secret,
            request_id=request_id,
        )
        return (await self.integrations.CreateIntegration(request, metadata=ADMIN)).integration


@contextlib.asynccontextmanager
async def serve_external(
    data_dir: Path, allowlist: tuple[str, ...], dns: dict[str, list[str]] | None = None
) -> AsyncIterator[External]:
    """Starts the external servicers on ``data_dir`` with ``allowlist`` and the injected DNS."""
    config = config_for("integrations", DATA_DIR=str(data_dir), OUTBOUND_ALLOWLIST=",".join(allowlist))
    settings = IntegrationsConfig.from_runtime(config)
    store = make_integrations_store(config)
    resolver = Dns(dns if dns is not None else {PARTNER: ["127.0.0.1"]})
    client = OutboundClient(OutboundPolicy(settings.outbound_allowlist), resolver)
    built = external_servicers(settings, store, client=client)
    services = {s.name: s for s in services_of_package("bhiv.integrations.v1")}
    await store.open()
    try:
        async with serving(
            [(services[name], servicer) for name, servicer in built.items()], chain=chain, config=config
        ) as (_, channel):
            yield External(
                integration_service_pb2_grpc.IntegrationServiceStub(channel),  # type: ignore[arg-type]
                external_api_service_pb2_grpc.ExternalApiServiceStub(channel),  # type: ignore[arg-type]
                data_dir,
                resolver,
            )
    finally:
        await store.close()
