"""Accuracy at scale of the <graph>-<head> methods: Granger's per-target test family, the random walk's order of
unvisited columns, LiNGAM's refusal with the size it can handle (issue 17)."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest

from llmrca.errors import MethodError
from llmrca.methods import causal_graphs as cg
from llmrca.methods import get_method
from llmrca.methods.graph_heads import abs_correlation_with, random_walk_head
from llmrca.methods.graph_rank import unvisited_by_similarity
from llmrca.synthetic import planted_case


def _noise(n: int = 120, k: int = 40, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, k)), [f"s{i}_m" for i in range(k)]


def test_granger_target_family_is_bonferroni_over_each_targets_tests():
    X, names = _noise()
    k, lag = len(names), 2
    best = np.fmin(cg.granger_pvalues(X, 1)[1], cg.granger_pvalues(X, 2)[1])
    for family, level in (("pair", 0.05), ("target", 0.05 / ((k - 1) * lag))):
        G = cg.granger_graph(X, names, max_lag=lag, alpha=0.05, family=family)
        want = {(names[i], names[j]) for i, j in zip(*np.nonzero(best < level), strict=True) if i != j}
        assert set(G.edges) == want, family
    # On independent noise "pair" keeps about alpha of the k(k-1) pairs, "target" about alpha edges in all.
    assert cg.granger_graph(X, names, family="pair").number_of_edges() > 20
    assert cg.granger_graph(X, names, family="target").number_of_edges() <= 3
    with pytest.raises(MethodError, match="family must be 'pair' or 'target'"):
        cg.granger_graph(X, names, family="all")


def test_granger_pagerank_defaults_to_the_target_family_and_finds_a_planted_root():
    assert get_method("granger-pagerank").params["family"] == "target"
    assert get_method("granger-randomwalk").params["family"] == "pair"
    # A planted case of 200 columns (the scale benchmark's shape): the corrected graph puts the root first.
    for seed in (0, 2):
        case = planted_case(n_services=19, metrics=tuple("abcdefghij"), edge_prob=2.4 / 19, frontend=True,
                            seed=seed)
        assert get_method("granger-pagerank").rank(case.observation).services()[0] == case.truth.roots[0]


def test_unvisited_columns_follow_their_similarity_to_the_sli_below_every_visited_one():
    rng = np.random.default_rng(1)
    base = rng.standard_normal(200)
    cols = ["sli", "a", "b", "c", "d"]
    X = np.column_stack([base, base + 0.1 * rng.standard_normal(200), base + 3.0 * rng.standard_normal(200),
                         base + 1.0 * rng.standard_normal(200), rng.standard_normal(200)])
    G = nx.DiGraph([("a", "sli")])
    G.add_nodes_from(cols)
    steps = 500
    walk = random_walk_head(G, X, cols, "sli", steps=steps, seed=0)
    assert walk["b"] == walk["c"] == walk["d"] == 0.0
    sim = abs_correlation_with(X, cols, "sli")
    scores = unvisited_by_similarity(walk, sim, cols, steps)
    assert scores["c"] > scores["b"] > scores["d"] >= 0.0  # |corr| order, not the name order
    assert max(scores[c] for c in "bcd") < 1.0 / steps <= min(scores[c] for c in ("sli", "a") if walk[c] > 0)
    assert scores["c"] == pytest.approx(0.5 / steps * sim["c"])
    assert {c: scores[c] for c in cols if walk[c] > 0} == {c: v for c, v in walk.items() if v > 0}
    with pytest.raises(MethodError, match="unvisited must be 'name' or 'similarity'"):
        get_method("pc-randomwalk", unvisited="score").rank(
            planted_case(n_services=3, metrics=("latency", "cpu"), frontend=True, seed=0).observation)


def test_lingam_refuses_before_starting_and_names_the_size_it_can_handle():
    X, names = _noise(n=30, k=40)
    with pytest.raises(MethodError, match="LiNGAM on 40 columns needs at least 42 rows in the window, got 30: "
                                          "with 30 rows it handles at most 28 columns"):
        cg.lingam_graph(X, names, timeout_s=1e-9)  # the refusal comes before the budget is looked at
