"""Per-column change scores against a normal (pre-injection) baseline: the scaling nsigma, BARO and ε-Diagnosis share.

A score is ``max |x_post - center| / scale`` with ``center``/``scale`` fitted on the pre window: mean/std
(``"standard"``, N-Sigma) or median/IQR (``"robust"``, BARO's RobustScorer).

Change below a column's resolution is not change. Two rules, instead of an epsilon:

* **Float noise is equality.** Two values of a column closer than ``FLOAT_RTOL`` times the column's largest
  magnitude are the same reading: arithmetic on the same inputs in another order (a quantile interpolated as
  ``0.27`` one time and ``0.26999999999999996`` the next) differs by a few units in the last place (about 1e-16
  relative), while no exporter reports a meaningful digit at 1e-9 relative. Deviations within that tolerance are 0,
  and a column whose pre window agrees within it is constant (spread 0, centre its first value).
* **A baseline is never known more finely than the column's resolution.** ``q``, the resolution, is the smallest
  gap between two distinct values of the analysed window (pre and post together, after the rule above); the scale
  is floored at ``q``. A score is then at most the number of resolution steps the post window moved, so a
  quantized series (a histogram quantile that repeats a few bucket-interpolated values, a percentage rounded to
  whole points, a rate counting a handful of events) stepping to a neighbouring value scores about 1, below any
  real change of a varying column. Consequences:

  - a column constant over the whole window (within float noise) has no gap: it scores 0;
  - a column constant before and changed after scores its change in resolution steps: a one-step move 1, a
    move of k steps k; a post window that varies at a fine resolution after an exactly constant baseline still
    scores high (``q`` is then the fine gap), as it should;
  - for a varying, finely resolved baseline the standard deviation is far above ``q``, so N-Sigma scores are
    unchanged; an IQR can be 0 for a non-constant baseline (more than half the readings identical, e.g. a counter
    that is mostly 0), and BARO then scales by ``q`` as for a constant baseline.

* **Ties are not precision.** When most of a baseline repeats a few values (a histogram quantile whose rank sits
  at the top of one bucket most of the time and jumps one bucket up now and then), its IQR measures the tiny
  interpolation jitter inside the bucket, not how far the series normally moves. BARO's robust scale is therefore
  floored at ``IQR_PER_STD`` (1.349, the IQR of a normal distribution) times the standard deviation of the pre
  window's central 90 % (its 5th to 95th percentile): for a normal baseline that floor is 1.19 sigma, below the
  IQR's 1.35 sigma, so it never acts there, and up to 5 % outliers on either side still do not move it.

  (Earlier versions floored at ``q / n_pre``: every one-ulp or one-bucket flicker after a constant baseline then
  scored ``n_pre``, above every real change, and BARO's wide-view rankings were decided by such columns.)

Inputs are gap-filled (``llmrca.case.fill_gaps``), so a NaN left in a column means the whole series is NaN (which
case validation rejects); such a column scores NaN and ``Ranking.from_scores`` puts it last.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Kind = Literal["standard", "robust"]


FLOAT_RTOL = 1e-9  # relative gap below which two readings are the same value (see the module docs)
IQR_PER_STD = 1.349  # IQR of a normal distribution in standard deviations


def tolerance(values: np.ndarray) -> np.ndarray:
    """Per column, the float-noise tolerance: ``FLOAT_RTOL`` times its largest magnitude (0 for an all-zero column)."""
    with np.errstate(invalid="ignore"):
        big = np.nanmax(np.abs(values), axis=0, initial=0.0)
    return FLOAT_RTOL * np.where(np.isfinite(big), big, 0.0)


def resolution(values: np.ndarray) -> np.ndarray:
    """Per column, the smallest gap between two distinct values (gaps within float noise do not count);
    0 where the column is constant."""
    s = np.sort(values, axis=0)
    gaps = np.diff(s, axis=0)
    gaps = np.where(gaps > tolerance(values), gaps, np.inf)
    q = gaps.min(axis=0, initial=np.inf)
    return np.where(np.isfinite(q), q, 0.0)


def _std_within(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Per column, the standard deviation of the values in ``[lo, hi]`` (0 where there are none)."""
    inside = (x >= lo) & (x <= hi)
    n = inside.sum(axis=0)
    safe = np.maximum(n, 1)
    mean = np.where(inside, x, 0.0).sum(axis=0) / safe
    var = np.where(inside, (x - mean) ** 2, 0.0).sum(axis=0) / safe
    return np.sqrt(var)


def baseline(pre: np.ndarray, post: np.ndarray, kind: Kind = "standard") -> tuple[np.ndarray, np.ndarray]:
    """``(center, scale)`` per column from the pre window, with the resolution rules of this module.

    ``scale`` is 0 only for a column that is constant (within float noise) over pre and post together.
    """
    if kind == "standard":
        center = pre.mean(axis=0)
        spread = pre.std(axis=0)
    elif kind == "robust":
        q05, q25, center, q75, q95 = np.percentile(pre, [5.0, 25.0, 50.0, 75.0, 95.0], axis=0)
        # Ties: the IQR of a quantized baseline measures its quantization, not its spread (see the module docs).
        spread = np.maximum(q75 - q25, IQR_PER_STD * _std_within(pre, q05, q95))
    else:  # pragma: no cover - guarded by the Literal
        raise ValueError(f"unknown baseline kind {kind!r}")
    both = np.concatenate([pre, post], axis=0)
    const = pre.max(axis=0) - pre.min(axis=0) <= tolerance(both)
    center = np.where(const, pre[0], center)
    spread = np.where(const, 0.0, spread)
    return center, np.maximum(spread, resolution(both))


def deviation_scores(
    pre: np.ndarray, post: np.ndarray, kind: Kind = "standard", *, two_sided: bool = True
) -> np.ndarray:
    """Per column ``max over post of (x - center) / scale``; of ``|x - center|`` when ``two_sided``.

    ``pre`` and ``post`` are (rows, columns) arrays without NaN except in all-NaN columns.
    """
    if pre.shape[0] < 1 or post.shape[0] < 1:
        raise ValueError("deviation_scores needs at least one pre and one post row")
    d = pre.shape[1]
    empty = np.isnan(pre).any(axis=0) | np.isnan(post).any(axis=0)
    out = np.full(d, np.nan)
    ok = ~empty
    if not ok.any():
        return out
    a, b = pre[:, ok], post[:, ok]
    center, scale = baseline(a, b, kind)
    dev = b - center
    dev = np.where(np.abs(dev) <= tolerance(np.concatenate([a, b], axis=0)), 0.0, dev)  # float noise
    if two_sided:
        dev = np.abs(dev)
    top = dev.max(axis=0)
    # scale is 0 only when the column is constant (within float noise) over the whole window; top is then 0.
    out[ok] = np.divide(top, scale, out=np.zeros_like(top), where=scale > 0)
    return out
