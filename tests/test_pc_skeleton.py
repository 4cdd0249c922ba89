"""The batched PC-stable skeleton (llmrca.methods.pc_skeleton) is causal-learn's ``fas`` with its ``fisherz``: the
same adjacencies, separating sets and largest p-value per pair; FCI built on it is causal-learn's ``fci``; and
the FCI / Granger builders keep to their time budgets."""

from __future__ import annotations

import contextlib
import io
import math
import time
import warnings

import numpy as np
import pytest

pytest.importorskip("causallearn")

from causallearn.graph.GraphNode import GraphNode
from causallearn.utils.cit import CIT
from causallearn.utils.FAS import fas

from llmrca.errors import MethodError
from llmrca.methods import causal_graphs as cg
from llmrca.methods.pc_skeleton import fisherz_logp, stable_skeleton
from llmrca.synthetic import planted_case


def _data(seed: int, services: int = 8, edge_prob: float = 0.3) -> np.ndarray:
    c = planted_case(n_services=services, seed=seed, edge_prob=edge_prob)
    return c.observation.metrics[c.observation.metric_columns].to_numpy()[60:180]


def test_batched_fisherz_equals_causal_learns():
    X = _data(1)
    ref = CIT(X, "fisherz")
    C = np.corrcoef(X.T)
    rng = np.random.default_rng(0)
    for d in range(4):
        idx = np.array([rng.choice(X.shape[1], size=d + 2, replace=False) for _ in range(40)])
        got = fisherz_logp(C, len(X), idx)
        want = [ref(int(r[0]), int(r[1]), [int(s) for s in r[2:]]) for r in idx]
        # causal-learn's p = 2(1 - Φ(|z|)) loses the far tail (0 below ~1e-16); the statistics agree to ~1e-9
        assert np.exp(got) == pytest.approx(want, rel=1e-6, abs=1e-12)


@pytest.mark.parametrize(("seed", "max_cond"), [(2, 1), (2, 3), (3, None), (4, 2)])
def test_skeleton_equals_causal_learns_fas(seed, max_cond):
    X = _data(seed)
    k = X.shape[1]
    nodes = [GraphNode(f"X{i}") for i in range(k)]
    G, want_sep, results = fas(X, nodes, CIT(X, "fisherz"), alpha=0.05, depth=-1 if max_cond is None else max_cond,
                               stable=True, show_progress=False)
    A, sep, maxlogp = stable_skeleton(np.corrcoef(X.T), len(X), 0.05, max_cond)
    assert np.array_equal(A, G.graph != 0)
    # pairs removed at depth 0 are not stored (their set is empty)
    full = {(x, y): set() for x in range(k) for y in range(k) if x != y and not A[x, y]} | sep
    assert full == want_sep
    assert any(s for s in sep.values()), "no separating set found at depth >= 1: the comparison is too easy"
    best: dict[tuple[int, int], float] = {}
    for (x, y, _), p in results.items():
        key = (min(x, y), max(x, y))
        best[key] = max(best.get(key, 0.0), p)
    for (x, y), p in best.items():
        assert math.exp(maxlogp[x, y]) == pytest.approx(p, rel=1e-6, abs=1e-12)
        assert maxlogp[x, y] == maxlogp[y, x]


@pytest.mark.parametrize("seed", [3, 5])
def test_fci_equals_causal_learns_fci_without_a_depth_bound(seed):
    from causallearn.search.ConstraintBased.FCI import fci

    c = planted_case(n_services=6, seed=seed, edge_prob=0.4)
    X = c.observation.metrics[c.observation.metric_columns].to_numpy()[60:180]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        want = fci(X, "fisherz", 0.05, depth=-1, show_progress=False)[0].graph
        got = cg._fci(X, c.observation.metric_columns, cg.BudgetedCIT(X), 0.05, None, -1)
    assert np.array_equal(got, want)
    assert (want == 2).any() and (want == 1).any()  # circles and arrowheads: the rules did something


def test_fci_orientation_rules_stop_at_the_deadline():
    from causallearn.graph.Endpoint import Endpoint
    from causallearn.search.ConstraintBased import FCI as F

    from llmrca.methods.causal_graphs import BudgetExceeded
    from llmrca.methods.pc_orient import budgeted_from_marks

    A = np.triu(np.random.default_rng(0).random((30, 30)) < 0.2, 1)
    cgraph = budgeted_from_marks([f"X{i}" for i in range(30)], np.where(A | A.T, -1, 0), time.monotonic() - 1.0)
    with pytest.raises(BudgetExceeded):
        F.reorientAllWith(cgraph.G, Endpoint.CIRCLE)
    cgraph.G.deadline = None
    F.reorientAllWith(cgraph.G, Endpoint.CIRCLE)
    cgraph.G.deadline = time.monotonic() - 1.0
    with pytest.raises(BudgetExceeded):
        F.rule0(cgraph.G, cgraph.G.nodes, {}, None, False)


@pytest.mark.parametrize("builder", [cg.fci_graph, cg.granger_graph])
def test_fci_and_granger_keep_their_time_budget(builder):
    X = np.random.default_rng(0).normal(size=(120, 30))
    with pytest.raises(MethodError, match="time budget"):
        builder(X, [f"s{i}_m" for i in range(30)], timeout_s=0.0)


def test_pc_graph_on_the_batched_skeleton_equals_fas_based_pc():
    """pc_graph (batched skeleton) and the same PC with causal-learn's fas (the path of the discrete tests) give
    the same CPDAG on a case with separating sets of size >= 1."""
    from llmrca.methods.pc_orient import budgeted_graph, orient

    X = _data(6, services=10, edge_prob=0.25)
    names = [f"v{i}" for i in range(X.shape[1])]
    got = cg._pc_stable(X, names, cg.BudgetedCIT(X), 0.05, 3)
    nodes = [GraphNode(n) for n in names]
    G, sep, _ = fas(X, nodes, CIT(X, "fisherz"), alpha=0.05, depth=3, stable=True, show_progress=False)
    ref = budgeted_graph(names, G, None)
    for (x, y), S in sep.items():
        ref.sepset[x, y] = [tuple(sorted(S))]
    assert np.array_equal(got, orient(ref, 2).G.graph)


def test_possible_dsep_equals_causal_learns():
    """Possible-D-SEP on the marks matrix (fci_pdsep) against causal-learn's getPossibleDsep, every ordered
    adjacent pair of random PAG-like graphs (tails, arrows and circles; colliders and semi-directed paths)."""
    from causallearn.search.ConstraintBased.FCI import getPossibleDsep

    from llmrca.methods.fci_pdsep import PossibleDsep
    from llmrca.methods.pc_orient import budgeted_from_marks

    beyond = 0
    for seed in range(6):
        rng = np.random.default_rng(seed)
        n = int(rng.integers(8, 18))
        A = np.triu(rng.random((n, n)) < rng.uniform(0.2, 0.45), 1)
        A = A | A.T
        marks = np.where(A, rng.choice([-1, 1, 2, 2], size=(n, n)), 0)
        g = budgeted_from_marks([f"X{i}" for i in range(n)], marks, None).G
        pd = PossibleDsep(g)
        for x, y in np.argwhere(A).tolist():
            want = getPossibleDsep(g.nodes[x], g.nodes[y], g, -1)
            assert pd(x, y, library_order=True) == want, (seed, x, y)
            assert set(pd(x, y)) <= set(g.nodes) - {g.nodes[x], g.nodes[y]}
            beyond += any(not A[x, g.node_map[v]] for v in want)
    assert beyond > 0  # some sets reach past x's neighbours
