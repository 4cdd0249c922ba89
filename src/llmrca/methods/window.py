"""The pre/post window split every metric method starts from."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmrca.case import TIME, Observation
from llmrca.case.clean import fill_gaps_array
from llmrca.errors import MethodError

DEFAULT_WINDOW = 60  # samples each side of inject_time, as in the reference study's runner


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
    window: int | None = DEFAULT_WINDOW,
    min_pre: int = 2,
    min_post: int = 1,
) -> MetricWindow:
    """Rows around ``inject_time`` (default: the observation's): at most ``window`` samples before and after.

    ``window=None`` keeps all rows. Raises ``MethodError`` when there is no injection time or too few rows.
    """
    it = obs.inject_time if inject_time is None else inject_time
    if it is None:
        raise MethodError("no inject_time: this method needs the injection time")
    if obs.metrics is None or not obs.metric_columns:
        raise MethodError("no metric columns to rank")
    t = obs.metrics[TIME].to_numpy(dtype=float)
    split = int(np.searchsorted(t, it, side="left"))
    lo = 0 if window is None else max(0, split - window)
    hi = len(t) if window is None else min(len(t), split + window)
    cols = obs.metric_columns
    # Gaps are filled within the window only, so what a method sees does not depend on far-away rows.
    values = fill_gaps_array(obs.metrics[cols].to_numpy(dtype=float, copy=True)[lo:hi])
    w = MetricWindow(cols, t[lo:hi], values, split - lo)
    if w.split < min_pre:
        raise MethodError(f"only {w.split} sample(s) before inject_time={it:g}; need at least {min_pre}")
    if len(t[lo:hi]) - w.split < min_post:
        raise MethodError(f"only {len(w.times) - w.split} sample(s) from inject_time={it:g} on; need {min_post}")
    return w
