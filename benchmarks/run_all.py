"""Run every benchmark script in this folder, one after another, and print their tables.

    python benchmarks/run_all.py                 # all of them (several minutes on 2 cores)
    python benchmarks/run_all.py --only sim,runner

Each ``bench_*.py`` is also runnable on its own with its own options (see its docstring). Benchmarks measure
ratios and times side by side in one run on a noisy machine; they are never assertions in the test suite.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="comma list of names (bench_<name>.py)")
    args = ap.parse_args()
    scripts = sorted(HERE.glob("bench_*.py"))
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    if only:
        unknown = only - {s.stem.removeprefix("bench_") for s in scripts}
        if unknown:
            ap.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in only]
    failed = []
    for s in scripts:
        print(f"\n=== {s.name}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, str(s)])
        print(f"--- {s.name}: exit {rc}, {time.perf_counter() - t0:.1f} s", flush=True)
        if rc:
            failed.append(s.name)
    if failed:
        print("failed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
