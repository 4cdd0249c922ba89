"""Time per case of dummy, nsigma, baro and e-diagnosis on a 200-column x 1200-row planted case.

    /work/venv/bin/python benchmarks/bench_methods_basic.py [--repeats 7] [--cases 3]

Prints, per method, the median wall and CPU time of one ``rank`` call (median over repeats, then over cases) and
the service rank of the planted root. ``baro (BOCPD onset)`` is BARO without ``inject_time``: the onset is detected
over all 1200 rows first. Target: nsigma and baro with ``inject_time`` under 50 ms.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

from llmrca.methods import get_method
from llmrca.synthetic import planted_case


def _time(fn, repeats: int) -> tuple[float, float]:
    """Median wall and CPU seconds of one call (CPU time is steadier on a shared machine)."""
    fn()  # warm-up: imports, caches
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--cases", type=int, default=3)
    args = ap.parse_args()
    cases = [
        planted_case(n_services=50, metrics=("cpu", "mem", "latency", "rps"), n_rows=1200, inject_row=600, seed=s)
        for s in range(args.cases)
    ]
    n_cols = len(cases[0].observation.metric_columns)
    rows: list[tuple[str, float, float, list[int | None]]] = []
    variants = [
        ("dummy", "dummy", {}, False),
        ("nsigma", "nsigma", {}, False),
        ("baro", "baro", {}, False),
        ("baro (BOCPD onset)", "baro", {}, True),
        ("e-diagnosis", "e-diagnosis", {}, False),
    ]
    for label, name, params, hide_inject in variants:
        method = get_method(name, **params)
        walls, cpus, ranks = [], [], []
        for c in cases:
            obs = replace(c.observation, inject_time=None) if hide_inject else c.observation
            wall, cpu = _time(lambda obs=obs, method=method: method.rank(obs, seed=0), args.repeats)
            walls.append(wall)
            cpus.append(cpu)
            ranks.append(method.rank(obs, seed=0).rank_of(c.truth.service))
        rows.append((label, statistics.median(walls), statistics.median(cpus), ranks))
    print(f"{len(cases)} planted case(s), {n_cols} metric columns x {len(cases[0].observation.metrics)} rows, "
          f"median of {args.repeats} runs")
    print(f"{'method':<20} {'wall ms':>9} {'cpu ms':>9}  root service rank per case")
    for label, wall, cpu, ranks in rows:
        print(f"{label:<20} {wall * 1e3:>9.1f} {cpu * 1e3:>9.1f}  {ranks}")


if __name__ == "__main__":
    main()
