"""Side-by-side views of one benchmark: a score per method × fault type under two metric views, and the rank
each method gave the true root cause in every case.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pandas as pd

from llmrca.report import status
from llmrca.report.tables import ALL, CHANCE, _fault_order, _fmt, _md_table

# Codes of a per-case cell that holds no rank.
ABSENT, ERROR, TIMEOUT, NO_ANSWER, NOT_RUN = "–", "E", "T", "N", ""
CODES = {ABSENT: "ran, but did not rank the true service", NO_ANSWER: "no answer: the method found nothing "
         "abnormal to blame", ERROR: "error: the method crashed or could not run", TIMEOUT: "timeout",
         NOT_RUN: "blank: no result"}
_CELL = {status.ERROR: ERROR, status.TIMEOUT: TIMEOUT, status.NO_ANSWER: NO_ANSWER}


def compare_views(summaries: Mapping[str, pd.DataFrame], metric: str = "avg5") -> pd.DataFrame:
    """One row per method (chance included) × fault type: ``metric`` under each view and the difference.

    ``summaries``: view name → ``summarize`` output, in display order. Columns: method, family, fault_type,
    one per view, and ``diff`` = last view − first view (NaN with fewer than two views or a missing cell).
    """
    views = list(summaries)
    if not views:
        raise ValueError("compare_views needs at least one summary")
    cells: dict[tuple[str, str], dict[str, object]] = {}
    for v in views:
        s = summaries[v]
        if metric not in s.columns:
            raise ValueError(f"unknown metric {metric!r}; a summary has {', '.join(map(str, s.columns))}")
        for _, r in s.iterrows():
            key = (str(r["method"]), str(r["fault_type"]))
            cell = cells.setdefault(key, {"method": key[0], "family": str(r["family"]), "fault_type": key[1]})
            cell[v] = float(r[metric])
    faults = _fault_order(f for _, f in cells) + [ALL]
    methods = list(dict.fromkeys(m for v in views for m in summaries[v]["method"]))
    methods = [m for m in methods if m != CHANCE] + ([CHANCE] if CHANCE in methods else [])
    rows = []
    for m in methods:
        for f in faults:
            cell = cells.get((m, f))
            if cell is None:
                continue
            row = {**cell, **{v: cell.get(v, math.nan) for v in views}}
            row["diff"] = float(row[views[-1]]) - float(row[views[0]]) if len(views) > 1 else math.nan
            rows.append(row)
    return pd.DataFrame(rows, columns=["method", "family", "fault_type", *views, "diff"])


def comparison_markdown(comparison: pd.DataFrame, views: list[str], label: str = "Avg@5") -> str:
    """Methods as rows, each fault type a group of the views' values and their difference (last − first)."""
    if comparison.empty:
        return "_no results_\n"
    faults = _fault_order(comparison["fault_type"].unique()) + [ALL]
    cell = {(r["method"], r["fault_type"]): r for _, r in comparison.iterrows()}
    per_fault = views + (["Δ"] if len(views) > 1 else [])
    header = ["Method", "Family"] + [f"{f} {c}" for f in faults for c in per_fault]
    rows = []
    for m in dict.fromkeys(comparison["method"]):
        row = [str(m), str(cell[next(k for k in cell if k[0] == m)]["family"])]
        for f in faults:
            r = cell.get((m, f))
            for v in views:
                row.append(_fmt(r[v]) if r is not None else "–")
            if len(views) > 1:
                row.append(_signed(r["diff"]) if r is not None else "–")
        rows.append(row)
    return (f"{label} per view; Δ = {views[-1]} − {views[0]}.\n\n" if len(views) > 1 else "") + _md_table(
        header, rows, ["l", "l"] + ["r"] * (len(header) - 2)) + "\n"


def _signed(v: float) -> str:
    return "–" if math.isnan(v) else f"{v:+.2f}"


def case_ranks(results: pd.DataFrame) -> pd.DataFrame:
    """The rank each method gave the true root cause, one row per scored case.

    Columns: case_id, fault_type, root_cause, then one per method (in the results' order) holding the
    1-based rank (int), ``–`` (ran, but the truth was not ranked), ``N`` (no answer: the method abstained),
    ``E`` (error), ``T`` (timeout) or an empty string (no result for that method and case). Rows are ordered
    by fault type (the study's four first), true service and case id. Normal cases are left out.
    """
    cols = ["case_id", "fault_type", "root_cause"]
    if results.empty:
        return pd.DataFrame(columns=cols)
    df = results[results["root_cause"].notna()]
    methods = list(dict.fromkeys(df["method"]))
    table: dict[str, dict[str, object]] = {}
    for _, r in df.iterrows():
        cid = str(r["case_id"])
        row = table.setdefault(cid, {"case_id": cid, "fault_type": _str(r["fault_type"]),
                                     "root_cause": str(r["root_cause"])})
        kind = status.status_kind(None if pd.isna(r["status"]) else r["status"])
        if kind == status.OK:
            row[str(r["method"])] = ABSENT if pd.isna(r["rank"]) else int(r["rank"])
        else:
            row[str(r["method"])] = _CELL[kind]
    order = {f: i for i, f in enumerate(_fault_order(row["fault_type"] for row in table.values()))}
    rows = sorted(table.values(), key=lambda row: (order.get(str(row["fault_type"]), len(order)),
                                                  str(row["root_cause"]), str(row["case_id"])))
    out = pd.DataFrame(rows, columns=cols + methods)
    out[methods] = out[methods].astype(object).where(out[methods].notna(), NOT_RUN)
    return out


def _str(v: object) -> str:
    return "unknown" if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) else str(v)
