"""Scores per method family (metric-based, trace-based, multi-source): the level at which the reference study
stated its findings ("multi-source methods best, metric methods fault-type dependent, trace methods weak").

For each family and fault type: the mean of a score over the family's methods (the ``dummy`` baseline left
out: it is chance, not a metric method), its spread over the family's methods, and the best method. A family
mean answers "how well does a method of this kind do"; the best method answers "how well can one do".
"""

from __future__ import annotations

import pandas as pd

from llmrca.report.tables import ALL, CHANCE, FAMILY_ORDER, METRICS, _fault_order, _fmt, _md_table

BASELINES = ("dummy",)
FAMILY_COLUMNS = ["family", "fault_type", "methods", "mean", "min", "max", "best"]


def family_scores(summary: pd.DataFrame, metric: str = "avg5") -> pd.DataFrame:
    """One row per family × fault type (``all`` included) from a ``summarize`` frame: ``metric``'s mean, min
    and max over the family's methods, their count, and the best method (ties: the first by name)."""
    if metric not in METRICS:
        raise ValueError(f"unknown score {metric!r}; known: {', '.join(METRICS)}")
    rows = summary[~summary["method"].isin((CHANCE, *BASELINES))]
    out = []
    families = [f for f in FAMILY_ORDER if f in set(rows["family"])]
    families += sorted(set(map(str, rows["family"])) - set(families))
    for fam in families:
        part = rows[rows["family"] == fam]
        for fault in [*_fault_order(part["fault_type"].unique()), ALL]:
            cell = part[part["fault_type"] == fault].dropna(subset=[metric])
            if cell.empty:
                continue
            best = cell.sort_values([metric, "method"], ascending=[False, True]).iloc[0]
            out.append({"family": fam, "fault_type": fault, "methods": len(cell),
                        "mean": float(cell[metric].mean()), "min": float(cell[metric].min()),
                        "max": float(cell[metric].max()), "best": str(best["method"])})
    return pd.DataFrame(out, columns=FAMILY_COLUMNS)


def family_markdown(summary: pd.DataFrame, metric: str = "avg5") -> str:
    """Markdown: per family, the mean ``metric`` per fault type and over all cases, then the best method."""
    fam = family_scores(summary, metric)
    if fam.empty:
        return "_no results_\n"
    faults = [f for f in _fault_order(fam["fault_type"].unique()) if f != ALL]
    cell = {(r["family"], r["fault_type"]): r for _, r in fam.iterrows()}
    chance = summary[summary["method"] == CHANCE].set_index("fault_type")[metric] \
        if CHANCE in set(summary["method"]) else pd.Series(dtype=float)
    label = METRICS[metric]
    header = ["family (methods)", *faults, "all", f"best method (all, {label})"]
    body = []
    for f in dict.fromkeys(fam["family"]):
        top = cell.get((f, ALL))
        n = int(top["methods"]) if top is not None else 0
        body.append([f"{f} ({n})", *(_fmt(cell[(f, x)]["mean"]) if (f, x) in cell else "" for x in faults),
                     _fmt(top["mean"]) if top is not None else "",
                     f"{top['best']} {_fmt(top['max'])}" if top is not None else ""])
    if not chance.empty:
        body.append(["chance", *(_fmt(chance.get(x)) for x in faults), _fmt(chance.get(ALL)), ""])
    return (f"Mean {label} over each family's methods (dummy left out)\n\n"
            + _md_table(header, body, ["l", *"r" * (len(faults) + 1), "l"]))
