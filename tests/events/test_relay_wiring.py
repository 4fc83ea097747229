"""The relay as a service runs it: a ticket resolved in crm reaches EventService with identity's token.

Real servers on loopback: identity issues the service token (client-credentials grant with the
deployment's service secret), crm publishes and relays through :func:`outbox_relay`'s wiring
(``PeerChannels``, ``ServiceTokenSource`` with ``integrations.events.publish``), and a recording
EventService stands in for integrations' receiving side.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from bhiv.crm.v1 import ticket_pb2
from bhiv.crm.v1 import ticket_service_pb2 as ts
from bhiv_core.events.catalog import body_of
from bhiv_core.interceptors.errors import ErrorMappingInterceptor
from bhiv_core.interceptors.validation import ValidationInterceptor
from bhiv_core.runtime.service_credentials import PUBLISH_SCOPE
from bhiv_core.services.identity.server import definition as identity_definition
from bhiv_core.services.identity.tokens import decode_access_token
from tests.events.conftest import Recorder, integrations, wait_until
from tests.harness import serving
from tests.services.crm.conftest import SUPPORT, serve_crm
from tests.services.identity.conftest import TokenAuth, make_service

SECRET = secrets.token_urlsafe(32).encode()


async def test_a_resolved_ticket_reaches_integrations_with_a_publish_token_from_identity(
    tmp_path: Path,
) -> None:
    secret_file = tmp_path / "service-secret"
    secret_file.write_bytes(SECRET)
    secret_file.chmod(0o600)
    runtime, identity = make_service(tmp_path / "identity", service_secret=SECRET)
    built = identity_definition(runtime, service=identity)
    for hook in built.on_start:
        await hook()
    chain = lambda *_: [
        ErrorMappingInterceptor("identity.bhiv.core"),
        TokenAuth(identity),
        ValidationInterceptor(),
    ]
    found = Recorder()
    try:
        async with (
            serving(built.servicers, chain=chain, config=runtime) as (identity_server, _),
            integrations(found) as integrations_address,
            serve_crm(
                tmp_path / "crm",
                SERVICE_SECRET_FILE=str(secret_file),
                IDENTITY_ADDR=identity_server.address,
                INTEGRATIONS_ADDR=integrations_address,
            ) as crm,
        ):
            customer = await crm.customer("ana@example.org")
            created = await crm.tickets.CreateTicket(
                ts.CreateTicketRequest(ticket=ticket_pb2.Ticket(customer=customer.name, title="Late parcel")),
                metadata=SUPPORT,
            )
            ticket = created.ticket
            await crm.tickets.ResolveTicket(
                ts.ResolveTicketRequest(name=ticket.name, resolution="Found it"), metadata=SUPPORT
            )
            await wait_until(lambda: len(found.events) == 2)
    finally:
        for hook in built.on_stop:
            await hook()
    assert [e.type for e in found.events] == ["crm.ticket.opened", "crm.ticket.resolved"]
    body = json.loads(body_of(found.events[1]))
    assert (body["type"], body["source"], body["subject"]) == ("crm.ticket.resolved", "crm", ticket.name)
    assert body["data"] == {
        "ticket": ticket.name,
        "customer": customer.name,
        "subject": "Late parcel",
        "assignee": "",
    }
    bearer = found.tokens[0].removeprefix("Bearer ")
    claims = decode_access_token(
        bearer,
        await identity.public_keys(),
        issuer=identity.config.issuer,
        audience=identity.config.audience,
    )
    assert (claims["sub"], claims["scope"]) == ("services/crm", PUBLISH_SCOPE)
