"""The open-loop load generator: the simulator's workload (``llmrca.sim.workload``: Locust-like constant pacing of
``users`` clients at ``rate`` req/s, the study's prompt and output lengths) sent for real as streaming chat
completions to the gateway. Every request starts a trace (a fresh W3C ``traceparent``). At most ``users`` requests
are in flight (a Locust user waits for its answer). Where the deployment has a workload node
(``workload.workload_node``) the load generator is the ``loadgen`` service: it serves its own ``/metrics`` (what it
sent and what it got back, client-side: the metric catalogue's ``client`` series) and a token-protected,
self-expiring ``/control/surge`` (prompt-surge: a share of its prompts ``factor`` times as long). Run as
``python -m llmrca.testbed.loadgen RUN_DIR``.
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


class ClientMetrics:
    """The client's own series (the metric catalogue's ``client`` scope), in a registry of their own."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        from llmrca.sim.metrics import REQUEST_BUCKETS, TOKEN_BUCKETS

        reg = self.registry = CollectorRegistry()
        self.requests = Counter("loadgen_requests", "Requests the load generator sent.", registry=reg)
        self.prompt_tokens = Counter("loadgen_prompt_tokens", "Prompt tokens (words) it sent.", registry=reg)
        self.failures = Counter("loadgen_request_failures", "Requests that failed (status other than 200, or no "
                                                            "answer).", registry=reg)
        self.in_flight = Gauge("loadgen_requests_in_flight", "Requests waiting for their answer.", registry=reg)
        self.response_time = Histogram("loadgen_response_time_seconds", "Time from sending a request to the end of "
                                       "its answer, client-side.", buckets=REQUEST_BUCKETS, registry=reg)
        self.prompt_length = Histogram("loadgen_prompt_length_tokens", "Prompt length of each request sent.",
                                       buckets=TOKEN_BUCKETS, registry=reg)


class LoadGen:
    def __init__(self, state: dict[str, Any], rd: Any):
        from llmrca.sim.hardware import model_spec
        from llmrca.testbed.traffic_control import Timed

        self.cfg = TestbedConfig.from_dict(state["config"])
        self.url = f"http://{LOOPBACK}:{state['ports']['gateway']}/v1/chat/completions"
        self.rng = np.random.default_rng([self.cfg.seed, 0x10AD])
        self.surge_rng = np.random.default_rng([self.cfg.seed, 0x5A6E])  # its own draws: the schedule is unchanged
        self.log = JsonLog(rd.log("loadgen"), "loadgen", "locust")
        self.stats = {"sent": 0, "ok": 0, "errors": 0, "tokens": 0, "skipped": 0, "latency_sum": 0.0}
        self.inflight = 0
        self.metrics = ClientMetrics()
        self.surge = Timed(rd, state.get("client") or "loadgen", "surge")
        # a surging prompt is held to the model's context less the answer (a client truncates what vLLM refuses)
        self.context = model_spec(self.cfg.deploy.model).context_tokens

    def prompt_of(self, prompt: int, max_tokens: int) -> int:
        """The prompt length to send now: as scheduled, or longer while a surge holds (for its share)."""
        s = self.surge.current()
        if s is None or self.surge_rng.random() >= s["share"]:
            return int(prompt)
        return max(int(prompt), min(round(prompt * s["factor"]), self.context - int(max_tokens)))

    def schedule(self, t0: float, t1: float) -> wlmod.Workload:
        return wlmod.generate(self.cfg.deploy, self.cfg.deploy.rate, t0, t1, self.rng)

    async def one(self, session: Any, prompt: int, max_tokens: int, answer: int) -> None:
        import aiohttp

        trace_id = self.rng.bytes(16).hex()
        span_id = self.rng.bytes(8).hex()
        prompt = self.prompt_of(prompt, max_tokens)
        body = {"model": self.cfg.deploy.model, "stream": True, "max_tokens": int(max_tokens),
                "messages": [{"role": "user", "content": prompt_text(int(prompt), int(answer), self.rng)}]}
        headers = {"traceparent": f"00-{trace_id}-{span_id}-01", "Content-Type": "application/json"}
        t0 = time.time()
        self.inflight += 1
        self.stats["sent"] += 1
        m = self.metrics
        m.requests.inc()
        m.prompt_tokens.inc(int(prompt))
        m.prompt_length.observe(int(prompt))
        m.in_flight.inc()
        ok = False
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
            m.in_flight.dec()
            m.response_time.observe(time.time() - t0)
            if not ok:
                m.failures.inc()

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


    # -- the workload node's endpoints --------------------------------------------------------------------------
    async def metrics_page(self, request: Any) -> Any:
        from aiohttp import web
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return web.Response(body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def control_get(self, request: Any) -> Any:
        from aiohttp import web

        return web.json_response(self.surge.state())

    async def control_surge(self, request: Any) -> Any:
        """``{"factor": x | null, "share": 0..1, "expires_at": t}``: long prompts for a share (prompt-surge)."""
        from aiohttp import web

        from llmrca.testbed.auth import INJECTION_HEADER
        from llmrca.testbed.traffic_control import checked_surge

        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise TypeError("the body must be a JSON object")
            value, expires = checked_surge(body, time.time())
        except (ValueError, TypeError) as e:
            return web.json_response({"error": str(e)}, status=400)
        self.surge.set(value, expires, reason=str(body.get("reason", "control endpoint")),
                       injection=request.headers.get(INJECTION_HEADER) or None)
        return web.json_response(self.surge.state())

    async def expiry_loop(self, stop: asyncio.Event) -> None:
        """A surge past its expiry ends (and is recorded) even while no request is sent."""
        while not stop.is_set():
            self.surge.current()
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except TimeoutError:
                pass


def make_app(gen: LoadGen, token: str) -> Any:
    from aiohttp import web

    from llmrca.testbed import auth

    app = web.Application(middlewares=[auth.middleware(
        token, lambda method, path: method == "POST" and path.startswith("/control"))])
    app.router.add_get("/metrics", gen.metrics_page)
    app.router.add_get("/control", gen.control_get)
    app.router.add_post("/control/surge", gen.control_surge)
    return app


async def _main(run_dir: str, stop: asyncio.Event) -> None:
    rd, state = service.settings(run_dir, "loadgen")
    gen = LoadGen(state, rd)
    port = state["ports"].get("loadgen")
    if port is None:  # no workload node: the client is outside the deployment, as in the study
        await gen.run(stop)
        return
    from llmrca.testbed import auth

    runner = await service.start_site(make_app(gen, auth.read_token(rd.path)), port)
    expiry = asyncio.create_task(gen.expiry_loop(stop))
    try:
        await gen.run(stop)
    finally:
        expiry.cancel()
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.exit("usage: python -m llmrca.testbed.loadgen RUN_DIR")
    service.run(lambda stop: _main(args[0], stop))


if __name__ == "__main__":
    main()
