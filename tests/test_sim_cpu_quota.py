"""The CPU device under a CFS quota: a busy-polling engine and the period's burst throttling in its ITL.

Checked against the quiet-machine real-engine calibration (benchmarks/data/calib-vllm-2026-12-07.json, from
benchmarks/calibrate_vllm.py) through the benchmark's own simulator side (``sim_only``); docs/simulator.md
("Against the real engine on the live testbed") has the table these bands come from.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

from llmrca.sim import hardware

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "benchmarks" / "data" / "calib-vllm-2026-12-07.json"
FOUR = "cpu cpu {'workers': 4, 'load': 100}"
ONE = "cpu cpu {'workers': 1, 'load': 100}"


def _calib():
    spec = importlib.util.spec_from_file_location("calibrate_vllm", ROOT / "benchmarks" / "calibrate_vllm.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def recomputed():
    return _calib().sim_only(FIXTURE, None)["phases"]


def _itl(side: dict, part: str, stat: str) -> float:
    return side["parts"][part]["itl"][stat]


def test_only_the_cpu_device_polls_and_sees_cfs_periods():
    for g in hardware.GPU_KINDS.values():
        if g.is_gpu:
            assert (g.poll_cores, g.poll_cores_per_seq, g.cfs_period_s) == (0.0, 0.0, 0.0), g.name
    cpu = hardware.GPU_KINDS["cpu"]
    assert cpu.poll_cores == pytest.approx(1.1)
    assert cpu.poll_cores + 15 * cpu.poll_cores_per_seq == pytest.approx(1.6)  # batch 16, as measured
    assert cpu.cfs_period_s == 0.1


@pytest.mark.parametrize("phase", [ONE, FOUR])
def test_throttled_itl_tail_matches_the_live_shape(recomputed, phase):
    """Under CPU stress the quota binds in the simulator too: most steps run at full speed, one per 100 ms period
    waits out the throttled rest, so ITL p99 / p50 reaches the live engine's (19 and 12) -- before this
    model the simulator's was 2.0 and 4.4, outside the band."""
    live, sim = recomputed[phase]["live"], recomputed[phase]["sim"]
    live_tail = _itl(live, "fault", "p99") / _itl(live, "fault", "p50")
    sim_tail = _itl(sim, "fault", "p99") / _itl(sim, "fault", "p50")
    assert 0.5 * live_tail <= sim_tail <= 2.0 * live_tail, (live_tail, sim_tail)
    before = recomputed[phase]["sim_before"]
    old_tail = _itl(before, "fault", "p99") / _itl(before, "fault", "p50")
    assert not 0.5 * live_tail <= old_tail <= 2.0 * live_tail  # the band can fail: the old model's tail misses it


def test_burst_split_keeps_the_mean_step(recomputed):
    """The split moves ITL mass into the tail without changing its mean (the wall time of the steps): the mean
    stays within 15 % of the pre-model simulator's, whose mean the quota share already set."""
    for phase in (ONE, FOUR):
        new, old = recomputed[phase]["sim"], recomputed[phase]["sim_before"]
        assert math.isclose(_itl(new, "fault", "mean"), _itl(old, "fault", "mean"), rel_tol=0.15)

