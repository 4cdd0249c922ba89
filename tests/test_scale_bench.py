"""benchmarks/scale.py's helpers: the planted cases' column counts, the growth-exponent fit, the limits, and one
child run (a result; a method past its limit killed). Speed itself is never asserted here."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import scale


@pytest.mark.parametrize("columns", [50, 200, 1000])
def test_planted_cases_have_exactly_the_asked_columns(columns):
    case = scale.planted(columns, seed=1)
    obs = case.observation
    assert len(obs.metric_columns) == columns
    assert obs.topology.entry == "frontend"
    assert case.truth.service in obs.topology.services
    services, k = scale.planted_shape(columns)
    assert (services + 1) * k == columns
    assert len(obs.topology.services) == services + 1


def test_planted_sizes_must_fit_the_metrics():
    with pytest.raises(ValueError, match="multiple"):
        scale.planted_shape(55, 10)
    with pytest.raises(SystemExit, match="sim9"):
        scale.parse_sizes("50,sim9", 10)
    assert [s.label for s in scale.parse_sizes("50,sim8", 10)] == ["50", "sim8"]


def test_growth_exponent_is_the_log_log_slope():
    cols = [50, 200, 1000, 2000]
    assert scale.growth_exponent(cols, [1e-3 * c**2 for c in cols]) == pytest.approx(2.0)
    assert scale.growth_exponent(cols, [0.01 * c for c in cols]) == pytest.approx(1.0)
    # Times under the floor (fixed overhead) are left out; one point left is no fit.
    assert scale.growth_exponent(cols, [0.001, 0.002, 0.5, 4.0]) == pytest.approx(np.log(8) / np.log(2))
    assert scale.growth_exponent([50, 200], [0.001, 0.5]) is None


def test_limits_per_size():
    sizes = {s.label: s for s in scale.parse_sizes("50,200,1000,2000", 10)}
    assert scale.limit_for(sizes["50"], {}) == scale.DEFAULT_LIMITS[50]
    assert scale.limit_for(sizes["2000"], {}) == scale.DEFAULT_LIMIT
    assert scale.limit_for(sizes["1000"], scale.parse_limits("30")) == 30.0
    limits = scale.parse_limits("50:5,1000:90")
    assert (scale.limit_for(sizes["50"], limits), scale.limit_for(sizes["1000"], limits)) == (5.0, 90.0)
    assert scale.limit_for(sizes["200"], limits) == scale.DEFAULT_LIMITS[200]


def test_child_runs_report_a_rank_and_kill_a_method_past_its_limit():
    case = scale.planted(50, seed=0)
    ok = scale.run_one("baro", case, 30.0)
    assert ok.status == "ok" and ok.rank == 1 and ok.seconds is not None and ok.peak_mb is not None
    slow = scale.run_one("_fake_methods:Sleeper", case, 0.2, warm_limit=1.0)  # sleeps an hour in rank()
    assert slow.status == "timeout"
    summary = scale.summarize([ok, slow])
    assert summary["timeouts"] == 1 and summary["seconds"] is None and summary["ac1"] == 0.5


def test_simulated_seeds_are_distinct_cases_on_the_documented_targets(monkeypatch):
    from llmrca import sim
    from llmrca.case import views

    picked = []
    monkeypatch.setattr(sim, "simulate", lambda cfg, inj, seed, case_id: picked.append((case_id, seed)) or case_id)
    monkeypatch.setattr(views, "select_view", lambda case, view: case)
    for s in range(26):
        scale.simulated(3, s)
    first = list(picked)
    ids = [cid for cid, _ in first]
    assert len(set(picked)) == len(set(ids)) == 26  # no seed repeats another's case
    assert ids[0] == "cpu/ray-replicas-0/rep-00" and ids[4] == "cpu/ray-head/rep-00"
    assert ids[8] == "cpu/ray-replicas-1/rep-00" and ids[12] == "cpu/ray-replicas-0/rep-01"
    # the same target and simulator seed at another replica count (like for like)
    picked.clear()
    scale.simulated(16, 13)
    assert picked == [first[13]]
