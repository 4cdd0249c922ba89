"""servediag rerun on a bench folder's cases, beside the other methods' stored rows.

    python benchmarks/servediag_rerun.py FOLDER [--views study,full]

FOLDER is an `llmrca bench` output (`cases/` and `results-<view>/`) or a `servediag_variants.py` one. servediag
is run afresh on every fault case in each view, and nothing is written. Per view it prints: its AC@1 with a 95 %
bootstrap interval over the cases (unstratified), the AC@1 of its stored rows, the best other stored method, the
diagnosis accuracy on single-fault cases, and the mean and largest seconds per case. Per fault type it prints the
same AC@1 beside the best other method's, and flags a type where servediag is below. It serves to measure a change
to servediag's rules without rerunning the other 24 methods.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from llmrca.case.views import select_view
from llmrca.evaluate import load_results
from llmrca.io import load_suite
from llmrca.methods import get_method
from llmrca.report.ci import bootstrap_mean_ci


def _ac1(ranks) -> float:
    return float((ranks == 1).fillna(False).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--views", default="full")
    a = ap.parse_args()
    method = get_method("servediag")
    cases = [c for c in load_suite(a.folder / "cases") if not c.truth.is_normal]
    for view in a.views.split(","):
        res = load_results(a.folder / f"results-{view}")
        res = res[res["fault_type"] != "normal"]
        others, stored = res[res["method"] != "servediag"], res[res["method"] == "servediag"]
        hits: dict[str, list[float]] = defaultdict(list)
        diag, secs = [], []
        for c in cases:
            t = c.truth
            obs = select_view(c.observation, view)
            t0 = time.perf_counter()
            r = method.rank(obs)
            secs.append(time.perf_counter() - t0)
            roots = set(t.roots) if t.is_multi else {t.service}
            hits[t.fault_type].append(float(r.services()[0] in roots))
            if not t.is_multi:
                diag.append(r.diagnosis == t.fault_kind)
        every = np.asarray([x for v in hits.values() for x in v])
        lo, hi = bootstrap_mean_ci(every)
        best = others.groupby("method")["rank"].apply(_ac1).sort_values()
        print(f"{a.folder.name} {view}: servediag {every.mean():.2f} ({lo:.2f}–{hi:.2f}), stored "
              f"{_ac1(stored['rank']):.2f}, n={len(every)}; best other {best.index[-1]} {best.iloc[-1]:.2f}; "
              f"diagnosis {np.mean(diag):.2f}; seconds per case mean {np.mean(secs):.3f}, max {max(secs):.3f}")
        for ft, h in sorted(hits.items()):
            o = others[others["fault_type"] == ft].groupby("method")["rank"].apply(_ac1)
            own = float(np.mean(h))
            flag = "  below" if own < o.max() - 1e-9 else ""
            print(f"  {ft:20s} n={len(h):3d} servediag {own:.2f} (stored "
                  f"{_ac1(stored[stored['fault_type'] == ft]['rank']):.2f}), best other {o.idxmax()} {o.max():.2f}{flag}")


if __name__ == "__main__":
    main()
