"""The shortcuts taken to keep the methods shared with RCAEval fast (issue 17) give what the plain code gave:
the metric window without a pandas column selection, the services of a trace method's ranking from the
factorised spans, the random walk's clamp-free table, LiNGAM's edges read off B at once."""

import bisect

import networkx as nx
import numpy as np
import pandas as pd
import pytest
from _trace_cases import T0, chain_observation, chain_traces

from llmrca.case import Observation
from llmrca.methods import causal_graphs as cg
from llmrca.methods import lingam_fast as lf
from llmrca.methods.graph_heads import abs_correlation_with, random_walk_head
from llmrca.methods.spans import case_services, load_spans
from llmrca.methods.window import metric_window


def _frame(int_column: bool) -> pd.DataFrame:
    r = np.random.default_rng(0)
    m = pd.DataFrame({"time": 100.0 + 5.0 * np.arange(40), "b_cpu": r.standard_normal(40),
                      "a_mem": r.standard_normal(40), "c_lat": r.standard_normal(40)})
    m.loc[[0, 7, 8, 39], "a_mem"] = np.nan  # gaps, at both edges too
    if int_column:
        m["d_count"] = r.integers(0, 9, 40)  # not float: the plain path
    return m


@pytest.mark.parametrize("int_column", [False, True])
@pytest.mark.parametrize("window", [None, 5, "auto"])
def test_metric_window_equals_the_column_selection(int_column, window):
    m = _frame(int_column)
    obs = Observation(metrics=m, inject_time=100.0 + 5.0 * 20)
    w = metric_window(obs, window=window)
    lo, hi = (0, 40) if window is None else (20 - (60 if window == "auto" else window),
                                             20 + (60 if window == "auto" else window))
    lo, hi = max(lo, 0), min(hi, 40)
    plain = m[obs.metric_columns].to_numpy(dtype=float, copy=True)[lo:hi]
    # the gap filling of metric_window: nearest values at the edges, linear inside
    for j in range(plain.shape[1]):
        ok = ~np.isnan(plain[:, j])
        plain[:, j] = np.interp(np.arange(len(plain)), np.flatnonzero(ok), plain[ok, j])
    assert w.columns == obs.metric_columns
    assert np.array_equal(w.values, plain)
    w.values[:] = 0.0  # the window is a copy: the frame is untouched
    assert np.isnan(m["a_mem"].iloc[0]) and m["b_cpu"].abs().sum() > 0


def test_case_services_is_the_set_of_the_observations_services():
    obs = chain_observation(chain_traces(120, slow_from=T0 + 60), T0 + 60)
    obs.metrics["extra-svc_cpu"] = 1.0
    assert case_services(obs, load_spans(obs, "tracerca")) == set(obs.services)


def _walk_as_before(G, X, names, sli, steps, rho, seed):
    """The walk as random_walk_head wrote it before the table (clamping bisect's index at every step)."""
    sim = abs_correlation_with(X, names, sli)
    nodes = list(G.nodes)
    index = {n: i for i, n in enumerate(nodes)}
    targets, cumprob = [], []
    for n in nodes:
        causes = [c for c in G.predecessors(n) if c != n]
        effects = [e for e in G.successors(n) if e != n]
        nbr = [sim.get(c, 0.0) for c in causes] + [sim.get(e, 0.0) for e in effects]
        w = [sim.get(c, 0.0) for c in causes] + [rho * sim.get(e, 0.0) for e in effects]
        to = [index[c] for c in causes] + [index[e] for e in effects]
        w.append(max(0.0, sim.get(n, 0.0) - max(nbr, default=0.0)))
        to.append(index[n])
        wa = np.asarray(w, dtype=float)
        if not wa.sum() > 0:
            wa, to = np.array([1.0]), [index[n]]
        targets.append(to)
        cumprob.append(np.cumsum(wa / wa.sum()).tolist())
    visits, cur = [0] * len(nodes), index[sli]
    for u in np.random.default_rng(seed).random(steps).tolist():
        cp = cumprob[cur]
        cur = targets[cur][min(bisect.bisect_right(cp, u * cp[-1]), len(cp) - 1)]
        visits[cur] += 1
    return {n: v / steps for n, v in zip(nodes, visits, strict=True)}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_walk_visits_equal_the_clamped_walk(seed):
    r = np.random.default_rng(seed)
    names = [f"s{i}_m" for i in range(9)]
    X = r.standard_normal((60, 9)) + r.standard_normal((60, 1))
    G = nx.gnp_random_graph(9, 0.3, seed=seed, directed=True)
    G = nx.relabel_nodes(G, dict(enumerate(names)))
    got = random_walk_head(G, X, names, names[0], steps=3000, rho=0.2, seed=seed)
    assert got == _walk_as_before(G, X, names, names[0], 3000, 0.2, seed)


def test_lingam_graph_edges_are_those_of_the_double_loop():
    r = np.random.default_rng(4)
    X = r.uniform(-1, 1, (150, 6)) ** 3
    X[:, 3] += 0.8 * X[:, 0]
    X[:, 5] += 0.6 * X[:, 3] - 0.5 * X[:, 1]
    names = [f"v{i}_m" for i in range(6)]
    G = cg.lingam_graph(X, names)
    _, B = lf.direct_lingam(X)
    expected = [(names[j], names[i], float(abs(B[i, j]))) for i in range(6) for j in range(6)
                if abs(B[i, j]) > 0.01]
    assert expected and sorted((a, b, d["weight"]) for a, b, d in G.edges(data=True)) == sorted(expected)


def test_client_peers_by_distinct_text_equal_the_row_by_row_parse():
    from llmrca.methods.spans import _client_peers

    texts = ['{"span.kind":"CLIENT","peer.service":"db"}', None, '{"span.kind":"SERVER","peer.service":"db"}',
             '{"span.kind":"client","peer.service":"cache"}', 'peer.service not json',
             '{"span.kind":"CLIENT","peer.service":"db"}', '{"span.kind":"CLIENT","peer.service":"a_b"}',
             '{"span.kind":"CLIENT"}', '{"span.kind":"CLIENT","peer.service":"cache"}']
    arrow = pd.Series(texts, dtype="string[pyarrow]")
    rows, peers = _client_peers(arrow)
    assert rows.tolist() == [0, 3, 5, 8] and peers == ["db", "cache", "db", "cache"]
    rows2, peers2 = _client_peers(pd.Series(texts, dtype=object))  # not Arrow-backed: the plain path
    assert rows2.tolist() == rows.tolist() and peers2 == peers
