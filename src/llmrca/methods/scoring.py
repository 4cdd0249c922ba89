"""Per-column change scores against a normal (pre-injection) baseline: the scaling nsigma, BARO and ε-Diagnosis share.

A score is ``max |x_post - center| / scale`` with ``center``/``scale`` fitted on the pre window: mean/std
(``"standard"``, N-Sigma) or median/IQR (``"robust"``, BARO's RobustScorer).

Degenerate baselines follow one explicit rule instead of an epsilon:

* a column whose pre window is exactly constant has spread 0 and centre equal to that constant (no rounding from
  averaging identical floats);
* the scale is floored at ``q / n_pre``, where ``q`` is the column's resolution in the analysed window (the smallest
  positive gap between two of its values, pre and post together) and ``n_pre`` the number of baseline samples.
  ``n_pre`` identical readings say the baseline varies less than the resolution; the more readings agree, the
  tighter that bound, hence the division by ``n_pre``. Consequences:

  - a column constant over the whole window has no positive gap: every deviation is exactly 0 and it scores 0;
  - a column constant before and changed after scores at least ``n_pre`` (its deviation is at least ``q``), i.e.
    above any plausible z of a varying column, and far higher when the post window is noisy at fine resolution;
  - for a non-constant baseline the standard deviation is always at least ``q / n_pre``, so the floor never changes
    an N-Sigma score. An IQR can be 0 for a non-constant baseline (more than half the readings identical, e.g. a
    counter that is mostly 0); BARO then scales by the floor, as for a constant baseline.

Inputs are gap-filled (``llmrca.case.fill_gaps``), so a NaN left in a column means the whole series is NaN (which
case validation rejects); such a column scores NaN and ``Ranking.from_scores`` puts it last.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Kind = Literal["standard", "robust"]


def resolution(values: np.ndarray) -> np.ndarray:
    """Per column, the smallest positive difference between two of its values; 0 where the column is constant."""
    s = np.sort(values, axis=0)
    gaps = np.diff(s, axis=0)
    gaps = np.where(gaps > 0, gaps, np.inf)
    q = gaps.min(axis=0, initial=np.inf)
    return np.where(np.isfinite(q), q, 0.0)


def baseline(pre: np.ndarray, post: np.ndarray, kind: Kind = "standard") -> tuple[np.ndarray, np.ndarray]:
    """``(center, scale)`` per column from the pre window, with the constant-baseline rule of this module.

    ``scale`` is 0 only for a column that is constant over pre and post together (its deviations are all 0).
    """
    n_pre = pre.shape[0]
    if kind == "standard":
        center = pre.mean(axis=0)
        spread = pre.std(axis=0)
    elif kind == "robust":
        q25, center, q75 = np.percentile(pre, [25.0, 50.0, 75.0], axis=0)
        spread = q75 - q25
    else:  # pragma: no cover - guarded by the Literal
        raise ValueError(f"unknown baseline kind {kind!r}")
    const = pre.max(axis=0) == pre.min(axis=0)
    center = np.where(const, pre[0], center)
    spread = np.where(const, 0.0, spread)
    floor = resolution(np.concatenate([pre, post], axis=0)) / n_pre
    return center, np.maximum(spread, floor)


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
    if two_sided:
        dev = np.abs(dev)
    top = dev.max(axis=0)
    # scale is 0 only when the column is constant over the whole window, and then top is exactly 0.
    out[ok] = np.divide(top, scale, out=np.zeros_like(top), where=scale > 0)
    return out
