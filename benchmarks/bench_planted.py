"""Accuracy of every metric method on the project's planted-root benchmark (the answer is known).

    python benchmarks/bench_planted.py [--seeds 10] [--services 8] [--methods all-metric]

Cases: ``llmrca.synthetic.planted_case`` with an entry service (``frontend=True``), linear and non-linear SEMs over
a random DAG, a mean and variance shift on the root's first metric from ``inject_time`` on, propagating to its
descendants through the model. Prints each method's service-level AC@1, AC@3 and Avg@5 per SEM kind and overall,
the failures, and the mean time per case; the issue's bar: circa, rcd, baro and nsigma at Avg@5 >= 0.8.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from llmrca.errors import LlmrcaError
from llmrca.evaluate import ac_at_k, avg_at_k
from llmrca.methods import entries, get_method
from llmrca.synthetic import planted_case

BAR = {"circa": 0.8, "rcd": 0.8, "baro": 0.8, "nsigma": 0.8}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--services", type=int, default=8)
    ap.add_argument("--methods", default="all-metric", help="'all-metric' or a comma list")
    args = ap.parse_args()
    names = ([e.name for e in entries() if e.family == "metric"] if args.methods == "all-metric"
             else [m.strip() for m in args.methods.split(",")])
    cases = [(kind, planted_case(n_services=args.services, nonlinear=kind == "non-linear", frontend=True, seed=s))
             for kind in ("linear", "non-linear") for s in range(args.seeds)]
    print(f"{len(cases)} planted cases ({args.seeds} seeds × linear/non-linear), {args.services} services + frontend,"
          f" 3 metrics each; service level\n")
    print(f"{'method':20s} {'linear Avg@5':>12s} {'non-lin Avg@5':>13s} {'AC@1':>6s} {'AC@3':>6s} {'Avg@5':>6s}"
          f" {'errors':>6s} {'s/case':>7s}  bar")
    for name in names:
        method = get_method(name)
        ranks: dict[str, list[int | None]] = {"linear": [], "non-linear": []}
        errors, seconds = 0, []
        for kind, case in cases:
            t0 = time.perf_counter()
            try:
                r = method.rank(case.observation, seed=0)
                ranks[kind].append(r.rank_of(case.truth.service))
            except LlmrcaError:
                errors += 1
                ranks[kind].append(None)
            seconds.append(time.perf_counter() - t0)
        every = ranks["linear"] + ranks["non-linear"]
        avg5 = avg_at_k(every, 5)
        bar = BAR.get(name)
        verdict = "" if bar is None else ("ok" if avg5 >= bar else f"BELOW {bar}")
        print(f"{name:20s} {avg_at_k(ranks['linear'], 5):12.2f} {avg_at_k(ranks['non-linear'], 5):13.2f} "
              f"{ac_at_k(every, 1):6.2f} {ac_at_k(every, 3):6.2f} {avg5:6.2f} {errors:6d} "
              f"{np.mean(seconds):7.3f}  {verdict}", flush=True)
    n = args.services + 1
    print(f"\nchance: AC@1 {1 / n:.2f}, Avg@5 {np.mean([min(k, n) / n for k in range(1, 6)]):.2f}")


if __name__ == "__main__":
    main()
