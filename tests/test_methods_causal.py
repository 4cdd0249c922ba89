"""Causal-graph builders, graph heads and the 11 graph-based metric methods (PC/FCI/Granger/LiNGAM × PageRank /
random walk, causalai, microcause, rcd): known small SEMs, equivalence with the reference libraries, determinism,
full rankings, degenerate inputs and accuracy on planted cases."""

from __future__ import annotations

from dataclasses import replace

import networkx as nx
import numpy as np
import pandas as pd
import pytest
from _chance import random_avg_at_k_floor, random_ranks

from llmrca.case import Observation, Topology
from llmrca.errors import MethodError, NoAnswer
from llmrca.evaluate.scores import avg_at_k, chance_avg_at_k
from llmrca.methods import causal_graphs as cg
from llmrca.methods import entry, get_method, method_class
from llmrca.methods.graph_heads import pagerank_head, random_walk_head
from llmrca.methods.lingam_fast import causal_order
from llmrca.synthetic import planted_case

GRAPH_HEAD = [f"{g}-{h}" for g in ("pc", "fci", "granger", "lingam") for h in ("pagerank", "randomwalk")]
METHODS = [*GRAPH_HEAD, "causalai", "microcause", "rcd"]
WALKS = [m for m in METHODS if m.endswith("randomwalk")] + ["microcause"]


def with_entry(case):
    """A planted case whose entry service (the SLI's owner) is reached by the fault.

    planted_case's edges a→b mean "a's values drive b's", so the fault spreads along them; a real entry service
    sits where faults arrive. We declare as entry the first sink (by name) downstream of the root — the role the
    frontend plays in a real deployment.
    """
    topo = case.observation.topology
    G = nx.DiGraph(list(topo.edges))
    G.add_nodes_from(topo.services)
    reached = nx.descendants(G, case.truth.service) | {case.truth.service}
    sink = min(s for s in reached if G.out_degree(s) == 0)
    obs = replace(case.observation, topology=replace(topo, entry=sink))
    return replace(case, observation=obs)


def small_case(seed: int, **kw):
    return with_entry(planted_case(seed=seed, n_services=5, n_rows=160, inject_row=80, **kw))


def obs_from(columns: dict[str, np.ndarray], inject_row: int, entry: str = "a") -> Observation:
    n = len(next(iter(columns.values())))
    t = 1_700_000_000.0 + 5.0 * np.arange(n)
    services = sorted({c.split("_", 1)[0] for c in columns})
    return Observation(metrics=pd.DataFrame({"time": t, **columns}), inject_time=float(t[inject_row]),
                       topology=Topology(services=tuple(services), entry=entry))


@pytest.fixture(scope="module")
def cases():
    return [small_case(s) for s in range(4)]


# --- builders on tiny known systems ------------------------------------------------------------------------


def chain(n: int = 400, seed: int = 0, lagged: bool = False, uniform: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    e = rng.uniform(-1.7, 1.7, size=(n, 3)) if uniform else rng.normal(size=(n, 3))
    x = e.copy()
    for t in range(n):
        src = t - 1 if lagged else t
        if src >= 0:
            x[t, 1] += 0.9 * x[src, 0]
            x[t, 2] += 0.9 * x[src, 1]
    return x


NAMES = ["x_m", "y_m", "z_m"]


def skeleton(G: nx.DiGraph) -> set[frozenset[str]]:
    return {frozenset(e) for e in G.edges}


@pytest.mark.parametrize("builder", [cg.pc_graph, cg.fci_graph])
def test_constraint_builders_find_the_chain_skeleton(builder):
    G = builder(chain(), NAMES)
    assert skeleton(G) == {frozenset({"x_m", "y_m"}), frozenset({"y_m", "z_m"})}
    assert G.graph["dropped"] == {}


def test_pc_orients_a_collider_and_reports_pvalues():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(2, 500))
    z = x + y + 0.5 * rng.normal(size=500)
    G = cg.pc_graph(np.column_stack([x, y, z]), NAMES)
    assert set(G.edges) == {("x_m", "z_m"), ("y_m", "z_m")}
    assert all(0 <= d["pvalue"] <= 0.05 and d["log10_pvalue"] <= np.log10(0.05) for *_, d in G.edges(data=True))


@pytest.mark.parametrize("max_cond", [1, 3])
def test_pc_builder_equals_causal_learn_pc(max_cond):
    from causallearn.search.ConstraintBased.PC import pc

    c = planted_case(n_services=8, seed=2, edge_prob=0.3)
    X = c.observation.metrics[c.observation.metric_columns].to_numpy()[60:180]
    names = c.observation.metric_columns
    ref = pc(X, 0.05, "fisherz", show_progress=False, max_k=max_cond).G.graph
    assert (cg._pc_stable(X, names, cg.BudgetedCIT(X), 0.05, max_cond) == ref).all()
    G = cg.pc_graph(X, names, max_cond=max_cond)
    assert set(G.edges) == set(cg._marks_to_digraph(ref, names))


def test_budgeted_fisherz_equals_causal_learn():
    from causallearn.utils.cit import CIT

    X = chain(200, seed=3)
    X = np.column_stack([X, X[:, 0] - X[:, 2] + np.random.default_rng(0).normal(size=200)])
    ours, theirs = cg.BudgetedCIT(X), CIT(X, "fisherz")
    for x, y, S in [(0, 1, ()), (0, 2, (1,)), (1, 2, (0,)), (0, 2, ()), (0, 2, (1, 3)), (1, 3, (0, 2))]:
        assert ours(x, y, S) == pytest.approx(theirs(x, y, S), rel=1e-9, abs=1e-12)


def test_granger_finds_the_lagged_direction_and_equals_statsmodels():
    from statsmodels.tsa.stattools import grangercausalitytests

    X = chain(300, seed=2, lagged=True)
    G = cg.granger_graph(X, NAMES, max_lag=2)
    assert G.has_edge("x_m", "y_m") and G.has_edge("y_m", "z_m")
    assert not G.has_edge("y_m", "x_m") and not G.has_edge("z_m", "y_m")
    F, P = cg.granger_pvalues(X[:120], 2)
    ref = grangercausalitytests(X[:120, [1, 0]], maxlag=[2])[2][0]["ssr_ftest"]  # does x cause y?
    assert F[0, 1] == pytest.approx(ref[0], rel=1e-9) and P[0, 1] == pytest.approx(ref[1], rel=1e-9, abs=1e-15)


def test_lingam_order_equals_the_lingam_package_and_finds_the_chain():
    import lingam

    X = chain(500, seed=4, uniform=True)[:, [2, 0, 1]]  # columns shuffled: z, x, y
    assert causal_order(X) == list(lingam.DirectLiNGAM().fit(X).causal_order_) == [1, 2, 0]
    G = cg.lingam_graph(chain(500, seed=4, uniform=True), NAMES)
    assert set(G.edges) == {("x_m", "y_m"), ("y_m", "z_m")}
    assert all(d["weight"] > 0.5 for *_, d in G.edges(data=True))


def test_pcmci_finds_lagged_links():
    G = cg.pcmci_graph(chain(300, seed=5, lagged=True), NAMES, tau_max=1)
    assert G.has_edge("x_m", "y_m") and G.has_edge("y_m", "z_m") and not G.has_edge("y_m", "x_m")
    assert G.edges["x_m", "y_m"]["lag"] == 1


def test_pcmci_matches_tigramites_own_parcorr():
    """The correlation-matrix shortcut answers every test as tigramite's ParCorr does: same links, same values."""
    import warnings

    from tigramite.data_processing import DataFrame
    from tigramite.independence_tests.parcorr import ParCorr
    from tigramite.pcmci import PCMCI

    rng = np.random.default_rng(11)
    n, k = 150, 8
    X = rng.normal(size=(n, k))
    for t in range(2, n):  # lagged chains, a common driver and a collinear pair
        X[t, 1] += 0.7 * X[t - 1, 0]
        X[t, 2] += 0.6 * X[t - 2, 1] + 0.4 * X[t - 1, 3]
        X[t, 4] += 0.5 * X[t - 1, 3]
    X[:, 5] = 2.0 * X[:, 4] + 1.0  # exactly collinear: conditioning on both needs the least-squares path
    names = [f"s{i}_m" for i in range(k)]
    G = cg.pcmci_graph(X, names, tau_max=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = PCMCI(dataframe=DataFrame(X, var_names=names), cond_ind_test=ParCorr(significance="analytic"),
                    verbosity=0).run_pcmci(tau_min=1, tau_max=2, pc_alpha=0.05, alpha_level=0.05, max_conds_dim=3)
    want = {(names[i], names[j]) for i in range(k) for j in range(k)
            if i != j and any(ref["graph"][i, j, t] != "" for t in (1, 2))}
    assert set(G.edges) == want and len(want) >= 3
    for a, b, d in G.edges(data=True):
        i, j = names.index(a), names.index(b)
        assert d["weight"] == pytest.approx(np.abs(ref["val_matrix"][i, j, d["lag"]]), rel=1e-6)


@pytest.mark.parametrize("builder", [cg.pc_graph, cg.fci_graph, cg.granger_graph, cg.lingam_graph, cg.pcmci_graph])
def test_builders_leave_out_constant_and_nan_columns(builder):
    X = np.column_stack([chain(200, seed=6, uniform=True), np.full(200, 3.0), np.full(200, np.nan)])
    G = builder(X, [*NAMES, "c_m", "n_m"])
    assert set(G.nodes) == set(NAMES)
    assert G.graph["dropped"] == {"c_m": "constant", "n_m": "non-finite values"}


def test_builder_time_budget_raises_method_error():
    X = np.random.default_rng(0).normal(size=(120, 30))
    names = [f"s{i}_m" for i in range(30)]
    with pytest.raises(MethodError, match="time budget"):
        cg.pc_graph(X, names, timeout_s=0.0)
    with pytest.raises(MethodError, match="time budget"):
        cg.pcmci_graph(X, names, timeout_s=0.0)


def test_builders_need_enough_rows():
    six = np.random.default_rng(0).normal(size=(6, 6))
    with pytest.raises(MethodError, match="rows"):
        cg.pc_graph(six, [f"s{i}_m" for i in range(6)], max_cond=3)
    with pytest.raises(MethodError, match="rows"):
        cg.granger_graph(chain(7), NAMES, max_lag=2)


def test_pag_marks_become_directed_edges():
    n = ["a", "b", "c", "d", "e"]
    g = np.zeros((5, 5), dtype=int)
    g[0, 1], g[1, 0] = -1, 1  # a --> b
    g[1, 2], g[2, 1] = 2, 1  # b o-> c
    g[2, 3], g[3, 2] = 1, 1  # c <-> d
    g[3, 4], g[4, 3] = 2, 2  # d o-o e
    g[0, 4], g[4, 0] = -1, 2  # a --o e: a is an ancestor of e
    out = set(cg._marks_to_digraph(g, n))
    assert out == {("a", "b"), ("b", "c"), ("c", "d"), ("d", "c"), ("d", "e"), ("e", "d"), ("a", "e")}


# --- heads --------------------------------------------------------------------------------------------------


def test_pagerank_head_favours_the_root_of_a_chain():
    G = nx.DiGraph([("x_m", "y_m"), ("y_m", "z_m")])
    s = pagerank_head(G)
    assert s["x_m"] > s["y_m"] > s["z_m"]


def test_random_walk_head_walks_to_the_cause_and_is_seeded():
    X = chain(300, seed=7)
    G = nx.DiGraph([("x_m", "y_m"), ("y_m", "z_m")])
    a = random_walk_head(G, X, NAMES, "z_m", steps=2000, seed=1)
    assert a == random_walk_head(G, X, NAMES, "z_m", steps=2000, seed=1)
    assert a != random_walk_head(G, X, NAMES, "z_m", steps=2000, seed=2)
    assert sum(a.values()) == pytest.approx(1.0) and a["x_m"] > 0
    with pytest.raises(MethodError, match="SLI"):
        random_walk_head(G, X, NAMES, "w_m")


# --- the methods ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", METHODS)
def test_registered_as_metric_methods(name):
    cls, e = method_class(name), entry(name)
    assert cls.name == name and e.family == cls.family == "metric" and e.needs == frozenset({"metrics"})
    assert set(get_method(name).params) == set(cls.default_params())


@pytest.mark.parametrize("name", METHODS)
def test_full_ranking_and_determinism(name, cases):
    obs = cases[0].observation
    r1 = get_method(name).rank(obs, seed=3)
    assert sorted(r1.candidates) == sorted(obs.metric_columns)
    assert all(np.isfinite(r1.scores))
    assert list(r1.scores) == sorted(r1.scores, reverse=True)
    assert r1 == get_method(name).rank(obs, seed=3)


@pytest.mark.parametrize("name", METHODS)
def test_constant_column_ranks_last_with_score_zero(name, cases):
    obs = cases[1].observation
    m = obs.metrics.copy()
    m["zz-const_cpu"] = 1.0
    r = get_method(name).rank(replace(obs, metrics=m), seed=0)
    assert sorted(r.candidates) == sorted([*obs.metric_columns, "zz-const_cpu"])
    assert r.candidates[-1] == "zz-const_cpu" and r.scores[-1] == 0.0


@pytest.mark.parametrize("name", METHODS)
def test_nan_gaps_are_filled_and_an_all_nan_column_ranks_last(name, cases):
    obs = cases[2].observation
    m = obs.metrics.copy()
    m.iloc[30:35, 1] = np.nan
    m["zz-gone_mem"] = np.nan
    r = get_method(name).rank(replace(obs, metrics=m), seed=0)
    assert len(r) == len(obs.metric_columns) + 1 and r.candidates[-1] == "zz-gone_mem"


@pytest.mark.parametrize("name", METHODS)
def test_two_columns(name):
    rng = np.random.default_rng(0)
    b = rng.normal(size=160)
    b[80:] += 5.0
    a = 0.8 * b + rng.normal(size=160)
    r = get_method(name).rank(obs_from({"a_latency": a, "b_cpu": b}, 80), seed=0)
    assert sorted(r.candidates) == ["a_latency", "b_cpu"]


# Very short windows: the tests' sample-size needs are checked up front (pinned per method).
SHORT_WINDOW_ERRORS = {m: "rows" for m in [*GRAPH_HEAD, "causalai", "microcause"]}


@pytest.mark.parametrize("name", METHODS)
def test_very_short_window(name, cases):
    m = get_method(name, window=3)
    obs = cases[3].observation
    if name in SHORT_WINDOW_ERRORS:
        with pytest.raises(MethodError, match=SHORT_WINDOW_ERRORS[name]):
            m.rank(obs, seed=0)
    else:  # rcd's chi-square tests run on any sample size; the ranking stays full
        assert sorted(m.rank(obs, seed=0).candidates) == sorted(obs.metric_columns)


@pytest.mark.parametrize("name", WALKS)
def test_walks_need_a_varying_sli(name, cases):
    obs = cases[0].observation
    m = obs.metrics.copy()
    sli = f"{obs.topology.entry}_latency"
    m[sli] = 2.0  # a symptom that does not move: nothing to explain, an abstention
    with pytest.raises(NoAnswer, match="SLI"):
        get_method(name).rank(replace(obs, metrics=m), seed=0)


@pytest.mark.parametrize("name", [m for m in METHODS if m not in WALKS])
def test_methods_without_a_walk_need_no_entry_service(name):
    obs = planted_case(seed=3, n_services=5, n_rows=160, inject_row=80).observation
    obs = replace(obs, topology=Topology(services=obs.topology.services))  # no edges, no entry: no SLI
    assert len(get_method(name).rank(obs, seed=0)) == len(obs.metric_columns)


def test_causalai_and_rcd_find_the_regime_changed_root():
    rng = np.random.default_rng(0)
    n = 160
    r = rng.normal(size=n)
    r[80:] += 4.0
    d = 0.9 * r + rng.normal(size=n)  # descendant of the root
    e = 0.9 * d + rng.normal(size=n)
    u = rng.normal(size=n)  # unrelated
    obs = obs_from({"a_latency": e, "b_cpu": d, "c_cpu": r, "d_cpu": u}, 80)
    for name in ("causalai", "rcd"):
        ranking = get_method(name).rank(obs, seed=0)
        assert ranking.candidates[0] == "c_cpu", name
        assert ranking.candidates[-1] == "d_cpu", name


def test_rcd_chunks_are_a_seeded_partition():
    from llmrca.methods.rcd import chunks

    items = list(range(23))
    parts = chunks(items, 5, np.random.default_rng([7, 0]))
    assert [len(p) for p in parts] == [5, 5, 5, 5, 3] and sorted(x for p in parts for x in p) == items
    assert parts == chunks(items, 5, np.random.default_rng([7, 0]))
    assert parts != chunks(items, 5, np.random.default_rng([8, 0]))


def test_bad_parameters_raise_method_error(cases):
    obs = cases[0].observation
    with pytest.raises(MethodError):
        get_method("rcd", gamma=1).rank(obs)
    with pytest.raises(MethodError):
        get_method("pc-pagerank", alpha=1.5).rank(obs)
    with pytest.raises(MethodError):
        get_method("microcause", lam=2.0).rank(obs)


# --- accuracy on planted cases ------------------------------------------------------------------------------

ACC_SEEDS = range(20)
# 5 services: a random ranking's Avg@5 is 0.6 on average, and over 6 cases it exceeds 0.6 in about 4 draws of 10.
# The floor is what a random ranking reaches over these 20 cases with probability 1e-3 (0.80; tests/_chance.py).
ACC_FLOOR = random_avg_at_k_floor(5, len(ACC_SEEDS))
# PageRank on a PC/FCI graph scores a node's place in the learned graph, not how much it moved at the fault: on
# planted cases with a random root it is no better than chance (Avg@5 over these 20 cases: pc 0.60, fci 0.61).
# Strict: the day one of them clears the floor, this list must shrink. (granger-pagerank was here at 0.73 with every
# test at alpha; with each target's tests Bonferroni-corrected, its default since issue 17, it reaches 0.99.)
AT_CHANCE = {"pc-pagerank", "fci-pagerank"}
# The methods whose model matches the data (intervention node, linear non-Gaussian order) must be nearly perfect;
# granger-pagerank too: its corrected graph keeps only the edges into what the injection's level shift reaches.
NEAR_PERFECT = {"causalai", "rcd", "lingam-randomwalk", "granger-pagerank"}


@pytest.fixture(scope="module")
def planted_set():
    return [small_case(100 + s) for s in ACC_SEEDS]


def _accuracy_params():
    for name in METHODS:
        marks = [pytest.mark.xfail(strict=True, reason=f"{name} is at chance on planted cases")] \
            if name in AT_CHANCE else []
        yield pytest.param(name, marks=marks)


@pytest.mark.parametrize("name", list(_accuracy_params()))
def test_accuracy_on_planted_cases(name, planted_set):
    ranks = [get_method(name).rank(c.observation, seed=0).rank_of(c.truth.service) for c in planted_set]
    a1, a5 = avg_at_k(ranks, 1), avg_at_k(ranks, 5)
    print(f"\n{name}: service ranks {ranks}  AC@1={a1:.2f}  Avg@5={a5:.2f} (floor {ACC_FLOOR:.2f})")
    assert a5 >= ACC_FLOOR, (name, ranks)
    if name in NEAR_PERFECT:
        assert a5 >= 0.95, (name, ranks)


def test_the_accuracy_floor_fails_a_random_ranker():
    """A uniformly random ranking over the same 20 cases fails the floor for each of 20 seeds (the old `> 0.6`
    let 11 of 20 through)."""
    chance = chance_avg_at_k([5] * len(ACC_SEEDS), 5)
    assert chance == pytest.approx(0.6) and ACC_FLOOR >= chance + 0.15
    passed = [s for s in range(20) if avg_at_k(random_ranks(5, len(ACC_SEEDS), s), 5) >= ACC_FLOOR]
    assert passed == []


def test_rcd_reaches_the_issue_target_on_the_planted_benchmark():
    cases = [with_entry(planted_case(seed=s)) for s in range(12)]  # 8 services x 3 metrics, linear
    ranks = [get_method("rcd").rank(c.observation, seed=0).rank_of(c.truth.service) for c in cases]
    print(f"\nrcd on planted_case defaults: ranks {ranks}  Avg@5={avg_at_k(ranks, 5):.2f}")
    assert avg_at_k(ranks, 5) >= 0.8
