from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from _trace_cases import T0, chain_observation, chain_traces

from llmrca.case import empty_traces
from llmrca.errors import MethodError
from llmrca.methods.call_graph import call_graph, operation_edges, span_parents, trace_call_graph, trace_edges
from llmrca.methods.spans import full_ranking, group_slo, load_spans, require_sources


def _spans(rows):
    return pd.DataFrame(rows, columns=["trace_id", "span_id", "parent_span_id", "service", "operation"])


def test_span_parents_within_each_trace():
    tr = _spans([
        ("t1", "a", None, "gw", "GET"),
        ("t1", "b", "a", "api", "h"),
        ("t2", "a", None, "gw", "GET"),  # same span id in another trace
        ("t2", "b", "a", "api", "h"),
        ("t2", "c", "zz", "db", "q"),  # parent not in the frame
        ("t1", "c", "b", "db", "q"),
    ])
    assert span_parents(tr).tolist() == [-1, 0, -1, 2, -1, 1]
    assert span_parents(tr.iloc[:0]).tolist() == []


def test_operation_edges_and_the_traces_only_call_graph():
    tr = _spans([
        ("t1", "a", None, "gw", "GET"), ("t1", "b", "a", "api", "h"), ("t1", "c", "b", "api", "call"),
        ("t1", "d", "c", "db", "q"), ("t2", "a", None, "gw", "GET"), ("t2", "b", "a", "api", "h"),
    ])
    assert operation_edges(tr) == {("api_call", "db_q"): 1, ("api_h", "api_call"): 1, ("gw_GET", "api_h"): 2}
    g = trace_call_graph(tr)
    assert sorted(g.nodes) == ["api", "db", "gw"] and sorted(g.edges) == [("api", "db"), ("gw", "api")]
    assert g.edges["gw", "api"]["calls"] == 2 and g.graph["source"] == "traces"
    assert trace_edges(tr) == {("api", "db"): 1, ("gw", "api"): 2}  # unchanged: cross-service hops only
    ops = trace_call_graph(tr, level="operation")
    assert ("api_h", "api_call") in ops.edges and ops.edges["gw_GET", "api_h"]["calls"] == 2
    with pytest.raises(MethodError, match="no spans"):
        trace_call_graph(tr.iloc[:0])
    with pytest.raises(MethodError, match="level"):
        trace_call_graph(tr, level="host")


def test_call_graph_still_prefers_the_topology():
    obs = chain_observation(chain_traces(n=20), T0 + 10)
    assert call_graph(obs).graph["source"] == "topology"
    no_topo = replace(obs, topology=replace(obs.topology, edges=()))
    g = call_graph(no_topo)
    assert g.graph["source"] == "traces"
    assert sorted(g.edges) == [("api", "cache"), ("api", "db"), ("gw", "api")]


def test_load_spans_callers_callees_and_peers():
    obs = chain_observation(chain_traces(n=4, peer=True), T0 + 2)
    sp = load_spans(obs, "x")
    assert sp.n_traces == 4 and len(sp) == 16
    first = np.flatnonzero(sp.trace == 0)
    assert sp.operation[first].tolist() == ["gw_GET /", "api_handle", "api_call", "db_query"]
    assert sp.caller[first].tolist() == ["", "gw", "api", "api"]
    # The CLIENT span names its peer: it measures the call api → db.
    assert sp.callee[first].tolist() == ["gw", "api", "db", "db"]
    assert sp.parent[first].tolist() == [-1, first[0], first[1], first[2]]
    hist, det = sp.split(T0 + 2)
    assert hist.tolist() == [True, True, False, False] and det.tolist() == [False, False, True, True]
    hist, det = sp.split(T0 + 2, window_s=1.0)
    assert hist.tolist() == [False, True, False, False] and det.tolist() == [False, False, True, False]
    with pytest.raises(MethodError, match="x needs traces: this case has none"):
        load_spans(replace(obs, traces=empty_traces()), "x")
    with pytest.raises(MethodError, match="lack column"):
        load_spans(replace(obs, traces=obs.traces.drop(columns=["status"])), "x")


def test_slo_floors_and_minimum_history():
    codes = np.array([0, 0, 0, 1, 2, 2])
    d = np.array([1.0, 1.0, 1.0, 5.0, 2.0, 4.0])
    count, mean, std = group_slo(codes, d, np.ones(6, dtype=bool), 4)
    assert count.tolist() == [3, 1, 2, 0]
    assert mean[0] == 1.0 and std[0] == pytest.approx(0.01 * 1.0 + 1e-4)  # constant history: the floor
    assert np.isnan(mean[1]) and np.isnan(std[1]) and np.isnan(mean[3])  # fewer than 2 spans: no SLO
    assert mean[2] == 3.0 and std[2] == pytest.approx(np.sqrt(2.0))


def test_full_ranking_puts_unscored_services_last_by_name():
    scores = {"b_op": 2.0, "a_op": 2.0, "c_op": 5.0, "a_other": float("nan")}
    r = full_ranking(scores, ["z", "a", "b", "c", "y"])
    assert r.candidates == ("c_op", "a_op", "b_op", "a_other", "y", "z")
    assert r.scores == (5.0, 2.0, 2.0, 0.0, 0.0, 0.0)


def test_require_sources_names_what_is_missing():
    obs = chain_observation(chain_traces(n=4), T0 + 2)
    require_sources("m", obs, ["metrics", "traces"])
    with pytest.raises(MethodError, match="^m needs logs: this case has none$"):
        require_sources("m", obs, ["metrics", "logs"])
