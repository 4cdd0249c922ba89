"""ε-Diagnosis (Shan et al., WWW'19): a two-sample test per metric between equal-length normal and abnormal
windows; metrics whose two samples differ are the suspects.

The statistic. The paper's abstract describes "two-sample test algorithm and ε-statistics for measuring similarity
of time series"; ε-statistics are the energy statistics of Székely & Rizzo (we could not consult the paper's full
text here, so the formula is the standard two-sample energy statistic). For samples A, B of sizes n, m

    ε(A, B) = n m / (n + m) * (2 E|a - b| - E|a - a'| - E|b - b'|)      (means over all pairs, V-statistics)

It is 0 when the two empirical distributions coincide and grows with any difference between them (level, spread
or shape). In one dimension ``2 E|a - b| - E|a - a'| - E|b - b'| = 2 ∫ (F_A - F_B)^2 dx`` exactly for the empirical
CDFs, so with equal sizes ε = n * Σ_k (F_A - F_B)^2 (z_(k+1) - z_(k)) over the sorted pooled sample: O(n log n) per
column, and a relabelling of the pooled sample (a permutation) costs one cumulative sum.

Why not the reference study's variant. The implementation the reference study ran (RCAEval calling PyRCA, alpha 0.01)
scores each metric by the squared Pearson correlation between the normal and the abnormal window paired by
position, with bootstrap thresholds, keeps the metrics whose correlation is *above* the threshold and returns only
those. That statistic is invariant to a shift or a rescaling of the abnormal window, so it cannot see a level
change; high similarity is the opposite of what marks a root cause; and a short list loses AC@k. We implement the
energy test with the direction the paper intends (a larger, more significant ε is more suspicious) and rank every
column.

Significance and ranking. The null distribution of ε comes from ``permutations`` seeded random relabellings of the
pooled sample (the same relabellings for every column, each one a valid permutation test for that column);
p = (1 + #{ε_perm >= ε}) / (1 + permutations). Columns significant at ``alpha`` rank first; within each group,
by ε divided by the normal window's standard deviation (ε has the metric's units; the constant-baseline rule of
``llmrca.methods.scoring`` applies). The score is ``[p <= alpha] + e / (1 + e)`` with e that unit-free ε, so
it orders exactly that way. Windows: the last n pre-injection and the first n post-injection samples, n the
shorter of the two sides of the usual window.
"""

from __future__ import annotations

import numpy as np

from llmrca.case import Observation
from llmrca.methods.base import BaseMethod, Ranking
from llmrca.methods.params import check_float, check_int
from llmrca.methods.scoring import baseline
from llmrca.methods.window import DEFAULT_WINDOW, check_window, metric_window


def _cdf_differences(sorted_labels: np.ndarray, n: int) -> np.ndarray:
    """F_A - F_B just after each of the first 2n - 1 sorted pooled values; labels are 1 for sample A."""
    k = np.arange(1, 2 * n)
    return (2.0 * np.cumsum(sorted_labels, axis=-1)[..., :-1] - k) / n


def energy_test(
    a: np.ndarray, b: np.ndarray, *, permutations: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Per column ε(a, b) and its permutation p-value; ``a`` and ``b`` are (n, d) without NaN."""
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError("energy_test: the two samples must be 2-D with the same shape")
    n = a.shape[0]
    pooled = np.concatenate([a, b], axis=0)
    order = np.argsort(pooled, axis=0, kind="stable")
    gaps = np.diff(np.take_along_axis(pooled, order, axis=0), axis=0)  # (2n - 1, d); ties give 0 gaps
    observed = _cdf_differences((order < n).T.astype(float), n)  # (d, 2n - 1)
    stat = n * np.einsum("dk,kd->d", observed**2, gaps)
    labels = rng.permuted(np.tile(np.r_[np.ones(n), np.zeros(n)], (permutations, 1)), axis=1)
    null = n * _cdf_differences(labels, n) ** 2 @ gaps  # (permutations, d)
    # Relative tolerance: a relabelling equal to the observed one must count as "as extreme" despite rounding.
    exceed = (null >= stat * (1.0 - 1e-12)).sum(axis=0)
    return stat, (1.0 + exceed) / (1.0 + permutations)


class EDiagnosis(BaseMethod):
    """Parameters: ``window`` samples each side of ``inject_time`` (None: all rows); ``permutations`` for the
    null distribution (the smallest attainable p is ``1 / (1 + permutations)``, so keep it below ``alpha``);
    ``alpha`` the significance level that splits the ranking (0.01, as in the study's runner)."""

    name = "e-diagnosis"
    family = "metric"
    needs = frozenset({"metrics"})

    @classmethod
    def default_params(cls) -> dict[str, object]:
        return {"window": DEFAULT_WINDOW, "permutations": 199, "alpha": 0.01}

    def rank(self, obs: Observation, *, seed: int = 0) -> Ranking:
        window = check_window(self.name, self.params["window"], minimum=2)
        permutations = check_int(self.name, "permutations", self.params["permutations"], minimum=1)
        alpha = check_float(self.name, "alpha", self.params["alpha"], low=0.0, high=1.0)
        w = metric_window(obs, window=window, min_pre=2, min_post=2)
        n = min(w.split, len(w.times) - w.split)
        a, b = w.pre[-n:], w.post[:n]
        d = a.shape[1]
        ok = ~(np.isnan(a).any(axis=0) | np.isnan(b).any(axis=0))  # only all-NaN series survive gap filling
        scores = np.full(d, np.nan)
        if ok.any():
            rng = np.random.default_rng(seed)
            stat, pvalue = energy_test(a[:, ok], b[:, ok], permutations=permutations, rng=rng)
            _, scale = baseline(a[:, ok], b[:, ok], "standard")
            e = np.divide(stat, scale, out=np.zeros_like(stat), where=scale > 0)
            scores[ok] = (pvalue <= alpha) + e / (1.0 + e)
        return Ranking.from_scores(w.columns, scores)
