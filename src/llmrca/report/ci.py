"""Confidence intervals of accuracy scores over repeated cases.

The bench reports a **stratified percentile bootstrap over cases**: each resample draws, within every stratum
(a fault type × target, i.e. the repetitions of one experiment), as many cases as the stratum holds, with
replacement, and recomputes the score. Stratifying keeps the design fixed — every resample has the suite's
mix of faults and targets — so the interval reflects the spread over repetitions, not over a reshuffled
design. AC@k and Avg@k are means of per-case values (a hit indicator; the share of k' ≤ k with a hit), so
one resample of case indices serves every score at once. A cell of one case, or of cases that all agree within
each stratum, has a zero-width interval: the data show no spread.

``wilson_interval`` is the closed-form alternative for a single AC@k proportion (used where no case-level data
exist); it does not assume the repetitions and keeps its width at 0 and 1.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import pandas as pd
from scipy.stats import norm

SCORES = ("ac1", "ac3", "avg5")


def wilson_interval(hits: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``hits / n``; (nan, nan) for n = 0."""
    _check_confidence(confidence)
    if n < 0 or hits < 0 or hits > n:
        raise ValueError(f"need 0 <= hits <= n, got hits={hits}, n={n}")
    if n == 0:
        return float("nan"), float("nan")
    z = float(norm.ppf(0.5 + confidence / 2))
    p = hits / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def bootstrap_mean_ci(
    values: np.ndarray | Sequence[float] | Sequence[Sequence[float]],
    strata: Sequence[Hashable] | None = None,
    *,
    confidence: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of the column means of ``values`` (n cases × m scores, or n values).

    ``strata``: one label per case; resampling keeps each stratum's size (None = one stratum). Returns the
    lower and upper bounds, arrays of length m (scalars' arrays of shape () for 1-d input). NaN for no case.
    """
    _check_confidence(confidence)
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    x = np.asarray(values, dtype=float)
    flat = x.ndim == 1
    if flat:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"values must be 1-d or 2-d, got shape {x.shape}")
    n, m = x.shape
    if n == 0:
        nan = np.full(m, np.nan)
        return (nan[0], nan[0]) if flat else (nan, nan.copy())
    labels = [0] * n if strata is None else list(strata)
    if len(labels) != n:
        raise ValueError(f"strata has {len(labels)} labels for {n} values")
    groups: dict[Hashable, list[int]] = {}
    for i, s in enumerate(labels):
        groups.setdefault(s, []).append(i)
    rng = np.random.default_rng(seed)
    totals = np.zeros((resamples, m))
    for members in groups.values():  # dict order = first appearance: the draws do not depend on hashing
        part = x[members]
        idx = rng.integers(0, len(members), size=(resamples, len(members)))
        totals += part[idx].sum(axis=1)
    means = totals / n
    alpha = 1 - confidence
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2], axis=0)
    # Means of identical draws can differ in the last bit; an interval must contain the observed mean.
    mean = x.mean(axis=0)
    lo, hi = np.minimum(lo, mean), np.maximum(hi, mean)
    return (lo[0], hi[0]) if flat else (lo, hi)


def per_case_scores(ranks: Sequence[object]) -> np.ndarray:
    """n × 3 matrix of each case's contribution to AC@1, AC@3 and Avg@5 (a miss is 0 everywhere)."""
    r = np.array([np.inf if _missing(v) else float(v) for v in ranks], dtype=float)
    return np.column_stack([
        (r <= 1).astype(float),
        (r <= 3).astype(float),
        np.clip(6.0 - r, 0.0, 5.0) / 5.0,  # rank r is a hit at k = r..5: (6 - r) of the five cut-offs
    ])


def score_cis(
    ranks: Sequence[object],
    strata: Sequence[Hashable] | None = None,
    *,
    confidence: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """Bootstrap bounds of AC@1, AC@3, Avg@5 for one cell: keys ``ac1_lo, ac1_hi, ac3_lo, …, avg5_hi``."""
    lo, hi = bootstrap_mean_ci(per_case_scores(ranks).reshape(-1, 3), strata, confidence=confidence,
                               resamples=resamples, seed=seed)
    out: dict[str, float] = {}
    for j, key in enumerate(SCORES):
        out[f"{key}_lo"] = float(lo[j])
        out[f"{key}_hi"] = float(hi[j])
    return out


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")


def _missing(v: object) -> bool:
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False
