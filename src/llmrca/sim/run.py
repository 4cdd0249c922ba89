"""One simulated run: workload → gateway → Serve proxy (routing) → replicas (engines on GPUs) → back, with at most
one fault acting on the causes, and the telemetry of it as a native ``Case``."""

from __future__ import annotations

import gc
import hashlib
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from heapq import heappop, heappush
from typing import Any

import numpy as np
import pandas as pd

from llmrca import __version__
from llmrca import faults as fault_registry
from llmrca.case import Case, FaultRecord, GroundTruth, Observation
from llmrca.faults import Injection, Perturbation
from llmrca.sim import environment as envmod
from llmrca.sim import workload as wlmod
from llmrca.sim.config import SimConfig
from llmrca.sim.deployment import Deployment, deployment
from llmrca.sim.engine import ENGINE_CORE_CORES, ReplicaEngine, RequestTable
from llmrca.sim.gpu import GpuState, busy_power
from llmrca.sim.hardware import GIB
from llmrca.sim.record import REQUEST_COLUMNS, UPSTREAM_TIMEOUT, SimRecord, events_frame
from llmrca.sim.strings import Pieces, inferred_take
from llmrca.sim.tcploss import request_segments

BASE_START = 1_767_225_600.0  # 2026-01-01T00:00:00Z; runs start at a seeded offset from it

# CPU-side costs at a full CPU share (seconds).
NGINX_REQUEST_S = 0.25e-3
NGINX_CHUNK_S = 8e-6
PROXY_REQUEST_S = 2.5e-3  # Serve HTTP proxy: parse, route, open the call to the replica
PROXY_CHUNK_S = 60e-6  # per streamed chunk forwarded
REPLICA_REQUEST_S = 1.0e-3  # Serve replica handler + OpenAI server: parse, chat template
TOKENIZE_S = 2.5e-6  # per prompt token
DETOKENIZE_S = 35e-6  # per output token: incremental detokenization and the SSE chunk
HOP_S = 0.45e-3  # pod to pod through the mesh (ztunnel + waypoint)
LOCAL_HOP_S = 0.08e-3  # the head's proxy to its own replica, inside the pod
NGINX_READ_TIMEOUT_S = 60.0  # proxy_read_timeout: nginx gives up on an upstream that sends nothing
# A killed replica: Ray sees its actor die at once, the Serve proxy's router learns it from the controller's next
# long-poll update (our estimate); until then requests routed to it fail fast with 502.
SERVE_DEATH_NOTICE_S = 2.0
KUBELET_SYNC_S = 1.0  # a container's death -> the kubelet's pod sync that reports its back-off (PLEG relist: 1 s)

# Streams of randomness, each from (seed, stream): adding a use never shifts another's numbers.
_S_WORKLOAD, _S_VAR, _S_ROUTE, _S_NET, _S_ENV, _S_NOISE, _S_IDS, _S_FAULT, _S_STATS = range(1, 10)
_S_SURGE, _S_SKEW, _S_CLIENT = 10, 11, 12  # the traffic faults' draws and the workload node's telemetry


def stream(seed: int, which: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFF, which]))


def derive_seed(*parts: Any) -> int:
    """A stable 32-bit seed from any parts (sha256 of their text; never Python's salted hash)."""
    h = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:4], "little")


@dataclass
class Variation:
    """What differs from one repetition to the next, drawn from the seed."""

    rate_factor: float = 1.0
    bw_speed: dict[str, float] = field(default_factory=dict)
    flops_speed: dict[str, float] = field(default_factory=dict)
    cpu_speed: dict[str, float] = field(default_factory=dict)
    ambient_c: dict[str, float] = field(default_factory=dict)
    temp_offset_c: dict[str, float] = field(default_factory=dict)
    base_memory: dict[str, float] = field(default_factory=dict)
    background_cpu: dict[str, float] = field(default_factory=dict)
    hop_factor: float = 1.0
    start: float = BASE_START


def draw_variation(config: SimConfig, dep: Deployment, rng: np.random.Generator) -> Variation:
    v = config.variability
    z = (lambda s: float(rng.normal(0.0, s))) if v else (lambda s: 0.0)
    out = Variation(rate_factor=1.0 + z(0.03), hop_factor=math.exp(z(0.15)))
    out.start = config.start if config.start is not None else BASE_START + float(rng.integers(0, 300 * 86400))
    for p in dep.pods:
        out.base_memory[p] = envmod.default_base_memory(p, dep.gateway, dep.proxy) + z(0.15) * GIB * (p != dep.gateway)
        base_bg = 0.004 if p == dep.gateway else (0.38 if p == dep.proxy else 0.12)
        out.background_cpu[p] = base_bg * (1.0 + z(0.2))
    for r in dep.replicas:
        out.bw_speed[r] = 1.0 + z(0.015)
        out.flops_speed[r] = 1.0 + z(0.02)
        out.cpu_speed[r] = 1.0 + z(0.03)
    for node in dep.nodes:
        out.ambient_c[node] = 27.0 + z(1.5)
    for r in dep.replicas:
        out.temp_offset_c[r] = z(2.0)
    return out


@dataclass
class SimRun:
    """Everything one run produced; ``metrics`` is the wide table of the case."""

    config: SimConfig
    deployment: Deployment
    record: SimRecord
    metrics: pd.DataFrame
    truth: GroundTruth
    inject_time: float
    engines: dict[str, Any]
    env: envmod.Environment


def _resolve_injection(config: SimConfig, dep: Deployment, injection: Injection | None,
                       rng: np.random.Generator, seed: int) -> tuple[list[Perturbation], dict[str, Any] | None, dict]:
    if injection is None:
        return [], None, {}
    spec = fault_registry.get(injection.fault)
    spec.check_target(injection.target, dep.topology())
    start = config.inject_at if injection.start is None else float(injection.start)
    duration = config.fault_duration if injection.duration is None else float(injection.duration)
    gpu = config.gpu_kind
    if not gpu.is_gpu and "power_limit" in spec.causes:
        raise fault_registry.FaultParamError(
            f"fault {spec.id!r} acts on a GPU power limit; deployment.gpu = {gpu.name!r} is not a GPU")
    if not gpu.is_gpu and "device_slowdown" in spec.causes:  # a slow GPU, not a slow host CPU (that is the cpu fault)
        raise fault_registry.FaultParamError(
            f"fault {spec.id!r} slows a GPU's kernels; deployment.gpu = {gpu.name!r} is not a GPU")
    if not gpu.is_gpu and set(spec.causes) & set(envmod.GPU_CAUSES):
        raise fault_registry.FaultParamError(
            f"fault {spec.id!r} is a GPU hardware fault; deployment.gpu = {gpu.name!r} is not a GPU")

    def draw() -> float:  # the target GPU's draw before the fault, from the fault-free twin (same seed)
        from llmrca.sim import twin

        return twin.power_draw(config, seed, injection.target, start)

    facts = fault_registry.TargetFacts(gpu.name, gpu.min_power_w, gpu.tdp_w, draw)
    params = spec.applied(injection.params, facts)
    on = start + float(rng.uniform(*spec.onset_lag_s))
    off = start + duration + float(rng.uniform(*spec.end_lag_s))
    perts = spec.effect(params, injection.target, on, off)
    applied = fault_registry.recorded(perts, params)
    info = {"spec": spec, "params": params, "start": start, "duration": duration, "on": on, "off": off}
    return perts, info, applied


Faults = Injection | Sequence[Injection] | None


def _injections(fault: Faults) -> list[Injection]:
    """One injection, a list of them (a multi-fault run: each on its own target) or none, as a list."""
    if fault is None:
        return []
    items = [fault] if isinstance(fault, Injection) else list(fault)
    bad = [type(i).__name__ for i in items if not isinstance(i, Injection)]
    if bad:
        raise TypeError(f"fault: expected Injection(s), got {', '.join(bad)}")
    targets = [i.target for i in items]
    dup = sorted({t for t in targets if targets.count(t) > 1})
    if dup:
        raise fault_registry.FaultParamError(f"fault: two faults target {', '.join(dup)}; a multi-fault run puts "
                                             "each fault on a different target")
    return items


@contextmanager
def paused_gc() -> Iterator[None]:
    """The cyclic garbage collector off for a run: a case makes some 10^5 small lists and tuples that live until
    its end, and the collector's passes over them (about 12 per 360 s case, ~2 ms of its CPU, measured with
    ``gc.callbacks``) find next to no garbage; reference counting frees what it would, and the few cycles left
    wait for the collector's next pass after the run. The previous state is restored."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def run(config: SimConfig | None = None, fault: Faults = None, seed: int = 0) -> SimRun:
    """Simulate one run and build its metrics; traces and logs come from the record (see ``simulate``).

    ``fault``: one ``Injection``, or a list of them on different targets (a multi-fault run: the perturbations of
    all go into the one environment; the first is the truth's first root). A list of one is the single run.
    """
    with paused_gc():
        return _run(config, fault, seed)


def _run(config: SimConfig | None, fault: Faults, seed: int) -> SimRun:
    cfg = config or SimConfig()
    dep = deployment(cfg)
    gpu = cfg.gpu_kind
    model = cfg.model_spec
    var = draw_variation(cfg, dep, stream(seed, _S_VAR))
    injections = _injections(fault)
    fault = injections[0] if injections else None
    frng = stream(seed, _S_FAULT)
    perts, finfo, params = _resolve_injection(cfg, dep, fault, frng, seed)
    # Later faults draw their lags from the same stream after the first's, so the first fault (and a
    # single-fault run) is drawn exactly as before.
    more = [(inj, *_resolve_injection(cfg, dep, inj, frng, seed)) for inj in injections[1:]]
    for _, p2, _, _ in more:
        perts = perts + p2

    # The simulated span: the load starts `warmup` before t=0; engines run from a rate window earlier still.
    t_sim0 = -max(cfg.warmup, cfg.rate_window + cfg.step)
    load_t0 = -cfg.warmup
    wl = wlmod.generate(cfg, cfg.rate * var.rate_factor, load_t0, cfg.duration, stream(seed, _S_WORKLOAD))
    n = len(wl)
    # CPU the pods' own processes want (cores): nginx; per replica pod its background (Ray agents), plus on the
    # head the Serve proxy's work for the offered load. Engines add what their engine core and frontend want, tick
    # by tick; before the first tick the estimate assumes a busy engine and the offered load's frontend work.
    rate = cfg.rate * var.rate_factor
    proxy_cores = rate * (PROXY_REQUEST_S + PROXY_CHUNK_S * cfg.output_tokens)
    frontend = (REPLICA_REQUEST_S, TOKENIZE_S, DETOKENIZE_S)
    fe_cores = rate / cfg.replicas * (REPLICA_REQUEST_S + TOKENIZE_S * cfg.prompt_tokens
                                      + DETOKENIZE_S * cfg.output_tokens)
    base = {p: (0.35 if p == dep.gateway else var.background_cpu[p] + (proxy_cores if p == dep.proxy else 0.0))
            for p in dep.pods}
    own = {p: base[p] + (0.0 if p == dep.gateway else ENGINE_CORE_CORES + fe_cores) for p in dep.pods}
    env = envmod.build(
        t0=t_sim0, t1=cfg.duration + 900.0, tick=cfg.tick, pods=dep.pods, gpu_pods=dep.replicas, gpu=gpu,
        pod_cpu=cfg.pod_cpu, pod_memory=cfg.pod_memory_gib * GIB, base_memory=var.base_memory, own_demand=own,
        perturbations=perts, rng=stream(seed, _S_ENV), proxy=dep.proxy, client=dep.client,
    )
    for a, b, factor, share in env.surges:  # the workload's client sends longer prompts (prompt-surge)
        wl = wlmod.surge(wl, a, b, factor, share, model.context_tokens - cfg.output_tokens, stream(seed, _S_SURGE))

    events: list[tuple[float, str, str, dict]] = []
    table = RequestTable(wl.prompt_tokens, wl.output_tokens, np.full(n, math.inf))
    engines: dict[str, ReplicaEngine] = {}
    for r in dep.replicas:
        node = dep.hosts[r]
        amb = var.ambient_c[node]
        # GPUs come warm from earlier runs: start near the steady state of a light decode load.
        p0 = gpu.idle_w + 0.8 * busy_power(gpu, 1.0, 0.9, 0.08)
        t0c = amb + gpu.thermal_r * p0 + var.temp_offset_c[r]
        gs = GpuState(gpu, amb, t0c, t0c + 3.0)
        engines[r] = ReplicaEngine(
            r, gpu=gpu, model=model, env=env, requests=table, gpu_state=gs, t_start=t_sim0, tick=cfg.tick,
            max_num_seqs=cfg.max_num_seqs, max_num_batched_tokens=cfg.max_num_batched_tokens,
            block_size=cfg.block_size, gpu_memory_utilization=cfg.gpu_memory_utilization,
            shared_prefix_tokens=cfg.shared_prefix_tokens, bw_speed=var.bw_speed[r],
            flops_speed=var.flops_speed[r], cpu_speed=var.cpu_speed[r], events=events,
            background_cores=base[r], frontend_costs=frontend, kv_cache_tokens=cfg.kv_cache_tokens,
            read_timeout_s=NGINX_READ_TIMEOUT_S,
        )

    paths = _route_all(cfg, dep, env, engines, table, wl, var, seed)
    for e in engines.values():
        e.drain(cfg.duration + cfg.step)
    paths.collect_all()
    # The router's collect() closes over the paths, the engines and the request table: dropping it breaks that
    # reference cycle, so the run's state is freed by reference counting when the run is dropped, not by the cyclic
    # collector (whose next pass would otherwise walk every list and tuple of it: ~3 ms after each 360 s case).
    paths.collect_all = _nothing

    res = table.arrays()
    start = var.start
    inject_time = start + (finfo["start"] if finfo else cfg.inject_at)
    requests = _requests_frame(wl, res, paths, start, seed)
    for t, svc, kind, f in env.events:
        events.append((t, svc, kind, f))
    if finfo:
        spec = finfo["spec"]
        tgt = fault.target
        base = {"type": spec.id, "params": dict(params), "inject_time": inject_time, "injector": spec.kubernetes}
        events.append((finfo["on"], tgt, "fault_start", base))
        events.append((finfo["off"], tgt, "fault_end", {"type": spec.id, "params": dict(params)}))
        for inj, _, fi, pa in more:
            ev_base = {"type": fi["spec"].id, "params": dict(pa), "inject_time": start + fi["start"],
                       "injector": fi["spec"].kubernetes}
            events.append((fi["on"], inj.target, "fault_start", ev_base))
            events.append((fi["off"], inj.target, "fault_end", {"type": fi["spec"].id, "params": dict(pa)}))
    from llmrca.sim import metrics as metmod

    logs = {r: e.log.arrays() for r, e in engines.items()}
    events += metmod.engine_stats_events(dep, logs, stream(seed, _S_STATS).uniform(0, 10, len(dep.replicas)))
    ev = events_frame([(start + t, s, k, _jsonable(f)) for t, s, k, f in events
                      if 0.0 <= t <= cfg.duration + 120.0])

    if finfo:
        spec = finfo["spec"]
        records: tuple[FaultRecord, ...] = ()
        if more:
            records = (FaultRecord(spec.id, fault.target, inject_time, inject_time + finfo["duration"],
                                   dict(params), f"{fault.target}_{spec.indicator}"),)
            records += tuple(FaultRecord(fi["spec"].id, inj.target, start + fi["start"],
                                         start + fi["start"] + fi["duration"], dict(pa),
                                         f"{inj.target}_{fi['spec'].indicator}") for inj, _, fi, pa in more)
        truth = GroundTruth(
            service=fault.target, fault_type=spec.id, indicator=f"{fault.target}_{spec.indicator}",
            start=inject_time, end=inject_time + finfo["duration"], params=dict(params), faults=records,
        )
    else:
        truth = GroundTruth(service=None)
    topo = dep.topology()
    record = SimRecord(
        requests=requests, events=ev, topology=topo, start=start, duration=cfg.duration, seed=int(seed),
        config=cfg.to_dict(), gateway=dep.gateway, proxy=dep.proxy, model_name=model.name,
        fault=truth.to_dict() if finfo else None,
    )
    metrics = metmod.build_metrics(cfg, dep, engines, env, wl, res, paths, var, start, stream(seed, _S_NOISE))
    if dep.client:  # the workload node's own series, from their own stream (every other column unchanged)
        metrics = metmod.with_client_metrics(metrics, cfg, dep, engines, env, wl, res, paths, var,
                                             stream(seed, _S_CLIENT))
    return SimRun(cfg, dep, record, metrics, truth, inject_time, engines, env)


def _nothing() -> None:
    return None


class _Paths:
    """Per-request times outside the engine (gateway, proxy, wire), filled while routing and on completion."""

    def __init__(self, n: int):
        nan = np.full(n, np.nan)
        self.t_gateway_start = nan.copy()
        self.t_proxy_start = nan.copy()
        self.t_send = nan.copy()
        self.t_arrival = nan.copy()
        self.t_stream_end = nan.copy()
        self.t_proxy_end = nan.copy()
        self.t_proxy_server_end = nan.copy()
        self.t_gateway_end = nan.copy()
        self.replica = np.full(n, -1, dtype=np.int64)
        self.names: list[str] = []
        self.collect_all = _nothing


def _route_all(cfg: SimConfig, dep: Deployment, env: envmod.Environment, engines: dict[str, ReplicaEngine],
               table: RequestTable, wl: wlmod.Workload, var: Variation, seed: int) -> _Paths:
    n = len(wl)
    P = _Paths(n)
    names = list(dep.replicas)
    P.names = names
    eng = [engines[r] for r in names]
    proxy = dep.proxy
    gw = dep.gateway
    net = stream(seed, _S_NET)
    route = stream(seed, _S_ROUTE)
    hop = HOP_S * var.hop_factor
    # Latency noise of each wire hop and CPU stage (lognormal: rare slow ones).
    jit = np.exp(0.25 * net.standard_normal((n, 9)))

    tg = wl.arrivals.copy()
    P.t_gateway_start = tg
    tp = tg + NGINX_REQUEST_S * jit[:, 0] * env.slowdowns(gw, tg) + hop * jit[:, 1]
    if env.delays.get(proxy):  # a delay towards the proxy's pod holds the request on its way in
        for i in range(n):
            tp[i] += env.delay_towards(proxy, tp[i])
    if env.losses.get(proxy):  # loss towards the proxy's pod: the request waits for its retransmissions
        for i in range(n):
            tp[i] += env.loss_towards(proxy, tp[i], request_segments(wl.prompt_tokens[i]))
    P.t_proxy_start = tp
    ts = tp + PROXY_REQUEST_S * jit[:, 2] * env.slowdowns(proxy, tp)
    if env.proxy_caps:  # a saturated proxy: requests wait in its queue before it dispatches them
        # nginx gives up (proxy_read_timeout) on a request still waiting there: the proxy sees its client go one
        # hop later and drops it undispatched (NaN: no replica ever sees it)
        ts = proxy_queue(tp, ts, env.proxy_caps, tg + NGINX_READ_TIMEOUT_S + hop)
    dropped = np.isnan(ts)
    deadline = tg + NGINX_READ_TIMEOUT_S + 2 * hop
    P.t_send = ts
    table.deadline = deadline.tolist()

    R = len(names)
    # Python floats and lists for the per-request loop (the same values as the arrays; scalar access is faster).
    jl = jit.tolist()
    tgl = tg.tolist()
    sdl = env._slowdown
    e_t0, e_tick, e_last = env.t0, env.tick, env.n_ticks - 1
    sd_proxy = sdl[proxy]

    # (min(e_last, k) written as a compare in the per-request code, as in ``engine.ReplicaEngine._ticks``)
    def sd_at(row: list[float], t: float) -> float:  # env.slowdown(pod, t) with the pod's row given
        k = int((t - e_t0) / e_tick)
        return row[0 if k < 0 else (k if k < e_last else e_last)]  # noqa: FURB136

    inflight = [0] * R
    ends: list[list[float]] = [[] for _ in range(R)]
    head_idx = names.index(proxy) if proxy in names else -1
    prompt = wl.prompt_tokens.tolist()
    policy = cfg.routing
    rr = [0]

    def finish(r: int, rid: int) -> None:
        name = names[r]
        te = table.t_end[rid]
        j = jl[rid]
        if table.failed[rid] == 502:  # the replica's process is gone: the proxy answers at once
            back = hop * j[4]
            P.t_stream_end[rid] = te
            P.t_proxy_end[rid] = te + back
            pse = te + back + PROXY_CHUNK_S * sd_at(sd_proxy, te)
            P.t_proxy_server_end[rid] = pse
            P.t_gateway_end[rid] = pse + hop * j[6] + NGINX_CHUNK_S
            heappush(ends[r], te + back)
            return
        if table.failed[rid]:
            # nginx gave up (or the engine refused): the proxy sees the client go at nginx's timeout, counted
            # from the request or, for a stream stalled mid-way (a stopped engine), from its last token.
            g_end = tgl[rid] + NGINX_READ_TIMEOUT_S
            if te > g_end + 2 * hop + 1e-9:
                g_end = te
            P.t_gateway_end[rid] = g_end
            P.t_proxy_end[rid] = g_end + hop
            P.t_proxy_server_end[rid] = g_end + hop
            P.t_stream_end[rid] = te
            heappush(ends[r], g_end + hop)
            return
        k = int((te - e_t0) / e_tick)  # sd_at, inline
        s_end = te + DETOKENIZE_S * sdl[name][0 if k < 0 else (k if k < e_last else e_last)] * j[8]  # noqa: FURB136
        back = (LOCAL_HOP_S if r == head_idx else hop * j[4])
        pe = s_end + back
        if r != head_idx and proxy in env.delays:
            pe += env.delay_towards(proxy, s_end)
        if r != head_idx and proxy in env.losses:
            pe += _stream_loss(env, proxy, table.t_first[rid], s_end, table.gen[rid])
        k = int((pe - e_t0) / e_tick)
        pse = pe + PROXY_CHUNK_S * sd_proxy[0 if k < 0 else (k if k < e_last else e_last)] * j[5]  # noqa: FURB136
        P.t_stream_end[rid] = s_end
        P.t_proxy_end[rid] = pe
        P.t_proxy_server_end[rid] = pse
        P.t_gateway_end[rid] = pse + hop * j[6] + NGINX_CHUNK_S
        heappush(ends[r], pe)

    def collect() -> None:
        for r, e in enumerate(eng):
            if e.done:
                for rid in e.done:
                    finish(r, rid)
                e.done.clear()

    # Kills, and restarts with a new KV cache (a config rollout): (dies at, serves again, replica, new cache or None)
    kills = sorted([(t_die, back, names.index(pod), None) for pod, ks in env.kills.items() for t_die, back in ks]
                   + [(t_die, back, names.index(pod), (tok, frac))
                      for pod, rs in env.restarts.items() for t_die, back, tok, frac in rs])
    out_of_routing: dict[int, tuple[float, float]] = {}  # replica -> (noticed dead, serves again)

    def kill_due(t: float) -> None:
        while kills and kills[0][0] <= t:
            t_die, back, k, cache = kills.pop(0)
            eng[k].advance(t_die)
            eng[k].kill(t_die, back)
            out_of_routing[k] = (t_die + SERVE_DEATH_NOTICE_S, back)
            wait = env.kill_backoff.get((names[k], t_die), 0.0)  # a crash loop's back-off before the restart
            ok: dict[str, Any] = {"ok": True, "load_s": back - t_die - wait}
            if wait:
                ok["backoff_s"] = wait
                # the kubelet finds the container dead and holds its restart back (its CrashLoopBackOff sync error)
                env.events.append((t_die + KUBELET_SYNC_S, names[k], "restart_backoff", {"backoff_s": wait}))
            if cache is not None:
                eng[k].set_kv_capacity(*cache)
                ok["num_gpu_blocks"] = eng[k].blocks_total  # vLLM prints its cache size when it starts
            env.events.append((t_die + SERVE_DEATH_NOTICE_S, names[k], "replica_health", {"ok": False}))
            env.events.append((back, names[k], "replica_health", ok))

    for i in np.flatnonzero(dropped).tolist():
        g_end = tg[i] + NGINX_READ_TIMEOUT_S
        table.failed[i] = 504
        P.t_gateway_end[i] = g_end
        P.t_proxy_end[i] = P.t_proxy_server_end[i] = g_end + hop
    skew = stream(seed, _S_SKEW)
    for _, _, hot, _ in env.skews:
        if not 0 <= hot < R:
            raise fault_registry.FaultParamError(
                f"fault 'routing-skew' parameter 'hot_replica': {hot} is not a replica index of this deployment "
                f"(0..{R - 1}: {', '.join(names)})")

    order = np.argsort(ts, kind="stable")[: n - int(dropped.sum())]  # NaN (dropped) sorts last
    tsl = ts.tolist()
    skews = env.skews
    for i in order.tolist():
        t = tsl[i]
        if kills and kills[0][0] <= t:
            kill_due(t)
        for e in eng:
            p = e.plan
            if p is None or p[1] <= t:  # else advance() has nothing to do before t
                e.advance(t)
        for r, e in enumerate(eng):  # collect()
            if e.done:
                for rid in e.done:
                    finish(r, rid)
                e.done.clear()
        for r in range(R):
            h = ends[r]
            while h and h[0] <= t:
                heappop(h)
                inflight[r] -= 1
        out = [k for k, (a, b) in out_of_routing.items() if a <= t < b] if out_of_routing else []
        pinned = next((hot for a, b, hot, share in skews if a <= t < b and hot not in out
                       and skew.random() < share), None) if skews else None
        if pinned is not None:  # a misconfigured router pins this request to the hot replica (routing-skew)
            r = pinned
        elif out and len(out) < R:
            r = _route_around(policy, [k for k in range(R) if k not in out], inflight, rr, route)
        elif policy == "round-robin":
            r = rr[0] % R
            rr[0] += 1
        elif policy == "power-of-two" and R > 1:
            a, b = route.choice(R, 2, replace=False).tolist()
            r = a if inflight[a] < inflight[b] or (inflight[a] == inflight[b] and route.random() < 0.5) else b
        else:
            lo = min(inflight)
            if inflight.count(lo) == 1:  # the one least-loaded replica (no list of the tied ones to make)
                r = inflight.index(lo)
            else:
                best = [k for k in range(R) if inflight[k] == lo]
                r = best[int(route.integers(len(best)))]
        inflight[r] += 1
        P.replica[i] = r
        name = names[r]
        j = jl[i]
        if r == head_idx:
            ta = t + LOCAL_HOP_S
        else:
            ta = t + hop * j[7]
            if name in env.delays:
                ta += env.delay_towards(name, t)
            if name in env.losses:
                ta += env.loss_towards(name, t, request_segments(prompt[i]))
        P.t_arrival[i] = ta
        k = int((ta - e_t0) / e_tick)  # sd_at, inline
        t_ready = ta + (REPLICA_REQUEST_S + TOKENIZE_S * prompt[i]) \
            * sdl[name][0 if k < 0 else (k if k < e_last else e_last)] * j[3]  # noqa: FURB136
        if t_ready < eng[r].down_until:  # routed to a killed replica before the router knew
            eng[r].refuse(i, t_ready)
        else:
            eng[r].enqueue(i, t_ready)

    kill_due(math.inf)
    P.collect_all = collect
    return P


def proxy_queue(tp: np.ndarray, ts: np.ndarray, caps: list[tuple[float, float, float]],
                cancel: np.ndarray) -> np.ndarray:
    """Dispatch times behind a saturated proxy (``proxy_capacity``): while a cap acts, the proxy dispatches one
    request at a time, each taking ``dispatch_s`` of its event loop on top of its normal handling, in arrival order
    (FIFO); a request that arrives to a backlog waits for it, also after the cap has lifted, when the backlog drains
    at the normal handling time. ``tp``: arrivals at the proxy, ``ts``: dispatch times of a free proxy, ``cancel``:
    when each request's client goes away: one not dispatched by then is dropped (NaN) and frees the proxy then (a
    cancelled wait takes no more of its time)."""
    out = ts.copy()
    free = -math.inf
    for i in np.argsort(tp, kind="stable").tolist():
        a = float(tp[i])
        extra = next((d for s, e, d in caps if s <= max(a, free) < e), 0.0)
        if extra == 0.0 and free <= a:
            continue  # no cap and no backlog: the proxy handles it at once, as always
        begin = max(a, free)
        end = begin + (float(ts[i]) - a) + extra
        if end <= cancel[i]:
            out[i] = free = end
        else:
            out[i] = np.nan
            free = max(begin, min(end, float(cancel[i])))
    return out
def _stream_loss(env: envmod.Environment, pod: str, t_first: float, t_end: float, chunks: int) -> float:
    """How much later a streamed response's end reaches ``pod`` through loss towards it: each token's SSE chunk is
    a one-segment write, sent as the engine makes it (``llmrca.sim.tcploss``, ``Loss.stream_delay``)."""
    n = max(1, int(chunks))
    gap = (t_end - t_first) / (n - 1) if n > 1 and t_end > t_first else 0.0
    return env.stream_loss_towards(pod, t_end, n, gap)


def _route_around(policy: str, cand: list[int], inflight: list[int], rr: list[int],
                  route: np.random.Generator) -> int:
    """The routing choice while some replicas are out of the controller's list (a killed one, restarting)."""
    if policy == "round-robin":
        while rr[0] % len(inflight) not in cand:
            rr[0] += 1
        r = rr[0] % len(inflight)
        rr[0] += 1
        return r
    if policy == "power-of-two" and len(cand) > 1:
        a, b = (cand[j] for j in route.choice(len(cand), 2, replace=False).tolist())
        return a if inflight[a] < inflight[b] or (inflight[a] == inflight[b] and route.random() < 0.5) else b
    lo = min(inflight[k] for k in cand)
    best = [k for k in cand if inflight[k] == lo]
    return best[0] if len(best) == 1 else best[int(route.integers(len(best)))]


def header_sent(res: dict[str, np.ndarray], P: _Paths) -> np.ndarray:
    """Per request: nginx had the response's header before it gave up (its ``t_gateway_end``).

    A streamed chat completion's 200 header goes out once the replica has tokenized the request, before its first
    token: vLLM returns Starlette's StreamingResponse, whose ``http.response.start`` uvicorn writes at once (the
    emulated engine calls aiohttp's ``StreamResponse.prepare``, which sends it too), and the Serve proxy prepares its
    own response as soon as its call has the replica's header. So nginx lacks the header only when it gives up
    before the replica had the request ready; the header's way back takes about what the request's way in took.
    """
    back = P.t_arrival - P.t_gateway_start
    with np.errstate(invalid="ignore"):
        return np.isfinite(res["t_ready"]) & (res["t_ready"] + back < P.t_gateway_end)


def _requests_frame(wl: wlmod.Workload, res: dict[str, np.ndarray], P: _Paths, start: float,
                    seed: int) -> pd.DataFrame:
    n = len(wl)
    failed = res["failed"]
    ok = failed == 0
    names = np.array([*P.names, ""], dtype=object)  # index -1: never dispatched (proxy-overload)
    t_first = res["t_first_token"]
    t_end = res["t_engine_end"]
    out_tok = np.where(ok, res["generated"], 0).astype(np.int64)
    cut = (failed == 504) & header_sent(res, P)
    streamed = np.where(ok | cut, res["generated"], 0).astype(np.int64)
    # The text columns as codes into their few texts (the trace ids: 32 hex digits each of one hex text), made
    # by ``inferred_take`` for the rows kept below.
    reason = np.where(~ok, 0, np.where(wl.output_tokens >= wl.max_tokens, 1, 2))
    error = np.where(failed == 504, 0, np.where(failed == 0, 1, np.where(failed == 502, 2, 3)))
    texts = {
        "trace_id": Pieces(stream(seed, _S_IDS).bytes(16 * n).hex(), 32),  # 16 bytes per request
        "replica": names.tolist(), "status": ["ERROR", "OK"],
        "error": [UPSTREAM_TIMEOUT, "", "EngineDeadError", "EngineCoreError"],
        "finished_reason": ["", "length", "stop"],
    }
    cols: dict[str, Any] = {
        "request_id": np.arange(n, dtype=np.int64),
        "trace_id": np.arange(n, dtype=np.int64),
        "replica": np.where(P.replica < 0, P.replica + len(names), P.replica),  # -1: the last, ""
        "prompt_tokens": wl.prompt_tokens.astype(np.int64),
        "output_tokens": out_tok,
        "max_tokens": wl.max_tokens.astype(np.int64),
        "t_gateway_start": P.t_gateway_start + start,
        "t_proxy_start": P.t_proxy_start + start,
        "t_send": P.t_send + start,
        "t_engine_arrival": P.t_arrival + start,
        "t_scheduled": res["t_scheduled"] + start,
        "t_first_token": t_first + start,
        "t_engine_end": t_end + start,
        "t_proxy_end": P.t_proxy_end + start,
        "t_gateway_end": P.t_gateway_end + start,
        "prefill_s": np.where(np.isfinite(t_first), res["prefill_s"], np.nan),
        "decode_s": np.where(ok, t_end - t_first, np.nan),
        "queue_s": res["t_scheduled"] - P.t_arrival,
        "num_preemptions": res["num_preemptions"],
        "status": ok.astype(np.int64),
        "http_status": np.where(ok | cut, 200, failed).astype(np.int64),
        "error": error,
        "t_ready": res["t_ready"] + start,
        "t_proxy_server_end": P.t_proxy_server_end + start,
        "finished_reason": reason,
        "streamed_tokens": streamed,
    }
    keep = cols["t_gateway_start"] >= start  # the rows of requests sent from the window's start on
    frame = pd.DataFrame({c: inferred_take(texts[c], cols[c][keep]) if c in texts else cols[c][keep]
                          for c in REQUEST_COLUMNS})
    frame["request_id"] = np.arange(len(frame), dtype=np.int64)
    return frame


def _jsonable(f: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in f.items():
        if isinstance(v, dict):
            out[k] = _jsonable(v)
        elif isinstance(v, (np.floating, float)):
            out[k] = float(v)
        elif isinstance(v, (np.integer, int)) and not isinstance(v, bool):
            out[k] = int(v)
        else:
            out[k] = v
    return out


def simulate(config: SimConfig | None = None, fault: Faults = None, seed: int = 0, *,
             traces: bool = True, logs: bool = True, case_id: str | None = None,
             provenance: dict[str, Any] | None = None) -> Case:
    """One run as a native ``Case``: metrics (study and full view), traces and logs, ground truth, topology.

    ``traces``/``logs`` False leave those frames empty (a metrics-only case is faster to make).
    """
    with paused_gc():
        return _simulate(config, fault, seed, traces, logs, case_id, provenance)


def _simulate(config: SimConfig | None, fault: Faults, seed: int, traces: bool, logs: bool, case_id: str | None,
              provenance: dict[str, Any] | None) -> Case:
    injections = _injections(fault)
    sim = run(config, injections, seed)
    fault = injections[0] if injections else None
    cfg = sim.config
    rec = sim.record
    obs_traces = obs_logs = None
    shared = None
    if traces and logs and len(rec.requests):  # what both derive from the record, made once
        from llmrca.sim.traces import view

        shared = view(rec)
    if traces:
        from llmrca.sim.traces import spans_from_record

        obs_traces = spans_from_record(rec, shared)
    if logs:
        from llmrca.sim.logs import logs_from_record

        obs_logs = logs_from_record(rec, shared)
    obs = Observation(
        metrics=sim.metrics, traces=obs_traces, logs=obs_logs, inject_time=sim.inject_time,
        topology=rec.topology, interval=cfg.step,
    )
    if case_id is None:
        case_id = f"{fault.fault}/{fault.target}/seed-{seed}" if fault else f"normal/seed-{seed}"
    prov = {"generator": "llmrca.sim", "version": __version__, "seed": int(seed), "config": cfg.to_dict()}
    if fault is not None:
        prov["fault"] = {"fault": fault.fault, "target": fault.target, "params": dict(sim.truth.params)}
    if len(injections) > 1:
        prov["faults"] = [{"fault": i.fault, "target": i.target, "params": dict(f.params)}
                          for i, f in zip(injections, sim.truth.faults, strict=True)]
    prov.update(provenance or {})
    return Case(id=case_id, observation=obs, truth=sim.truth, system="llmrca-sim", provenance=prov)
