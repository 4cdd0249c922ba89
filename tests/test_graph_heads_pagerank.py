"""The unweighted PageRank head (``graph_heads.pagerank_dense``) against networkx's ``pagerank`` on the
reversed graph: the same values bit for bit and so the same ranking, on random graphs with dangling nodes,
isolated nodes and self-loops."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest

from llmrca.errors import MethodError
from llmrca.methods.graph_heads import pagerank_dense, pagerank_head


def _random_graph(seed: int) -> nx.DiGraph:
    r = np.random.default_rng(seed)
    n = int(r.integers(1, 60))
    density = float(r.choice([0.0, 0.02, 0.05, 0.15, 0.5]))
    G = nx.DiGraph()
    G.add_nodes_from(f"s{int(r.integers(100))}_m{i}" for i in range(n))  # node order not sorted by name
    nodes = list(G)
    edges = [(a, b) for a in nodes for b in nodes if r.random() < density and (a != b or r.random() < 0.2)]
    G.add_edges_from(edges[i] for i in r.permutation(len(edges)))  # a node's edges not in node order
    return G


@pytest.mark.parametrize("seed", range(60))
def test_pagerank_head_is_networkx_pagerank_on_the_reversed_graph_bitwise(seed):
    G = _random_graph(seed)
    for alpha in (0.85, 0.5):
        ref = nx.pagerank(G.reverse(copy=True), alpha=alpha, weight=None, max_iter=1000, tol=1e-10)
        got = pagerank_head(G, alpha=alpha)
        assert list(got) == list(ref)
        assert all(got[k] == ref[k] for k in ref), max(abs(got[k] - ref[k]) for k in ref)
        by = sorted(ref, key=lambda k: (-ref[k], k))
        assert sorted(got, key=lambda k: (-got[k], k)) == by  # the same ranking, ties included


def test_pagerank_head_with_dangling_and_isolated_nodes():
    # a -> b -> c: reversed, c -> b -> a, so a is dangling there; d isolated (dangling and unreached)
    G = nx.DiGraph([("a", "b"), ("b", "c")])
    G.add_node("d")
    got = pagerank_head(G)
    ref = nx.pagerank(G.reverse(copy=True), tol=1e-10)
    assert got == pytest.approx(ref, rel=1e-12, abs=0)
    assert got["a"] > got["b"] > got["c"] and sum(got.values()) == pytest.approx(1.0)
    assert pagerank_head(nx.DiGraph()) == {}
    only = nx.DiGraph()
    only.add_nodes_from(["x", "y"])
    assert pagerank_head(only) == {"x": 0.5, "y": 0.5}


def test_pagerank_dense_reports_non_convergence():
    A = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])  # 0 -> 1 -> 2, 2 dangling
    with pytest.raises(MethodError, match="converge"):
        pagerank_dense(A, alpha=0.85, max_iter=2, tol=1e-16)
    with pytest.raises(nx.PowerIterationFailedConvergence):  # networkx stops there too
        nx.pagerank(nx.DiGraph([(0, 1), (1, 2)]), max_iter=2, tol=1e-16)
    assert pagerank_dense(A, max_iter=1000, tol=1e-10).tolist() == list(
        nx.pagerank(nx.DiGraph([(0, 1), (1, 2)]), max_iter=1000, tol=1e-10).values())


def test_the_size_switch_does_not_change_the_values():
    # above DENSE_PAGERANK_MAX_NODES the head calls networkx; the dense iteration gives the same bits there too,
    # so a graph's scores do not depend on which side of the threshold it falls
    from llmrca.methods import graph_heads

    n = graph_heads.DENSE_PAGERANK_MAX_NODES + 30
    G = nx.gnp_random_graph(n, 3 / n, directed=True, seed=3)
    ref = nx.pagerank(G.reverse(copy=True), alpha=0.85, weight=None, max_iter=1000, tol=1e-10)
    got = pagerank_head(G)
    assert list(got) == [str(k) for k in ref] and all(got[str(k)] == ref[k] for k in ref)
    nodes = list(G)
    A = np.zeros((n, n))
    for u, v in G.edges():
        A[nodes.index(v), nodes.index(u)] = 1.0
    dense = pagerank_dense(A)
    assert all(dense[i] == ref[k] for i, k in enumerate(nodes))
