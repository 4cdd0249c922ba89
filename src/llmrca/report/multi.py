"""The multi-fault section of a report: AC@k with "any root in top k" and "all roots in top k".

A row of a multi-fault case carries ``roots`` (JSON list) and two ranks: ``rank`` (the best-placed root) and
``rank_all`` (the worst-placed; null when some root is absent). Only ``ok`` rows count as answers; the others
are misses, as in the main tables. For a single-fault case both ranks are the root's, so the section lists
multi-fault cases only: the main tables already hold the rest.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from llmrca.evaluate.scores import ac_at_k
from llmrca.report.status import OK, status_kinds

MULTI_COLUMNS = ["method", "family", "any_ac1", "any_ac3", "all_ac1", "all_ac3", "n"]


def multi_rows(results: pd.DataFrame) -> pd.DataFrame:
    if "roots" not in results.columns:
        return results.iloc[0:0]
    return results[results["roots"].notna()]


def multi_summary(results: pd.DataFrame) -> pd.DataFrame:
    df = multi_rows(results)
    out: list[dict[str, Any]] = []
    for m in dict.fromkeys(df["method"]):
        rows = df[df["method"] == m]
        ok = (status_kinds(rows["status"]) == OK).to_numpy()

        def ranks(col: str, rows: pd.DataFrame = rows, ok: Any = ok) -> list[int | None]:
            return [None if (not good or pd.isna(r)) else int(r) for r, good in zip(rows[col], ok, strict=True)]

        any_r, all_r = ranks("rank"), ranks("rank_all")
        out.append({"method": str(m), "family": str(rows["family"].iloc[0]),
                    "any_ac1": ac_at_k(any_r, 1), "any_ac3": ac_at_k(any_r, 3),
                    "all_ac1": ac_at_k(all_r, 1), "all_ac3": ac_at_k(all_r, 3), "n": len(rows)})
    return pd.DataFrame(out, columns=MULTI_COLUMNS)


def multi_markdown(results: pd.DataFrame) -> str:
    """The section, or "" when the results hold no multi-fault case."""
    from llmrca.report.tables import _fmt, _md_table

    summ = multi_summary(results)
    if summ.empty:
        return ""
    rows = [[r["method"], r["family"], *(_fmt(r[c]) for c in MULTI_COLUMNS[2:6]), str(r["n"])]
            for _, r in summ.iterrows()]
    table = _md_table(["Method", "Family", "any AC@1", "any AC@3", "all AC@1", "all AC@3", "Cases"], rows,
                      ["l", "l", "r", "r", "r", "r", "r"])
    return ("### Multi-fault cases\n\n" + table + "\n\nany: some root among the top k; all: every root among the "
            "top k (with two roots, all AC@1 is 0 by construction). Failures count as misses.\n")
