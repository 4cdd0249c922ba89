"""The metrics table of a run, as Prometheus would return it at a fixed query step.

Every exporter is scraped once per ``step`` at its own phase; a query at time ``T`` sees the last scrape before it.
Gauges are the scraped value; counters become ``rate(x[W])`` with ``W = rate_window``; histograms become
``histogram_quantile(q, rate(x_bucket[W]))`` over the exporter's real bucket bounds (vLLM), and the mesh's
per-destination latency is interpolated in Istio's classic buckets (``mesh_quantiles="istio"``, the default) or
the exact quantile of the window's request durations (``"exact"``). With ``noise="realistic"`` node neighbours,
GC-like bursts and missed scrapes (NaN in the gauges of a target) are added. Column names, quantiles and views come
from the metric catalogue (``llmrca.case.catalog``); a column the catalogue does not list is a bug and raises.
"""

from __future__ import annotations

from functools import cache, lru_cache
from typing import Any

import numpy as np
import pandas as pd
from scipy.signal import lfilter

from llmrca.case import TIME
from llmrca.case import catalog as cat
from llmrca.sim import run as runmod
from llmrca.sim.config import SimConfig
from llmrca.sim.deployment import Deployment
from llmrca.sim.environment import Environment
from llmrca.sim.gpu import (
    CLOCK_REASON_HW_THERMAL,
    CLOCK_REASON_IDLE,
    CLOCK_REASON_SW_POWER_CAP,
    CLOCK_REASON_SW_THERMAL,
)
from llmrca.sim.hardware import GIB, NO_ECC_MEMORY

QUANTILES = cat.QUANTILES
MESH_QUANTILES = cat.MESH_QUANTILES

# Bucket bounds of vLLM's histograms (vllm/engine/metrics.py, v0.8).
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
               40.0, 80.0)
REQUEST_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                   240.0, 480.0, 960.0, 1920.0, 7680.0)
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)
ISTIO_BUCKETS_MS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000,
                    600000, 1800000, 3600000)

NODE_MEMORY = {"gpu": 256 * GIB, "cpu": 32 * GIB}
SYSTEM_MEMORY = 3.0 * GIB  # kubelet, containerd, k3s, exporters, page cache in use
SYSTEM_CPU = 0.30  # cores
ZTUNNEL_CPU_PER_PACKET = 4e-6  # seconds

# Background activity not caused by any fault, on with ``noise="realistic"`` (each value and its source:
# docs/simulator.md, "Realistic noise"). Drawn from their own stream, so ``noise="none"`` keeps every other number.
GC_RATE_HZ = 0.011  # GC-like CPU bursts per second of the Serve proxy's Python process (on the head's pod)
GC_CPU_S = 0.13  # mean CPU seconds of one burst (exponential)
NEIGHBOUR_CPU = (1.75, 0.075, 10.0)  # other tenants' CPU on a node: mean cores, AR(1) sd cores, correlation time s
NEIGHBOUR_MEMORY = (2.7e9, 0.85e9, 50.0)  # their memory: mean bytes, AR(1) sd bytes, correlation time s
NEIGHBOUR_PACKETS = (4270.0, 950.0, 6.0)  # their packets each way: mean /s, AR(1) sd /s, correlation time s
MISSED_SCRAPE_P = 0.0013  # probability that one scrape of one exporter target fails (its gauges read NaN then)


class _Grid:
    """Query times and the tick grid the engines logged on."""

    def __init__(self, cfg: SimConfig, t_sim0: float, n_ticks: int):
        self.step = cfg.step
        self.n = round(cfg.duration / cfg.step)
        self.T = cfg.step * np.arange(self.n)
        self.m = round(cfg.rate_window / cfg.step)
        self.W = cfg.rate_window
        self.tick = cfg.tick
        self.t0 = t_sim0
        self.n_ticks = n_ticks
        self.tick_end = t_sim0 + cfg.tick * (np.arange(n_ticks) + 1)
        # idx(T - phase) and idx(T - phase - W) per phase: one exporter's phase serves all of its series.
        self._at: dict[float, np.ndarray] = {}
        self._before: dict[float, np.ndarray] = {}

    def idx(self, s: np.ndarray) -> np.ndarray:
        """Index of the last tick that ended at or before ``s``."""
        # searchsorted gives 0..n_ticks, so only the lower bound of the clip to [0, n_ticks - 1] can bind.
        return np.maximum(np.searchsorted(self.tick_end, s, side="right") - 1, 0)

    def at(self, phase: float) -> np.ndarray:
        """``idx(T - phase)``: the tick each query of a target scraped at ``phase`` sees (made once per phase)."""
        i = self._at.get(phase)
        if i is None:
            i = self._at[phase] = self.idx(self.T - phase)
        return i

    def before(self, phase: float) -> np.ndarray:
        """``idx(T - phase - W)``: the tick at the start of each query's rate window (once per phase)."""
        i = self._before.get(phase)
        if i is None:
            i = self._before[phase] = self.idx((self.T - phase) - self.W)
        return i

    def tick_of(self, t: np.ndarray) -> np.ndarray:
        return np.clip(((np.asarray(t) - self.t0) / self.tick).astype(np.int64), 0, self.n_ticks - 1)

    def gauge(self, x: np.ndarray, phase: float) -> np.ndarray:
        return x[self.at(phase)]

    def rate(self, increments: np.ndarray, phase: float) -> np.ndarray:
        c = np.cumsum(increments)
        return (c[self.at(phase)] - c[self.before(phase)]) / self.W

    def rate_of_cumulative(self, c: np.ndarray, phase: float) -> np.ndarray:
        return (c[self.at(phase)] - c[self.before(phase)]) / self.W

    def recent_mean(self, x: np.ndarray, phase: float, seconds: float = 1.0) -> np.ndarray:
        k = max(1, round(seconds / self.tick))
        c = np.concatenate([[0.0], np.cumsum(x)])
        i = self.at(phase) + 1
        return (c[i] - c[np.maximum(i - k, 0)]) / k

    def per_tick(self, t: np.ndarray, w: np.ndarray | float = 1.0) -> np.ndarray:
        t = np.asarray(t, dtype=float)
        ok = np.isfinite(t)
        w = np.broadcast_to(np.asarray(w, dtype=float), t.shape)[ok]
        return np.bincount(self.tick_of(t[ok]), weights=w, minlength=self.n_ticks)[: self.n_ticks]

    def window_rows(self, t_obs: np.ndarray, phase: float) -> np.ndarray:
        """First query index whose scrape sees an observation made at ``t_obs``."""
        return np.ceil((t_obs + phase) / self.step - 1e-9).astype(np.int64)

    def counter_of_events(self, t: np.ndarray, phase: float) -> np.ndarray:
        """rate() of a counter that counts the events at times ``t``."""
        t = np.sort(np.asarray(t, dtype=float)[np.isfinite(t)])
        s = self.T - phase
        return (np.searchsorted(t, s, side="right") - np.searchsorted(t, s - self.W, side="right")) / self.W

    def bucket_quantiles(self, t_obs: np.ndarray, values: np.ndarray, weights: np.ndarray | None,
                         bounds: tuple, qs: tuple, phase: float) -> np.ndarray:
        """histogram_quantile over the window, from a classic histogram with ``bounds`` (+Inf appended)."""
        return self.bucket_quantiles_of([(t_obs, values, weights)], bounds, qs, phase)[0]

    def bucket_quantiles_of(self, hists: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]], bounds: tuple,
                            qs: tuple, phase: float) -> list[np.ndarray]:
        """``bucket_quantiles`` of several histograms (``(t_obs, values, weights)`` each) with the same bounds,
        quantiles and scrape phase, computed together: their buckets side by side in one bincount, one cumsum and
        one ``histogram_quantile`` over all their rows. Each element is the same sum or arithmetic as alone."""
        nb = len(bounds) + 1
        off = self.m
        size = (self.n + off) * nb
        edges = np.asarray(bounds, dtype=float)
        flats, ws = [], []
        for s, (t_obs, values, weights) in enumerate(hists):
            ok = np.isfinite(t_obs) & np.isfinite(values)
            t_obs, values = t_obs[ok], values[ok]
            w = np.ones(len(t_obs)) if weights is None else np.asarray(weights, dtype=float)[ok]
            rows = self.window_rows(t_obs, phase)
            keep = (rows >= -self.m) & (rows < self.n)
            b = np.searchsorted(edges, values[keep], side="left")
            # np.add.at(counts, (row, bucket), w) as one bincount: the same sums, added in the same order (each
            # histogram's bins are its own block of the bincount)
            flats.append((rows[keep] + off) * nb + b + s * size)
            ws.append(w[keep])
        k = len(hists)
        flat = flats[0] if k == 1 else np.concatenate(flats)
        w = ws[0] if k == 1 else np.concatenate(ws)
        counts = np.bincount(flat, weights=w, minlength=k * size).reshape(k, self.n + off, nb)
        c = np.cumsum(counts, axis=1)
        win = c[:, off:] - c[:, off - self.m: self.n + off - self.m]
        q = histogram_quantile(win.reshape(k * self.n, nb), edges, qs)
        return [q[s * self.n:(s + 1) * self.n] for s in range(k)]

    def exact_quantiles(self, t_obs: np.ndarray, values: np.ndarray, qs: tuple, phase: float) -> np.ndarray:
        ok = np.isfinite(t_obs) & np.isfinite(values)
        rows = self.window_rows(t_obs[ok], phase)
        v = values[ok]
        order = np.argsort(rows, kind="stable")
        rows, v = rows[order], v[order]
        out = np.full((self.n, len(qs)), np.nan)
        lo = np.searchsorted(rows, np.arange(self.n) - self.m + 1, side="left")
        hi = np.searchsorted(rows, np.arange(self.n), side="right")
        qa = np.asarray(qs, dtype=float)
        for k in range(self.n):
            cnt = hi[k] - lo[k]
            if cnt <= 0:
                continue
            x = np.sort(v[lo[k]:hi[k]])
            pos = qa * (cnt - 1)  # numpy's default ("linear") quantile
            i0 = np.floor(pos).astype(np.int64)
            i1 = np.minimum(i0 + 1, cnt - 1)
            out[k] = x[i0] + (x[i1] - x[i0]) * (pos - i0)
        return out


def histogram_quantile(counts: np.ndarray, bounds: np.ndarray, qs: tuple) -> np.ndarray:
    """Prometheus' ``histogram_quantile``: linear interpolation inside the bucket holding the rank; the lowest
    bucket starts at 0; a rank in the +Inf bucket returns the highest finite bound; no observations → NaN."""
    # All quantiles at once (axis 0: the quantile): each element is the same arithmetic as one quantile at a time.
    cum = np.cumsum(counts, axis=1)
    total = cum[:, -1]
    rows = np.arange(len(counts))
    lower_b = np.concatenate([[0.0], bounds])
    rank = np.multiply.outer(np.asarray(qs, dtype=float), total)  # (quantile, row)
    b = np.argmax(cum >= rank[:, :, None] - 1e-12, axis=2)
    before = np.where(b > 0, cum[rows, np.maximum(b - 1, 0)], 0.0)
    inb = counts[rows, b]
    finite = b < len(bounds)
    upper = np.where(finite, bounds[np.minimum(b, len(bounds) - 1)], bounds[-1])
    lower = lower_b[np.minimum(b, len(bounds))]
    frac = np.where(inb > 0, (rank - before) / np.where(inb > 0, inb, 1.0), 1.0)
    val = np.where(finite, lower + (upper - lower) * frac, bounds[-1])
    return np.where(total > 0, val, np.nan).T


def _ar1(rng: np.random.Generator, n: int, sd: float, tau: float, tick: float) -> np.ndarray:
    """Stationary AR(1) noise with standard deviation ``sd`` and correlation time ``tau`` seconds."""
    rho = float(np.exp(-tick / tau))
    e = rng.standard_normal(n) * sd * np.sqrt(1.0 - rho * rho)
    return lfilter([1.0], [1.0, -rho], e)


@cache
def _histogram_entries(series: str, scope: str) -> tuple:
    """``cat.histogram_columns`` (the catalogue is a constant tuple), looked up once per series."""
    return tuple(cat.histogram_columns(series, scope))


def _histogram_columns(cols: dict[str, np.ndarray], svc: str, series: str, scope: str, G: _Grid, t_obs: np.ndarray,
                       values: np.ndarray, weights: np.ndarray | None, bounds: tuple, phase: float) -> None:
    """The catalogue's quantile columns of one histogram series, from its observations."""
    _histogram_group(cols, svc, scope, G, [(series, t_obs, values, weights)], bounds, phase)


def _histogram_group(cols: dict[str, np.ndarray], svc: str, scope: str, G: _Grid,
                     hists: list[tuple[str, np.ndarray, np.ndarray, np.ndarray | None]], bounds: tuple,
                     phase: float) -> None:
    """``_histogram_columns`` of several series of one exporter with the same bounds (``(series, t_obs, values,
    weights)`` each), their quantiles computed together where the catalogue asks the same ones of each."""
    entries = [_histogram_entries(series, scope) for series, *_ in hists]
    for e in entries:  # the columns in the order of ``hists``, whatever the grouping below
        for m in e:
            cols[f"{svc}_{m.metric}"] = None
    qs = [tuple(m.quantile for m in e) for e in entries]
    groups: dict[tuple, list[int]] = {}
    for i, q in enumerate(qs):
        groups.setdefault(q, []).append(i)
    for q, members in groups.items():
        got = G.bucket_quantiles_of([hists[i][1:] for i in members], bounds, q, phase)
        for i, x in zip(members, got):
            for j, m in enumerate(entries[i]):
                cols[f"{svc}_{m.metric}"] = x[:, j]


def build_metrics(cfg: SimConfig, dep: Deployment, engines: dict[str, Any], env: Environment, wl: Any,
                  res: dict[str, np.ndarray], paths: Any, var: Any, start: float,
                  rng: np.random.Generator) -> pd.DataFrame:
    logs = {r: e.log.arrays() for r, e in engines.items()}
    n_ticks = min(len(v["t"]) for v in logs.values())
    t_sim0 = env.t0
    G = _Grid(cfg, t_sim0, n_ticks)
    noise = True  # measurement noise is always on; cfg.noise sets the background activity on top of it
    # Its own stream (spawned, so `rng`'s draws are untouched): noise="none" stays byte-identical.
    brng = np.random.default_rng(rng.bit_generator.seed_seq.spawn(1)[0]) if cfg.noise == "realistic" else None
    replicas = list(dep.replicas)
    head = dep.proxy
    names = np.array([*paths.names, ""], dtype=object)  # index -1: never dispatched (proxy-overload)
    rep_of = names[paths.replica]
    ok = res["failed"] == 0
    cols: dict[str, np.ndarray] = {}

    def phase() -> float:
        return float(rng.uniform(0.0, cfg.step))

    tick_grid = t_sim0 + cfg.tick * np.arange(n_ticks)
    pods = dep.pods

    # ---- per-tick activity of every pod -----------------------------------------------------------------
    gen = {r: logs[r]["gen_tokens"][:n_ticks] for r in replicas}
    shift_src = env.delay_active(head)[:n_ticks] if head in env.delays else np.zeros(n_ticks)
    shift = np.round(shift_src / cfg.tick).astype(np.int64)
    j = np.arange(n_ticks)
    forwarded = np.zeros(n_ticks)  # tokens reaching the proxy (and then nginx) per tick
    remote_tokens = np.zeros(n_ticks)
    for r in replicas:
        if r == head:
            forwarded += gen[r]
        else:
            moved = np.zeros(n_ticks)
            np.add.at(moved, np.clip(j + shift, 0, n_ticks - 1), gen[r])
            forwarded += moved
            remote_tokens += moved
    req_at = {r: G.per_tick(paths.t_arrival[rep_of == r]) for r in replicas}
    req_prompt = {r: G.per_tick(paths.t_arrival[rep_of == r], wl.prompt_tokens[rep_of == r]) for r in replicas}
    n_in = G.per_tick(paths.t_gateway_start)
    n_proxy = G.per_tick(paths.t_proxy_start)
    n_remote = G.per_tick(paths.t_send[(rep_of != head)])

    cpu_s: dict[str, np.ndarray] = {}
    mem_b: dict[str, np.ndarray] = {}
    tx: dict[str, np.ndarray] = {}
    rx: dict[str, np.ndarray] = {}
    for p in pods:
        share = env.cpu_share[p][:n_ticks]
        bg = var.background_cpu[p] * cfg.tick * np.ones(n_ticks)
        if noise:
            bg = bg * np.exp(_ar1(rng, n_ticks, 0.15, 30.0, cfg.tick))
            # Ray's metrics agent and Prometheus scrapes: a short burst every 10 s.
            if p != dep.gateway:
                bg += 0.08 * cfg.tick * (np.mod(tick_grid + 10.0 * rng.random(), 10.0) < cfg.tick)
        stress = (env.stress_cores[p][:n_ticks] + env.hog_cores[p][:n_ticks]) * share * cfg.tick
        if p == dep.gateway:
            own = runmod.NGINX_REQUEST_S * n_in + runmod.NGINX_CHUNK_S * forwarded
            t_out = forwarded + 3.0 * n_in + 0.5 * forwarded + 5.0 * cfg.tick
            t_in = forwarded + 3.0 * n_in + 0.5 * forwarded + 5.0 * cfg.tick
            in_flight = np.cumsum(n_in) - np.cumsum(G.per_tick(paths.t_gateway_end))
            mem = var.base_memory[p] + 64e3 * np.maximum(in_flight, 0.0)
        else:
            lg = logs[p]
            own = lg["engine_cpu"][:n_ticks] + runmod.REPLICA_REQUEST_S * req_at[p] \
                + runmod.TOKENIZE_S * req_prompt[p] + runmod.DETOKENIZE_S * gen[p]
            streamed = 0.0 if p == head else gen[p]
            t_out = streamed + 2.0 * req_at[p] + 20.0 * cfg.tick
            t_in = 3.0 * req_at[p] + 0.5 * streamed + 20.0 * cfg.tick
            mem = var.base_memory[p] + env.hog_bytes[p][:n_ticks] + 2.5e6 * lg["running"][:n_ticks]
            if p == head:
                own = own + runmod.PROXY_REQUEST_S * n_proxy + runmod.PROXY_CHUNK_S * forwarded
                t_out = t_out + forwarded + 3.0 * n_remote + 0.5 * remote_tokens + 40.0 * cfg.tick
                t_in = t_in + remote_tokens + 3.0 * n_proxy + 0.5 * forwarded + 40.0 * cfg.tick
        total = own + bg + stress
        if brng is not None and p == head:
            total = total + gc_bursts(brng, n_ticks, cfg.tick)
        cpu_s[p] = np.minimum(total, cfg.pod_cpu * cfg.tick * 0.995)
        if noise:
            mem = mem + _ar1(rng, n_ticks, 12e6 if p != dep.gateway else 1e6, 100.0, cfg.tick)
            tx[p] = rng.poisson(np.maximum(t_out, 0.0)).astype(float)
            rx[p] = rng.poisson(np.maximum(t_in, 0.0)).astype(float)
        else:
            tx[p], rx[p] = t_out, t_in
        mem_b[p] = mem

    # ---- containers (cAdvisor, via the kubelet of each node) ------------------------------------------
    for p in pods:
        ph = phase()
        cpu = G.rate(cpu_s[p], ph)
        memory = G.gauge(mem_b[p], ph)
        ntx = G.rate(tx[p], ph)
        nrx = G.rate(rx[p], ph)
        cols[f"{p}_ctn_cpu"] = cpu
        cols[f"{p}_ctn_memory"] = memory
        cols[f"{p}_ctn_network"] = ntx
        cols[f"{p}_cpu_usage_seconds"] = cpu
        cols[f"{p}_memory_working_set_bytes"] = memory
        cols[f"{p}_network_transmit_packets"] = ntx
        cols[f"{p}_network_receive_packets"] = nrx

    # ---- GPUs: Ray's utilisation (study view) and DCGM (full view) --------------------------------------
    # A replica on the host CPU (device "cpu") has neither: Ray reports no GPU and there is no DCGM exporter.
    for r in replicas:
        lg = {k: v[:n_ticks] for k, v in logs[r].items()}
        e = engines[r]
        g = e.gpu
        if not g.is_gpu:
            continue
        ph_ray = phase()
        util_ray = 100.0 * G.recent_mean(lg["busy"], ph_ray)
        ph = phase()
        busy = G.recent_mean(lg["busy"], ph)
        idle = busy < 0.02
        dram = G.recent_mean(lg["busy"] * np.minimum(lg["mem_share"], 1.0), ph)
        tensor = G.recent_mean(lg["busy"] * (0.6 * np.minimum(lg["comp_share"], 1.0) + 0.05), ph)
        if noise:
            # NVML's activity counters are sampled over a short period: a reading scatters by a point or two.
            util_ray = np.clip(np.round(util_ray + rng.normal(0.0, 1.5, G.n)), 0.0, 100.0)
            busy = np.clip(busy + rng.normal(0.0, 0.015, G.n), 0.0, 1.0)
            dram = np.clip(dram + rng.normal(0.0, 0.015, G.n), 0.0, 1.0)
            tensor = np.clip(tensor + rng.normal(0.0, 0.005, G.n), 0.0, 1.0)
        cols[f"{r}_ctn_gpu"] = util_ray
        power = G.recent_mean(lg["power"], ph)
        clock = G.gauge(lg["clock"], ph) * g.sm_clock_mhz
        clock = np.where(idle, g.sm_clock_min_mhz, clock)
        capped = G.gauge(lg["capped"], ph) > 0
        temp = G.gauge(lg["temp"], ph)
        mtemp = G.gauge(lg["mem_temp"], ph)
        if noise:
            power = power + rng.normal(0.0, 1.0, G.n)
            clock = clock + np.where(capped, rng.normal(0.0, 12.0, G.n), 0.0)
            temp = temp + rng.normal(0.0, 0.3, G.n)
            mtemp = mtemp + rng.normal(0.0, 0.3, G.n)
        steps = G.rate(lg["steps"], ph)
        tok = G.rate(lg["gen_tokens"], ph)
        ptok = G.rate(lg["prompt_tokens"], ph)
        # A restart with a differently sized KV pool (kv-cache-pressure) changes what the GPU holds.
        fb_used = np.floor(G.gauge(lg["fb_used"], ph) / 2**20) if "fb_used" in lg else \
            np.full(G.n, np.floor(e.fb_used_bytes / 2**20))
        cols[f"{r}_gpu_util"] = np.round(100.0 * busy)
        cols[f"{r}_mem_copy_util"] = np.round(100.0 * dram)
        cols[f"{r}_fb_used"] = fb_used
        cols[f"{r}_fb_free"] = np.floor(g.hbm_bytes / 2**20) - fb_used
        cols[f"{r}_gpu_temp"] = np.round(temp)
        cols[f"{r}_memory_temp"] = np.round(mtemp)
        cols[f"{r}_power_usage"] = np.round(power, 3)
        cols[f"{r}_total_energy_consumption"] = 1000.0 * G.rate_of_cumulative(lg["energy"], ph)
        cols[f"{r}_sm_clock"] = np.round(np.clip(clock, g.sm_clock_min_mhz, g.sm_clock_mhz))
        cols[f"{r}_mem_clock"] = np.full(G.n, g.mem_clock_mhz)
        xid, dbe, remapped, pending = _ras(env.gpu_ras.get(r, ()), G.T - ph)
        cols[f"{r}_xid_errors"] = xid
        if g.name not in NO_ECC_MEMORY:
            cols[f"{r}_ecc_dbe_vol_total"] = dbe
            cols[f"{r}_uncorrectable_remapped_rows"] = remapped
            cols[f"{r}_row_remap_pending"] = pending
        # PCIe: inputs and sampled tokens per step, prompt ids, plus the driver's own traffic (KB/s).
        pcie_base = 40.0 + (rng.normal(0.0, 4.0, G.n) if noise else 0.0)
        cols[f"{r}_pcie_tx_throughput"] = np.round(pcie_base + 1.5 * steps + 0.004 * tok)
        cols[f"{r}_pcie_rx_throughput"] = np.round(pcie_base + 2.0 * steps + 0.008 * ptok)
        cols[f"{r}_prof_gr_engine_active"] = np.round(0.97 * busy, 4)
        cols[f"{r}_prof_pipe_tensor_active"] = np.round(tensor, 4)
        cols[f"{r}_prof_dram_active"] = np.round(0.9 * dram, 4)
        thermal = G.gauge(lg["thermal"], ph)
        cols[f"{r}_clocks_event_reasons"] = (np.where(capped, CLOCK_REASON_SW_POWER_CAP, 0)
                                             | np.where(idle, CLOCK_REASON_IDLE, 0)
                                             | np.where(thermal >= 1, CLOCK_REASON_SW_THERMAL, 0)
                                             | np.where(thermal >= 2, CLOCK_REASON_HW_THERMAL, 0)).astype(float)
        cols[f"{r}_power_violation"] = 1e6 * G.rate_of_cumulative(lg["power_violation"], ph)
        cols[f"{r}_thermal_violation"] = 1e6 * G.rate_of_cumulative(lg["thermal_violation"], ph)
        off = env.gpu_off.get(r)
        if off:  # a GPU off the bus: DCGM and Ray read nothing from it (DCGM keeps its last Xid)
            for c in [c for c in cols if c.startswith(f"{r}_") and _REPLICA_SOURCE.get(c[len(r) + 1:]) == "dcgm"
                      and not c.endswith("_xid_errors")]:
                cols[c] = np.where(_within(off, G.T - ph), np.nan, cols[c])
            cols[f"{r}_ctn_gpu"] = np.where(_within(off, G.T - ph_ray), np.nan, cols[f"{r}_ctn_gpu"])

    # ---- vLLM engines -----------------------------------------------------------------------------------
    t_first, t_end = res["t_first_token"], res["t_engine_end"]
    t_arr, t_sched = paths.t_arrival, res["t_scheduled"]
    for r in replicas:
        lg = {k: v[:n_ticks] for k, v in logs[r].items()}
        ph = phase()
        mine = rep_of == r
        fin = mine & ok
        cols[f"{r}_num_requests_running"] = G.gauge(lg["running"], ph)
        cols[f"{r}_num_requests_waiting"] = G.gauge(lg["waiting"], ph)
        cols[f"{r}_kv_cache_usage_perc"] = G.gauge(lg["kv_usage"], ph)
        cols[f"{r}_prompt_tokens"] = G.rate(lg["prompt_tokens"], ph)
        cols[f"{r}_generation_tokens"] = G.rate(lg["gen_tokens"], ph)
        cols[f"{r}_num_preemptions"] = G.rate_of_cumulative(lg["preemptions"], ph)
        cols[f"{r}_request_success"] = G.counter_of_events(t_end[fin], ph)
        cols[f"{r}_prefix_cache_queries"] = G.rate_of_cumulative(lg["prefix_queries"], ph)
        cols[f"{r}_prefix_cache_hits"] = G.rate_of_cumulative(lg["prefix_hits"], ph)
        # Each histogram's columns are its own (the same values whether computed alone or with others).
        _histogram_columns(cols, r, "vllm:time_to_first_token_seconds", "replica", G, t_first[mine],
                           t_first[mine] - t_arr[mine], None, TTFT_BUCKETS, ph)
        tf = t_end[fin]
        _histogram_group(cols, r, "replica", G, [
            ("vllm:e2e_request_latency_seconds", tf, t_end[fin] - t_arr[fin], None),
            ("vllm:request_queue_time_seconds", tf, t_sched[fin] - t_arr[fin], None),
            ("vllm:request_prefill_time_seconds", tf, t_first[fin] - t_sched[fin], None),
            ("vllm:request_decode_time_seconds", tf, t_end[fin] - t_first[fin], None),
        ], REQUEST_BUCKETS, ph)
        obs = engines[r].observations()
        _histogram_columns(cols, r, "vllm:inter_token_latency_seconds", "replica", G, obs["itl_t"], obs["itl_v"],
                           obs["itl_w"], ITL_BUCKETS, ph)
        _histogram_group(cols, r, "replica", G, [
            ("vllm:request_prompt_tokens", tf, wl.prompt_tokens[fin].astype(float), None),
            ("vllm:request_generation_tokens", tf, res["generated"][fin].astype(float), None),
            ("vllm:iteration_tokens_total", obs["iter_t"], obs["iter_v"], obs["iter_w"]),
        ], TOKEN_BUCKETS, ph)

    # ---- the mesh: per destination latency, requests, errors --------------------------------------------
    ph = phase()
    hop = runmod.HOP_S * var.hop_factor
    mesh = {
        dep.gateway: (paths.t_gateway_end, paths.t_gateway_end - paths.t_gateway_start, ok | ~ok),
        head: (paths.t_proxy_server_end + hop,
               paths.t_proxy_server_end + hop - (paths.t_gateway_start + runmod.NGINX_REQUEST_S), ok | ~ok),
    }
    for r in replicas:
        if r == head:
            continue  # the head's replica is called inside its pod: no mesh traffic
        sel = rep_of == r
        mesh[r] = (np.where(sel, paths.t_stream_end + hop, np.nan),
                   np.where(sel, paths.t_stream_end + hop - paths.t_send, np.nan), sel)
    # The response_code of each mesh series is the status its caller saw (llmrca.testbed: the gateway's and the
    # head's series come from nginx's access log, the replicas' from the Serve proxy). nginx logs a stream its read
    # timeout cut after the header as 200 (upstream status 200); the proxy reports a replica's 200 once it had the
    # header, else its own 499 (nginx hung up): a timeout is never a 5xx towards a replica.
    timeout = res["failed"] == 504
    cut = timeout & runmod.header_sent(res, paths)
    err = {dep.gateway: ~ok & ~cut, head: ~ok & ~cut}
    for svc, (tt, dur, sel) in mesh.items():
        tt = np.where(sel, tt, np.nan)
        ms = 1000.0 * dur
        if cfg.mesh_quantiles == "istio":
            q = G.bucket_quantiles(tt, ms, None, ISTIO_BUCKETS_MS, MESH_QUANTILES, ph)
        else:
            q = G.exact_quantiles(tt, ms, MESH_QUANTILES, ph)
        cols[f"{svc}_latency"] = q[:, 1]
        cols[f"{svc}_request_duration_milliseconds_p50"] = q[:, 0]
        cols[f"{svc}_request_duration_milliseconds_p90"] = q[:, 1]
        cols[f"{svc}_requests"] = G.counter_of_events(tt, ph)
        cols[f"{svc}_requests_5xx"] = G.counter_of_events(np.where(err.get(svc, ~ok & ~timeout), tt, np.nan), ph)

    # ---- nodes (node-exporter) --------------------------------------------------------------------------
    for node in dep.nodes:
        ph = phase()
        mine = dep.node_pods(node)
        kind = "gpu" if node.startswith("node-gpu") else "cpu"
        pk_tx = sum(tx[p] for p in mine) + 30.0 * cfg.tick
        pk_rx = sum(rx[p] for p in mine) + 30.0 * cfg.tick
        cpu = sum(cpu_s[p] for p in mine) + SYSTEM_CPU * cfg.tick + ZTUNNEL_CPU_PER_PACKET * (pk_tx + pk_rx)
        used = sum(mem_b[p] for p in mine) + SYSTEM_MEMORY
        if noise:
            cpu = cpu + np.abs(_ar1(rng, n_ticks, 0.03 * cfg.tick, 20.0, cfg.tick))
            used = used + _ar1(rng, n_ticks, 40e6, 100.0, cfg.tick)
            pk_tx = pk_tx + rng.poisson(30.0 * cfg.tick, n_ticks)
            pk_rx = pk_rx + rng.poisson(30.0 * cfg.tick, n_ticks)
        if brng is not None:
            cpu = cpu + cfg.tick * _neighbour(brng, n_ticks, NEIGHBOUR_CPU, cfg.tick)
            used = used + _neighbour(brng, n_ticks, NEIGHBOUR_MEMORY, cfg.tick)
            pk_tx = pk_tx + brng.poisson(cfg.tick * _neighbour(brng, n_ticks, NEIGHBOUR_PACKETS, cfg.tick))
            pk_rx = pk_rx + brng.poisson(cfg.tick * _neighbour(brng, n_ticks, NEIGHBOUR_PACKETS, cfg.tick))
        c = G.rate(cpu, ph)
        u = G.gauge(used, ph)
        ntx = G.rate(pk_tx, ph)
        cols[f"{node}_node_cpu"] = c
        cols[f"{node}_node_memory"] = u
        cols[f"{node}_node_network"] = ntx
        cols[f"{node}_cpu_seconds"] = c
        cols[f"{node}_memory_memavailable_bytes"] = NODE_MEMORY[kind] - u
        cols[f"{node}_network_transmit_packets"] = ntx
        cols[f"{node}_network_receive_packets"] = G.rate(pk_rx, ph)

    if brng is not None:
        missed_scrapes(cols, dep, brng, G.n)
    return _frame(dep, cols, start + G.T)


_REPLICA_SOURCE = {m.metric: m.source for m in cat.metrics(scope="replica")}  # column metric -> exporter


def _within(windows: list[tuple[float, float]], s: np.ndarray) -> np.ndarray:
    out = np.zeros(len(s), dtype=bool)
    for a, b in windows:
        out |= (s >= a) & (s < b)
    return out


def _ras(events: Any, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """DCGM's RAS fields at scrape times ``s`` from a GPU's events (time, what, value): the last Xid; double-bit
    errors since the last reset (volatile); rows remapped for uncorrectable errors (a reset performs a pending
    remap); whether a remap is pending."""
    n = len(s)
    xid, dbe, remapped, pending = (np.zeros(n) for _ in range(4))
    count = rows = 0
    last = 0
    for t, what, value in sorted(events):
        now = s >= t
        if what == "xid":
            last = value
        elif what == "dbe":
            count += value
        elif what == "reset":
            rows += 1 if count else 0
            count = 0
        xid = np.where(now, last, xid)
        dbe = np.where(now, count, dbe)
        remapped = np.where(now, rows, remapped)
        pending = np.where(now, 1.0 if count else 0.0, pending)
    return xid, dbe, remapped, pending


def gc_bursts(rng: np.random.Generator, n_ticks: int, tick: float) -> np.ndarray:
    """CPU seconds per tick of GC-like bursts: Poisson arrivals at ``GC_RATE_HZ``, exponential sizes."""
    k = rng.poisson(GC_RATE_HZ * tick, n_ticks)
    return np.where(k > 0, rng.gamma(np.maximum(k, 1), GC_CPU_S), 0.0)


def _neighbour(rng: np.random.Generator, n_ticks: int, spec: tuple[float, float, float], tick: float) -> np.ndarray:
    """Other tenants' usage on a node: a non-negative level ``mean`` with AR(1) variation (``sd``, ``tau`` s)."""
    mean, sd, tau = spec
    return np.maximum(mean + _ar1(rng, n_ticks, sd, tau, tick), 0.0)


# Gauges per scraped target: a failed scrape makes Prometheus mark the target's series stale, so a query that
# would read that scrape returns nothing (counters' rate() over the window still has its other samples).
# (the catalogue's gauges of each scraped source; the kubelet's cAdvisor serves the container series)
_GAUGES = {exporter: tuple(m.metric for m in cat.metrics(source=source) if m.kind == "gauge")
           for exporter, source in (("cadvisor", "container"), ("ray", "ray"), ("dcgm", "dcgm"), ("vllm", "vllm"),
                                    ("node", "node"))}


def missed_scrapes(cols: dict[str, np.ndarray], dep: Deployment, rng: np.random.Generator, n: int) -> None:
    """Blank the gauges a failed scrape hides: each target fails each scrape with ``MISSED_SCRAPE_P``."""
    per_node = ("cadvisor", "dcgm", "node")
    targets: list[tuple[str, list[str]]] = []
    for exporter in _GAUGES:
        if exporter in per_node:
            for node in dep.nodes:
                targets.append((exporter, [node] if exporter == "node" else dep.node_pods(node)))
        else:
            targets += [(exporter, [p]) for p in (dep.pods if exporter == "ray" else dep.replicas)]
    for exporter, services in targets:
        failed = rng.random(n) < MISSED_SCRAPE_P
        if not failed.any():
            continue
        for svc in services:
            for metric in _GAUGES[exporter]:
                c = cols.get(f"{svc}_{metric}")
                if c is not None:
                    cols[f"{svc}_{metric}"] = np.where(failed, np.nan, c)
def catalogue_columns(dep: Deployment) -> list[str]:
    """The columns the metric catalogue gives this deployment: container series for every pod, engine and GPU
    series for every replica, mesh series for every service called over the mesh (the gateway, the Serve proxy's
    pod, the replicas outside it), node series for every node, client series for the workload node (if any)."""
    return list(_catalogue_of(*_layout(dep)))


def _layout(dep: Deployment) -> tuple:
    return dep.gateway, dep.proxy, tuple(dep.replicas), tuple(dep.pods), tuple(dep.nodes), dep.client


@lru_cache(maxsize=64)
def _catalogue_of(gateway: str, proxy: str, replicas: tuple, pods: tuple, nodes: tuple,
                  client: str | None) -> tuple[str, ...]:
    mesh = [gateway, proxy, *(r for r in replicas if r != proxy)]
    scopes = {"pod": list(pods), "replica": list(replicas), "mesh": mesh, "node": list(nodes)}
    if client:
        scopes["client"] = [client]
    return tuple(cat.expected_columns(scopes))


@lru_cache(maxsize=64)
def _catalogue_set_of(*layout: Any) -> frozenset[str]:
    return frozenset(_catalogue_of(*layout))


def with_client_metrics(metrics: pd.DataFrame, cfg: SimConfig, dep: Deployment, engines: dict[str, Any],
                        env: Environment, wl: Any, res: dict[str, np.ndarray], paths: Any, var: Any,
                        rng: np.random.Generator) -> pd.DataFrame:
    """``metrics`` with the workload node's own series appended: what the load generator counts on its side, as a
    Locust-like client exports it (requests and prompt tokens it sent, failures and response times it saw, requests
    waiting for an answer), scraped at its own phase. The other columns are untouched."""
    n_ticks = min(len(e.log.arrays()["t"]) for e in engines.values())
    G = _Grid(cfg, env.t0, n_ticks)
    ph = float(rng.uniform(0.0, cfg.step))
    svc = dep.client
    hop = runmod.HOP_S * var.hop_factor
    sent = np.asarray(paths.t_gateway_start, dtype=float)
    # The client's answer ends one hop after the gateway's (its response time spans both hops).
    back = np.asarray(paths.t_gateway_end, dtype=float) + hop
    took = back - sent + hop
    failed = res["failed"] != 0
    cut = (res["failed"] == 504) & runmod.header_sent(res, paths)
    bad = failed & ~cut  # a stream nginx cut after its 200 header reads as a short answer, not a failure
    cols = {
        f"{svc}_requests_sent": G.counter_of_events(sent, ph),
        f"{svc}_prompt_tokens_sent": G.rate(G.per_tick(sent, wl.prompt_tokens.astype(float)), ph),
        f"{svc}_request_failures": G.counter_of_events(np.where(bad, back, np.nan), ph),
        f"{svc}_requests_in_flight": G.gauge(np.cumsum(G.per_tick(sent)) - np.cumsum(G.per_tick(back)), ph),
    }
    _histogram_columns(cols, svc, "loadgen_response_time_seconds", "client", G, back, took, None, REQUEST_BUCKETS,
                       ph)
    _histogram_columns(cols, svc, "loadgen_prompt_length_tokens", "client", G, sent,
                       wl.prompt_tokens.astype(float), None, TOKEN_BUCKETS, ph)
    extra = set(cols) - _catalogue_set(dep)
    if extra:
        raise AssertionError(f"sim metrics: column(s) not in the metric catalogue: {', '.join(sorted(extra))}")
    out = metrics.copy()
    for c, x in cols.items():
        x = np.asarray(x, dtype=float)
        if not np.isnan(x).all():
            out[c] = x
    return out


def _catalogue_set(dep: Deployment) -> frozenset[str]:
    """``catalogue_columns(dep)`` as a set, made once per deployment layout."""
    return _catalogue_set_of(*_layout(dep))


@lru_cache(maxsize=64)
def _column_order(names: tuple[str, ...], services: tuple[str, ...]) -> tuple[str, ...]:
    """``llmrca.sim.views.column_order`` (a pure function of its arguments), once per column layout."""
    from llmrca.sim.views import column_order

    return tuple(column_order(list(names), list(services)))


def _frame(dep: Deployment, cols: dict[str, np.ndarray], times: np.ndarray) -> pd.DataFrame:
    extra = set(cols) - _catalogue_set(dep)
    if extra:  # one description of the columns: the simulator may not invent one
        raise AssertionError(f"sim metrics: column(s) not in the metric catalogue: {', '.join(sorted(extra))}")
    order = _column_order(tuple(cols), (*dep.pods, *dep.nodes))
    names = [TIME]
    data = [times.astype(float)]
    for c in order:
        x = np.asarray(cols[c], dtype=float)
        if np.isnan(x).all():
            continue  # a histogram that saw nothing in the whole run: Prometheus returns no series for it
        names.append(c)
        data.append(x)
    # One (column, row) block, as pandas would consolidate a dict of these float columns into, without its
    # per-column checks: the frame (dtypes, values, memory layout) is the same.
    return pd.DataFrame(np.vstack(data).T, columns=pd.Index(names), copy=False)


def engine_stats_events(dep: Deployment, logs: dict[str, dict[str, np.ndarray]],
                        phases: np.ndarray) -> list[tuple[float, str, str, dict]]:
    """vLLM's periodic stats line (every 10 s) as events: throughputs over the interval, queue and KV state."""
    out = []
    for r, ph in zip(dep.replicas, phases):
        lg = logs[r]
        t = lg["t"]
        if not len(t):
            continue
        times = np.arange(t[0] + 10.0 + ph, t[-1], 10.0)
        if not len(times):
            continue
        i = np.clip(np.searchsorted(t, times, side="right") - 1, 0, len(t) - 1)
        i0 = np.clip(np.searchsorted(t, times - 10.0, side="right") - 1, 0, len(t) - 1)
        cp, cg = np.cumsum(lg["prompt_tokens"]), np.cumsum(lg["gen_tokens"])
        dq = lg["prefix_queries"][i] - lg["prefix_queries"][i0]
        dh = lg["prefix_hits"][i] - lg["prefix_hits"][i0]
        npre = lg["preemptions"][i] - lg["preemptions"][i0]
        # The per-event values as Python floats, gathered and subtracted column-wise (the same float64 values and
        # IEEE operations as element by element).
        ptok, gtok = (cp[i] - cp[i0]).tolist(), (cg[i] - cg[i0]).tolist()
        run_l, wait_l, kv_l = lg["running"][i].tolist(), lg["waiting"][i].tolist(), lg["kv_usage"][i].tolist()
        for k, (tk, nk, qk, hk) in enumerate(zip(times.tolist(), npre.tolist(), dq.tolist(), dh.tolist())):
            extra = {"preemptions": int(nk)} if nk > 0 else {}
            out.append((tk, r, "engine_stats", {**extra,
                "prompt_tps": round(ptok[k] / 10.0, 1),
                "gen_tps": round(gtok[k] / 10.0, 1),
                "running": int(run_l[k]), "waiting": int(wait_l[k]), "swapped": 0,
                "kv_usage_perc": round(kv_l[k], 4),
                "prefix_cache_hit_rate": round(hk / qk, 4) if qk > 0 else 0.0,
            }))
    return out
