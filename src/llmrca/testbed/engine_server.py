"""One live engine replica: an HTTP server with OpenAI's streaming ``/v1/chat/completions``, whose token timing is
the simulator's engine and GPU model on the wall clock (``llmrca.testbed.realtime``).

It exports vLLM's metrics (``vllm:*``) and the DCGM fields of its emulated GPU (``DCGM_FI_*``, plus Ray's
``ray_node_gpus_utilization``) on ``/metrics``, an ``llm_request`` SERVER span per request with vLLM's ``gen_ai.*``
attributes (OTLP/HTTP), and vLLM V1's log lines (as JSON records); spans and lines are the catalogue's
(``llmrca.deploy.telemetry``), rendered as the simulator renders them. ``/control/power-limit`` is the emulated GPU's
``nvidia-smi -pl`` (it needs the run's token; each change it accepts goes to the run's injection log). Requests are
checked as vLLM checks them (``max_tokens``, prompt + answer within the model's context: 400 otherwise), and a
request whose client hangs up is aborted. Run as ``python -m llmrca.testbed.engine_server RUN_DIR SERVICE``.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import sys
import time
from typing import Any

import numpy as np

from llmrca.deploy.telemetry import ENGINE_SPAN, ROUTE, VLLM_ENGINE_INDEX, line
from llmrca.sim.gpu import CLOCK_REASON_IDLE, CLOCK_REASON_SW_POWER_CAP
from llmrca.sim.hardware import GIB, gpu_kind, model_spec
from llmrca.sim.metrics import ITL_BUCKETS, REQUEST_BUCKETS, TOKEN_BUCKETS, TTFT_BUCKETS
from llmrca.testbed import service
from llmrca.testbed.config import NODE, TestbedConfig
from llmrca.testbed.logs import JsonLog
from llmrca.testbed.realtime import RealtimeEngine
from llmrca.testbed.telemetry import WeightedHistograms, extract, tracer

STATS_EVERY_S = 10.0
PREEMPTION_LOG_EVERY = 50  # the scheduler's warning on the 1st and every 50th preemption, as the simulator's
_ANSWER = re.compile(r"Answer in (\d+) words\.")
_VOCAB = ("the", "model", "token", "serving", "latency", "cache", "batch", "GPU", "request", "stream", "of", "and",
          "a", "to", "is", "prefill", "decode", "queue", "replica", "power")


# -- the engine's log lines and span, as module functions so a test can render them without a server ------------
def log_received(log: JsonLog, req_id: str, n: int, temperature: float, top_p: float, max_tokens: int) -> str:
    return log.line(line("vllm.request_received"), req_id, n, float(temperature), float(top_p), max_tokens)


def log_added(log: JsonLog, req_id: str) -> str:
    return log.line(line("vllm.request_added"), req_id)


def log_finished(log: JsonLog, req_id: str, status: int, reason: str) -> str:
    """The response went out (its finish reason), or the request was aborted."""
    if status == 200:
        return log.line(line("vllm.request_finished"), req_id, reason)
    return log.line(line("vllm.request_aborted"), req_id)


def log_stats(log: JsonLog, prompt_tps: float, gen_tps: float, running: int, waiting: int, kv_usage: float,
              hit_rate: float) -> str:
    """vLLM V1's periodic line; ``kv_usage`` and ``hit_rate`` as fractions."""
    return log.line(line("vllm.engine_stats"), f"{VLLM_ENGINE_INDEX:03d}", f"{prompt_tps:.1f}", f"{gen_tps:.1f}",
                    int(running), int(waiting), f"{100 * kv_usage:.1f}", f"{100 * max(hit_rate, 0.0):.1f}")


def log_replica_access(log: JsonLog, tag: str, serve_id: str, status: int, ms: float) -> str:
    """Ray Serve's replica access line (after ``Request failed.`` when the call raised)."""
    code = "CANCELLED" if status == 499 else str(status)
    if status >= 500:
        log.line(line("serve.replica_failed"), tag, serve_id)
    return log.line(line("serve.replica_access"), tag, serve_id, code, f"{ms:.1f}")


def log_preemption(log: JsonLog, req_id: str, cumulative: int) -> str:
    return log.line(line("vllm.preemption"), req_id, cumulative)


def span_attributes(model: str, req_id: str, *, temperature: float, top_p: float, n: int, max_tokens: int,
                    prompt_tokens: int, completion_tokens: int, queue: float, ttft: float, e2e: float,
                    prefill: float, decode: float) -> dict[str, Any]:
    """The ``llm_request`` span's attributes (the catalogue's keys); a latency not measured is None (not set)."""

    def num(x: float) -> float | None:
        return None if math.isnan(x) else round(float(x), 6)

    return ENGINE_SPAN.attributes({
        "gen_ai.response.model": model, "gen_ai.request.id": req_id,
        "gen_ai.request.temperature": float(temperature), "gen_ai.request.top_p": float(top_p),
        "gen_ai.request.n": int(n), "gen_ai.request.max_tokens": int(max_tokens),
        "gen_ai.usage.prompt_tokens": int(prompt_tokens), "gen_ai.usage.completion_tokens": int(completion_tokens),
        "gen_ai.latency.time_in_queue": num(queue), "gen_ai.latency.time_to_first_token": num(ttft),
        "gen_ai.latency.e2e": num(e2e), "gen_ai.latency.time_in_model_prefill": num(prefill),
        "gen_ai.latency.time_in_model_decode": num(decode),
        "gen_ai.latency.time_in_model_inference": num(prefill + decode),
    })


def prompt_tokens_of(text: str) -> int:
    """Our tokenizer: one token per whitespace-separated word (the load generator writes prompts to length)."""
    return len(text.split())


class BadRequest(ValueError):
    """A request the engine refuses with 400, as vLLM's OpenAI server does (its message, one line)."""


def _integer(body: dict[str, Any], key: str, default: int) -> int:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
        raise BadRequest(f"{key} must be an integer, is {v!r}")
    return int(v)


def _number(body: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (lo <= float(v) <= hi):
        raise BadRequest(f"{key} must be a number in [{lo:g}, {hi:g}], is {v!r}")
    return float(v)


def parse_request(body: Any, context_tokens: int, default_max_tokens: int) -> dict[str, Any]:
    """The fields of a chat request the emulated model uses, checked as vLLM checks them: ``max_tokens`` a
    positive integer, and prompt plus answer within the model's context (``max_model_len``); without
    ``max_tokens``, the deployment's answer length, at most what the context leaves. Raises ``BadRequest``."""
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        raise BadRequest("body must be a JSON object with a 'messages' list")
    if not all(isinstance(m, dict) for m in body["messages"]):
        raise BadRequest("every message must be an object with a 'content'")
    text = "\n".join(str(m.get("content", "")) for m in body["messages"])
    n_prompt = prompt_tokens_of(text)
    if n_prompt >= context_tokens:
        raise BadRequest(f"This model's maximum context length is {context_tokens} tokens. However, your request "
                         f"has {n_prompt} input tokens. Please reduce the length of the input messages.")
    max_tokens = _integer(body, "max_tokens", min(default_max_tokens, context_tokens - n_prompt))
    if max_tokens < 1:
        raise BadRequest(f"max_tokens must be at least 1, got {max_tokens}.")
    if n_prompt + max_tokens > context_tokens:
        raise BadRequest(f"This model's maximum context length is {context_tokens} tokens. However, you requested "
                         f"{n_prompt + max_tokens} tokens ({n_prompt} in the messages, {max_tokens} in the "
                         "completion). Please reduce the length of the messages or completion.")
    n = _integer(body, "n", 1)
    if n < 1:
        raise BadRequest(f"n must be at least 1, got {n}.")
    return {"text": text, "prompt_tokens": n_prompt, "max_tokens": max_tokens, "n": n,
            "temperature": _number(body, "temperature", 1.0, 0.0, 2.0), "top_p": _number(body, "top_p", 1.0, 0.0, 1.0),
            "stream": bool(body.get("stream", False))}


def wanted_tokens(text: str, max_tokens: int) -> int:
    """How long the emulated model's answer is: what the prompt asks for (``Answer in N words.``), at most
    ``max_tokens``; without such a request, the answer runs to ``max_tokens``."""
    m = _ANSWER.search(text)
    want = int(m.group(1)) if m else max_tokens
    return max(1, min(want, max_tokens))


MAX_EXPIRY_S = 86400.0 + 600.0  # a cap expires within a day (the longest fault) and a margin


def checked_limit(watts: Any, expires_at: Any, gpu: Any, now: float) -> tuple[float | None, float | None]:
    """A power-limit request's values: ``watts`` None (back to the default) or a number the GPU accepts, with
    ``expires_at`` a finite time within a day; anything else a ``ValueError`` naming the field."""
    def number(name: str, v: Any) -> float | None:
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{name} must be a finite number or null, is {v!r}")
        return float(v)

    w = number("watts", watts)
    if w is not None and not (gpu.min_power_w <= w <= gpu.tdp_w):
        raise ValueError(f"watts {w:g} is outside what a {gpu.name} accepts ({gpu.min_power_w:g}-{gpu.tdp_w:g} W)")
    e = number("expires_at", expires_at)
    if w is not None and e is None:
        raise ValueError("expires_at is required with watts: every cap carries its own end, should the undo fail")
    if e is not None and not (now < e <= now + MAX_EXPIRY_S):
        raise ValueError(f"expires_at must lie in the next {MAX_EXPIRY_S:g} s, is {e!r}")
    return w, e


class Engine:
    def __init__(self, service_name: str, state: dict[str, Any], rd: Any):
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.service = service_name
        self.cfg = TestbedConfig.from_dict(state["config"])
        self.state = state
        self.gpu = gpu_kind(self.cfg.deploy.gpu)
        self.model = model_spec(self.cfg.deploy.model)
        index = list(state["replicas"]).index(service_name)
        self.rng = np.random.default_rng([self.cfg.seed, 0xE9, index])
        self.rt = RealtimeEngine(
            service_name, gpu=self.gpu, model=self.model, max_num_seqs=self.cfg.deploy.max_num_seqs,
            max_num_batched_tokens=self.cfg.deploy.max_num_batched_tokens, block_size=self.cfg.deploy.block_size,
            gpu_memory_utilization=self.cfg.deploy.gpu_memory_utilization,
            shared_prefix_tokens=self.cfg.deploy.shared_prefix_tokens, ambient_c=27.0 + float(self.rng.normal(0, 1.5)),
        )
        self.log = JsonLog(rd.log(f"engine-{service_name}"), service_name, "vllm")
        self.provider, self.tracer = tracer(service_name, "engine", state.get("otlp_endpoint"))
        self.rd = rd
        self.limit_expires: float | None = None
        self.limit_injection: str | None = None  # the injection that set the current cap (recorded with changes)
        # Metrics
        reg = self.registry = CollectorRegistry()
        m = {"model_name": self.model.name}
        lm = ["model_name"]
        self.g_running = Gauge("vllm:num_requests_running", "Requests in model execution batches.", lm, registry=reg)
        self.g_waiting = Gauge("vllm:num_requests_waiting", "Requests waiting to be processed.", lm, registry=reg)
        self.g_kv = Gauge("vllm:kv_cache_usage_perc", "KV-cache usage; 1 means 100 percent usage.", lm,
                          registry=reg)
        self.c_prompt = Counter("vllm:prompt_tokens", "Prefill tokens processed.", lm, registry=reg)
        self.c_gen = Counter("vllm:generation_tokens", "Generation tokens processed.", lm, registry=reg)
        self.c_preempt = Counter("vllm:num_preemptions", "Cumulative number of preemptions.", lm, registry=reg)
        self.c_success = Counter("vllm:request_success", "Successfully processed requests.",
                                 ["model_name", "finished_reason"], registry=reg)
        self.c_pq = Counter("vllm:prefix_cache_queries", "Prefix cache queries, in tokens.", lm, registry=reg)
        self.c_ph = Counter("vllm:prefix_cache_hits", "Prefix cache hits, in tokens.", lm, registry=reg)
        for c in (self.c_prompt, self.c_gen, self.c_preempt, self.c_pq, self.c_ph):
            c.labels(self.model.name)  # a counter exists (at 0) before its first event, as vLLM's do
        for reason in ("length", "stop"):
            self.c_success.labels(self.model.name, reason)
        self.h = WeightedHistograms()
        for name, doc, bounds in (
            ("vllm:time_to_first_token_seconds", "Time to first token.", TTFT_BUCKETS),
            ("vllm:inter_token_latency_seconds", "Inter-token latency.", ITL_BUCKETS),
            ("vllm:e2e_request_latency_seconds", "End-to-end request latency.", REQUEST_BUCKETS),
            ("vllm:request_queue_time_seconds", "Time spent in the WAITING phase.", REQUEST_BUCKETS),
            ("vllm:request_prefill_time_seconds", "Time spent in the PREFILL phase.", REQUEST_BUCKETS),
            ("vllm:request_decode_time_seconds", "Time spent in the DECODE phase.", REQUEST_BUCKETS),
            ("vllm:request_prompt_tokens", "Prompt tokens per request.", TOKEN_BUCKETS),
            ("vllm:request_generation_tokens", "Generation tokens per request.", TOKEN_BUCKETS),
            ("vllm:iteration_tokens_total", "Tokens per engine step.", TOKEN_BUCKETS),
        ):
            self.h.define(name, doc, bounds, m)
        reg.register(self.h)
        gpu_labels = ["gpu", "UUID", "device", "modelName", "Hostname"]
        self.gpu_label_values = ["0", f"GPU-{abs(hash((service_name, self.cfg.seed))) % 10**12:012d}", "nvidia0",
                                 self.gpu.name, NODE]
        self.dcgm: dict[str, Any] = {}
        # A replica on the host CPU (device "cpu") has no GPU: no DCGM exporter and no Ray GPU gauge, as live.
        has_gpu = self.gpu.is_gpu
        for field in () if not has_gpu else ("GPU_UTIL", "MEM_COPY_UTIL", "FB_USED", "FB_FREE", "GPU_TEMP", "MEMORY_TEMP", "POWER_USAGE",
                      "TOTAL_ENERGY_CONSUMPTION", "SM_CLOCK", "MEM_CLOCK", "XID_ERRORS", "PCIE_TX_THROUGHPUT",
                      "PCIE_RX_THROUGHPUT", "CLOCKS_EVENT_REASONS", "POWER_VIOLATION", "THERMAL_VIOLATION",
                      "POWER_MANAGEMENT_LIMIT"):
            self.dcgm[field] = Gauge(f"DCGM_FI_DEV_{field}", f"DCGM field {field} of the emulated GPU.", gpu_labels,
                                     registry=reg)
        for field in ("GR_ENGINE_ACTIVE", "PIPE_TENSOR_ACTIVE", "DRAM_ACTIVE") if has_gpu else ():
            self.dcgm[field] = Gauge(f"DCGM_FI_PROF_{field}", f"DCGM profiling field {field}.", gpu_labels,
                                     registry=reg)
        self.g_ray_gpu = Gauge("ray_node_gpus_utilization", "Ray's GPU utilisation (%).", ["GpuIndex", "GpuDeviceName"],
                               registry=reg) if has_gpu else None
        self._energy = 0.0
        self._violation = 0.0
        self._pq = self._ph = self._preempt = 0
        self._preempt_events = 0
        self._last_tps = (0.0, 0.0)
        self._stats = {"prompt": 0.0, "gen": 0.0, "t": time.time(), "pq": 0, "ph": 0}
        self._next_stats = time.time() + STATS_EVERY_S * (0.5 + float(self.rng.random()))
        self._changed: asyncio.Future = asyncio.get_running_loop().create_future()
        self._wake = asyncio.Event()
        self._n_requests = 0
        # Ray Serve's replica id: 8 lower-case letters and digits
        self.replica_tag = "".join(self.rng.choice(list("abcdefghijklmnopqrstuvwxyz0123456789"), 8).tolist())

    # -- the driver loop ------------------------------------------------------------------------------------
    async def drive(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            nxt = self.rt.poll()
            self._metrics_from_engine()
            fut, self._changed = self._changed, loop.create_future()
            fut.set_result(None)
            if self.limit_expires is not None and time.time() >= self.limit_expires:
                self.set_limit(None, reason="expired", injection=self.limit_injection)
            delay = min(0.05, max(0.0005, nxt - self.rt.now()))
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except TimeoutError:
                pass

    async def changed(self) -> None:
        await asyncio.shield(self._changed)

    def set_limit(self, watts: float | None, *, expires_at: float | None = None, reason: str = "control",
                  injection: str | None = None) -> float:
        w = self.rt.set_power_limit(watts)
        self.limit_expires = expires_at if watts is not None else None
        self.limit_injection = injection if watts is not None else None
        # Not in a vLLM log (the driver's power-limit change shows in none; nvidia-smi prints where it runs), but in
        # the injection log, so that a collected window knows of every change.
        self.rd.record_change(self.service, {"power_limit_w": w, "expires_at": self.limit_expires},
                              injection=injection, reason=reason)
        return w

    def _metrics_from_engine(self) -> None:
        ticks = self.rt.drain_ticks()
        itl_v, itl_w, it_v, it_w = self.rt.drain_steps()
        if itl_v:
            self.h.observe("vllm:inter_token_latency_seconds", itl_v, itl_w)
        if it_v:
            self.h.observe("vllm:iteration_tokens_total", it_v, it_w)
        for ev in self.rt.events:
            if ev[2] == "preemption":
                if self._preempt_events % PREEMPTION_LOG_EVERY == 0:
                    log_preemption(self.log, f"chatcmpl-{ev[3]['request_id']}", self._preempt_events + 1)
                self._preempt_events += 1
        self.rt.events.clear()
        if not ticks:
            return
        m = self.model.name
        for row in ticks:
            self.c_prompt.labels(m).inc(row["prompt_tokens"])
            self.c_gen.labels(m).inc(row["gen_tokens"])
            self._stats["prompt"] += row["prompt_tokens"]
            self._stats["gen"] += row["gen_tokens"]
            d = int(row["preemptions"]) - self._preempt
            if d > 0:
                self.c_preempt.labels(m).inc(d)
            self._preempt = int(row["preemptions"])
            d = int(row["prefix_queries"]) - self._pq
            if d > 0:
                self.c_pq.labels(m).inc(d)
            self._pq = int(row["prefix_queries"])
            d = int(row["prefix_hits"]) - self._ph
            if d > 0:
                self.c_ph.labels(m).inc(d)
            self._ph = int(row["prefix_hits"])
        row = ticks[-1]
        self.g_running.labels(m).set(row["running"])
        self.g_waiting.labels(m).set(row["waiting"])
        self.g_kv.labels(m).set(row["kv_usage"])
        if self.g_ray_gpu is not None:
            self._export_gpu(ticks, row)
        now = time.time()
        if now >= self._next_stats:
            span = max(1e-9, now - self._stats["t"])
            tps = (self._stats["prompt"] / span, self._stats["gen"] / span)
            dq, dh = self._pq - self._stats["pq"], self._ph - self._stats["ph"]
            if any(tps) or any(self._last_tps):  # vLLM logs an idle engine at DEBUG only
                log_stats(self.log, tps[0], tps[1], row["running"], row["waiting"], row["kv_usage"],
                          dh / dq if dq > 0 else 0.0)
            self._last_tps = tps
            self._stats = {"prompt": 0.0, "gen": 0.0, "t": now, "pq": self._pq, "ph": self._ph}
            self._next_stats = now + STATS_EVERY_S

    def _export_gpu(self, ticks: list[dict[str, Any]], row: dict[str, Any]) -> None:
        g = self.gpu
        lv = self.gpu_label_values
        # DCGM: the emulated GPU's fields; NVML samples its activity counters, so readings scatter a little.
        busy = min(1.0, max(0.0, row["busy"] + float(self.rng.normal(0.0, 0.015))))
        idle = row["busy"] < 0.02
        capped = row["capped"] > 0
        steps = sum(r["steps"] for r in ticks) / len(ticks)
        tok = sum(r["gen_tokens"] for r in ticks) / len(ticks)
        ptok = sum(r["prompt_tokens"] for r in ticks) / len(ticks)
        fb_used = math.floor(self.rt.engine.fb_used_bytes / 2**20)
        vals = {
            "GPU_UTIL": round(100.0 * busy),
            "MEM_COPY_UTIL": round(100.0 * min(1.0, max(0.0, row["busy"] * min(row["mem_share"], 1.0)
                                                      + float(self.rng.normal(0.0, 0.015))))),
            "FB_USED": fb_used, "FB_FREE": math.floor(g.hbm_bytes / 2**20) - fb_used,
            "GPU_TEMP": round(row["temp"]), "MEMORY_TEMP": round(row["mem_temp"]),
            "POWER_USAGE": round(row["power"] + float(self.rng.normal(0.0, 1.0)), 3),
            "TOTAL_ENERGY_CONSUMPTION": round(1000.0 * row["energy"]),  # mJ since the (emulated) driver loaded
            "SM_CLOCK": g.sm_clock_min_mhz if idle else round(min(g.sm_clock_mhz, max(
                g.sm_clock_min_mhz, row["clock"] * g.sm_clock_mhz + (float(self.rng.normal(0, 12)) if capped else 0)))),
            "MEM_CLOCK": g.mem_clock_mhz, "XID_ERRORS": 0,
            "PCIE_TX_THROUGHPUT": round(40.0 + float(self.rng.normal(0, 4)) + 1.5 * steps + 0.004 * tok),
            "PCIE_RX_THROUGHPUT": round(40.0 + float(self.rng.normal(0, 4)) + 2.0 * steps + 0.008 * ptok),
            "CLOCKS_EVENT_REASONS": (CLOCK_REASON_SW_POWER_CAP if capped else 0) | (CLOCK_REASON_IDLE if idle else 0),
            "POWER_VIOLATION": round(1e6 * row["power_violation"]),  # microseconds
            "THERMAL_VIOLATION": 0, "POWER_MANAGEMENT_LIMIT": row["limit"] * 1000.0,  # mW, as NVML reports
            "GR_ENGINE_ACTIVE": round(0.97 * busy, 4),
            "PIPE_TENSOR_ACTIVE": round(min(1.0, max(0.0, row["busy"] * (0.6 * min(row["comp_share"], 1.0) + 0.05)
                                                     + float(self.rng.normal(0.0, 0.005)))), 4),
            "DRAM_ACTIVE": round(0.9 * row["busy"] * min(row["mem_share"], 1.0), 4),
        }
        for k, v in vals.items():
            self.dcgm[k].labels(*lv).set(v)
        self.g_ray_gpu.labels("0", self.gpu.name).set(round(100.0 * busy))

    # -- HTTP ---------------------------------------------------------------------------------------------
    async def chat(self, request: Any) -> Any:
        from aiohttp import web
        from opentelemetry.trace import SpanKind

        t_arrival = time.time()
        v_arrival = self.rt.now()
        try:
            try:
                body = await request.json()
            except ValueError:
                raise BadRequest("body must be JSON with 'messages'") from None
            req = parse_request(body, self.model.context_tokens, self.cfg.deploy.output_tokens)
        except BadRequest as e:
            return web.json_response({"object": "error", "message": str(e), "type": "BadRequestError",
                                      "param": None, "code": 400}, status=400)
        text, max_tokens, stream, n_prompt = req["text"], req["max_tokens"], req["stream"], req["prompt_tokens"]
        sampling = {k: req[k] for k in ("n", "temperature", "top_p")}
        n_out = wanted_tokens(text, max_tokens)
        self._n_requests += 1
        req_id = f"chatcmpl-{self.rng.bytes(16).hex()}"
        sampling["serve_id"] = request.headers.get("X-Request-ID", "-")
        span = self.tracer.start_span("llm_request", context=extract(request.headers), kind=SpanKind.SERVER,
                                      start_time=int(t_arrival * 1e9))
        log_received(self.log, req_id, sampling["n"], sampling["temperature"], sampling["top_p"], max_tokens)
        rid = self.rt.submit(n_prompt, n_out, self.cfg.read_timeout_s)
        log_added(self.log, req_id)
        self._wake.set()
        created = int(t_arrival)
        head = ('data: {"id":"' + req_id + '","object":"chat.completion.chunk","created":' + str(created)
                + ',"model":' + json.dumps(self.model.name) + ',"choices":[{"index":0,"delta":{')
        t_first_wall = None
        sent = 0
        status, reason = 200, ""
        resp = None
        words: list[str] = []
        try:
            if stream:
                resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
                await resp.prepare(request)
            while True:
                st = self.rt.state(rid)
                k = self.rt.tokens(rid)
                if k > sent:
                    new = [_VOCAB[(rid * 7 + i) % len(_VOCAB)] for i in range(sent, k)]
                    words.extend(new)
                    if resp is not None:
                        chunks = []
                        if sent == 0:
                            chunks.append(head + '"role":"assistant","content":""},"logprobs":null,'
                                                 '"finish_reason":null}]}\n\n')
                        for w in new:
                            chunks.append(head + '"content":" ' + w + '"},"logprobs":null,"finish_reason":null}]}\n\n')
                        await resp.write("".join(chunks).encode())
                    if t_first_wall is None:
                        t_first_wall = time.time()
                    sent = k
                if st in ("done", "failed", "aborted"):
                    break
                if request.transport is None or request.transport.is_closing():
                    # The client went away (nginx gave up, a curl was stopped): stop generating for nobody. The
                    # server also cancels this handler then (service.start_site); this covers a cancel not yet
                    # delivered.
                    raise ConnectionResetError("the client went away")
                await self.changed()
            R = self.rt.table
            if st == "failed":
                status = 504 if R.failed[rid] == 504 else 500
                reason = "abort"
            else:
                reason = "length" if sent >= max_tokens else "stop"
            if resp is not None:
                if status == 200:
                    await resp.write((head + '},"logprobs":null,"finish_reason":"' + reason + '"}]}\n\ndata: [DONE]\n\n')
                                     .encode())
                else:
                    await resp.write(b'data: {"error":{"message":"request failed","code":' + str(status).encode()
                                     + b'}}\n\ndata: [DONE]\n\n')
                await resp.write_eof()
                return resp
            if status != 200:
                return web.json_response({"object": "error", "message": "request failed", "code": status},
                                         status=status)
            return web.json_response({
                "id": req_id, "object": "chat.completion", "created": created, "model": self.model.name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": " ".join(words)},
                             "finish_reason": reason}],
                "usage": {"prompt_tokens": n_prompt, "completion_tokens": sent, "total_tokens": n_prompt + sent}})
        except (ConnectionResetError, asyncio.CancelledError):
            self.rt.abort(rid)
            status, reason = 499, "abort"
            raise
        finally:
            t_end = time.time()
            self._finish(rid, req_id, span, status, reason, t_arrival, v_arrival, t_first_wall, t_end, n_prompt, sent,
                         max_tokens, sampling)

    def _finish(self, rid: int, req_id: str, span: Any, status: int, reason: str, t_arrival: float, v_arrival: float,
                t_first: float | None, t_end: float, n_prompt: int, n_out: int, max_tokens: int,
                sampling: dict[str, Any]) -> None:
        from opentelemetry.trace import Status, StatusCode

        m = self.model.name
        times = self.rt.request_times(rid)
        queue = times["t_scheduled"] - v_arrival
        prefill = times["t_first"] - times["t_scheduled"]
        decode = (t_end - t_first) if t_first is not None else math.nan
        ttft = (t_first - t_arrival) if t_first is not None else math.nan
        e2e = t_end - t_arrival
        if t_first is not None:
            self.h.observe("vllm:time_to_first_token_seconds", ttft)
        if status == 200:
            self.c_success.labels(m, reason).inc()
            for name, v in (("vllm:e2e_request_latency_seconds", e2e), ("vllm:request_queue_time_seconds", queue),
                            ("vllm:request_prefill_time_seconds", prefill),
                            ("vllm:request_decode_time_seconds", decode),
                            ("vllm:request_prompt_tokens", n_prompt), ("vllm:request_generation_tokens", n_out)):
                self.h.observe(name, v)
        log_finished(self.log, req_id, status, reason)
        log_replica_access(self.log, self.replica_tag, sampling["serve_id"], status, 1000.0 * e2e)
        attrs = span_attributes(m, req_id, max_tokens=max_tokens, prompt_tokens=n_prompt, completion_tokens=n_out,
                                queue=queue, ttft=ttft, e2e=e2e, prefill=prefill, decode=decode,
                                **{k: sampling[k] for k in ("n", "temperature", "top_p")})
        for k, v in attrs.items():
            if v is not None:
                span.set_attribute(k, v)
        if status >= 400:
            span.set_status(Status(StatusCode.ERROR, reason))
        span.end(end_time=int(t_end * 1e9))

    async def metrics(self, request: Any) -> Any:
        from aiohttp import web
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def control_get(self, request: Any) -> Any:
        from aiohttp import web

        return web.json_response(self.control_state())

    def control_state(self) -> dict[str, Any]:
        return {"service": self.service, "power_limit_w": self.rt.power_limit, "default_limit_w": self.gpu.tdp_w,
                "min_limit_w": self.gpu.min_power_w, "limit_expires_at": self.limit_expires,
                "cpu_share": self.rt.share.value, "requests": self._n_requests, "gpu": self.gpu.name}

    async def control_power(self, request: Any) -> Any:
        from aiohttp import web

        from llmrca.testbed.auth import INJECTION_HEADER

        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise TypeError("the body must be a JSON object")
            watts, expires = checked_limit(body.get("watts"), body.get("expires_at"), self.gpu, time.time())
            self.set_limit(watts, expires_at=expires, reason=str(body.get("reason", "control endpoint")),
                           injection=request.headers.get(INJECTION_HEADER) or None)
        except (ValueError, TypeError, AttributeError) as e:
            return web.json_response({"error": str(e)}, status=400)
        return web.json_response(self.control_state())

    async def health(self, request: Any) -> Any:
        from aiohttp import web

        return web.json_response({"status": "ok"})


def make_app(eng: Engine, token: str) -> Any:
    """The engine's HTTP app: the OpenAI route, ``/metrics``, ``/health`` open; ``POST /control/*`` needs the
    run's token (``llmrca.testbed.auth``)."""
    from aiohttp import web

    from llmrca.testbed import auth

    app = web.Application(client_max_size=16 * 2**20, middlewares=[auth.middleware(
        token, lambda method, path: method == "POST" and path.startswith("/control"))])
    app.router.add_post(ROUTE, eng.chat)
    app.router.add_get("/metrics", eng.metrics)
    app.router.add_get("/health", eng.health)
    app.router.add_get("/control", eng.control_get)
    app.router.add_post("/control/power-limit", eng.control_power)
    return app


async def _main(run_dir: str, service_name: str, stop: asyncio.Event) -> None:
    from llmrca.testbed import auth

    rd, state = service.settings(run_dir, service_name)
    eng = Engine(service_name, state, rd)
    app = make_app(eng, auth.read_token(rd.path))
    port = state["ports"][f"engine:{service_name}"]
    driver = asyncio.create_task(eng.drive(stop))
    runner = await service.start_site(app, port)
    eng.log.write("INFO", "Started engine {} on port {} ({} on an emulated {}, {} GiB of KV cache).", service_name, port,
                 eng.model.name, eng.gpu.name, f"{eng.rt.engine.cap * eng.model.kv_bytes_per_token / GIB:.1f}")
    eng.log.line(line("vllm.kv_cache_size"), f"{int(eng.rt.engine.cap):,}")
    await stop.wait()
    await runner.cleanup()
    driver.cancel()
    eng.provider.shutdown()
    eng.log.close()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        sys.exit("usage: python -m llmrca.testbed.engine_server RUN_DIR SERVICE")
    service.run(lambda stop: _main(args[0], args[1], stop))


if __name__ == "__main__":
    main()
