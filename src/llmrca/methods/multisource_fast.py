"""Logs and spans as series on the metrics' grid, as arrays: what ``llmrca.methods.multisource.template_grid``
and ``trace_grid`` (with ``llmrca.case.derive.template_counts`` / ``trace_series``) compute, without building a
frame per step.

Strings are factorised once, in their own (Arrow) storage, and only the distinct values are ever turned into
Python strings: the template of every line is looked up by its code, column names are made per distinct
(service, template) or (service, operation), and the counting is one ``bincount`` per series kind. The result
is the same columns in the same order with the same values (``tests/test_multisource_fast.py`` compares them
with the frame-based functions).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from llmrca.case import Observation
from llmrca.case.derive import window_starts
from llmrca.case.templates import log_templates, template_id
from llmrca.errors import CaseError
from llmrca.methods.multisource import grid
from llmrca.methods.spans import floats, has_missing, sorted_text_codes, text_codes, text_equals

Series = tuple[list[str], np.ndarray]  # column names, (rows of the metrics grid, columns) values


def _check_names(names: list[str], field: str) -> None:
    bad = [s for s in names if "_" in s]
    if bad:
        raise CaseError([f"service name(s) {bad[:5]} contain '_' (use '-')"], where=field)


def _windows(times: np.ndarray, start: float, interval: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    k = np.floor((times - start) / interval)
    inside = np.isfinite(k) & (k >= 0) & (k < n)
    return k[inside].astype(np.int64), inside


def _unique_small(codes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(codes, return_inverse=True)`` for non-negative codes below ``size``, by counting (no sort)."""
    present = np.bincount(codes, minlength=size) > 0
    uniq = np.flatnonzero(present)
    index = np.cumsum(present) - 1
    return uniq, index[codes]


def _row_windows(t: np.ndarray, dt: float) -> tuple[np.ndarray, int, float]:
    """(window of each metrics row, number of windows, first window start) for the grid of ``t``."""
    n_win = len(window_starts(float(t[0]), float(t[-1]) + dt, dt, where="template_counts"))
    rows = np.clip(np.rint((t - t[0]) / dt).astype(np.int64), 0, n_win - 1)
    return rows, n_win, float(t[0])


def _line_templates(logs: pd.DataFrame, mode: str) -> tuple[np.ndarray, list[str]]:
    """(code per line, template text per code) of the templates ``log_templates`` gives the lines."""
    if mode == "auto" and "template" in logs.columns:
        codes, texts = text_codes(logs["template"])
        stated = np.array([u.strip() != "" for u in texts], dtype=bool)
        if (codes >= 0).all() and stated[codes].all():  # every line states its template: nothing to mine
            return codes, texts
    tpl = log_templates(logs, mode)
    codes, uniq = pd.factorize(pd.Series(tpl.to_numpy(dtype=object)).fillna(""))
    return codes, [str(u) for u in uniq]


def template_series(obs: Observation, method: str, mode: str = "auto") -> Series:
    """``<service>_log-template-<id>`` line counts per metrics row (``multisource.template_grid``)."""
    t, dt = grid(obs, method)
    rows, n_win, start = _row_windows(t, dt)
    logs = obs.logs
    missing = [c for c in ("time", "service") if c not in logs.columns]
    if missing:
        raise CaseError([f"missing column(s) {', '.join(missing)}"], where="logs")
    t_codes, texts = _line_templates(logs, mode)
    s_codes, svcs = text_codes(logs["service"])
    keep = s_codes >= 0
    _check_names(sorted({svcs[i] for i in np.unique(s_codes[keep])}), "logs.service")
    ids = [template_id(x) for x in texts]
    pair = s_codes[keep].astype(np.int64) * max(len(texts), 1) + t_codes[keep]
    uniq, inverse = _unique_small(pair, len(svcs) * max(len(texts), 1))
    names = [f"{svcs[p // max(len(texts), 1)]}_log-template-{ids[p % max(len(texts), 1)]}" for p in uniq.tolist()]
    by_name = np.argsort(np.array(names, dtype=object), kind="stable")
    rank = np.empty(len(names), dtype=np.int64)
    rank[by_name] = np.arange(len(names))
    col = rank[inverse]
    lt = floats(logs["time"])[keep]
    k, inside = _windows(lt, start, dt, n_win)
    counts = np.bincount(col[inside] * n_win + k, minlength=len(names) * n_win).reshape(len(names), n_win)
    return [names[i] for i in by_name], counts[:, rows].T.astype(float)


def trace_series(obs: Observation, method: str) -> Series:
    """``<service>_<operation>_latency`` (s, mean of OK spans, NaN without one) and ``..._error-count`` per
    metrics row (``multisource.trace_grid``)."""
    t, dt = grid(obs, method)
    rows, n_win, start = _row_windows(t, dt)
    tr = obs.traces
    missing = [c for c in ("service", "operation", "start_time_us", "duration_us", "status") if c not in tr]
    if missing:
        raise CaseError([f"missing column(s) {', '.join(missing)}"], where="traces")
    st = floats(tr["start_time_us"]) / 1e6
    dur = floats(tr["duration_us"]) / 1e6
    if has_missing(tr["service"]) or has_missing(tr["operation"]):
        raise CaseError(["missing service or operation name(s)"], where="traces")
    s_codes, svcs = sorted_text_codes(tr["service"])
    o_codes, ops = sorted_text_codes(tr["operation"])
    svcs, ops = [str(s) for s in svcs], [str(o) for o in ops]
    _check_names(svcs, "traces.service")
    pairs, codes = _unique_small(s_codes.astype(np.int64) * len(ops) + o_codes, len(svcs) * len(ops))
    names = [f"{svcs[p // len(ops)]}_{ops[p % len(ops)]}" for p in pairs.tolist()]
    ok_all, bad_all = text_equals(tr["status"], "OK"), text_equals(tr["status"], "ERROR")
    k, inside = _windows(st, start, dt, n_win)
    codes, dur, ok_all, bad_all = codes[inside], dur[inside], ok_all[inside], bad_all[inside]
    n_ops, size = len(names), len(names) * n_win
    flat = codes * n_win + k
    ok = ok_all & np.isfinite(dur)
    n_ok = np.bincount(flat[ok], minlength=size).reshape(n_ops, n_win)
    sum_ok = np.bincount(flat[ok], weights=dur[ok], minlength=size).reshape(n_ops, n_win)
    n_err = np.bincount(flat[bad_all], minlength=size).reshape(n_ops, n_win)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n_ok > 0, sum_ok / np.maximum(n_ok, 1), np.nan)
    values = np.empty((len(rows), 2 * n_ops))
    values[:, 0::2] = mean[:, rows].T
    values[:, 1::2] = n_err[:, rows].T
    cols = [f"{name}_{kind}" for name in names for kind in ("latency", "error-count")]
    return cols, values


def with_series(metrics: pd.DataFrame, extra: list[Series]) -> pd.DataFrame:
    """``metrics`` with the series of ``extra`` appended as one float block (``multisource.append_columns``:
    a name already taken keeps the first series)."""
    names, values = merged_block(metrics, extra)
    return pd.DataFrame(values, columns=names)


def merged_block(metrics: pd.DataFrame, extra: list[Series]) -> Series:
    """The columns and values of ``with_series(metrics, extra)``, as one (rows, columns) float array."""
    have = set(metrics.columns)
    names, blocks = list(metrics.columns), [metrics.to_numpy(dtype=float)]
    for cols, values in extra:
        take = [i for i, c in enumerate(cols) if c not in have]
        have.update(cols[i] for i in take)
        names.extend(cols[i] for i in take)
        blocks.append(values[:, take])
    return names, np.hstack(blocks)
