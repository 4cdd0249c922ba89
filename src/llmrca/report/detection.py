"""Two scores beyond AC@k: how well a method's top score tells fault cases from fault-free ones, and how often
its diagnosis names the fault's kind.

Detection (``detection_summary``): every method ranks the suite's normal (fault-free) cases too. A result row
keeps the ranking's top score (the highest score it gave any candidate). Per method, the AUROC of that score
with fault cases as positives and normal cases as negatives (``sklearn.metrics.roc_auc_score``; tied scores
count one half, as it does). Scores of different methods are on different scales; the AUROC depends only on
their order within one method, so it compares across methods. Only ``ok`` rows with a finite top score take
part; ``n/a`` (NaN) when the suite has no normal run or no fault run with a score. Beside it: the median and
90th percentile of the top score on the normal runs (a threshold a method would need to stay quiet there).

Diagnosis (``diagnosis_summary``): over fault rows of methods that name a kind (``diagnosis`` not null on some
row), accuracy = share of ``ok`` fault rows whose diagnosis equals the truth's kind, per true kind and overall;
a row with no diagnosis counts as wrong. ``confusion`` counts (true kind, named kind) pairs per method.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from llmrca.report.status import OK, status_kinds

DETECTION_COLUMNS = ["method", "family", "auroc", "n_fault", "n_normal", "normal_median", "normal_p90"]
DIAGNOSIS_COLUMNS = ["method", "fault_kind", "accuracy", "n"]
NONE = "(none)"


def _scored(df: pd.DataFrame) -> pd.DataFrame:
    df = df[status_kinds(df["status"]) == OK].copy()
    if "top_score" not in df.columns:
        df["top_score"] = np.nan
    df["top_score"] = pd.to_numeric(df["top_score"], errors="coerce").astype(float)
    return df[np.isfinite(df["top_score"].to_numpy(dtype=float))]


def _is_fault(df: pd.DataFrame) -> pd.Series:
    return df["root_cause"].notna()


def _is_normal(df: pd.DataFrame) -> pd.Series:
    return df["root_cause"].isna() & (df["fault_type"].astype(object) == "normal")


def detection_summary(results: pd.DataFrame) -> pd.DataFrame:
    """One row per method: AUROC of the top score (fault vs normal cases), counts, normal-run median and p90."""
    from sklearn.metrics import roc_auc_score

    if results.empty:
        return pd.DataFrame({c: [] for c in DETECTION_COLUMNS})
    families = results.groupby("method", sort=False)["family"].first()
    out: list[dict[str, Any]] = []
    for m, fam in families.items():
        rows = _scored(results[results["method"] == m])
        fault = rows.loc[_is_fault(rows), "top_score"].to_numpy(dtype=float)
        normal = rows.loc[_is_normal(rows), "top_score"].to_numpy(dtype=float)
        auroc = float("nan")
        if len(fault) and len(normal):
            y = np.r_[np.ones(len(fault)), np.zeros(len(normal))]
            auroc = float(roc_auc_score(y, np.r_[fault, normal]))
        out.append({"method": str(m), "family": str(fam), "auroc": auroc, "n_fault": len(fault),
                    "n_normal": len(normal),
                    "normal_median": float(np.median(normal)) if len(normal) else float("nan"),
                    "normal_p90": float(np.percentile(normal, 90)) if len(normal) else float("nan")})
    return pd.DataFrame(out, columns=DETECTION_COLUMNS)


def _diagnosing(results: pd.DataFrame) -> pd.DataFrame:
    if "diagnosis" not in results.columns or "fault_kind" not in results.columns:
        return results.iloc[0:0]
    named = results.loc[results["diagnosis"].notna(), "method"].unique()
    df = results[results["method"].isin(named) & _is_fault(results) & results["fault_kind"].notna()]
    return df[status_kinds(df["status"]) == OK]


def has_diagnoses(results: pd.DataFrame) -> bool:
    return "diagnosis" in results.columns and bool(results["diagnosis"].notna().any())


def diagnosis_summary(results: pd.DataFrame) -> pd.DataFrame:
    """Accuracy of the named kind per method × true kind and per method overall (``fault_kind`` = ``all``)."""
    df = _diagnosing(results)
    out: list[dict[str, Any]] = []
    for m in dict.fromkeys(df["method"]):
        rows = df[df["method"] == m]
        hit = (rows["diagnosis"].astype(object) == rows["fault_kind"].astype(object)).to_numpy(dtype=bool)
        for k in sorted(rows["fault_kind"].astype(str).unique()):
            sel = (rows["fault_kind"].astype(str) == k).to_numpy()
            out.append({"method": str(m), "fault_kind": k, "accuracy": float(hit[sel].mean()), "n": int(sel.sum())})
        out.append({"method": str(m), "fault_kind": "all", "accuracy": float(hit.mean()), "n": len(rows)})
    return pd.DataFrame(out, columns=DIAGNOSIS_COLUMNS)


def confusion(results: pd.DataFrame, method: str) -> pd.DataFrame:
    """Counts of (true kind → rows, named kind → columns) for one method; no diagnosis is the column (none)."""
    df = _diagnosing(results)
    df = df[df["method"] == method]
    named = df["diagnosis"].astype(object).where(df["diagnosis"].notna(), NONE)
    table = pd.crosstab(df["fault_kind"].astype(str), named.astype(str))
    kinds = sorted(set(table.index) | (set(table.columns) - {NONE}))
    cols = kinds + ([NONE] if NONE in table.columns else [])
    return table.reindex(index=sorted(table.index), columns=cols, fill_value=0).astype(int)


def _f(v: float, digits: int = 2) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{float(v):.{digits}f}"


def _g(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{float(v):.3g}"


def detection_markdown(results: pd.DataFrame) -> str:
    from llmrca.report.tables import _md_table

    det = detection_summary(results)
    if det.empty:
        return ""
    rows = [[r["method"], r["family"], _f(r["auroc"]), str(r["n_fault"]), str(r["n_normal"]),
             _g(r["normal_median"]), _g(r["normal_p90"])] for _, r in det.iterrows()]
    table = _md_table(["Method", "Family", "AUROC", "Fault runs", "Normal runs", "Normal median", "Normal p90"],
                      rows, ["l", "l", "r", "r", "r", "r", "r"])
    return ("### Fault-free runs: detection by top score\n\n" + table + "\n\nAUROC of each method's top score "
            "separating fault cases (positive) from normal cases (negative); n/a without normal runs or scores. "
            "Median and p90: the top score on normal runs, in the method's own units.\n")


def diagnosis_markdown(results: pd.DataFrame) -> str:
    """The diagnosis section, or "" when no row has a diagnosis."""
    from llmrca.report.tables import _md_table

    if not has_diagnoses(results):
        return ""
    summ = diagnosis_summary(results)
    kinds = [k for k in dict.fromkeys(summ["fault_kind"]) if k != "all"]
    kinds = sorted(kinds) + ["all"]
    cell = {(r["method"], r["fault_kind"]): r for _, r in summ.iterrows()}
    methods = list(dict.fromkeys(summ["method"]))
    rows = [[m] + [_f(cell[(m, k)]["accuracy"]) if (m, k) in cell else "–" for k in kinds] for m in methods]
    parts = ["### Diagnosis accuracy per fault kind\n\n" + _md_table(["Method", *kinds], rows,
                                                                    ["l"] + ["r"] * len(kinds))]
    for m in methods:
        cm = confusion(results, m)
        body = [[str(k)] + [str(int(v)) for v in cm.loc[k]] for k in cm.index]
        parts.append(f"#### Confusion matrix: {m} (rows: true kind, columns: named kind)\n\n"
                     + _md_table(["true \\ named", *map(str, cm.columns)], body, ["l"] + ["r"] * len(cm.columns)))
    return "\n\n".join(parts) + "\n\nShare of fault runs whose diagnosis names the fault's kind; a run with no "\
        "diagnosis counts as wrong.\n"
