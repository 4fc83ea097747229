from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from bhiv.crm.v1 import customer_service_pb2 as cs
from bhiv.crm.v1 import customer_service_pb2_grpc as cs_grpc
from bhiv.identity.v1 import user_service_pb2 as us
from bhiv.identity.v1 import user_service_pb2_grpc as us_grpc
from bhiv.llm.v1 import completion_service_pb2 as ccs
from bhiv.llm.v1 import completion_service_pb2_grpc as ccs_grpc
from bhiv_core.interceptors.errors import ErrorMappingInterceptor
from bhiv_core.interceptors.tracing import (
    MAX_TRACE_HEADER_CHARS,
    TracingInterceptor,
    client_interceptors,
    current_trace_id,
    outgoing_metadata,
)
from bhiv_core.runtime.chain import CallInfo, Interceptor
from bhiv_core.runtime.config import ConfigError, Settings
from bhiv_core.runtime.errors import NotFound
from bhiv_core.runtime.logging import JsonFormatter
from bhiv_core.runtime.telemetry import (
    REGISTRY,
    configure_tracing,
    otlp_target,
    sample_ratio,
    shutdown_tracing,
    spans_exported,
)
from bhiv_core.runtime.trace_context import UNRECORDED, current_context, current_span_context
from tests.harness import config_for, serving

CUSTOMERS = cs.DESCRIPTOR.services_by_name["CustomerService"]
USERS = us.DESCRIPTOR.services_by_name["UserService"]
COMPLETIONS = ccs.DESCRIPTOR.services_by_name["CompletionService"]

TRACE_HEX = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN_HEX = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_HEX}-{CALLER_SPAN_HEX}-01"
UNSAMPLED_TRACEPARENT = f"00-{TRACE_HEX}-{CALLER_SPAN_HEX}-00"


class Traced:
    """A provider (not the global one) with an in-memory exporter."""

    def __init__(self, service: str, **env: str):
        self.exporter = InMemorySpanExporter()
        # These tests record without an OTLP exporter, so they ask for every trace explicitly.
        env = {"BHIV_TRACE_SAMPLE_RATIO": "1", **env}
        self.provider = configure_tracing(service, Settings(env), set_global=False)
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def only(self, kind: SpanKind) -> ReadableSpan:
        found = [s for s in self.spans() if s.kind == kind]
        assert len(found) == 1, found
        return found[0]


@pytest.fixture
def crm() -> Iterator[Traced]:
    traced = Traced("crm")
    yield traced
    traced.provider.shutdown()


@pytest.fixture
def identity() -> Iterator[Traced]:
    traced = Traced("identity")
    yield traced
    traced.provider.shutdown()


class ExtraRecorder(Interceptor):
    """Sits inside tracing and records what tracing put into ``call.trace_id``."""

    def __init__(self) -> None:
        self.trace_ids: list[str] = []

    async def intercept_unary(self, call: CallInfo, request: Any, context: Any, proceed: Any) -> Any:
        self.trace_ids.append(call.trace_id)
        return await proceed(call, request, context)


class Users:
    """Service B."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    async def GetUser(self, request: us.GetUserRequest, context: Any) -> us.GetUserResponse:
        metadata = list(context.invocation_metadata() or ())
        self.seen.append(
            {
                "trace_id": current_trace_id(),
                "traceparents": [v for k, v in metadata if k == "traceparent"],
                "request_id": [v for k, v in metadata if k == "x-request-id"],
            }
        )
        return us.GetUserResponse(user={"name": request.name, "username": "ada"})


class Customers:
    """Service A: its handler calls service B."""

    def __init__(self, users: us_grpc.UserServiceStub | None = None):
        self.users = users
        self.seen: list[dict[str, Any]] = []

    async def GetCustomer(self, request: cs.GetCustomerRequest, context: Any) -> cs.GetCustomerResponse:
        if request.name == "customers/missing":
            raise NotFound(f"{request.name} does not exist")
        log_line = json.loads(JsonFormatter("crm").format(logging.makeLogRecord({"msg": "handling"})))
        self.seen.append(
            {
                "trace_id": current_trace_id(),
                "span_id": current_span_context().span_id,
                "log_trace_id": log_line.get("trace_id"),
            }
        )
        if self.users is not None:
            # Built by hand (with a stale-free traceparent of this span); the client interceptor
            # must replace it with its CLIENT span's, not send two.
            metadata = outgoing_metadata([("x-request-id", "r-1")])
            await self.users.GetUser(us.GetUserRequest(name="users/u1"), metadata=metadata)
        return cs.GetCustomerResponse(customer={"name": request.name})


class Completions:
    async def StreamComplete(self, request: Any, context: Any) -> AsyncIterator[ccs.StreamCompleteResponse]:
        for text in ("a", "b"):
            yield ccs.StreamCompleteResponse(delta={"content": text})


def tracing_chain(provider: TracerProvider, recorder: Interceptor | None = None) -> Any:
    def chain(cfg: Any, *_: Any) -> list[Interceptor]:
        inner = [recorder] if recorder is not None else []
        return [TracingInterceptor(provider), *inner, ErrorMappingInterceptor(f"{cfg.service}.bhiv.core")]

    return chain


async def test_a_trace_spans_two_services_from_the_callers_traceparent(crm: Traced, identity: Traced) -> None:
    users, recorder_a, recorder_b = Users(), ExtraRecorder(), ExtraRecorder()
    async with serving(
        [(USERS, users)], chain=tracing_chain(identity.provider, recorder_b), config=config_for("identity")
    ) as (b, _):
        to_b = grpc.aio.insecure_channel(b.address, interceptors=client_interceptors(crm.provider))
        customers = Customers(us_grpc.UserServiceStub(to_b))
        try:
            async with serving(
                [(CUSTOMERS, customers)],
                chain=tracing_chain(crm.provider, recorder_a),
                config=config_for("crm"),
            ) as (_, channel):
                await cs_grpc.CustomerServiceStub(channel).GetCustomer(
                    cs.GetCustomerRequest(name="customers/c1"), metadata=(("traceparent", TRACEPARENT),)
                )
        finally:
            await to_b.close()

    trace_id = int(TRACE_HEX, 16)
    a_server, client = crm.only(SpanKind.SERVER), crm.only(SpanKind.CLIENT)
    b_server = identity.only(SpanKind.SERVER)
    assert a_server.name == "bhiv.crm.v1.CustomerService/GetCustomer"
    assert client.name == b_server.name == "bhiv.identity.v1.UserService/GetUser"
    assert {a_server.context.trace_id, client.context.trace_id, b_server.context.trace_id} == {trace_id}
    # caller -> A's SERVER span -> A's CLIENT span -> B's SERVER span
    assert a_server.parent is not None and a_server.parent.is_remote
    assert a_server.parent.span_id == int(CALLER_SPAN_HEX, 16)
    assert client.parent is not None and not client.parent.is_remote
    assert client.parent.span_id == a_server.context.span_id
    assert b_server.parent is not None and b_server.parent.is_remote
    assert b_server.parent.span_id == client.context.span_id
    assert a_server.attributes == {
        "rpc.system": "grpc",
        "rpc.service": "bhiv.crm.v1.CustomerService",
        "rpc.method": "GetCustomer",
        "rpc.grpc.status_code": 0,
    }
    assert client.attributes is not None and client.attributes["rpc.grpc.status_code"] == 0
    assert b_server.attributes is not None and b_server.attributes["rpc.method"] == "GetUser"
    assert a_server.status.status_code == StatusCode.UNSET
    assert a_server.resource.attributes["service.name"] == "bhiv-crm"
    assert b_server.resource.attributes["service.name"] == "bhiv-identity"
    # The interceptor's call.trace_id, the handler's current span and its log lines all carry the trace.
    assert recorder_a.trace_ids == recorder_b.trace_ids == [TRACE_HEX]
    assert customers.seen == [
        {"trace_id": TRACE_HEX, "span_id": a_server.context.span_id, "log_trace_id": TRACE_HEX}
    ]
    assert users.seen == [
        {
            "trace_id": TRACE_HEX,
            "traceparents": [f"00-{TRACE_HEX}-{client.context.span_id:016x}-01"],
            "request_id": ["r-1"],
        }
    ]


async def test_call_without_traceparent_starts_a_new_root_trace(crm: Traced) -> None:
    recorder = ExtraRecorder()
    customers = Customers()
    async with serving(
        [(CUSTOMERS, customers)], chain=tracing_chain(crm.provider, recorder), config=config_for("crm")
    ) as (_, channel):
        await cs_grpc.CustomerServiceStub(channel).GetCustomer(cs.GetCustomerRequest(name="customers/c1"))
    server = crm.only(SpanKind.SERVER)
    assert server.parent is None
    assert recorder.trace_ids == [f"{server.context.trace_id:032x}"]
    assert customers.seen[0]["trace_id"] == recorder.trace_ids[0]


async def test_non_ok_status_marks_the_span_as_error(crm: Traced) -> None:
    async with serving(
        [(CUSTOMERS, Customers())], chain=tracing_chain(crm.provider), config=config_for("crm")
    ) as (_, channel):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await cs_grpc.CustomerServiceStub(channel).GetCustomer(
                cs.GetCustomerRequest(name="customers/missing"), metadata=(("traceparent", TRACEPARENT),)
            )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    server = crm.only(SpanKind.SERVER)
    assert server.status.status_code == StatusCode.ERROR
    assert server.status.description == "customers/missing does not exist"
    assert server.attributes is not None
    assert server.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]


async def test_unsampled_calls_export_nothing_but_still_carry_a_trace_id() -> None:
    traced = Traced("crm", BHIV_TRACE_SAMPLE_RATIO="0")
    recorder = ExtraRecorder()
    customers = Customers()
    try:
        async with serving(
            [(CUSTOMERS, customers)], chain=tracing_chain(traced.provider, recorder), config=config_for("crm")
        ) as (_, channel):
            stub = cs_grpc.CustomerServiceStub(channel)
            await stub.GetCustomer(cs.GetCustomerRequest(name="customers/c1"))
            assert traced.spans() == []
            await stub.GetCustomer(
                cs.GetCustomerRequest(name="customers/c2"), metadata=(("traceparent", UNSAMPLED_TRACEPARENT),)
            )
            assert traced.spans() == []
            # Parent-based: a caller's sampled trace is recorded even at ratio 0.
            await stub.GetCustomer(
                cs.GetCustomerRequest(name="customers/c3"), metadata=(("traceparent", TRACEPARENT),)
            )
    finally:
        traced.provider.shutdown()
    fresh, continued, sampled = recorder.trace_ids
    assert len(fresh) == 32 and int(fresh, 16) != 0
    assert fresh != TRACE_HEX
    assert continued == sampled == TRACE_HEX
    assert [s["trace_id"] for s in customers.seen] == [fresh, TRACE_HEX, TRACE_HEX]
    assert [f"{s.context.trace_id:032x}" for s in traced.spans()] == [TRACE_HEX]


async def test_without_an_exporter_calls_get_trace_ids_and_propagate_them_but_build_no_span(
    crm: Traced,
) -> None:
    users, recorder = Users(), ExtraRecorder()
    async with serving([(USERS, users)], config=config_for("identity")) as (b, _):
        to_b = grpc.aio.insecure_channel(b.address)
        customers = Customers(us_grpc.UserServiceStub(to_b))

        def unrecorded(cfg: Any, *_: Any) -> list[Interceptor]:
            return [
                TracingInterceptor(crm.provider, recording=False),
                recorder,
                ErrorMappingInterceptor(f"{cfg.service}.bhiv.core"),
            ]

        try:
            async with serving([(CUSTOMERS, customers)], chain=unrecorded, config=config_for("crm")) as (
                _,
                channel,
            ):
                stub = cs_grpc.CustomerServiceStub(channel)
                await stub.GetCustomer(cs.GetCustomerRequest(name="customers/c1"))
                await stub.GetCustomer(
                    cs.GetCustomerRequest(name="customers/c2"), metadata=(("traceparent", TRACEPARENT),)
                )
        finally:
            await to_b.close()
    assert crm.spans() == []  # even the caller's sampled trace builds no span here
    fresh, continued = recorder.trace_ids
    assert len(fresh) == 32 and int(fresh, 16) != 0 and fresh != TRACE_HEX
    assert continued == TRACE_HEX
    assert [(s["trace_id"], s["log_trace_id"]) for s in customers.seen] == [
        (fresh, fresh),
        (TRACE_HEX, TRACE_HEX),
    ]
    # Each call got its own span id, which is what the outgoing call names as its parent.
    span_ids = [s["span_id"] for s in customers.seen]
    assert len(set(span_ids)) == 2 and int(CALLER_SPAN_HEX, 16) not in span_ids
    assert [s["traceparents"] for s in users.seen] == [
        [f"00-{fresh}-{span_ids[0]:016x}-00"],
        [f"00-{TRACE_HEX}-{span_ids[1]:016x}-01"],  # the caller's sampling decision travels on
    ]


def dropped(header: str) -> float:
    return REGISTRY.get_sample_value("bhiv_trace_context_dropped_total", {"header": header}) or 0.0


@pytest.mark.parametrize("recording", [True, False], ids=["recorded", "unrecorded"])
async def test_overlong_trace_context_is_dropped_quietly_and_counted(
    crm: Traced, recording: bool, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = ExtraRecorder()

    def chain(cfg: Any, *_: Any) -> list[Interceptor]:
        return [
            TracingInterceptor(crm.provider, recording=recording),
            recorder,
            ErrorMappingInterceptor(f"{cfg.service}.bhiv.core"),
        ]

    # Valid trace context, padded past the propagator's limits (W3C allows later versions to add
    # fields, so a long traceparent is not malformed as such); a 10 KiB one reaches the service too.
    long_traceparent = f"{TRACEPARENT}-{'a' * 10 * 1024}"
    tracestate = ",".join(f"{vendor}=" + "x" * 168 for vendor in "abc")  # 3 valid members
    assert len(tracestate) == MAX_TRACE_HEADER_CHARS["tracestate"]
    before = {header: dropped(header) for header in ("traceparent", "tracestate")}
    caplog.set_level(logging.INFO)
    async with serving([(CUSTOMERS, Customers())], chain=chain, config=config_for("crm")) as (_, channel):
        stub = cs_grpc.CustomerServiceStub(channel)
        for _ in range(20):  # a caller repeating it must not fill the logs
            await stub.GetCustomer(
                cs.GetCustomerRequest(name="customers/c1"),
                metadata=(("traceparent", long_traceparent), ("tracestate", tracestate + "x")),
            )
        # At the limit, trace context is read as usual.
        await stub.GetCustomer(
            cs.GetCustomerRequest(name="customers/c2"),
            metadata=(("traceparent", TRACEPARENT), ("tracestate", tracestate)),
        )
    # Each call went on in a trace of its own; the last continued the caller's.
    assert len(set(recorder.trace_ids[:20])) == 20 and TRACE_HEX not in recorder.trace_ids[:20]
    assert recorder.trace_ids[20] == TRACE_HEX
    assert {header: dropped(header) - before[header] for header in before} == {
        "traceparent": 20,
        "tracestate": 20,
    }
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_spans_are_exported_only_once_an_endpoint_is_configured() -> None:
    provider = configure_tracing("crm", Settings({}), set_global=False)
    assert not spans_exported()
    shutdown_tracing(provider)
    provider = configure_tracing(
        "crm", Settings({"BHIV_OTLP_ENDPOINT": "http://127.0.0.1:4317"}), set_global=False
    )
    try:
        assert spans_exported()
    finally:
        shutdown_tracing(provider)
    assert not spans_exported()


async def test_server_stream_span_ends_with_the_stream_and_client_span_parents_it(crm: Traced) -> None:
    async with serving(
        [(COMPLETIONS, Completions())], chain=tracing_chain(crm.provider), config=config_for("llm")
    ) as (running, _):
        channel = grpc.aio.insecure_channel(running.address, interceptors=client_interceptors(crm.provider))
        try:
            with crm.provider.get_tracer("test").start_as_current_span("caller") as caller:
                stub = ccs_grpc.CompletionServiceStub(channel)
                replies = [r.delta.content async for r in stub.StreamComplete(ccs.StreamCompleteRequest())]
        finally:
            await channel.close()
    assert replies == ["a", "b"]
    server, client = crm.only(SpanKind.SERVER), crm.only(SpanKind.CLIENT)
    assert server.name == client.name == "bhiv.llm.v1.CompletionService/StreamComplete"
    assert client.parent is not None and client.parent.span_id == caller.get_span_context().span_id
    assert server.parent is not None and server.parent.span_id == client.context.span_id
    assert server.context.trace_id == caller.get_span_context().trace_id
    assert server.attributes is not None and server.attributes["rpc.grpc.status_code"] == 0
    assert client.attributes is not None and client.attributes["rpc.grpc.status_code"] == 0
    assert server.end_time is not None and client.end_time is not None


async def test_failed_outgoing_call_ends_its_client_span_with_the_code(crm: Traced) -> None:
    async with serving([(CUSTOMERS, Customers())], config=config_for("crm")) as (running, _):
        channel = grpc.aio.insecure_channel(running.address, interceptors=client_interceptors(crm.provider))
        try:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await cs_grpc.CustomerServiceStub(channel).GetCustomer(
                    cs.GetCustomerRequest(name="customers/missing")
                )
        finally:
            await channel.close()
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    client = crm.only(SpanKind.CLIENT)
    assert client.status.status_code == StatusCode.ERROR
    assert client.attributes is not None and client.attributes["rpc.grpc.status_code"] == 5


def test_outgoing_metadata_adds_the_current_trace_only_inside_one(crm: Traced) -> None:
    assert outgoing_metadata([("x-request-id", "r-1")]) == [("x-request-id", "r-1")]
    with crm.provider.get_tracer("test").start_as_current_span("work") as span:
        ctx = span.get_span_context()
        assert outgoing_metadata([("x-request-id", "r-1")]) == [
            ("x-request-id", "r-1"),
            ("traceparent", f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"),
        ]
        assert current_trace_id() == f"{ctx.trace_id:032x}"
    assert current_trace_id() == ""


class FakeCollector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


async def test_spans_reach_an_otlp_collector_after_shutdown() -> None:
    collector = FakeCollector()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        provider = configure_tracing(
            "crm", Settings({"BHIV_OTLP_ENDPOINT": f"127.0.0.1:{port}"}), set_global=False
        )
        async with serving(
            [(CUSTOMERS, Customers())], chain=tracing_chain(provider), config=config_for("crm")
        ) as (_, channel):
            await cs_grpc.CustomerServiceStub(channel).GetCustomer(
                cs.GetCustomerRequest(name="customers/c1"), metadata=(("traceparent", TRACEPARENT),)
            )
        assert collector.requests == []  # batched: nothing leaves before the flush
        # The exporter blocks on its own gRPC channel; the collector answers from this loop.
        await asyncio.to_thread(shutdown_tracing)
    finally:
        await server.stop(None)
    resources = [rs for request in collector.requests for rs in request.resource_spans]
    spans = [span for rs in resources for ss in rs.scope_spans for span in ss.spans]
    assert [s.name for s in spans] == ["bhiv.crm.v1.CustomerService/GetCustomer"]
    assert spans[0].trace_id == bytes.fromhex(TRACE_HEX)
    assert spans[0].parent_span_id == bytes.fromhex(CALLER_SPAN_HEX)
    assert spans[0].kind == spans[0].SPAN_KIND_SERVER
    names = [
        a.value.string_value for rs in resources for a in rs.resource.attributes if a.key == "service.name"
    ]
    assert names == ["bhiv-crm"]


def test_sample_ratio_is_read_and_checked() -> None:
    # Recording spans that no exporter takes is waste: the default follows the exporter.
    assert sample_ratio(Settings({})) == 0.0
    assert sample_ratio(Settings({"BHIV_OTLP_ENDPOINT": "127.0.0.1:4317"})) == 1.0
    assert sample_ratio(Settings({"BHIV_TRACE_SAMPLE_RATIO": "0.25"})) == 0.25
    with pytest.raises(ConfigError, match="BHIV_TRACE_SAMPLE_RATIO"):
        sample_ratio(Settings({"BHIV_TRACE_SAMPLE_RATIO": "1.5"}))


def test_otlp_endpoint_is_plaintext_only_on_loopback_or_http() -> None:
    assert otlp_target("127.0.0.1:4317") == ("127.0.0.1:4317", True)
    assert otlp_target("localhost:4317") == ("localhost:4317", True)
    assert otlp_target("[::1]:4317") == ("[::1]:4317", True)
    assert otlp_target("collector.observability:4317") == ("collector.observability:4317", False)
    assert otlp_target("http://collector:4317") == ("collector:4317", True)
    assert otlp_target("https://collector:4317") == ("collector:4317", False)


def test_an_unrecorded_call_is_continued_by_outgoing_calls_and_logs_without_an_otel_span(crm: Traced) -> None:
    token = UNRECORDED.set((int(TRACE_HEX, 16), int(CALLER_SPAN_HEX, 16), 1, None))
    try:
        assert not trace.get_current_span().get_span_context().is_valid  # no OpenTelemetry object
        assert current_trace_id() == TRACE_HEX
        assert current_span_context().span_id == int(CALLER_SPAN_HEX, 16)
        assert outgoing_metadata() == [("traceparent", f"00-{TRACE_HEX}-{CALLER_SPAN_HEX}-01")]
        line = json.loads(JsonFormatter("crm").format(logging.makeLogRecord({"msg": "x"})))
        assert line["trace_id"] == TRACE_HEX
        # A span started where the client interceptor starts its CLIENT span is the call's child.
        span = crm.provider.get_tracer("test").start_span("child", context=current_context())
        span.end()
    finally:
        UNRECORDED.reset(token)
    child = next(s for s in crm.spans() if s.name == "child")
    assert child.parent is not None and child.parent.span_id == int(CALLER_SPAN_HEX, 16)
    assert f"{child.context.trace_id:032x}" == TRACE_HEX
    assert current_trace_id() == "" and UNRECORDED.get() is None
