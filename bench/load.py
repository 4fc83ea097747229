"""A bounded closed-loop load generator for one unary RPC, with latency percentiles and CPU."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds used so far by the processes ``pids`` (Linux /proc)."""
    total = 0.0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        total += (int(fields[11]) + int(fields[12])) / _TICKS
    return total


def pin(pid: int, cpu: int) -> None:
    """Pins every thread of ``pid`` (threads started later inherit it) to ``cpu``."""
    for task in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(task), {cpu})


@contextlib.contextmanager
def client_apart(server_pids: Sequence[int]) -> Iterator[None]:
    """On two or more cores, this process (the load) runs on core 0 and the servers on core 1.

    Server CPU per call is then not inflated by the client competing for the same core; the
    affinity of everything is restored afterwards.
    """
    if (os.cpu_count() or 1) < 2:
        yield
        return
    everyone = set(range(os.cpu_count() or 1))
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {0})
    for server in server_pids:
        pin(server, 1)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)
        for server in server_pids:
            with contextlib.suppress(OSError):
                for task in os.listdir(f"/proc/{server}/task"):
                    os.sched_setaffinity(int(task), everyone)


@dataclass(frozen=True)
class Result:
    """One measured phase."""

    name: str
    calls: int
    seconds: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    server_cpu_us_per_call: float

    @property
    def rps(self) -> float:
        """Calls per second."""
        return self.calls / self.seconds


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def measure(
    name: str,
    call: Callable[[], Awaitable[object]],
    *,
    server_pids: Sequence[int],
    seconds: float = 3.0,
    concurrency: int = 16,
    max_calls: int = 200_000,
) -> Result:
    """Runs ``call`` from ``concurrency`` loops for ``seconds`` (or ``max_calls``) and measures it."""
    for _ in range(200):  # warm up connections and caches
        await call()
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def loop() -> None:
        while time.perf_counter() < stop_at and len(latencies) < max_calls:
            t0 = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - t0)

    cpu0 = cpu_seconds(server_pids)
    t0 = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    cpu = cpu_seconds(server_pids) - cpu0
    latencies.sort()
    return Result(
        name=name,
        calls=len(latencies),
        seconds=elapsed,
        p50_ms=_percentile(latencies, 0.50) * 1e3,
        p95_ms=_percentile(latencies, 0.95) * 1e3,
        p99_ms=_percentile(latencies, 0.99) * 1e3,
        server_cpu_us_per_call=cpu / max(1, len(latencies)) * 1e6,
    )


def table(results: Sequence[Result]) -> str:
    """Formats results as a fixed-width table."""
    lines = [
        f"{'scenario':<34}{'calls':>8}{'rps':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'cpu us/call':>13}"
    ]
    for r in results:
        lines.append(
            f"{r.name:<34}{r.calls:>8}{r.rps:>9.0f}{r.p50_ms:>9.2f}{r.p95_ms:>9.2f}{r.p99_ms:>9.2f}"
            f"{r.server_cpu_us_per_call:>13.0f}"
        )
    return "\n".join(lines)
