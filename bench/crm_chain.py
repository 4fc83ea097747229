"""The crm service with the standard chain, for the screening benchmark's pairs of processes.

``python -m bench.crm_chain`` reads the same configuration as the real service (its port from
``BHIV_CRM_PORT``; screening on or off by ``BHIV_SCREENING``) and serves until SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal

from bhiv_core.runtime.config import load_config
from bhiv_core.runtime.server import start_service
from bhiv_core.services.crm.server import definition
from bhiv_core.standard_chain import standard_chain


async def main() -> None:
    config = load_config("crm")
    running = await start_service(config, definition(config), standard_chain)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    print(f"crm serving on {running.address}", flush=True)
    await stop.wait()
    await running.stop(grace=1)


if __name__ == "__main__":
    asyncio.run(main())
