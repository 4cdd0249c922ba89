"""On fault-free simulated runs no method's top score comes from float noise or a quantized column (the
resolution rules of ``llmrca.methods.scoring``)."""

from __future__ import annotations

import numpy as np
import pytest

from llmrca.methods.registry import get_method
from llmrca.methods.window import metric_window
from llmrca.sim import SimConfig, select_view, simulate


def _below_resolution(x: np.ndarray, split: int) -> bool:
    """Whether the post window's move is float noise or a quantized flicker.

    Float noise: every value within 1e-9 relative of the others. A quantized flicker: a column of few levels (at most
    4 distinct values, or one value repeated in more than half of the readings: a histogram quantile parked in one
    bucket) whose post values stay within one resolution step of the range the pre window already visited.
    """
    big = np.abs(x).max()
    if big == 0 or np.ptp(x) <= 1e-9 * big:
        return True
    levels, counts = np.unique(np.round(x / big, 9), return_counts=True)
    quantized = len(counts) <= 4 or counts.max() > len(x) / 2
    step = np.diff(levels).min() * big
    pre, post = x[:split], x[split:]
    inside = post.min() >= pre.min() - step * (1 + 1e-9) and post.max() <= pre.max() + step * (1 + 1e-9)
    return bool(quantized and inside)


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
                assert not _below_resolution(x, w.split), (seed, view, name, top, r.scores[0])
