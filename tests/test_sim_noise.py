"""noise="realistic" (the default) adds background activity from its own random streams; noise="none" keeps the
clean cases: no gaps, no unrelated warnings, and none of the background's values reach it."""

from __future__ import annotations

import numpy as np
import pandas as pd

from llmrca.case import fill_gaps
from llmrca.case.validation import validate_case
from llmrca.errors import MethodError
from llmrca.faults import Injection
from llmrca.methods.registry import get_method, names
from llmrca.sim import SimConfig, select_view, simulate
from llmrca.sim import logs as logmod
from llmrca.sim import metrics as metmod
from llmrca.sim import workload as wlmod

UNRELATED = "Invalid HTTP request received|were present in the request but ignored|perf: interrupt took too long"
LOUD = {"GC_RATE_HZ": 0.5, "NEIGHBOUR_CPU": (3.0, 1.0, 10.0), "MISSED_SCRAPE_P": 0.05}


def _short(**kw) -> SimConfig:
    return SimConfig(duration=120.0, inject_at=80.0, fault_duration=30.0, warmup=10.0, **kw)


def test_defaults_are_realistic_with_istio_buckets():
    cfg = SimConfig()
    assert cfg.noise == "realistic" and cfg.mesh_quantiles == "istio"


def test_none_has_no_gaps_and_no_unrelated_warnings():
    for seed in range(3):
        case = simulate(_short(noise="none"), Injection("cpu", "ray-replicas-1"), seed=seed)
        assert not case.observation.metrics.isna().any().any()
        assert not case.observation.logs["message"].str.contains(UNRELATED).any()


def test_none_ignores_every_background_value(monkeypatch):
    cfg = _short(noise="none", mesh_quantiles="exact")
    before = simulate(cfg, Injection("memory", "ray-head"), seed=4)
    for k, v in LOUD.items():
        monkeypatch.setattr(metmod, k, v)
    monkeypatch.setattr(wlmod, "LOAD_DRIFT", (0.5, 10.0))
    monkeypatch.setattr(logmod, "UNRELATED_WARNINGS_PER_HOUR", 500.0)
    after = simulate(cfg, Injection("memory", "ray-head"), seed=4)
    pd.testing.assert_frame_equal(before.observation.metrics, after.observation.metrics)
    pd.testing.assert_frame_equal(before.observation.logs, after.observation.logs)
    pd.testing.assert_frame_equal(before.observation.traces, after.observation.traces)
    # The same knobs do reach a realistic case.
    loud = simulate(_short(mesh_quantiles="exact"), Injection("memory", "ray-head"), seed=4)
    assert loud.observation.metrics.isna().any().any()
    assert loud.observation.logs["message"].str.contains(UNRELATED).sum() > 5


def test_realistic_is_deterministic_and_adds_background():
    a = simulate(_short(), None, seed=2)
    b = simulate(_short(), None, seed=2)
    pd.testing.assert_frame_equal(a.observation.metrics, b.observation.metrics)
    pd.testing.assert_frame_equal(a.observation.logs, b.observation.logs)
    clean = simulate(_short(noise="none"), None, seed=2).observation.metrics
    m = a.observation.metrics
    # Other tenants on the nodes: node CPU and memory are higher and vary more than the pods explain.
    for node in ("node-gpu-0", "node-cpu-0"):
        assert m[f"{node}_node_cpu"].mean() > clean[f"{node}_node_cpu"].mean() + 1.0
        assert m[f"{node}_node_memory"].std() > 5 * clean[f"{node}_node_memory"].std()


def test_unrelated_warnings_appear_over_many_runs():
    lines = pd.concat([simulate(_short(), None, seed=s).observation.logs for s in range(8)])
    hits = lines[lines["message"].str.contains(UNRELATED)]
    assert len(hits) > 0 and set(hits["level"]) == {"WARNING"}
    assert hits["template"].nunique() <= 3


def test_load_drift_keeps_the_count_and_moves_the_rate():
    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(0.0, 600.0, 3000))
    d = wlmod.drift(t, 0.0, 600.0, np.random.default_rng(1), sd=0.3, tau=30.0)
    assert len(d) == len(t) and np.all(np.diff(d) >= 0) and d.min() >= 0.0 and d.max() <= 600.0
    per_min = np.histogram(d, bins=10, range=(0, 600))[0]
    flat = np.histogram(t, bins=10, range=(0, 600))[0]
    assert per_min.std() > 2 * flat.std()


def _outcome(name: str, obs) -> str:
    try:
        r = get_method(name).rank(obs, seed=0)
    except MethodError as e:  # a method may decline a case; it must decline the gap-free twin the same way
        return f"declined: {type(e).__name__}"
    assert len(r.candidates) > 0 and not np.isnan(np.asarray(r.scores, dtype=float)).all(), name
    return "ranked"


def test_every_method_works_on_a_gappy_case(monkeypatch):
    monkeypatch.setattr(metmod, "MISSED_SCRAPE_P", 0.0)
    whole = simulate(SimConfig(), Injection("cpu", "ray-replicas-1"), seed=3, logs=True)
    monkeypatch.setattr(metmod, "MISSED_SCRAPE_P", 0.05)
    gappy = simulate(SimConfig(), Injection("cpu", "ray-replicas-1"), seed=3, logs=True)
    m = gappy.observation.metrics
    assert m.isna().any().any() and not whole.observation.metrics.isna().any().any()
    # Only the gaps differ (the missed scrapes are the background stream's last draws).
    pd.testing.assert_frame_equal(m.fillna(whole.observation.metrics), whole.observation.metrics)
    assert not fill_gaps(m).isna().any().any()
    assert not [p for p in validate_case(gappy) if p.severity == "error"]
    a, b = select_view(gappy, "study").observation, select_view(whole, "study").observation
    for name in names():
        assert _outcome(name, a) == _outcome(name, b), name
