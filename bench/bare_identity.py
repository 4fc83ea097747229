"""The identity service with no interceptors at all: the baseline of the chain benchmark.

``python -m bench.bare_identity`` reads the same configuration as the real service (port from
``BHIV_IDENTITY_PORT``) and serves the same servicers, without the chain, until SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal

from bhiv_core.runtime.config import load_config
from bhiv_core.runtime.server import Chain, start_service
from bhiv_core.services.identity.server import definition


async def main() -> None:
    config = load_config("identity")
    running = await start_service(config, definition(config), lambda *_: Chain([]))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    print(f"bare identity serving on {running.address}", flush=True)
    await stop.wait()
    await running.stop(grace=1)


if __name__ == "__main__":
    asyncio.run(main())
