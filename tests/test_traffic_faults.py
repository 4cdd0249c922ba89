"""prompt-surge, proxy-overload and routing-skew in the simulator: root causes above the replicas (the workload's
client, the Serve proxy), and what each does, through the router and the engines, to every replica."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from llmrca import faults
from llmrca.errors import UnknownNameError
from llmrca.faults import FaultParamError, Injection
from llmrca.io import load_case, save_case
from llmrca.sim.config import SimConfig
from llmrca.sim.deployment import deployment
from llmrca.sim.metrics import catalogue_columns
from llmrca.sim.run import NGINX_READ_TIMEOUT_S, run, simulate

CFG = {"duration": 240.0, "inject_at": 100.0, "fault_duration": 60.0}
HEAD, HOT = "ray-head", "ray-replicas-0"
PRE, DURING = (40.0, 95.0), (110.0, 160.0)  # run-clock windows before and inside the fault


def _mean(sim, column: str, window: tuple[float, float]) -> float:
    m = sim.metrics
    t = m["time"] - sim.record.start
    return float(m[column][(t > window[0]) & (t < window[1])].mean())


def _sent(sim) -> pd.Series:
    req = sim.record.requests
    return req["t_gateway_start"] - sim.record.start


def _in(x: pd.Series, window: tuple[float, float]) -> pd.Series:
    return (x > window[0]) & (x < window[1])


# -- the workload node -------------------------------------------------------------------------------------------

def test_without_a_workload_node_the_deployment_is_the_papers_and_prompt_surge_is_refused():
    cfg = SimConfig()
    assert "workload_node" not in cfg.to_dict()  # a recorded config keeps its bytes
    topo = deployment(cfg).topology()
    assert "loadgen" not in topo.services and topo.entry == "nginx-proxy"
    assert not any(c.startswith("loadgen_") for c in catalogue_columns(deployment(cfg)))
    spec = faults.get("prompt-surge")
    assert spec.target_services(topo) == []
    with pytest.raises(UnknownNameError, match="no workload node .*workload.workload_node = true"):
        run(SimConfig(**CFG), Injection("prompt-surge", "loadgen"), 1)
    with pytest.raises(UnknownNameError, match="cannot target 'ray-head'"):
        run(SimConfig(workload_node=True, **CFG), Injection("prompt-surge", HEAD), 1)
    with pytest.raises(Exception, match="workload_node must be true or false"):
        SimConfig(workload_node=1)


def test_the_workload_node_is_a_caller_of_the_gateway_with_its_own_series_and_changes_nothing_else():
    cfg = {"duration": 120.0, "inject_at": 60.0, "fault_duration": 30.0}
    plain = run(SimConfig(**cfg), None, 4)
    withc = run(SimConfig(workload_node=True, **cfg), None, 4)
    topo = withc.deployment.topology()
    assert topo.entry == "nginx-proxy" and ("loadgen", "nginx-proxy") in topo.edges
    assert faults.get("prompt-surge").target_services(topo) == ["loadgen"]
    assert withc.deployment.topology().services[: len(plain.deployment.topology().services)] \
        == plain.deployment.topology().services
    assert SimConfig(workload_node=True).to_dict()["workload_node"] is True
    own = [c for c in withc.metrics.columns if c.startswith("loadgen_")]
    assert set(own) == {c for c in catalogue_columns(withc.deployment) if c.startswith("loadgen_")}
    # every other column, and every request, is the run without it: the node only adds what it observes
    pd.testing.assert_frame_equal(withc.metrics.drop(columns=own), plain.metrics)
    pd.testing.assert_frame_equal(withc.record.requests, plain.record.requests)
    # its series are what it sent and saw: the offered rate, 512-token prompts, a few seconds per answer
    assert abs(_mean(withc, "loadgen_requests_sent", (20, 110)) - 5.0) < 0.5
    assert 450 < _mean(withc, "loadgen_prompt_length_p50", (20, 110)) < 650
    assert 2.0 < _mean(withc, "loadgen_response_time_seconds_p50", (20, 110)) < 6.0
    assert _mean(withc, "loadgen_request_failures", (20, 110)) == 0.0


def test_prompt_surge_lengthens_the_prompts_and_every_replica_queues_on_prefill():
    sim = run(SimConfig(workload_node=True, **CFG), Injection("prompt-surge", "loadgen", {"factor": 8.0}), 3)
    (a, b, factor, share), = sim.env.surges
    assert (factor, share) == (8.0, 1.0) and sim.truth.service == "loadgen"
    assert sim.truth.indicator == "loadgen_prompt_tokens_sent"
    req = sim.record.requests
    sent = _sent(sim)
    inside = _in(sent, (a + 0.01, b - 0.01))
    base = req["prompt_tokens"][_in(sent, PRE)].median()
    assert 7.0 < req["prompt_tokens"][inside].median() / base < 9.0
    assert (req["prompt_tokens"][~_in(sent, (a - 0.01, b + 0.01))] < 4 * 512).all()
    # the client sends as often as before, but 8x the prompt tokens
    assert abs(_mean(sim, "loadgen_requests_sent", DURING) / _mean(sim, "loadgen_requests_sent", PRE) - 1) < 0.15
    assert _mean(sim, "loadgen_prompt_tokens_sent", DURING) > 5 * _mean(sim, "loadgen_prompt_tokens_sent", PRE)
    ttft = req["t_first_token"] - req["t_engine_arrival"]
    for r in sim.deployment.replicas:  # on every replica at once, not on one
        mine = req["replica"] == r
        assert ttft[mine & _in(sent, DURING)].median() > 4 * ttft[mine & _in(sent, PRE)].median(), r
        assert _mean(sim, f"{r}_prompt_tokens", DURING) > 4 * _mean(sim, f"{r}_prompt_tokens", PRE), r
    assert _mean(sim, "nginx-proxy_latency", DURING) > 1.5 * _mean(sim, "nginx-proxy_latency", PRE)
    assert _mean(sim, "loadgen_response_time_seconds_p50", DURING) \
        > 1.3 * _mean(sim, "loadgen_response_time_seconds_p50", PRE)


def test_a_partial_surge_hits_its_share_and_strength_scales_the_factor():
    sim = run(SimConfig(workload_node=True, **CFG), Injection("prompt-surge", "loadgen", {"share": 0.25}), 2)
    (a, b, _, _), = sim.env.surges
    req = sim.record.requests
    inside = _in(_sent(sim), (a, b))
    long = req["prompt_tokens"][inside] > 2000
    assert 0.12 < long.mean() < 0.38
    spec = faults.get("prompt-surge")
    assert spec.scaled(1.0)["factor"] == 8.0 and spec.scaled(0.5)["factor"] == 4.5
    assert spec.scaled(100.0)["factor"] == 64.0
    with pytest.raises(FaultParamError, match="'share': must be at most 1"):
        spec.resolve({"share": 1.5})


# -- proxy-overload ------------------------------------------------------------------------------------------------

def test_proxy_overload_queues_in_the_proxy_and_every_replica_sees_less_load():
    sim = run(SimConfig(**CFG), Injection("proxy-overload", HEAD), 3)
    (a, b, dispatch_s), = sim.env.proxy_caps
    assert np.isclose(dispatch_s, 1 / 3.0) and sim.truth.params == {"dispatch_s": dispatch_s}
    req = sim.record.requests
    sent = _sent(sim)
    wait = req["t_send"] - req["t_proxy_start"]
    assert wait[_in(sent, PRE)].max() < 0.05 and wait[_in(sent, (a + 30, b))].median() > 5.0
    # dispatched at the cap: 3 req/s while the queue lasts
    t_send = req["t_send"] - sim.record.start
    assert abs(_in(t_send, (a + 5, b - 5)).sum() / (b - a - 10) - 3.0) < 0.3
    for r in sim.deployment.replicas:  # all replicas, the head's own included, get less work
        assert _mean(sim, f"{r}_generation_tokens", DURING) < 0.8 * _mean(sim, f"{r}_generation_tokens", PRE), r
        assert _mean(sim, f"{r}_num_requests_running", DURING) < _mean(sim, f"{r}_num_requests_running", PRE), r
        ttft = f"{r}_time_to_first_token_seconds_p50"
        assert _mean(sim, ttft, DURING) < 1.3 * _mean(sim, ttft, PRE), r  # the engines are not the problem
    # the mesh towards the head holds the queue; the mesh towards a replica does not
    assert _mean(sim, "ray-head_latency", DURING) > 3 * _mean(sim, "ray-head_latency", PRE)
    assert _mean(sim, f"{HOT}_latency", DURING) < 1.3 * _mean(sim, f"{HOT}_latency", PRE)
    # the backlog drains once the cap lifts
    assert wait[_in(sent, (b + 20, b + 60))].max() < 0.05


def test_a_long_overload_times_requests_out_in_the_proxys_queue_before_any_replica_sees_them():
    cfg = SimConfig(duration=300.0, inject_at=60.0, fault_duration=150.0)
    case = simulate(cfg, Injection("proxy-overload", HEAD, {"max_rps": 2.0}), 3)
    sim = run(cfg, Injection("proxy-overload", HEAD, {"max_rps": 2.0}), 3)
    req = sim.record.requests
    gone = req[req["replica"] == ""]
    assert len(gone) > 50 and (gone["http_status"] == 504).all() and gone["t_send"].isna().all()
    assert ((gone["t_gateway_end"] - gone["t_gateway_start"]) >= NGINX_READ_TIMEOUT_S - 1e-6).all()
    assert gone["t_engine_arrival"].isna().all()
    spans = case.observation.traces
    logs = case.observation.logs
    assert (spans[(spans["service"] == "nginx-proxy")]["http_status"] == 504).sum() == len(gone)
    assert (spans[spans["operation"] == "proxy_http_request"]["http_status"] == 499).sum() == len(gone)
    assert set(spans["service"]) <= set(sim.deployment.topology().services)
    gw = logs[logs["service"] == "nginx-proxy"]["message"]
    assert gw.str.contains("while reading response header from upstream").sum() == len(gone)
    m = case.observation.metrics
    assert m["nginx-proxy_requests_5xx"].max() > 0
    assert all(m[f"{r}_requests_5xx"].max() == 0 for r in sim.deployment.replicas if r != HEAD)


# -- routing-skew -------------------------------------------------------------------------------------------------

def test_routing_skew_piles_the_load_on_the_hot_replica_and_idles_the_others():
    sim = run(SimConfig(**CFG), Injection("routing-skew", HEAD), 3)
    (a, b, hot, share), = sim.env.skews
    assert (hot, share) == (1, 0.8) and sim.truth.service == HEAD
    req = sim.record.requests
    t_send = req["t_send"] - sim.record.start
    inside = _in(t_send, (a, b))
    assert 0.72 < (req["replica"][inside] == HOT).mean() < 0.88  # the pinned share (the rest avoid it)
    assert (req["replica"][_in(t_send, PRE)] == HOT).mean() < 0.4
    running = {r: (_mean(sim, f"{r}_num_requests_running", PRE), _mean(sim, f"{r}_num_requests_running", DURING))
               for r in sim.deployment.replicas}
    assert running[HOT][1] > 2.5 * running[HOT][0]
    for r, (pre, during) in running.items():
        if r != HOT:
            assert during < 0.5 * pre, r
            assert _mean(sim, f"{r}_gpu_util", DURING) < _mean(sim, f"{r}_gpu_util", PRE) - 5, r
    assert _mean(sim, f"{HOT}_generation_tokens", DURING) > 2.5 * _mean(sim, f"{HOT}_generation_tokens", PRE)
    itl = f"{HOT}_inter_token_latency_seconds_p50"
    assert _mean(sim, itl, DURING) > _mean(sim, itl, PRE)  # a bigger batch per step
    # after it, the router balances again
    assert (req["replica"][_in(t_send, (b + 5, 235))] == HOT).mean() < 0.4


def test_routing_skew_to_the_heads_own_replica_and_a_bad_index():
    sim = run(SimConfig(**CFG), Injection("routing-skew", HEAD, {"hot_replica": 0, "share": 1.0}), 1)
    (a, b, _, _), = sim.env.skews
    req = sim.record.requests
    t_send = req["t_send"] - sim.record.start
    assert (req["replica"][_in(t_send, (a, b))] == HEAD).all()
    with pytest.raises(FaultParamError, match="'hot_replica': 4 is not a replica index .*0..3"):
        run(SimConfig(**CFG), Injection("routing-skew", HEAD, {"hot_replica": 4}), 1)
    with pytest.raises(UnknownNameError, match="its targets \\(proxy\\) are: ray-head"):
        run(SimConfig(**CFG), Injection("routing-skew", HOT), 1)
    spec = faults.get("routing-skew")
    assert spec.scaled(1.0)["share"] == 0.8 and spec.scaled(0.5)["share"] == 0.4
    assert np.isclose(spec.scaled(2.0)["share"], 0.9)
    assert faults.get("proxy-overload").scaled(2.0)["max_rps"] == 1.5


# -- all three ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fault,target", [("prompt-surge", "loadgen"), ("proxy-overload", HEAD),
                                          ("routing-skew", HEAD)])
def test_each_is_deterministic_per_seed_and_its_case_is_valid(fault, target, tmp_path):
    cfg = SimConfig(workload_node=True, duration=150.0, inject_at=60.0, fault_duration=40.0)
    one, two = run(cfg, Injection(fault, target), 5), run(cfg, Injection(fault, target), 5)
    pd.testing.assert_frame_equal(one.record.requests, two.record.requests)
    pd.testing.assert_frame_equal(one.metrics, two.metrics)
    case = simulate(cfg, Injection(fault, target), 5)
    back = load_case(save_case(case, tmp_path / "c"))  # validated on load
    assert back.truth.service == target and back.truth.fault_type == fault
    assert set(back.observation.traces["service"]) <= set(back.observation.topology.services)
    spec = faults.get(fault)
    assert spec.kubernetes and spec.live and spec.description and all(p.unit or p.kind is int or p.name == "share"
                                                                      for p in spec.params)


def test_a_suite_plans_the_traffic_faults_on_their_own_targets():
    from llmrca.scenarios import load
    from llmrca.sim.suites import plan_of

    base = load("demo", ["faults.types=[\"proxy-overload\", \"routing-skew\"]", "reps=1", "normal=0"])
    assert [c.injection.target for c in plan_of(base)] == [HEAD, HEAD]
    with pytest.raises(UnknownNameError, match="no workload node"):
        plan_of(load("demo", ["faults.types=[\"prompt-surge\"]", "reps=1"]))
    surge = plan_of(load("demo", ["faults.types=[\"prompt-surge\"]", "reps=1", "normal=0",
                                  "workload.workload_node=true"]))
    assert [c.case_id for c in surge] == ["prompt-surge/loadgen/rep-00"]
