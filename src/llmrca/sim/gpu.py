"""GPU physics per replica: roofline step times, power, the clock a power limit allows, temperature.

* Step time (roofline): prefill is compute-bound (``2 * params`` FLOPs per token at ``mfu`` of peak, scaled by the
  SM clock fraction ``f``); decode is memory-bound (weights plus the KV cache read once per step at ``bw_eff`` of
  peak HBM bandwidth). The SMs keep HBM saturated only above a clock ``knee``; below it the achieved bandwidth
  falls with the clock, which gives decode its flat-then-steep response to power caps (the published cap measurements listed in benchmarks/bench_physics.py).
* Power: ``idle + duty * (p_mem * mem_share * g(f) + p_sm * (0.35 + 0.65 * compute_share) * f**power_exp)``.
* Power limit: the GPU's power management acts within tens of milliseconds, far faster than the 1 s tick, so the
  clock is chosen per engine step: the highest clock at which that step's own draw (its kernels' activity, diluted
  by the CPU-side gap of the step) stays under the limit. A prefill burst above the cap is clipped even when the
  1 s average is below it; a decode step that fits runs at full clock. Below the minimum clock the GPU cannot go:
  it then draws more than the limit (as real boards do at their floor).
* The tick (1 s) only integrates what the steps did: energy, mean power (what DCGM's ``power_usage`` averages),
  the busy-time mean clock, the time spent clipped (power violation), and temperature.
* Temperature: first-order lag towards ``ambient + thermal_r * power`` with ``thermal_tau_s``; HBM runs a few
  degrees warmer and lags more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from llmrca.sim.hardware import GpuKind

CLOCK_REASON_IDLE = 0x1
CLOCK_REASON_SW_POWER_CAP = 0x4
CLOCK_REASON_SW_THERMAL = 0x20
CLOCK_REASON_HW_THERMAL = 0x40
HW_SLOWDOWN_CLOCK = 0.5  # hardware thermal slowdown cuts the clock by half (NVML: "by a factor of two or more")


def bandwidth_factor(f: float, knee: float) -> float:
    return 1.0 if f >= knee else f / knee


def busy_power(gpu: GpuKind, f: float, mem_share: float, comp_share: float) -> float:
    """Power above idle while kernels run, at clock fraction ``f``."""
    return (gpu.p_mem_w * mem_share * bandwidth_factor(f, gpu.knee)
            + gpu.p_sm_w * (0.35 + 0.65 * comp_share) * f**gpu.power_exp)


def clock_under_limit(gpu: GpuKind, limit_w: float, busy: float, mem_share: float, comp_share: float) -> float:
    """Highest clock fraction whose average power ``idle + busy * busy_power(f)`` stays under ``limit_w``."""
    f_min = gpu.sm_clock_min_mhz / gpu.sm_clock_mhz
    if busy <= 1e-6:
        return 1.0
    budget = (limit_w - gpu.idle_w) / busy
    if busy_power(gpu, 1.0, mem_share, comp_share) <= budget:
        return 1.0
    sm = gpu.p_sm_w * (0.35 + 0.65 * comp_share)
    rest = budget - gpu.p_mem_w * mem_share
    if rest > 0:
        f = (rest / sm) ** (1.0 / gpu.power_exp)
        if f >= gpu.knee:
            return max(f_min, min(1.0, f))
    lo, hi = f_min, gpu.knee  # below the knee memory power falls with the clock too: bisection
    if busy_power(gpu, lo, mem_share, comp_share) >= budget:
        return f_min
    for _ in range(20):
        mid = 0.5 * (lo + hi)
        if busy_power(gpu, mid, mem_share, comp_share) <= budget:
            lo = mid
        else:
            hi = mid
    return lo


def step_at_limit(gpu: GpuKind, limit_w: float, mem1: float, comp1: float, other_s: float
                  ) -> tuple[float, float, float, float, float]:
    """One engine step under a power limit: ``(f, gpu_s, mem_s, comp_s, busy_w)``.

    ``mem1``/``comp1`` are the step's memory and compute times at full clock, ``other_s`` the rest of the step
    (CPU-side work) during which the GPU idles. The clock is the highest at which the step's draw stays under the
    limit; at a lower clock the kernels take longer, so the duty rises and the clock is sized again for it.
    ``busy_w`` is the power above idle while the kernels run (energy = ``busy_w * gpu_s``).
    """
    launch = gpu.launch_s
    gpu_s = (max(comp1, mem1)) + launch
    ms, cs = mem1 / gpu_s, comp1 / gpu_s
    p1 = busy_power(gpu, 1.0, ms, cs)
    if gpu.idle_w + p1 * gpu_s / (gpu_s + other_s) <= limit_w:
        return 1.0, gpu_s, mem1, comp1, p1
    f = 1.0
    f_min = gpu.sm_clock_min_mhz / gpu.sm_clock_mhz
    for _ in range(6):  # converges in two or three rounds; a round more only where the duty moved a lot
        f = clock_under_limit(gpu, limit_w, gpu_s / (gpu_s + other_s), ms, cs)
        mem, comp = mem1 / bandwidth_factor(f, gpu.knee), comp1 / f
        gpu_s = (max(comp, mem)) + launch / f
        ms, cs = mem / gpu_s, comp / gpu_s
        p = busy_power(gpu, f, ms, cs)
        if f <= f_min or gpu.idle_w + p * gpu_s / (gpu_s + other_s) <= limit_w + 1e-9:
            break
    return f, gpu_s, mem, comp, p


def step_capped(gpu: GpuKind, limit_w: float, mem1: float, comp1: float, other_s: float, f_cap: float
                ) -> tuple[float, float, float, float, float]:
    """``step_at_limit`` with the clock held at or below ``f_cap`` (hardware thermal slowdown)."""
    out = step_at_limit(gpu, limit_w, mem1, comp1, other_s)
    if out[0] <= f_cap:
        return out
    f = max(f_cap, gpu.sm_clock_min_mhz / gpu.sm_clock_mhz)
    mem, comp = mem1 / bandwidth_factor(f, gpu.knee), comp1 / f
    gpu_s = max(comp, mem) + gpu.launch_s / f
    return f, gpu_s, mem, comp, busy_power(gpu, f, mem / gpu_s, comp / gpu_s)


def thermal_control(gpu: GpuKind, temp_c: float, ambient_c: float, r_factor: float) -> tuple[float, bool]:
    """The driver's thermal control for the next tick: ``(power budget W, hardware slowdown)``.

    Below the thermal target (``slowdown_c - SW_THERMAL_MARGIN_C``) nothing binds (an infinite budget). At or above
    it the software control picks the clock whose draw brings the temperature back to the target: the steady-state
    power ``(target - ambient) / R`` less what the excess needs to dissipate (``R`` the thermal resistance now); the
    step's clock then follows from the power model as under a power cap. At the slowdown temperature (even the
    lowest clock could not hold the target) hardware slowdown halves the clock as well."""
    from llmrca.sim.hardware import SW_THERMAL_MARGIN_C

    target = gpu.slowdown_c - SW_THERMAL_MARGIN_C
    if temp_c < target - 0.5:
        return math.inf, False
    r = gpu.thermal_r * r_factor
    return (2.0 * target - temp_c - ambient_c) / r, temp_c >= gpu.slowdown_c


@dataclass
class GpuState:
    """The GPU's slow state (power reading, energy, temperature), closed once per engine tick from its steps."""

    gpu: GpuKind
    ambient_c: float
    temp_c: float
    mem_temp_c: float
    f: float = 1.0  # busy-time mean SM clock fraction of the last tick
    power_w: float = 0.0
    capped: bool = False
    energy_j: float = 0.0
    power_violation_s: float = 0.0
    r_factor: float = 1.0  # thermal resistance to the air as a multiple of the healthy one (degraded cooling)
    thermal_violation_s: float = 0.0
    _dt: float = 0.0
    _a: float = 0.0
    _b: float = 0.0

    def close_tick(self, dt: float, busy_s: float, busy_j: float, clock_s: float, clipped_s: float) -> None:
        """Close a tick of length ``dt``: ``busy_s`` of kernel time drew ``busy_j`` above idle, ``clock_s`` is the
        integral of the clock fraction over the kernel time and ``clipped_s`` the time the power limit held the
        clock down."""
        g = self.gpu
        self.power_w = g.idle_w + busy_j / dt
        self.energy_j += self.power_w * dt
        self.power_violation_s += dt if dt < clipped_s else clipped_s  # noqa: FURB136 - min(clipped_s, dt), no call
        self.f = clock_s / busy_s if busy_s > 0 else 1.0
        # DCGM's clock-event reason is a sample: the power-cap bit shows when the limit held most of the tick.
        self.capped = clipped_s >= 0.5 * dt
        if self._dt != dt:
            self._dt = dt
            self._a = 1.0 - math.exp(-dt / g.thermal_tau_s)
            self._b = 1.0 - math.exp(-dt / (1.5 * g.thermal_tau_s))
        a, b = self._a, self._b
        rf = self.r_factor
        if rf != 1.0:  # worse cooling: higher resistance, and a longer time constant (tau = R * C)
            a = 1.0 - math.exp(-dt / (g.thermal_tau_s * rf))
            b = 1.0 - math.exp(-dt / (1.5 * g.thermal_tau_s * rf))
            self.temp_c += (self.ambient_c + g.thermal_r * rf * self.power_w - self.temp_c) * a
            self.mem_temp_c += (self.ambient_c + 4.0 + 0.9 * g.thermal_r * rf * self.power_w - self.mem_temp_c) * b
            return
        self.temp_c += (self.ambient_c + g.thermal_r * self.power_w - self.temp_c) * a
        self.mem_temp_c += (self.ambient_c + 4.0 + 0.9 * g.thermal_r * self.power_w - self.mem_temp_c) * b
