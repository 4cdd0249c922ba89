"""Logs and spans as series on the metrics' time grid, for the multi-source methods (mm-baro, pdiagnose).

Row i of every frame here covers ``[t_i, t_i + interval)`` where ``t_i`` is the i-th metrics timestamp, so the
rows at or after ``inject_time`` hold only what happened from the injection on, and the metrics window of
``llmrca.methods.window`` applies to them unchanged. The counting is ``llmrca.case.derive``'s
(``trace_series``, ``template_counts``, ``log_counts``); a metrics grid that is not regular is mapped row by
row to the nearest window of the regular grid that starts at the first timestamp.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from llmrca.case import TIME, Observation
from llmrca.case.derive import ERROR_LEVELS, log_counts, template_counts, trace_series
from llmrca.errors import MethodError

# Words that mark a failure in a log line whatever its level (vLLM, Ray Serve, nginx, CUDA/NVRM lines).
ERROR_KEYWORDS = re.compile(
    r"error|exception|traceback|fail|fatal|panic|timed? ?out|refused|unavailable|unreachable|"
    r"out of memory|\boom\b|killed|xid|dead|crash|abort",
    re.IGNORECASE,
)


def grid(obs: Observation, method: str) -> tuple[np.ndarray, float]:
    """(metrics timestamps, interval) of the observation; ``MethodError`` without at least two rows."""
    if obs.metrics is None or TIME not in obs.metrics.columns or len(obs.metrics) < 2:
        raise MethodError(f"{method}: needs a metrics time grid (at least two rows) to align logs and traces "
                          "to")
    t = obs.metrics[TIME].to_numpy(dtype=float)
    interval = obs.interval
    if interval is None or not np.isfinite(interval) or interval <= 0:
        raise MethodError(f"{method}: cannot tell the sampling interval of the metrics")
    return t, float(interval)


def _on_grid(frame: pd.DataFrame, t: np.ndarray, interval: float) -> pd.DataFrame:
    k = np.clip(np.rint((t - t[0]) / interval).astype(np.int64), 0, len(frame) - 1)
    out = frame.drop(columns=[TIME]).iloc[k].reset_index(drop=True)
    out.insert(0, TIME, t)
    return out


def _bounds(t: np.ndarray, interval: float) -> tuple[float, float, float]:
    return float(t[0]), float(t[-1]) + interval, interval


def trace_grid(obs: Observation, method: str) -> pd.DataFrame:
    """``<service>_<operation>_latency`` (s, mean of OK spans) and ``..._error-count`` per metrics row."""
    t, dt = grid(obs, method)
    start, end, _ = _bounds(t, dt)
    return _on_grid(trace_series(obs.traces, dt, start, end), t, dt)


def template_grid(obs: Observation, method: str, mode: str = "auto") -> pd.DataFrame:
    """``<service>_log-template-<id>`` line counts per metrics row."""
    t, dt = grid(obs, method)
    start, end, _ = _bounds(t, dt)
    return _on_grid(template_counts(obs.logs, dt, start, end, mode=mode), t, dt)


def error_line(logs: pd.DataFrame) -> np.ndarray:
    """Per line: an error by its level (ERROR/CRITICAL/FATAL) or by a failure word in its message."""
    if "level" in logs.columns:
        level = logs["level"].astype("string").str.upper().isin(ERROR_LEVELS)
        level = level.fillna(False).to_numpy(dtype=bool)
    else:
        level = np.zeros(len(logs), dtype=bool)
    if "message" not in logs.columns:
        return level
    words = logs["message"].astype("string").str.contains(ERROR_KEYWORDS).fillna(False).to_numpy(dtype=bool)
    return level | words


def error_grid(obs: Observation, method: str) -> pd.DataFrame:
    """``<service>_log-error`` per metrics row: lines that are errors by level or by keyword
    (:func:`error_line`); one column per service that logs."""
    t, dt = grid(obs, method)
    start, end, _ = _bounds(t, dt)
    logs = obs.logs
    marked = pd.DataFrame({"time": logs["time"], "service": logs["service"],
                           "level": np.where(error_line(logs), "ERROR", "INFO")})
    counts = log_counts(marked, dt, start, end)
    keep = [TIME] + [c for c in counts.columns if c.endswith("_log-error")]
    return _on_grid(counts[keep], t, dt)


def append_columns(metrics: pd.DataFrame, extra: list[pd.DataFrame]) -> pd.DataFrame:
    """``metrics`` with the columns of ``extra`` (same rows) appended; a name the metrics already use keeps
    the metric (the source's own series wins over one derived from logs or spans)."""
    have = set(metrics.columns)
    parts = [metrics.reset_index(drop=True)]
    for f in extra:
        cols = [c for c in f.columns if c != TIME and c not in have]
        have.update(cols)
        parts.append(f[cols].reset_index(drop=True))
    return pd.concat(parts, axis=1)
