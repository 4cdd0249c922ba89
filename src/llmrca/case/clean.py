"""The documented handling of imperfect series, applied once before any method sees metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd

from llmrca.case.schema import TIME


def fill_gaps(metrics: pd.DataFrame) -> pd.DataFrame:
    """Fill NaNs: linear in time between known values, nearest known value at the edges.

    All-NaN columns are left as they are (validation rejects them). Returns a float64 copy.
    """
    cols = [c for c in metrics.columns if c != TIME]
    values = fill_gaps_array(metrics[cols].to_numpy(dtype=float, copy=True))
    out = pd.DataFrame(values, columns=cols, index=metrics.index)
    if TIME in metrics.columns:
        out.insert(list(metrics.columns).index(TIME), TIME, metrics[TIME].to_numpy(dtype=float))
    return out


def fill_gaps_array(values: np.ndarray) -> np.ndarray:
    """``fill_gaps`` on a (rows, columns) float array, in place; only columns with NaNs are touched."""
    nan = np.isnan(values)
    if not nan.any():
        return values
    rows = np.arange(values.shape[0])
    for j in np.flatnonzero(nan.any(axis=0)):
        ok = ~nan[:, j]
        if ok.any():
            # np.interp holds the edge values constant outside the known range: nearest-value edges.
            values[:, j] = np.interp(rows, rows[ok], values[ok, j])
    return values


def constant_columns(metrics: pd.DataFrame) -> list[str]:
    cols = [c for c in metrics.columns if c != TIME]
    v = metrics[cols].to_numpy(dtype=float)
    with np.errstate(invalid="ignore"):
        span = np.nanmax(v, axis=0) - np.nanmin(v, axis=0) if len(v) else np.zeros(len(cols))
    return [c for c, s in zip(cols, span) if not (s > 0)]
