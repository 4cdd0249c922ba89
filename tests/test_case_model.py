import numpy as np
import pandas as pd
import pytest

from llmrca.case import Case, GroundTruth, Observation, Topology, constant_columns, fill_gaps
from llmrca.errors import CaseError
from llmrca.synthetic import planted_case


def _case(metrics: pd.DataFrame, inject_time=None, **kw) -> Case:
    return Case(id="c", observation=Observation(metrics=metrics, inject_time=inject_time, **kw),
                truth=GroundTruth(service="a", fault_type="cpu"))


def _fields(case):
    return {(p.severity, p.field) for p in case.problems()}


def good_metrics(n=10):
    return pd.DataFrame({"time": np.arange(n, dtype=float), "a_cpu": np.arange(n) * 1.0, "b_mem": np.ones(n)})


def test_planted_case_is_valid():
    c = planted_case(seed=1)
    assert c.problems() == []
    c.validate()


def test_missing_time_column():
    m = good_metrics().drop(columns="time")
    with pytest.raises(CaseError, match="missing 'time' column"):
        _case(m).validate()


def test_duplicated_and_unsorted_times_are_named():
    m = good_metrics()
    m.loc[3, "time"] = 2.0
    errs = [str(p) for p in _case(m).problems()]
    assert any("duplicated time 2" in e for e in errs)
    m = good_metrics()
    m.loc[5, "time"] = 1.5
    errs = [str(p) for p in _case(m).problems()]
    assert any("not increasing" in e and "row 5" in e for e in errs)


def test_non_numeric_column_is_named():
    m = good_metrics()
    m["c_level"] = ["x"] * len(m)
    with pytest.raises(CaseError, match="non-numeric column.*c_level"):
        _case(m).validate()


def test_bad_column_names():
    m = good_metrics()
    m["nounderscore"] = 1.0
    m["_cpu"] = 1.0
    m["svc_"] = 1.0
    msg = str(pytest.raises(CaseError, _case(m).validate).value)
    for name in ("nounderscore", "_cpu", "svc_"):
        assert repr(name) in msg


def test_inject_time_outside_data():
    with pytest.raises(CaseError, match="inject_time: 100 is outside"):
        _case(good_metrics(), inject_time=100.0).validate()
    _case(good_metrics(), inject_time=5.0).validate()


def test_empty_frames():
    with pytest.raises(CaseError, match="empty frame"):
        _case(good_metrics(0)).validate()
    with pytest.raises(CaseError, match="no metric columns"):
        _case(pd.DataFrame({"time": [0.0, 1.0]})).validate()


def test_all_nan_is_error_some_nan_is_warning():
    m = good_metrics()
    m["c_cpu"] = np.nan
    with pytest.raises(CaseError, match="all-NaN column.*c_cpu"):
        _case(m).validate()
    m = good_metrics()
    m.loc[2, "a_cpu"] = np.nan
    c = _case(m)
    assert _fields(c) == {("warning", "metrics")}
    c.validate()  # warnings do not raise


def test_every_problem_is_reported_at_once():
    m = good_metrics()
    m["bad"] = 1.0
    m["c_s"] = ["x"] * len(m)
    m.loc[4, "time"] = 3.0
    errs = _case(m, inject_time=99.0).problems()
    assert len([p for p in errs if p.severity == "error"]) >= 4


def test_topology_problems():
    topo = Topology(services=("a", "b_c"), edges=(("a", "zz"),), entry="q")
    msgs = " ".join(topo.problems())
    assert "'b_c'" in msgs and "'zz'" in msgs and "'q'" in msgs


def test_entry_service_from_edges():
    t = Topology(services=("gw", "p", "r1", "r2"), edges=(("gw", "p"), ("p", "r1"), ("p", "r2")))
    assert t.entry_service() == "gw"
    assert Topology.from_dict(t.to_dict()) == t


def test_fill_gaps_policy():
    m = pd.DataFrame({"time": [0.0, 1, 2, 3, 4], "a_x": [np.nan, 1.0, np.nan, 3.0, np.nan]})
    f = fill_gaps(m)
    assert f["a_x"].tolist() == [1.0, 1.0, 2.0, 3.0, 3.0]
    assert m["a_x"].isna().sum() == 3  # input untouched


def test_constant_columns():
    assert constant_columns(good_metrics()) == ["b_mem"]


def test_services_and_has():
    c = planted_case(n_services=3, seed=0)
    assert c.observation.services == ["svc-0", "svc-1", "svc-2"]
    assert c.observation.has("metrics") and not c.observation.has("traces")


def test_planted_frontend_adds_an_entry_without_changing_the_services():
    a, b = planted_case(seed=3), planted_case(seed=3, frontend=True)
    assert b.problems() == []
    assert b.observation.topology.entry_service() == "frontend" != b.truth.service
    for c in a.observation.metric_columns:
        assert a.observation.metrics[c].equals(b.observation.metrics[c])
    # caller → callee: the frontend calls only services, the DAG's edges are reversed
    assert {(y, x) for x, y in a.observation.topology.edges} <= set(b.observation.topology.edges)
