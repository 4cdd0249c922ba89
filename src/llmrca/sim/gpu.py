"""GPU physics per replica: roofline step times, power, the clock a power limit allows, temperature.

* Step time (roofline): prefill is compute-bound (``2 * params`` FLOPs per token at ``mfu`` of peak, scaled by the
  SM clock fraction ``f``); decode is memory-bound (weights plus the KV cache read once per step at ``bw_eff`` of
  peak HBM bandwidth). The SMs keep HBM saturated only above a clock ``knee``; below it the achieved bandwidth
  falls with the clock, which gives decode its flat-then-steep response to power caps (CALIBRATION.md).
* Power: ``idle + busy * (p_mem * mem_share * g(f) + p_sm * (0.35 + 0.65 * compute_share) * f**power_exp)``.
* Power limit: the driver picks the highest clock whose average power stays under the limit, from the activity it
  just saw (a control loop at the engine's tick).
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


@dataclass
class GpuState:
    """The GPU's slow state, updated once per engine tick."""

    gpu: GpuKind
    ambient_c: float
    temp_c: float
    mem_temp_c: float
    f: float = 1.0  # SM clock fraction in force until the next tick
    power_w: float = 0.0
    capped: bool = False
    energy_j: float = 0.0
    power_violation_s: float = 0.0
    _dt: float = 0.0
    _a: float = 0.0
    _b: float = 0.0

    def update(self, dt: float, busy: float, mem_share: float, comp_share: float, limit_w: float) -> None:
        """Close a tick of length ``dt`` with the activity seen in it; set the clock for the next one."""
        g = self.gpu
        busy = min(1.0, max(0.0, busy))
        self.power_w = g.idle_w + busy * busy_power(g, self.f, mem_share, comp_share)
        self.energy_j += self.power_w * dt
        if self.capped:
            self.power_violation_s += dt
        if self._dt != dt:
            self._dt = dt
            self._a = 1.0 - math.exp(-dt / g.thermal_tau_s)
            self._b = 1.0 - math.exp(-dt / (1.5 * g.thermal_tau_s))
        a, b = self._a, self._b
        self.temp_c += (self.ambient_c + g.thermal_r * self.power_w - self.temp_c) * a
        self.mem_temp_c += (self.ambient_c + 4.0 + 0.9 * g.thermal_r * self.power_w - self.mem_temp_c) * b
        # The driver sizes the clock to the activity it expects: what it just saw, never less than a light load.
        f_new = clock_under_limit(g, limit_w, max(busy, 0.3), mem_share, comp_share)
        self.capped = f_new < 1.0
        self.f = f_new
