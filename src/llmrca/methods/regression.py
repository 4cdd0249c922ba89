"""Regression-based hypothesis testing (CIRCA's scorer).

Each series is regressed on its parents in a causal graph using normal (pre-injection) rows only; the question
is how far its post-injection residuals stray from the normal ones. A series explained by its parents' values
is an effect; one whose residual jumps is where the change entered the system.

Residuals are scaled with ``llmrca.methods.scoring.baseline`` (mean/std of the pre-injection residuals, with
that module's explicit rule for a flat baseline): a series flat before injection that moves after it scores
high, one constant over the whole window scores 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from sklearn.linear_model import LinearRegression, Ridge

from llmrca.errors import MethodError
from llmrca.methods.scoring import baseline

Regressor = Literal["linear", "ridge"]
Aggregate = Literal["max", "mean"]


def lagged_features(values: np.ndarray, cols: Sequence[int], max_lag: int) -> np.ndarray:
    """Columns ``cols`` at lags 0..max_lag, rows max_lag.. (the first rows have no full history)."""
    n = values.shape[0]
    parts = [values[max_lag - k : n - k, list(cols)] for k in range(max_lag + 1)]
    return np.concatenate(parts, axis=1) if parts else np.empty((n - max_lag, 0))


def residual_scores(
    values: np.ndarray,
    split: int,
    parents: Sequence[Sequence[int]],
    *,
    max_lag: int = 0,
    regressor: Regressor = "linear",
    ridge_alpha: float = 1.0,
    aggregate: Aggregate = "max",
) -> np.ndarray:
    """Per column j: regress it on ``parents[j]`` (lags 0..max_lag) over rows before ``split``; the score is
    the max (or mean) over rows from ``split`` on of |residual − centre| / scale, centre and scale from the
    pre-injection residuals. A column without parents is scored on its own values (an N-Sigma z-score).
    """
    n, d = values.shape
    if len(parents) != d:
        raise MethodError(f"regression: {len(parents)} parent lists for {d} columns")
    n_fit = split - max_lag
    if n_fit < 2 or split >= n:
        raise MethodError(
            f"regression: {split} pre-injection and {n - split} post-injection rows (max_lag={max_lag}); "
            "need at least max_lag + 2 before and 1 after"
        )
    # Regressors in units of their normal spread: least squares does not care, ridge's penalty then means the
    # same for a byte counter as for a utilisation, and the normal equations stay well conditioned.
    sd = values[:split].std(axis=0)
    values = (values - values[:split].mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    target = values[max_lag:]
    out = np.zeros(d)
    for j in range(d):
        y = target[:, j]
        pa = [int(p) for p in parents[j] if int(p) != j]
        if pa:
            x = lagged_features(values, pa, max_lag)
            if regressor == "linear" and x.shape[1] >= n_fit - 1:
                raise MethodError(
                    f"regression: column {j} has {x.shape[1]} regressors for {n_fit} normal rows; "
                    "use regressor='ridge', a smaller max_lag or a longer window"
                )
            model = LinearRegression() if regressor == "linear" else Ridge(alpha=ridge_alpha)
            model.fit(x[:n_fit], y[:n_fit])
            resid = y - model.predict(x)
        else:
            resid = y
        center, scale = baseline(resid[:n_fit, None], resid[n_fit:, None], "standard")
        if not scale[0] > 0:  # constant over the whole window: no evidence of anything
            continue
        dev = np.abs(resid[n_fit:] - center[0]) / scale[0]
        out[j] = float(dev.max() if aggregate == "max" else dev.mean())
    return out
