"""Time and accuracy of the PC / FCI / Granger graph methods at 200 and 1,000 columns.

    PYTHONPATH=src python benchmarks/graphs_scale.py [--sizes 200,1000] [--cases 3] [--timeout 60]
        [--only pc-pagerank,granger-randomwalk] [--reference 1]

Cases: ``llmrca.synthetic.planted_case`` with 3 metrics per service (67 services = 201 columns, 334 = 1,002),
240 rows (the default 60-row window each side of the injection: 120 rows reach the method), a sparse random DAG
whose expected number of parents per service stays the same at every size (``edge_prob = 3.3 / services``, as
the 201-column case of ``bench_methods_causal.py``: 0.05), and ``frontend=True`` so the random-walk heads have
an entry service. Per method and size: the median wall seconds of one ``rank`` call over the cases (each with
``timeout_s`` = ``--timeout``, so the method's own budget is what stops it), how many cases ran past the budget
or failed, and accuracy: AC@1, AC@5 and Avg@5 of the true root service over the cases (a service's rank is that
of its first column), and ``rank%``: the mean of (rank − 1) / (services − 1) (0 = always first, ~0.5 = chance,
1 = a failed case), which compares sizes where AC@5 is 0 at both.

``--reference N``: first, side by side on the window of the first N cases of the smallest size, the PC and FCI
builders against causal-learn's own ``pc(stable=True, max_k=3)`` and ``fci(depth=3)`` (seconds, ratio, and
whether the graphs are equal; FCI's differ where a possible-D-SEP set exceeds ``max_cond``, see docs/methods.md).
"""

from __future__ import annotations

import argparse
import statistics
import time

from llmrca.errors import LlmrcaError
from llmrca.methods import get_method
from llmrca.synthetic import planted_case

METHODS = ["pc-pagerank", "pc-randomwalk", "fci-pagerank", "fci-randomwalk", "granger-pagerank", "granger-randomwalk"]


def case(columns: int, seed: int):
    services = max(2, round(columns / 3))
    return planted_case(n_services=services, edge_prob=min(0.3, 3.3 / services), frontend=True, seed=seed)


def reference(cases) -> None:
    import contextlib
    import io
    import warnings

    import numpy as np
    from causallearn.search.ConstraintBased.FCI import fci
    from causallearn.search.ConstraintBased.PC import pc

    from llmrca.methods import causal_graphs as cg
    from llmrca.methods.window import metric_window

    for c in cases:
        w = metric_window(c.observation)
        u = cg.usable_columns(w.values, w.columns)
        X = u.data
        quiet = contextlib.redirect_stdout(io.StringIO())  # causal-learn's FCI prints its steps
        with warnings.catch_warnings(), quiet:
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            ours = cg._pc_stable(X, u.names, cg.BudgetedCIT(X), 0.05, 3)
            t1 = time.perf_counter()
            theirs = pc(X, 0.05, "fisherz", stable=True, max_k=3, show_progress=False).G.graph
            t2 = time.perf_counter()
            same_pc = bool(np.array_equal(ours, theirs))
            pc_t = (t1 - t0, t2 - t1)
            t0 = time.perf_counter()
            ours = cg._fci(X, u.names, cg.BudgetedCIT(X), 0.05, 3, -1)
            t1 = time.perf_counter()
            theirs = fci(X, "fisherz", 0.05, depth=3, show_progress=False)[0].graph
            t2 = time.perf_counter()
            same_fci = bool(np.array_equal(ours, theirs))
            fci_t = (t1 - t0, t2 - t1)
        for what, (a, b), same in (("PC ", pc_t, same_pc), ("FCI", fci_t, same_fci)):
            print(f"{what} {X.shape[1]} cols: llmrca {a:.2f} s, causal-learn {b:.2f} s ({b / a:.0f}x), "
                  f"same {'CPDAG' if what == 'PC ' else 'PAG'}: {same}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="200,1000")
    ap.add_argument("--cases", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--only", default="")
    ap.add_argument("--reference", type=int, default=0)
    args = ap.parse_args()
    methods = [m for m in METHODS if not args.only or m in args.only.split(",")]
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.reference:
        reference([case(min(sizes), s) for s in range(args.reference)])
    print(f"{'method':20s} {'cols':>5s} {'median s':>9s} {'max s':>7s} {'failed':>6s} {'AC@1':>5s} {'AC@5':>5s} "
          f"{'Avg@5':>5s} {'rank%':>5s}")
    for size in sizes:
        cases = [case(size, s) for s in range(args.cases)]
        for name in methods:
            secs, ranks, failed = [], [], []
            for c in cases:
                m = get_method(name, timeout_s=args.timeout)
                t0 = time.perf_counter()
                try:
                    r = m.rank(c.observation, seed=0)
                    ranks.append(r.rank_of(c.truth.service))
                except LlmrcaError as e:
                    failed.append(str(e).splitlines()[0][:100])
                    ranks.append(None)
                secs.append(time.perf_counter() - t0)
            ac = [sum(1 for r in ranks if r is not None and r <= k) / len(ranks) for k in range(1, 6)]
            n_svc = len(cases[0].observation.topology.services)
            rel = statistics.mean(1.0 if r is None else (r - 1) / (n_svc - 1) for r in ranks)
            cols = cases[0].observation.metrics.shape[1] - 1
            print(f"{name:20s} {cols:5d} {statistics.median(secs):9.2f} {max(secs):7.2f} {len(failed):6d} "
                  f"{ac[0]:5.2f} {ac[4]:5.2f} {sum(ac) / 5:5.2f} {rel:5.2f}", flush=True)
            for f in dict.fromkeys(failed):
                print(f"    failed: {f}")


if __name__ == "__main__":
    main()
