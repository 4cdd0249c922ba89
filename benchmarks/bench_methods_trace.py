"""Time per case of tracerca, microrank, mm-baro and pdiagnose on one simulated paper case, and (optionally)
their accuracy on a simulated suite.

    /work/venv/bin/python benchmarks/bench_methods_trace.py [--repeats 7] [--view study]
    /work/venv/bin/python benchmarks/bench_methods_trace.py --suite /tmp/paper1   # + AC@1/AC@3/Avg@5 per
    fault

The case is the paper run (360 s at 5 req/s, network delay on ray-replicas-1 at 285 s for 60 s: ~1,800
requests × 4 spans, ~10k log lines). Per method: median wall and CPU time of one ``rank`` call after a warm-up
(the logs' own templates; ``mm-baro (drain)`` mines every line with Drain3 instead), and the service rank of
the truth. ``--suite DIR`` reads a suite written by ``llmrca generate`` / ``generate_suite`` (e.g. ``paper``
with ``reps=1``: 16 cases) and prints accuracy per fault type, with dummy and baro for reference. Target: well
under 2 s per case for each method.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

from llmrca.errors import MethodError, NoAnswer
from llmrca.evaluate.scores import ac_at_k, avg_at_k
from llmrca.methods import get_method

MINE = ["tracerca", "microrank", "mm-baro", "pdiagnose"]


def _rank_or_error(method, obs):
    try:
        return method.rank(obs)
    except MethodError as e:
        return e


def _time(fn, repeats: int) -> tuple[float, float]:
    fn()  # warm-up: imports, caches
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def timing(repeats: int, view: str) -> None:
    from llmrca.faults import Injection
    from llmrca.sim import select_view, simulate

    case = simulate(fault=Injection("network", "ray-replicas-1"), seed=0)
    obs = select_view(case.observation, view) if view != "all" else case.observation
    print(f"case: {len(obs.traces)} spans, {obs.traces['trace_id'].nunique()} traces, {len(obs.logs)} log "
          f"lines, {len(obs.metric_columns)} metric columns ({view} view)")
    print(f"{'method':18s} {'wall s':>8s} {'cpu s':>8s} {'rank':>5s}")
    runs = [(m, m, {}) for m in MINE] + [("mm-baro (drain)", "mm-baro", {"templates": "drain"})]
    for label, name, params in runs:
        method = get_method(name, **params)
        wall, cpu = _time(lambda: _rank_or_error(method, obs), repeats)  # noqa: B023 - called right here
        out = _rank_or_error(method, obs)
        rank = f"{out.rank_of(case.truth.service)!s:>5s}" if not isinstance(out, Exception) else f"  -  {out}"
        print(f"{label:18s} {wall:8.3f} {cpu:8.3f} {rank}")


def accuracy(suite: str, view: str) -> None:
    from llmrca.io import load_suite
    from llmrca.sim import select_view

    methods = ["dummy", "baro", *MINE]
    ranks: dict[str, dict[str, list]] = {m: defaultdict(list) for m in methods}
    seconds: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, int] = defaultdict(int)
    abstained: dict[str, int] = defaultdict(int)
    for case in load_suite(suite):
        obs = select_view(case.observation, view) if view != "all" else case.observation
        for m in methods:
            t0 = time.perf_counter()
            try:
                rank = get_method(m).rank(obs, seed=0).rank_of(case.truth.service)
            except NoAnswer:
                rank = None  # an abstention: a miss at every k, as the evaluation counts it
                abstained[m] += 1
            except MethodError:
                rank = None  # cannot run: a miss too, counted apart
                errors[m] += 1
            seconds[m].append(time.perf_counter() - t0)
            ranks[m][case.truth.fault_type].append(rank)
    faults = sorted({f for m in methods for f in ranks[m]})
    n = len(next(iter(seconds.values())))
    print(f"\n{suite}: {n} cases, {view} view; cells AC@1 / AC@3 / Avg@5 at service level; a no answer "
          "(NoAnswer) and an error (another MethodError) count as misses")
    head = [f"{f:>16s}" for f in [*faults, "all"]]
    print(f"{'method':11s}", *head, f"{'s/case':>8s}", f"{'no answer':>10s}", f"{'errors':>7s}")
    for m in methods:
        cells = []
        for f in [*faults, "all"]:
            r = [x for v in ranks[m].values() for x in v] if f == "all" else ranks[m][f]
            cells.append(f"{ac_at_k(r, 1):.2f}/{ac_at_k(r, 3):.2f}/{avg_at_k(r, 5):.2f}")
        print(f"{m:11s}", *(f"{c:>16s}" for c in cells), f"{statistics.mean(seconds[m]):8.3f}",
              f"{abstained[m]:>10d}", f"{errors[m]:>7d}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--view", default="study", choices=["study", "full", "all"])
    ap.add_argument("--suite", default=None, help="a simulated suite folder to score the methods on")
    args = ap.parse_args()
    timing(args.repeats, args.view)
    if args.suite:
        accuracy(args.suite, args.view)


if __name__ == "__main__":
    main()
