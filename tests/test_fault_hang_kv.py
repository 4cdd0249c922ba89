"""engine-hang and kv-cache-pressure in the simulator: what each does to the target and, through the router, to
its peers (the same registry entries drive the live testbed)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from llmrca import faults
from llmrca.faults import Injection
from llmrca.sim.config import SimConfig
from llmrca.sim.run import NGINX_READ_TIMEOUT_S, run, simulate

CFG = {"duration": 240.0, "inject_at": 60.0, "fault_duration": 90.0}
T = "ray-replicas-1"


def _window(sim, a: float, b: float) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for r, e in sim.engines.items():
        lg = e.log.arrays()
        w = (lg["t"] >= a) & (lg["t"] < b)
        out[r] = {k: v[w] for k, v in lg.items()}
    return out


def test_engine_hang_freezes_the_target_and_times_its_requests_out_at_the_gateway():
    sim = run(SimConfig(**CFG), Injection("engine-hang", T, {"stall_s": 90.0}), 3)
    (a, b), = sim.env.stalls[T]
    assert b - a == 90.0 == sim.truth.params["stall_s"]
    during = _window(sim, a + 1.0, b)
    tgt = during[T]
    # the engine core stopped: no step, no token, its gauges as it last published them, its GPU idle
    assert tgt["steps"].sum() == tgt["gen_tokens"].sum() == tgt["prompt_tokens"].sum() == 0
    for k in ("running", "waiting", "kv_usage", "preemptions", "prefix_queries"):
        assert np.ptp(tgt[k]) == 0, k
    assert tgt["running"][0] > 0 and tgt["busy"].max() == 0
    for r, lg in during.items():  # the peers keep serving (and take more)
        if r != T:
            assert lg["gen_tokens"].sum() > 0 and lg["steps"].min() > 0
    req = sim.record.requests
    t_send = req["t_send"] - sim.record.start
    mine = req[req["replica"] == T]
    # /health stays 200: no health event, and the router still sends it requests while it is stopped
    ev = sim.record.events
    assert not ((ev["kind"] == "replica_health") & (ev["service"] == T)).any()
    assert ((t_send[req["replica"] == T] > a) & (t_send[req["replica"] == T] < b)).any()
    # stuck longer than nginx's read timeout: nginx gives up after (at least) the timeout; the streams' header had
    # gone out (before the first token), so nginx cuts them with status 200, as the live testbed logs it; no 504
    cut = mine[mine["error"] == "upstream timed out"]
    assert len(cut) >= 3 and (cut["status"] == "ERROR").all() and (cut["http_status"] == 200).all()
    assert ((cut["t_gateway_end"] - cut["t_gateway_start"]) >= NGINX_READ_TIMEOUT_S - 1e-6).all()
    assert (cut["streamed_tokens"] > 0).any() and (cut["streamed_tokens"] < cut["max_tokens"]).all()
    assert (req["http_status"] != 504).all() and (req[req["replica"] != T]["error"] != "upstream timed out").all()
    # resumed afterwards: it serves again
    ok = mine[mine["status"] == "OK"]
    assert (ok["t_engine_end"] - sim.record.start > b).any()


def test_engine_hang_telemetry_is_the_live_gateways_cut_streams():
    case = simulate(SimConfig(**CFG), Injection("engine-hang", T, {"stall_s": 90.0}), 3)
    logs, spans, m = case.observation.logs, case.observation.traces, case.observation.metrics
    gw = logs[logs["service"] == "nginx-proxy"]["message"]
    cut = gw.str.contains(r"upstream timed out \(110: Connection timed out\) while reading upstream,").sum()
    assert cut >= 3 and not gw.str.contains("while reading response header").any()
    assert not gw.str.contains(r'" 504 ').any()
    gateway = spans[spans["service"] == "nginx-proxy"]
    assert (gateway["http_status"] == 200).all() and (gateway["status"] == "OK").all()
    proxy = spans[spans["operation"] == "proxy_http_request"]
    assert (proxy["http_status"] == 499).sum() == cut  # the Serve proxy saw nginx hang up on each
    # the mesh's response_code is the status each caller saw: 200 at nginx and its upstream, 200 or 499 at the
    # proxy's calls; none is a 5xx
    assert all(m[c].fillna(0).max() == 0 for c in m.columns if c.endswith("_requests_5xx"))


def test_nginx_lacks_the_header_only_when_it_gives_up_before_the_replica_has_the_request():
    from llmrca.sim.run import _Paths, header_sent

    P = _Paths(3)
    P.t_gateway_start = np.array([0.0, 0.0, 0.0])
    P.t_arrival = np.array([0.01, 61.0, 0.01])  # the second was held 61 s on the wire towards its replica
    P.t_gateway_end = np.array([60.0, 60.0, 60.0])
    res = {"t_ready": np.array([0.02, 61.01, np.nan])}  # the third never reached an engine
    assert header_sent(res, P).tolist() == [True, False, False]


def test_a_hang_shorter_than_the_read_timeout_is_a_latency_spike_not_504s():
    sim = run(SimConfig(**CFG), Injection("engine-hang", T, {"stall_s": 20.0}), 3)
    (a, b), = sim.env.stalls[T]
    assert np.isclose(b - a, 20.0)
    req = sim.record.requests
    mine = req[req["replica"] == T]
    assert (req["http_status"] == 200).all()
    e2e = mine["t_gateway_end"] - mine["t_gateway_start"]
    assert e2e.max() > 15.0 > 3.0 * np.median(e2e)


def test_engine_hang_is_deterministic_per_seed():
    inj = Injection("engine-hang", T, {"stall_s": 30.0})
    cfg = SimConfig(duration=150.0, inject_at=60.0, fault_duration=30.0)
    one, two = run(cfg, inj, 5), run(cfg, inj, 5)
    pd.testing.assert_frame_equal(one.record.requests, two.record.requests)
    pd.testing.assert_frame_equal(one.metrics, two.metrics)


def test_kv_cache_pressure_restarts_the_target_small_and_it_preempts_under_normal_load():
    sim = run(SimConfig(**CFG), Injection("kv-cache-pressure", T, {"tokens": 2048, "load_s": 10.0}), 3)
    ((d1, b1, tok, frac), (d2, _, tok2, frac2)) = sim.env.restarts[T]
    assert (tok, frac, tok2, frac2) == (2048, None, None, None) and np.isclose(b1 - d1, 10.0)
    during = _window(sim, b1 + 5.0, d2)
    tgt = during[T]
    assert tgt["preemptions"][-1] - tgt["preemptions"][0] >= 5
    assert tgt["kv_usage"].max() >= 0.95 and tgt["waiting"].max() > 0
    for r, lg in during.items():
        if r != T:
            assert lg["preemptions"].max() == 0 and lg["kv_usage"].max() < 0.05
    m = sim.metrics
    fb = m[f"{T}_fb_used"]
    assert fb.min() < 0.5 * fb.max()  # the small pool holds less GPU memory while it lasts
    req = sim.record.requests
    t_send = req["t_send"] - sim.record.start
    win = (t_send > b1 + 5.0) & (t_send < d2)
    ttft = req["t_first_token"] - req["t_engine_arrival"]
    assert ttft[win & (req["replica"] == T)].median() > 5 * ttft[win & (req["replica"] != T)].median()
    # the restarts: in-flight requests fail fast (502), twice (the rollout and the rollback)
    dead = req[(req["replica"] == T) & (req["http_status"] == 502)]
    sent = dead["t_send"] - sim.record.start
    assert ((sent < d1 + 3) & (sent > d1 - 60)).any() and ((sent < d2 + 3) & (sent > d2 - 60)).any()
    ev = sim.record.events
    health = ev[(ev["kind"] == "replica_health") & (ev["service"] == T)]
    assert [f["ok"] for f in health["fields"]] == [False, True, False, True]
    assert health["fields"].iloc[1]["num_gpu_blocks"] * 16 == 2048
    assert sim.engines[T].cap > 1_000_000  # back to its normal cache


def test_kv_cache_pressure_logs_what_vllm_v1_logs():
    case = simulate(SimConfig(**CFG), Injection("kv-cache-pressure", T, {"tokens": 2048, "load_s": 10.0}), 3,
                    traces=False)
    logs = case.observation.logs
    mine = logs[logs["service"] == T]["message"]
    assert mine.str.contains("GPU KV cache size: 2,048 tokens").any()
    assert not logs["message"].str.contains("is preempted by").any()  # V1: no per-preemption warning
    assert mine.str.contains(r"Preemptions: \d+, GPU KV cache usage").any()


def test_kv_cache_fraction_and_strength():
    spec = faults.get("kv-cache-pressure")
    assert spec.scaled(2.0)["tokens"] == 1024 and spec.scaled(0.5)["tokens"] == 4096
    sim = run(SimConfig(duration=150.0, inject_at=60.0, fault_duration=30.0),
              Injection("kv-cache-pressure", T, {"fraction": 0.5}), 1)
    assert sim.env.restarts[T][0][2:] == (None, 0.5)
    normal = sim.engines["ray-head"].blocks_total
    ev = sim.record.events
    ok = [f for k, s, f in zip(ev["kind"], ev["service"], ev["fields"]) if k == "replica_health" and s == T and f["ok"]]
    assert ok[0]["num_gpu_blocks"] == int(normal * 0.5) and ok[1]["num_gpu_blocks"] == normal


def test_deploy_kv_cache_tokens_sizes_every_replica():
    sim = run(SimConfig(duration=60.0, inject_at=30.0, kv_cache_tokens=4096), None, 1)
    assert {e.cap for e in sim.engines.values()} == {4096}


def test_registry_lists_both_outside_the_paper_suite_and_live():
    import json

    from typer.testing import CliRunner

    from llmrca.cli import app
    from llmrca.scenarios import load as load_scenario
    from llmrca.testbed.injectors import kv_tokens_in_exposition, live_faults

    out = CliRunner().invoke(app, ["faults", "--json"])
    assert out.exit_code == 0, out.output
    rows = {r["id"]: r for r in json.loads(out.output)}
    assert rows["engine-hang"]["causes"] == "engine_stall" and "stall_s=90 s" in rows["engine-hang"]["parameters"]
    assert rows["kv-cache-pressure"]["causes"] == "kv_cache_limit"
    assert "tokens=2048" in rows["kv-cache-pressure"]["parameters"]
    assert {"engine-hang", "kv-cache-pressure"} <= set(live_faults())
    assert not {"engine-hang", "kv-cache-pressure"} & set(load_scenario("paper").faults)
    for fault, bad in (("engine-hang", {"stall_s": 0.0}), ("kv-cache-pressure", {"fraction": 1.5}),
                       ("kv-cache-pressure", {"tokens": 2.5})):
        try:
            faults.get(fault).resolve(bad)
        except faults.FaultParamError as e:
            assert next(iter(bad)) in str(e)
        else:
            raise AssertionError(f"{fault} {bad} accepted")
    text = ('vllm:cache_config_info{block_size="16",cache_dtype="auto",engine="0",num_gpu_blocks="128",'
            'prefix="{\\"a\\"}"} 1.0\n')
    assert kv_tokens_in_exposition(text) == 2048 and kv_tokens_in_exposition("x 1\n") is None
    # vLLM 0.32.0 (measured): the size in tokens is a label of its own
    real = ('vllm:cache_config_info{block_size="32",engine="0",kv_cache_size_tokens="32768",num_gpu_blocks="1024",'
            'kv_cache_dtype_skip_layers="[]"} 1.0\n')
    assert kv_tokens_in_exposition(real) == 32768


def test_both_differ_from_their_fault_free_twin_where_expected():
    from llmrca.sim import twin

    cfg = SimConfig(duration=240.0, inject_at=60.0, fault_duration=60.0)
    for fault, column in (("engine-hang", f"{T}_generation_tokens"), ("kv-cache-pressure", f"{T}_num_preemptions")):
        case = simulate(cfg, Injection(fault, T, faults.get(fault).scaled(1.0)), 2, logs=False, traces=False)
        hits = twin.check(case, cfg, 2)
        assert column in {m.column for m in hits}, (fault, [m.column for m in hits[:8]])


def test_a_request_held_on_the_wire_past_the_read_timeout_is_nginxs_504_before_any_header():
    # nginx gives up before the replica has the request: no header ever came, so nginx answers 504 itself
    case = simulate(SimConfig(**CFG), Injection("network", T, {"latency_ms": 61000.0, "jitter_ms": 0.0}), 3)
    logs, spans, m = case.observation.logs, case.observation.traces, case.observation.metrics
    gw = logs[logs["service"] == "nginx-proxy"]["message"]
    n = gw.str.contains(r"upstream timed out \(110: Connection timed out\) while reading response header from "
                        r"upstream,").sum()
    assert n >= 3 and not gw.str.contains("while reading upstream,").any()
    gateway = spans[spans["service"] == "nginx-proxy"]
    assert ((gateway["http_status"] == 504) & (gateway["status"] == "ERROR")).sum() == n
    calls = spans[(spans["operation"] == "process_request") & spans["trace_id"].isin(
        gateway[gateway["http_status"] == 504]["trace_id"])]
    assert calls["http_status"].isna().all()  # the proxy's call never had a header
    assert m["nginx-proxy_requests_5xx"].max() > 0 and m[f"{T}_requests_5xx"].fillna(0).max() == 0
