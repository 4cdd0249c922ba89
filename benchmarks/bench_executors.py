"""The local worker pool and Ray on the same grid on this machine: wall time, start-up, and Ray's overhead ratio.

    python benchmarks/bench_executors.py [--cases 16] [--methods baro nsigma dummy circa] [--jobs 2] [--repeat 3]
                                         [--timeout 60]

Cases come from the shipped ``demo`` scenario (its 4 faults x 4 targets, one repetition per 16 cases asked
for), simulated into a temporary folder that is removed afterwards. Each repeat runs, side by side:
- start-up, a separate small step: the executor's ``jobs`` slots are started and the time until the first and
  the last is ready is taken (Ray: ``ray.init`` of a local Ray with ``jobs`` CPUs first, timed on its own);
- the full grid (every method on every case) and a small one (the first eighth of the cases) through
  ``llmrca.evaluate.evaluate(..., executor="local" | "ray")``, each into a fresh results folder. The Ray run
  starts and stops its own local Ray, as ``llmrca evaluate --executor ray`` without ``--address`` does.
The executors alternate which goes first from one repeat to the next, so a drift in the machine's load hits
both. Printed: min and median over repeats of the wall times and of the marginal cost per task (the difference
of the full and the small grid over the difference of their task counts: no fixed start-up in it; also without
the methods' own time, Σ runtime_s / jobs, which the machine's load makes vary from run to run), and the
ratios Ray/local, each taken within a repeat and then the median. Both executors must give the same rows
(method, case_id, rank, status) in every repeat; the exit status is 1 if any differ, 2 if a grid row is not
``ok`` (a timeout near the limit could land on one executor only, which would make the comparison unfair).
The defaults take about 5 minutes on 2 cores; without Ray installed the script says so and exits 0.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

ROW = ["method", "case_id", "rank", "status"]
EXECUTORS = ("local", "ray")


def _cases(n: int, jobs: int, work: Path) -> list[str]:
    from llmrca.sim.suites import generate_suite

    reps = max(1, math.ceil(n / 16))  # demo: 16 cases (4 faults x 4 targets) per repetition
    paths = generate_suite("demo", work / "cases", reps=reps, seed=0, jobs=jobs, normal=0, progress=False)
    if len(paths) < n:
        raise SystemExit(f"--cases {n}: the demo scenario gave only {len(paths)} case(s)")
    return [str(p) for p in sorted(paths)[:n]]


def _startup(executor: str, jobs: int) -> dict[str, float]:
    """Seconds to start ``jobs`` slots of ``executor``: init (Ray only), first slot ready, all ready, close."""
    from llmrca.evaluate.pool import LocalExecutor

    t0 = time.perf_counter()
    if executor == "ray":
        from llmrca.evaluate.ray_pool import RayExecutor

        ex: Any = RayExecutor(jobs)
    else:
        ex = LocalExecutor(jobs)
    t_init = time.perf_counter()
    slots = [ex.start_slot() for _ in range(jobs)]
    ready: set[int] = set()
    first = math.nan
    deadline = time.perf_counter() + 120.0
    while len(ready) < jobs:
        if time.perf_counter() > deadline:
            raise SystemExit(f"{executor}: slots not ready after 120 s")
        for slot, kind, payload in ex.wait(slots, 1.0):
            if kind == "died":
                raise SystemExit(f"{executor}: a slot died while starting: {payload}")
            if kind == "ready":
                ready.add(id(slot))
                if math.isnan(first):
                    first = time.perf_counter() - t0
    t_ready = time.perf_counter()
    for s in slots:
        s.kill()
    ex.close()
    return {"init": t_init - t0, "first": first, "all": t_ready - t0, "close": time.perf_counter() - t_ready}


def _grid(paths: list[str], methods: list[str], executor: str, jobs: int, timeout: float,
          work: Path) -> tuple[float, pd.DataFrame]:
    from llmrca.evaluate import evaluate

    out = work / f"run-{executor}-{len(paths)}-{time.monotonic_ns()}"
    t0 = time.perf_counter()
    df = evaluate(paths, methods, out, jobs=jobs, timeout=timeout, executor=executor, progress=False)
    wall = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    return wall, df


def _rows(df: pd.DataFrame) -> list[tuple[Any, ...]]:
    def plain(v: Any) -> Any:  # None for a missing rank, numpy scalars as Python's (readable when printed)
        return None if pd.isna(v) else (v.item() if hasattr(v, "item") else v)

    return sorted(tuple(plain(v) for v in r) for r in df[ROW].itertuples(index=False))


def _fmt(xs: list[float], unit: float = 1.0, digits: int = 2) -> str:
    return f"{min(xs) * unit:.{digits}f} / {statistics.median(xs) * unit:.{digits}f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=16, help="cases of the demo scenario (16 per repetition)")
    ap.add_argument("--methods", nargs="+", default=["baro", "nsigma", "dummy", "circa"])
    ap.add_argument("--jobs", type=int, default=2, help="workers: local processes, or Ray actors (= Ray CPUs)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per task")
    args = ap.parse_args()
    if args.cases < 2 or args.repeat < 1 or args.jobs < 1:
        ap.error("--cases must be >= 2, --repeat and --jobs >= 1")
    try:
        import ray
    except ImportError:
        print("bench_executors: skipped, Ray is not installed (pip install 'llmrca[ray]')")
        return 0

    work = Path(tempfile.mkdtemp(prefix="llmrca-bench-exec-"))
    bad_rows = bad_status = False
    try:
        t0 = time.perf_counter()
        paths = _cases(args.cases, args.jobs, work)
        small = paths[: max(1, len(paths) // 8)]
        gen_s = time.perf_counter() - t0
        n_full, n_small = len(paths) * len(args.methods), len(small) * len(args.methods)
        print(f"# local pool vs Ray: {len(paths)} demo cases x {len(args.methods)} methods "
              f"({', '.join(args.methods)}) = {n_full} tasks, small grid {n_small} tasks; --jobs {args.jobs}, "
              f"--timeout {args.timeout:g}; {args.repeat} repeat(s), executors interleaved; {os.cpu_count()} CPUs; "
              f"python {sys.version.split()[0]}, ray {ray.__version__}; cases simulated in {gen_s:.1f} s",
              flush=True)
        wall: dict[str, list[float]] = {e: [] for e in EXECUTORS}
        wall_small: dict[str, list[float]] = {e: [] for e in EXECUTORS}
        runtime: dict[str, list[float]] = {e: [] for e in EXECUTORS}
        marginal: dict[str, list[float]] = {e: [] for e in EXECUTORS}
        beyond: dict[str, list[float]] = {e: [] for e in EXECUTORS}
        start: dict[str, list[dict[str, float]]] = {e: [] for e in EXECUTORS}
        for r in range(args.repeat):
            order = EXECUTORS if r % 2 == 0 else EXECUTORS[::-1]
            rows: dict[str, list[tuple[Any, ...]]] = {}
            for e in order:
                start[e].append(_startup(e, args.jobs))
                w_full, df = _grid(paths, args.methods, e, args.jobs, args.timeout, work)
                w_small, df_s = _grid(small, args.methods, e, args.jobs, args.timeout, work)
                for d in (df, df_s):
                    not_ok = d[d["status"] != "ok"]
                    if len(not_ok):
                        bad_status = True
                        print(f"  repeat {r + 1} {e}: {len(not_ok)} row(s) not ok: "
                              f"{not_ok['status'].value_counts().to_dict()}")
                wall[e].append(w_full)
                wall_small[e].append(w_small)
                runtime[e].append(float(df["runtime_s"].sum()))
                marginal[e].append((w_full - w_small) / (n_full - n_small))
                # the same beyond the methods' own time (shared by the jobs): a load that slows the methods
                # down on one executor's turn is taken out
                rt_full, rt_small = float(df["runtime_s"].sum()), float(df_s["runtime_s"].sum())
                beyond[e].append(((w_full - rt_full / args.jobs) - (w_small - rt_small / args.jobs))
                                 / (n_full - n_small))
                rows[e] = _rows(df) + _rows(df_s)
            same = rows["local"] == rows["ray"]
            if not same:
                bad_rows = True
                diff = set(rows["local"]) ^ set(rows["ray"])
                print(f"  repeat {r + 1}: rows DIFFER between local and Ray ({len(diff)} differing), e.g. "
                      f"{sorted(diff, key=str)[:4]}")
            print(f"  repeat {r + 1} ({' then '.join(order)}): full grid local {wall['local'][-1]:.2f} s, "
                  f"Ray {wall['ray'][-1]:.2f} s; small grid local {wall_small['local'][-1]:.2f} s, "
                  f"Ray {wall_small['ray'][-1]:.2f} s; rows {'identical' if same else 'DIFFER'}", flush=True)

        print("\nmin / median over repeats")
        print(f"{'':<40} {'local':>15} {'Ray':>15} {'Ray/local':>10}")

        def line(label: str, a: list[float], b: list[float], unit: float = 1.0) -> None:
            rat = statistics.median(y / x for x, y in zip(a, b, strict=True))
            print(f"{label:<40} {_fmt(a, unit):>15} {_fmt(b, unit):>15} {rat:>10.2f}")

        def st(e: str, k: str) -> list[float]:
            return [s[k] for s in start[e]]

        line(f"full grid wall s ({n_full} tasks)", wall["local"], wall["ray"])
        line(f"small grid wall s ({n_small} tasks)", wall_small["local"], wall_small["ray"])
        line("marginal/task ms", marginal["local"], marginal["ray"], 1e3)
        line("marginal/task beyond the methods ms", beyond["local"], beyond["ray"], 1e3)
        line("Σ runtime_s of the methods, s", runtime["local"], runtime["ray"])
        print(f"{'start-up: ray.init s':<40} {'-':>15} {_fmt(st('ray', 'init')):>15}")
        line("start-up: first slot ready s", st("local", "first"), st("ray", "first"))
        line(f"start-up: all {args.jobs} slots ready s", st("local", "all"), st("ray", "all"))
        line("shut-down (slots killed, Ray stopped) s", st("local", "close"), st("ray", "close"))
        print("Ray/local: the median over repeats of the ratio within each repeat; start-up includes ray.init")
        print(f"rows (method, case_id, rank, status): {'identical in every repeat' if not bad_rows else 'DIFFER'}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if bad_rows:
        return 1
    return 2 if bad_status else 0


if __name__ == "__main__":
    sys.exit(main())
