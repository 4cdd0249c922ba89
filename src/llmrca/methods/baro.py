"""BARO (Pham, Ha & Zhang, FSE'24): robust per-metric scores around the anomaly onset, the onset found by
multivariate Bayesian online change-point detection when the injection time is unknown.

RobustScorer: per metric column, median and IQR (25th-75th percentile) of the normal window before the onset;
score = ``max over the window after it of |x - median| / IQR``. Constant baselines (and IQR 0) follow
``llmrca.methods.scoring``. Onset: ``llmrca.methods.bocpd`` over all rows of the metrics (gaps filled); the onset is
the most probable start of a new run, and the method abstains (``NoAnswer``) when BOCPD finds no confident one
rather than guessing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from llmrca.case import TIME, Observation, fill_gaps
from llmrca.errors import MethodError, NoAnswer
from llmrca.methods import bocpd
from llmrca.methods.base import BaseMethod, Ranking
from llmrca.methods.params import check_bool, check_float, check_int
from llmrca.methods.scoring import deviation_scores
from llmrca.methods.window import DEFAULT_WINDOW, MetricWindow, check_window, metric_window


@dataclass(frozen=True)
class Onset:
    index: int  # row of the metrics frame where the abnormal run starts
    time: float  # its timestamp (unix s)
    probability: float  # posterior probability that the run started within the tolerance of this row


class Baro(BaseMethod):
    """Parameters:

    - ``window``: samples each side of the onset that are scored (None: all rows);
    - ``two_sided``: score drops as well as rises (BARO's released code takes the signed maximum: False);
    - ``detect_onset``: find the onset with BOCPD even when ``inject_time`` is known (always done without one);
    - ``bocpd_components``: principal components of the noise-scaled metrics BOCPD models (None: every column;
      BARO models every metric jointly, which costs O(d^2) per run per row);
    - ``bocpd_expected_run``: expected rows between change points (hazard = 1 / this);
    - ``bocpd_lag``: rows of evidence after a candidate onset; ``bocpd_tolerance``: rows either side that count
      as the same onset; ``bocpd_threshold``: posterior probability needed to accept an onset;
    - ``bocpd_max_runs``: run starts kept (most probable first; None: exact recursion).
    """

    name = "baro"
    family = "metric"
    needs = frozenset({"metrics"})

    @classmethod
    def default_params(cls) -> dict[str, object]:
        return {
            "window": DEFAULT_WINDOW,
            "two_sided": True,
            "detect_onset": False,
            "bocpd_components": bocpd.DEFAULT_COMPONENTS,
            "bocpd_expected_run": bocpd.DEFAULT_EXPECTED_RUN,
            "bocpd_lag": bocpd.DEFAULT_LAG,
            "bocpd_tolerance": bocpd.DEFAULT_TOLERANCE,
            "bocpd_threshold": bocpd.DEFAULT_THRESHOLD,
            "bocpd_max_runs": bocpd.DEFAULT_MAX_RUNS,
        }

    def rank(self, obs: Observation, *, seed: int = 0) -> Ranking:
        return self.rank_with(obs, metric_window)

    def rank_with(self, obs: Observation, window_of: Callable[..., MetricWindow]) -> Ranking:
        """``rank`` with ``window_of`` in place of ``metric_window`` (called with the same arguments, it must
        give the same window): for a caller that holds the metrics as arrays (mm-baro's merged table)."""
        window = check_window(self.name, self.params["window"], minimum=2)
        two_sided = check_bool(self.name, "two_sided", self.params["two_sided"])
        detect = check_bool(self.name, "detect_onset", self.params["detect_onset"])
        onset = obs.inject_time
        if onset is None or detect:
            onset = self.detect_onset(obs).time
        w = window_of(obs, inject_time=onset, window=window, min_pre=2, min_post=1)
        scores = deviation_scores(w.pre, w.post, "robust", two_sided=two_sided)
        return Ranking.from_scores(w.columns, scores)

    def detect_onset(self, obs: Observation) -> Onset:
        """The anomaly onset BOCPD finds in the whole metrics frame; ``NoAnswer`` when there is none."""
        p = self.params
        components = check_int(self.name, "bocpd_components", p["bocpd_components"], minimum=1, allow_none=True)
        expected_run = check_float(self.name, "bocpd_expected_run", p["bocpd_expected_run"], low=1.0,
                                   high=float("inf"))
        lag = check_int(self.name, "bocpd_lag", p["bocpd_lag"], minimum=0)
        tolerance = check_int(self.name, "bocpd_tolerance", p["bocpd_tolerance"], minimum=0)
        threshold = check_float(self.name, "bocpd_threshold", p["bocpd_threshold"], low=0.0, high=1.0)
        max_runs = check_int(self.name, "bocpd_max_runs", p["bocpd_max_runs"], minimum=2, allow_none=True)
        if obs.metrics is None or not obs.metric_columns:
            raise MethodError("baro: no metric columns to detect an onset in")
        m = fill_gaps(obs.metrics)
        values = m[obs.metric_columns].to_numpy(dtype=float)
        cp = bocpd.detect_change_point(
            values, components=components, expected_run=expected_run, lag=lag, tolerance=tolerance,
            threshold=threshold, max_runs=max_runs,
        )
        if cp is None:
            raise NoAnswer(
                f"baro: BOCPD found no change point with posterior probability >= {threshold:g} in "
                f"{len(values)} rows; give inject_time or lower bocpd_threshold"
            )
        return Onset(index=cp.index, time=float(m[TIME].iloc[cp.index]), probability=cp.near_probability)
