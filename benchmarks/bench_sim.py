"""How fast the simulator is: one 360 s case of the `paper` suite (core, traces, logs, writing), and a whole suite.

    python benchmarks/bench_sim.py                 # one case, 10 repetitions each, plus the 160-case suite on 2 cores
    python benchmarks/bench_sim.py --no-suite      # one case only
    python benchmarks/bench_sim.py --no-suite --profile 20   # and where the CPU time of a case goes (cProfile)
    python benchmarks/bench_sim.py --no-suite --stages 20    # a case's CPU split by stage, and its engine actions
    python benchmarks/bench_sim.py --jobs 4 --suite demo
    python benchmarks/bench_sim.py --no-suite --baseline /tmp/base   # before/after: a case's CPU, this code vs
                                                   # the llmrca under /tmp/base/src (e.g. `git archive 09b922c src`)

"One case" is `llmrca.sim.run.simulate`: the run (engine + metrics) and its traces and logs, as a `Case` in memory
(the issue's "one 360-s case with traces and logs"); writing it to disk (`save_case`: parquet and JSON) is timed on
its own and in the row "case + write". Every stage is timed by the CPU time of this process (time.process_time:
what other load on the machine changes least) and by wall time, median of the repetitions; "x real time" is the
case's 360 s of simulated time over that.

Goal (issue 17): one 360 s case with traces and logs in <= 0.036 s of CPU (>= 10,000x real time by CPU);
issue 11's goal was < 0.36 s (>= 1,000x).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from llmrca.faults import Injection
from llmrca.io import save_case
from llmrca.sim.config import SimConfig
from llmrca.sim.logs import logs_from_record
from llmrca.sim.run import run, simulate
from llmrca.sim.suites import generate_suite, plan
from llmrca.sim.traces import spans_from_record

GOAL_X_REAL_TIME = 10_000  # issue 17: one case with traces and logs, by CPU


def _time(fn, reps: int) -> tuple[float, float]:
    """Median wall time and median CPU time of this process (robust to other load on the machine)."""
    wall, cpu = [], []
    for i in range(reps):
        t, c = time.perf_counter(), time.process_time()
        fn(i)
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu)


def one_case(reps: int) -> list[tuple[str, float, float]]:
    cfg = SimConfig()
    faults = ["cpu", "memory", "network", "gpu"]

    def inj(i: int) -> Injection:
        return Injection(faults[i % 4], "ray-replicas-1")

    simulate(cfg, inj(0), seed=0)  # warm imports and caches
    rows = [("core (engine + metrics)", *_time(lambda i: run(cfg, inj(i), seed=i), reps))]
    recs = [run(cfg, inj(i), seed=i).record for i in range(reps)]
    rows.append(("traces (spans_from_record)", *_time(lambda i: spans_from_record(recs[i]), reps)))
    rows.append(("logs (logs_from_record)", *_time(lambda i: logs_from_record(recs[i]), reps)))
    rows.append(("case: core + traces + logs", *_time(lambda i: simulate(cfg, inj(i), seed=i), reps)))
    with tempfile.TemporaryDirectory() as d:
        cases = [simulate(cfg, inj(i), seed=i) for i in range(reps)]
        rows.append(("write (save_case)", *_time(lambda i: save_case(cases[i], Path(d) / str(i)), reps)))
        rows.append(("case + write", *_time(lambda i: save_case(simulate(cfg, inj(i), seed=i),
                                                                Path(d) / f"w{i}"), reps)))
    return rows


def profile(reps: int, top: int = 25) -> None:
    """cProfile over ``reps`` cases (simulate, in memory): the functions with the most CPU time of their own."""
    import cProfile
    import pstats

    cfg = SimConfig()
    faults = ["cpu", "memory", "network", "gpu"]
    simulate(cfg, Injection("cpu", "ray-replicas-1"), seed=0)
    prof = cProfile.Profile(time.process_time)
    prof.enable()
    for i in range(reps):
        simulate(cfg, Injection(faults[i % 4], "ray-replicas-1"), seed=i)
    prof.disable()
    print(f"\ncProfile of {reps} cases (CPU s, all cases; the profiler slows Python code more than numpy code)")
    pstats.Stats(prof).sort_stats("tottime").print_stats(top)


# The stages of ``simulate`` timed by --stages: (label, module, attribute); a method as "Class.name".
_STAGES = (
    ("engine + router (_route_all, drain)", "llmrca.sim.run", "_route_all"),
    ("engine + router (_route_all, drain)", "llmrca.sim.engine", "ReplicaEngine.drain"),
    ("metrics (build_metrics)", "llmrca.sim.metrics", "build_metrics"),
    ("request table (_requests_frame)", "llmrca.sim.run", "_requests_frame"),
    ("record view (traces.view)", "llmrca.sim.traces", "view"),
    ("spans (spans_from_record)", "llmrca.sim.traces", "spans_from_record"),
    ("logs (logs_from_record)", "llmrca.sim.logs", "logs_from_record"),
)
# The engine's Python-level actions, counted by --stages (in a separate, untimed pass).
_ACTIONS = (("mixed steps (admit/prefill)", "llmrca.sim.engine", "ReplicaEngine._mixed_step"),
            ("decode stretches", "llmrca.sim.engine", "ReplicaEngine._commit"),
            ("control ticks", "llmrca.sim.engine", "ReplicaEngine._ticks"),
            ("advance calls", "llmrca.sim.engine", "ReplicaEngine.advance"))


def _patch(module: str, attr: str, wrap):  # -> undo
    import importlib

    mod = importlib.import_module(module)
    owner, name = (getattr(mod, attr.split(".")[0]), attr.split(".")[1]) if "." in attr else (mod, attr)
    orig = getattr(owner, name)
    setattr(owner, name, wrap(orig))
    return lambda: setattr(owner, name, orig)


def stages(reps: int) -> None:
    """A case's CPU split by stage of ``simulate`` (each stage's function timed by ``time.process_time`` around
    it, summed per case, median over ``reps`` cases; "rest" is the case minus the stages: workload, environment,
    events, ground truth, the Case, freeing the run), and the engine's actions per case."""
    cfg = SimConfig()
    faults = ["cpu", "memory", "network", "gpu"]
    spent: dict[str, float] = {}

    def timed(label: str):
        def wrap(fn):
            def inner(*a, **k):
                c = time.process_time()
                try:
                    return fn(*a, **k)
                finally:
                    spent[label] = spent.get(label, 0.0) + time.process_time() - c
            return inner
        return wrap

    undo = [_patch(m, a, timed(label)) for label, m, a in _STAGES]
    simulate(cfg, Injection("cpu", "ray-replicas-1"), seed=0)
    per: dict[str, list[float]] = {}
    total = []
    for i in range(reps):
        spent.clear()
        c = time.process_time()
        simulate(cfg, Injection(faults[i % 4], "ray-replicas-1"), seed=i)
        total.append(time.process_time() - c)
        for label in dict.fromkeys(lb for lb, _, _ in _STAGES):
            per.setdefault(label, []).append(spent.get(label, 0.0))
        per.setdefault("rest", []).append(total[-1] - sum(spent.values()))
    for u in undo:
        u()
    case = statistics.median(total)
    print(f"\na case's CPU by stage (median of {reps} cases; the timers add ~0.1 ms)")
    for label, xs in per.items():
        m = statistics.median(xs)
        print(f"{label:40s} {1000 * m:7.1f} ms  {100 * m / case:5.1f} %")
    print(f"{'case (simulate)':40s} {1000 * case:7.1f} ms  ({SimConfig().duration / case:,.0f}x real time by CPU)")
    counts: dict[str, int] = {}

    def counted(label: str):
        def wrap(fn):
            def inner(*a, **k):
                counts[label] = counts.get(label, 0) + 1
                return fn(*a, **k)
            return inner
        return wrap

    undo = [_patch(m, a, counted(label)) for label, m, a in _ACTIONS]
    n_req = []
    for i in range(reps):
        n_req.append(len(run(cfg, Injection(faults[i % 4], "ray-replicas-1"), seed=i).record.requests))
    for u in undo:
        u()
    print(f"engine actions per case (mean of {reps}, 4 replicas): {sum(n_req) / reps:,.0f} requests in the window, "
          + ", ".join(f"{label} {counts.get(label, 0) / reps:,.0f}" for label, _, _ in _ACTIONS))


_CASE_CPU = """
import statistics, sys, time
from llmrca.faults import Injection
from llmrca.sim.config import SimConfig
from llmrca.sim.run import simulate
cfg, faults, reps = SimConfig(), ["cpu", "memory", "network", "gpu"], int(sys.argv[1])
simulate(cfg, Injection("cpu", "ray-replicas-1"), seed=0)
cpu = []
for i in range(reps):
    c = time.process_time()
    simulate(cfg, Injection(faults[i % 4], "ray-replicas-1"), seed=i)
    cpu.append(time.process_time() - c)
print(statistics.median(cpu))
"""


def side_by_side(baseline: Path, reps: int, rounds: int = 3) -> None:
    """A case's median CPU (``simulate``, in memory) of this code and of the llmrca under ``baseline/src``, each
    in its own process, the two alternating ``rounds`` times (so both see the same load on the machine)."""
    here = Path(__file__).resolve().parents[1] / "src"
    trees = {"this code": here, f"baseline ({baseline})": baseline.resolve() / "src"}
    got: dict[str, list[float]] = {k: [] for k in trees}
    for _ in range(rounds):
        for name, src in trees.items():
            env = {**os.environ, "PYTHONPATH": str(src)}
            out = subprocess.run([sys.executable, "-c", _CASE_CPU, str(reps)], env=env, check=True,
                                 capture_output=True, text=True).stdout
            got[name].append(float(out.split()[-1]))
    print(f"\nside by side: a case's CPU (median of {reps} cases per process, {rounds} alternating processes each)")
    for name, xs in got.items():
        m = statistics.median(xs)
        print(f"{name:40s} {m:6.3f} s  ({SimConfig().duration / m:,.0f}x real time by CPU)  runs: "
              + " ".join(f"{x:.3f}" for x in xs))
    a, b = (statistics.median(xs) for xs in got.values())
    print(f"speed-up: {b / a:.2f}x")


def suite(name: str, jobs: int) -> tuple[int, float]:
    n = len(plan(name))
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        generate_suite(name, Path(d) / name, jobs=jobs, progress=False)
        return n, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--suite", default="paper")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--no-suite", action="store_true")
    ap.add_argument("--profile", type=int, default=0, metavar="N", help="cProfile N cases after the timings")
    ap.add_argument("--stages", type=int, default=0, metavar="N", help="split N cases' CPU by stage")
    ap.add_argument("--baseline", type=Path, metavar="DIR",
                    help="also time a case with the llmrca under DIR/src, alternating with this code")
    a = ap.parse_args()
    duration = SimConfig().duration
    print(f"one {duration:.0f} s case (A100, 7B, 4 replicas, 5 req/s), {a.reps} runs, one core")
    print(f"{'stage':32s} {'wall s':>8s} {'cpu s':>8s} {'x real time (cpu)':>18s} {'x real time (wall)':>19s}")
    rows = one_case(a.reps)
    for name, wall, cpu in rows:
        print(f"{name:32s} {wall:8.3f} {cpu:8.3f} {duration / cpu:18.0f} {duration / wall:19.0f}")
    case_cpu = next(cpu for name, _, cpu in rows if name.startswith("case:"))
    goal = duration / GOAL_X_REAL_TIME
    print(f"goal (issue 17): a case in <= {goal:.3f} s of CPU (>= {GOAL_X_REAL_TIME:,}x real time): "
          f"{'met' if case_cpu <= goal else 'not met'} ({case_cpu:.3f} s, {duration / case_cpu:,.0f}x)")
    if a.profile:
        profile(a.profile)
    if a.stages:
        stages(a.stages)
    if a.baseline:
        side_by_side(a.baseline, a.reps)
    if not a.no_suite:
        n, secs = suite(a.suite, a.jobs)
        print(f"\nsuite {a.suite!r}: {n} cases written with {a.jobs} worker(s) in {secs:.1f} s "
              f"({secs / n:.3f} s per case)")


if __name__ == "__main__":
    main()
