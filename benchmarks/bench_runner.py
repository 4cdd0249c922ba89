"""Overhead of the grid runner per (method, case): what the runner adds beyond the methods' own time.

    python benchmarks/bench_runner.py [--cases 40] [--methods 3] [--repeat 3]

A trivial method (its rank() takes microseconds) runs over planted cases. For each jobs setting it prints
- overhead/task = (wall time of the grid − Σ runtime_s) / tasks, start-up of the workers included;
- marginal/task = the same from the difference of a small and the full grid, i.e. without the fixed start-up.
The results folder lives in a temporary directory (its file system is printed: the journal fsyncs every row).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from llmrca.case import Observation
from llmrca.methods.base import BaseMethod, Ranking


class Trivial(BaseMethod):
    """All services with equal scores (name order): no work, so the measured time is the runner's."""

    name = "bench-trivial"

    def rank(self, obs: Observation, *, seed: int = 0) -> Ranking:
        services = obs.services
        return Ranking.from_scores(services, [0.0] * len(services))


def _register(n_methods: int) -> list[str]:
    from llmrca.methods import register

    names = [f"bench-trivial-{i}" for i in range(n_methods)]
    for n in names:  # by module path, so the workers import this file as the module `bench_runner`
        register(n, "bench_runner:Trivial", "metric", {"metrics"}, "benchmark: no-op ranking")
    return names


def _grid(paths: list[str], methods: list[str], jobs: int, work: Path) -> tuple[float, float, int]:
    out = work / f"run-{jobs}-{len(paths)}-{time.monotonic_ns()}"
    from llmrca.evaluate import evaluate

    t0 = time.perf_counter()
    df = evaluate(paths, methods, out, jobs=jobs, timeout=60.0, progress=False)
    wall = time.perf_counter() - t0
    if set(df["status"]) != {"ok"}:
        raise SystemExit(f"benchmark grid failed: {df['status'].value_counts().to_dict()}")
    shutil.rmtree(out)
    return wall, float(df["runtime_s"].sum()), len(df)


def _filesystem(path: Path) -> str:
    try:
        res = subprocess.run(["df", "-T", str(path)], capture_output=True, text=True, check=True)
        return res.stdout.splitlines()[-1].split()[1]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=40)
    ap.add_argument("--methods", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()

    from llmrca.io import save_case
    from llmrca.synthetic import planted_case

    methods = _register(args.methods)
    work = Path(tempfile.mkdtemp(prefix="llmrca-bench-"))
    try:
        paths = [str(save_case(planted_case(seed=s), work / "cases" / f"c{s}")) for s in range(args.cases)]
        small = paths[: max(1, args.cases // 8)]
        print(f"# runner overhead: {args.cases} planted cases x {args.methods} no-op methods, "
              f"best of {args.repeat}; results on {_filesystem(work)}; {os.cpu_count()} CPUs; "
              f"python {sys.version.split()[0]}")
        print(f"{'jobs':>4} {'tasks':>6} {'wall s':>8} {'Σ runtime s':>12} {'overhead/task ms':>17} "
              f"{'marginal/task ms':>17}")
        for jobs in args.jobs:
            fulls = [_grid(paths, methods, jobs, work) for _ in range(args.repeat)]
            smalls = [_grid(small, methods, jobs, work) for _ in range(args.repeat)]
            wall, rt, n = min(fulls)
            wall_s, rt_s, n_s = min(smalls)
            per_task = (wall - rt) / n * 1e3
            marginal = ((wall - rt) - (wall_s - rt_s)) / (n - n_s) * 1e3 if n > n_s else float("nan")
            spread = statistics.pstdev([(w - r) / k * 1e3 for w, r, k in fulls])
            print(f"{jobs:>4} {n:>6} {wall:>8.2f} {rt:>12.4f} {per_task:>11.2f} ±{spread:<5.2f} "
                  f"{marginal:>17.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
