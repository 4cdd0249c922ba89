"""Checks of the case contract. Every problem is reported, each naming the field at fault.

Policy (docs/case-format.md): errors make a case unusable (missing/unsorted/duplicated ``time``, non-numeric or
badly named metric columns, empty frames, all-NaN columns, ``inject_time`` outside the data); warnings are kept
and handled downstream (columns with some NaNs are gap-filled by ``llmrca.case.clean.fill_gaps``; constant columns
stay and score as "unchanged").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

from llmrca.case.schema import LOG_COLUMNS, SPAN_STATUSES, TIME, TRACE_COLUMNS

Severity = Literal["error", "warning"]

# Largest magnitude a metric value may have. Real telemetry stays far below (bytes of a cluster's memory are
# ~1e15); beyond this, squaring or summing a column overflows float64 and the methods' scores turn to inf/NaN.
ABSURD = 1e300


@dataclass(frozen=True)
class Problem:
    severity: Severity
    field: str  # e.g. "metrics.time", "metrics['a_cpu']", "inject_time"
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" + (" (warning)" if self.severity == "warning" else "")


def _err(field: str, msg: str) -> Problem:
    return Problem("error", field, msg)


def _warn(field: str, msg: str) -> Problem:
    return Problem("warning", field, msg)


def _show(names: list[str], most: int = 5) -> str:
    shown = ", ".join(repr(n) for n in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def validate_metrics(metrics: pd.DataFrame | None) -> list[Problem]:
    if metrics is None or not isinstance(metrics, pd.DataFrame):
        return [_err("metrics", "no metrics frame")]
    out: list[Problem] = []
    cols = [str(c) for c in metrics.columns]
    dup = sorted({c for c in cols if cols.count(c) > 1})
    if dup:
        out.append(_err("metrics", f"duplicated column names {_show(dup)}"))
    if TIME not in cols:
        out.append(_err("metrics", "missing 'time' column (unix seconds)"))
    data_cols = [c for c in cols if c != TIME]
    if len(metrics) == 0:
        out.append(_err("metrics", "empty frame (no rows)"))
    if not data_cols:
        out.append(_err("metrics", "no metric columns besides 'time'"))
    if TIME in cols and len(metrics) and not dup:
        t = pd.to_numeric(metrics[TIME], errors="coerce").to_numpy(dtype=float)
        bad = int((~np.isfinite(t)).sum())
        if bad:
            out.append(_err("metrics.time", f"{bad} value(s) missing or not numeric"))
        else:
            d = np.diff(t)
            if (d == 0).any():
                i = int(np.argmax(d == 0))
                out.append(_err("metrics.time", f"duplicated time {t[i]:g} (rows {i} and {i + 1})"))
            if (d < 0).any():
                i = int(np.argmax(d < 0))
                out.append(_err("metrics.time", f"not increasing: {t[i]:g} then {t[i + 1]:g} (row {i + 1})"))
    bad_names = [c for c in data_cols if not _good_column_name(c)]
    if bad_names:
        out.append(_err("metrics", f"column name(s) {_show(bad_names)} break the '<service>_<metric>' rule"))
    if dup:
        return out
    non_numeric, all_nan, some_nan = [], [], []
    for c in data_cols:
        s = metrics[c]
        if not ptypes.is_numeric_dtype(s):
            non_numeric.append(c)
            continue
        out += _extreme_values(c, s)
        n_nan = int(s.isna().sum())
        if len(s) and n_nan == len(s):
            all_nan.append(c)
        elif n_nan:
            some_nan.append(f"{c} ({n_nan})")
    if non_numeric:
        out.append(_err("metrics", f"non-numeric column(s) {_show(non_numeric)}"))
    if all_nan:
        out.append(_err("metrics", f"all-NaN column(s) {_show(all_nan)}"))
    if some_nan:
        out.append(_warn("metrics", f"NaN values in {_show(some_nan)}; gaps are filled before methods run"))
    return out


def _extreme_values(column: str, s: pd.Series) -> list[Problem]:
    """±inf and values beyond ``ABSURD``: methods that standardise or regress on a column turn them into inf/NaN
    scores, and the column (often the root cause's) silently falls to the bottom of the ranking."""
    v = s.to_numpy(dtype=float, na_value=np.nan)
    inf = np.isinf(v)
    huge = np.isfinite(v) & (np.abs(v) > ABSURD)
    out = []
    for mask, what in ((inf, "infinite"), (huge, f"absurd (|x| > {ABSURD:g})")):
        if mask.any():
            i = int(np.argmax(mask))
            first = f"first {float(v[i])!r} at row {i}"
            out.append(_err(f"metrics['{column}']", f"{int(mask.sum())} {what} value(s), {first}"))
    return out


def _good_column_name(c: str) -> bool:
    service, sep, metric = c.partition("_")
    return bool(sep and service and metric and service.strip() == service and not service.isspace())


def validate_inject_time(inject_time: float | None, metrics: pd.DataFrame | None) -> list[Problem]:
    if inject_time is None:
        return []
    if not _is_real(inject_time):  # a string "1700000600" would pass float() here and break writers later
        return [_err("inject_time", f"not a number: {inject_time!r}")]
    it = float(inject_time)
    if not np.isfinite(it):
        return [_err("inject_time", "not finite")]
    if metrics is None or TIME not in metrics or not len(metrics):
        return []
    t = pd.to_numeric(metrics[TIME], errors="coerce")
    lo, hi = t.min(), t.max()
    if pd.notna(lo) and not (lo <= it <= hi):
        return [_err("inject_time", f"{it:g} is outside the metrics' time range [{lo:g}, {hi:g}]")]
    return []


def validate_traces(traces: pd.DataFrame | None) -> list[Problem]:
    if traces is None or len(traces) == 0:
        return []
    out: list[Problem] = []
    missing = [c for c in TRACE_COLUMNS if c not in traces.columns]
    if missing:
        return [_err("traces", f"missing column(s) {_show(missing)}")]
    for c in ("start_time_us", "duration_us"):
        if not ptypes.is_integer_dtype(traces[c]):
            out.append(_err(f"traces.{c}", f"must be integer microseconds, is {traces[c].dtype}"))
    if not out and (traces["duration_us"] < 0).any():
        out.append(_err("traces.duration_us", f"{int((traces['duration_us'] < 0).sum())} negative duration(s)"))
    bad = sorted(set(traces["status"].dropna().astype(str)) - set(SPAN_STATUSES))
    if bad:
        out.append(_err("traces.status", f"unknown status value(s) {_show(bad)} (expected OK or ERROR)"))
    for c in ("trace_id", "span_id", "service"):
        n = int(traces[c].isna().sum())
        if n:
            out.append(_err(f"traces.{c}", f"{n} missing value(s)"))
    return out


def validate_logs(logs: pd.DataFrame | None) -> list[Problem]:
    if logs is None or len(logs) == 0:
        return []
    missing = [c for c in LOG_COLUMNS if c not in logs.columns]
    if missing:
        return [_err("logs", f"missing column(s) {_show(missing)}")]
    out = []
    t = pd.to_numeric(logs["time"], errors="coerce")
    if t.isna().any():
        out.append(_err("logs.time", f"{int(t.isna().sum())} value(s) missing or not numeric"))
    elif np.isinf(t.to_numpy(dtype=float)).any():
        out.append(_err("logs.time", f"{int(np.isinf(t.to_numpy(dtype=float)).sum())} infinite value(s)"))
    return out


def validate_observation(obs) -> list[Problem]:
    out = validate_metrics(obs.metrics)
    out += validate_inject_time(obs.inject_time, obs.metrics)
    out += validate_traces(obs.traces)
    out += validate_logs(obs.logs)
    out += [_err("topology", p.split(": ", 1)[-1]) for p in obs.topology.problems()]
    if obs.interval is not None and not (_is_real(obs.interval) and np.isfinite(obs.interval) and obs.interval > 0):
        out.append(_err("interval", f"must be a positive number of seconds, is {obs.interval!r}"))
    return out


def validate_case(case) -> list[Problem]:
    out = []
    if not case.id:
        out.append(_err("id", "empty case id"))
    out += validate_observation(case.observation)
    truth = case.truth
    out += _validate_truth(truth)
    if isinstance(truth.service, str):
        if "_" in truth.service:
            out.append(_err("fault.service", f"{truth.service!r} contains '_' (service names use '-')"))
        elif truth.service not in case.observation.services:
            out.append(_warn("fault.service", f"{truth.service!r} appears in no metric, span or topology"))
    out += _validate_faults(truth, case.observation.services)
    if _is_real(truth.start) and _is_real(truth.end) and truth.end < truth.start:
        out.append(_err("fault.end", f"{truth.end:g} is before fault.start {truth.start:g}"))
    return out


def _is_real(v: object) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _validate_faults(truth, services: list[str]) -> list[Problem]:
    """A multi-fault case: its first fault is the one the top-level fields describe, and each names a service
    of the case (different services: two faults on one target are one fault to a ranking)."""
    out: list[Problem] = []
    if not truth.faults:
        return out
    first = truth.faults[0]
    if (first.fault_type, first.service) != (truth.fault_type, truth.service):
        out.append(_err("fault.faults[0]", f"is {first.fault_type!r} on {first.service!r} but fault.type/service "
                                           f"are {truth.fault_type!r} on {truth.service!r} (the first fault is the "
                                           "case's first root)"))
    seen: set[str] = set()
    for i, f in enumerate(truth.faults):
        if f.service in seen:
            out.append(_err(f"fault.faults[{i}].service", f"{f.service!r} is the target of an earlier fault"))
        seen.add(f.service)
        if f.service not in services:
            out.append(_warn(f"fault.faults[{i}].service", f"{f.service!r} appears in no metric, span or topology"))
        if _is_real(f.start) and _is_real(f.end) and f.end < f.start:
            out.append(_err(f"fault.faults[{i}].end", f"{f.end:g} is before its start {f.start:g}"))
    return out


def _validate_truth(truth) -> list[Problem]:
    """The fault rule: a fault type is always given; "normal" (fault-free) names no service, any other type one."""
    from llmrca.case.model import NORMAL

    out = []
    if not isinstance(truth.fault_type, str) or not truth.fault_type:
        out.append(_err("fault.type", f"must be a non-empty string, is {truth.fault_type!r}"))
    if truth.service is not None and (not isinstance(truth.service, str) or not truth.service):
        out.append(_err("fault.service", f"must be a non-empty string or None, is {truth.service!r}"))
    elif truth.fault_type == NORMAL and truth.service is not None:
        out.append(_err("fault.service", f"is {truth.service!r} but fault.type is {NORMAL!r} (a fault-free case "
                                         "names no service)"))
    for name in ("start", "end"):
        v = getattr(truth, name)
        if v is not None and not (_is_real(v) and np.isfinite(v)):
            out.append(_err(f"fault.{name}", f"must be a finite number or None, is {v!r}"))
    return out


def errors_only(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == "error"]


def check_case(case, where: str | None = None) -> None:
    from llmrca.errors import CaseError

    errs = errors_only(validate_case(case))
    if errs:
        raise CaseError(errs, where=where or f"case {case.id!r}")
