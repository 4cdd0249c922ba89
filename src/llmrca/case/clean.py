"""The documented handling of imperfect series, applied once before any method sees metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd

from llmrca.case.schema import TIME


def fill_gaps(metrics: pd.DataFrame) -> pd.DataFrame:
    """Fill NaNs: linear in time between known values, nearest known value at the edges.

    All-NaN columns are left as they are (validation rejects them). Returns a float64 copy.
    """
    out = metrics.copy()
    cols = [c for c in out.columns if c != TIME]
    values = out[cols].to_numpy(dtype=float, copy=True)
    if not np.isnan(values).any():
        out[cols] = values
        return out
    filled = pd.DataFrame(values, columns=cols).interpolate(method="linear", limit_direction="both", axis=0)
    out[cols] = filled.to_numpy()
    return out


def constant_columns(metrics: pd.DataFrame) -> list[str]:
    cols = [c for c in metrics.columns if c != TIME]
    v = metrics[cols].to_numpy(dtype=float)
    with np.errstate(invalid="ignore"):
        span = np.nanmax(v, axis=0) - np.nanmin(v, axis=0) if len(v) else np.zeros(len(cols))
    return [c for c, s in zip(cols, span) if not (s > 0)]
