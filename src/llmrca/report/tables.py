"""Accuracy tables of evaluation results: per method × fault type and overall, as the reference study has.

Conventions:
- Only fault cases are scored: rows of normal cases (no root cause) are left out of every table, and so are rows
  of multi-fault cases (``llmrca.report.multi`` scores those; ``llmrca.report.detection`` the normal ones).
- A task that gives no ranking counts as a miss in AC@k/Avg@k and once in its own column: ``errors``
  (``error: …``, the method crashed or could not run), ``timeouts`` (``timeout``) or ``no_answer``
  (``no-answer: …``, the method ran and abstained: nothing abnormal to blame; ``llmrca.report.status``);
  ``time_s`` is the mean runtime over the ``ok`` rows only.
- ``n`` counts scored rows: cases, or (case, seed) pairs where a store holds several seeds.
- Rows whose case was never loaded (no fault type known) are grouped under the fault type ``unknown``.
- The ``chance`` row is the expected score of a uniformly random ranking of each case's candidate services
  (per case min(k, n)/n), over the distinct cases of the results; it has no time and no failures.
- Fine-grained level (``level="fine"``): the rank of the true indicator, over cases whose indicator is known,
  for the methods that rank indicators; no chance row there.
- ``summarize(..., ci=0.95)`` adds bounds ``<score>_lo``/``<score>_hi`` of a stratified bootstrap over cases
  (strata: fault type × true service, the repetitions of one experiment; see ``llmrca.report.ci``); NaN on the
  chance row, which is an expectation, not an estimate.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from llmrca.evaluate.scores import ac_at_k, avg_at_k, chance_ac_at_k, chance_avg_at_k
from llmrca.evaluate.store import load_results
from llmrca.report.status import ERROR, NO_ANSWER, OK, TIMEOUT, status_kinds

ALL = "all"
CHANCE = "chance"
UNKNOWN = "unknown"
FAULT_ORDER = ("cpu", "memory", "network", "gpu")  # the reference study's four, first
FAMILY_ORDER = ("metric", "trace", "multi-source", "llm-aware")
FAILURE_COLUMNS = ["errors", "timeouts", "no_answer"]  # counts of the rows without a ranking, by kind
SUMMARY_COLUMNS = ["method", "family", "fault_type", "ac1", "ac3", "avg5", "time_s", "n", *FAILURE_COLUMNS]
CI_COLUMNS = ["ac1_lo", "ac1_hi", "ac3_lo", "ac3_hi", "avg5_lo", "avg5_hi"]
JSON_KEYS = ("method", "fault_type", "ac1", "ac3", "avg5", "time_s", "n", *FAILURE_COLUMNS)
FAILURE_LABELS = ["Errors", "Timeouts", "No answer"]
FAILURE_NOTE = ("Errors (the method crashed or could not run), timeouts and no-answers (the method ran and "
                "found nothing abnormal to blame) count as misses.")
METRICS = {"ac1": "AC@1", "ac3": "AC@3", "avg5": "Avg@5"}


def _fault_order(faults: Iterable[str]) -> list[str]:
    present = set(faults) - {ALL}
    head = [f for f in FAULT_ORDER if f in present]
    tail = sorted(present - set(FAULT_ORDER) - {UNKNOWN})
    return head + tail + ([UNKNOWN] if UNKNOWN in present else [])


def _summary_row(method: str, family: str, fault: str, rows: pd.DataFrame, rank_col: str) -> dict[str, Any]:
    kind = status_kinds(rows["status"])
    ok = kind == OK
    ranks = [None if (not good or pd.isna(r)) else int(r) for r, good in zip(rows[rank_col], ok, strict=True)]
    times = rows.loc[ok, "runtime_s"].astype(float)
    return {
        "method": method, "family": family, "fault_type": fault,
        "ac1": ac_at_k(ranks, 1), "ac3": ac_at_k(ranks, 3), "avg5": avg_at_k(ranks, 5),
        "time_s": float(times.mean()) if len(times) else float("nan"),
        "n": len(rows), "errors": int((kind == ERROR).sum()), "timeouts": int((kind == TIMEOUT).sum()),
        "no_answer": int((kind == NO_ANSWER).sum()),
    }


def _chance_row(fault: str, cases: pd.DataFrame) -> dict[str, Any]:
    n = cases["n_candidates"].tolist()
    return {
        "method": CHANCE, "family": "baseline", "fault_type": fault,
        "ac1": chance_ac_at_k(n, 1), "ac3": chance_ac_at_k(n, 3), "avg5": chance_avg_at_k(n, 5),
        "time_s": float("nan"), "n": len(cases), "errors": 0, "timeouts": 0, "no_answer": 0,
    }


def summarize(
    results: pd.DataFrame | str | Path,
    *,
    level: Literal["service", "fine"] = "service",
    chance: bool = True,
    ci: float | None = None,
    resamples: int = 1000,
    ci_seed: int = 0,
) -> pd.DataFrame:
    """One row per method × fault type plus one ``all`` row per method (and the chance baseline).

    ``results``: a results frame (``llmrca.evaluate.evaluate``'s return value) or a results folder/file.
    Columns: method, family, fault_type, ac1, ac3, avg5, time_s, n, errors, timeouts, no_answer.
    ``ci``: a confidence level (e.g. 0.95) adds the columns ac1_lo, ac1_hi, ac3_lo, ac3_hi, avg5_lo, avg5_hi
    (stratified bootstrap over cases, ``resamples`` draws seeded by ``ci_seed``).
    """
    if level not in ("service", "fine"):
        raise ValueError(f"level must be 'service' or 'fine', got {level!r}")
    columns = SUMMARY_COLUMNS + (CI_COLUMNS if ci is not None else [])
    df = results if isinstance(results, pd.DataFrame) else load_results(results)
    if df.empty:
        return pd.DataFrame({c: [] for c in columns})
    df = df.copy()
    df["fault_type"] = df["fault_type"].astype(object).where(df["fault_type"].notna(), UNKNOWN)
    df = df[df["root_cause"].notna() | (df["fault_type"] == UNKNOWN)]  # normal cases are not scored
    if "roots" in df.columns:  # multi-fault cases have their own section (llmrca.report.multi)
        df = df[df["roots"].isna()]
    rank_col = "rank"
    if level == "fine":
        rank_col = "rank_fine"
        fine = df.loc[df["fine_level"].fillna(False).astype(bool), "method"].unique()
        df = df[df["method"].isin(fine) & df["indicator"].notna()]
    if df.empty:
        return pd.DataFrame({c: [] for c in columns})
    faults = _fault_order(df["fault_type"].unique())
    families = df.groupby("method", sort=False)["family"].first()
    methods = sorted(families.index, key=lambda m: _family_rank(families[m]))
    out: list[dict[str, Any]] = []
    for m in methods:
        rows = df[df["method"] == m]
        fam = str(families[m])
        for f in faults:
            part = rows[rows["fault_type"] == f]
            if len(part):
                out.append(_summary_row(m, fam, f, part, rank_col))
                if ci is not None:
                    out[-1].update(_ci_cells(part, rank_col, ci, resamples, ci_seed))
        out.append(_summary_row(m, fam, ALL, rows, rank_col))
        if ci is not None:
            out[-1].update(_ci_cells(rows, rank_col, ci, resamples, ci_seed))
    if chance and level == "service":
        cases = df[df["n_candidates"].notna()].drop_duplicates("case_id")
        for f in faults:
            part = cases[cases["fault_type"] == f]
            if len(part):
                out.append(_chance_row(f, part))
        if len(cases):
            out.append(_chance_row(ALL, cases))
    summary = pd.DataFrame(out, columns=columns).astype({c: "int64" for c in ["n", *FAILURE_COLUMNS]})
    if ci is not None:
        summary.attrs["ci"] = float(ci)
    return summary


def _ci_cells(rows: pd.DataFrame, rank_col: str, confidence: float, resamples: int,
              seed: int) -> dict[str, float]:
    from llmrca.report.ci import score_cis

    ok = status_kinds(rows["status"]) == OK
    ranks = [None if (not good or pd.isna(r)) else int(r) for r, good in zip(rows[rank_col], ok, strict=True)]
    strata = list(zip(rows["fault_type"].astype(str), rows["root_cause"].astype(str), strict=True))
    return score_cis(ranks, strata, confidence=confidence, resamples=resamples, seed=seed)


def _family_rank(family: object) -> int:
    return FAMILY_ORDER.index(family) if family in FAMILY_ORDER else len(FAMILY_ORDER)


def _num(v: Any) -> float | None:
    f = float(v)
    return None if math.isnan(f) else f


def to_json(summary: pd.DataFrame) -> list[dict[str, Any]]:
    """Records with exactly the keys method, fault_type, ac1, ac3, avg5, time_s, n, errors, timeouts,
    no_answer; NaN as None."""
    return [
        {
            "method": str(r["method"]), "fault_type": str(r["fault_type"]),
            "ac1": _num(r["ac1"]), "ac3": _num(r["ac3"]), "avg5": _num(r["avg5"]),
            "time_s": _num(r["time_s"]),
            "n": int(r["n"]), **{c: int(r[c]) for c in FAILURE_COLUMNS},
        }
        for _, r in summary.iterrows()
    ]


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{float(v):.{digits}f}"


def _fmt_time(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    v = float(v)
    return f"{v:.0f}" if v >= 100 else (f"{v:.2f}" if v >= 1 else f"{v:.2g}")


def _md_table(header: list[str], rows: list[list[str]], align: list[str]) -> str:
    marks = {"l": ":--", "r": "--:"}
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(marks[a] for a in align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _best(values: list[float]) -> float | None:
    finite = [v for v in values if not math.isnan(v)]
    return max(finite) if finite else None


def to_markdown(summary: pd.DataFrame, *, layout: Literal["per-metric", "wide"] = "per-metric") -> str:
    """Markdown tables with methods as rows and fault types as columns, best value per column in bold.

    ``per-metric``: one table per metric (AC@1, AC@3, Avg@5) plus one of time per case, cases, errors,
    timeouts and no-answers.
    ``wide``: one table, the fault types as column groups of AC@1 / AC@3 / Avg@5 (as the study lays it out).
    """
    if summary.empty:
        return "_no results_\n"
    faults = _fault_order(summary["fault_type"].unique()) + [ALL]
    methods = list(dict.fromkeys(summary["method"]))
    cell = {(r["method"], r["fault_type"]): r for _, r in summary.iterrows()}
    family = dict(zip(summary["method"], summary["family"], strict=False))

    def value(m: str, f: str, key: str) -> float:
        r = cell.get((m, f))
        return float(r[key]) if r is not None else float("nan")

    def best_of(f: str, key: str) -> float | None:
        return _best([value(m, f, key) for m in methods if m != CHANCE])

    with_ci = all(c in summary.columns for c in CI_COLUMNS)

    def shown(m: str, f: str, key: str) -> str:
        v = value(m, f, key)
        text = _fmt(v)
        text = f"**{text}**" if m != CHANCE and not math.isnan(v) and v == best_of(f, key) else text
        if with_ci:
            lo, hi = value(m, f, f"{key}_lo"), value(m, f, f"{key}_hi")
            if not (math.isnan(lo) or math.isnan(hi)):
                text += f" ({_fmt(lo)}–{_fmt(hi)})"
        return text

    parts: list[str] = []
    if layout == "wide":
        header = ["Method", "Family"] + [f"{f} {label}" for f in faults for label in METRICS.values()]
        header += ["Time/case (s)", "Cases", *FAILURE_LABELS]
        rows = []
        for m in methods:
            rows.append([m, str(family[m])] + [shown(m, f, k) for f in faults for k in METRICS]
                        + _time_cells(cell.get((m, ALL))))
        parts.append(_md_table(header, rows, ["l", "l"] + ["r"] * (len(header) - 2)))
    elif layout == "per-metric":
        for key, label in METRICS.items():
            rows = [[m, str(family[m])] + [shown(m, f, key) for f in faults] for m in methods]
            parts.append(f"### {label}\n\n" + _md_table(["Method", "Family"] + faults, rows,
                                                          ["l", "l"] + ["r"] * len(faults)))
        rows = [[m, str(family[m])] + _time_cells(cell.get((m, ALL))) for m in methods if m != CHANCE]
        parts.append("### Time per case and failures\n\n" + _md_table(
            ["Method", "Family", "Time/case (s)", "Cases", *FAILURE_LABELS], rows,
            ["l", "l", "r", "r", *"r" * len(FAILURE_LABELS)]))
    else:
        raise ValueError(f"layout must be 'per-metric' or 'wide', got {layout!r}")
    note = (FAILURE_NOTE + " Time is the mean over successful runs; "
            "chance = a uniformly random ranking of each case's services.")
    if with_ci:
        level = summary.attrs.get("ci")
        pct = f"{100 * float(level):g} % " if level else ""
        note += (f" In brackets: {pct}interval of a bootstrap over the repetitions (cases resampled within "
                 "each fault type × target).")
    return "\n\n".join(parts) + "\n\n" + note + "\n"


def _time_cells(r: Any) -> list[str]:
    if r is None:
        return ["–"] * (2 + len(FAILURE_COLUMNS))
    return [_fmt_time(r["time_s"]), str(int(r["n"])), *(str(int(r[c])) for c in FAILURE_COLUMNS)]


def print_table(summary: pd.DataFrame, console: Any = None, *, title: str = "RCA accuracy") -> None:
    """The summary as a rich table (one block of rows per method) on ``console`` (default: stdout); errors,
    timeouts and no-answers share one ``E/T/N`` column."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=title, title_justify="left")
    table.add_column("Method", style="bold")
    table.add_column("Fault")
    with_ci = all(c in summary.columns for c in CI_COLUMNS)
    for label in METRICS.values():  # an interval "0.25–0.75" is 9 wide: kept whole (it does not wrap)
        table.add_column(label, justify="right", min_width=9 if with_ci else None, no_wrap=with_ci)
    table.add_column("s/case" if with_ci else "Time/case (s)", justify="right")
    table.add_column("Cases", justify="right")
    table.add_column("E/T/N", justify="right")  # one column keeps the table inside 80 terminal columns
    methods = list(dict.fromkeys(summary["method"]))

    def score(r: Any, key: str) -> str:  # the value, and its interval where the summary has one (--ci)
        lo, hi = (r.get(f"{key}_lo"), r.get(f"{key}_hi")) if with_ci else (None, None)
        if lo is None or hi is None or math.isnan(float(lo)) or math.isnan(float(hi)):
            return _fmt(r[key])
        return f"{_fmt(r[key])}\n{_fmt(lo)}–{_fmt(hi)}"  # the interval under the value: 80 columns still

    for i, m in enumerate(methods):
        rows = summary[summary["method"] == m]
        for j, (_, r) in enumerate(rows.iterrows()):
            table.add_row(
                m if j == 0 else "", str(r["fault_type"]), score(r, "ac1"), score(r, "ac3"), score(r, "avg5"),
                _fmt_time(r["time_s"]), str(int(r["n"])), "/".join(failure_cells(r, chance_blank=True)).strip("/"),
                style="dim" if m == CHANCE else ("bold" if r["fault_type"] == ALL else None),
                end_section=(j == len(rows) - 1 and i < len(methods) - 1),
            )
    console.print(table)
    note = "E/T/N: errors/timeouts/no answer. " + FAILURE_NOTE
    if with_ci:
        level = summary.attrs.get("ci")
        note += (f" Under each score: its {100 * float(level):g} % " if level else " Under each score: its ")
        note += "bootstrap interval (cases resampled within each fault type × target)."
    console.print(note, style="dim", highlight=False)


def failure_cells(r: Any, *, chance_blank: bool = False) -> list[str]:
    """A summary row's errors, timeouts and no-answers for a rich table: errors and timeouts in red (the
    method failed), no-answers in yellow (it abstained); blank on the chance row when ``chance_blank``."""
    if r is None or (chance_blank and r["method"] == CHANCE):
        return [""] * len(FAILURE_COLUMNS)
    out = []
    for c, colour in zip(FAILURE_COLUMNS, ("red", "red", "yellow"), strict=True):
        v = int(r[c])
        out.append(f"[{colour}]{v}[/{colour}]" if v else "0")
    return out



# --------------------------------------------------------------------------------------------- intervals


def print_intervals(summary: pd.DataFrame, console: Any = None) -> None:
    """Each method's scores over all cases with their bootstrap intervals (``summarize(..., ci=…)``), as a
    rich table narrow enough for 80 columns; nothing when the summary has no intervals."""
    from rich.console import Console
    from rich.table import Table

    if summary.empty or not all(c in summary.columns for c in CI_COLUMNS):
        return
    console = console or Console()
    level = summary.attrs.get("ci")
    table = Table(title=f"All cases, with {100 * float(level):g} % bootstrap intervals" if level else
                  "All cases, with bootstrap intervals", title_justify="left")
    table.add_column("Method", style="bold")
    for label in METRICS.values():
        table.add_column(label, justify="right")
    for _, r in summary[(summary["fault_type"] == ALL) & (summary["method"] != CHANCE)].iterrows():
        table.add_row(str(r["method"]), *(f"{_fmt(r[k])} ({_fmt(r[f'{k}_lo'])}–{_fmt(r[f'{k}_hi'])})"
                                          for k in METRICS))
    console.print(table)
