"""What every live service process shares: reading its settings from the run folder, a loopback HTTP site, and a
clean stop on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from llmrca.testbed.rundir import LOOPBACK, RunDir


def settings(run_dir: str, key: str) -> tuple[RunDir, dict[str, Any]]:
    rd = RunDir(run_dir)
    return rd, rd.read_state()


async def start_site(app: Any, port: int) -> Any:
    from aiohttp import web

    # handler_cancellation: a client that hangs up cancels its handler, so an engine stops generating for it and
    # the proxy drops its call to the engine (aiohttp leaves handlers running by default).
    runner = web.AppRunner(app, access_log=None, handle_signals=False, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, LOOPBACK, port, reuse_address=True)
    await site.start()
    return runner


def run(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``main(stop)`` until it returns; SIGTERM and SIGINT set ``stop``."""

    async def guard() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    asyncio.run(guard())
