"""A benchmark's results as a self-contained HTML page: inline CSS and inline SVG figures, no script, no
external resource; ``write_report`` adds one page per case beside it (``llmrca.report.drilldown``).

Sections: the views compared (a score per method × fault type under each view and the difference), the
method families, the study-style accuracy table of each view (methods grouped by family, AC@1 / AC@3 / Avg@5
per fault type with bootstrap intervals, time per case, errors, timeouts and no-answers, the chance row), the
figures (``llmrca.report.figures``: bars with intervals, who got blamed, accuracy against time), fault-free
detection, diagnosis, multi-fault cases, a heatmap of Avg@5 per view, and the rank each method gave the true
root cause in every case (each case linked to its page). A method × fault type in which no case got a ranking
shows "failed n/n" (or "timeout", "no answer"), never a score of 0. Every table scrolls sideways inside the
page rather than being cut; every coloured cell's text has a WCAG contrast of at least 4.5 against its
background. Every name that comes from data is escaped.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path

import pandas as pd

from llmrca.report.compare import ABSENT, ERROR, NO_ANSWER, NOT_RUN, TIMEOUT, case_ranks, compare_views
from llmrca.report.detection import confusion, detection_summary, diagnosis_summary, has_diagnoses
from llmrca.report.figures import failure_word
from llmrca.report.multi import multi_rows, multi_summary
from llmrca.report.tables import (
    ALL,
    CHANCE,
    CI_COLUMNS,
    FAILURE_COLUMNS,
    FAILURE_LABELS,
    FAILURE_NOTE,
    METRICS,
    _fault_order,
    _fmt,
    _fmt_time,
    summarize,
)

CASE_PAGES = "report-cases"  # beside the report; not "cases", which a bench folder holds its suite in
FAMILY_LABELS = {"metric": "Metric-based", "trace": "Trace-based", "multi-source": "Multi-source",
                 "llm-aware": "LLM-aware", "baseline": "Baseline"}

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1500px;
 padding:0 16px;color:#1b1f24}
h1{font-size:1.6em;margin-bottom:4px}h2{margin-top:2em;border-bottom:1px solid #d0d7de;padding-bottom:4px}
h3{margin-top:1.4em}
table{border-collapse:collapse;margin:8px 0 16px}
th,td{padding:3px 7px;border:1px solid #d8dee4;text-align:right;white-space:nowrap}
th{background:#f6f8fa;font-weight:600}
td.name,th.name{text-align:left}
tr.family th{text-align:left;background:#eaeef2;font-size:.95em}
tr.chance td{color:#57606a;font-style:italic;background:#fafbfc}
td small{display:block;color:#57606a;font-size:.78em;line-height:1.1}
td[style] small{color:inherit}
.scroll{overflow-x:auto;max-width:100%}
.fig{overflow-x:auto;max-width:100%;margin:8px 0 16px}.fig svg{display:block;height:auto}
td.fail{background:#ffebe9;color:#a40e26;text-align:center;font-weight:600}
a{color:#0550ae}
td.best{font-weight:700}
td.err{color:#cf222e}
.meta td,.meta th{text-align:left}
.heatmaps{display:flex;flex-wrap:wrap;gap:32px}
.heat td{min-width:52px;text-align:center}
.ranks td{text-align:center;padding:1px 4px;min-width:22px}
.ranks th.m{writing-mode:vertical-rl;transform:rotate(180deg);text-align:left;padding:6px 2px;font-weight:500}
.r1{background:#1a7f37;color:#fff}.r23{background:#7fcf8e;color:#000}.r45{background:#f2d56b;color:#000}
.r6{background:#f6c2a2;color:#000}
.ra{background:#eaeef2;color:#57606a}.re{background:#cf222e;color:#fff}.rt{background:#8250df;color:#fff}
.rna{background:#fff8c5;color:#7d4e00}td.na{color:#9a6700}
.ranks td a{color:inherit}
.rn{background:#fff}
.legend span{display:inline-block;padding:1px 8px;margin-right:6px;border:1px solid #d8dee4}
p.note{color:#57606a;max-width:1100px}
details summary{cursor:pointer;font-weight:600;margin:8px 0}
"""


def _frame_table(frame: pd.DataFrame) -> str:
    """A small frame as a plain HTML table (floats to 3 significant digits, NaN as n/a)."""
    def cell(v: object) -> str:
        if isinstance(v, float):
            return "n/a" if math.isnan(v) else f"{v:.3g}"
        return escape(str(v))

    head = "".join(f"<th>{escape(str(c))}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>"
                   for r in frame.itertuples(index=False))
    return f"<table><tr>{head}</tr>{body}</table>"


def to_html(
    results: Mapping[str, pd.DataFrame],
    *,
    title: str = "llmrca benchmark",
    info: Sequence[tuple[str, str]] = (),
    notes: Sequence[str] = (),
    summaries: Mapping[str, pd.DataFrame] | None = None,
    confidence: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
    figures: bool = True,
    case_links: Mapping[str, str] | None = None,
) -> str:
    """The report page for ``results`` (view name → results frame, in display order).

    ``info``: (label, value) lines shown under the title; ``notes``: extra paragraphs (plain text).
    ``summaries``: ``summarize(..., ci=confidence)`` of each view, if already computed.
    ``figures``: draw the figures section (matplotlib). ``case_links``: case id → the address of its page
    (relative to this one), linked from the per-case table.
    """
    views = list(results)
    if not views:
        raise ValueError("to_html needs the results of at least one view")
    if summaries is None:
        summaries = {v: summarize(results[v], ci=confidence, resamples=resamples, ci_seed=seed)
                     for v in views}
    parts = [f"<h1>{escape(title)}</h1>"]
    if info:
        parts.append('<table class="meta">' + "".join(
            f"<tr><th>{escape(str(k))}</th><td>{escape(str(v))}</td></tr>" for k, v in info) + "</table>")
    toc = []
    if len(views) > 1:
        toc.append(("compare", f"{' vs '.join(views)}: side by side"))
    toc.append(("families", "Method families"))
    toc += [(f"acc-{i}", f"Accuracy, {v} view") for i, v in enumerate(views)]
    if figures:
        toc.append(("figures", "Figures"))
    toc.append(("detection", "Fault-free runs: detection by top score"))
    if any(has_diagnoses(results[v]) for v in views):
        toc.append(("diagnosis", "Diagnosis accuracy per fault kind"))
    if any(len(multi_rows(results[v])) for v in views):
        toc.append(("multi", "Multi-fault cases"))
    toc += [("heatmap", "Heatmap of Avg@5"), ("cases", "Rank of the true root cause, per case"),
            ("how", "How to read this report")]
    parts.append("<ul>" + "".join(f'<li><a href="#{a}">{escape(t)}</a></li>' for a, t in toc) + "</ul>")

    if len(views) > 1:
        parts.append(f'<h2 id="compare">{escape(" vs ".join(views))}: side by side</h2>')
        first, last = escape(views[0]), escape(views[-1])
        parts.append(f'<p class="note">The same methods on the same cases; only the metric columns they see '
                     f"differ. Δ = {last} − {first}: green where the {last} view helps, red where it "
                     "hurts.</p>")
        for key in ("avg5", "ac1"):
            parts.append(f"<h3>{METRICS[key]}</h3>")
            parts.append(_comparison_table(compare_views(summaries, key), views))

    parts.append('<h2 id="families">Method families</h2>')
    parts.append('<p class="note">Mean Avg@5 over the methods of each family (the dummy baseline left out), '
                 "per fault type, and the family's best method: the level at which the reference study stated "
                 "its findings (multi-source best, metric-based fault-type dependent, trace-based weak).</p>")
    for v in views:
        parts.append(f"<h3>{escape(v)} view</h3>{_family_table(summaries[v])}")

    for i, v in enumerate(views):
        parts.append(f'<h2 id="acc-{i}">Accuracy, {escape(v)} view</h2>')
        parts.append(_accuracy_table(summaries[v], confidence))

    if figures:
        parts.append(_figures_section(results, summaries, confidence))

    parts.append('<h2 id="detection">Fault-free runs: detection by top score</h2>')
    parts.append('<p class="note">AUROC of each method\'s top score separating fault cases (positive) from '
                 "normal cases (negative): scale-free, so it compares methods whose scores are on different "
                 "scales; n/a without normal runs. Median and p90: the top score on normal runs.</p>")
    for v in views:
        parts.append(f"<h3>{escape(v)} view</h3>{_frame_table(detection_summary(results[v]))}")
    if any(has_diagnoses(results[v]) for v in views):
        parts.append('<h2 id="diagnosis">Diagnosis accuracy per fault kind</h2>')
        parts.append('<p class="note">Share of fault runs whose diagnosis names the fault\'s kind (no '
                     "diagnosis counts as wrong), and each method's confusion matrix (rows: true kind).</p>")
        for v in views:
            if not has_diagnoses(results[v]):
                continue
            parts.append(f"<h3>{escape(v)} view</h3>{_frame_table(diagnosis_summary(results[v]))}")
            for m in dict.fromkeys(diagnosis_summary(results[v])["method"]):
                cm = confusion(results[v], m).reset_index().rename(columns={"fault_kind": "true \\ named"})
                parts.append(f"<h4>{escape(m)}</h4>{_frame_table(cm)}")

    if any(len(multi_rows(results[v])) for v in views):
        parts.append('<h2 id="multi">Multi-fault cases</h2>')
        parts.append('<p class="note">any: some root among the top k; all: every root among the top k.</p>')
        for v in views:
            parts.append(f"<h3>{escape(v)} view</h3>{_frame_table(multi_summary(results[v]))}")

    parts.append('<h2 id="heatmap">Heatmap of Avg@5 (method × fault type)</h2><div class="heatmaps">')
    for v in views:
        parts.append(f"<div><h3>{escape(v)} view</h3>{_heatmap(summaries[v])}</div>")
    parts.append("</div>")

    parts.append('<h2 id="cases">Rank of the true root cause, per case</h2>')
    parts.append('<p class="legend"><span class="r1">1</span><span class="r23">2–3</span>'
                 '<span class="r45">4–5</span><span class="r6">&gt; 5</span>'
                 f'<span class="ra">{ABSENT} ran, did not rank the truth</span>'
                 f'<span class="rna">{NO_ANSWER} no answer (nothing abnormal found)</span>'
                 f'<span class="re">{ERROR} error</span><span class="rt">{TIMEOUT} timeout</span>'
                 '<span class="rn">blank: no result</span></p>')
    if case_links:
        parts.append('<p class="note">A case id links to its page: the telemetry around the fault and each '
                     "method's top five with scores, status and error or no-answer text.</p>")
    for j, v in enumerate(views):
        opened = " open" if j == 0 else ""
        order = [str(m) for m in dict.fromkeys(summaries[v]["method"]) if m != CHANCE]  # family blocks
        parts.append(f"<details{opened}><summary>{escape(v)} view</summary>"
                     f"{_rank_table(case_ranks(results[v]), order, case_links)}</details>")

    parts.append('<h2 id="how">How to read this report</h2>')
    level = f"{100 * confidence:g} %"
    for text in (
        ("AC@k is the share of cases whose true root cause (a service) is among a method's top k services; "
         "Avg@5 is the mean of AC@1 … AC@5. Rankings of metric columns are collapsed to services by first "
         "occurrence. " + FAILURE_NOTE + " A no-answer is an abstention: the method ran, found no "
         "abnormal trace, service or change, and said so instead of ranking at random. Time per case is "
         "the mean wall time of rank() over the successful runs."),
        (f"Small grey numbers are {level} intervals of a stratified percentile bootstrap over the "
         f"repetitions: each of {resamples} resamples (seed {seed}) redraws, with replacement, the cases of "
         "every fault type × target, so the mix of faults and targets stays the suite's. A zero-width "
         "interval means the repetitions agreed."),
        ("The chance row is the expected score of a uniformly random ranking of each case's candidate "
         "services."),
        *notes,
    ):
        parts.append(f'<p class="note">{escape(text)}</p>')
    return page(title, "\n".join(parts))


def page(title: str, body: str) -> str:
    """A whole HTML document around ``body``, every table wrapped so that a wide one scrolls sideways."""
    body = re.sub(r"<table\b", '<div class="scroll"><table', body).replace("</table>", "</table></div>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>\n{body}\n</body></html>\n")


def write_report(
    path: str | Path,
    results: Mapping[str, pd.DataFrame],
    *,
    case_pages: bool = True,
    summaries: Mapping[str, pd.DataFrame] | None = None,
    confidence: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
    jobs: int = 1,
    **kwargs: object,
) -> Path:
    """Write ``to_html``'s page to ``path`` and, with ``case_pages``, one page per scored case into the
    folder ``report-cases/`` beside it (``llmrca.report.drilldown``), linked from the per-case table, drawn by
    ``jobs`` processes. Returns ``path``. Other keyword arguments go to ``to_html``."""
    from llmrca.evaluate.store import write_atomic
    from llmrca.report.drilldown import write_case_pages

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    views = list(results)
    if summaries is None:
        summaries = {v: summarize(results[v], ci=confidence, resamples=resamples, ci_seed=seed)
                     for v in views}
    links = write_case_pages(path.parent / CASE_PAGES, results, back=f"../{path.name}", jobs=jobs) \
        if case_pages else {}
    text = to_html(results, summaries=summaries, confidence=confidence, resamples=resamples, seed=seed,
                   case_links={cid: f"{CASE_PAGES}/{name}" for cid, name in links.items()},
                   **kwargs)  # type: ignore[arg-type]
    write_atomic(path, text.encode("utf-8"))
    return path


def _figures_section(results: Mapping[str, pd.DataFrame], summaries: Mapping[str, pd.DataFrame],
                     confidence: float) -> str:
    from llmrca.report import figures

    views = list(results)
    out = ['<h2 id="figures">Figures</h2>',
           (f'<p class="note">Bars: each method per fault type, with its {100 * confidence:g} % bootstrap '
           "interval; the dashed line is chance. A method that gave no ranking in any case of a fault type "
           "is written out (\"failed n/n\", \"timeout n/n\", \"no answer n/n\") instead of a bar; a red "
           "\"k/n failed\" beside a bar counts the cases it gave no ranking in.</p>")]
    for i, v in enumerate(views):
        s = summaries[v]
        if s.empty:
            continue
        for key in ("avg5", "ac1"):
            out.append(f'<h3 id="fig-{key}-{i}">{METRICS[key]} per method and fault type, {escape(v)} view</h3>'
                       f'<div class="fig">{figures.accuracy_bars(s, key)}</div>')
    out.append('<h3 id="fig-blame">Who got blamed: true service × the service ranked first</h3>'
               '<p class="note">One panel per method over the single-fault cases: counts, shaded by the share '
               "of the row; the diagonal is a right top-1, \"(no ranking)\" holds the cases the method failed "
               "or abstained on.</p>")
    for v in views:
        try:
            svg = figures.blame_matrices(results[v])
        except ValueError:
            continue
        out.append(f"<h4>{escape(v)} view</h4><div class=\"fig\">{svg}</div>")
    drawn = {v: s for v, s in summaries.items() if not s.empty}
    if drawn:
        out.append('<h3 id="fig-time">Accuracy against time per case</h3>'
                   f'<div class="fig">{figures.accuracy_vs_time(drawn)}</div>')
    return "\n".join(out)





# --------------------------------------------------------------------------------------------- tables


def _num(v: object) -> float:
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan
    return f


def _family_of(summary: pd.DataFrame) -> dict[str, str]:
    return {str(m): str(f) for m, f in zip(summary["method"], summary["family"], strict=True)}


def _grouped(methods: Sequence[str], family: Mapping[str, str]) -> list[tuple[str, list[str]]]:
    """Methods in blocks of one family each (the order of their first appearance), chance last."""
    blocks: dict[str, list[str]] = {}
    for m in methods:
        if m != CHANCE:
            blocks.setdefault(family.get(m, "?"), []).append(m)
    out = list(blocks.items())
    if CHANCE in methods:
        out.append(("baseline", [CHANCE]))
    return out


def _family_row(fam: str, width: int) -> str:
    return f'<tr class="family"><th colspan="{width}">{escape(FAMILY_LABELS.get(fam, fam))}</th></tr>'


def _family_table(summary: pd.DataFrame) -> str:
    from llmrca.report.families import family_scores

    fam = family_scores(summary, "avg5")
    if fam.empty:
        return "<p>no results</p>"
    faults = [f for f in _fault_order(fam["fault_type"].unique()) if f != ALL]
    cell = {(r["family"], r["fault_type"]): r for _, r in fam.iterrows()}
    # (family, fault type) → how many of its methods gave no ranking in any case there
    failed: dict[tuple[str, str], int] = {}
    for _, r in summary.iterrows():
        if failure_word(r) is not None:
            key = (str(r["family"]), str(r["fault_type"]))
            failed[key] = failed.get(key, 0) + 1
    head = "".join(f"<th>{escape(f)}</th>" for f in [*faults, ALL])
    rows = []
    for f in dict.fromkeys(fam["family"]):
        tds = []
        for x in [*faults, ALL]:
            r = cell.get((f, x))
            k = failed.get((f, x), 0)
            if r is not None and k == int(r["methods"]):
                tds.append(f'<td class="fail">failed ({k}/{k} methods)</td>')
                continue
            if r is not None and k:
                tds.append(f'<td style="{_sequential(float(r["mean"]))}">{_fmt(r["mean"])}'
                           f'<small>{_fmt(r["min"])}–{_fmt(r["max"])}, {k} failed</small></td>')
                continue
            tds.append(f'<td style="{_sequential(float(r["mean"]))}">{_fmt(r["mean"])}'
                       f'<small>{_fmt(r["min"])}–{_fmt(r["max"])}</small></td>' if r is not None
                       else "<td></td>")
        top = cell.get((f, ALL))
        best = f"{escape(top['best'])} ({_fmt(top['max'])})" if top is not None else ""
        if top is not None and failed.get((f, ALL), 0) == int(top["methods"]):
            best = "–"  # no method of the family ranked anything: none is best
        n = int(top["methods"]) if top is not None else 0
        rows.append(f"<tr><th>{escape(FAMILY_LABELS.get(f, f))} ({n})</th>{''.join(tds)}<td>{best}</td></tr>")
    return (f'<table class="acc"><tr><th>Family (methods)</th>{head}<th>Best method</th></tr>'
            + "".join(rows) + "</table><p class=\"note\">Small numbers: the lowest and highest method of the "
            "family, and how many of its methods gave no ranking in any case (they count as misses in the "
            "mean).</p>")


def _accuracy_table(summary: pd.DataFrame, confidence: float) -> str:
    if summary.empty:
        return "<p><em>no results</em></p>"
    faults = _fault_order(summary["fault_type"].unique()) + [ALL]
    cell = {(str(r["method"]), str(r["fault_type"])): r for _, r in summary.iterrows()}
    methods = list(dict.fromkeys(map(str, summary["method"])))
    family = _family_of(summary)
    with_ci = all(c in summary.columns for c in CI_COLUMNS)
    best = {(f, k): max((v for m in methods if m != CHANCE and (m, f) in cell
                         and not math.isnan(v := _num(cell[(m, f)][k]))), default=math.nan)
            for f in faults for k in METRICS}
    head1 = '<tr><th class="name" rowspan="2">Method</th>' + "".join(
        f'<th colspan="{len(METRICS) + 1}">{escape(f)}</th>' for f in faults) + '<th rowspan="2">Cases</th>' \
        + "".join(f'<th rowspan="2">{lab}</th>' for lab in FAILURE_LABELS) + "</tr>"
    head2 = "<tr>" + "".join("".join(f"<th>{lab}</th>" for lab in METRICS.values()) + "<th>s/case</th>"
                             for _ in faults) + "</tr>"
    width = 2 + len(FAILURE_COLUMNS) + len(faults) * (len(METRICS) + 1)
    body = []
    for fam, block in _grouped(methods, family):
        if fam != "baseline":
            body.append(_family_row(fam, width))
        for m in block:
            cls = ' class="chance"' if m == CHANCE else ""
            tds = [f'<td class="name">{escape(m)}</td>']
            for f in faults:
                r = cell.get((m, f))
                word = failure_word(r) if r is not None else None
                if word is not None:  # no ranking at all: not a score of 0
                    tds.append(f'<td class="fail" colspan="{len(METRICS)}">{word}</td><td>–</td>')
                    continue
                for k in METRICS:
                    if r is None:
                        tds.append("<td></td>")
                        continue
                    v = _num(r[k])
                    mark = ' class="best"' if m != CHANCE and not math.isnan(v) and v == best[(f, k)] else ""
                    ci = ""
                    if with_ci:
                        lo, hi = _num(r[f"{k}_lo"]), _num(r[f"{k}_hi"])
                        if not (math.isnan(lo) or math.isnan(hi)):
                            ci = f"<small>{_fmt(lo)}–{_fmt(hi)}</small>"
                    tds.append(f"<td{mark}>{_fmt(v)}{ci}</td>")
                tds.append(f"<td>{_fmt_time(r['time_s']) if r is not None else ''}</td>")
            total = cell.get((m, ALL))
            n = int(total["n"]) if total is not None else 0
            tds.append(f"<td>{n}</td>")
            for c, mark in zip(FAILURE_COLUMNS, ("err", "err", "na"), strict=True):
                count = int(total[c]) if total is not None else 0
                shown = "" if m == CHANCE else str(count)
                tds.append(f'<td class="{mark}">{shown}</td>' if count else f"<td>{shown}</td>")
            body.append(f"<tr{cls}>{''.join(tds)}</tr>")
    ci_note = '<p class="note">Bold: best per column.'
    if with_ci:
        ci_note += f" Under each score: its {100 * confidence:g} % bootstrap interval over repetitions."
    ci_note += "</p>"
    return f"<table>{head1}{head2}{''.join(body)}</table>{ci_note}"


def _comparison_table(comparison: pd.DataFrame, views: list[str]) -> str:
    if comparison.empty:
        return "<p><em>no results</em></p>"
    faults = _fault_order(comparison["fault_type"].unique()) + [ALL]
    cell = {(str(r["method"]), str(r["fault_type"])): r for _, r in comparison.iterrows()}
    methods = list(dict.fromkeys(map(str, comparison["method"])))
    family = {str(m): str(f) for m, f in zip(comparison["method"], comparison["family"], strict=True)}
    cols = len(views) + 1
    head1 = '<tr><th class="name" rowspan="2">Method</th>' + "".join(
        f'<th colspan="{cols}">{escape(f)}</th>' for f in faults) + "</tr>"
    group = "".join(f"<th>{escape(v)}</th>" for v in views) + "<th>Δ</th>"
    head2 = "<tr>" + group * len(faults) + "</tr>"
    body = []
    for fam, block in _grouped(methods, family):
        if fam != "baseline":
            body.append(_family_row(fam, 1 + cols * len(faults)))
        for m in block:
            cls = ' class="chance"' if m == CHANCE else ""
            tds = [f'<td class="name">{escape(m)}</td>']
            for f in faults:
                r = cell.get((m, f))
                if r is None:
                    tds.append("<td></td>" * cols)
                    continue
                tds += [f"<td>{_fmt(_num(r[v]))}</td>" for v in views]
                d = _num(r["diff"])
                tds.append(f'<td style="{_diverging(d)}">{"–" if math.isnan(d) else f"{d:+.2f}"}</td>')
            body.append(f"<tr{cls}>{''.join(tds)}</tr>")
    return f"<table>{head1}{head2}{''.join(body)}</table>"


def _heatmap(summary: pd.DataFrame) -> str:
    if summary.empty:
        return "<p><em>no results</em></p>"
    faults = _fault_order(summary["fault_type"].unique()) + [ALL]
    cell = {(str(r["method"]), str(r["fault_type"])): _num(r["avg5"]) for _, r in summary.iterrows()}
    failed = {(str(r["method"]), str(r["fault_type"])): w for _, r in summary.iterrows()
              if (w := failure_word(r)) is not None}
    methods = list(dict.fromkeys(map(str, summary["method"])))
    family = _family_of(summary)
    head = '<tr><th class="name">Method</th>' + "".join(f"<th>{escape(f)}</th>" for f in faults) + "</tr>"
    body = []
    for fam, block in _grouped(methods, family):
        if fam != "baseline":
            body.append(_family_row(fam, 1 + len(faults)))
        for m in block:
            tds = [f'<td class="name">{escape(m)}</td>']
            for f in faults:
                if (m, f) in failed:
                    tds.append(f'<td class="fail">{failed[(m, f)]}</td>')
                    continue
                v = cell.get((m, f), math.nan)
                tds.append(f'<td style="{_sequential(v)}">{_fmt(v)}</td>')
            body.append(f"<tr>{''.join(tds)}</tr>")
    return f'<table class="heat">{head}{"".join(body)}</table>'


def _rank_table(ranks: pd.DataFrame, order: Sequence[str] = (), links: Mapping[str, str] | None = None) -> str:
    if ranks.empty:
        return "<p><em>no scored cases</em></p>"
    methods = [c for c in ranks.columns if c not in ("case_id", "fault_type", "root_cause")]
    first = [m for m in order if m in methods]
    methods = first + [m for m in methods if m not in first]
    head = ('<tr><th class="name">Case</th><th class="name">Fault</th><th class="name">Target</th>'
            + "".join(f'<th class="m">{escape(str(m))}</th>' for m in methods) + "</tr>")
    body = []
    for _, r in ranks.iterrows():
        cid = str(r["case_id"])
        tds = [f'<td class="name">{escape(str(r[c]))}</td>' for c in ("case_id", "fault_type", "root_cause")]
        if links and cid in links:
            tds[0] = f'<td class="name"><a href="{escape(links[cid])}">{escape(cid)}</a></td>'
        for m in methods:
            v = r[m]
            tds.append(f'<td class="{_rank_class(v)}">{escape(str(v))}</td>')
        body.append(f"<tr>{''.join(tds)}</tr>")
    return f'<table class="ranks">{head}{"".join(body)}</table>'


def _rank_class(v: object) -> str:
    if v == NO_ANSWER:
        return "rna"
    if v == ERROR:
        return "re"
    if v == TIMEOUT:
        return "rt"
    if v == ABSENT:
        return "ra"
    if v == NOT_RUN:
        return "rn"
    r = int(v)  # type: ignore[call-overload]
    return "r1" if r == 1 else "r23" if r <= 3 else "r45" if r <= 5 else "r6"


# --------------------------------------------------------------------------------------------- colours


def _mix(a: tuple[int, int, int], b: tuple[int, int, int], t: float) -> str:
    return "#" + "".join(f"{round(x + (y - x) * t):02x}" for x, y in zip(a, b, strict=True))


def luminance(colour: str) -> float:
    """WCAG relative luminance of ``#rrggbb``."""
    def lin(c: float) -> float:
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5))
    return 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b)


def contrast(a: str, b: str) -> float:
    """WCAG contrast ratio of two ``#rrggbb`` colours (1 to 21; 4.5 is the floor for normal text)."""
    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def _on(background: str) -> str:
    """``background`` with black or white text, whichever contrasts more: one of them always reaches 4.5
    (a fixed switch point on a colour scale leaves mid tones below it)."""
    text = max(("#000000", "#ffffff"), key=lambda c: contrast(background, c))
    return f"background:{background};color:{text}"


def _sequential(v: float) -> str:
    """White (0) to dark blue (1)."""
    if math.isnan(v):
        return "background:#ffffff;color:#000000"
    t = min(1.0, max(0.0, v))
    return _on(_mix((247, 251, 255), (8, 48, 107), t))


def _diverging(d: float) -> str:
    """Red (worse) through white to green (better), saturating at ±0.5."""
    if math.isnan(d) or d == 0:
        return "background:#ffffff;color:#000000"
    t = min(1.0, abs(d) / 0.5)
    end = (26, 127, 55) if d > 0 else (207, 34, 46)
    return _on(_mix((255, 255, 255), end, t))
