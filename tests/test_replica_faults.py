"""replica-crash-loop, straggler and network-loss in the simulator: what each does to the target and, through the
router, to its peers (the same registry entries drive the live testbed); and the TCP loss-recovery model they share
with the live mesh."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from llmrca import faults
from llmrca.faults import FaultParamError, Injection
from llmrca.faults.replica_faults import crash_loop_backoffs
from llmrca.sim import tcploss
from llmrca.sim.config import SimConfig
from llmrca.sim.run import NGINX_READ_TIMEOUT_S, SERVE_DEATH_NOTICE_S, run, simulate

CFG = {"duration": 300.0, "inject_at": 60.0, "fault_duration": 180.0}
T = "ray-replicas-1"


def _sent(sim) -> pd.Series:
    req = sim.record.requests
    return req["t_send"] - sim.record.start


def _window(req: pd.DataFrame, sent: pd.Series, a: float, b: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    w = req[(sent > a) & (sent < b)]
    return w[w["replica"] == T], w[w["replica"] != T]


def itl(r: pd.DataFrame) -> float:
    return (r["decode_s"] / (r["output_tokens"] - 1).clip(lower=1)).median()


def ttft(r: pd.DataFrame) -> float:
    return (r["t_first_token"] - r["t_engine_arrival"]).median()


def wire(r: pd.DataFrame) -> pd.Series:
    return r["t_engine_arrival"] - r["t_send"]


def e2e(r: pd.DataFrame) -> pd.Series:
    return r["t_gateway_end"] - r["t_gateway_start"]


@pytest.fixture(scope="module")
def baseline():
    return run(SimConfig(**CFG), None, 3)


# -- the registry ------------------------------------------------------------------------------------------------

def test_the_three_faults_are_registered_with_checked_parameters():
    ids = faults.ids()
    assert {"replica-crash-loop", "straggler", "network-loss"} <= set(ids)
    assert faults.get("replica-crash-loop").causes == ("process_kill",)
    assert faults.get("straggler").causes == ("device_slowdown",)
    assert faults.get("network-loss").causes == ("ingress_loss",)
    with pytest.raises(FaultParamError, match="'factor'.*at least 1"):
        faults.get("straggler").resolve({"factor": 0.5})
    with pytest.raises(FaultParamError, match="'loss_pct'.*at most 100"):
        faults.get("network-loss").resolve({"loss_pct": 150.0})
    with pytest.raises(FaultParamError, match="'crashes'.*whole number"):
        faults.get("replica-crash-loop").resolve({"crashes": 2.5})
    # strength: more crashes, a larger excess factor (0 → healthy), more loss (capped at 100 %)
    assert faults.get("replica-crash-loop").scaled(2.0)["crashes"] == 6
    assert faults.get("straggler").scaled(0.5)["factor"] == pytest.approx(1.5)
    assert faults.get("network-loss").scaled(10.0)["loss_pct"] == 100.0
    for f in ("replica-crash-loop", "straggler", "network-loss"):
        spec = faults.get(f)
        assert spec.description and spec.live and spec.kubernetes and all(p.help for p in spec.params)


def test_kubelet_backoff_doubles_from_the_second_restart_and_is_capped():
    assert crash_loop_backoffs(8, 10.0, 300.0) == [0.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0]
    spec = faults.get("replica-crash-loop")
    perts = spec.perturbations(T, 100.0, 200.0, {"crashes": 3, "uptime_s": 5.0, "load_s": 20.0})
    assert [(p.start, p.end, p.values["backoff_s"]) for p in perts] == [
        (100.0, 120.0, 0.0), (125.0, 155.0, 10.0), (160.0, 200.0, 20.0)]
    # the loop stops when the fault ends (no crash after it), but always crashes once
    assert [p.start for p in spec.perturbations(T, 100.0, 160.0, {"crashes": 3, "uptime_s": 5.0, "load_s": 20.0})] \
        == [100.0, 125.0]
    assert len(spec.perturbations(T, 100.0, 100.5, {"crashes": 3})) == 1


# -- replica-crash-loop ------------------------------------------------------------------------------------------

def test_crash_loop_kills_the_target_again_and_again_and_its_load_goes_to_the_peers(baseline):
    p = {"crashes": 3, "uptime_s": 15.0, "load_s": 30.0}
    sim = run(SimConfig(**CFG), Injection("replica-crash-loop", T, p), 3)
    kills = sim.env.kills[T]
    assert [round(b - a, 6) for a, b in kills] == [30.0, 40.0, 50.0]  # load, and the back-off before it
    assert [round(kills[k + 1][0] - kills[k][1], 6) for k in range(2)] == [15.0, 15.0]  # uptime between
    seq = sim.truth.params["sequence"]
    assert [s["at_s"] for s in seq] == [0.0, 45.0, 100.0] and [s["backoff_s"] for s in seq] == [0.0, 10.0, 20.0]
    ev = sim.record.events
    health = ev[(ev["kind"] == "replica_health") & (ev["service"] == T)]
    assert [f["ok"] for f in health["fields"]] == [False, True] * 3
    assert [f["load_s"] for f in health["fields"] if f["ok"]] == pytest.approx([30.0, 30.0, 30.0])
    req, sent = sim.record.requests, _sent(sim)
    for die, back in kills:
        # each death fails what the target held (502 at the proxy, fast), then it is out of the routing until back
        dead = req[(req["replica"] == T) & (req["http_status"] == 502) & (sent < die + SERVE_DEATH_NOTICE_S + 0.1)
                   & (sent > die - 40.0)]
        assert len(dead) >= 1 and (dead["t_gateway_end"] - dead["t_gateway_start"]).max() < 5.0
        routed = req[(sent > die + SERVE_DEATH_NOTICE_S + 0.1) & (sent < back)]
        assert len(routed) > 20 and (routed["replica"] != T).all()
    # between the crashes it serves again
    ok = req[(req["replica"] == T) & (req["http_status"] == 200)]
    for k in range(2):
        s = ok["t_send"] - sim.record.start
        assert ((s > kills[k][1]) & (s < kills[k + 1][0])).any()
    # over the loop: the target takes a fraction of its share, its peers the rest
    mine, _ = _window(req, sent, kills[0][0], kills[-1][1])
    base_mine, _ = _window(baseline.record.requests, _sent(baseline), kills[0][0], kills[-1][1])
    assert len(mine) < 0.5 * len(base_mine)
    assert (req["http_status"] == 502).sum() >= 3 and (baseline.record.requests["http_status"] == 502).sum() == 0


def test_crash_loop_logs_each_death_restart_and_the_kubelets_back_off():
    case = simulate(SimConfig(**CFG), Injection("replica-crash-loop", T, {"crashes": 3}), 3, traces=False)
    logs = case.observation.logs
    msgs = logs["message"]
    assert msgs.str.contains("failed health check, stopping it").sum() == 3
    started = msgs[msgs.str.contains(r"started successfully on node .* after 30\.0s")]
    assert len(started) == 3
    ids = started.str.extract(r"Replica\(id='(\w+)'")[0]
    assert ids.nunique() == 3  # a new Serve replica id after each restart
    kubelet = logs[logs["message"].str.contains("CrashLoopBackOff")]
    node = case.observation.topology.hosts[T]
    assert (kubelet["service"] == node).all() and len(kubelet) == 2  # the first restart is at once: no back-off
    assert kubelet["message"].str.contains(r'back-off 10s restarting failed container=ray-worker pod=ray-replicas-1_llm').iloc[0]
    assert kubelet["message"].str.contains("back-off 20s").iloc[1]
    assert (kubelet["template"].str.contains("CrashLoopBackOff: ")).all()


def test_crash_loop_is_deterministic_per_seed():
    cfg = SimConfig(duration=200.0, inject_at=40.0, fault_duration=60.0)
    inj = Injection("replica-crash-loop", T, {"crashes": 2, "uptime_s": 5.0, "load_s": 10.0})
    one, two = run(cfg, inj, 5), run(cfg, inj, 5)
    pd.testing.assert_frame_equal(one.record.requests, two.record.requests)
    pd.testing.assert_frame_equal(one.metrics, two.metrics)


# -- straggler ---------------------------------------------------------------------------------------------------

def test_straggler_slows_every_step_of_the_target_and_the_router_shifts_load_to_its_peers(baseline):
    sim = run(SimConfig(**CFG), Injection("straggler", T, {"factor": 2.0}), 3)
    a, b = 70.0, 230.0
    req, sent = sim.record.requests, _sent(sim)
    mine, peers = _window(req, sent, a, b)
    base_mine, base_peers = _window(baseline.record.requests, _sent(baseline), a, b)
    # memory-bound decode and compute-bound prefill both take about the factor longer (the CPU part does not)
    assert 1.6 < itl(mine) / itl(peers) < 2.0
    assert 1.5 < ttft(mine) / ttft(peers) < 2.1
    assert abs(itl(peers) / itl(base_peers) - 1.0) < 0.05
    # least-loaded routing: its requests stay in flight longer, so it gets fewer of them
    assert len(mine) / (len(mine) + len(peers)) < 0.8 * len(base_mine) / (len(base_mine) + len(base_peers))
    assert (req["http_status"] == 200).all()
    m, mb = sim.metrics, baseline.metrics
    tt = m["time"] - sim.record.start
    w = (tt > a) & (tt < b)
    assert m[f"{T}_gpu_util"][w].mean() > mb[f"{T}_gpu_util"][w].mean() + 3.0  # busier for less work
    for col in ("time_to_first_token_seconds_p50", "inter_token_latency_seconds_p99", "latency"):
        assert m[f"{T}_{col}"][w].median() > 1.5 * mb[f"{T}_{col}"][w].median(), col
    # vLLM's ITL buckets (10 ms, 25 ms, ...) hold both 12 and 22 ms: its bucketed median cannot see the slow-down
    assert m[f"{T}_inter_token_latency_seconds_p50"][w].median() < 1.05 * mb[f"{T}_inter_token_latency_seconds_p50"][w].median()


def test_a_straggler_of_factor_one_is_the_fault_free_run():
    cfg = SimConfig(duration=150.0, inject_at=40.0, fault_duration=60.0)
    healthy = run(cfg, Injection("straggler", T, {"factor": 1.0}), 4)
    base = run(cfg, None, 4)
    pd.testing.assert_frame_equal(healthy.record.requests, base.record.requests)
    slow = run(cfg, Injection("straggler", T, {"factor": 1.2}), 4)
    assert not slow.record.requests["t_gateway_end"].equals(base.record.requests["t_gateway_end"])


def test_straggler_needs_a_gpu_pod():
    with pytest.raises(FaultParamError, match="slows a GPU's kernels"):
        run(SimConfig(gpu="cpu", model="tiny", duration=60.0, inject_at=20.0, fault_duration=10.0),
            Injection("straggler", T), 1)
    from llmrca.faults import Perturbation
    from llmrca.sim import environment as envmod
    from llmrca.sim.hardware import gpu_kind

    kw = {"t0": 0.0, "t1": 10.0, "tick": 1.0, "pods": ("gw", "r"), "gpu_pods": ("r",), "gpu": gpu_kind("a100"),
          "pod_cpu": 8.0, "pod_memory": 1e10, "base_memory": {"gw": 1e8, "r": 1e9},
          "own_demand": {"gw": 0.1, "r": 1.0}, "rng": np.random.default_rng(0)}
    with pytest.raises(FaultParamError, match="holds no GPU"):
        envmod.build(perturbations=[Perturbation("device_slowdown", "gw", 0, 5, {"factor": 2.0})], **kw)
    env = envmod.build(perturbations=[Perturbation("device_slowdown", "r", 2, 5, {"factor": 3.0})], **kw)
    assert env.device_slow["r"].tolist() == [1.0, 1.0, 3.0, 3.0, 3.0, 1.0, 1.0, 1.0, 1.0, 1.0]


# -- network-loss ------------------------------------------------------------------------------------------------

class _Draws:
    """A generator whose uniforms are given (the loss model's draws, one per segment sent)."""

    def __init__(self, values):
        self.values = list(values)

    def random(self):
        return self.values.pop(0)


def test_tcp_loss_recovery_follows_linux_timers():
    rtt = 0.001
    rto = tcploss.TCP_RTO_MIN_S + rtt
    lost, kept = 0.0, 0.9  # a uniform below `loss` drops the segment
    one = tcploss.Loss(0.5, 0.0, _Draws([kept]), rtt)
    assert one.write_delay(1) == 0.0
    # a one-segment request lost, then its retransmission lost: the timer, then the doubled timer
    two = tcploss.Loss(0.5, 0.0, _Draws([lost, lost, kept]), rtt)
    assert two.write_delay(1) == pytest.approx(rto + 2 * rto)
    # the first of five lost: three duplicate ACKs follow, a fast retransmit one round trip later
    fast = tcploss.Loss(0.5, 0.0, _Draws([lost, kept, kept, kept, kept, kept]), rtt)
    assert fast.write_delay(5) == pytest.approx(rtt)
    # the last of five lost: nothing follows it, the timer recovers it; segments lost together recover together
    tail = tcploss.Loss(0.5, 0.0, _Draws([kept, lost, kept, kept, lost, kept, kept]), rtt)
    assert tail.write_delay(5) == pytest.approx(rto)
    # everything lost: the connection is given up after tcp_retries2 retransmissions (minutes, not seconds)
    dead = tcploss.Loss(1.0, 0.0, np.random.default_rng(0), rtt)
    given_up = dead.write_delay(1)
    assert dead.broken == 1 and given_up > 10 * NGINX_READ_TIMEOUT_S
    # a token stream: a chunk in the middle is fast-retransmitted three chunks later and the end is not late; a
    # dropped last chunk waits for the timer
    mid = tcploss.Loss(0.5, 0.0, _Draws([kept, kept, lost, kept] + [kept] * 7), rtt)
    assert mid.stream_delay(10, 0.02) == 0.0
    last = tcploss.Loss(0.5, 0.0, _Draws([kept] * 9 + [lost, kept]), rtt)
    assert last.stream_delay(10, 0.02) == pytest.approx(rto)
    # a slow stream: the timer fires before the third duplicate ACK; a lost fast retransmission waits for the timer
    assert last.by_fast_retransmit(0, 0.3) == pytest.approx(rto) and last.by_fast_retransmit(0, 0.05) == pytest.approx(
        0.05 + rtt)
    assert last.by_fast_retransmit(1, 0.0) == pytest.approx(rtt + rto) and last.by_timer(2) == pytest.approx(7 * rto)
    assert tcploss.Loss(0.0, 0.0, np.random.default_rng(0)).write_delay(3) == 0.0
    assert tcploss.request_segments(512) == 3 and tcploss.segments(1) == 1
    with pytest.raises(ValueError, match="loss"):
        tcploss.Loss(1.5, 0.0, np.random.default_rng(0))


def test_correlated_loss_comes_in_bursts():
    def runs(c):
        m = tcploss.Loss(0.3, c, np.random.default_rng(1))
        drops = [m.drop() for _ in range(20000)]
        return np.mean(drops), np.mean([a and b for a, b in itertools.pairwise(drops)]) / max(np.mean(drops), 1e-9)

    rate0, after0 = runs(0.0)
    _, after5 = runs(0.5)
    assert abs(rate0 - 0.3) < 0.02 and abs(after0 - 0.3) < 0.03
    assert after5 > after0 + 0.04  # a drop makes the next more likely (netem's correlation is a weak one)


def test_network_loss_gives_calls_to_the_target_a_retransmission_tail(baseline):
    sim = run(SimConfig(**CFG), Injection("network-loss", T, {"loss_pct": 30.0}), 3)
    a, b = 70.0, 230.0
    req, sent = sim.record.requests, _sent(sim)
    mine, peers = _window(req, sent, a, b)
    base_mine, _ = _window(baseline.record.requests, _sent(baseline), a, b)
    late = wire(mine)
    # the retransmission timer's steps: a share of requests 200 ms late, fewer 600 ms (two losses in a row) ...
    assert 0.2 < (late > 0.2).mean() < 0.8 and (late > 0.6).mean() > 0.03
    assert (wire(peers) < 0.05).all() and (wire(base_mine) < 0.05).all()
    assert e2e(mine).quantile(0.99) > e2e(base_mine).quantile(0.99) + 0.5
    assert abs(e2e(mine).median() - e2e(base_mine).median()) < 0.5
    # ... while its engine barely moves: same per-token speed
    assert abs(itl(mine) / itl(peers) - 1.0) < 0.05
    assert (req["http_status"] == 200).all()


def test_heavy_loss_outlasts_the_gateways_read_timeout():
    sim = run(SimConfig(**CFG), Injection("network-loss", T, {"loss_pct": 70.0}), 3)
    req = sim.record.requests
    timed_out = req[req["http_status"] == 504]
    assert len(timed_out) >= 2 and (timed_out["replica"] == T).all()
    assert (timed_out["error"] == "upstream timed out").all()
    assert ((timed_out["t_gateway_end"] - timed_out["t_gateway_start"]) >= NGINX_READ_TIMEOUT_S - 1e-6).all()
    case = simulate(SimConfig(**CFG), Injection("network-loss", T, {"loss_pct": 70.0}), 3, traces=False)
    gw = case.observation.logs
    gw = gw[gw["service"] == "nginx-proxy"]["message"]
    assert gw.str.contains("upstream timed out (110: Connection timed out) while reading response header",
                           regex=False).sum() == len(timed_out)


def test_loss_towards_the_head_delays_requests_on_their_way_in_and_streams_back_from_its_peers():
    cfg = SimConfig(duration=200.0, inject_at=40.0, fault_duration=120.0)
    sim = run(cfg, Injection("network-loss", "ray-head", {"loss_pct": 30.0}), 2)
    base = run(cfg, None, 2)
    req, rb = sim.record.requests, base.record.requests
    sent = req["t_gateway_start"] - sim.record.start
    w = (sent > 50) & (sent < 150)
    inward = (req["t_proxy_start"] - req["t_gateway_start"])[w]
    assert (inward > 0.2).mean() > 0.2  # nginx -> proxy crosses the loss, whatever the replica
    back = (req["t_proxy_end"] - req["t_engine_end"])[w & (req["replica"] != "ray-head")]
    back_b = (rb["t_proxy_end"] - rb["t_engine_end"])[(rb["t_gateway_start"] - base.record.start > 50)
                                                       & (rb["t_gateway_start"] - base.record.start < 150)
                                                       & (rb["replica"] != "ray-head")]
    assert back.quantile(0.9) > back_b.quantile(0.9) + 0.1  # the remote streams' tails reach it late
    assert math.isclose(back_b.max(), back_b.max())  # finite
