"""The open-loop load generator: the simulator's workload (``llmrca.sim.workload``: Locust-like constant pacing of
``users`` clients at ``rate`` req/s, the study's prompt and output lengths) sent for real as streaming chat
completions to the gateway. Every request starts a trace (a fresh W3C ``traceparent``). At most ``users`` requests
are in flight (a Locust user waits for its answer). Run as ``python -m llmrca.testbed.loadgen RUN_DIR``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import numpy as np

from llmrca.sim import workload as wlmod
from llmrca.testbed import service
from llmrca.testbed.config import TestbedConfig
from llmrca.testbed.logs import JsonLog
from llmrca.testbed.rundir import LOOPBACK

CHUNK_S = 600.0  # the schedule is drawn this far ahead at a time
CLIENT_TIMEOUT_S = 180.0
_WORDS = ("explain", "the", "serving", "system", "latency", "of", "large", "language", "models", "under", "load",
          "with", "batching", "and", "caching", "on", "GPUs", "in", "production", "clusters")


def prompt_text(n_tokens: int, answer_tokens: int, rng: np.random.Generator) -> str:
    """A prompt of ``n_tokens`` words that asks for an answer of ``answer_tokens`` words."""
    ask = f"Answer in {answer_tokens} words."
    n = max(0, n_tokens - len(ask.split()))
    idx = rng.integers(0, len(_WORDS), n)
    return " ".join(_WORDS[i] for i in idx) + (" " if n else "") + ask


class LoadGen:
    def __init__(self, state: dict[str, Any], rd: Any):
        self.cfg = TestbedConfig.from_dict(state["config"])
        self.url = f"http://{LOOPBACK}:{state['ports']['gateway']}/v1/chat/completions"
        self.rng = np.random.default_rng([self.cfg.seed, 0x10AD])
        self.log = JsonLog(rd.log("loadgen"), "loadgen", "locust")
        self.stats = {"sent": 0, "ok": 0, "errors": 0, "tokens": 0, "skipped": 0, "latency_sum": 0.0}
        self.inflight = 0

    def schedule(self, t0: float, t1: float) -> wlmod.Workload:
        return wlmod.generate(self.cfg.deploy, self.cfg.deploy.rate, t0, t1, self.rng)

    async def one(self, session: Any, prompt: int, max_tokens: int, answer: int) -> None:
        import aiohttp

        trace_id = self.rng.bytes(16).hex()
        span_id = self.rng.bytes(8).hex()
        body = {"model": self.cfg.deploy.model, "stream": True, "max_tokens": int(max_tokens),
                "messages": [{"role": "user", "content": prompt_text(int(prompt), int(answer), self.rng)}]}
        headers = {"traceparent": f"00-{trace_id}-{span_id}-01", "Content-Type": "application/json"}
        t0 = time.time()
        self.inflight += 1
        self.stats["sent"] += 1
        try:
            async with session.post(self.url, data=json.dumps(body), headers=headers) as r:
                n = 0
                async for line in r.content:
                    if line.startswith(b"data: {") and b'"content":" ' in line:
                        n += 1
                ok = r.status == 200
            self.stats["ok" if ok else "errors"] += 1
            self.stats["tokens"] += n
            self.stats["latency_sum"] += time.time() - t0
        except (TimeoutError, aiohttp.ClientError, OSError):
            self.stats["errors"] += 1
        finally:
            self.inflight -= 1

    async def run(self, stop: asyncio.Event) -> None:
        import aiohttp

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                        timeout=aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S))
        tasks: set[asyncio.Task] = set()
        start = time.monotonic()
        wall0 = time.time()
        t_from = 0.0
        next_report = 10.0
        try:
            while not stop.is_set():
                wl = self.schedule(t_from, t_from + CHUNK_S)
                for i in range(len(wl)):
                    if stop.is_set():
                        break
                    wait = wl.arrivals[i] - (time.monotonic() - start)
                    if wait > 0:
                        try:
                            await asyncio.wait_for(stop.wait(), wait)
                            break
                        except TimeoutError:
                            pass
                    if self.inflight >= self.cfg.deploy.users:
                        self.stats["skipped"] += 1  # every user is waiting for an answer
                        continue
                    t = asyncio.create_task(self.one(session, wl.prompt_tokens[i], wl.max_tokens[i],
                                                     wl.output_tokens[i]))
                    tasks.add(t)
                    t.add_done_callback(tasks.discard)
                    now = time.monotonic() - start
                    if now >= next_report:
                        next_report = now + 10.0
                        s = self.stats
                        self.log.write("INFO", "sent {} ok {} errors {} in flight {} mean latency {} s", s["sent"], s["ok"],
                                      s["errors"], self.inflight, f"{s['latency_sum'] / max(1, s['ok']):.3f}",
                                      stats=dict(s), since=wall0)
                t_from += CHUNK_S
        finally:
            for t in list(tasks):
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await session.close()
            self.log.close()


async def _main(run_dir: str, stop: asyncio.Event) -> None:
    rd, state = service.settings(run_dir, "loadgen")
    await LoadGen(state, rd).run(stop)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.exit("usage: python -m llmrca.testbed.loadgen RUN_DIR")
    service.run(lambda stop: _main(args[0], stop))


if __name__ == "__main__":
    main()
