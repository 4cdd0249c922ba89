"""PC's orientation phase (uc_sepset + Meek's rules) on llmrca's budgeted graphs against causal-learn's own, side
by side on the same random skeletons and separating sets (the same CPDAG is checked each time).

    python benchmarks/pc_orient_speed.py [--nodes 100,200,400] [--degree 3] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from causallearn.utils.PCUtils import Meek, UCSepset
from test_pc_orient import _budgeted, _reference, _skeleton  # the test's graph builders

from llmrca.methods.pc_orient import orient


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", default="100,200,400")
    ap.add_argument("--degree", type=float, default=3.0, help="mean degree of the skeleton")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(f"{'nodes':>6} {'edges':>6} {'causal-learn s':>15} {'llmrca s':>9} {'ratio':>6}")
    for n in (int(x) for x in a.nodes.split(",")):
        g, sep = _skeleton(n, a.degree / (n - 1), np.random.default_rng(a.seed))
        t0 = time.perf_counter()
        want = Meek.meek(UCSepset.uc_sepset(_reference(g, sep, n), 2))
        t1 = time.perf_counter()
        got = orient(_budgeted(g, sep, n), 2)
        t2 = time.perf_counter()
        assert np.array_equal(got.G.graph, want.G.graph), "the CPDAGs differ"
        edges = int((g.graph != 0).sum() // 2)
        print(f"{n:>6} {edges:>6} {t1 - t0:>15.2f} {t2 - t1:>9.2f} {(t1 - t0) / max(t2 - t1, 1e-9):>6.1f}")


if __name__ == "__main__":
    main()
