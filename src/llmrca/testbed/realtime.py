"""The simulator's replica engine, driven by the wall clock: one implementation of vLLM-like scheduling and GPU
physics for both the simulator and the live engines.

``llmrca.sim.engine.ReplicaEngine`` advances a virtual clock through actions (a prefill step, or a stretch of
identical decode steps); it reads its causes (CPU share, memory slow-down, GPU power limit) from per-tick series.
Here the virtual clock is ``time.monotonic()`` since the engine started, requests are added as they arrive, and
the causes are *live values*: the power limit the control endpoint sets, the CPU share the process really gets
from the kernel's scheduler (``/proc/self/task/<tid>/schedstat``). A token exists for a client once the step that
produces it has ended on the wall clock, so streams follow the modelled step times.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from llmrca.sim.engine import ReplicaEngine, RequestTable
from llmrca.sim.gpu import GpuState, busy_power
from llmrca.sim.hardware import GpuKind, ModelSpec

TICK_S = 1.0
MAX_SLOWDOWN = 20.0  # the straggler fault's largest factor
_HUGE = 1 << 62


class _LiveSeries:
    """A per-tick series whose every element is the current value (what the engine reads at a tick)."""

    def __init__(self, value: float):
        self.value = float(value)

    def tolist(self) -> _LiveSeries:
        return self

    def __len__(self) -> int:
        return _HUGE

    def __getitem__(self, i: int) -> float:
        return self.value


@dataclass
class LiveCauses:
    """The engine's view of its environment (the interface of ``llmrca.sim.environment.Environment`` it uses)."""

    t0: float
    tick: float
    cpu_share: dict[str, _LiveSeries]
    slow: dict[str, _LiveSeries]
    power_limit: dict[str, _LiveSeries]
    device_slow: dict[str, _LiveSeries] = field(default_factory=dict)  # a slow GPU's kernel-time factor
    # the GPU's thermal resistance factor (gpu-thermal's degraded cooling; 1 = healthy): the engine's thermal
    # control runs on it, as in a simulated run with a cooling fault
    thermal_r: dict[str, _LiveSeries] | None = None


class GrowingRequestTable(RequestTable):
    """The engine's request table, grown one request at a time."""

    def __init__(self) -> None:
        super().__init__(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0))

    def add(self, prompt_tokens: int, output_tokens: int, deadline: float) -> int:
        one = RequestTable(np.array([prompt_tokens]), np.array([output_tokens]), np.array([deadline]))
        for k, v in vars(one).items():
            if isinstance(v, list):
                getattr(self, k).extend(v)
        return len(self.prompt) - 1


class SchedShare:
    """The share of a CPU the calling thread gets while it wants one: run time / (run + run-queue wait) over the
    last interval, from the kernel's per-thread schedstat (1.0 where the kernel does not report it)."""

    def __init__(self, min_window_s: float = 0.02):
        self._path = f"/proc/self/task/{os.getpid()}/schedstat" if hasattr(os, "getpid") else ""
        self._last = self._read()
        self.min_window_ns = min_window_s * 1e9
        self.share = 1.0

    def _read(self) -> tuple[int, int] | None:
        try:
            with open(self._path) as f:
                run, wait, _ = f.read().split()
            return int(run), int(wait)
        except (OSError, ValueError):
            return None

    def update(self) -> float:
        now = self._read()
        if now is None or self._last is None:
            return self.share
        d_run, d_wait = now[0] - self._last[0], now[1] - self._last[1]
        if d_run + d_wait >= self.min_window_ns:
            self.share = min(1.0, max(0.05, d_run / (d_run + d_wait)))
            self._last = now
        return self.share


class CgroupShare:
    """The share of its CPU quota a container leaves to each thread that wants it: 1 - (time the container was
    throttled) / (wall time), over the last interval, from the process's own cgroup (v1 ``cpu`` or v2). A stressor
    in the same cgroup exhausts the quota and the container spends most of each period throttled; load elsewhere
    on the machine does not count, as it would not in a pod with its own cores. ``None`` from ``create`` when the
    process is in no CPU-limited cgroup."""

    def __init__(self, stat: str, key: str, unit_ns: float):
        self.stat, self.key, self.unit_ns = stat, key, unit_ns
        self._last = (time.monotonic(), self._read())
        self.share = 1.0

    @classmethod
    def create(cls) -> CgroupShare | None:
        try:
            with open("/proc/self/cgroup") as f:
                lines = f.read().splitlines()
        except OSError:
            return None
        for line in lines:
            _, ctrl, path = line.split(":", 2)
            if path in ("", "/"):
                continue
            if "cpu" in ctrl.split(","):
                for mount in ("/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"):
                    stat = f"{mount}{path}/cpu.stat"
                    if os.path.exists(stat):
                        return cls(stat, "throttled_time", 1.0)
            cpu_max = f"/sys/fs/cgroup{path}/cpu.max"
            if ctrl == "" and os.path.exists(cpu_max) and _first_word(cpu_max) != "max":
                return cls(f"/sys/fs/cgroup{path}/cpu.stat", "throttled_usec", 1e3)
        return None

    def _read(self) -> float | None:
        try:
            with open(self.stat) as f:
                for line in f:
                    k, v = line.split()
                    if k == self.key:
                        return float(v) * self.unit_ns
        except (OSError, ValueError):
            return None
        return None

    def update(self) -> float:
        now, thr = time.monotonic(), self._read()
        t0, thr0 = self._last
        if thr is None or thr0 is None or now - t0 < 0.2:
            return self.share
        self.share = min(1.0, max(0.05, 1.0 - (thr - thr0) / 1e9 / (now - t0)))
        self._last = (now, thr)
        return self.share


def _first_word(path: str) -> str:
    try:
        with open(path) as f:
            return (f.read().split() or [""])[0]
    except OSError:
        return ""


class RealtimeEngine:
    """A ``ReplicaEngine`` on the wall clock, for one live replica.

    ``submit`` adds a request now; ``poll`` advances the engine to now and returns when it next needs a call;
    ``tokens(rid)`` is how many output tokens of a request exist by now; ``state(rid)`` its lifecycle.
    """

    def __init__(self, name: str, *, gpu: GpuKind, model: ModelSpec, max_num_seqs: int, max_num_batched_tokens: int,
                 block_size: int, gpu_memory_utilization: float, shared_prefix_tokens: int,
                 ambient_c: float = 27.0, clock: Callable[[], float] = time.monotonic,
                 measure_cpu: bool = True, kv_cache_tokens: int | None = None, read_timeout_s: float = 60.0):
        self.name = name
        self.gpu = gpu
        self.model = model
        self.clock = clock
        self.t0 = clock()
        self.wall0 = time.time() - (clock() - self.t0)
        self.power = _LiveSeries(gpu.tdp_w)
        self.share = _LiveSeries(1.0)
        self.device = _LiveSeries(1.0)
        self.cooling = _LiveSeries(1.0)
        self.causes = LiveCauses(0.0, TICK_S, {name: self.share}, {name: _LiveSeries(1.0)}, {name: self.power},
                                 device_slow={name: self.device}, thermal_r={name: self.cooling})
        self.table = GrowingRequestTable()
        self.events: list = []
        # The GPU starts warm, near the steady state of a light decode load (as in the simulator).
        p0 = gpu.idle_w + 0.8 * busy_power(gpu, 1.0, 0.9, 0.08)
        t_start = ambient_c + gpu.thermal_r * p0
        self.gpu_state = GpuState(gpu, ambient_c, t_start, t_start + 3.0)
        self.engine = ReplicaEngine(
            name, gpu=gpu, model=model, env=self.causes, requests=self.table, gpu_state=self.gpu_state,
            t_start=0.0, tick=TICK_S, max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
            block_size=block_size, gpu_memory_utilization=gpu_memory_utilization,
            shared_prefix_tokens=shared_prefix_tokens, events=self.events, kv_cache_tokens=kv_cache_tokens,
            read_timeout_s=read_timeout_s,
        )
        # The engine's CPU share: its container's throttling where it has a CPU-limited cgroup, else the kernel's
        # run-queue accounting of this thread (which also counts load from anything else on the machine).
        self._sched = (CgroupShare.create() or SchedShare()) if measure_cpu else None
        self._last_share_t = 0.0
        self.finished: set[int] = set()
        self.aborted: set[int] = set()

    # -- clock ------------------------------------------------------------------------------------------------
    def now(self) -> float:
        return self.clock() - self.t0

    def wall(self, v: float) -> float:
        """Unix time of engine time ``v``."""
        return self.wall0 + v

    # -- causes -----------------------------------------------------------------------------------------------
    @property
    def power_limit(self) -> float:
        return self.power.value

    def set_power_limit(self, watts: float | None) -> float:
        """Cap the emulated GPU's power (None: back to its default limit); from the next tick every step runs at the
        highest clock whose draw fits, as the real power management does. Raises ``ValueError`` outside what the GPU
        accepts."""
        g = self.gpu
        w = g.tdp_w if watts is None else float(watts)
        if not (g.min_power_w <= w <= g.tdp_w):
            raise ValueError(f"power limit {w:g} W is outside what a {g.name} accepts ({g.min_power_w:g}-{g.tdp_w:g} W)")
        self.power.value = w
        return w

    def set_cooling(self, r_factor: float) -> float:
        """The GPU's thermal resistance to the air as a multiple of the healthy one (1: healthy cooling); from the
        next tick its temperature follows it and the thermal control throttles the clock at the GPU's target."""
        r = float(r_factor)
        if not (math.isfinite(r) and 1.0 <= r <= 50.0):
            raise ValueError(f"r_factor must lie in [1, 50], is {r_factor!r}")
        self.cooling.value = r
        return r

    @property
    def device_slowdown(self) -> float:
        return self.device.value

    def set_device_slowdown(self, factor: float | None) -> float:
        """Slow the emulated GPU's kernels by ``factor`` (None: healthy, 1); from the next tick every step's memory
        and compute time is that much longer, as in the simulator (a straggler). ``ValueError`` unless 1 <= factor
        <= MAX_SLOWDOWN."""
        f = 1.0 if factor is None else float(factor)
        if not (math.isfinite(f) and 1.0 <= f <= MAX_SLOWDOWN):
            raise ValueError(f"factor must be a finite number in [1, {MAX_SLOWDOWN:g}], is {factor!r}")
        self.device.value = f
        return f

    @property
    def stalled(self) -> bool:
        return self.engine.stalled(self.now())

    def set_stalled(self, stalled: bool) -> bool:
        """Stop the engine now (as a SIGSTOP of vLLM's worker: no step, no token, its gauges and counters frozen)
        or let it continue; returns whether it is stopped."""
        v = self.now()
        self.engine.advance(v)
        if stalled and not self.engine.stalled(v):
            self.engine.stall(v)
        elif not stalled and self.engine.stalled(v):
            self.engine.resume(v)
            self.engine.advance(v)
        return self.engine.stalled(v)

    # -- requests ---------------------------------------------------------------------------------------------
    def submit(self, prompt_tokens: int, output_tokens: int, timeout_s: float) -> int:
        v = self.now()
        self.engine.advance(v)
        rid = self.table.add(int(prompt_tokens), int(output_tokens), v + timeout_s)
        self.engine.enqueue(rid, v)
        return rid

    def abort(self, rid: int) -> None:
        """The caller went away: vLLM frees the request's slot and KV blocks."""
        if rid in self.finished or rid in self.aborted:
            return
        self.aborted.add(rid)
        e = self.engine
        R = self.table
        R.deadline[rid] = -math.inf  # leaves the waiting queue at the engine's next look
        if rid in e.running:
            base = e.running.pop(rid)
            R.gen[rid] = int(base + e.D - R.prompt[rid])
            e.A -= base
            e.n -= 1
            e.ver[rid] = e.ver.get(rid, 0) + 1  # its completion entry becomes stale
        else:
            for entry in list(e.prefilling):
                if entry[0] == rid:
                    e.prefilling.remove(entry)
                    e.kv_pref -= entry[2]
        if rid in e.waiting:
            e.waiting.remove(rid)
        if math.isnan(R.t_end[rid]):
            R.t_end[rid] = self.now()
            R.failed[rid] = 499

    def poll(self) -> float:
        """Advance to now; returns the engine time at which something next happens (a step ends, a tick)."""
        v = self.now()
        if self._sched is not None and v - self._last_share_t >= 0.25:
            self._last_share_t = v
            self.share.value = self._sched.update()
        e = self.engine
        e.advance(v)
        for rid in e.done:
            self.finished.add(rid)
        e.done.clear()
        p = e.plan
        if p is not None:
            k = math.floor((v - p[0]) / p[3]) + 1
            return min(p[1], p[0] + k * p[3])
        if e.t > v:
            return e.t
        return min(e.next_tick, v + 0.05)

    def tokens(self, rid: int, v: float | None = None) -> int:
        """Output tokens of ``rid`` produced by engine time ``v`` (default: now)."""
        v = self.now() if v is None else v
        R = self.table
        first = R.t_first[rid]
        if math.isnan(first) or first > v:
            return 0
        if (rid in self.finished or rid in self.aborted) and R.t_end[rid] <= v:
            return R.gen[rid]
        e = self.engine
        base = e.running.get(rid)
        if base is None:
            return R.gen[rid]  # back in the queue after a preemption, or in recomputation
        p = e.plan
        if p is not None:
            D = e.D + max(0, min(p[2], math.floor((v - p[0]) / p[3])))
        elif e.t > v:
            D = e.D - 1  # the step that ends in the future has counted its token already
        else:
            D = e.D
        return int(max(0, min(R.out[rid], base + D - R.prompt[rid])))

    def state(self, rid: int, v: float | None = None) -> str:
        """'queued', 'running', 'done', 'failed' (engine's refusal or the deadline) or 'aborted', as of ``v``."""
        v = self.now() if v is None else v
        R = self.table
        if rid in self.aborted:
            return "aborted"
        if rid in self.finished and R.t_end[rid] <= v:
            return "failed" if R.failed[rid] else "done"
        first = R.t_first[rid]
        return "running" if not math.isnan(first) and first <= v else "queued"

    def request_times(self, rid: int) -> dict[str, float]:
        """Engine-side times of a request (engine clock): ready, scheduled, first token, end, prefill seconds."""
        R = self.table
        return {"t_ready": R.t_ready[rid], "t_scheduled": R.t_scheduled[rid], "t_first": R.t_first[rid],
                "t_end": R.t_end[rid], "prefill_s": R.prefill_s[rid], "preemptions": R.n_preempt[rid]}

    # -- observation -------------------------------------------------------------------------------------------
    def last_tick(self) -> dict[str, float] | None:
        rows = self.engine.log.rows
        if not rows:
            return None
        return dict(zip(self.engine.log.FIELDS, rows[-1]))

    def drain_ticks(self, keep: int = 8) -> list[dict[str, float]]:
        """Tick rows closed since the last call (the log is trimmed to ``keep`` rows)."""
        log = self.engine.log
        rows = log.rows
        start = getattr(self, "_tick_seen", 0)
        new = rows[start:]
        if len(rows) > 4 * keep:
            del rows[: len(rows) - keep]
            log._arrays = None
        self._tick_seen = len(rows)
        return [dict(zip(log.FIELDS, r)) for r in new]

    def drain_steps(self) -> tuple[list[float], list[float], list[float], list[float]]:
        """(step durations, decode tokens per duration) and (tokens per step, step count) since the last call:
        the raw material of vLLM's inter-token-latency and iteration-tokens histograms."""
        itl, it = self.engine._itl, self.engine._iter  # time, value, weight: three entries per observation
        out = (itl[1::3], itl[2::3], it[1::3], it[2::3])
        itl.clear()
        it.clear()
        return out
