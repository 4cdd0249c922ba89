"""How noisy the simulated study view is: pre-fault variation and how far each fault stands out of it.

    python benchmarks/bench_noise.py                  # default config (noise="realistic"), seeds 0-4
    python benchmarks/bench_noise.py --noise none --mesh exact   # the clean cases of earlier versions

Per fault type (target ``ray-replicas-1``) it prints the pre-fault coefficient of variation (std/mean) of the
target's container CPU, memory and mesh p90 latency; the z of the fault on its target's study column
(``max |x - mean_pre| / std_pre`` over the fault window, N-Sigma's score); and how many study-view columns of other
services pass |z| > 3. Medians over the seeds.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np

from llmrca.case import fill_gaps
from llmrca.faults import Injection
from llmrca.sim.config import SimConfig
from llmrca.sim.run import run
from llmrca.sim.views import select_view

TARGET = "ray-replicas-1"
COLUMN = {"cpu": "ctn_cpu", "memory": "ctn_memory", "network": "latency", "gpu": "latency"}


def stats(cfg: SimConfig, fault: str, seed: int) -> dict[str, float]:
    sim = run(cfg, Injection(fault, TARGET), seed=seed)
    m = fill_gaps(select_view(sim.metrics, "study"))
    t = m["time"].to_numpy()
    pre = m[t < sim.inject_time].drop(columns="time")
    post = m[(t >= sim.inject_time) & (t < sim.inject_time + cfg.fault_duration)].drop(columns="time")
    mu, sd = pre.mean(), pre.std(ddof=0)
    z = ((post - mu).abs().max() / sd.where(sd > 0)).fillna(0.0)
    others = [c for c in m.columns if c != "time" and not c.startswith(TARGET + "_")]
    out = {f"cv_{k}": float(sd[f"{TARGET}_{k}"] / mu[f"{TARGET}_{k}"]) for k in ("ctn_cpu", "ctn_memory", "latency")}
    out["z"] = float(z[f"{TARGET}_{COLUMN[fault]}"])
    out["z_gpu"] = float(z[f"{TARGET}_ctn_gpu"])
    out["others_z3"] = float((z[others] > 3).sum())
    out["n_others"] = float(len(others))
    out["nan_share"] = float(np.isnan(select_view(sim.metrics, "study").drop(columns="time").to_numpy()).mean())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--noise", default=None, help="noise level (default: the config's default)")
    ap.add_argument("--mesh", default=None, help="mesh_quantiles (default: the config's default)")
    ap.add_argument("--seeds", type=int, default=5)
    a = ap.parse_args()
    kw = {k: v for k, v in (("noise", a.noise), ("mesh_quantiles", a.mesh)) if v is not None}
    cfg = SimConfig(**kw)
    print(f"noise={cfg.noise} mesh_quantiles={cfg.mesh_quantiles}; medians over seeds 0-{a.seeds - 1}")
    print(f"{'fault':8} {'CV cpu':>7} {'CV mem':>7} {'CV p90':>7} {'z target':>9} {'z ctn_gpu':>9} "
          f"{'others |z|>3':>13} {'NaN %':>6}")
    for fault in COLUMN:
        rows = [stats(cfg, fault, s) for s in range(a.seeds)]
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        print(f"{fault:8} {100 * med['cv_ctn_cpu']:6.2f}% {100 * med['cv_ctn_memory']:6.2f}% "
              f"{100 * med['cv_latency']:6.2f}% {med['z']:9.1f} {med['z_gpu']:9.1f} "
              f"{med['others_z3']:6.1f} of {med['n_others']:.0f} {100 * med['nan_share']:5.2f}")


if __name__ == "__main__":
    main()
