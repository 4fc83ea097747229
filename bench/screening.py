"""What screening requests' text fields costs the chain (issue 11 item 7).

1. In process: the screening concern's own CPU per request (``thread_time``), for a CreateTicket
   with four text fields (~0.5 KB) and a CreateCustomer with eleven (names, notes, tags, address).
2. Through the chain: two crm processes with the full standard chain, one with ``BHIV_SCREENING=on``
   and one with ``off``, on the mesh's data and identity, called directly in adjacent pairs of
   phases (alternating which goes first), client and servers on separate cores: a cheap read with
   text (``ListCustomers``, a page of 1 with ``query`` and ``tag``) and a write with several text
   fields (``CreateTicket``: title, description, category, request id). The median pair's
   throughput and CPU-per-call ratios (on / off) are reported; goal ≥ 0.8.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import descriptor_pool

from bench.load import Result, client_apart, measure, table
from bhiv.crm.v1 import (
    address_pb2,
    customer_pb2,
    customer_service_pb2,
    customer_service_pb2_grpc,
    ticket_pb2,
    ticket_service_pb2,
    ticket_service_pb2_grpc,
)
from bhiv_core.interceptors.screening import ScreeningInterceptor
from bhiv_core.mesh import Mesh, free_port
from bhiv_core.runtime.chain import CallInfo

Metadata = tuple[tuple[str, str], ...]

DESCRIPTION = (
    "Hi team, the parcel for order 4411 arrived with the lid cracked; O'Brien from your Pune office "
    "said to drop by, but I'd rather you select the best option: a replacement shipped to my "
    "shipping_address, or a refund of ₹1,299. धन्यवाद! Ping me when it's sorted. " * 2
)


def _ticket(customer: str) -> ticket_service_pb2.CreateTicketRequest:
    return ticket_service_pb2.CreateTicketRequest(
        ticket=ticket_pb2.Ticket(
            customer=customer, title="Cracked lid on order 4411", description=DESCRIPTION, category="damage"
        ),
    )


def _customer() -> customer_service_pb2.CreateCustomerRequest:
    return customer_service_pb2.CreateCustomerRequest(
        customer=customer_pb2.Customer(
            first_name="Siobhán",
            last_name="O'Brien",
            email="siobhan@example.com",
            company="O'Brien & Sons",
            notes=DESCRIPTION,
            tags=["vip", "ping-me", "wholesale"],
            address=address_pb2.Address(recipient="S. O'Brien", line1="12 MG Road", city="Pune", region="MH"),
        )
    )


def in_process(repeat: int = 20_000) -> dict[str, float]:
    """The concern's CPU per request, measured on this thread."""
    pool = descriptor_pool.Default()
    screening = ScreeningInterceptor(on_hit=lambda hit: None)
    out: dict[str, float] = {}
    for name, method, request in (
        ("create_ticket_4_fields", "bhiv.crm.v1.TicketService.CreateTicket", _ticket("customers/c1")),
        ("create_customer_11_fields", "bhiv.crm.v1.CustomerService.CreateCustomer", _customer()),
    ):
        descriptor = pool.FindMethodByName(method)
        path = "/" + method.rpartition(".")[0] + "/" + method.rpartition(".")[2]
        check = screening.bind(path, descriptor)
        assert check is not None
        call = CallInfo(path, descriptor, "ipv4:127.0.0.1:5", {}, 0.0)
        context: Any = None  # the check never reads it
        best = float("inf")
        for _ in range(5):
            start = time.thread_time()
            for _ in range(repeat // 5):
                check(call, request, context)
            best = min(best, (time.thread_time() - start) / (repeat // 5))
        out[f"{name}_us_per_request"] = round(best * 1e6, 1)
    assert screening.hits == 0, "benign bench requests must not be hits"
    for key, value in out.items():
        print(f"  {key}: {value}")
    return out


def _serve(mesh: Mesh, screening: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **mesh.service_env(),
        "BHIV_CRM_PORT": str(port),
        "BHIV_CRM_METRICS_PORT": str(free_port()),
        "BHIV_SCREENING": screening,
    }
    proc = subprocess.Popen([sys.executable, "-m", "bench.crm_chain"], env=env, stdout=subprocess.PIPE)
    return proc, f"{mesh.host}:{port}"


async def chain_with_and_without(
    mesh: Mesh, sales: Metadata, support: Metadata, pairs: int = 8, seconds: float = 1.5
) -> dict[str, object]:
    """Adjacent pairs of phases: crm with screening on vs off, for a read and a write."""
    on, on_address = _serve(mesh, "on")
    off, off_address = _serve(mesh, "off")
    report: dict[str, object] = {}
    try:
        for proc in (on, off):
            assert proc.stdout is not None
            await asyncio.get_running_loop().run_in_executor(None, proc.stdout.readline)
        async with (
            grpc.aio.insecure_channel(on_address) as on_channel,
            grpc.aio.insecure_channel(off_address) as off_channel,
        ):
            customers = customer_service_pb2_grpc.CustomerServiceStub(on_channel)
            customer = await customers.CreateCustomer(
                customer_service_pb2.CreateCustomerRequest(
                    customer=customer_pb2.Customer(
                        first_name="Bench", email=f"bench-{secrets.token_hex(4)}@example.com"
                    )
                ),
                metadata=sales,
            )
            listing = customer_service_pb2.ListCustomersRequest(
                page_size=1, query="What's dharma?", tag="vip"
            )
            ticket = _ticket(customer.customer.name)
            scenarios: dict[str, Callable[[Any], Callable[[], Awaitable[object]]]] = {
                "list_customers_with_text": lambda ch: (
                    lambda: customer_service_pb2_grpc.CustomerServiceStub(ch).ListCustomers(
                        listing, metadata=sales
                    )
                ),
                "create_ticket_4_text_fields": lambda ch: (
                    lambda: ticket_service_pb2_grpc.TicketServiceStub(ch).CreateTicket(
                        ticket, metadata=support
                    )
                ),
            }
            for name, make in scenarios.items():
                measured: list[tuple[Result, Result]] = []
                with client_apart([on.pid, off.pid]):
                    for number in range(pairs):
                        order = [("on", on_channel, on.pid), ("off", off_channel, off.pid)]
                        if number % 2:
                            order.reverse()
                        results: dict[str, Result] = {}
                        for label, channel, pid in order:
                            results[label] = await measure(
                                f"{name}, screening {label}",
                                make(channel),
                                server_pids=[pid],
                                seconds=seconds,
                            )
                        measured.append((results["on"], results["off"]))
                        with_it, without = results["on"], results["off"]
                        print(
                            f"  {name} pair {number + 1}: on {with_it.server_cpu_us_per_call:4.0f} us/call, "
                            f"off {without.server_cpu_us_per_call:4.0f} us/call, "
                            f"throughput on/off {with_it.rps / without.rps:.3f}",
                            flush=True,
                        )
                throughput = sorted(a.rps / b.rps for a, b in measured)
                efficiency = sorted(b.server_cpu_us_per_call / a.server_cpu_us_per_call for a, b in measured)
                median = min(
                    measured,
                    key=lambda ab: abs(
                        ab[1].server_cpu_us_per_call / ab[0].server_cpu_us_per_call
                        - efficiency[len(efficiency) // 2]
                    ),
                )
                print(table(list(median)))
                report[name] = {
                    "pairs": float(pairs),
                    "throughput_on_vs_off": round(statistics.median(throughput), 3),
                    "throughput_on_vs_off_min": round(throughput[0], 3),
                    "throughput_on_vs_off_max": round(throughput[-1], 3),
                    "cpu_efficiency_on_vs_off": round(statistics.median(efficiency), 3),
                    "cpu_us_per_call_added": round(
                        statistics.median(
                            a.server_cpu_us_per_call - b.server_cpu_us_per_call for a, b in measured
                        ),
                        1,
                    ),
                    "goal": 0.8,
                }
                print(f"  {name}: {report[name]}")
    finally:
        for proc in (on, off):
            proc.terminate()
            proc.wait(timeout=10)
    return report


async def screening_benchmarks(mesh: Mesh, sales: Metadata, support: Metadata) -> dict[str, object]:
    """Both parts; prints and returns the figures."""
    print("  in process: the screening concern's CPU per request")
    report: dict[str, object] = {"in_process": in_process()}
    print("  through the chain: crm with screening on vs off, direct, adjacent pairs")
    report |= await chain_with_and_without(mesh, sales, support)
    return report


async def screening_benchmarks_on(mesh: Mesh, admin_credentials: tuple[str, str]) -> dict[str, object]:
    """:func:`screening_benchmarks` with a sales and a support user created on ``mesh``."""
    from bench.resources import _login, _user
    from bhiv.identity.v1 import user_pb2

    async with grpc.aio.insecure_channel(mesh.address("identity")) as channel:
        admin = await _login(channel, *admin_credentials)
        sales = await _user(channel, admin, user_pb2.ROLE_SALES)
        support = await _user(channel, admin, user_pb2.ROLE_SUPPORT)
    return await screening_benchmarks(mesh, sales, support)


async def _main() -> None:
    """``python -m bench.screening``: this benchmark alone, on its own mesh."""
    import tempfile
    from pathlib import Path

    from bench.run import _admin_credentials

    with tempfile.TemporaryDirectory() as tmp:
        env = {"BHIV_LOG_LEVEL": os.environ.get("BHIV_LOG_LEVEL", "warning")}
        async with Mesh.with_free_ports(Path(tmp), edge_rate_limit=1_000_000, env=env) as mesh:
            await screening_benchmarks_on(mesh, _admin_credentials(mesh))


if __name__ == "__main__":
    asyncio.run(_main())
