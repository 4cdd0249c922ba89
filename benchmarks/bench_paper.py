"""Wall time of the whole `llmrca bench paper` (simulate 160 cases, every registered method under the study
and the full view, write the report), and where the time goes.

    python benchmarks/bench_paper.py [--out bench-paper-timing] [--jobs 2] [--reps 10] [--timeout 60]
                                     [--methods all] [--views study,full] [--full-methods light] [--keep]

The folder is emptied first (a resumed bench would time only the missing rows) unless --keep. Prints the wall
time against the 15-minute budget, the machine's load average before and after (other processes share the
cores), and per method and view: mean and max time per case, the sum of its rank() time, its share of all
method time, and ok/error/timeout counts — the methods that dominate come first.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import time
from pathlib import Path

import pandas as pd
from rich.console import Console

from llmrca.bench import run_bench
from llmrca.report.status import status_kinds

BUDGET_S = 15 * 60


def _per_method(results: dict[str, pd.DataFrame]) -> pd.DataFrame:
    frames = []
    for view, df in results.items():
        kind = status_kinds(df["status"])
        g = df.assign(ok=kind == "ok", timeout=kind == "timeout", no_answer=kind == "no-answer",
                      error=kind == "error").groupby("method", sort=False)
        part = pd.DataFrame({
            "view": view,
            "mean_s": g["runtime_s"].mean(),
            "max_s": g["runtime_s"].max(),
            "sum_s": g["runtime_s"].sum(),
            "ok": g["ok"].sum(), "error": g["error"].sum(), "timeout": g["timeout"].sum(),
            "no_answer": g["no_answer"].sum(),
        })
        frames.append(part.reset_index())
    table = pd.concat(frames, ignore_index=True)
    table["share"] = table["sum_s"] / table["sum_s"].sum()
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench-paper-timing")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--methods", default="all")
    ap.add_argument("--views", default="study,full")
    ap.add_argument("--full-methods", default="light", help="methods under the full view (default: all but "
                    "the column-heavy causal-discovery ones, as `llmrca bench`)")
    ap.add_argument("--keep", action="store_true", help="resume the folder instead of starting afresh")
    args = ap.parse_args()

    out = Path(args.out)
    if out.exists() and not args.keep:
        shutil.rmtree(out)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    res = run_bench("paper", out, reps=args.reps, jobs=args.jobs, timeout=args.timeout, methods=args.methods,
                    views=[v for v in args.views.split(",") if v], full_methods=args.full_methods, progress=False,
                    console=Console(file=io.StringIO()))
    wall = time.perf_counter() - t0
    load_after = os.getloadavg()

    print(f"llmrca bench paper: {res.cases} cases; methods per view: "
          + ", ".join(f"{v} {len(m)}" for v, m in res.view_methods.items()) + "; "
          f"jobs {args.jobs}, timeout {args.timeout:g} s, on {os.cpu_count()} CPUs")
    print(f"wall time {wall:.1f} s ({wall / 60:.1f} min; budget {BUDGET_S / 60:.0f} min: "
          f"{'within' if wall <= BUDGET_S else 'OVER'}); simulated the suite: {res.generated}; "
          f"tasks run: {res.computed}")
    if args.keep:
        print("(--keep: a resumed bench times only the rows it had to compute)")
    print(f"load average (1, 5, 15 min) before {tuple(round(x, 2) for x in load_before)}, "
          f"after {tuple(round(x, 2) for x in load_after)}")
    table = _per_method(res.results).sort_values("sum_s", ascending=False)
    with pd.option_context("display.width", 160, "display.max_rows", 200):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    totals = table.groupby("view")["sum_s"].sum()
    print("Σ rank() time per view (s): " + ", ".join(f"{v} {s:.0f}" for v, s in totals.items())
          + f"; over {args.jobs} job(s) ≈ {totals.sum() / args.jobs:.0f} s of wall time")
    print(f"report: {res.report_html}")


if __name__ == "__main__":
    main()
