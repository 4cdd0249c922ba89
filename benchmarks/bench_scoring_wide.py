"""AC@1 of BARO and N-Sigma per fault in the study and full views, 4 and 8 replicas, and their top column and score
on fault-free runs: how the shared scaling (``llmrca.methods.scoring``) holds up when the view is wide.

    python benchmarks/bench_scoring_wide.py                       # 6 cases per fault, default config
    python benchmarks/bench_scoring_wide.py --reps 3 mesh_quantiles=exact noise=none

Fault cases rotate their target over ray-replicas-1, ray-head and ray-replicas-(R-2) (seeds 100+); fault-free runs
use seeds 200 and 201. Extra ``key=value`` arguments are SimConfig fields (strings, numbers as written).
"""

from __future__ import annotations

import argparse

from llmrca.evaluate.scores import truth_ranks
from llmrca.faults import Injection
from llmrca.methods.registry import get_method
from llmrca.sim import SimConfig, select_view, simulate

FAULTS = ("cpu", "memory", "network", "gpu")
METHODS = ("baro", "nsigma")


def _value(text: str) -> object:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument("fields", nargs="*", help="SimConfig overrides, key=value")
    a = ap.parse_args()
    kw = {k: _value(v) for k, v in (f.split("=", 1) for f in a.fields)}
    for replicas in (4, 8):
        cfg = SimConfig(replicas=replicas, **kw)
        targets = ["ray-replicas-1", "ray-head", f"ray-replicas-{replicas - 2}"]
        cases = {f: [simulate(cfg, Injection(f, targets[s % 3]), seed=100 + s, traces=False, logs=False)
                     for s in range(a.reps)] for f in FAULTS}
        normals = [simulate(cfg, None, seed=200 + s, traces=False, logs=False) for s in range(2)]
        for view in ("study", "full"):
            parts = []
            for name in METHODS:
                m = get_method(name)
                acc = []
                for f in FAULTS:
                    hits = 0
                    for c in cases[f]:
                        obs = select_view(c.observation, view)
                        hits += truth_ranks(m.rank(obs), c.truth, obs).rank == 1
                    acc.append(f"{f} {hits / a.reps:.2f}")
                tops = []
                for c in normals:
                    r = m.rank(select_view(c.observation, view))
                    tops.append(f"{r.candidates[0]} {r.scores[0]:.3g}")
                parts.append(f"{name}: {', '.join(acc)}; fault-free top: {'; '.join(tops)}")
            print(f"{replicas} replicas, {view} view | " + " | ".join(parts), flush=True)


if __name__ == "__main__":
    main()
