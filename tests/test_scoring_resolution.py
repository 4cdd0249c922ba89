"""On fault-free simulated runs no method's top score comes from float noise or a quantized column (the
resolution rules of ``llmrca.methods.scoring``)."""

from __future__ import annotations

import numpy as np
import pytest

from llmrca.methods.registry import get_method
from llmrca.methods.window import metric_window
from llmrca.sim import SimConfig, select_view, simulate


def _quantized_or_float_noise(x: np.ndarray) -> bool:
    """Float noise: every value within 1e-9 relative of the others. Quantized: at most 4 distinct levels, or one
    level repeated in more than half of the readings (a histogram quantile parked at a bucket's top)."""
    big = np.abs(x).max()
    if big == 0 or np.ptp(x) <= 1e-9 * big:
        return True
    _, counts = np.unique(np.round(x / big, 9), return_counts=True)
    return len(counts) <= 4 or counts.max() > len(x) / 2


@pytest.mark.parametrize("replicas", [4, 8])
def test_top_column_of_a_fault_free_run_is_a_real_change(replicas):
    for seed in range(3):
        case = simulate(SimConfig(replicas=replicas), None, seed=seed, traces=False, logs=False)
        for view in ("study", "full"):
            obs = select_view(case.observation, view)
            w = metric_window(obs)
            for name in ("baro", "nsigma"):
                r = get_method(name).rank(obs)
                top = r.candidates[0]
                x = w.values[:, w.columns.index(top)]
                assert not _quantized_or_float_noise(x), (seed, view, name, top, r.scores[0])
