"""Why an accuracy table is empty, in one line: a table with no rows and no word is a silent failure."""

from __future__ import annotations

import pandas as pd

from llmrca.report.status import OK, status_kinds


def why_empty(results: pd.DataFrame) -> str | None:
    """None when ``summarize(results)`` has rows to show; else the reason, naming what the results lack."""
    from llmrca.report.tables import summarize

    if results is None or results.empty:
        return "no result rows (no method ran on any case)"
    if not summarize(results, chance=False).empty:
        return None
    n = len(results)
    cases = results["case_id"].nunique() if "case_id" in results else n
    reasons = []
    truth = results["root_cause"].notna() if "root_cause" in results else pd.Series([False] * n)
    if not truth.any():
        reasons.append(f"0 of {cases} case(s) had a ground truth (a root-cause service), so there is nothing to "
                       "score (a collected case gets one from `llmrca testbed collect --fault F --target S "
                       "--inject-time T`)")
    kinds = status_kinds(results["status"]) if "status" in results else pd.Series([OK] * n)
    if (kinds != OK).all():
        reasons.append(f"all {n} row(s) failed, first: {str(results['status'].iloc[0])[:200]}")
    elif not truth.any():
        reasons.append(f"{int((kinds == OK).sum())} ranking(s) are in results.jsonl")
    if not reasons:
        reasons.append(f"no row of the {cases} case(s) is one this table scores (only multi-fault or fault-free "
                       "cases)")
    return "; ".join(reasons)
