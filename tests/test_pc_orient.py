"""PC's orientation phase on the budgeted graphs (llmrca.methods.pc_orient) is causal-learn's: the same unshielded
triples, triangles and kites in the same order, the same CPDAG after uc_sepset and Meek's rules, on random
skeletons and separating sets; and it stops at the builder's deadline."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("causallearn")

from causallearn.graph.GeneralGraph import GeneralGraph
from causallearn.graph.GraphClass import CausalGraph
from causallearn.graph.GraphNode import GraphNode
from causallearn.utils.PCUtils import Meek, UCSepset

from llmrca.methods.causal_graphs import BudgetExceeded, pc_graph
from llmrca.methods.pc_orient import budgeted_graph, orient


def _skeleton(n: int, p: float, rng: np.random.Generator) -> tuple[GeneralGraph, dict]:
    """An undirected skeleton (causal-learn's endpoint marks: -1 at both ends) and, for every non-adjacent pair, a
    separating set drawn from the other nodes (so some triples are colliders, some not)."""
    nodes = [GraphNode(f"X{i}") for i in range(n)]
    g = GeneralGraph(nodes)
    adj = np.triu(rng.random((n, n)) < p, 1)
    for i, j in zip(*np.nonzero(adj)):
        g.graph[i, j] = g.graph[j, i] = -1
    sep = {}
    for i in range(n):
        for j in range(i + 1, n):
            if not adj[i, j]:
                others = [k for k in range(n) if k not in (i, j)]
                S = tuple(sorted(int(k) for k in rng.choice(others, size=int(rng.integers(0, 3)), replace=False)))
                sep[(i, j)] = sep[(j, i)] = S
    return g, sep


def _reference(g: GeneralGraph, sep: dict, n: int) -> CausalGraph:
    cg = CausalGraph(n, [f"X{i}" for i in range(n)])
    cg.G = g
    for (x, y), S in sep.items():
        cg.sepset[x, y] = [S]
    return cg


def _budgeted(g: GeneralGraph, sep: dict, n: int, deadline: float | None = None):
    cg = budgeted_graph([f"X{i}" for i in range(n)], g, deadline)
    for (x, y), S in sep.items():
        cg.sepset[x, y] = [S]
    return cg


@pytest.mark.parametrize("seed", range(12))
def test_the_lists_and_the_cpdag_are_causal_learns(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 16))
    g, sep = _skeleton(n, float(rng.uniform(0.15, 0.5)), rng)
    ref, ours = _reference(g, sep, n), _budgeted(g, sep, n)
    assert ours.find_unshielded_triples() == ref.find_unshielded_triples()
    assert ours.find_triangles() == ref.find_triangles()
    assert ours.find_kites() == ref.find_kites()
    want_uc, got_uc = UCSepset.uc_sepset(ref, 2), UCSepset.uc_sepset(ours, 2)
    assert np.array_equal(got_uc.G.graph, want_uc.G.graph)
    assert np.array_equal(got_uc.G.dpath, want_uc.G.dpath)  # the ancestor matrix Meek's cycle check reads
    want = Meek.meek(want_uc)
    got = orient(ours, 2)
    assert np.array_equal(got.G.graph, want.G.graph) and np.array_equal(got.G.dpath, want.G.dpath)
    # the lists again on the oriented graph (Meek's rules read them off a partly directed graph)
    assert got.find_kites() == want.find_kites() and got.find_unshielded_triples() == want.find_unshielded_triples()


def test_some_random_case_has_kites_colliders_and_meek_orientations(monkeypatch):
    """The random graphs above exercise every step (a comparison of empty lists would prove nothing), the
    rebuilt ancestor matrix included (a directed edge removed: an arrow re-oriented)."""
    from llmrca.methods import pc_orient

    general = pc_orient._classes()[0]
    rebuilt = []
    original = general._reconstitute
    monkeypatch.setattr(general, "_reconstitute", lambda self, *a: (rebuilt.append(1), original(self, *a))[1])
    kites = colliders = meek = 0
    for seed in range(12):
        rng = np.random.default_rng(seed)
        n = int(rng.integers(5, 16))
        g, sep = _skeleton(n, float(rng.uniform(0.15, 0.5)), rng)
        cg = _budgeted(g, sep, n)
        kites += len(cg.find_kites())
        uc = UCSepset.uc_sepset(cg, 2)
        colliders += int((uc.G.graph == 1).sum())
        meek += int((Meek.meek(uc).G.graph == 1).sum() - (uc.G.graph == 1).sum())
    assert kites > 0 and colliders > 0 and meek > 0 and rebuilt, (kites, colliders, meek, len(rebuilt))


def test_the_orientation_stops_at_the_deadline():
    rng = np.random.default_rng(0)
    g, sep = _skeleton(40, 0.3, rng)
    with pytest.raises(BudgetExceeded):
        orient(_budgeted(g, sep, 40, deadline=time.monotonic() - 1.0), 2)


def test_pc_graph_is_unchanged_by_the_budgeted_orientation():
    """pc_graph's edges on data with a collider and a chain (the orientation it always gave)."""
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=400), rng.normal(size=400)
    c = a + b + 0.3 * rng.normal(size=400)
    d = c + 0.3 * rng.normal(size=400)
    G = pc_graph(np.column_stack([a, b, c, d]), ["a", "b", "c", "d"], alpha=0.01, timeout_s=60)
    assert {("a", "c"), ("b", "c"), ("c", "d")} <= set(G.edges)
    assert ("c", "a") not in G.edges and ("d", "c") not in G.edges
