"""Series derived from logs and spans, on a fixed time grid, for methods that read metrics-shaped input.

Both functions return a wide frame like ``Observation.metrics``: a float ``time`` column (the start of each window,
unix s) and float columns named ``<service>_<name>``, so multi-source methods can append them to the metrics.

- ``log_counts``: per service, lines per window (``<service>_log-count``) and ERROR lines per window
  (``<service>_log-error``), as the reference study counted logs per container per 5 s.
- ``trace_series``: per ``service_operation``, the mean duration of successful spans per window in seconds
  (``<service>_<operation>_latency``; NaN where a window holds none) and the number of ERROR spans
  (``<service>_<operation>_error-count``). Spans are placed by their start time.
- ``template_counts``: per service and log template, lines per window (``<service>_log-template-<id>``; the
  ``logts`` of RCAEval). Templates come from ``llmrca.case.templates`` (given where the logs state them, else
  Drain3); ``<id>`` is the template's stable id (``t`` + CRC-32 of its text).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from llmrca.case.schema import TIME
from llmrca.errors import CaseError

ERROR_LEVELS = ("ERROR", "CRITICAL", "FATAL")


def window_starts(start: float, end: float, interval: float, where: str = "windows") -> np.ndarray:
    """Window start times ``start, start + interval, …`` covering ``[start, end)``."""
    problems = []
    if not (np.isfinite(interval) and interval > 0):
        problems.append(f"interval must be a positive number of seconds, is {interval!r}")
    if not (np.isfinite(start) and np.isfinite(end) and end > start):
        problems.append(f"need start < end, got start={start!r}, end={end!r}")
    if problems:
        raise CaseError(problems, where=where)
    n = int(np.ceil((end - start) / interval - 1e-9))
    return start + interval * np.arange(n, dtype=float)


def _window_index(times: np.ndarray, start: float, interval: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    k = np.floor((times - start) / interval)
    inside = np.isfinite(k) & (k >= 0) & (k < n)
    return k[inside].astype(np.int64), inside


def log_counts(
    logs: pd.DataFrame,
    interval: float,
    start: float,
    end: float,
    services: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Log lines and ERROR lines per service per window of ``interval`` seconds over ``[start, end)``.

    ``services`` fixes the columns (a service without lines gets zeros); by default every service in ``logs``.
    """
    grid = window_starts(start, end, interval, where="log_counts")
    missing = [c for c in ("time", "service", "level") if c not in logs.columns]
    if missing:
        raise CaseError([f"missing column(s) {', '.join(missing)}"], where="logs")
    t = pd.to_numeric(logs["time"], errors="coerce").to_numpy(dtype=float)
    svc_codes, seen = pd.factorize(logs["service"])
    names = list(services) if services is not None else sorted(str(s) for s in seen)
    _check_names(names, "logs.service")
    # Lines of services outside ``names`` (and lines without a service) are dropped.
    code = np.append(pd.Index(names).get_indexer(pd.Index(seen, dtype=object)), -1)[svc_codes]
    lvl_codes, levels = pd.factorize(logs["level"])
    err = np.append(np.isin(np.asarray(levels, dtype=object), ERROR_LEVELS), False)[lvl_codes]
    k, inside = _window_index(t, start, interval, len(grid))
    code, err = code[inside], err[inside]
    known = code >= 0
    k, code, err = k[known], code[known], err[known]
    shape = (len(names), len(grid))
    flat = code * len(grid) + k
    total = np.bincount(flat, minlength=shape[0] * shape[1]).reshape(shape)
    errors = np.bincount(flat[err], minlength=shape[0] * shape[1]).reshape(shape)
    out = {TIME: grid}
    for i, s in enumerate(names):
        out[f"{s}_log-count"] = total[i].astype(float)
        out[f"{s}_log-error"] = errors[i].astype(float)
    return pd.DataFrame(out)


def trace_series(traces: pd.DataFrame, interval: float, start: float, end: float) -> pd.DataFrame:
    """Mean latency (s) of OK spans and count of ERROR spans per ``service_operation`` per window."""
    grid = window_starts(start, end, interval, where="trace_series")
    missing = [c for c in ("service", "operation", "start_time_us", "duration_us", "status") if c not in traces]
    if missing:
        raise CaseError([f"missing column(s) {', '.join(missing)}"], where="traces")
    t = pd.to_numeric(traces["start_time_us"], errors="coerce").to_numpy(dtype=float) / 1e6
    dur = pd.to_numeric(traces["duration_us"], errors="coerce").to_numpy(dtype=float) / 1e6
    svc_codes, svcs = pd.factorize(traces["service"].astype(object), sort=True)
    op_codes, ops = pd.factorize(traces["operation"].astype(object), sort=True)
    if (svc_codes < 0).any() or (op_codes < 0).any():
        raise CaseError(["missing service or operation name(s)"], where="traces")
    _check_names([str(s) for s in svcs], "traces.service")
    pairs, codes = np.unique(svc_codes * len(ops) + op_codes, return_inverse=True)
    names = [f"{svcs[p // len(ops)]}_{ops[p % len(ops)]}" for p in pairs.tolist()]
    status = traces["status"].astype(object).to_numpy()
    k, inside = _window_index(t, start, interval, len(grid))
    codes, dur, status = codes[inside], dur[inside], status[inside]
    n_ops, n_win = len(names), len(grid)
    flat = codes * n_win + k
    ok = (status == "OK") & np.isfinite(dur)
    bad = status == "ERROR"
    size = n_ops * n_win
    n_ok = np.bincount(flat[ok], minlength=size).reshape(n_ops, n_win)
    sum_ok = np.bincount(flat[ok], weights=dur[ok], minlength=size).reshape(n_ops, n_win)
    n_err = np.bincount(flat[bad], minlength=size).reshape(n_ops, n_win)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n_ok > 0, sum_ok / np.maximum(n_ok, 1), np.nan)
    out = {TIME: grid}
    for i, name in enumerate(names):
        out[f"{name}_latency"] = mean[i]
        out[f"{name}_error-count"] = n_err[i].astype(float)
    return pd.DataFrame(out)


def template_counts(
    logs: pd.DataFrame,
    interval: float,
    start: float,
    end: float,
    services: Sequence[str] | None = None,
    *,
    templates: pd.Series | None = None,
    mode: str = "auto",
) -> pd.DataFrame:
    """Lines per (service, template) per window of ``interval`` seconds over ``[start, end)``.

    ``templates`` (aligned with ``logs``) overrides the template choice, e.g. to mine once and count twice;
    otherwise ``llmrca.case.templates.log_templates(logs, mode)``. ``services`` restricts the services
    (lines of others are dropped); columns exist only for (service, template) pairs with at least one line in
    ``logs`` (inside the range or not), sorted by service then template id, so two ranges of one frame get the
    same columns.
    """
    from llmrca.case.templates import log_templates, template_id

    grid = window_starts(start, end, interval, where="template_counts")
    missing = [c for c in ("time", "service") if c not in logs.columns]
    if missing:
        raise CaseError([f"missing column(s) {', '.join(missing)}"], where="logs")
    tpl = log_templates(logs, mode) if templates is None else templates
    if len(tpl) != len(logs):
        raise CaseError([f"{len(tpl)} templates for {len(logs)} lines"], where="template_counts")
    svc = logs["service"].astype(object).to_numpy()
    keep = pd.notna(svc)
    if services is not None:
        keep &= np.isin(svc, np.asarray(list(services), dtype=object))
    t_codes, t_uniq = pd.factorize(pd.Series(tpl.to_numpy(dtype=object)).fillna(""))
    ids = np.asarray([template_id(str(u)) for u in t_uniq], dtype=object)[t_codes]
    _check_names(sorted({str(s) for s in svc[keep]}), "logs.service")
    names = pd.Series(svc[keep]).astype(str) + "_log-template-" + pd.Series(ids[keep])
    codes, cols = pd.factorize(names, sort=True)
    t = pd.to_numeric(logs["time"], errors="coerce").to_numpy(dtype=float)[keep]
    k, inside = _window_index(t, start, interval, len(grid))
    size = len(cols) * len(grid)
    counts = np.bincount(codes[inside] * len(grid) + k, minlength=size).reshape(len(cols), len(grid))
    out = pd.DataFrame(counts.T.astype(float), columns=[str(c) for c in cols])
    out.insert(0, TIME, grid)
    return out


def _check_names(names: Sequence[str], field: str) -> None:
    bad = [s for s in names if "_" in s]
    if bad:
        raise CaseError([f"service name(s) {bad[:5]} contain '_' (use '-')"], where=field)
