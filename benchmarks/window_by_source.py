"""The default metric window on RCAEval-layout folders: the study's 60 rows each side vs "auto" (RCAEval's runner's
600 rows each side, i.e. the whole of these cases).

    PYTHONPATH=src python benchmarks/window_by_source.py [--cases 20] [--rows 1200] [--shift 1.5]
        [--methods baro,nsigma,e-diagnosis,rcd]

Cases: RE1 folders written by hand (``tests/rcaeval_fixtures.write_re1_suite``: Online Boutique names, a planted
root with a non-linear propagation, ``--rows`` 1 s rows with the injection in the middle, as RCAEval's published
cases), read by llmrca's RCAEval reader. Each method runs on each case under ``window=60`` and under the default;
prints service-level AC@1 and Avg@5 per window and the rows each saw.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from rcaeval_fixtures import write_re1_suite

from llmrca.errors import LlmrcaError
from llmrca.io.rcaeval import read_case
from llmrca.methods import get_method
from llmrca.methods.window import STUDY_WINDOW, metric_window


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=20)
    ap.add_argument("--rows", type=int, default=1200)
    ap.add_argument("--shift", type=float, default=1.5, help="size of the planted shift (robust scales)")
    ap.add_argument("--services", type=int, default=8)
    ap.add_argument("--methods", default="baro,nsigma,e-diagnosis,rcd")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fixtures = write_re1_suite(d, n_cases=args.cases, seed=args.seed, n_services=args.services,
                                   n_rows=args.rows, shift=args.shift)
        cases = [(fc, read_case(fc.path, root=d)) for fc in fixtures]
        seen = {w: len(metric_window(cases[0][1].observation, window=w).times) for w in (STUDY_WINDOW, "auto")}
        print(f"{len(cases)} RE1 case(s), {args.rows} rows, {args.services} services, shift {args.shift}; rows seen: "
              f"window=60 → {seen[STUDY_WINDOW]}, default (auto) → {seen['auto']}")
        print(f"{'method':<14}{'AC@1 60':>9}{'AC@1 auto':>11}{'Avg@5 60':>10}{'Avg@5 auto':>12}{'errors':>8}")
        for m in methods:
            acc: dict[object, list[int | None]] = {STUDY_WINDOW: [], "auto": []}
            errors = 0
            for fc, case in cases:
                for w, ranks in acc.items():
                    try:
                        r = get_method(m, window=w).rank(case.observation, seed=0).rank_of(fc.service)
                    except LlmrcaError:
                        r, errors = None, errors + 1
                    ranks.append(r)
            ac1 = {w: sum(r == 1 for r in rs) / len(rs) for w, rs in acc.items()}
            avg5 = {w: sum(sum(r is not None and r <= k for r in rs) / len(rs) for k in range(1, 6)) / 5
                    for w, rs in acc.items()}
            print(f"{m:<14}{ac1[STUDY_WINDOW]:>9.2f}{ac1['auto']:>11.2f}{avg5[STUDY_WINDOW]:>10.2f}"
                  f"{avg5['auto']:>12.2f}{errors:>8}")


if __name__ == "__main__":
    main()
