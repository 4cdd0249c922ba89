"""Pandas string columns built straight from Python strings (the simulator's trace and log text columns).

``pd.array(values, dtype="string")`` checks every element in Python before it hands the values to pyarrow; the
simulator's values are already ``str`` (or ``None`` for a missing value), so where pandas' default string dtype is
the pyarrow one this builds the same array (same dtype, values and missing values) from one ``pyarrow.array``
call. Anything else takes pandas' own path.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

try:
    import pyarrow as pa
except ImportError:  # pragma: no cover - pyarrow is a dependency
    pa = None

_DTYPE = pd.StringDtype()
_FAST = pa is not None and getattr(_DTYPE, "storage", "") == "pyarrow" and hasattr(pd.arrays, "ArrowStringArray")


def string_array(values: Any) -> Any:
    """``pd.array(values, dtype="string")`` for a sequence (list or object array) of ``str`` and ``None``."""
    if _FAST:
        try:
            data = values.tolist() if isinstance(values, np.ndarray) else values
            out = pd.arrays.ArrowStringArray(pa.chunked_array([pa.array(data, type=pa.large_string())]))
        except (pa.ArrowException, TypeError, ValueError):
            pass
        else:
            if out.dtype == _DTYPE:
                return out
    return pd.array(values, dtype="string")
