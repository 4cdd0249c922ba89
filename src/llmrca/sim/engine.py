"""One vLLM-like replica: waiting queue, continuous batching, chunked prefill, KV cache in blocks, preemption
with recomputation, on a GPU whose clock a power limit can lower and a CPU share faults can shrink.

The fluid/batch approximation (why this is fast): the engine is simulated as a sequence of *actions*, not of
decode iterations. A step that admits or prefills requests is simulated on its own (there is about one per
request). Between such steps the batch is fixed, so every running request gains one token per decode step and
all decode steps of the stretch take the same time; the stretch up to the next event (the earliest completion,
the next arrival, the next control tick, or the step at which the KV cache would overflow) is one action of
``k`` steps. A per-replica counter ``D`` of decode steps done gives every request's token count as
``D - D_join + generated_at_join`` (the classic virtual-time trick of processor-sharing simulation), so an
action costs O(log n), whatever its length. Arrivals truncate a planned stretch at the step boundary after them,
so a new request waits at most one decode step, as in vLLM. Per-step time is the roofline of ``llmrca.sim.gpu``
plus the CPU-side step work (scheduling, input preparation, sampling), slowed by the container's CPU share. The
power limit acts per step (``llmrca.sim.gpu.step_at_limit``): every step runs at the highest clock at which its
own draw fits under the limit.

CPU: the engine-core loop is GIL-bound and spins on CUDA syncs, so it wants about one core whenever it has work;
the OpenAI frontend wants CPU per request, per prompt token and per streamed token. At every tick the engine
tells the environment what it wanted in the last one; the pod's CFS quota is shared by everything runnable in it
(these, the pod's background processes, any stress workers), and the engine thread progresses at its share: a
throttled cgroup cannot launch the next step, so the whole step stretches, not only its CPU part.
"""

from __future__ import annotations

import math
from collections import deque
from heapq import heappop, heappush

import numpy as np

from llmrca.sim.environment import Environment
from llmrca.sim.gpu import (
    HW_SLOWDOWN_CLOCK,
    GpuState,
    bandwidth_factor,
    step_at_limit,
    step_capped,
    thermal_control,
)
from llmrca.sim.hardware import GIB, GpuKind, ModelSpec

INF = math.inf
NAN = math.nan

# CPU-side work per engine step at a full CPU share (vLLM V1 engine core: schedule, prepare inputs, sample).
STEP_BASE_S = 1.4e-3
STEP_PER_SEQ_S = 0.03e-3
STEP_PER_PREFILL_TOKEN_S = 1.5e-6
# The engine-core process wants about one core while it has work: its Python loop is GIL-bound (vLLM issue
# #14538) and it spins while it waits for the GPU.
ENGINE_CORE_CORES = 1.0
ACTIVATION_RESERVE = 1.5 * GIB  # CUDA context, activations and graphs vLLM keeps out of the KV pool
READ_TIMEOUT_S = 60.0  # the gateway's proxy_read_timeout: a stalled stream that sends nothing this long is cut


class RequestTable:
    """Per-request engine results, as Python lists (fast scalar access); `arrays()` at the end."""

    def __init__(self, prompt: np.ndarray, out: np.ndarray, deadline: np.ndarray):
        n = len(prompt)
        self.prompt = prompt.tolist()
        self.out = out.tolist()
        self.deadline = deadline.tolist()  # engine-side time after which a still-waiting request is abandoned
        self.t_ready = [NAN] * n
        self.t_scheduled = [NAN] * n
        self.t_first = [NAN] * n
        self.t_end = [NAN] * n
        self.prefill_s = [0.0] * n
        self.gen = [0] * n  # tokens generated so far (updated at state changes)
        self.n_preempt = [0] * n
        self.failed = [0] * n  # 0 ok, else an HTTP status

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "t_ready": np.array(self.t_ready), "t_scheduled": np.array(self.t_scheduled),
            "t_first_token": np.array(self.t_first), "t_engine_end": np.array(self.t_end),
            "prefill_s": np.array(self.prefill_s), "generated": np.array(self.gen, dtype=np.int64),
            "num_preemptions": np.array(self.n_preempt, dtype=np.int64),
            "failed": np.array(self.failed, dtype=np.int64),
        }


class TickLog:
    """What the engine and its GPU looked like at the end of every tick (the metrics' raw material)."""

    FIELDS = ("t", "running", "waiting", "kv_usage", "clock", "power", "temp", "mem_temp", "busy", "mem_share",
              "comp_share", "steps", "gen_tokens", "prompt_tokens", "active", "engine_cpu", "capped", "energy",
              "power_violation", "preemptions", "prefix_queries", "prefix_hits", "limit", "cpu_demand", "fb_used",
              "thermal", "thermal_violation")  # thermal: 0, 1 software slowdown held the tick, 2 hardware slowdown

    def __init__(self) -> None:
        self.rows: list[tuple] = []
        self._arrays: dict[str, np.ndarray] | None = None

    def arrays(self) -> dict[str, np.ndarray]:
        if self._arrays is None or len(self._arrays["t"]) != len(self.rows):
            a = np.array(self.rows, dtype=float).reshape(len(self.rows), len(self.FIELDS))
            self._arrays = {f: a[:, i] for i, f in enumerate(self.FIELDS)}
        return self._arrays


class ReplicaEngine:
    def __init__(
        self,
        name: str,
        *,
        gpu: GpuKind,
        model: ModelSpec,
        env: Environment,
        requests: RequestTable,
        gpu_state: GpuState,
        t_start: float,
        tick: float,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        block_size: int,
        gpu_memory_utilization: float,
        shared_prefix_tokens: int,
        bw_speed: float = 1.0,
        flops_speed: float = 1.0,
        cpu_speed: float = 1.0,
        events: list | None = None,
        background_cores: float = 0.0,
        frontend_costs: tuple[float, float, float] = (0.0, 0.0, 0.0),
        kv_cache_tokens: int | None = None,
        read_timeout_s: float = READ_TIMEOUT_S,
    ):
        self.name = name
        self.gpu = gpu
        self.env = env
        self.R = requests
        self.gs = gpu_state
        self.tick = tick
        self.max_seqs = max_num_seqs
        self.max_tokens_step = max_num_batched_tokens
        self.prefix = shared_prefix_tokens
        self.events = events if events is not None else []
        # Roofline constants
        self.W = model.weight_bytes
        self.kvb = model.kv_bytes_per_token
        self.flop_tok = 2.0 * model.params
        self.fl = gpu.flops * gpu.mfu * flops_speed
        self.bw = gpu.hbm_bw * gpu.bw_eff * bw_speed
        # step_at_limit's full-clock case, its terms precomputed (``_step``): launch, idle, memory and SM power
        # at full clock (the same products, in the same order, as llmrca.sim.gpu.busy_power at f = 1)
        self._g1 = (gpu.launch_s, gpu.idle_w, gpu.p_mem_w, bandwidth_factor(1.0, gpu.knee), gpu.p_sm_w,
                    1.0**gpu.power_exp)
        self.cpu_speed = cpu_speed
        self.background_cores = background_cores  # the pod's own processes besides engine and frontend
        self.frontend_costs = frontend_costs  # CPU s per request, per prompt token, per output token
        self._fe = [0, 0]  # requests and prompt tokens handed to the engine in this tick
        kv_bytes = gpu_memory_utilization * gpu.hbm_bytes - model.weight_bytes - ACTIVATION_RESERVE
        self.block_size = block_size
        # What gpu_memory_utilization leaves after weights and activations: the replica's normal cache.
        self.normal_blocks = max(1, int(kv_bytes // (model.kv_bytes_per_token * block_size)))
        self.read_timeout_s = read_timeout_s
        self._pool_bytes = gpu_memory_utilization * gpu.hbm_bytes
        self.set_kv_capacity(kv_cache_tokens)
        # State
        self.t = t_start
        self.D = 0
        self.n = 0
        self.A = 0.0  # sum over running requests of (prompt + generated_at_join - D_join)
        self.kv_pref = 0  # KV tokens held by requests still in prefill
        self.incoming: list[tuple[float, int]] = []
        self.waiting: deque[int] = deque()
        self.prefilling: list[list[int]] = []  # [rid, prompt tokens left to compute, KV tokens held]
        self.running: dict[int, float] = {}  # rid -> base (prompt + generated_at_join - D_join), join order
        self.fin: list[tuple[int, int, int]] = []  # (D at which it finishes, rid, version)
        self.ver: dict[int, int] = {}
        self.plan: list | None = None  # [t0, t1, k, s, gpu, mem, comp, cpu]
        self.done: list[int] = []  # finished or abandoned rids, for the router to collect
        self.down_until = -INF  # a killed process: requests reaching it before this fail at once
        # Stopped engine (SIGSTOP of its worker): windows [from, until) still to come, the current one first.
        self.stalls: list[list[float]] = sorted([float(a), float(b)] for a, b in getattr(env, "stalls", {}).get(name, ()))
        self._frozen: tuple[int, int, float] | None = None  # gauges as the engine last published them
        self._giveups: list[tuple[float, int]] = []  # (the client's timeout strikes, rid) while stalled
        # Tick state
        self.next_tick = t_start + tick
        self.log = TickLog()
        # busy, mem, comp, steps, gen, prompt, active, engine_cpu, busy energy, clock integral, time clipped by the
        # power limit, time clipped by the thermal control
        self._acc = [0.0] * 12
        self._preempt_total = 0
        self._prefix_q = 0
        self._prefix_h = 0
        self._itl: list[float] = []  # time, value, weight: three entries per observation
        self._iter: list[float] = []  # time, tokens per step, steps: three entries per observation
        self._period = gpu.cfs_period_s
        # The environment's per-tick causes for this pod, as lists (fast scalar reads).
        if abs(env.tick - tick) > 1e-12:
            raise ValueError("engine tick and environment tick differ")
        self._env_t0 = env.t0
        self._shares = env.cpu_share[name].tolist()
        self._slows = env.slow[name].tolist()
        self._limits = env.power_limit[name].tolist()
        # A slow device (straggler): its kernels take this factor longer; absent, they run at full speed (and the
        # step times are exactly those of an engine without it).
        dev = getattr(env, "device_slow", {}).get(name)
        self._devs = dev.tolist() if dev is not None else None
        self.dev = 1.0
        # Degraded cooling (gpu-thermal): the GPU's thermal resistance factor per tick; the driver's thermal control
        # (llmrca.sim.gpu.thermal_control) runs where it is given.
        th = getattr(env, "thermal_r", {}).get(name)
        self._thermal = th.tolist() if th is not None else None
        self._th_limit = INF  # the thermal control's power budget for this tick
        self._th = 0  # 1 while that budget, not the power limit, binds
        self._f_cap = 1.0  # hardware slowdown's clock ceiling
        # A simulated environment derives the CPU share from what the pod wants; a live one measures it.
        self._demand_sink = getattr(env, "set_own_demand", None)
        self._set_factors(t_start)

    # -- the router's interface ---------------------------------------------------------------------------
    def enqueue(self, rid: int, t_ready: float) -> None:
        self.R.t_ready[rid] = t_ready
        fe = self._fe
        fe[0] += 1
        fe[1] += self.R.prompt[rid]
        heappush(self.incoming, (t_ready, rid))
        p = self.plan
        if p is not None and t_ready < p[1]:
            k = math.ceil((t_ready - p[0]) / p[3])
            k = k if k > 1 else 1  # noqa: FURB136 - max(1, k) as a compare (see _ticks)
            if k < p[2]:
                p[2] = k
                p[1] = p[0] + k * p[3]

    def advance(self, until: float) -> None:
        """Simulate every action that starts before ``until`` (an action may end after it)."""
        while True:
            p = self.plan
            if p is not None:
                if p[1] > until:
                    return
                self._commit()
                continue
            t = self.t
            if t > until:
                return
            if self.stalls and t >= self.stalls[0][0]:
                if self._stalled(until):
                    return
                continue
            if t >= self.next_tick:
                self._ticks()
            inc = self.incoming
            while inc and inc[0][0] <= t:
                self.waiting.append(heappop(inc)[1])
            if self.waiting:
                self._expire(t)
            if self.prefilling or (self.waiting and self._can_admit()):
                self._mixed_step()
            elif self.n:
                self._plan_decode()
            else:
                nxt = self.next_tick
                if inc and inc[0][0] < nxt:
                    nxt = inc[0][0]
                if nxt > until:
                    return
                self.t = nxt

    def busy(self) -> bool:
        return bool(self.plan or self.n or self.prefilling or self.waiting or self.incoming)

    def drain(self, horizon: float) -> None:
        """Run to ``horizon``, then on until the last request is done."""
        self.advance(horizon)
        while self.busy():
            self.advance(self.t + 60.0)

    def ongoing_tokens(self) -> int:
        return self.n + len(self.prefilling) + len(self.waiting) + len(self.incoming)

    # -- capacity and stalls ------------------------------------------------------------------------------
    def set_kv_capacity(self, tokens: int | None = None, fraction: float | None = None) -> int:
        """The KV cache the engine starts with: ``tokens`` (vLLM's --kv-cache-memory-bytes, in tokens), a
        ``fraction`` of what gpu_memory_utilization leaves, or all of that; returns the capacity in tokens. Only a
        starting engine takes it (a restart)."""
        if tokens is not None:
            blocks = max(1, int(tokens) // self.block_size)
        elif fraction is not None:
            blocks = max(1, int(self.normal_blocks * float(fraction)))
        else:
            blocks = self.normal_blocks
        self.blocks_total = blocks
        self.cap = blocks * self.block_size  # tokens
        if tokens is None and fraction is None:
            self.fb_used_bytes = self._pool_bytes + 0.5 * GIB  # vLLM preallocates its pool
        else:  # a pool sized in bytes: weights, activations, the cache asked for
            self.fb_used_bytes = self.W + ACTIVATION_RESERVE + self.cap * self.kvb + 0.5 * GIB
        return self.cap

    def stall(self, t: float, until: float = INF) -> None:
        """The engine's worker stops at ``t`` (SIGSTOP) until ``until``: a planned decode stretch ends at the step
        boundary after ``t``."""
        p = self.plan
        if p is not None and t < p[1]:
            k = max(1, math.ceil((t - p[0]) / p[3]))
            if k < p[2]:
                p[2] = k
                p[1] = p[0] + k * p[3]
        self.stalls.append([t, until])
        self.stalls.sort()

    def resume(self, t: float) -> None:
        """The worker continues at ``t`` (SIGCONT): ends the current (or next) stall there."""
        if self.stalls:
            self.stalls[0][1] = max(t, self.stalls[0][0])

    def stalled(self, t: float) -> bool:
        return bool(self.stalls) and self.stalls[0][0] <= t < self.stalls[0][1]

    def _gauges(self) -> tuple[int, int, float]:
        n_run = self.n + len(self.prefilling)
        used = self._used() / self.block_size + 0.5 * n_run
        return n_run, len(self.waiting), used / self.blocks_total

    def _giveup_at(self, rid: int, a: float) -> float:
        # nginx's read timeout counts from the last byte: the request's wait deadline before its first token, the
        # stall's start (its last token) after it.
        d = self.R.deadline[rid]
        return d if d < INF else a + self.read_timeout_s

    def _stalled(self, until: float) -> bool:
        """One step of a stopped engine: ticks with frozen engine gauges, arrivals queued, clients that time out
        failed (504); at the stall's end the engine forgets the requests whose clients left and resumes. True when
        ``until`` is reached."""
        a, b = self.stalls[0]
        R = self.R
        g = self._giveups
        if self._frozen is None:  # the worker stops now: its last published stats stay on /metrics
            self._frozen = self._gauges()
            for rid in [*self.running, *(e[0] for e in self.prefilling), *self.waiting]:
                heappush(g, (self._giveup_at(rid, a), rid))
        t = self.t
        if t >= self.next_tick:
            self._ticks()
        inc = self.incoming
        while inc and inc[0][0] <= t:
            rid = heappop(inc)[1]
            self.waiting.append(rid)
            heappush(g, (self._giveup_at(rid, a), rid))
        while g and g[0][0] <= t:
            at, rid = heappop(g)
            if R.failed[rid] == 0 and R.t_end[rid] != R.t_end[rid] and at < b:
                if rid in self.running:  # the tokens it streamed before the stop (the client got them)
                    R.gen[rid] = int(self.running[rid] + self.D - R.prompt[rid])
                self._abandon(rid, at, 504)
        if t >= b:
            self._forget_failed()
            self.stalls.pop(0)
            self._frozen = None
            self._giveups = []
            return False
        nxt = min(self.next_tick, b, g[0][0] if g else INF, inc[0][0] if inc else INF)
        if nxt > until:
            return True
        self.t = nxt
        return False

    def _forget_failed(self) -> None:
        """The aborts of clients that left reach the resumed engine: their slots and KV blocks are freed."""
        R = self.R
        for rid in [r for r in self.running if R.failed[r]]:
            self.A -= self.running.pop(rid)
            self.n -= 1
            self.ver[rid] = self.ver.get(rid, 0) + 1  # its completion entry becomes stale
        for e in [e for e in self.prefilling if R.failed[e[0]]]:
            self.prefilling.remove(e)
            self.kv_pref -= e[2]
        if any(R.failed[r] for r in self.waiting):
            self.waiting = deque(r for r in self.waiting if not R.failed[r])

    # -- actions ------------------------------------------------------------------------------------------
    def _step(self, mem1: float, comp1: float, other: float) -> tuple[float, float, float, float, float]:
        """``step_at_limit`` (or ``step_capped`` under hardware slowdown) at this tick's limit; a step that fits
        under the limit at full clock is computed here, bit for bit as ``step_at_limit`` does it."""
        if self._f_cap < 1.0:
            return step_capped(self.gpu, self.limit, mem1, comp1, other, self._f_cap)
        launch, idle, pm, bf1, psm, pe1 = self._g1
        gpu_s = (mem1 if mem1 > comp1 else comp1) + launch  # noqa: FURB136 - max(comp1, mem1)
        ms, cs = mem1 / gpu_s, comp1 / gpu_s
        p1 = pm * ms * bf1 + psm * (0.35 + 0.65 * cs) * pe1
        if idle + p1 * gpu_s / (gpu_s + other) <= self.limit:
            return 1.0, gpu_s, mem1, comp1, p1
        return step_at_limit(self.gpu, self.limit, mem1, comp1, other)

    def _thermal_tick(self, i: int, clipped_s: float) -> int:
        """The thermal control after a tick closed (``i``: the tick that starts now): the next tick's budget and
        clock ceiling; returns the closed tick's thermal state (0, 1 software slowdown held it, 2 hardware)."""
        gs = self.gs
        state = 2 if self._f_cap < 1.0 else (1 if clipped_s >= 0.5 * self.tick else 0)
        budget, hw = thermal_control(self.gpu, gs.temp_c, gs.ambient_c, gs.r_factor)
        self._th_limit = budget
        self._f_cap = HW_SLOWDOWN_CLOCK if hw else 1.0
        nxt = self._thermal[min(max(i, 0), len(self._thermal) - 1)]
        gs.r_factor = float(nxt)
        return state

    def _set_factors(self, t: float) -> None:
        i = int((t - self._env_t0) / self.tick)
        i = 0 if i < 0 else (len(self._shares) - 1 if i >= len(self._shares) else i)
        share = self._shares[i]
        self.share = share
        self.inv_share = 1.0 / share
        self.cpu_factor = self._slows[i] / self.cpu_speed
        self.limit = self._limits[i]
        if self._devs is not None:
            self.dev = self._devs[i]
        if self._th_limit < self.limit:
            self.limit = self._th_limit
            self._th = 1
        else:
            self._th = 0

    def _used(self) -> float:
        return self.A + self.n * self.D + self.kv_pref

    def _can_admit(self) -> bool:
        if self.n + len(self.prefilling) >= self.max_seqs:
            return False
        rid = self.waiting[0]
        need = self.R.prompt[rid] + self.R.gen[rid]
        if need > self.cap and not self.n and not self.prefilling:
            self.waiting.popleft()  # can never fit: vLLM rejects it
            self._abandon(rid, self.t, 500)
            return bool(self.waiting) and self._can_admit()
        return self._used() + need <= self.cap

    def _expire(self, t: float) -> None:
        R = self.R
        w = self.waiting
        while w and R.deadline[w[0]] <= t:
            rid = w.popleft()
            self._abandon(rid, R.deadline[rid], 504)

    def _abandon(self, rid: int, t: float, status: int) -> None:
        self.R.t_end[rid] = t
        self.R.failed[rid] = status
        self.done.append(rid)

    def _mixed_step(self) -> None:
        R = self.R
        t = self.t
        n = self.n
        budget = self.max_tokens_step - n
        pre = self.prefilling
        w = self.waiting
        left = sum([e[1] for e in pre])  # prompt tokens still to prefill (whole numbers: any order sums the same)
        while w and len(pre) + n < self.max_seqs and budget - left > 0:
            rid = w[0]
            need = R.prompt[rid] + R.gen[rid]
            if self.A + n * self.D + self.kv_pref + need > self.cap:  # self._used() + need
                break
            w.popleft()
            if R.t_scheduled[rid] != R.t_scheduled[rid]:  # NaN: first time scheduled
                R.t_scheduled[rid] = t
            hit = need - 1 if need - 1 < self.prefix else self.prefix  # noqa: FURB136 - min(prefix, need - 1)
            self._prefix_q += need
            self._prefix_h += hit
            pre.append([rid, need - hit, need])
            left += need - hit
            self.kv_pref += need
        tokens = 0
        in_step: list[int] = []
        finished: list[list[int]] = []
        for e in pre:
            room = budget - tokens
            if room <= 0:
                break
            take = e[1] if e[1] < room else room  # noqa: FURB136 - min(room, e[1])
            e[1] -= take
            tokens += take
            in_step.append(e[0])
            if e[1] == 0:
                finished.append(e)
        ctx = self.A + n * self.D + self.kv_pref
        cpu = (STEP_BASE_S + STEP_PER_SEQ_S * (n + len(in_step)) + STEP_PER_PREFILL_TOKEN_S * tokens) \
            * self.cpu_factor
        mem1 = (self.W + ctx * self.kvb) / self.bw * self.dev
        comp1 = self.flop_tok * (tokens + n) / self.fl * self.dev
        # (one call per request; only the decode stretch, the most frequent action, has the step inline)
        f, gpu, mem, comp, pw = self._step(mem1, comp1, cpu * self.inv_share)
        dur = (cpu + gpu) * self.inv_share
        t1 = t + dur
        a = self._acc
        a[0] += gpu
        a[1] += mem
        a[2] += comp
        a[3] += 1
        a[4] += n + len(finished)
        a[5] += tokens
        a[6] += dur
        a[7] += dur * self.share
        a[8] += pw * gpu
        a[9] += f * gpu
        if f < 1.0:
            a[10 + self._th] += dur
        if n:
            self.D += 1
            self._itl.extend((t1, dur, n))
        self._iter.extend((t1, tokens + n, 1))
        for rid in in_step:
            R.prefill_s[rid] += dur
        if finished:
            D = self.D
            for e in finished:
                pre.remove(e)
                rid = e[0]
                self.kv_pref -= e[2]
                g = R.gen[rid] + 1
                R.gen[rid] = g
                if R.t_first[rid] != R.t_first[rid]:
                    R.t_first[rid] = t1
                    R.deadline[rid] = INF
                base = R.prompt[rid] + g - D
                self.running[rid] = base
                self.A += base
                self.n += 1
                v = self.ver.get(rid, 0) + 1
                self.ver[rid] = v
                heappush(self.fin, (D + R.out[rid] - g, rid, v))
        self.t = t1
        fin = self.fin
        if fin and fin[0][0] <= self.D:
            self._complete(t1)

    def _plan_decode(self) -> None:
        n = self.n
        D = self.D
        fin = self.fin
        ver = self.ver
        while fin[0][2] != ver[fin[0][1]]:
            heappop(fin)
        k = fin[0][0] - D
        ctx = self.A + n * D + self.kv_pref
        room = self.cap - ctx
        k_kv = int(room // n)
        if k_kv < 1:
            self._preempt()
            return
        if k_kv < k:  # noqa: PLR1730 - k = min(k, k_kv)
            k = k_kv
        inv_share = self.inv_share
        dev = self.dev
        cpu = (STEP_BASE_S + STEP_PER_SEQ_S * n) * self.cpu_factor
        mem1 = (self.W + (ctx + 0.5 * n * (64 if 64 < k else k)) * self.kvb) / self.bw * dev  # noqa: FURB136
        comp1 = self.flop_tok * n / self.fl * dev
        other = cpu * inv_share
        if self._f_cap < 1.0:  # self._step, inline
            f, gpu, mem, comp, pw = step_capped(self.gpu, self.limit, mem1, comp1, other, self._f_cap)
        else:
            launch, idle, pm, bf1, psm, pe1 = self._g1
            gpu = (mem1 if mem1 > comp1 else comp1) + launch  # noqa: FURB136 - max(comp1, mem1)
            ms, cs = mem1 / gpu, comp1 / gpu
            pw = pm * ms * bf1 + psm * (0.35 + 0.65 * cs) * pe1
            if idle + pw * gpu / (gpu + other) <= self.limit:
                f, mem, comp = 1.0, mem1, comp1
            else:
                f, gpu, mem, comp, pw = step_at_limit(self.gpu, self.limit, mem1, comp1, other)
        s = (cpu + gpu) * inv_share
        t = self.t
        horizon = self.next_tick
        inc = self.incoming
        if inc and inc[0][0] < horizon:
            horizon = inc[0][0]
        stalls = self.stalls
        if stalls and t < stalls[0][0] < horizon:
            horizon = stalls[0][0]
        k_h = math.ceil((horizon - t) / s)
        if k_h < k:
            k = k_h if k_h > 1 else 1  # noqa: FURB136 - max(1, k_h)
        self.plan = [t, t + k * s, k, s, gpu, mem, comp, pw, f]

    def _commit(self) -> None:
        _t0, t1, k, s, gpu, mem, comp, pw, f = self.plan
        self.plan = None
        n = self.n
        self.D += k
        self.t = t1
        a = self._acc
        a[0] += k * gpu
        a[1] += k * mem
        a[2] += k * comp
        a[3] += k
        a[4] += k * n
        a[6] += k * s
        a[7] += k * s * self.share
        a[8] += k * pw * gpu
        a[9] += k * f * gpu
        if f < 1.0:
            a[10 + self._th] += k * s
        period = self._period
        if period and self.share < 1.0 and k * s > 0.0:
            # Under a CFS quota the pod's threads run at full speed until the period's quota is spent, then wait
            # for the next period: most steps take their unthrottled time s * share, and one step per period
            # also carries the throttled rest of it, period * (1 - share). The mean stays s.
            fast = s * self.share
            gaps = min(float(k), k * s / period)
            self._itl.extend((t1, fast, n * (k - gaps), t1, fast + (s - fast) * k / gaps, n * gaps))
        else:
            self._itl.extend((t1, s, n * k))
        self._iter.extend((t1, n, k))
        fin = self.fin
        if fin and fin[0][0] <= self.D:
            self._complete(t1)

    def _complete(self, t: float) -> None:
        fin = self.fin
        D = self.D
        R = self.R
        while fin and fin[0][0] <= D:
            _, rid, v = heappop(fin)
            if v != self.ver[rid]:
                continue
            base = self.running.pop(rid)
            self.A -= base
            self.n -= 1
            R.gen[rid] = R.out[rid]
            R.t_end[rid] = t
            self.done.append(rid)

    def _preempt(self) -> None:
        """KV cache full: the most recently scheduled request gives its blocks back and is recomputed later."""
        rid, base = self.running.popitem()
        R = self.R
        R.gen[rid] = int(base + self.D - R.prompt[rid])
        self.A -= base
        self.n -= 1
        self.ver[rid] += 1
        R.n_preempt[rid] += 1
        self._preempt_total += 1
        self.waiting.appendleft(rid)
        self.events.append((self.t, self.name, "preemption", {"request_id": int(rid), "num_preempted": 1}))

    def kill(self, t: float, back: float) -> None:
        """The engine process dies at ``t`` (SIGKILL, pod kill): every request it holds fails (502 at the proxy),
        batch and KV cache are gone; until ``back`` (restarted, model loaded) a request that reaches it fails."""
        t = max(t, self.t)
        R = self.R
        lost = [*self.running, *(e[0] for e in self.prefilling), *self.waiting, *(rid for _, rid in self.incoming)]
        for rid in lost:
            if R.failed[rid] == 0 and R.t_end[rid] != R.t_end[rid]:
                self._abandon(rid, t, 502)
        self.running.clear()
        self.prefilling.clear()
        self.waiting.clear()
        self.incoming.clear()
        self.fin.clear()
        self.A = 0.0
        self.n = 0
        self.kv_pref = 0
        self.plan = None  # a planned decode stretch never happens
        self.t = t
        self.down_until = back

    def refuse(self, rid: int, t_ready: float) -> None:
        """A request reaching the killed process before it is back: nobody listens, the proxy's call fails (502)."""
        self.R.t_ready[rid] = t_ready
        self._abandon(rid, t_ready, 502)

    # -- control tick --------------------------------------------------------------------------------------
    def _ticks(self) -> None:
        # (Here and in the other per-action code, min(a, b) is written ``b if b < a else a`` and max(a, b)
        # ``b if b > a else a``: the same value, the same object, NaN included, without a builtin call, which
        # costs ~50 ns more; ~45,000 of them a 360 s case.)
        tick = self.tick
        m = int((self.t - self.next_tick) // tick) + 1
        a = self._acc if m == 1 else [x / m for x in self._acc]  # (x / 1 is x)
        self._acc = [0.0] * 12
        fe = self._fe
        fe_req, fe_prompt = fe[0] / m, fe[1] / m
        self._fe = [0, 0]
        c_req, c_prompt, c_tok = self.frontend_costs
        # What this pod's own processes wanted: the engine core while it had work, the frontend (one asyncio
        # thread: at most a core) for the requests and tokens it handled, and the pod's background.
        frontend = c_req * fe_req + c_prompt * fe_prompt + c_tok * a[4]
        frontend = frontend if frontend < tick else tick  # noqa: FURB136 - min(tick, frontend)
        engine_cores = ENGINE_CORE_CORES
        if self.gpu.poll_cores and a[3] > 0:  # a busy-polling engine: its demand grows with the mean batch
            engine_cores = max(engine_cores, self.gpu.poll_cores
                               + self.gpu.poll_cores_per_seq * max(0.0, a[4] / a[3] - 1.0))
        a6 = a[6] if a[6] < tick else tick  # noqa: FURB136 - min(tick, a[6])
        a7 = a[7] if a[7] < tick else tick  # noqa: FURB136
        demand = self.background_cores + (engine_cores * a6 + frontend) / tick
        rows = self.log.rows
        gs = self.gs
        limits = self._limits
        for _ in range(m):
            end = self.next_tick
            a0 = a[0]
            busy = a0 / tick
            if 1.0 < busy:  # noqa: PLR1730 - busy = min(busy, 1.0)
                busy = 1.0
            mem_share = a[1] / a0 if a0 > 0 else 0.9
            comp_share = a[2] / a0 if a0 > 0 else 0.0
            i = int((end + 0.5 * tick - self._env_t0) / tick)  # the tick that starts now
            limit = limits[i - 1 if 0 < i <= len(limits) else -1]  # the limit the closing tick ran under
            gs.close_tick(tick, tick if tick < a0 else a0, a[8], a[9], a[10])  # noqa: FURB136 - min(a0, tick)
            f_used = gs.f
            thermal = 0
            if self._thermal is not None:
                hw = self._f_cap < 1.0
                gs.thermal_violation_s += tick if hw else (tick if tick < a[11] else a[11])  # noqa: FURB136
                thermal = self._thermal_tick(i, a[11])
            if self._demand_sink is not None and i < len(self._shares):
                self._shares[i] = self._demand_sink(self.name, i, demand)
            frozen = self._frozen
            if frozen is None:  # self._gauges(), inline
                n_run = self.n + len(self.prefilling)
                kv = ((self.A + self.n * self.D + self.kv_pref) / self.block_size + 0.5 * n_run) / self.blocks_total
                waiting = len(self.waiting)
            else:
                n_run, waiting, kv = frozen
            rows.append((end, n_run, waiting, kv if kv < 1.0 else 1.0, f_used, gs.power_w, gs.temp_c,  # noqa: FURB136
                         gs.mem_temp_c, busy, mem_share, comp_share, a[3], a[4], a[5],
                         a6, a7, 1.0 if gs.capped else 0.0,
                         gs.energy_j, gs.power_violation_s, self._preempt_total, self._prefix_q, self._prefix_h,
                         limit, demand, self.fb_used_bytes, thermal, gs.thermal_violation_s))
            self.next_tick = end + tick
        self._set_factors(self.next_tick - 0.5 * tick)

    def observations(self) -> dict[str, np.ndarray]:
        """Inter-token latencies and iteration sizes, weighted (time, value, weight)."""
        # (Python numbers, three per observation: each converts to float64 as it would from its own column's list)
        itl = np.fromiter(self._itl, dtype=float, count=len(self._itl)).reshape(-1, 3).T.copy()
        it = np.fromiter(self._iter, dtype=float, count=len(self._iter)).reshape(-1, 3).T.copy()
        return {"itl_t": itl[0], "itl_v": itl[1], "itl_w": itl[2], "iter_t": it[0], "iter_v": it[1], "iter_w": it[2]}
