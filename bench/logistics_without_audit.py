"""The logistics service with the standard chain minus audit: the baseline of the audit-cost ratio.

``python -m bench.logistics_without_audit`` reads the same configuration as the real service (its
port from ``BHIV_LOGISTICS_PORT``) and serves the same servicers behind tracing, metrics, errors,
auth, RBAC and validation, but writes no audit record, until SIGTERM.
"""

from __future__ import annotations

import asyncio
import functools
import signal

from bhiv_core.runtime.config import load_config
from bhiv_core.runtime.server import start_service
from bhiv_core.services.logistics.server import definition
from bhiv_core.standard_chain import standard_chain


async def main() -> None:
    config = load_config("logistics")
    running = await start_service(config, definition(config), functools.partial(standard_chain, audit=False))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    print(f"logistics without audit serving on {running.address}", flush=True)
    await stop.wait()
    await running.stop(grace=1)


if __name__ == "__main__":
    asyncio.run(main())
