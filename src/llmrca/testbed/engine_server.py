"""One live engine replica: an HTTP server that speaks as vLLM 0.32.0's OpenAI server (``/v1/chat/completions``
and ``/v1/completions``, streamed or whole, ``stream_options.include_usage``, ``/v1/models``, ``/version``,
``/health``; its answers and error bodies are ``llmrca.testbed.vllm_api``'s), whose token timing is the simulator's
engine and GPU model on the wall clock (``llmrca.testbed.realtime``).

It exports vLLM's metrics (``vllm:*``, ``llmrca.testbed.vllm_metrics``) and the DCGM fields of its emulated GPU
(``DCGM_FI_*``, plus Ray's ``ray_node_gpus_utilization``) on ``/metrics``, an ``llm_request`` SERVER span per
request with vLLM's ``gen_ai.*`` attributes (OTLP/HTTP), and vLLM V1's log lines (as JSON records); spans and
lines are the catalogue's (``llmrca.deploy.telemetry``), rendered as the simulator renders them.
``/control/power-limit`` is the emulated GPU's ``nvidia-smi -pl`` and ``/control/stall`` a SIGSTOP of vLLM's
worker (stepping stops, the ``vllm:*`` gauges and counters freeze, ``/health`` still answers), ``/control/slowdown`` a
degraded GPU (its kernels ``factor`` times slower: a straggler); all need the run's
token and every change they accept goes to the run's injection log. Requests are checked as vLLM checks them (400
with vLLM's message, 404 for another model), and a request whose client hangs up is aborted. Run as ``python -m
llmrca.testbed.engine_server RUN_DIR SERVICE [--kv-cache-tokens N]`` (a KV cache of N tokens: a restart with
another cache size).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import sys
import time
from typing import Any

import numpy as np

from llmrca.deploy.telemetry import (
    COMPLETIONS_ROUTE,
    ENGINE_SPAN,
    MODELS_ROUTE,
    ROUTE,
    VLLM_ENGINE_INDEX,
    line,
)
from llmrca.sim.gpu import (
    CLOCK_REASON_HW_THERMAL,
    CLOCK_REASON_IDLE,
    CLOCK_REASON_SW_POWER_CAP,
    CLOCK_REASON_SW_THERMAL,
)
from llmrca.sim.hardware import GIB, NO_ECC_MEMORY, gpu_kind, model_spec
from llmrca.testbed import gpu_ras, service
from llmrca.testbed import vllm_api as api
from llmrca.testbed.config import NODE, TestbedConfig
from llmrca.testbed.logs import JsonLog
from llmrca.testbed.realtime import RealtimeEngine
from llmrca.testbed.telemetry import extract, tracer
from llmrca.testbed.vllm_metrics import VllmMetrics, cache_config_info

STATS_EVERY_S = 10.0
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
              hit_rate: float, preemptions: int = 0) -> str:
    """vLLM V1's periodic line; ``kv_usage`` and ``hit_rate`` as fractions; ``Preemptions: N`` when the interval
    had any (V1 logs no line per preemption)."""
    head = (f"{VLLM_ENGINE_INDEX:03d}", f"{prompt_tps:.1f}", f"{gen_tps:.1f}", int(running), int(waiting))
    tail = (f"{100 * kv_usage:.1f}", f"{100 * max(hit_rate, 0.0):.1f}")
    if preemptions > 0:
        return log.line(line("vllm.engine_stats_preempted"), *head, int(preemptions), *tail)
    return log.line(line("vllm.engine_stats"), *head, *tail)


def log_replica_access(log: JsonLog, tag: str, serve_id: str, status: int, ms: float, route: str = ROUTE) -> str:
    """Ray Serve's replica access line (after ``Request failed.`` when the call raised)."""
    code = "CANCELLED" if status == 499 else str(status)
    if status >= 500:
        log.line(line("serve.replica_failed"), tag, serve_id)
    return log.line(line("serve.replica_access"), tag, serve_id, code, f"{ms:.1f}", route=route)


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
    return api.words(text)


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


def checked_expiry(expires_at: Any, stalled: bool, now: float, what: str = "stalled") -> float | None:
    """A stall request's ``expires_at``: required with ``stalled`` true (every stop carries its own end), a finite
    time within a day; a ``ValueError`` naming the field otherwise."""
    if expires_at is None:
        if stalled:
            raise ValueError(f"expires_at is required with {what}: every change carries its own end, should the "
                             "undo fail")
        return None
    if isinstance(expires_at, bool) or not isinstance(expires_at, (int, float)) or not math.isfinite(expires_at):
        raise ValueError(f"expires_at must be a finite number or null, is {expires_at!r}")
    if not (now < expires_at <= now + MAX_EXPIRY_S):
        raise ValueError(f"expires_at must lie in the next {MAX_EXPIRY_S:g} s, is {expires_at!r}")
    return float(expires_at)


class Engine:
    def __init__(self, service_name: str, state: dict[str, Any], rd: Any, kv_cache_tokens: int | None = None):
        from prometheus_client import Gauge

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
            # --kv-cache-tokens (a restart with another cache) wins over the deployment's value
            kv_cache_tokens=kv_cache_tokens if kv_cache_tokens is not None else self.cfg.deploy.kv_cache_tokens,
            read_timeout_s=self.cfg.read_timeout_s,
        )
        self.log = JsonLog(rd.log(f"engine-{service_name}"), service_name, "vllm")
        self.provider, self.tracer = tracer(service_name, "engine", state.get("otlp_endpoint"))
        self.rd = rd
        self.limit_expires: float | None = None
        self.limit_injection: str | None = None  # the injection that set the current cap (recorded with changes)
        self.stall_expires: float | None = None  # a stopped engine continues by itself then (should the undo fail)
        self.stall_injection: str | None = None
        self.slow_expires: float | None = None  # a slow GPU is healthy again then (should the undo fail)
        self.slow_injection: str | None = None
        self.cooling_expires: float | None = None  # degraded cooling ends by itself then (gpu-thermal)
        self.cooling_injection: str | None = None
        self.cooling_ramp: tuple[float, float, float] | None = None  # (from, r_factor, ramp_s)
        self.ras_dir = state.get("run_dir") or getattr(rd, "path", None)  # where the GPU's error state lives
        # Metrics: vLLM 0.32.0's vllm:* families, label sets and bucket edges (tests/fixtures/vllm_0.32.0).
        self.vm = VllmMetrics(self.model.name, context=self.model.context_tokens, config_info=self._cache_info())
        reg = self.registry = self.vm.registry
        gpu_labels = ["gpu", "UUID", "device", "modelName", "Hostname"]
        self.gpu_label_values = ["0", f"GPU-{abs(hash((service_name, self.cfg.seed))) % 10**12:012d}", "nvidia0",
                                 self.gpu.name, NODE]
        self.dcgm: dict[str, Any] = {}
        # A replica on the host CPU (device "cpu") has no GPU: no DCGM exporter and no Ray GPU gauge, as live.
        has_gpu = self.gpu.is_gpu
        for field in () if not has_gpu else (
                      "GPU_UTIL", "MEM_COPY_UTIL", "FB_USED", "FB_FREE", "GPU_TEMP", "MEMORY_TEMP", "POWER_USAGE",
                      "TOTAL_ENERGY_CONSUMPTION", "SM_CLOCK", "MEM_CLOCK", "XID_ERRORS", "PCIE_TX_THROUGHPUT",
                      "PCIE_RX_THROUGHPUT", "CLOCKS_EVENT_REASONS", "POWER_VIOLATION", "THERMAL_VIOLATION",
                      "POWER_MANAGEMENT_LIMIT",
                      # memory RAS fields, on a GPU with ECC memory (gpu-ecc)
                      *(() if self.gpu.name in NO_ECC_MEMORY else
                        ("ECC_DBE_VOL_TOTAL", "UNCORRECTABLE_REMAPPED_ROWS", "ROW_REMAP_PENDING"))):
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
        self._last_tps = (0.0, 0.0)
        self._stats = {"prompt": 0.0, "gen": 0.0, "t": time.time(), "pq": 0, "ph": 0, "pre": 0}
        self._next_stats = time.time() + STATS_EVERY_S * (0.5 + float(self.rng.random()))
        self._changed: asyncio.Future = asyncio.get_running_loop().create_future()
        self._wake = asyncio.Event()
        self._n_requests = 0
        # Ray Serve's replica id: 8 lower-case letters and digits
        self.replica_tag = "".join(self.rng.choice(list("abcdefghijklmnopqrstuvwxyz0123456789"), 8).tolist())
        # vLLM's system_fingerprint: its version and 8 hex digits drawn once per server start
        self.fingerprint = f"vllm-{api.VLLM_VERSION}-{self.rng.bytes(4).hex()}"

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
            if self.stall_expires is not None and time.time() >= self.stall_expires:
                self.set_stall(False, reason="expired", injection=self.stall_injection)
            if self.slow_expires is not None and time.time() >= self.slow_expires:
                self.set_slowdown(None, reason="expired", injection=self.slow_injection)
            if self.cooling_expires is not None and time.time() >= self.cooling_expires:
                self.set_cooling(1.0, reason="expired", injection=self.cooling_injection)
            if self.cooling_ramp is not None:  # an intake clogging: the resistance rises over ramp_s
                t0, r, ramp = self.cooling_ramp
                self.rt.set_cooling(1.0 + (r - 1.0) * min(1.0, (time.time() - t0) / ramp))
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

    def set_stall(self, stalled: bool, *, expires_at: float | None = None, reason: str = "control",
                  injection: str | None = None) -> bool:
        """Stop the engine's stepping (a SIGSTOP of vLLM's worker: /health still answers, the vllm:* gauges and
        counters freeze, no token comes) or let it continue. Recorded in the injection log only: a stopped
        process writes no log line."""
        on = self.rt.set_stalled(stalled)
        self.stall_expires = expires_at if on else None
        self.stall_injection = injection if on else None
        self.rd.record_change(self.service, {"stalled": on, "expires_at": self.stall_expires}, injection=injection,
                              reason=reason)
        self._wake.set()
        return on

    def set_slowdown(self, factor: float | None, *, expires_at: float | None = None, reason: str = "control",
                     injection: str | None = None) -> float:
        """Make the emulated GPU ``factor`` times slower (None: healthy): a degraded device, which logs nothing;
        recorded in the injection log only."""
        f = self.rt.set_device_slowdown(factor)
        self.slow_expires = expires_at if factor is not None else None
        self.slow_injection = injection if factor is not None else None
        self.rd.record_change(self.service, {"device_slowdown": f, "expires_at": self.slow_expires},
                              injection=injection, reason=reason)
        return f
    def set_cooling(self, r_factor: float, *, ramp_s: float = 0.0, expires_at: float | None = None,
                    reason: str = "control", injection: str | None = None) -> float:
        """Degrade (r_factor > 1) or restore (1) the emulated GPU's cooling; ``ramp_s`` > 0 reaches r_factor over
        that time. Recorded in the injection log only: a fan's failure prints in none of the deployment's logs."""
        r = float(r_factor)
        self.rt.set_cooling(r if ramp_s <= 0 else 1.0)
        self.cooling_ramp = (time.time(), r, float(ramp_s)) if ramp_s > 0 and r > 1.0 else None
        on = r > 1.0
        self.cooling_expires = expires_at if on else None
        self.cooling_injection = injection if on else None
        self.rd.record_change(self.service, {"r_factor": r, "ramp_s": float(ramp_s),
                                             "expires_at": self.cooling_expires}, injection=injection, reason=reason)
        return r

    def gpu_ras(self) -> dict[str, Any]:
        """The GPU's error state (healthy without a run directory to keep it in)."""
        return gpu_ras.read(self.ras_dir, self.service) if self.ras_dir else dict(gpu_ras.HEALTHY)

    def gpu_fault(self, xid: int, *, injection: str | None = None) -> None:
        """The emulated GPU reports ``xid`` (79 off the bus, 48 / 94 uncorrectable ECC): the driver's Xid goes to
        the node's kernel log and the GPU's error state; the engine's next CUDA call fails, so vLLM's EngineCore
        dies (its fatal-error lines, EngineDeadError) and the server exits; the supervisor restarts it (or, on a
        cordoned node, holds it down)."""
        run_dir = self.ras_dir
        gpu_ras.record_xid(run_dir, self.service, xid)
        gpu_ras.log_xid(run_dir, self.state.get("node", NODE), xid)
        self.rd.record_change(self.service, {"xid": int(xid)}, injection=injection, reason="gpu fault")
        self.log.line(line("vllm.engine_fatal"))
        self.log.line(line("vllm.cuda_error"), detail=gpu_ras.CUDA_ERROR.get(int(xid), "unspecified launch failure"))
        self.log.line(line("vllm.engine_dead"))
        # The API server exits on EngineDeadError; its open streams break (the proxy answers 502).
        asyncio.get_running_loop().call_later(0.2, os._exit, 1)

    def _metrics_from_engine(self) -> None:
        ticks = self.rt.drain_ticks()
        itl_v, itl_w, it_v, it_w = self.rt.drain_steps()
        if itl_v:
            self.vm.h.observe("vllm:inter_token_latency_seconds", itl_v, itl_w)
        if it_v:
            self.vm.h.observe("vllm:iteration_tokens_total", it_v, it_w)
        # vLLM V1 logs no line per preemption (vllm:num_preemptions counts them, from the tick rows below).
        self.rt.events.clear()
        if not ticks:
            return
        for row in ticks:
            self._stats["prompt"] += row["prompt_tokens"]
            self._stats["gen"] += row["gen_tokens"]
            dp = int(row["preemptions"]) - self._preempt
            dq = int(row["prefix_queries"]) - self._pq
            dh = int(row["prefix_hits"]) - self._ph
            self.vm.tick(row["prompt_tokens"], row["gen_tokens"], dp, dq, dh)
            self._preempt, self._pq = int(row["preemptions"]), int(row["prefix_queries"])
            self._ph = int(row["prefix_hits"])
        row = ticks[-1]
        self.vm.gauges(row["running"], row["waiting"], row["kv_usage"])
        if self.g_ray_gpu is not None:
            self._export_gpu(ticks, row)
        now = time.time()
        if now >= self._next_stats:
            span = max(1e-9, now - self._stats["t"])
            tps = (self._stats["prompt"] / span, self._stats["gen"] / span)
            dq, dh = self._pq - self._stats["pq"], self._ph - self._stats["ph"]
            if any(tps) or any(self._last_tps):  # vLLM logs an idle engine at DEBUG only
                log_stats(self.log, tps[0], tps[1], row["running"], row["waiting"], row["kv_usage"],
                          dh / dq if dq > 0 else 0.0, preemptions=self._preempt - self._stats["pre"])
            self._last_tps = tps
            self._stats = {"prompt": 0.0, "gen": 0.0, "t": now, "pq": self._pq, "ph": self._ph, "pre": self._preempt}
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
        ras = self.gpu_ras()
        thermal = row.get("thermal", 0.0)
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
            "MEM_CLOCK": g.mem_clock_mhz, "XID_ERRORS": ras["xid"],
            "PCIE_TX_THROUGHPUT": round(40.0 + float(self.rng.normal(0, 4)) + 1.5 * steps + 0.004 * tok),
            "PCIE_RX_THROUGHPUT": round(40.0 + float(self.rng.normal(0, 4)) + 2.0 * steps + 0.008 * ptok),
            "CLOCKS_EVENT_REASONS": (CLOCK_REASON_SW_POWER_CAP if capped else 0) | (CLOCK_REASON_IDLE if idle else 0)
            | (CLOCK_REASON_SW_THERMAL if thermal >= 1 else 0) | (CLOCK_REASON_HW_THERMAL if thermal >= 2 else 0),
            "POWER_VIOLATION": round(1e6 * row["power_violation"]),  # microseconds
            "THERMAL_VIOLATION": round(1e6 * row.get("thermal_violation", 0.0)),
            "POWER_MANAGEMENT_LIMIT": row["limit"] * 1000.0,  # mW, as NVML reports
            "ECC_DBE_VOL_TOTAL": ras["dbe"], "UNCORRECTABLE_REMAPPED_ROWS": ras["remapped_rows"],
            "ROW_REMAP_PENDING": ras["remap_pending"],
            "GR_ENGINE_ACTIVE": round(0.97 * busy, 4),
            "PIPE_TENSOR_ACTIVE": round(min(1.0, max(0.0, row["busy"] * (0.6 * min(row["comp_share"], 1.0) + 0.05)
                                                     + float(self.rng.normal(0.0, 0.005)))), 4),
            "DRAM_ACTIVE": round(0.9 * row["busy"] * min(row["mem_share"], 1.0), 4),
        }
        for k, v in vals.items():
            if k in self.dcgm:  # a GPU without ECC memory has no RAS fields
                self.dcgm[k].labels(*lv).set(v)
        self.g_ray_gpu.labels("0", self.gpu.name).set(round(100.0 * busy))

    # -- HTTP ---------------------------------------------------------------------------------------------
    def _cache_info(self) -> dict[str, str]:
        d = self.cfg.deploy
        return cache_config_info(block_size=d.block_size, gpu_memory_utilization=d.gpu_memory_utilization,
                                 kv_tokens=int(self.rt.engine.cap), context=self.model.context_tokens)

    async def chat(self, request: Any) -> Any:
        return await self._generate(request, chat=True)

    async def completions(self, request: Any) -> Any:
        return await self._generate(request, chat=False)

    async def _generate(self, request: Any, *, chat: bool) -> Any:
        """One chat or text completion, streamed or whole, timed by the emulated engine; refused as vLLM refuses
        (``vllm_api``)."""
        from aiohttp import web
        from opentelemetry.trace import SpanKind

        t_arrival = time.time()
        v_arrival = self.rt.now()
        try:
            try:
                body = json.loads(await request.read() or b"null")
            except json.JSONDecodeError as e:
                raise api.invalid_json(e) from None
            except UnicodeDecodeError:
                raise api.validation_error("json_invalid", "body", "JSON decode error", "") from None
            parse = api.parse_chat if chat else api.parse_completion
            req = parse(body, self.model.context_tokens, self.model.name)
        except api.ApiError as e:
            return _json(e.body(), e.status)
        text, max_tokens, n_prompt = req["text"], req["max_tokens"], req["prompt_tokens"]
        sampling = {k: req[k] for k in ("n", "temperature", "top_p")}
        if req["max_tokens_set"] or _ANSWER.search(text):
            n_out = wanted_tokens(text, max_tokens)
        else:  # no limit asked: the emulated model stops on its own after the deployment's answer length
            n_out = max(1, min(self.cfg.deploy.output_tokens, max_tokens))
        self._n_requests += 1
        req_id = f"{'chatcmpl' if chat else 'cmpl'}-{self.rng.bytes(8).hex()}"
        sampling["serve_id"] = request.headers.get("X-Request-ID", "-")
        sampling["route"] = ROUTE if chat else COMPLETIONS_ROUTE
        span = self.tracer.start_span("llm_request", context=extract(request.headers), kind=SpanKind.SERVER,
                                      start_time=int(t_arrival * 1e9))
        log_received(self.log, req_id, sampling["n"], sampling["temperature"], sampling["top_p"], max_tokens)
        rid = self.rt.submit(n_prompt, n_out, self.cfg.read_timeout_s)
        log_added(self.log, req_id)
        self._wake.set()
        created = int(t_arrival)
        out = api.Stream(chat, req_id, created, self.model.name, self.fingerprint, n_prompt, req["include_usage"],
                         req["continuous_usage"])
        t_first_wall = None
        sent = 0
        status, reason = 200, ""
        resp = None
        words: list[str] = []
        try:
            if req["stream"]:
                resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
                await resp.prepare(request)
                await resp.write(out.first().encode())
            while True:
                st = self.rt.state(rid)
                k = self.rt.tokens(rid)
                if k > sent:
                    new = [" " + _VOCAB[(rid * 7 + i) % len(_VOCAB)] for i in range(sent, k)]
                    words.extend(new)
                    if resp is not None:
                        # the request's last token goes out with its finish reason, as vLLM sends it
                        held = 1 if k >= n_out else 0
                        chunk = "".join(out.token(w) for w in new[:len(new) - held])
                        if chunk:
                            await resp.write(chunk.encode())
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
                reason = "abort" if status == 504 else "error"
            else:
                reason = "length" if sent >= max_tokens else "stop"
            if resp is not None:
                if status == 200:
                    if out.sent < sent - 1:  # tokens not yet written (the last is held for the finish chunk)
                        await resp.write("".join(out.token(w) for w in words[out.sent:sent - 1]).encode())
                    await resp.write(out.finish(words[sent - 1] if sent else "", reason, sent).encode())
                else:
                    await resp.write(api.Stream.error(_FAILED[status], "InternalServerError", status).encode())
                await resp.write_eof()
                return resp
            if status != 200:
                return _json(api.error_body(_FAILED[status], "InternalServerError", None, status), status)
            make = api.chat_response if chat else api.completion_response
            return _json(make(req_id, created, self.model.name, "".join(words), reason, n_prompt, sent,
                              self.fingerprint), 200)
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
            self.vm.h.observe("vllm:time_to_first_token_seconds", ttft)
        if status == 200:  # vLLM counts and times finished requests only: an aborted one leaves no trace here
            self.vm.finished(reason, n=int(sampling["n"]), max_tokens=max_tokens, prompt=n_prompt, generated=n_out,
                             e2e=e2e, queue=queue, prefill=prefill, decode=decode,
                             preemptions=int(times["preemptions"]))
        log_finished(self.log, req_id, status, reason)
        log_replica_access(self.log, self.replica_tag, sampling["serve_id"], status, 1000.0 * e2e, sampling["route"])
        attrs = span_attributes(m, req_id, max_tokens=max_tokens, prompt_tokens=n_prompt, completion_tokens=n_out,
                                queue=queue, ttft=ttft, e2e=e2e, prefill=prefill, decode=decode,
                                **{k: sampling[k] for k in ("n", "temperature", "top_p")})
        for k, v in attrs.items():
            if v is not None:
                span.set_attribute(k, v)
        if status >= 400:
            span.set_status(Status(StatusCode.ERROR, reason))
        span.end(end_time=int(t_end * 1e9))

    async def models(self, request: Any) -> Any:
        return _json(api.models(self.model.name, self.model.name, self.model.context_tokens, int(time.time()),
                                self.rng.bytes(8).hex()), 200)

    async def version(self, request: Any) -> Any:
        return _json({"version": api.VLLM_VERSION}, 200)

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
                "cpu_share": self.rt.share.value, "requests": self._n_requests, "gpu": self.gpu.name,
                "stalled": self.rt.stalled, "stall_expires_at": self.stall_expires,
                "kv_cache_tokens": int(self.rt.engine.cap), "device_slowdown": self.rt.device_slowdown,
                "slowdown_expires_at": self.slow_expires, "cooling_r_factor": self.rt.cooling.value,
                "cooling_expires_at": self.cooling_expires, "gpu_ras": self.gpu_ras()}

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

    async def control_stall(self, request: Any) -> Any:
        """``{"stalled": bool, "expires_at": unix time | null}``: stop or continue the engine (engine-hang)."""
        from aiohttp import web

        from llmrca.testbed.auth import INJECTION_HEADER

        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise TypeError("the body must be a JSON object")
            stalled = body.get("stalled")
            if not isinstance(stalled, bool):
                raise TypeError(f"stalled must be true or false, is {stalled!r}")
            expires = checked_expiry(body.get("expires_at"), stalled, time.time())
            self.set_stall(stalled, expires_at=expires, reason=str(body.get("reason", "control endpoint")),
                           injection=request.headers.get(INJECTION_HEADER) or None)
        except (ValueError, TypeError, AttributeError) as e:
            return web.json_response({"error": str(e)}, status=400)
        return web.json_response(self.control_state())

    async def control_slowdown(self, request: Any) -> Any:
        """``{"factor": number >= 1 | null, "expires_at": unix time}``: slow the emulated GPU (straggler)."""
        from aiohttp import web

        from llmrca.testbed.auth import INJECTION_HEADER

        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise TypeError("the body must be a JSON object")
            factor = body.get("factor")
            if factor is not None and (isinstance(factor, bool) or not isinstance(factor, (int, float))):
                raise TypeError(f"factor must be a number or null, is {factor!r}")
            expires = checked_expiry(body.get("expires_at"), factor is not None, time.time(), "factor")
            self.set_slowdown(factor, expires_at=expires, reason=str(body.get("reason", "control endpoint")),
                              injection=request.headers.get(INJECTION_HEADER) or None)
        except (ValueError, TypeError, AttributeError) as e:
            return web.json_response({"error": str(e)}, status=400)
        return web.json_response(self.control_state())

    async def control_gpu_fault(self, request: Any) -> Any:
        """``{"xid": 79 | 48 | 94}``: the emulated GPU fails (gpu-xid, gpu-ecc); the engine dies right after."""
        from aiohttp import web

        from llmrca.testbed.auth import INJECTION_HEADER

        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise TypeError("the body must be a JSON object")
            xid = body.get("xid")
            if isinstance(xid, bool) or xid not in (48, 79, 94):
                raise ValueError(f"xid must be 79, 48 or 94, is {xid!r}")
            if not self.gpu.is_gpu:
                raise ValueError("this replica runs on the host CPU: it has no GPU to fail")
            if xid != 79 and self.gpu.name in NO_ECC_MEMORY:
                raise ValueError(f"a {self.gpu.name} has no ECC memory: it reports no Xid {xid}")
        except (ValueError, TypeError, AttributeError) as e:
            return web.json_response({"error": str(e)}, status=400)
        self.gpu_fault(xid, injection=request.headers.get(INJECTION_HEADER) or None)
        return web.json_response({"service": self.service, "xid": xid, "exiting": True})

    async def control_cooling(self, request: Any) -> Any:
        """``{"r_factor": x >= 1, "ramp_s": s, "expires_at": unix time | null}``: degrade or restore the GPU's
        cooling (gpu-thermal); an r_factor above 1 needs expires_at."""
        from aiohttp import web

        from llmrca.testbed.auth import INJECTION_HEADER

        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise TypeError("the body must be a JSON object")
            r, ramp = body.get("r_factor"), body.get("ramp_s", 0.0)
            for name, v in (("r_factor", r), ("ramp_s", ramp)):
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise ValueError(f"{name} must be a finite number, is {v!r}")
            if not 1.0 <= r <= 50.0:
                raise ValueError(f"r_factor must lie in [1, 50], is {r!r}")
            if not 0.0 <= ramp <= MAX_EXPIRY_S:
                raise ValueError(f"ramp_s must lie in [0, {MAX_EXPIRY_S:g}], is {ramp!r}")
            if not self.gpu.is_gpu:
                raise ValueError("this replica runs on the host CPU: it has no GPU to cool")
            expires = checked_expiry(body.get("expires_at"), r > 1.0, time.time())
            self.set_cooling(r, ramp_s=float(ramp), expires_at=expires,
                             reason=str(body.get("reason", "control endpoint")),
                             injection=request.headers.get(INJECTION_HEADER) or None)
        except (ValueError, TypeError, AttributeError) as e:
            return web.json_response({"error": str(e)}, status=400)
        return web.json_response(self.control_state())

    async def health(self, request: Any) -> Any:
        """vLLM's /health: 200 with an empty body while the engine lives."""
        from aiohttp import web

        return web.Response(status=200)


_FAILED = {500: "EngineCore encountered an issue.", 504: "The request was aborted: its deadline passed."}


def _json(obj: Any, status: int) -> Any:
    """A JSON answer as vLLM's server sends it (compact, ``application/json`` without a charset)."""
    from aiohttp import web

    return web.Response(body=api.dumps(obj).encode(), status=status, content_type="application/json")


def _like_uvicorn_factory() -> Any:
    from aiohttp import web

    @web.middleware
    async def like_uvicorn(request: Any, handler: Any) -> Any:
        """FastAPI's bodies for an unknown path (404) or method (405)."""
        try:
            return await handler(request)
        except web.HTTPNotFound:
            return _json(api.not_found_detail(), 404)
        except web.HTTPMethodNotAllowed:
            return _json(api.method_not_allowed_detail(), 405)

    return like_uvicorn


async def _server_header(request: Any, response: Any) -> None:
    response.headers["Server"] = "uvicorn"  # vLLM's server, on every answer (streams included)


def make_app(eng: Engine, token: str) -> Any:
    """The engine's HTTP app: vLLM's OpenAI routes (chat and text completions, models, ``/version``),
    ``/metrics``, ``/health`` open; ``POST /control/*`` needs the run's token (``llmrca.testbed.auth``)."""
    from aiohttp import web

    from llmrca.testbed import auth

    app = web.Application(client_max_size=16 * 2**20, middlewares=[_like_uvicorn_factory(), auth.middleware(
        token, lambda method, path: method == "POST" and path.startswith("/control"))])
    app.on_response_prepare.append(_server_header)
    app.router.add_post(ROUTE, eng.chat)
    app.router.add_post(COMPLETIONS_ROUTE, eng.completions)
    app.router.add_get(MODELS_ROUTE, eng.models)
    app.router.add_get("/version", eng.version)
    app.router.add_get("/metrics", eng.metrics)
    app.router.add_get("/health", eng.health)
    app.router.add_get("/control", eng.control_get)
    app.router.add_post("/control/power-limit", eng.control_power)
    app.router.add_post("/control/stall", eng.control_stall)
    app.router.add_post("/control/slowdown", eng.control_slowdown)
    app.router.add_post("/control/gpu-fault", eng.control_gpu_fault)
    app.router.add_post("/control/cooling", eng.control_cooling)
    return app


async def _main(run_dir: str, service_name: str, stop: asyncio.Event, kv_cache_tokens: int | None = None) -> None:
    from llmrca.testbed import auth

    rd, state = service.settings(run_dir, service_name)
    eng = Engine(service_name, state, rd, kv_cache_tokens=kv_cache_tokens)
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


USAGE = "usage: python -m llmrca.testbed.engine_server RUN_DIR SERVICE [--kv-cache-tokens N]"


def parse_args(args: list[str]) -> tuple[str, str, int | None]:
    """RUN_DIR, SERVICE and ``--kv-cache-tokens N`` (the replica's KV cache in tokens, over the deployment's
    ``kv_cache_tokens``: what a restart with another cache size passes); a ``SystemExit`` naming the problem."""
    args = list(args)
    tokens = None
    if "--kv-cache-tokens" in args:
        i = args.index("--kv-cache-tokens")
        try:
            tokens = int(args[i + 1])
        except (IndexError, ValueError):
            raise SystemExit(f"--kv-cache-tokens needs a whole number of tokens; {USAGE}") from None
        if tokens < 1:
            raise SystemExit(f"--kv-cache-tokens must be at least 1, is {tokens}")
        del args[i:i + 2]
    if len(args) != 2:
        raise SystemExit(USAGE)
    return args[0], args[1], tokens


def main(argv: list[str] | None = None) -> None:
    run_dir, name, tokens = parse_args(sys.argv[1:] if argv is None else argv)
    service.run(lambda stop: _main(run_dir, name, stop, kv_cache_tokens=tokens))


if __name__ == "__main__":
    main()
