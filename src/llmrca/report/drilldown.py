"""One HTML page per case of a report: what was done, what the telemetry showed around it, and what every
method answered.

A page holds the case's truth (fault, kind, root service, key series, when), a figure of metric series around
the fault's injection (the true root's key series, then the series each method ranked first), and, per view,
one row per method: its status in words (ranked, missed, no answer, error, timeout) with the status text, the
rank of the truth, its top five services, its first candidates with their scores, its diagnosis and its time.

The case is read back from the ``case_path`` of its result rows only while its page is written; a case whose
folder is gone (moved, deleted) gets a page that says so, with the answers and without the figure. Methods may
rank a service rather than a series; the figure then shows that service's series that moved most across the
injection, and says so in its caption.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import warnings
from collections.abc import Iterator, Mapping
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llmrca.report.status import ERROR, NO_ANSWER, OK, TIMEOUT, status_kind

WINDOW_S = 600.0  # seconds of telemetry shown either side of the fault
MAX_SERIES = 8  # panels in a case's figure: the truth's series and the most-named top series
SHOWN_CANDIDATES = 5

STATUS_WORDS = {ERROR: "error", TIMEOUT: "timeout", NO_ANSWER: "no answer"}
_CSS = """
table.answers td{text-align:left;vertical-align:top}
td.ok-hit{background:#dafbe1;color:#000}td.ok-miss{background:#eaeef2;color:#000}
td.s-error{background:#cf222e;color:#fff}td.s-timeout{background:#8250df;color:#fff}
td.s-no-answer{background:#fff8c5;color:#7d4e00}
td.why{white-space:normal;min-width:260px;max-width:520px;text-align:left}
td ol{margin:0;padding-left:18px;text-align:left}b.truth{color:#1a7f37}
"""


def page_name(case_id: str) -> str:
    """A file name for a case's page: readable, safe in any file system, unique (a hash of the id)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", case_id).strip("._")[:80] or "case"
    return f"{slug}-{hashlib.sha1(case_id.encode()).hexdigest()[:8]}.html"


def write_case_pages(folder: str | Path, results: Mapping[str, pd.DataFrame], *,
                     back: str = "../report.html", jobs: int = 1) -> dict[str, str]:
    """Write a page per scored (fault) case of ``results`` (view → results frame) into ``folder``; returns
    case id → file name. ``back``: the address of the report, relative to the pages. ``jobs``: processes
    drawing pages at once (the figure is most of a page's cost); the pages are the same bytes either way."""
    from llmrca.evaluate.store import write_atomic

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    frames = [df.assign(_view=v) for v, df in results.items() if not df.empty]
    if not frames:
        return {}
    rows = pd.concat(frames, ignore_index=True)
    rows = rows[rows["root_cause"].notna()]
    tasks = [(str(cid), part, list(results), back) for cid, part in rows.groupby("case_id", sort=True)]
    names: dict[str, str] = {}
    for (cid, *_), text in zip(tasks, _pages(tasks, jobs), strict=True):
        name = page_name(cid)
        write_atomic(folder / name, text.encode("utf-8"))
        names[cid] = name
    return names


def _pages(tasks: list[tuple[str, pd.DataFrame, list[str], str]], jobs: int) -> Iterator[str]:
    import multiprocessing

    if jobs <= 1 or len(tasks) < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return (_page(t) for t in tasks)
    from concurrent.futures import ProcessPoolExecutor

    # fork, not spawn: a spawned child imports the caller's main module, which a script without a main guard
    # would run again; the forked children only draw and return text.
    pool = ProcessPoolExecutor(max_workers=min(jobs, len(tasks)), mp_context=multiprocessing.get_context("fork"))
    try:
        return iter(list(pool.map(_page, tasks, chunksize=4)))
    finally:
        pool.shutdown()


def _page(task: tuple[str, pd.DataFrame, list[str], str]) -> str:
    cid, part, views, back = task
    return case_page(cid, part, views, back=back)


def case_page(case_id: str, rows: pd.DataFrame, views: list[str], *, back: str = "../report.html") -> str:
    """The page of one case from its result rows (all views; column ``_view`` names the view of a row)."""
    from llmrca.report.html import page

    first = rows.iloc[0]
    parts = [f'<p><a href="{escape(back)}">← report</a></p>', f"<h1>Case {escape(case_id)}</h1>"]
    case, missing = _load(rows)
    truth = case.truth if case is not None else None
    facts = [("Fault type", _s(first.get("fault_type"))), ("Fault kind", _s(first.get("fault_kind"))),
             ("True root cause", _s(first.get("root_cause"))), ("Key series", _s(first.get("indicator"))),
             ("Candidate services", _s(first.get("n_candidates")))]
    if truth is not None and truth.start is not None:
        span = f"{truth.end - truth.start:.0f} s" if truth.end is not None else "until the end"
        facts.append(("Injected", f"at unix {truth.start:.0f} s, lasting {span}"))
    facts.append(("Case folder", _s(first.get("case_path"))))
    parts.append('<table class="meta">' + "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>"
                                                   for k, v in facts) + "</table>")

    parts.append('<h2 id="telemetry">Telemetry around the fault</h2>')
    if case is None:
        parts.append(f'<p class="note" id="no-case">The case could not be read back, so its telemetry is not '
                     f"shown: {escape(missing)}</p>")
    else:
        parts.append(_telemetry(case, rows))

    for v in views:
        part = rows[rows["_view"] == v]
        if part.empty:
            continue
        parts.append(f'<h2 id="answers-{escape(v)}">What each method answered, {escape(v)} view</h2>')
        parts.append(_answers(part, _s(first.get("root_cause"))))
    return page(f"Case {case_id}", "\n".join(parts)).replace("</style>", _CSS + "</style>", 1)


def _s(v: object) -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return str(v)


def _load(rows: pd.DataFrame) -> tuple[Any, str]:
    """The case of the rows' ``case_path`` and "", or None and why it could not be read."""
    from llmrca.io import load_case

    paths = [p for p in dict.fromkeys(rows["case_path"].dropna().astype(str))]
    if not paths:
        return None, "the results name no case folder"
    path = Path(paths[0])
    if not path.exists():
        return None, f"the case folder {path} is not there any more (moved or deleted)"
    try:
        return load_case(path, validate=False), ""
    except Exception as e:  # noqa: BLE001 - any unreadable case: the page says why and goes on
        return None, f"{path}: {' '.join(str(e).split())[:300]}"


# --------------------------------------------------------------------------------------------- answers


def _answers(rows: pd.DataFrame, root: str) -> str:
    head = ("<tr><th class=\"name\">Method</th><th>Status</th><th>Rank of the truth</th>"
            "<th class=\"name\">Top 5 services</th><th class=\"name\">First candidates (score)</th>"
            "<th>Diagnosis</th><th>Time (s)</th><th class=\"name\">Status text</th></tr>")
    body = []
    for _, r in rows.iterrows():
        status = None if pd.isna(r["status"]) else str(r["status"])
        kind = status_kind(status)
        rank = None if pd.isna(r["rank"]) else int(r["rank"])
        if kind == OK:
            cls, word = ("ok-hit", f"ranked the truth {rank}") if rank is not None else \
                ("ok-miss", "ok, missed: the truth is not in its ranking")
        else:
            cls, word = f"s-{kind}", STATUS_WORDS[kind]
        top5 = _json_list(r.get("top5")) if kind == OK else []
        services = "".join(f"<li><b class=\"truth\">{escape(str(s))}</b></li>" if s == root
                           else f"<li>{escape(str(s))}</li>" for s in top5)
        cands = _json_list(r.get("top_candidates")) if kind == OK else []
        cand_html = "".join(f"<li>{escape(str(c[0]))} ({_score(c[1])})</li>" for c in cands[:SHOWN_CANDIDATES]
                            if isinstance(c, list) and len(c) == 2)
        if kind == OK and not cands:
            cand_html = "<li>scores not stored by this run</li>"
        why = "" if kind == OK else (status or "no status stored")
        runtime = "–" if pd.isna(r.get("runtime_s")) else f"{float(r['runtime_s']):.3g}"
        body.append(
            f'<tr data-method="{escape(str(r["method"]))}"><td class="name">{escape(str(r["method"]))}</td>'
            f'<td class="{cls}">{escape(word)}</td><td>{rank if rank is not None else "–"}</td>'
            f"<td><ol>{services}</ol></td><td><ol>{cand_html}</ol></td><td>{escape(_s(r.get('diagnosis')))}</td>"
            f'<td>{runtime}</td><td class="why">{escape(why)}</td></tr>')
    return f'<table class="answers">{head}{"".join(body)}</table>'


def _json_list(v: object) -> list[Any]:
    if not isinstance(v, str):
        return []
    try:
        out = json.loads(v)
    except ValueError:
        return []
    return out if isinstance(out, list) else []


def _score(v: object) -> str:
    return "–" if not isinstance(v, (int, float)) or isinstance(v, bool) else f"{float(v):.4g}"


# --------------------------------------------------------------------------------------------- telemetry


def _telemetry(case: Any, rows: pd.DataFrame) -> str:
    from llmrca.report.figures import telemetry

    metrics = case.observation.metrics
    truth = case.truth
    columns = [c for c in metrics.columns if c != "time"] if metrics is not None else []
    if metrics is None or not columns:
        return '<p class="note">The case holds no metric series.</p>'
    start = truth.start
    shift = _shifts(metrics, columns, start)
    series: dict[str, list[str]] = {}  # column → captions
    root = truth.service
    if truth.indicator in columns:
        series[truth.indicator] = ["true root's key series"]
    elif root is not None:
        own = [c for c in columns if c.split("_", 1)[0] == root]
        if own:
            best = max(own, key=lambda c: shift.get(c, 0.0))
            series[best] = [f"the true root {root}'s series that moved most"]
    named: dict[str, list[str]] = {}
    for _, r in rows.drop_duplicates(["method"]).iterrows():
        if status_kind(None if pd.isna(r["status"]) else r["status"]) != OK:
            continue
        first = _first_candidate(r)
        if first is None:
            continue
        col, how = first, "ranked it first"
        if first not in columns:
            own = [c for c in columns if c.split("_", 1)[0] == first.split("_", 1)[0]]
            if not own:
                continue
            col = max(own, key=lambda c: shift.get(c, 0.0))
            how = f"ranked {first.split('_', 1)[0]} first (its series that moved most)"
        named.setdefault(col, []).append(f"{r['method']} {how}")
    for col, who in sorted(named.items(), key=lambda kv: -len(kv[1])):
        if len(series) >= MAX_SERIES:
            break
        series.setdefault(col, []).extend(who)
    panels = [(c, f"{c}: {'; '.join(who)}") for c, who in series.items()]
    if not panels:
        return '<p class="note">No series to show: no method ranked a metric of this case.</p>'
    svg = telemetry(metrics, panels, start=start, end=truth.end, window_s=WINDOW_S)
    return (f'<p class="note">{len(panels)} series, {WINDOW_S:.0f} s either side of the fault at most; '
            "from the whole case (a method under a narrower view saw fewer series).</p>"
            f'<div class="fig" id="telemetry-figure">{svg}</div>')


def _first_candidate(r: pd.Series) -> str | None:
    cands = _json_list(r.get("top_candidates"))
    if cands and isinstance(cands[0], list) and cands[0]:
        return str(cands[0][0])
    top5 = _json_list(r.get("top5"))
    return str(top5[0]) if top5 else None


def _shifts(metrics: pd.DataFrame, columns: list[str], start: float | None) -> dict[str, float]:
    """How far each series moved across ``start``: |mean after − mean before| over the spread before."""
    if start is None:
        return {}
    t = metrics["time"].to_numpy(dtype=float)
    before, after = t < start, t >= start
    if before.sum() < 2 or after.sum() < 1:
        return {}
    try:
        y = metrics[columns].to_numpy(dtype=float, na_value=np.nan)
    except (TypeError, ValueError):  # a column of text: what does not parse counts as missing
        y = metrics[columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    b, a = y[before], y[after]
    nb, na = np.isfinite(b).sum(axis=0), np.isfinite(a).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: their shift is 0 below
        mb, ma, sd = np.nanmean(b, axis=0), np.nanmean(a, axis=0), np.nanstd(b, axis=0)
    scale = np.where(sd > 0, sd, 1e-9 * (1.0 + np.abs(mb)))  # a flat series that then moves: a large shift
    shift = np.where((nb >= 2) & (na >= 1), np.abs(ma - mb) / scale, 0.0)
    return {c: float(v) for c, v in zip(columns, np.nan_to_num(shift), strict=True)}
