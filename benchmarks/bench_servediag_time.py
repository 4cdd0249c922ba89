"""Time per case of servediag (wall and CPU), per view, on a suite of cases.

    python benchmarks/bench_servediag_time.py SUITE_DIR [--views full,study] [--limit 0] [--repeat 3]
                                              [--dump FILE] [--profile N]

Loads each case once (loading is not the method's time), then times ``rank`` ``--repeat`` times and keeps the
fastest wall time and its CPU time (``time.process_time``): on a shared machine the wall time of one call
includes other processes' turns on the cores, the CPU time does not. Prints mean, median and max per view.

``--dump FILE`` writes every case's output (view, case, candidates, the scores' exact ``repr``, diagnosis,
explanation), one JSON line each, so two versions of the code can be compared byte for byte: run this script
with ``PYTHONPATH`` set to each version's ``src`` and ``cmp`` the two files. ``--profile N`` prints cProfile's
N most expensive functions (cumulative) over all the timed calls.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import time
from pathlib import Path

import numpy as np

from llmrca import get_method, load_case
from llmrca.case.views import select_view
from llmrca.io import find_cases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("suite", type=Path)
    ap.add_argument("--views", default="full,study")
    ap.add_argument("--limit", type=int, default=0, help="at most this many cases (0: all)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dump", type=Path, default=None, help="write every case's output here (JSON lines)")
    ap.add_argument("--profile", type=int, default=0, help="print the N most expensive functions")
    a = ap.parse_args()
    paths = find_cases(a.suite)
    if a.limit:
        paths = paths[:: max(1, len(paths) // a.limit)][: a.limit]
    method = get_method("servediag")
    prof = cProfile.Profile() if a.profile else None
    out = []
    for view in a.views.split(","):
        wall, cpu = [], []
        for p in paths:
            obs = select_view(load_case(p).observation, view)  # type: ignore[arg-type]
            best = (float("inf"), float("inf"))
            for _ in range(a.repeat):
                if prof:
                    prof.enable()
                w0, c0 = time.perf_counter(), time.process_time()
                r = method.rank(obs)
                best = min(best, (time.perf_counter() - w0, time.process_time() - c0))
                if prof:
                    prof.disable()
            wall.append(best[0])
            cpu.append(best[1])
            out.append(json.dumps({"view": view, "case": str(Path(p).relative_to(a.suite)),
                                   "candidates": list(r.candidates), "scores": [repr(s) for s in r.scores],
                                   "diagnosis": r.diagnosis, "explanation": r.explanation}, ensure_ascii=False))
        w, c = np.asarray(wall), np.asarray(cpu)
        print(f"{view}: {len(w)} cases; wall mean {w.mean():.3f} s, median {np.median(w):.3f} s, max {w.max():.3f} s;"
              f" CPU mean {c.mean():.3f} s, median {np.median(c):.3f} s, max {c.max():.3f} s", flush=True)
    if a.dump:
        a.dump.write_text("\n".join(out) + "\n", encoding="utf-8")
    if prof:
        pstats.Stats(prof).sort_stats("cumulative").print_stats(a.profile)


if __name__ == "__main__":
    main()
