"""What the orchestrator's router costs (issue 12 item 2), in process: no mesh needed.

1. Training: building a :class:`~bhiv_core.agents.router.Router` trains it from ``intents.tsv``;
   the median of three builds (wall clock), which decides whether a cached model is worth it.
2. Routing: CPU per ``route`` call (``thread_time``) for a short query, a 10,000-character query
   (read as its first and last sentences, so it should cost about what a short one does: the ratio
   is reported) and a query with a PDF attachment.

Run alone with ``python -m bench.router``.
"""

from __future__ import annotations

import statistics
import time

from bhiv_core.agents.base import InputType
from bhiv_core.agents.router import Router

SHORT = "What does the Gita say about acting without attachment to results?"
BODY = "The quarterly numbers went up again, and the team hired two engineers. "
LONG = "Summarize this report: " + BODY * 142


def _cpu_us_per_route(
    router: Router, query: str, types: tuple[InputType, ...] = (), calls: int = 300
) -> float:
    router.route(query, types)
    started = time.thread_time()
    for _ in range(calls):
        router.route(query, types)
    return (time.thread_time() - started) / calls * 1e6


def router_benchmarks() -> dict[str, float]:
    """Training seconds and CPU microseconds per route; prints them."""
    builds = [Router() for _ in range(3)]
    router = builds[0]
    report = {
        "training_seconds_median": round(statistics.median(b.training_seconds for b in builds), 3),
        "route_cpu_us_short": round(_cpu_us_per_route(router, SHORT)),
        "route_cpu_us_10k_chars": round(_cpu_us_per_route(router, LONG)),
        "route_cpu_us_pdf": round(_cpu_us_per_route(router, "summarise this", (InputType.PDF,))),
    }
    report["ratio_10k_vs_short"] = round(report["route_cpu_us_10k_chars"] / report["route_cpu_us_short"], 2)
    for key, value in report.items():
        print(f"  {key}: {value:g}")
    return report


if __name__ == "__main__":
    router_benchmarks()
