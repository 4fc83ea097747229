from __future__ import annotations

import asyncio
import multiprocessing
import os
import socket
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from bhiv.crm.v1 import customer_service_pb2 as cs
from bhiv.crm.v1 import customer_service_pb2_grpc as cs_grpc
from bhiv.llm.v1 import completion_service_pb2 as ccs
from bhiv.llm.v1 import completion_service_pb2_grpc as ccs_grpc
from bhiv_core.interceptors import metrics
from bhiv_core.interceptors.errors import ErrorMappingInterceptor
from bhiv_core.interceptors.metrics import GrpcServerMetrics, MetricsInterceptor
from bhiv_core.mesh import free_port
from bhiv_core.runtime.chain import CallInfo, PreCheckInterceptor, Selector
from bhiv_core.runtime.errors import NotFound, PermissionDenied
from bhiv_core.runtime.telemetry import (
    MULTIPROC_ENV,
    mark_worker_dead,
    prepare_multiprocess_metrics,
    start_metrics_server,
    start_multiprocess_metrics_server,
    stop_metrics_servers,
)
from tests.harness import config_for, serving

CUSTOMERS = cs.DESCRIPTOR.services_by_name["CustomerService"]
COMPLETIONS = ccs.DESCRIPTOR.services_by_name["CompletionService"]
CUSTOMER_SERVICE = "bhiv.crm.v1.CustomerService"
COMPLETION_SERVICE = "bhiv.llm.v1.CompletionService"
GET_CUSTOMER = f"/{CUSTOMER_SERVICE}/GetCustomer"


class Customers:
    async def GetCustomer(self, request: cs.GetCustomerRequest, context: Any) -> cs.GetCustomerResponse:
        if request.name == "customers/missing":
            raise NotFound(f"{request.name} does not exist")
        if request.name == "customers/slow":
            await asyncio.sleep(0.03)
        return cs.GetCustomerResponse(customer={"name": request.name})

    async def DeleteCustomer(self, request: Any, context: Any) -> Any:
        raise AssertionError("the denier refuses DeleteCustomer before the handler")


class Completions:
    async def StreamComplete(self, request: Any, context: Any) -> AsyncIterator[ccs.StreamCompleteResponse]:
        for text in ("a", "b", "c"):
            yield ccs.StreamCompleteResponse(delta={"content": text})
        if request.model == "models/broken":
            raise NotFound("models/broken does not exist")


class DenyAll(PreCheckInterceptor):
    async def check(self, call: CallInfo, request: Any, context: Any) -> None:
        raise PermissionDenied("denied by the test")


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:  # loopback URL built by the test
        return str(response.read().decode())


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the one sample called ``name`` whose labels include ``labels``."""
    found = [
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and labels.items() <= s.labels.items()
    ]
    assert len(found) <= 1, f"{name}{labels} matches {len(found)} samples"
    return found[0] if found else None


def calls(method: str, **labels: str) -> dict[str, str]:
    service, rpc = method.lstrip("/").split("/")
    return {"grpc_service": service, "grpc_method": rpc, **labels}


async def test_calls_are_counted_by_method_type_and_final_code_on_the_endpoint() -> None:
    registry = CollectorRegistry()
    chain = lambda cfg, *_: [
        MetricsInterceptor(cfg.service, GrpcServerMetrics(registry)),
        ErrorMappingInterceptor(f"{cfg.service}.bhiv.core"),
        Selector(DenyAll(), lambda method: method.endswith("/DeleteCustomer")),
    ]
    servicers = [(CUSTOMERS, Customers()), (COMPLETIONS, Completions())]
    async with serving(servicers, chain=chain, config=config_for("crm")) as (_, channel):
        customers = cs_grpc.CustomerServiceStub(channel)
        await customers.GetCustomer(cs.GetCustomerRequest(name="customers/c1"))
        await customers.GetCustomer(cs.GetCustomerRequest(name="customers/slow"))
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await customers.GetCustomer(cs.GetCustomerRequest(name="customers/missing"))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await customers.DeleteCustomer(cs.DeleteCustomerRequest(name="customers/c1"))
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        completions = ccs_grpc.CompletionServiceStub(channel)
        replies = [r async for r in completions.StreamComplete(ccs.StreamCompleteRequest())]
        assert [r.delta.content for r in replies] == ["a", "b", "c"]
        broken = completions.StreamComplete(ccs.StreamCompleteRequest(model="models/broken"))
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            _ = [r async for r in broken]
        assert failed.value.code() == grpc.StatusCode.NOT_FOUND

    port = start_metrics_server("127.0.0.1", free_port(), registry)
    try:
        text = await asyncio.to_thread(fetch, f"http://127.0.0.1:{port}/metrics")
    finally:
        stop_metrics_servers()

    get = calls(GET_CUSTOMER, grpc_type="unary")
    assert sample(text, "grpc_server_started_total", **get) == 3
    assert sample(text, "grpc_server_handled_total", **get, grpc_code="OK") == 2
    assert sample(text, "grpc_server_handled_total", **get, grpc_code="NOT_FOUND") == 1
    assert sample(text, "grpc_server_handling_seconds_count", **get) == 3
    # The slow call (at least 30 ms) is never in the 25 ms bucket; how fast the other two were
    # depends on the machine (a cold first call can take longer), so they are not pinned.
    assert (sample(text, "grpc_server_handling_seconds_bucket", **get, le="0.025") or 0) <= 2
    assert sample(text, "grpc_server_handling_seconds_bucket", **get, le="10.0") == 3
    assert (sample(text, "grpc_server_handling_seconds_sum", **get) or 0) >= 0.03
    delete = calls(f"/{CUSTOMER_SERVICE}/DeleteCustomer", grpc_type="unary")
    assert sample(text, "grpc_server_started_total", **delete) == 1
    assert sample(text, "grpc_server_handled_total", **delete, grpc_code="PERMISSION_DENIED") == 1
    assert sample(text, "grpc_server_handled_total", **delete, grpc_code="OK") is None
    stream = calls(f"/{COMPLETION_SERVICE}/StreamComplete", grpc_type="server_stream")
    assert sample(text, "grpc_server_started_total", **stream) == 2
    assert sample(text, "grpc_server_handled_total", **stream, grpc_code="OK") == 1
    assert sample(text, "grpc_server_handled_total", **stream, grpc_code="NOT_FOUND") == 1
    assert sample(text, "grpc_server_handling_seconds_count", **stream) == 2
    assert sample(text, "bhiv_service_info", service="crm") == 1


async def test_unknown_methods_share_one_series_and_keep_the_caller_chosen_name_out() -> None:
    registry = CollectorRegistry()
    interceptor = MetricsInterceptor("crm", GrpcServerMetrics(registry))
    chain = lambda cfg, *_: [interceptor, ErrorMappingInterceptor("crm.bhiv.core")]
    async with serving([(CUSTOMERS, Customers())], chain=chain, config=config_for("crm")) as (_, channel):
        for name in ("/bhiv.nothing.v1.Scan/Probe1", "/bhiv.nothing.v1.Scan/Probe2"):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await channel.unary_unary(name)(b"")
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    from prometheus_client import generate_latest

    text = generate_latest(registry).decode()
    unknown = {"grpc_service": "unknown", "grpc_method": "unknown", "grpc_type": "unary"}
    assert sample(text, "grpc_server_started_total", **unknown) == 2
    assert sample(text, "grpc_server_handled_total", **unknown, grpc_code="UNIMPLEMENTED") == 2
    assert "Probe" not in text
    assert interceptor._methods == {}


async def test_abort_from_an_inner_layer_propagates_after_being_recorded() -> None:
    registry = CollectorRegistry()
    interceptor = MetricsInterceptor("crm", GrpcServerMetrics(registry))
    descriptor = CUSTOMERS.methods_by_name["GetCustomer"]

    async def aborted(call: CallInfo, request: Any, context: Any) -> Any:
        call.code = grpc.StatusCode.UNAUTHENTICATED  # what the error mapper does before aborting
        raise grpc.aio.AbortError()

    call = CallInfo(GET_CUSTOMER, descriptor, "ipv4:127.0.0.1:1", {}, time.perf_counter())
    with pytest.raises(grpc.aio.AbortError):
        await interceptor.intercept_unary(call, None, None, aborted)  # type: ignore[arg-type]
    handled = registry.get_sample_value(
        "grpc_server_handled_total", calls(GET_CUSTOMER, grpc_type="unary", grpc_code="UNAUTHENTICATED")
    )
    assert handled == 1


def test_disabled_port_starts_no_endpoint() -> None:
    assert start_metrics_server("127.0.0.1", 0) == 0


def test_default_endpoint_serves_security_counters_and_process_metrics_on_loopback() -> None:
    metrics.auth_failures.labels("crm", "TOKEN_EXPIRED").inc()
    metrics.audit_records.labels("crm", "durable").inc(2)
    before = metrics.REGISTRY.get_sample_value(
        "bhiv_auth_failures_total", {"service": "crm", "reason": "TOKEN_EXPIRED"}
    )
    port = start_metrics_server("127.0.0.1", free_port())
    try:
        text = fetch(f"http://127.0.0.1:{port}/metrics")
    finally:
        stop_metrics_servers()
    assert sample(text, "bhiv_auth_failures_total", service="crm", reason="TOKEN_EXPIRED") == before
    assert (sample(text, "bhiv_audit_records_total", service="crm", durability="durable") or 0) >= 2
    assert sample(text, "process_resident_memory_bytes") is not None


def test_taken_metrics_port_fails_loudly() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            start_metrics_server("127.0.0.1", taken.getsockname()[1])


def _record_in_worker(calls_to_make: int, port: int) -> None:
    """Runs in a spawned worker: records calls and an auth failure into the shared directory."""
    import prometheus_client.values

    assert prometheus_client.values.ValueClass._multiprocess, "the worker must be in multiprocess mode"

    async def ok(call: CallInfo, request: Any, context: Any) -> str:
        return "ok"

    interceptor = MetricsInterceptor("crm")
    descriptor = CUSTOMERS.methods_by_name["GetCustomer"]

    async def run() -> None:
        for _ in range(calls_to_make):
            call = CallInfo(GET_CUSTOMER, descriptor, "ipv4:127.0.0.1:1", {}, time.perf_counter())
            await interceptor.intercept_unary(call, None, None, ok)  # type: ignore[arg-type]

    asyncio.run(run())
    metrics.auth_failures.labels("crm", "TOKEN_EXPIRED").inc()
    # Workers never serve: the parent serves the sum.
    assert start_metrics_server("127.0.0.1", port) == 0


def test_multiprocess_parent_serves_the_sum_of_its_workers(tmp_path: Path) -> None:
    directory = tmp_path / "metrics"
    directory.mkdir()
    (directory / "counter_999999.db").write_bytes(b"stale run")
    prepare_multiprocess_metrics(directory)
    try:
        assert os.environ[MULTIPROC_ENV] == str(directory)
        assert not (directory / "counter_999999.db").exists()
        ctx = multiprocessing.get_context("spawn")
        workers = [ctx.Process(target=_record_in_worker, args=(n, free_port())) for n in (3, 4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=120)
            assert worker.exitcode == 0
        port = start_multiprocess_metrics_server("127.0.0.1", free_port())
        text = fetch(f"http://127.0.0.1:{port}/metrics")
        get = calls(GET_CUSTOMER, grpc_type="unary")
        assert sample(text, "grpc_server_started_total", **get) == 7
        assert sample(text, "grpc_server_handled_total", **get, grpc_code="OK") == 7
        assert sample(text, "grpc_server_handling_seconds_count", **get) == 7
        assert sample(text, "bhiv_auth_failures_total", service="crm", reason="TOKEN_EXPIRED") == 2
        assert sample(text, "bhiv_service_info", service="crm") == 1

        for worker in workers:
            assert worker.pid is not None
            mark_worker_dead(worker.pid)
        text = fetch(f"http://127.0.0.1:{port}/metrics")
        assert sample(text, "bhiv_service_info", service="crm") is None
        assert sample(text, "grpc_server_started_total", **get) == 7
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        stop_metrics_servers()


def test_multiprocess_server_needs_preparation() -> None:
    assert MULTIPROC_ENV not in os.environ
    with pytest.raises(ValueError, match="prepare_multiprocess_metrics"):
        start_multiprocess_metrics_server("127.0.0.1", free_port())


async def test_plain_series_expose_what_prometheus_client_children_would(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The single-process collector and the multiprocess path give the same samples for the same calls."""
    # Each call starts at 0 on the metrics' clock and ends at its duration, exactly.
    now = [0.0]
    monkeypatch.setattr(metrics, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    durations = [0.0001, 0.0005, 0.0007, 0.03, 0.03, 11.0]  # below, on and between bounds, above all
    codes = [grpc.StatusCode.OK] * 4 + [grpc.StatusCode.NOT_FOUND, grpc.StatusCode.OK]
    texts = []
    for multiprocess in (False, True):
        registry = CollectorRegistry()
        interceptor = MetricsInterceptor("crm", GrpcServerMetrics(registry, multiprocess=multiprocess))
        descriptor = CUSTOMERS.methods_by_name["GetCustomer"]
        for duration, code in zip(durations, codes, strict=True):

            async def answer(call: CallInfo, request: Any, context: Any, code: grpc.StatusCode = code) -> str:
                call.code = code
                return "done"

            now[0] = duration
            call = CallInfo(GET_CUSTOMER, descriptor, "ipv4:127.0.0.1:1", {}, 0.0)
            await interceptor.intercept_unary(call, None, None, answer)  # type: ignore[arg-type]
        texts.append(
            sorted(
                (s.name, tuple(sorted(s.labels.items())), round(s.value, 2))
                for family in registry.collect()
                for s in family.samples
                if not s.name.endswith("_created")
            )
        )
    plain, shared = texts
    assert plain == shared
    get = calls(GET_CUSTOMER, grpc_type="unary")
    registry_samples = {(name, labels): value for name, labels, value in plain}

    def value(name: str, **labels: str) -> float | None:
        return registry_samples.get((name, tuple(sorted({**get, **labels}.items()))))

    assert value("grpc_server_started_total") == 6
    assert value("grpc_server_handled_total", grpc_code="OK") == 5
    assert value("grpc_server_handled_total", grpc_code="NOT_FOUND") == 1
    assert value("grpc_server_handling_seconds_bucket", le="0.0005") == 2
    assert value("grpc_server_handling_seconds_bucket", le="0.001") == 3
    assert value("grpc_server_handling_seconds_bucket", le="0.05") == 5
    assert value("grpc_server_handling_seconds_bucket", le="10.0") == 5
    assert value("grpc_server_handling_seconds_bucket", le="+Inf") == 6
    assert value("grpc_server_handling_seconds_count") == 6
    assert value("grpc_server_handling_seconds_sum") == pytest.approx(11.06, abs=0.01)


def test_a_duration_on_a_bucket_bound_counts_in_that_bucket(monkeypatch: pytest.MonkeyPatch) -> None:
    series = metrics.CallSeries(("s", "m", "unary"))
    now = [0.0]
    monkeypatch.setattr(metrics, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    for elapsed in (0.0005, 0.00051, 10.0, 10.5):
        now[0] = elapsed
        series.finish(grpc.StatusCode.OK, 0.0)
    assert series.buckets[0] == 1  # le="0.0005"
    assert series.buckets[1] == 1  # le="0.001"
    assert series.buckets[-2:] == [1, 1]  # le="10.0", then above every bound
    assert series.handled() == {grpc.StatusCode.OK: 4}
    assert series.seconds == pytest.approx(20.50101)
