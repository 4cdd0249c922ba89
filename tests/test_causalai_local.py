"""causalai's search local to the regime node (``causalai.local_neighbours``) against causal-learn: the Fisher-z
tests it batches give causal-learn's p-values, and its ranking is the one the full PC-stable search gave."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llmrca.methods import get_method
from llmrca.methods.base import Ranking
from llmrca.methods.causal_graphs import pc_graph, usable_columns
from llmrca.methods.causalai import (
    REGIME,
    _partial_corr_batch,
    fisherz_log10p,
    local_neighbours,
    tiered_score,
)
from llmrca.methods.window import metric_window
from llmrca.synthetic import planted_case


def test_batched_partial_correlations_give_causal_learns_fisherz_pvalues():
    from causallearn.utils.cit import CIT

    rng = np.random.default_rng(0)
    data = rng.normal(size=(120, 7))
    data[:, 1] += 0.7 * data[:, 0]
    data[:, 2] += 0.5 * data[:, 1] - 0.4 * data[:, 3]
    cit = CIT(data, "fisherz")
    C = np.corrcoef(data.T)
    for depth in (1, 2, 3):
        sets = np.array([rng.choice([j for j in range(7) if j not in (0, 2)], depth, replace=False)
                         for _ in range(6)])
        got = fisherz_log10p(_partial_corr_batch(C, 0, 2, sets), len(data), depth)
        want = [math.log10(cit(0, 2, list(s))) for s in sets]
        np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-9)


def _full_pc_ranking(obs) -> Ranking:
    """causalai as it was: the whole PC-stable skeleton (causal-learn), F's neighbours read off it."""
    w = metric_window(obs, window=60)
    regime = (np.arange(len(w.times)) >= w.split).astype(float)
    u = usable_columns(w.values, w.columns)
    data = np.column_stack([u.data, regime])
    G = pc_graph(data, [*u.names, REGIME], alpha=0.05, max_cond=3)
    children = set(G.predecessors(REGIME)) | set(G.successors(REGIME))
    marginal = fisherz_log10p(np.corrcoef(data.T)[-1, :-1], len(regime))
    scores = {}
    for j, c in enumerate(u.names):
        if c in children:
            e = G.edges[REGIME, c] if G.has_edge(REGIME, c) else G.edges[c, REGIME]
            scores[c] = tiered_score(2, e["log10_pvalue"])
        else:
            scores[c] = tiered_score(1, marginal[j])
    return Ranking.from_scores(w.columns, [scores.get(c, 0.0) for c in w.columns])


@pytest.mark.parametrize("seed", range(3))
def test_local_search_ranks_the_truth_where_the_full_pc_did(seed):
    case = planted_case(n_services=4, nonlinear=seed % 2 == 1, frontend=True, seed=seed)
    local = get_method("causalai").rank(case.observation, seed=0)
    full = _full_pc_ranking(case.observation)
    assert local.rank_of(case.truth.service) == full.rank_of(case.truth.service) == 1
    assert local.candidates[0] == full.candidates[0]


def test_local_search_separates_descendants_and_keeps_the_root():
    rng = np.random.default_rng(1)
    n = 200
    f = (np.arange(n) >= n // 2).astype(float)
    root = rng.normal(size=n) + 3.0 * f
    child = 0.9 * root + rng.normal(size=n)
    grandchild = 0.8 * child + rng.normal(size=n)
    other = rng.normal(size=n)
    C = np.corrcoef(np.column_stack([root, child, grandchild, other, f]).T)
    kept = local_neighbours(C, n, 4, alpha=0.05, max_cond=3)
    assert set(kept) == {0}
    assert kept[0] < math.log10(0.05)


def test_near_copies_of_the_root_keep_one_representative():
    """Two near-copies of the root's signal (a latency's p90 and p99) separate each other from F at depth 1; the
    original PC removes the first at once and tests the second without it, so one stays F's neighbour (PC-stable
    removed both, and at 16 replicas other services' slow series were then ranked first; issue 17)."""
    rng = np.random.default_rng(2)
    n = 200
    f = (np.arange(n) >= n // 2).astype(float)
    root = rng.normal(size=n) + 3.0 * f
    copy = root + 0.01 * rng.normal(size=n)
    other = rng.normal(size=(n, 2))
    C = np.corrcoef(np.column_stack([root, copy, other, f]).T)
    kept = local_neighbours(C, n, 4, alpha=0.05, max_cond=3)
    assert set(kept) == {1}  # 0 visited first, separated by its copy; 1 then has no set left that separates it
