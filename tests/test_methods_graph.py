"""circa, causalrca, microrca, microscope, monitorrank and their shared pieces (call graph, structural graph,
regression scoring)."""

from __future__ import annotations

import importlib

import networkx as nx
import numpy as np
import pandas as pd
import pytest
from _chance import random_avg_at_k_floor

from llmrca.case import Case, Observation, Topology
from llmrca.errors import MethodError, NoAnswer
from llmrca.methods import get_method, names
from llmrca.methods.by_service import abs_corr, service_first_ranking
from llmrca.methods.call_graph import attributed_graph, call_graph, trace_edges, walk_graph
from llmrca.methods.circa import descendant_adjustment, metric_kind, structural_graph
from llmrca.methods.regression import residual_test
from llmrca.methods.sli import latency_column
from llmrca.synthetic import planted_case

MINE = ["circa", "causalrca", "microrca", "microscope", "monitorrank"]
# CausalRCA trimmed for speed where only behaviour (not accuracy) is tested.
FAST = {"causalrca": {"rounds": 2, "epochs": 25}}

try:
    import torch  # noqa: F401

    HAVE_TORCH = True
except ImportError:
    HAVE_TORCH = False


def method(name: str, **kw: object):
    if name == "causalrca" and not HAVE_TORCH:
        pytest.skip("torch extra not installed")
    return get_method(name, **{**FAST.get(name, {}), **kw})


def as_call_graph(case: Case) -> Case:
    """The planted DAG (cause → effect) as a call graph (caller → callee, where a callee's fault shows up in its
    callers): edges reversed, entry = a sink of the DAG downstream of the root (the symptom users would see)."""
    t = case.observation.topology
    g = nx.DiGraph(t.edges)
    g.add_nodes_from(t.services)
    root = case.truth.service
    sinks = [n for n in g if g.out_degree(n) == 0 and (n == root or root in nx.ancestors(g, n))]
    entry = max(sinks, key=lambda s: (len(nx.ancestors(g, s)), s))
    topo = Topology(services=t.services, edges=tuple((b, a) for a, b in t.edges), entry=entry)
    return case.with_observation(topology=topo)


def truth_ranks(m, cases: list[Case]) -> list[int | None]:
    """The truth's service rank per case; None (a miss) where the method finds nothing to rank."""
    ranks: list[int | None] = []
    for c in cases:
        try:
            ranks.append(m.rank(c.observation, seed=0).rank_of(c.truth.service))
        except MethodError:
            ranks.append(None)
    return ranks


def avg5_of(ranks: list[int | None]) -> float:
    return float(np.mean([np.mean([r is not None and r <= k for r in ranks]) for k in range(1, 6)]))


def avg5(m, cases: list[Case]) -> float:
    return avg5_of(truth_ranks(m, cases))


def small_case(**kw) -> Case:
    return as_call_graph(planted_case(n_services=5, n_rows=80, inject_row=40, seed=3, **kw))


# --- shared pieces ---------------------------------------------------------------------------------------------


def test_call_graph_from_topology_with_hosts():
    obs = Observation(
        metrics=pd.DataFrame({"time": [0.0, 1.0], "a_cpu": [1.0, 2.0], "node-1_cpu": [1.0, 3.0]}),
        topology=Topology(services=("a", "b"), edges=(("a", "b"),), hosts={"a": "node-1", "b": "node-1"}),
    )
    g = call_graph(obs)
    assert g.graph["source"] == "topology" and list(g.edges) == [("a", "b")]
    ag = attributed_graph(obs)
    assert ag.nodes["node-1"]["kind"] == "host" and ag.edges["a", "node-1"]["kind"] == "runs-on"
    assert ag.edges["a", "b"]["kind"] == "calls"


def test_call_graph_falls_back_to_traces_and_raises_without_either():
    traces = pd.DataFrame({
        "trace_id": ["t1", "t1", "t1", "t2", "t2"],
        "span_id": ["1", "2", "3", "1", "2"],
        "parent_span_id": [None, "1", "2", None, "1"],
        "service": ["gw", "api", "db", "gw", "gw"],
    })
    assert trace_edges(traces) == {("api", "db"): 1, ("gw", "api"): 1}
    metrics = pd.DataFrame({"time": [0.0, 1.0], "gw_latency": [1.0, 2.0]})
    g = call_graph(Observation(metrics=metrics, traces=traces))
    assert g.graph["source"] == "traces" and set(g.edges) == {("gw", "api"), ("api", "db")}
    with pytest.raises(MethodError, match="no service call graph"):
        call_graph(Observation(metrics=metrics))


def test_abs_corr_treats_constant_columns_as_uncorrelated():
    y = np.arange(10.0)
    x = np.column_stack([2 * y, np.ones(10), -y])
    assert abs_corr(x, y).tolist() == pytest.approx([1.0, 0.0, 1.0])
    assert abs_corr(x, np.ones(10)).tolist() == [0.0, 0.0, 0.0]


def test_service_first_ranking_keeps_services_together_and_unscored_last_by_name():
    cols = ["b_x", "a_x", "c_y", "c_x", "d_x", "b_y"]
    r = service_first_ranking(cols, {"c": 2.0, "b": 1.0}, {"c_x": 0.9, "c_y": 0.1})
    assert list(r.candidates) == ["c_x", "c_y", "b_x", "b_y", "a_x", "d_x"]
    assert r.services() == ["c", "b", "a", "d"] and r.scores[-1] == 0.0


def test_latency_column_prefers_the_sli_names():
    assert latency_column("a", ["a_cpu", "a_latency-90", "a_latency"]) == "a_latency"
    assert latency_column("a", ["a_cpu", "a_p99_latency_ms"]) == "a_p99_latency_ms"
    assert latency_column("a", ["a_cpu", "a_duration_p50", "a_duration_p90"]) == "a_duration_p90"
    assert latency_column("a", ["a_cpu"]) is None
    # full view: the mesh's p90 of requests to the service, before the engine's own latency histograms
    full = ["a_e2e_request_latency_seconds_p90", "a_request_duration_milliseconds_p50",
            "a_request_duration_milliseconds_p90", "a_inter_token_latency_seconds_p90"]
    assert latency_column("a", full) == "a_request_duration_milliseconds_p90"


@pytest.mark.parametrize(("metric", "kind"), [
    ("ctn_cpu", "saturation"), ("ctn_memory", "saturation"), ("ctn_network", "traffic"), ("latency", "latency"),
    ("latency-90", "latency"), ("time_to_first_token_seconds_p95", "latency"), ("xid_errors", "errors"),
    ("num_requests_waiting", "saturation"), ("prompt_tokens_total", "traffic"), ("requests_5xx", "errors"),
    ("kv_cache_usage_perc", "saturation"), ("gpu_util", "saturation"),
])
def test_metric_kind(metric, kind):
    assert metric_kind(metric) == kind


def test_structural_graph_follows_calls_and_contracts_services_without_series():
    calls = nx.DiGraph([("a", "x"), ("x", "b")])  # x has no series: a's latency still depends on b's
    cols = ["a_requests", "a_cpu", "a_latency", "b_requests", "b_cpu", "b_latency", "node_cpu"]
    g = structural_graph(cols, calls, [("b", "node")])
    assert g.has_edge("b_latency", "a_latency") and not g.has_edge("a_latency", "b_latency")
    assert g.has_edge("a_requests", "b_requests")
    assert g.has_edge("a_cpu", "a_latency") and g.has_edge("a_requests", "a_cpu")
    assert g.has_edge("b_cpu", "node_cpu") and g.has_edge("node_cpu", "b_latency")
    assert nx.is_directed_acyclic_graph(g)


def test_descendant_adjustment_only_lifts_anomalous_nodes():
    g = nx.DiGraph([("r", "e"), ("q", "e")])
    out = descendant_adjustment(g, {"r": 5.0, "e": 4.0, "q": 1.0}, 3.0)
    assert out == {"r": 9.0, "e": 4.0, "q": 1.0}


def test_residual_scores_separate_cause_from_effect_and_handle_flat_columns():
    rng = np.random.default_rng(0)
    n, split = 120, 60
    cause = rng.normal(size=n)
    cause[split:] += 6.0
    effect = 2.0 * cause + 0.3 * rng.normal(size=n)
    flat = np.ones(n)
    step = np.r_[np.zeros(split), np.ones(n - split)]  # flat before, moved after
    x = np.column_stack([cause, effect, flat, step])
    s = residual_test(x, split, [[], [0], [], []]).scores()
    # the flat-then-stepped column moved one step of its resolution: it scores 1 (llmrca.methods.scoring)
    assert s[0] > 4 and s[1] < 4 and s[2] == 0.0 and s[3] == pytest.approx(1.0)
    with pytest.raises(MethodError, match="regressors"):
        residual_test(x[:8], 4, [[], [0, 2, 3], [], []])


# --- every method ----------------------------------------------------------------------------------------------


def test_registered():
    for n in MINE:
        assert n in names()


@pytest.mark.parametrize("name", MINE)
def test_deterministic_full_ranking(name):
    obs = small_case().observation
    m = method(name)
    a, b = m.rank(obs, seed=7), m.rank(obs, seed=7)
    assert a == b
    assert sorted(a.candidates) == sorted(obs.metric_columns)
    assert list(a.scores) == sorted(a.scores, reverse=True)


@pytest.mark.parametrize("name", MINE)
def test_constant_columns(name):
    case = small_case()
    m = case.observation.metrics.copy()
    m["svc-1_flat"] = 3.0
    m["zz-idle_cpu"] = 0.0  # a service whose only series never moves
    obs = case.with_observation(metrics=m).observation
    r = method(name).rank(obs, seed=0)
    assert sorted(r.candidates) == sorted(obs.metric_columns)
    assert r.services()[-1] == "zz-idle"
    if name in ("circa", "causalrca"):  # column-level rankings: a constant column scores 0, last
        assert set(r.candidates[-2:]) == {"svc-1_flat", "zz-idle_cpu"}


@pytest.mark.parametrize("name", MINE)
def test_two_columns(name):
    """The smallest system: b's latency steps up at the fault and a's follows it. Every method ranks both columns;
    all but CausalRCA put b first (CausalRCA's PageRank over a learned two-node graph gives both the same score, so
    it can only be held to a full ranking)."""
    rng = np.random.default_rng(1)
    lat_b = rng.normal(size=80)
    lat_b[40:] += 5
    lat_a = lat_b + rng.normal(size=80) * 0.3
    obs = Observation(
        metrics=pd.DataFrame({"time": np.arange(80.0), "a_latency": lat_a, "b_latency": lat_b}),
        inject_time=40.0, topology=Topology(services=("a", "b"), edges=(("a", "b"),), entry="a"),
    )
    r = method(name).rank(obs, seed=0)
    assert sorted(r.candidates) == ["a_latency", "b_latency"] and all(np.isfinite(r.scores))
    if name != "causalrca":
        assert r.candidates[0] == "b_latency" and r.scores[0] > r.scores[1], (r.candidates, r.scores)


@pytest.mark.parametrize("name", MINE)
def test_nans_and_an_all_nan_column(name):
    case = small_case()
    m = case.observation.metrics.copy()
    cols = case.observation.metric_columns
    m.loc[[3, 17, 50], cols[0]] = np.nan
    m.loc[10:14, cols[4]] = np.nan
    m["svc-2_broken"] = np.nan
    obs = case.with_observation(metrics=m).observation
    r = method(name).rank(obs, seed=0)
    assert sorted(r.candidates) == sorted(obs.metric_columns)
    assert all(np.isfinite(r.scores))


@pytest.mark.parametrize("name", MINE)
def test_very_short_window_raises_method_error(name):
    """Two samples before the fault and one at it: too few to model the normal state, for every method here. The
    answer is a MethodError naming the shortfall, never a ranking made of nothing."""
    obs = small_case().observation
    t = obs.metrics["time"].to_numpy()
    short = obs.metrics[(t >= obs.inject_time - 2 * obs.interval) & (t <= obs.inject_time)].reset_index(drop=True)
    assert len(short) == 3
    with pytest.raises(MethodError, match=r"only \d sample\(s\) (before|from) inject_time"):
        method(name).rank(Observation(metrics=short, inject_time=obs.inject_time, topology=obs.topology))


@pytest.mark.parametrize("name", ["microrca", "microscope", "monitorrank"])
def test_call_graph_methods_without_a_call_graph(name):
    """No edge and no trace: the star from the entry (walk_graph); no entry either: the error says so."""
    obs = small_case().observation
    bare = Observation(metrics=obs.metrics, inject_time=obs.inject_time,
                       topology=Topology(services=obs.topology.services, entry=obs.topology.entry))
    assert walk_graph(bare).graph["source"] == "assumed-star"
    assert set(walk_graph(bare).edges) == {(obs.topology.entry, s) for s in bare.services if s != obs.topology.entry}
    try:
        ranking = method(name).rank(bare)
    except NoAnswer:
        pass
    else:
        assert set(ranking.services()) <= set(bare.services) and len(ranking)
    nothing = Observation(metrics=obs.metrics[["time"] + [c for c in obs.metric_columns if "latency" not in c]],
                          inject_time=obs.inject_time)
    with pytest.raises(MethodError, match="no service call graph"):
        method(name).rank(nothing)


def test_no_inject_time_is_a_method_error():
    obs = small_case().observation
    for n in MINE:
        with pytest.raises(MethodError, match="inject_time"):
            method(n).rank(Observation(metrics=obs.metrics, topology=obs.topology))


def test_bad_parameter_is_a_method_error():
    with pytest.raises(MethodError, match="restart"):
        method("monitorrank", restart=1.5).rank(small_case().observation)
    with pytest.raises(MethodError, match="graph"):
        method("circa", graph="learned").rank(small_case().observation)


# --- accuracy on planted roots -----------------------------------------------------------------------------------


def test_circa_planted_accuracy():
    """The issue's target: Avg@5 ≥ 0.8 at service level, linear and non-linear, with the planted DAG as the
    topology; and with the DAG read as a call graph; and PC in place of the structural graph. Chance is 0.375 for
    8 services; over 12 cases a random ranking reaches 0.73 with probability 1e-3."""
    assert random_avg_at_k_floor(8, 12) < 0.8
    circa = get_method("circa")
    for nonlinear in (False, True):
        cases = [planted_case(seed=s, nonlinear=nonlinear) for s in range(12)]
        as_is, calls = avg5(circa, cases), avg5(circa, [as_call_graph(c) for c in cases])
        pc = avg5(get_method("circa", graph="pc"), cases)
        print(f"circa planted nonlinear={nonlinear}: Avg@5 {as_is:.2f} (topology), {calls:.2f} (as call graph), "
              f"{pc:.2f} (PC)")
        assert as_is >= 0.8 and calls >= 0.8 and pc >= 0.8


def _gateway_over_a_slow_backend(seed: int) -> Observation:
    """gw calls db and cache; db's latency steps up at the fault and gw's grows faster than linearly with it (a
    queue in front of a slower backend): linear enough in the normal range that the regression fitted there
    predicts little of gw's rise after the fault, so gw's residual dwarfs db's own."""
    rng = np.random.default_rng(seed)
    n, k = 160, 80
    db = 10 + rng.normal(size=n)
    db[k:] += 4.0
    cache = 5 + rng.normal(size=n)
    gw = 20 + np.exp(db - 10) + cache + 0.3 * rng.normal(size=n)
    t = 1_700_000_000.0 + 5.0 * np.arange(n)
    return Observation(metrics=pd.DataFrame({"time": t, "gw_latency": gw, "db_latency": db, "cache_latency": cache}),
                       inject_time=float(t[k]), topology=Topology(services=("gw", "db", "cache"),
                                                                  edges=(("gw", "db"), ("gw", "cache")), entry="gw"))


def test_circa_descendant_adjustment_lifts_the_root_over_its_louder_effect():
    """Where the effect's residual is larger than the root's, only the descendant adjustment (an anomalous node
    gets its largest child's score added) puts the root first: with it db ranks first in every case, without it
    gw does."""
    cases = [_gateway_over_a_slow_backend(s) for s in range(8)]
    on, off = get_method("circa"), get_method("circa", da_threshold=1e300)  # a threshold nothing reaches: off
    ranks_on = [on.rank(obs, seed=0).rank_of("db") for obs in cases]
    tops_off = [off.rank(obs, seed=0).services()[0] for obs in cases]
    assert ranks_on == [1] * len(cases), ranks_on
    assert tops_off == ["gw"] * len(cases), tops_off


@pytest.mark.parametrize("name", ["microrca", "microscope", "monitorrank"])
def test_call_graph_methods_planted_accuracy(name):
    """On the planted DAG read as a call graph. Chance Avg@5 for 8 services is 0.375; each set of 12 cases must
    clear what a random ranking reaches with probability 1e-2 (0.65), both sets together its 1e-3 tail (0.62)."""
    m = get_method(name)
    ranks: dict[bool, list[int | None]] = {}
    for nonlinear in (False, True):
        ranks[nonlinear] = truth_ranks(m, [as_call_graph(planted_case(seed=s, nonlinear=nonlinear))
                                           for s in range(12)])
    scores = {k: avg5_of(r) for k, r in ranks.items()}
    pooled = avg5_of(ranks[False] + ranks[True])
    print(f"{name} planted Avg@5: linear {scores[False]:.2f}, non-linear {scores[True]:.2f}, both {pooled:.2f}")
    assert min(scores.values()) >= random_avg_at_k_floor(8, 12, alpha=1e-2), scores
    assert pooled >= random_avg_at_k_floor(8, 24), pooled


@pytest.mark.skipif(not HAVE_TORCH, reason="torch extra not installed")
def test_causalrca_planted_accuracy():
    """CausalRCA (full training) on 20 planted cases of 8 services, half non-linear: chance Avg@5 is 0.375 and a
    random ranking reaches 0.64 with probability 1e-3; CausalRCA scores 0.74 here."""
    cases = [planted_case(seed=s, nonlinear=bool(s % 2)) for s in range(20)]
    floor = random_avg_at_k_floor(8, len(cases))
    score = avg5(get_method("causalrca"), cases)
    print(f"causalrca planted Avg@5 ({len(cases)} cases; chance 0.375, floor {floor:.2f}): {score:.2f}")
    assert score >= floor


# --- causalrca and its optional torch ------------------------------------------------------------------------


def test_causalrca_without_torch_says_how_to_install(monkeypatch):
    real = importlib.import_module

    def no_torch(name, *a, **kw):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch'")
        return real(name, *a, **kw)

    monkeypatch.setattr(importlib, "import_module", no_torch)
    assert "causalrca" in names()
    with pytest.raises(MethodError) as e:
        get_method("causalrca").rank(small_case().observation)
    assert str(e.value) == "causalrca needs the torch extra: pip install 'llmrca[torch]'"


@pytest.mark.skipif(not HAVE_TORCH, reason="torch extra not installed")
def test_causalrca_with_torch_restores_torch_state_and_depends_on_seed():
    import torch

    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    obs = small_case().observation
    m = method("causalrca")
    a, b = m.rank(obs, seed=1), m.rank(obs, seed=2)
    assert torch.get_num_threads() == threads and torch.are_deterministic_algorithms_enabled() == det
    assert a.scores != b.scores  # the seed drives the initial weights and the latent noise
