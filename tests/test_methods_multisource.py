from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from _trace_cases import T0, chain_observation, chain_traces, simulated

from llmrca.case import empty_logs, empty_traces
from llmrca.case.views import select_view
from llmrca.errors import MethodError
from llmrca.methods.baro import Baro
from llmrca.methods.multisource import error_line
from llmrca.methods.pdiagnose import metric_votes, vote_ranking
from llmrca.methods.registry import entry, get_method
from llmrca.methods.window import MetricWindow

MULTI = ("mm-baro", "pdiagnose")
INJECT = T0 + 200.0
FAULTS = ("cpu", "memory", "network", "gpu")
TARGETS = ("ray-replicas-1", "ray-replicas-2")


def _with_logs(obs, burst_service="db", burst_from=INJECT, n_burst=40):
    """Steady INFO lines from every service, plus a burst of a new ERROR template on one service."""
    rows = []
    for i in range(400):
        for s in ("gw", "api", "db", "cache"):
            rows.append((T0 + i + 0.1, s, "INFO", f"served request {i} in {i % 7} ms",
                         "served request <*> in <*> ms"))
    for j in range(n_burst):
        rows.append((burst_from + 1.5 * j + 0.3, burst_service, "ERROR",
                     f"connection pool exhausted ({j} waiting)",
                     "connection pool exhausted (<*> waiting)"))
    logs = pd.DataFrame(rows, columns=["time", "service", "level", "message", "template"]).sort_values("time")
    return replace(obs, logs=logs.reset_index(drop=True))


@pytest.fixture(scope="module")
def chain():
    return _with_logs(chain_observation(chain_traces(slow_from=INJECT), INJECT))


def test_registered_as_multi_source():
    for name in MULTI:
        e = entry(name)
        assert e.family == "multi-source" and e.needs == frozenset({"metrics", "logs", "traces"})
        m = get_method(name)
        assert m.name == name and m.family == e.family and m.needs == e.needs


@pytest.mark.parametrize("name", MULTI)
def test_missing_sources_are_clear_errors(name, chain):
    with pytest.raises(MethodError, match=f"{name} needs logs: this case has none"):
        get_method(name).rank(replace(chain, logs=empty_logs()))
    with pytest.raises(MethodError, match=f"{name} needs logs and traces: this case has none of them"):
        get_method(name).rank(replace(chain, logs=empty_logs(), traces=empty_traces()))
    with pytest.raises(MethodError, match="metrics"):
        get_method(name, require_all=False).rank(replace(chain, metrics=chain.metrics[["time"]]))


def test_mm_baro_without_logs_and_traces_is_baro(chain):
    bare = replace(chain, logs=empty_logs(), traces=empty_traces())
    assert get_method("mm-baro", require_all=False).rank(bare) == Baro().rank(bare)


def test_mm_baro_ranks_every_series_of_every_source(chain):
    r = get_method("mm-baro").rank(chain)
    cands = set(r.candidates)
    assert set(chain.metric_columns) <= cands
    assert "db_query_latency" in cands and "db_query_error-count" in cands
    assert any(c.startswith("db_log-template-t") for c in cands)
    assert len(r.candidates) == len(cands)
    assert r == get_method("mm-baro").rank(chain, seed=5)


def test_mm_baro_finds_a_fault_only_logs_and_traces_show(chain):
    # The metrics are flat noise: BARO alone cannot know; the error burst and db's slow spans point at db.
    assert Baro().rank(chain).services()[0] != "db"
    assert get_method("mm-baro").rank(chain).services()[0] == "db"
    only_logs = replace(chain, traces=empty_traces())
    assert get_method("mm-baro", require_all=False).rank(only_logs).services()[0] == "db"
    mined = get_method("mm-baro", templates="drain").rank(chain)
    assert mined.services()[0] == "db"
    with pytest.raises(MethodError, match="templates"):
        get_method("mm-baro", templates="regex").rank(chain)


def test_pdiagnose_votes_for_the_service_every_source_blames(chain):
    r = get_method("pdiagnose").rank(chain)
    assert r.services()[0] == "db" and r.scores[0] == 2.0  # logs and traces (the metrics are flat)
    assert set(r.candidates) == set(chain.services)
    assert r == get_method("pdiagnose").rank(chain, seed=9)
    # A source weighted 0 casts no vote but still orders equal totals through its severity.
    quiet = get_method("pdiagnose", weight_logs=0.0, weight_traces=0.0).rank(chain)
    assert quiet.scores[0] == 0.0 and quiet.services()[0] == "db"
    with pytest.raises(MethodError, match="weight_logs"):
        get_method("pdiagnose", weight_logs=-1.0).rank(chain)


def test_pdiagnose_log_vote_alone(chain):
    only_logs = replace(chain, traces=empty_traces())
    r = get_method("pdiagnose", require_all=False).rank(only_logs)
    assert r.services()[0] == "db" and r.scores[0] == 1.0


def test_kde_metric_detector():
    rng = np.random.default_rng(0)
    pre = rng.standard_normal((60, 3))
    post = rng.standard_normal((15, 3))
    post[:, 1] += 6.0  # shifted
    post[:, 2] = pre[:, 2].mean()  # inside the normal range
    w = MetricWindow(["a_x", "b_x", "c_x"], np.arange(75.0), np.vstack([pre, post]), 60)
    flags, sev = metric_votes(w, 0.3)
    assert flags == {"a": False, "b": True, "c": False}
    assert sev["b"] > 10 * max(sev["a"], sev["c"])
    # A baseline constant before the injection that moves after it is anomalous; constant throughout is not.
    v = np.vstack([np.zeros((60, 2)), np.c_[np.zeros(15), np.ones(15)]])
    flags, sev = metric_votes(MetricWindow(["a_x", "b_x"], np.arange(75.0), v, 60), 0.3)
    assert flags == {"a": False, "b": True} and sev["a"] == 0.0


def test_vote_ranking_ties_and_names():
    votes = {"metrics": ({"a": True, "b": True, "c": False}, {"a": 1.0, "b": 3.0, "c": 0.5}),
             "logs": ({"a": True}, {"a": 4.0, "b": 1.0})}
    r = vote_ranking(["a", "b", "c", "d"], votes, {"metrics": 1.0, "logs": 1.0})
    assert r.candidates == ("a", "b", "c", "d") and r.scores == (2.0, 1.0, 0.0, 0.0)
    r = vote_ranking(["a", "b", "c", "d"], votes, {"metrics": 1.0, "logs": 0.5})
    assert r.candidates[:2] == ("a", "b")


def test_error_lines_by_level_or_word():
    messages = ["Finished request chatcmpl-1.", "x", "CUDA error: an illegal memory access",
                "upstream timed out (110: Connection timed out)", "Avg prompt throughput"]
    logs = pd.DataFrame({"level": ["INFO", "ERROR", "INFO", "WARNING", "INFO"], "message": messages})
    assert error_line(logs).tolist() == [False, True, True, True, False]


def _mean_rank(name, view="study"):
    ranks = {}
    for fault in FAULTS:
        for target in TARGETS:
            obs = select_view(simulated(fault, target).observation, view)
            ranks[(fault, target)] = get_method(name).rank(obs, seed=0).rank_of(target)
    return ranks


def test_multi_source_methods_beat_dummy_on_simulated_faults(capsys):
    table = {name: _mean_rank(name) for name in ("dummy", *MULTI)}
    with capsys.disabled():
        print("\nservice rank of the truth (study view, 8 short simulated runs):")
        for name, ranks in table.items():
            per_fault = {f: [ranks[(f, t)] for t in TARGETS] for f in FAULTS}
            print(f"  {name:10s}", "  ".join(f"{f}={v}" for f, v in per_fault.items()))
    for name in MULTI:
        assert np.mean(list(table[name].values())) < np.mean(list(table["dummy"].values()))
        assert np.mean([r <= 3 for r in table[name].values()]) >= 0.75
