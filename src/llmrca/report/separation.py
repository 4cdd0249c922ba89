"""Fault-free cases, scored: how well a method's top score tells a broken deployment from a healthy one.

Every method ranks every case, fault-free ones too, and a ranking always has a first candidate, so AC@k says
nothing about a method that blames something in a healthy system. What does: the ranking's top score (the
highest score, ``top_score`` in the results). Over a suite with fault and fault-free (normal) cases, the AUROC of
the top score with fault cases as positives is the chance that a random fault case gets a higher top score than
a random normal case (0.5: the score does not see the fault; 1: a threshold separates them all). It is free of
the score's scale, which differs from method to method, and that is why it is the measure. A case whose method
failed or abstained, or whose top score is not finite, is left out (and counted).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from llmrca.case.model import NORMAL, UNKNOWN

COLUMNS = ("method", "fault_cases", "normal_cases", "auroc", "normal_top_median", "normal_top_p90",
           "fault_top_median", "left_out")


def separation(results: pd.DataFrame) -> pd.DataFrame:
    """One row per method: cases used, AUROC (NaN when the suite has no normal or no fault case with a finite
    top score), and the top score's median and 90th percentile on normal runs (median on fault runs)."""
    from sklearn.metrics import roc_auc_score

    rows = []
    if results is None or not len(results) or "top_score" not in results:
        return pd.DataFrame(columns=list(COLUMNS))
    df = results[results["fault_type"].astype("string") != UNKNOWN]
    for method, g in df.groupby("method", sort=True):
        normal = (g["fault_type"].astype("string") == NORMAL).to_numpy(dtype=bool)
        top = pd.to_numeric(g["top_score"], errors="coerce").to_numpy(dtype=float)
        ok = (g["status"].astype("string") == "ok").to_numpy(dtype=bool) & np.isfinite(top)
        pos, neg = top[ok & ~normal], top[ok & normal]
        auroc = float("nan")
        if len(pos) and len(neg):
            auroc = float(roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg]))
        rows.append({
            "method": str(method), "fault_cases": len(pos), "normal_cases": len(neg), "auroc": auroc,
            "normal_top_median": float(np.median(neg)) if len(neg) else float("nan"),
            "normal_top_p90": float(np.quantile(neg, 0.9)) if len(neg) else float("nan"),
            "fault_top_median": float(np.median(pos)) if len(pos) else float("nan"),
            "left_out": int((~ok).sum()),
        })
    return pd.DataFrame(rows, columns=list(COLUMNS))


def has_normal_cases(results: pd.DataFrame) -> bool:
    return results is not None and len(results) > 0 and bool(
        (results["fault_type"].astype("string") == NORMAL).any())


def _g(v: float) -> str:
    return "n/a" if not np.isfinite(v) else f"{v:.4g}"


def separation_markdown(sep: pd.DataFrame) -> str:
    """The table, with n/a where a suite lacks the cases for a number."""
    lines = [("| method | AUROC (fault vs normal) | fault / normal cases | top score on normal runs: median, p90 | "
             "top score on fault runs: median | left out |"), "|---|---:|---:|---:|---:|---:|"]
    for _, r in sep.iterrows():
        auroc = "n/a" if not np.isfinite(r["auroc"]) else f"{r['auroc']:.2f}"
        lines.append(f"| {r['method']} | {auroc} | {int(r['fault_cases'])} / {int(r['normal_cases'])} | "
                     f"{_g(r['normal_top_median'])}, {_g(r['normal_top_p90'])} | {_g(r['fault_top_median'])} | "
                     f"{int(r['left_out'])} |")
    return "\n".join(lines) + "\n"
