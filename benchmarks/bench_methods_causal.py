"""Time and memory per case of the 11 graph-based metric methods (PC/FCI/Granger/LiNGAM × PageRank/random walk,
causalai, microcause, rcd).

    /work/venv/bin/python benchmarks/bench_methods_causal.py [--repeats 3] [--only rcd,pc-pagerank] [--skip-large]
        [--only-large] [--no-warmup] [--no-memory]

Cases: (a) a planted case of 13 services × 3 metrics (39 columns, 120 rows in the window: the size of a
``paper``-suite case in the study view); (b) a planted case of 67 services × 3 metrics (201 columns, 120 rows);
(c) when the simulator is available, a real ``paper``-suite case (study view; and the full view, ~300 columns).
Prints, per method and case, the median wall and CPU seconds of one ``rank`` call, the peak of traced Python
memory of one more call (tracemalloc, numpy included; run apart from the timed calls) and the service rank of the true root; a method that raises (e.g. LiNGAM
on more columns than rows) shows its error. Reference (RCAEval, 64-service Train Ticket, 8 CPUs): RCD 12.4 s,
LiNGAM-PR 16.1, PC-PR 130, FCI-PR 155, Granger-PR 196, CausalAI 643, MicroCause > 7200.
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc
from dataclasses import replace

import networkx as nx

from llmrca.errors import LlmrcaError
from llmrca.methods import get_method
from llmrca.synthetic import planted_case

METHODS = [
    "pc-pagerank", "pc-randomwalk", "fci-pagerank", "fci-randomwalk", "granger-pagerank", "granger-randomwalk",
    "lingam-pagerank", "lingam-randomwalk", "causalai", "microcause", "rcd",
]


def with_entry(case):
    """planted_case declares no entry: use the first sink downstream of the root, where the fault arrives."""
    topo = case.observation.topology
    G = nx.DiGraph(list(topo.edges))
    G.add_nodes_from(topo.services)
    reached = nx.descendants(G, case.truth.service) | {case.truth.service}
    sink = min(s for s in reached if G.out_degree(s) == 0)
    return replace(case, observation=replace(case.observation, topology=replace(topo, entry=sink)))


def cases(skip_large: bool) -> list[tuple[str, object]]:
    out = [("planted 39 col", with_entry(planted_case(n_services=13, edge_prob=0.2, seed=1)))]
    if not skip_large:
        out.append(("planted 201 col", with_entry(planted_case(n_services=67, edge_prob=0.05, seed=1))))
    try:
        from llmrca.sim import select_view
        from llmrca.sim.run import simulate
        from llmrca.sim.suites import plan
    except ImportError:
        return out
    spec = next(s for s in plan("paper", reps=1) if s.injection.fault == "cpu")
    real = simulate(spec.config, spec.injection, spec.seed, traces=False, logs=False)
    out.append((f"paper {spec.case_id} study", select_view(real, "study")))
    if not skip_large:
        out.append((f"paper {spec.case_id} full", real))
    return out


def timed(method, obs) -> tuple[float, float, object]:
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        result = method.rank(obs, seed=0)
    except LlmrcaError as e:
        result = e
    return time.perf_counter() - t0, time.process_time() - c0, result


def peak_mib(method, obs) -> float:
    """Peak traced memory of one call (a separate run: tracing slows Python-heavy code several-fold)."""
    tracemalloc.start()
    try:
        method.rank(obs, seed=0)
    except LlmrcaError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", default=",".join(METHODS))
    ap.add_argument("--skip-large", action="store_true", help="only the ~40-column cases")
    ap.add_argument("--only-large", action="store_true", help="only the ~200-300-column cases")
    ap.add_argument("--no-warmup", action="store_true", help="no untimed first call per method and case")
    ap.add_argument("--no-memory", action="store_true", help="skip the tracemalloc run (peak shown as nan)")
    args = ap.parse_args()
    chosen = [m.strip() for m in args.only.split(",") if m.strip()]
    all_cases = cases(args.skip_large)
    if args.only_large:
        all_cases = [(label, c) for label, c in all_cases if len(c.observation.metric_columns) > 100]
    print(f"{'case':34s} {'method':20s} {'cols':>5s} {'rows':>5s} {'wall s':>8s} {'cpu s':>8s} {'peak MiB':>9s}  rank")
    totals: dict[str, float] = {}
    for label, case in all_cases:
        obs = case.observation
        from llmrca.methods.window import metric_window

        rows = len(metric_window(obs).times)
        for name in chosen:
            method = get_method(name)
            if not args.no_warmup:
                try:
                    method.rank(obs, seed=0)  # warm-up: imports, caches
                except LlmrcaError:
                    pass
            runs = [timed(method, obs) for _ in range(max(1, args.repeats))]
            wall = statistics.median(r[0] for r in runs)
            cpu = statistics.median(r[1] for r in runs)
            peak = float("nan") if args.no_memory else peak_mib(method, obs)
            res = runs[0][2]
            shown = f"{res.rank_of(case.truth.service)}" if not isinstance(res, Exception) else f"ERROR {res}"
            totals[label] = totals.get(label, 0.0) + wall
            print(f"{label:34s} {name:20s} {len(obs.metric_columns):5d} {rows:5d} {wall:8.3f} {cpu:8.3f} "
                  f"{peak:9.1f}  {shown[:90]}", flush=True)
    for label, total in totals.items():
        print(f"total wall for {len(chosen)} methods on {label}: {total:.2f} s")


if __name__ == "__main__":
    main()
