"""A tiny result set for the report's tests: four short simulated cases (cpu and gpu faults on two replicas),
three real methods, and two made-up ones whose rows stand for outcomes the real ones rarely give on so few
cases: ``crashy`` crashed on every case, ``shy`` abstained on every case. The report must show those as
failures, not as scores of 0."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from llmrca.evaluate import evaluate
from llmrca.evaluate.store import rows_to_frame
from llmrca.sim.suites import generate_suite

SETS = ["deployment.replicas=2", "timing.duration=150", "timing.inject_at=90", "timing.fault_duration=30"]
METHODS = ["dummy", "nsigma", "baro"]
CRASH = "error: ValueError: the design matrix is singular"
SHY = "no-answer: nothing moved beyond 3 sigma"


def tiny_results(root: Path) -> pd.DataFrame:
    """Evaluate METHODS on the tiny suite under ``root`` (study view) and add the made-up methods' rows."""
    cases = generate_suite("paper", root / "cases", reps=1, seed=5, jobs=1, progress=False, sets=SETS,
                           overrides={"faults": ["cpu", "gpu"]})
    res = evaluate(cases, METHODS, root / "out", jobs=1, progress=False, view="study", root=root / "cases")
    fake = []
    for _, r in res[res["method"] == "dummy"].iterrows():
        base = {k: (None if pd.isna(v) else v) for k, v in r.items()}
        for method, family, status in (("crashy", "metric", CRASH), ("shy", "trace", SHY)):
            fake.append({**base, "method": method, "family": family, "status": status, "rank": None,
                         "rank_fine": None, "fine_level": None, "top5": None, "top_candidates": None,
                         "top_score": None, "diagnosis": None, "rank_all": None, "runtime_s": 0.01})
    return pd.concat([res, rows_to_frame(fake)], ignore_index=True)
