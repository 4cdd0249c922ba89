"""llmrca.methods.lingam_fast against the packages it re-derives: lingam's DirectLiNGAM (causal order and
adjacency) and scikit-learn's LARS lasso path."""

import time

import numpy as np
import pytest

from llmrca.errors import MethodError
from llmrca.methods import causal_graphs as cg
from llmrca.methods import lingam_fast as lf


def lingam_data(n: int, k: int, seed: int) -> np.ndarray:
    """A random linear non-Gaussian acyclic model (sparse lower-triangular B, cubed-uniform noise), columns
    shuffled so the causal order is not the column order."""
    r = np.random.default_rng(seed)
    B = np.tril(r.uniform(0.5, 1.5, (k, k)) * r.choice([-1, 1], (k, k)) * (r.random((k, k)) < 0.5), -1)
    E = r.uniform(-1, 1, (n, k)) ** 3
    X = np.linalg.solve(np.eye(k) - B, E.T).T
    return X[:, r.permutation(k)]


@pytest.mark.parametrize(("n", "k", "seed"), [(150, 4, 0), (200, 6, 1), (120, 7, 2)])
def test_order_and_adjacency_equal_the_lingam_package(n, k, seed):
    import lingam

    X = lingam_data(n, k, seed)
    ref = lingam.DirectLiNGAM().fit(X)
    order, B = lf.direct_lingam(X)
    assert order == [int(i) for i in ref.causal_order_]
    assert np.array_equal(B != 0, ref.adjacency_matrix_ != 0)
    assert np.allclose(B, ref.adjacency_matrix_, rtol=1e-7, atol=1e-9)


def test_lasso_paths_equal_scikit_learns_lars_path_for_problems_of_several_sizes():
    from sklearn.linear_model import lars_path

    r = np.random.default_rng(3)
    n, k = 80, 6
    G = np.zeros((4, k, k))
    xy = np.zeros((4, k))
    problems = []
    for t, p in enumerate((1, 3, 5, 6)):
        X = r.standard_normal((n, p)) @ r.uniform(-1, 1, (p, p))  # correlated predictors: the path drops some
        y = X @ (r.standard_normal(p) * (r.random(p) < 0.6)) + r.standard_normal(n)
        X, y = X - X.mean(axis=0), y - y.mean()
        G[t, :p, :p], xy[t, :p] = X.T @ X, X.T @ y
        problems.append((X, y, p))
    points, marks = lf.lasso_paths(G, xy, n)
    for t, (X, y, p) in enumerate(problems):
        _, _, ref = lars_path(X, y, Gram=X.T @ X, method="lasso", alpha_min=0.0)
        ours = points[marks[:, t], t, :p]
        assert ours.shape == ref.T.shape
        assert np.allclose(ours, ref.T, rtol=1e-8, atol=1e-10)
        assert not points[:, t, p:].any()  # features a problem does not have never join


def test_entropy_stays_finite_where_cosh_overflows():
    u = np.array([[0.0, 800.0, -900.0, 1.0]])
    h = lf.entropy(u)
    a = np.abs(u)
    logcosh = np.mean(a + np.log1p(np.exp(-2 * a)) - np.log(2))
    g = np.mean(u * np.exp(-u**2 / 2))
    expected = (1 + np.log(2 * np.pi)) / 2 - 79.047 * (logcosh - 0.37457) ** 2 - 7.4129 * g**2
    assert np.isfinite(h).all() and h[0] == pytest.approx(expected, rel=1e-12)


def test_entropy_is_the_log_cosh_measure():
    """|u| + log(1 + e^(-2|u|)) - log 2 is log cosh u: the measure from ``np.log(np.cosh(u))`` to rounding."""
    u = np.random.default_rng(3).standard_normal((7, 500)) * np.array([0.3, 1, 2, 5, 20, 60, 120])[:, None]
    logcosh = np.mean(np.log(np.cosh(u)), axis=1)
    g = np.mean(u * np.exp(-u**2 / 2), axis=1)
    expected = (1 + np.log(2 * np.pi)) / 2 - 79.047 * (logcosh - 0.37457) ** 2 - 7.4129 * g**2
    assert np.allclose(lf.entropy(u), expected, rtol=1e-13, atol=0)


def test_sequential_ols_past_a_collinear_column_is_the_rows_minimum_norm_solution():
    r = np.random.default_rng(5)
    Z = r.standard_normal((300, 6))
    Z[:, 2] = Z[:, 0] - 0.5 * Z[:, 1]  # column 2 is a linear function of those before it: targets 3.. fall back
    Z -= Z.mean(axis=0)
    coef, rss = lf._sequential_ols(Z)
    for t in range(3, 6):
        b = np.linalg.lstsq(Z[:, :t], Z[:, t], rcond=None)[0]
        assert np.allclose(coef[:t, t], b, rtol=1e-9, atol=1e-11)
        assert rss[t] == pytest.approx(np.sum((Z[:, t] - Z[:, :t] @ b) ** 2), rel=1e-9)


def test_deadline_and_the_graph_builder():
    X = lingam_data(100, 4, 4)
    with pytest.raises(cg.BudgetExceeded):
        lf.direct_lingam(X, deadline=time.monotonic() - 1.0)
    names = ["a_m", "b_m", "c_m", "d_m"]
    G = cg.lingam_graph(X, names)
    _, B = lf.direct_lingam(X)
    assert {(names[j], names[i]) for i, j in zip(*np.nonzero(np.abs(B) > 0.01), strict=True)} == set(G.edges)
    with pytest.raises(MethodError, match="LiNGAM on 4 columns needs at least 6 rows"):
        cg.lingam_graph(X[:5], names)


def test_a_duplicated_column_is_placed_as_spent_and_the_result_is_deterministic():
    X = lingam_data(120, 4, 5)
    X = np.column_stack([X, X[:, 1]])
    order, B = lf.direct_lingam(X)
    # which twin is ordered first is a tie the BLAS's rounding breaks (machines differ); the other is spent at
    # once: its residual on the first is exactly zero
    assert sorted(order) == list(range(5)) and abs(order.index(4) - order.index(1)) == 1
    order2, B2 = lf.direct_lingam(X)
    assert order2 == order and np.array_equal(B, B2, equal_nan=True)


def full_measure(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The first step's inputs and M_i with every pair evaluated (NaN as inf), written out plainly."""
    n = X.shape[0]
    D = X - X.mean(axis=0)
    Zt = (D / np.sqrt((D * D).mean(axis=0))).T.copy()
    C = (Zt @ Zt.T) / n
    H = lf.entropy(Zt)
    inv_sd = 1.0 / np.sqrt(np.maximum(1.0 - C * C, 1e-300))
    np.fill_diagonal(inv_sd, 0.0)
    R = (Zt[:, None, :] - C[:, :, None] * Zt[None, :, :]) * inv_sd[:, :, None]
    HR = lf.entropy(R)
    with np.errstate(over="ignore", invalid="ignore"):
        diff = (H[None, :] + HR) - (H[:, None] + HR.T)
        np.fill_diagonal(diff, 0.0)
        M = np.sum(np.minimum(0.0, diff) ** 2, axis=1)
    return Zt, C, H, inv_sd, np.where(np.isnan(M), np.inf, M)


@pytest.mark.parametrize("seed", [6, 7, 8])
def test_the_blocked_measure_is_that_of_every_pair_written_out_bitwise(seed, monkeypatch):
    X = lingam_data(90, 12, seed)
    X[:, 3] = X[:, 7] * (1 + 1e-15)  # a near-duplicate pair: its measure is rounding noise, NaN or inf
    Zt, C, _h, inv_sd, M = full_measure(X)  # M from H = entropy(Zt): the pass takes H from its diagonal
    for block in (lf._BLOCK_ELEMS, 90 * 12 * 5, 1):  # blocks of several candidates, and one candidate at a time
        buf, tmp = np.empty((2, max(block, 12 * 90)))
        monkeypatch.setattr(lf, "_BLOCK_ELEMS", block)
        pos, got = lf._most_exogenous(Zt, C.copy(), inv_sd.copy(), buf, tmp)
        assert pos == int(np.argmin(M))
        assert np.array_equal(got, M)  # the same operations on the same values


def test_the_pagerank_head_equals_pagerank_on_the_reversed_copy_bitwise():
    # the lingam-* (and pc/fci/granger) PageRank head runs on the dense matrix of the reversed graph; edges
    # inserted in a shuffled order, so a node's predecessors are not in node order (more graphs:
    # tests/test_graph_heads_pagerank.py)
    import networkx as nx

    from llmrca.methods.graph_heads import pagerank_head

    r = np.random.default_rng(9)
    edges = [(f"n{i}", f"n{j}") for i in range(30) for j in range(30) if i != j and r.random() < 0.15]
    G = nx.DiGraph()
    G.add_nodes_from(f"n{i}" for i in range(31))  # n30 isolated: the teleport share only
    G.add_edges_from(edges[i] for i in r.permutation(len(edges)))
    ref = nx.pagerank(G.reverse(copy=True), alpha=0.85, weight=None, max_iter=1000, tol=1e-10)
    got = pagerank_head(G)
    assert list(got) == list(ref) and all(got[k] == ref[k] for k in ref)
