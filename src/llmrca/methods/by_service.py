"""Helpers for methods that reason about services rather than single series: grouping columns by service,
correlation with constant columns handled, and a service-first full ranking."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np

from llmrca.case import service_of
from llmrca.methods.base import Ranking
from llmrca.methods.window import MetricWindow


def group_columns(columns: Sequence[str]) -> dict[str, list[str]]:
    """service → its columns, both in first-seen order."""
    out: dict[str, list[str]] = {}
    for c in columns:
        out.setdefault(service_of(c), []).append(c)
    return out


def abs_corr(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """|Pearson r| of each column of ``x`` (n, d) with ``y`` (n,); 0 where either side is constant."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    xc = x - x.mean(axis=0)
    yc = y - y.mean()
    sx = np.sqrt((xc**2).sum(axis=0))
    sy = np.sqrt((yc**2).sum())
    denom = sx * sy
    out = np.zeros(x.shape[1])
    if len(y) < 2 or np.ptp(y) == 0:
        return out
    ok = (np.ptp(x, axis=0) > 0) & (denom > 0)
    out[ok] = np.abs(xc[:, ok].T @ yc) / denom[ok]
    return np.clip(out, 0.0, 1.0)


def service_first_ranking(
    columns: Sequence[str],
    service_score: Mapping[str, float],
    column_score: Mapping[str, float] | None = None,
) -> Ranking:
    """Every column once: services by score (descending, ties by name), each service's columns together,
    ordered by ``column_score`` (descending, ties by name). Services without a score get 0, so unscored
    services come last in name order. A column's score in the ranking is its service's score."""
    groups = group_columns(columns)
    cs = column_score or {}
    ssc = {s: float(service_score.get(s, 0.0)) for s in groups}
    for s, v in ssc.items():
        if not np.isfinite(v):
            ssc[s] = 0.0
    cands: list[str] = []
    scores: list[float] = []
    for s in sorted(groups, key=lambda s: (-ssc[s], s)):
        for c in sorted(groups[s], key=lambda c: (-_finite(cs.get(c, 0.0)), c)):
            cands.append(c)
            scores.append(ssc[s])
    return Ranking(tuple(cands), tuple(scores))


def _finite(v: float) -> float:
    v = float(v)
    return v if np.isfinite(v) else 0.0


def finite_window(w: MetricWindow) -> MetricWindow:
    """The window with every column that still holds a non-finite value after gap filling (an all-NaN
    series) set to a constant 0: it carries no evidence, and constant columns score 0 in the methods here."""
    bad = ~np.isfinite(w.values).all(axis=0)
    if not bad.any():
        return w
    values = w.values.copy()
    values[:, bad] = 0.0
    return replace(w, values=values)
