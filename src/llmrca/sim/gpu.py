"""GPU physics per replica: roofline step times, power, the clock a power limit allows, temperature.

* Step time (roofline): prefill is compute-bound (``2 * params`` FLOPs per token at ``mfu`` of peak, scaled by the
  SM clock fraction ``f``); decode is memory-bound (weights plus the KV cache read once per step at ``bw_eff`` of
  peak HBM bandwidth). The SMs keep HBM saturated only above a clock ``knee``; below it the achieved bandwidth
  falls with the clock, which gives decode its flat-then-steep response to power caps (CALIBRATION.md).
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
        self.power_violation_s += min(clipped_s, dt)
        self.f = clock_s / busy_s if busy_s > 0 else 1.0
        # DCGM's clock-event reason is a sample: the power-cap bit shows when the limit held most of the tick.
        self.capped = clipped_s >= 0.5 * dt
        if self._dt != dt:
            self._dt = dt
            self._a = 1.0 - math.exp(-dt / g.thermal_tau_s)
            self._b = 1.0 - math.exp(-dt / (1.5 * g.thermal_tau_s))
        a, b = self._a, self._b
        self.temp_c += (self.ambient_c + g.thermal_r * self.power_w - self.temp_c) * a
        self.mem_temp_c += (self.ambient_c + 4.0 + 0.9 * g.thermal_r * self.power_w - self.mem_temp_c) * b
