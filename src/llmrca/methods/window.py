"""The pre/post window split every metric method starts from."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmrca.case import TIME, Observation
from llmrca.case.clean import fill_gaps_array
from llmrca.errors import MethodError

# How many rows each side of inject_time a method sees by default: "auto", resolved from the case's source
# (``Observation.source``) by ``resolve_window``, the one place every metric method takes its window from.
#
# - llmrca's own cases (simulated, live, synthetic; source None): STUDY_WINDOW = 60 rows, what the reference
#   study's runner gave its methods (shared/design: "60 samples before/after"; at its 5 s step, 5 minutes each
#   side). A `paper` case has 72 rows with the injection after 57, so it is seen whole either way; a `live` case
#   (1 s scrapes, 60 s fault) gets its 60 fault rows and the 60 normal rows next to them, as before.
# - RCAEval folders (source "rcaeval"): RCAEVAL_WINDOW = 600 rows, what RCAEval's own runner cuts (main.py's
#   default `--length 20`: the last/first `length * 60 // 2` rows around the injection; see
#   benchmarks/vs_rcaeval_driver.py), i.e. the whole of a published RE1/RE2 case (about 1,200 rows at 1 s). The
#   study's 60 rows kept 120 of those 1,200: BARO, NSigma and ε-Diagnosis lost their baseline (AC@1 0.90–0.93
#   vs 1.00 whole on a PyRCA-made suite, RCD 0.20 vs 0.43), and the numbers did not compare with RCAEval's.
#
# An integer (rows each side) or None (every row) set by the user wins over both.
STUDY_WINDOW = 60
RCAEVAL_WINDOW = 600
SOURCE_WINDOWS: dict[str, int | None] = {"rcaeval": RCAEVAL_WINDOW}
AUTO = "auto"
DEFAULT_WINDOW = AUTO


def resolve_window(obs: Observation, window: int | str | None = DEFAULT_WINDOW) -> int | None:
    """Rows each side for ``obs``: ``window`` itself unless it is "auto", which is the source's (see above)."""
    if window == AUTO:
        return SOURCE_WINDOWS.get(obs.source or "", STUDY_WINDOW)
    return window  # type: ignore[return-value]


def check_window(method: str, value: object, *, minimum: int = 1, name: str = "window") -> int | str | None:
    """A window parameter: "auto", None (every row) or an integer >= ``minimum``; else a ``MethodError``."""
    if value is None or value == AUTO:
        return value  # type: ignore[return-value]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise MethodError(f"method {method!r}: parameter {name} must be an integer >= {minimum}, None (every row) "
                          f"or \"auto\" (by the case's source), got {value!r}")
    return value


@dataclass(frozen=True)
class MetricWindow:
    columns: list[str]
    times: np.ndarray  # (n,)
    values: np.ndarray  # (n, d) float64, gaps filled
    split: int  # rows [0, split) are before inject_time, [split, n) at or after it

    @property
    def pre(self) -> np.ndarray:
        return self.values[: self.split]

    @property
    def post(self) -> np.ndarray:
        return self.values[self.split :]


def metric_window(
    obs: Observation,
    *,
    inject_time: float | None = None,
    window: int | str | None = DEFAULT_WINDOW,
    min_pre: int = 2,
    min_post: int = 1,
) -> MetricWindow:
    """Rows around ``inject_time`` (default: the observation's): at most ``window`` samples before and after.

    ``window=None`` keeps all rows; "auto" (the default) is the case's source's window (``resolve_window``).
    Raises ``MethodError`` when there is no injection time, too few rows or a bad ``window``.
    """
    window = resolve_window(obs, check_window("metric_window", window))
    it = obs.inject_time if inject_time is None else inject_time
    if it is None:
        raise MethodError("no inject_time: this method needs the injection time")
    if obs.metrics is None or not obs.metric_columns:
        raise MethodError("no metric columns to rank")
    t = obs.metrics[TIME].to_numpy(dtype=float)
    cols = obs.metric_columns
    return _window(t, cols, lambda lo, hi: _metric_rows(obs.metrics, cols, lo, hi), it, window, min_pre, min_post)


def block_window(
    obs: Observation,
    columns: list[str],
    values: np.ndarray,
    *,
    inject_time: float | None = None,
    window: int | str | None = DEFAULT_WINDOW,
    min_pre: int = 2,
    min_post: int = 1,
) -> MetricWindow:
    """``metric_window`` of ``obs`` with its metrics given as one float array instead: ``columns`` (unique,
    ``TIME`` among them) name the columns of ``values`` (rows, columns), in frame order. The same window as
    ``metric_window`` on the frame ``pd.DataFrame(values, columns=columns)``, without building it (mm-baro's
    merged table, where the frame and its column selection cost more than the scoring)."""
    window = resolve_window(obs, check_window("metric_window", window))
    it = obs.inject_time if inject_time is None else inject_time
    if it is None:
        raise MethodError("no inject_time: this method needs the injection time")
    keep = np.array([c != TIME for c in columns], dtype=bool)
    if not keep.any():
        raise MethodError("no metric columns to rank")
    t = values[:, columns.index(TIME)].astype(float)
    cols = [c for c in columns if c != TIME]
    keep_at = np.flatnonzero(keep)
    return _window(t, cols, lambda lo, hi: values[lo:hi, keep_at], it, window, min_pre, min_post)


def _window(t: np.ndarray, cols: list[str], rows, it: float, window: int | None, min_pre: int,
            min_post: int) -> MetricWindow:
    split = int(np.searchsorted(t, it, side="left"))
    lo = 0 if window is None else max(0, split - window)
    hi = len(t) if window is None else min(len(t), split + window)
    # Gaps are filled within the window only, so what a method sees does not depend on far-away rows.
    values = fill_gaps_array(rows(lo, hi))
    w = MetricWindow(cols, t[lo:hi], values, split - lo)
    if w.split < min_pre:
        raise MethodError(f"only {w.split} sample(s) before inject_time={it:g}; need at least {min_pre}")
    if len(t[lo:hi]) - w.split < min_post:
        raise MethodError(f"only {len(w.times) - w.split} sample(s) from inject_time={it:g} on; need {min_post}")
    return w


def _metric_rows(metrics, cols: list[str], lo: int, hi: int) -> np.ndarray:
    """Rows [lo, hi) of the ``cols`` of ``metrics`` as a new float array: ``metrics[cols].to_numpy(dtype=float)``
    without building the column selection (a pandas indexer and a frame, the larger part of the cost on a few
    hundred rows) when the names are unique and every column is float already (one block: a view)."""
    if metrics.columns.is_unique and all(dt == np.float64 for dt in metrics.dtypes):
        keep = np.flatnonzero(metrics.columns.isin(cols))
        return metrics.to_numpy()[lo:hi, keep]
    return metrics[cols].to_numpy(dtype=float, copy=True)[lo:hi]
