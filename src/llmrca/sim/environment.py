"""The causes the faults act on, over the run's tick grid: CPU stress and memory hogs per container, delays on the
wire towards a pod, GPU power limits. Faults change only these; every symptom follows from the model."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from llmrca.faults import CAUSES, FaultParamError, Perturbation
from llmrca.sim.hardware import GIB, GpuKind
from llmrca.sim.tcploss import Loss

HOG_FILL_RATE = 2.5e9  # bytes/s one hog worker touches while allocating (page faults bound it)
RECLAIM_START = 0.92  # working set / limit above which reclaim stalls CPU-side work
# CPU-side work slows by this factor times (busy stress cores / pod CPUs) even while the quota is not exhausted:
# the workers share the node's caches, memory bandwidth and the socket's turbo budget (our estimate).
CPU_INTERFERENCE = 0.25


@dataclass
class _Delay:
    start: float
    end: float
    latency: float
    jitter: float
    correlation: float
    last: float = 0.5


@dataclass
class _LossWindow:
    start: float
    end: float
    loss: Loss


@dataclass
class Environment:
    t0: float  # first tick's start (run clock)
    tick: float
    n_ticks: int
    pods: tuple[str, ...]
    pod_cpu: float
    pod_memory: float  # bytes
    base_memory: dict[str, float]  # working set of each pod without faults (bytes)
    own_demand: dict[str, float]  # cores the pod's own processes want while serving (first estimate; engines
    # replace it tick by tick with what they actually wanted, see ``set_own_demand``)
    stress_cores: dict[str, np.ndarray] = field(default_factory=dict)
    hog_bytes: dict[str, np.ndarray] = field(default_factory=dict)
    hog_cores: dict[str, np.ndarray] = field(default_factory=dict)
    power_limit: dict[str, np.ndarray] = field(default_factory=dict)
    delays: dict[str, list[_Delay]] = field(default_factory=dict)
    kills: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # pod -> [(dies at, serves again at)]
    stalls: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # pod -> [(stops at, resumes at)]
    # pod -> [(restarts at, serves again at, KV tokens or None, fraction of the normal cache or None)]; (None, None)
    # is the normal cache
    restarts: dict[str, list[tuple[float, float, int | None, float | None]]] = field(default_factory=dict)
    events: list[tuple[float, str, str, dict]] = field(default_factory=list)
    rng: np.random.Generator | None = None
    # traffic faults (faults/traffic_faults.py): the workload's prompt surges [(start, end, factor, share)], the
    # proxy's dispatch capacity [(start, end, seconds per dispatch)], its routing [(start, end, replica, share)]
    surges: list[tuple[float, float, float, float]] = field(default_factory=list)
    proxy_caps: list[tuple[float, float, float]] = field(default_factory=list)
    skews: list[tuple[float, float, int, float]] = field(default_factory=list)
    # -- replica faults --
    device_slow: dict[str, np.ndarray] = field(default_factory=dict)  # pod -> kernel-time factor per tick (a slow GPU)
    losses: dict[str, list[_LossWindow]] = field(default_factory=dict)  # pod -> netem loss towards it
    kill_backoff: dict[tuple[str, float], float] = field(default_factory=dict)  # (pod, dies at) -> back-off, s
    # GPU hardware faults (gpu_lost, gpu_ecc, gpu_cooling)
    gpu_off: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # pod -> [(off the bus, back)]
    # pod -> [(time, what, value)]: ("xid", Xid), ("dbe", errors), ("reset", 0): what DCGM's RAS fields follow
    gpu_ras: dict[str, list[tuple[float, str, int]]] = field(default_factory=dict)
    thermal_r: dict[str, np.ndarray] = field(default_factory=dict)  # pod -> thermal resistance factor per tick

    # Derived per-tick factors
    cpu_share: dict[str, np.ndarray] = field(default_factory=dict)  # share of a core each busy thread gets
    slow: dict[str, np.ndarray] = field(default_factory=dict)  # CPU-side slow-down from memory reclaim
    _slowdown: dict[str, list[float]] = field(default_factory=dict)
    _own_parts: dict[str, tuple[list[float], list[float], list[float]]] = field(default_factory=dict)

    def set_own_demand(self, pod: str, i: int, cores: float) -> float:
        """The pod's own processes want ``cores`` in tick ``i``: the CFS quota is shared by them and any stress or
        hog workers; returns the share of its want each runnable thread gets."""
        parts = self._own_parts.get(pod)
        if parts is None:  # the pod's stress, hog and slow-down series as Python floats (the same values)
            parts = self._own_parts[pod] = (self.stress_cores[pod].tolist(), self.hog_cores[pod].tolist(),
                                            self.slow[pod].tolist())
        demand = cores + parts[0][i] + parts[1][i]
        # min(1.0, pod_cpu / max(demand, 1e-9)) as compares: it runs once a tick per replica
        share = self.pod_cpu / (1e-9 if 1e-9 > demand else demand)  # noqa: FURB136
        share = share if share < 1.0 else 1.0  # noqa: FURB136
        self.cpu_share[pod][i] = share
        self._slowdown[pod][i] = parts[2][i] / share
        return share

    def index(self, t: float) -> int:
        i = int((t - self.t0) / self.tick)
        return 0 if i < 0 else (self.n_ticks - 1 if i >= self.n_ticks else i)

    def share(self, pod: str, t: float) -> float:
        return float(self.cpu_share[pod][self.index(t)])

    def slowdown(self, pod: str, t: float) -> float:
        """How much longer a piece of CPU-side work takes in ``pod`` at ``t`` (1 = a free CPU)."""
        return self._slowdown[pod][self.index(t)]

    def slowdowns(self, pod: str, t: np.ndarray) -> np.ndarray:
        i = np.clip(((np.asarray(t) - self.t0) / self.tick).astype(np.int64), 0, self.n_ticks - 1)
        return (self.slow[pod] / self.cpu_share[pod])[i]

    def delay_towards(self, pod: str, t: float) -> float:
        """netem-like delay of a packet sent towards ``pod`` at ``t`` (0 outside any delay fault)."""
        for d in self.delays.get(pod, ()):
            if d.start <= t < d.end:
                # netem's correlated jitter: each draw mixes a fresh uniform with the previous one.
                u = (1.0 - d.correlation) * float(self.rng.random()) + d.correlation * d.last
                d.last = u
                return max(0.0, d.latency + d.jitter * (2.0 * u - 1.0))
        return 0.0

    def loss_towards(self, pod: str, t: float, n_segments: int) -> float:
        """Extra time a write of ``n_segments`` sent towards ``pod`` at ``t`` takes to get through its loss (TCP's
        retransmissions, ``llmrca.sim.tcploss``); 0 outside any loss fault."""
        for w in self.losses.get(pod, ()):
            if w.start <= t < w.end:
                return w.loss.write_delay(n_segments)
        return 0.0

    def stream_loss_towards(self, pod: str, t: float, n_chunks: int, gap_s: float) -> float:
        """How much later a stream of ``n_chunks`` one-segment chunks ``gap_s`` apart, ending at ``t``, is all
        delivered to ``pod`` through its loss (0 outside any loss fault)."""
        for w in self.losses.get(pod, ()):
            if w.start <= t < w.end:
                return w.loss.stream_delay(n_chunks, gap_s)
        return 0.0

    def delay_active(self, pod: str) -> np.ndarray:
        out = np.zeros(self.n_ticks)
        t = self.t0 + self.tick * np.arange(self.n_ticks)
        for d in self.delays.get(pod, ()):
            out = np.where((t >= d.start) & (t < d.end), d.latency, out)
        return out


def build(
    *,
    t0: float,
    t1: float,
    tick: float,
    pods: tuple[str, ...],
    gpu_pods: tuple[str, ...],
    gpu: GpuKind,
    pod_cpu: float,
    pod_memory: float,
    base_memory: dict[str, float],
    own_demand: dict[str, float],
    perturbations: list[Perturbation],
    rng: np.random.Generator,
    proxy: str | None = None,
    client: str | None = None,
) -> Environment:
    n = math.ceil((t1 - t0) / tick)
    env = Environment(t0, tick, n, pods, pod_cpu, pod_memory, dict(base_memory), dict(own_demand), rng=rng)
    grid = t0 + tick * np.arange(n)
    for p in pods:
        env.stress_cores[p] = np.zeros(n)
        env.hog_bytes[p] = np.zeros(n)
        env.hog_cores[p] = np.zeros(n)
    for p in gpu_pods:
        env.power_limit[p] = np.full(n, gpu.tdp_w)
    for pt in perturbations:
        if pt.cause not in CAUSES:
            raise FaultParamError(f"perturbation of unknown cause {pt.cause!r} (known: {', '.join(CAUSES)})")
        if pt.cause == "prompt_surge":  # acts on the workload's client, not on a pod
            if client is None or pt.service != client:
                raise FaultParamError(f"prompt surge on {pt.service!r}: the deployment's workload node is "
                                      f"{client!r} (workload.workload_node)")
            env.surges.append((pt.start, pt.end, float(pt.values["factor"]), float(pt.values["share"])))
            continue
        if pt.service not in pods:
            raise FaultParamError(f"perturbation {pt.cause!r} names {pt.service!r}, not a pod of this deployment")
        on = (grid >= pt.start) & (grid < pt.end)
        v = pt.values
        if pt.cause == "cpu_stress":
            env.stress_cores[pt.service] += on * v["workers"] * v["load"] / 100.0
        elif pt.cause == "memory_hog":
            ramp = np.clip((grid - pt.start) * HOG_FILL_RATE * v["workers"], 0.0, v["bytes"])
            env.hog_bytes[pt.service] += np.where(on, ramp, 0.0)
            env.hog_cores[pt.service] += np.where(on & (ramp < v["bytes"]), float(v["workers"]), 0.0)
        elif pt.cause == "ingress_delay":
            env.delays.setdefault(pt.service, []).append(
                _Delay(pt.start, pt.end, v["latency_s"], v["jitter_s"], min(max(v["correlation"], 0.0), 1.0)))
        elif pt.cause == "power_limit":
            if pt.service not in env.power_limit:
                raise FaultParamError(f"power limit on {pt.service!r}, which holds no GPU")
            watts = v["watts"]
            if not (gpu.min_power_w <= watts <= gpu.tdp_w):
                raise FaultParamError(
                    f"power limit {watts:g} W is outside what a {gpu.name} accepts "
                    f"({gpu.min_power_w:g}-{gpu.tdp_w:g} W): nvidia-smi -pl would refuse it")
            env.power_limit[pt.service] = np.where(on, np.minimum(env.power_limit[pt.service], watts),
                                                   env.power_limit[pt.service])
        elif pt.cause == "process_kill":
            if pt.service not in env.power_limit:
                raise FaultParamError(f"process kill on {pt.service!r}, which runs no engine")
            back = pt.start + v.get("backoff_s", 0.0) + v["load_s"]  # after the kubelet's back-off, if any
            env.kills.setdefault(pt.service, []).append((pt.start, back))
            if v.get("backoff_s"):
                env.kill_backoff[(pt.service, pt.start)] = float(v["backoff_s"])
        elif pt.cause == "engine_stall":
            if pt.service not in env.power_limit:
                raise FaultParamError(f"engine stall on {pt.service!r}, which runs no engine")
            env.stalls.setdefault(pt.service, []).append((pt.start, pt.end))
        elif pt.cause == "kv_cache_limit":
            if pt.service not in env.power_limit:
                raise FaultParamError(f"KV-cache limit on {pt.service!r}, which runs no engine")
            load = float(v["load_s"])
            tokens = None if v.get("tokens") is None else int(v["tokens"])
            frac = None if v.get("fraction") is None else float(v["fraction"])
            env.restarts.setdefault(pt.service, []).extend([(pt.start, pt.start + load, tokens, frac),
                                                            (pt.end, pt.end + load, None, None)])
        elif pt.cause in ("proxy_capacity", "routing_weights"):
            if pt.service != proxy:
                raise FaultParamError(f"{pt.cause} on {pt.service!r}, which runs no Serve proxy (it runs on "
                                      f"{proxy!r})")
            if pt.cause == "proxy_capacity":
                env.proxy_caps.append((pt.start, pt.end, float(v["dispatch_s"])))
            else:
                env.skews.append((pt.start, pt.end, int(v["hot_replica"]), float(v["share"])))
        # -- replica faults --
        elif pt.cause == "device_slowdown":
            if pt.service not in env.power_limit:
                raise FaultParamError(f"device slow-down on {pt.service!r}, which holds no GPU")
            f = float(v["factor"])
            if not (math.isfinite(f) and f >= 1.0):
                raise FaultParamError(f"device slow-down factor must be a finite number >= 1, is {f!r}")
            slow = env.device_slow.setdefault(pt.service, np.ones(n))
            env.device_slow[pt.service] = np.where(on, np.maximum(slow, f), slow)
        elif pt.cause == "ingress_loss":
            # Its own stream of draws (seeded from the run's environment stream), so a loss fault shifts no other
            # cause's randomness.
            rng = np.random.default_rng(int(env.rng.integers(0, 2**63 - 1)))
            env.losses.setdefault(pt.service, []).append(
                _LossWindow(pt.start, pt.end, Loss(float(v["loss"]), float(v["correlation"]), rng)))
        elif pt.cause in GPU_CAUSES:
            _gpu_fault(env, grid, pt, n)
    _oom(env, grid, perturbations)
    for p in pods:
        demand = env.own_demand[p] + env.stress_cores[p] + env.hog_cores[p]
        env.cpu_share[p] = np.minimum(1.0, pod_cpu / np.maximum(demand, 1e-9))
        frac = (env.base_memory[p] + env.hog_bytes[p]) / pod_memory
        over = np.clip((frac - RECLAIM_START) / (1.0 - RECLAIM_START), 0.0, None)
        env.slow[p] = (1.0 + 4.0 * over**2) \
            * (1.0 + CPU_INTERFERENCE * np.minimum(env.stress_cores[p] + env.hog_cores[p], pod_cpu) / pod_cpu)
        env._slowdown[p] = (env.slow[p] / env.cpu_share[p]).tolist()
    return env


# -- GPU hardware faults (faults/gpu_faults.py) -----------------------------------------------------------------
GPU_CAUSES = ("gpu_lost", "gpu_ecc", "gpu_cooling")
CUDA_ERROR_S = 0.05  # from the Xid to the engine's failing CUDA call and its EngineDeadError (its next step)


def _gpu_fault(env: Environment, grid: np.ndarray, pt: Perturbation, n: int) -> None:
    """A GPU fault: a lost GPU or an ECC error kills the engine (the process-kill path: requests fail, the proxy
    routes around it, it restarts after the GPU is usable and the model loaded); DCGM's Xid / ECC / row-remap
    fields and the node's kernel line follow from the events recorded here. Degraded cooling multiplies the GPU's
    thermal resistance (the engine's GPU model heats and throttles by itself)."""
    pod, v, t = pt.service, pt.values, pt.start
    if pod not in env.power_limit:
        raise FaultParamError(f"{pt.cause} on {pod!r}, which holds no GPU")
    if pt.cause == "gpu_cooling":
        r = float(v["r_factor"])
        ramp = float(v.get("ramp_s") or 0.0)
        rise = np.clip((grid - t) / ramp, 0.0, 1.0) if ramp > 0 else np.ones(n)
        on = (grid >= t) & (grid < pt.end)
        base = env.thermal_r.get(pod, np.ones(n))
        env.thermal_r[pod] = np.where(on, np.maximum(base, 1.0 + (r - 1.0) * rise), base)
        return
    xid = int(v["xid"])
    ras = env.gpu_ras.setdefault(pod, [])
    ras.append((t, "xid", xid))
    env.events.append((t, pod, "gpu_xid", {"xid": xid}))
    env.events.append((t + CUDA_ERROR_S, pod, "engine_dead", {"xid": xid}))
    if pt.cause == "gpu_lost":
        back_on_bus = pt.end if v["cordoned"] else t + float(v["recover_s"])
        env.gpu_off.setdefault(pod, []).append((t, back_on_bus))
    else:
        ras.append((t, "dbe", 1))
        if float(v["reset_s"]) > 0:  # the reset clears the volatile ECC count and performs the pending remap
            ras.append((t + float(v["reset_s"]), "reset", 0))
    # the engine is gone from its CUDA error until the replica serves again (the perturbation's end)
    env.kills.setdefault(pod, []).append((t + CUDA_ERROR_S, pt.end))


def _oom(env: Environment, grid: np.ndarray, perturbations: list[Perturbation]) -> None:
    """A hog that would push a container over its limit is OOM-killed by the kernel (it is the largest process:
    the pod's own processes stay well below the hog's size) and stays dead until the fault ends."""
    for p in env.pods:
        total = env.base_memory[p] + env.hog_bytes[p]
        over = np.nonzero(total > env.pod_memory)[0]
        if not len(over):
            continue
        i = int(over[0])
        hog = next(pt for pt in perturbations if pt.cause == "memory_hog" and pt.service == p)
        size = float(env.hog_bytes[p][i])
        dead = (grid >= grid[i]) & (grid < hog.end)
        env.hog_bytes[p] = np.where(dead, 0.0, env.hog_bytes[p])
        env.hog_cores[p] = np.where(dead, 0.0, env.hog_cores[p])
        env.events.append((float(grid[i]), p, "oom", {"by": "kernel", "process": "memStress", "bytes": int(size),
                                                        "limit_bytes": int(env.pod_memory)}))


def default_base_memory(pod: str, gateway: str, head: str) -> float:
    if pod == gateway:
        return 0.06 * GIB
    return 6.4 * GIB if pod == head else 5.6 * GIB
