"""The report's figures, drawn with matplotlib and returned as SVG text to inline in a page (nothing fetched).

- ``accuracy_bars``: one panel per fault type, a bar per method with its bootstrap interval and the chance
  level; a method that gave no ranking in any case of a fault type gets the words "failed n/n" (or "no answer",
  "timeout") instead of a bar, so it cannot be read as a score of 0.
- ``blame_matrices``: per method, how often each true service was answered with each top-1 service ("who got
  blamed"), plus a column for the cases without a ranking.
- ``accuracy_vs_time``: Avg@5 over all cases against the mean time per case, one point per method.
- ``telemetry``: a case's metric series around the time the fault was injected.

Output is deterministic: the same input gives the same bytes (a fixed ``svg.hashsalt`` for the ids matplotlib
makes, no date, text kept as text). The XML prologue, the DOCTYPE, the metadata block and the namespace
declarations are dropped: an ``<svg>`` inside an HTML page needs none of them.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from llmrca.report.status import ERROR, NO_ANSWER, OK, TIMEOUT, status_kind
from llmrca.report.tables import ALL, CHANCE, METRICS, _fault_order

_RC = {
    "svg.hashsalt": "llmrca-report",  # ids of clip paths are hashes salted with this: fixed, so bytes are too
    "svg.fonttype": "none",  # text stays text: smaller, selectable, and the page's font draws it
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 10,
    "text.usetex": False,
}
# Colour per family (Okabe–Ito, readable by colour-blind readers); unknown families get grey.
FAMILY_COLOURS = {"metric": "#0072B2", "trace": "#E69F00", "multi-source": "#009E73", "baseline": "#999999"}
FAILED_COLOUR = "#cf222e"
FAILURE_WORDS = {ERROR: "failed", TIMEOUT: "timeout", NO_ANSWER: "no answer"}
NO_RANKING = "(no ranking)"  # the blame matrix's column of rows without a top-1


def _plain(text: object) -> str:
    """A label drawn as written: a ``$`` would start matplotlib's math mode."""
    return str(text).replace("$", r"\$")


def to_svg(fig: Any) -> str:
    """The figure as inline SVG text (see the module's note on what is dropped); the figure is not kept."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context(_RC):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.DOTALL)
    text = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", text)
    text = re.sub(r"<!--.*?-->", "", text, flags=re.DOTALL)
    return text.strip()


def _figure(width: float, height: float, layout: str | None = "constrained") -> Any:
    """A figure not tied to pyplot's global state (so report code can run in any thread)."""
    import matplotlib
    from matplotlib.figure import Figure  # savefig picks the SVG canvas by the format; no GUI backend

    with matplotlib.rc_context(_RC):
        return Figure(figsize=(width, height), dpi=100, layout=layout)


def _rc() -> Any:
    import matplotlib

    return matplotlib.rc_context(_RC)


def failure_word(r: Mapping[str, Any]) -> str | None:
    """For a summary row in which no case got a ranking: "failed 5/5", "timeout 5/5" or "no answer 5/5" (a
    mix: "failed"); None when some case was ranked or the row is the chance baseline."""
    if r.get("method") == CHANCE:
        return None
    n = int(r["n"])
    counts = {ERROR: int(r["errors"]), TIMEOUT: int(r["timeouts"]), NO_ANSWER: int(r["no_answer"])}
    if n == 0 or sum(counts.values()) < n:
        return None
    only = [k for k, v in counts.items() if v == n]
    return f"{FAILURE_WORDS[only[0]] if only else 'failed'} {n}/{n}"


# --------------------------------------------------------------------------------------------- bars


def accuracy_bars(summary: pd.DataFrame, metric: str = "avg5", *, title: str | None = None) -> str:
    """Per fault type (and all), one horizontal bar per method: ``metric`` with its interval (when the
    summary has ``<metric>_lo``/``_hi``), the chance level as a dashed line, failures written out."""
    if metric not in METRICS:
        raise ValueError(f"unknown score {metric!r}; known: {', '.join(METRICS)}")
    if summary.empty:
        raise ValueError("no results to draw")
    faults = _fault_order(summary["fault_type"].unique()) + [ALL]
    methods = [m for m in dict.fromkeys(map(str, summary["method"])) if m != CHANCE]
    cell = {(str(r["method"]), str(r["fault_type"])): r for _, r in summary.iterrows()}
    family = {str(m): str(f) for m, f in zip(summary["method"], summary["family"], strict=True)}
    cols = min(len(faults), 5)
    rows = math.ceil(len(faults) / cols)
    with _rc():
        fig = _figure(2.3 * cols + 1.2, rows * (0.28 * len(methods) + 0.9))
        axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
        y = np.arange(len(methods))
        for i, f in enumerate(faults):
            ax = axes[i // cols][i % cols]
            for j, m in enumerate(methods):
                r = cell.get((m, f))
                if r is None:
                    continue
                word = failure_word(r)
                if word is not None:
                    ax.text(0.02, j, word, va="center", ha="left", color=FAILED_COLOUR, fontsize=8)
                    continue
                v = float(r[metric])
                lo, hi = (float(r.get(f"{metric}_lo", math.nan)), float(r.get(f"{metric}_hi", math.nan)))
                err = None if math.isnan(lo) or math.isnan(hi) else [[max(0.0, v - lo)], [max(0.0, hi - v)]]
                ax.barh(j, v, color=FAMILY_COLOURS.get(family.get(m, ""), "#777777"), height=0.7,
                        xerr=err, error_kw={"ecolor": "#1b1f24", "capsize": 2, "lw": 0.8})
                failed = int(r["errors"]) + int(r["timeouts"]) + int(r["no_answer"])
                if failed:
                    ax.text(min(1.0, (hi if err else v)) + 0.02, j, f"{failed}/{int(r['n'])} failed",
                            va="center", fontsize=7, color=FAILED_COLOUR)
            chance = cell.get((CHANCE, f))
            if chance is not None and not math.isnan(float(chance[metric])):
                ax.axvline(float(chance[metric]), color="#57606a", ls="--", lw=0.9)
            ax.set_xlim(0, 1.25)
            ax.set_xticks([0, 0.5, 1])
            ax.set_title(_plain(f))
            ax.set_yticks(y, [_plain(m) for m in methods])
            ax.invert_yaxis() if i == 0 else None
            ax.grid(axis="x", color="#d8dee4", lw=0.6)
            ax.set_axisbelow(True)
        for k in range(len(faults), rows * cols):
            axes[k // cols][k % cols].set_visible(False)
        label = METRICS[metric]
        level = summary.attrs.get("ci")
        pct = f"{100 * float(level):g} % " if level else ""
        fig.supxlabel(f"{label} (bars: {pct}bootstrap interval; dashed: chance)" if f"{metric}_lo" in
                      summary.columns else f"{label} (dashed: chance)", fontsize=9)
        if title:
            fig.suptitle(_plain(title), fontsize=10)
    return to_svg(fig)


# --------------------------------------------------------------------------------------------- blame


def blame_counts(results: pd.DataFrame, method: str) -> pd.DataFrame:
    """For one method over the single-fault cases: rows the true service, columns the service it ranked
    first (and ``(no ranking)`` for the cases it failed or abstained on), values counts."""
    df = results[(results["method"] == method) & results["root_cause"].notna()]
    if "roots" in df.columns:
        df = df[df["roots"].isna()]
    pairs = []
    for _, r in df.iterrows():
        kind = status_kind(None if pd.isna(r["status"]) else r["status"])
        top = _top1(r["top5"]) if kind == OK else None
        pairs.append((str(r["root_cause"]), top if top is not None else NO_RANKING))
    if not pairs:
        return pd.DataFrame()
    truth = sorted({t for t, _ in pairs})
    blamed = sorted({b for _, b in pairs} - {NO_RANKING} | set(truth))
    if any(b == NO_RANKING for _, b in pairs):
        blamed.append(NO_RANKING)
    table = pd.DataFrame(0, index=pd.Index(truth, name="true service"), columns=blamed)
    for t, b in pairs:
        table.loc[t, b] += 1
    return table


def _top1(top5: object) -> str | None:
    if not isinstance(top5, str):
        return None
    try:
        services = json.loads(top5)
    except ValueError:
        return None
    return str(services[0]) if isinstance(services, list) and services else None


def blame_matrices(results: pd.DataFrame, methods: Sequence[str] | None = None) -> str:
    """Small multiples of ``blame_counts``, one per method: the diagonal is a correct top-1, an off-diagonal
    cell names who was blamed instead."""
    methods = list(methods) if methods is not None else list(dict.fromkeys(map(str, results["method"])))
    tables = [(m, blame_counts(results, m)) for m in methods]
    tables = [(m, t) for m, t in tables if not t.empty]
    if not tables:
        raise ValueError("no scored single-fault case to draw")
    # One set of rows and columns for every method, so the panels compare cell by cell.
    truth = sorted(set().union(*(t.index for _, t in tables)))
    blamed = sorted(set().union(*(t.columns for _, t in tables)) - {NO_RANKING})
    blamed += [NO_RANKING] if any(NO_RANKING in t.columns for _, t in tables) else []
    tables = [(m, t.reindex(index=truth, columns=blamed, fill_value=0)) for m, t in tables]
    cols = min(3, len(tables))
    rows = math.ceil(len(tables) / cols)
    n_rows, n_cols = tables[0][1].shape
    cell_in = 0.3
    with _rc():
        fig = _figure(cols * (n_cols * cell_in + 1.4), rows * (n_rows * cell_in + 1.6))
        axes = fig.subplots(rows, cols, squeeze=False)
        for k, (m, t) in enumerate(tables):
            ax = axes[k // cols][k % cols]
            values = t.to_numpy(dtype=float)
            share = values / np.maximum(values.sum(axis=1, keepdims=True), 1)
            ax.imshow(share, cmap="Blues", vmin=0, vmax=1, aspect="equal")
            for (i, j), v in np.ndenumerate(values):
                if v:
                    ax.text(j, i, f"{int(v)}", ha="center", va="center", fontsize=7,
                            color="#ffffff" if share[i, j] > 0.55 else "#1b1f24")
            ax.set_xticks(range(t.shape[1]), [_plain(c) for c in t.columns], rotation=60, ha="right",
                          fontsize=7)
            ax.set_yticks(range(t.shape[0]), [_plain(c) for c in t.index], fontsize=7)
            if NO_RANKING in t.columns:
                ax.get_xticklabels()[-1].set_color(FAILED_COLOUR)
            hits = sum(int(t.loc[s, s]) for s in t.index if s in t.columns)
            ax.set_title(f"{_plain(m)}: top-1 right {hits}/{int(values.sum())}", fontsize=9)
            ax.spines[:].set_visible(False)
        for k in range(len(tables), rows * cols):
            axes[k // cols][k % cols].set_visible(False)
        fig.supxlabel("service ranked first", fontsize=9)
        fig.supylabel("true root cause", fontsize=9)
    return to_svg(fig)


# --------------------------------------------------------------------------------------------- time


def accuracy_vs_time(summaries: Mapping[str, pd.DataFrame], metric: str = "avg5") -> str:
    """One panel per view: each method's ``metric`` over all cases (with its interval) against its mean time
    per case on a log axis. Methods without a successful run have no time and are listed under the panel."""
    from matplotlib.ticker import NullFormatter

    views = list(summaries)
    if not views:
        raise ValueError("no view to draw")
    with _rc():
        fig = _figure(4.6 * len(views), 3.6)
        axes = fig.subplots(1, len(views), squeeze=False, sharey=True)[0]
        for ax, v in zip(axes, views, strict=True):
            s = summaries[v]
            s = s[(s["fault_type"] == ALL) & (s["method"] != CHANCE)]
            missing = []
            for _, r in s.iterrows():
                t, score = float(r["time_s"]), float(r[metric])
                if math.isnan(t) or failure_word(r) is not None:
                    missing.append(f"{r['method']} ({failure_word(r) or 'no time'})")
                    continue
                colour = FAMILY_COLOURS.get(str(r["family"]), "#777777")
                lo, hi = float(r.get(f"{metric}_lo", math.nan)), float(r.get(f"{metric}_hi", math.nan))
                err = None if math.isnan(lo) or math.isnan(hi) else [[max(0.0, score - lo)], [max(0.0, hi - score)]]
                ax.errorbar([max(t, 1e-4)], [score], yerr=err, fmt="o", color=colour, ms=5, capsize=2, lw=0.8)
                ax.annotate(_plain(r["method"]), (max(t, 1e-4), score), xytext=(4, 3),
                            textcoords="offset points", fontsize=7)
            chance = summaries[v]
            chance = chance[(chance["fault_type"] == ALL) & (chance["method"] == CHANCE)]
            if len(chance):
                ax.axhline(float(chance[metric].iloc[0]), color="#57606a", ls="--", lw=0.9)
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels of a short decade overlap
            ax.set_ylim(-0.02, 1.05)
            ax.set_title(f"{_plain(v)} view")
            ax.set_xlabel("mean time per case (s, log)")
            ax.grid(color="#d8dee4", lw=0.6)
            if missing:
                ax.text(0, -0.32, "not drawn: " + _plain(", ".join(missing)), transform=ax.transAxes,
                        fontsize=7, color=FAILED_COLOUR, wrap=True)
        axes[0].set_ylabel(f"{METRICS[metric]}, all cases (dashed: chance)")
        for fam, colour in FAMILY_COLOURS.items():
            if fam != "baseline":
                axes[-1].plot([], [], "o", color=colour, label=fam)
        axes[-1].legend(fontsize=7, loc="lower right", frameon=False)
    return to_svg(fig)


# --------------------------------------------------------------------------------------------- telemetry


def telemetry(metrics: pd.DataFrame, series: Sequence[tuple[str, str]], *, start: float | None,
              end: float | None, window_s: float | None = None) -> str:
    """Stacked panels of metric series (``(column, caption)`` pairs; columns of ``metrics``, whose ``time`` is
    unix seconds) in seconds relative to the fault's ``start``, the fault's span shaded. ``window_s``: show
    this many seconds either side of the fault only (None: the whole case)."""
    if not series:
        raise ValueError("no series to draw")
    t = metrics["time"].to_numpy(dtype=float)
    zero = start if start is not None else float(t[0])
    keep = np.ones(len(t), dtype=bool)
    if window_s is not None and start is not None:
        stop = end if end is not None else start
        keep = (t >= start - window_s) & (t <= stop + window_s)
    rel = t[keep] - zero
    with _rc():
        height = 1.25 * len(series) + 0.6
        # A fixed layout (not constrained): a report draws one of these per case, and it is the cheap one.
        fig = _figure(7.5, height, layout=None)
        fig.subplots_adjust(left=0.1, right=0.98, top=1 - 0.3 / height, bottom=0.5 / height, hspace=0.55)
        axes = fig.subplots(len(series), 1, squeeze=False, sharex=True)[:, 0]
        for ax, (col, caption) in zip(axes, series, strict=True):
            y = pd.to_numeric(metrics[col], errors="coerce").to_numpy(dtype=float, na_value=np.nan)[keep]
            ax.plot(rel, y, lw=1.0, color="#0072B2")
            if start is not None:
                ax.axvline(0, color=FAILED_COLOUR, lw=0.9)
                if end is not None:
                    ax.axvspan(0, end - zero, color=FAILED_COLOUR, alpha=0.08, lw=0)
            ax.set_title(_plain(caption), loc="left", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(color="#eaeef2", lw=0.6)
        axes[-1].set_xlabel("seconds from the fault's injection (red line; shaded: while it lasted)"
                            if start is not None else "seconds from the first sample (inject time unknown)")
    return to_svg(fig)
