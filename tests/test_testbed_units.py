"""Unit tests of the live testbed's pieces that need no running deployment: the real-time engine driver, the
delay model and mesh link, the collector against a fake Prometheus API, the injectors' cleanup, and scaling."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from typing import ClassVar

import numpy as np
import pytest
from _fake_prometheus import RangeQueryHandler, serving

from llmrca import faults
from llmrca.deploy import DeployConfig
from llmrca.errors import LlmrcaError, UnknownNameError
from llmrca.faults import FaultParamError
from llmrca.sim.hardware import GIB, gpu_kind, model_spec
from llmrca.testbed.cleanup import CleanupRegistry
from llmrca.testbed.config import Machine, TestbedConfig, TestbedConfigError, scaling
from llmrca.testbed.delay import Delay

# -- the engine on the wall clock ------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _engine(clock):
    from llmrca.testbed.realtime import RealtimeEngine

    return RealtimeEngine("r0", gpu=gpu_kind("a100"), model=model_spec("7b"), max_num_seqs=256,
                          max_num_batched_tokens=2048, block_size=16, gpu_memory_utilization=0.9,
                          shared_prefix_tokens=32, clock=clock, measure_cpu=False)


def test_realtime_engine_streams_what_the_simulator_engine_computes():
    """Driving the shared engine by a clock changes nothing in its physics: a request's first token and end are
    where the simulator's engine puts them, and tokens appear monotonically between them."""
    clock = FakeClock()
    rt = _engine(clock)
    rids = []
    seen: dict[int, list[tuple[float, int]]] = {}
    arrivals = [0.0, 0.05, 0.3, 0.31, 1.2]
    while clock.t - 100.0 < 6.0:
        v = clock.t - 100.0
        while arrivals and arrivals[0] <= v:
            arrivals.pop(0)
            rids.append(rt.submit(512, 120, 60.0))
        rt.poll()
        for r in rids:
            seen.setdefault(r, []).append((v, rt.tokens(r)))
        clock.t += 0.002
    R = rt.table
    for r in rids:
        assert rt.state(r) == "done"
        ks = [k for _, k in seen[r]]
        assert ks == sorted(ks) and ks[-1] == 120
        first = next(t for t, k in seen[r] if k > 0)
        assert R.t_first[r] <= first <= R.t_first[r] + 0.003
        assert 0.03 < R.t_first[r] - R.t_ready[r] < 0.5  # a prefill of 512 tokens on an A100, plus queueing
        itl = (R.t_end[r] - R.t_first[r]) / 119
        assert 0.008 < itl < 0.03  # ~12 ms per token for a 7B model at this batch size


def test_power_cap_slows_decode_and_flattens_power():
    def run(limit):
        clock = FakeClock()
        rt = _engine(clock)
        if limit:
            rt.set_power_limit(limit)
        rids = [rt.submit(512, 2000, 600.0) for _ in range(16)]
        while clock.t - 100.0 < 8.0:
            rt.poll()
            clock.t += 0.01
        return sum(rt.tokens(r) for r in rids), rt.last_tick()

    free, tick_free = run(None)
    capped, tick_cap = run(150.0)
    assert capped < 0.95 * free
    assert tick_cap["power"] <= 150.5 and tick_free["power"] > 170
    assert tick_cap["capped"] == 1.0
    with pytest.raises(ValueError, match="outside"):
        _engine(FakeClock()).set_power_limit(50.0)


def test_abort_frees_the_request():
    clock = FakeClock()
    rt = _engine(clock)
    r = rt.submit(512, 500, 60.0)
    for _ in range(100):
        rt.poll()
        clock.t += 0.01
    assert rt.state(r) == "running" and rt.engine.n == 1
    rt.abort(r)
    rt.poll()
    assert rt.state(r) == "aborted" and rt.engine.n == 0
    r2 = rt.submit(512, 10, 60.0)
    for _ in range(100):
        rt.poll()
        clock.t += 0.01
    assert rt.state(r2) == "done"


def test_prompt_and_answer_lengths_round_trip():
    from llmrca.testbed.engine_server import prompt_tokens_of, wanted_tokens
    from llmrca.testbed.loadgen import prompt_text

    rng = np.random.default_rng(0)
    text = prompt_text(512, 77, rng)
    assert prompt_tokens_of(text) == 512
    assert wanted_tokens(text, 256) == 77 and wanted_tokens(text, 50) == 50
    assert wanted_tokens("no request here", 256) == 256


# -- delay model and mesh --------------------------------------------------------------------------------------


def test_delay_draws_keep_order_and_range():
    d = Delay(1.0, 0.1, 0.25, seed=3)
    draws = [d.draw() for _ in range(2000)]
    assert all(0.9 <= x <= 1.1 for x in draws)
    assert abs(np.mean(draws) - 1.0) < 0.01
    rel = [d.release_time(t * 0.001) for t in range(200)]  # chunks 1 ms apart, jitter 100 ms: never reordered
    assert rel == sorted(rel)
    assert np.corrcoef(draws[:-1], draws[1:])[0, 1] > 0.1  # netem-style correlation
    assert Delay(1.0, seed=1).draw() == 1.0
    with pytest.raises(FaultParamError):
        Delay(-1.0)
    with pytest.raises(FaultParamError):
        Delay(0.1, correlation=2.0)
    assert not Delay(0.1, expires_at=time.time() - 1).active(time.time())


def test_directions_towards_a_replica_and_the_head():
    from llmrca.testbed.mesh import Link, directions_towards

    links = [Link("ray-head", "nginx-proxy", "ray-head", 1, 2), Link("r0", "ray-head", "r0", 3, 4),
             Link("r1", "ray-head", "r1", 5, 6)]
    assert [(x.name, d) for x, d in directions_towards(links, "r1")] == [("r1", "up")]
    assert [(x.name, d) for x, d in directions_towards(links, "ray-head")] == [
        ("ray-head", "up"), ("r0", "down"), ("r1", "down")]


def test_mesh_link_delays_only_the_target_direction():
    pytest.importorskip("aiohttp")
    from llmrca.testbed.mesh import Link, _pump
    from llmrca.testbed.rundir import free_ports

    async def main() -> tuple[float, float]:
        async def echo(r, w):
            while data := await r.read(100):
                w.write(data)
                await w.drain()
            w.close()

        up_port, link_port = free_ports(2)
        server = await asyncio.start_server(echo, "127.0.0.1", up_port)
        link = Link("x", "a", "b", link_port, up_port)

        async def serve(r, w):
            ur, uw = await asyncio.open_connection("127.0.0.1", up_port)
            await asyncio.gather(_pump(r, uw, link, "up"), _pump(ur, w, link, "down"))
            w.close()

        ls = await asyncio.start_server(serve, "127.0.0.1", link_port)

        async def rtt() -> float:
            r, w = await asyncio.open_connection("127.0.0.1", link_port)
            t = time.monotonic()
            w.write(b"ping")
            await w.drain()
            await r.readexactly(4)
            w.close()
            return time.monotonic() - t

        base = await rtt()
        link.delay_up = Delay(0.3, 0.0, 0.0)
        delayed = await rtt()
        ls.close()
        server.close()
        return base, delayed

    base, delayed = asyncio.run(main())
    assert base < 0.2
    assert 0.29 <= delayed < base + 0.6


# -- collector against a fake Prometheus ------------------------------------------------------------------------


class _FakeProm(RangeQueryHandler):
    answers: ClassVar[dict] = {}
    seen: ClassVar[list] = []

    def series(self, query, start, end, step):
        self.seen.append(query)
        result = []
        for needle, series in self.answers.items():
            if needle in query:
                for labels, fn in series:
                    ts = np.arange(start, end + 1e-9, step)
                    vals = [[float(t), str(fn(t))] for t in ts if fn(t) is not None]
                    result.append({"metric": labels, "values": vals})
        return result


@pytest.fixture
def fake_prom():
    _FakeProm.seen = []
    with serving(_FakeProm) as pair:
        yield pair


def test_collector_builds_the_simulators_columns_from_range_queries(fake_prom):
    from llmrca.case.views import view_of
    from llmrca.testbed.collector import LabelMap, collect_metrics
    from llmrca.testbed.prometheus import PromClient

    _, url = fake_prom
    _FakeProm.answers = {
        "rate(container_cpu_usage_seconds_total": [({"service": "ray-head"}, lambda t: 0.5),
                                                   ({"service": "ray_replicas_0"}, lambda t: 1.5 if t >= 110 else 0.1)],
        "DCGM_FI_DEV_POWER_USAGE": [({"service": "ray-head"}, lambda t: None if 104 <= t < 106 else 210.0)],
        "vllm:time_to_first_token_seconds_bucket": [({"service": "ray-head"}, lambda t: 0.05)],
        "istio_requests_total{response_code": [],
        "istio_requests_total": [({"destination_workload": "ray-head"}, lambda t: 5.0)],
    }
    df = collect_metrics(PromClient(url), 100.0, 120.0, 1.0, rate_window=5.0)
    assert list(df["time"]) == [100.0 + i for i in range(21)]
    assert (df["ray-head_ctn_cpu"] == 0.5).all() and (df["ray-head_cpu_usage_seconds"] == 0.5).all()
    # a label value with '_' becomes a service name with '-' (service names never contain '_')
    assert df["ray-replicas-0_ctn_cpu"].iloc[9] == 0.1 and df["ray-replicas-0_ctn_cpu"].iloc[10] == 1.5
    p = df["ray-head_power_usage"]
    assert p.isna().sum() == 2 and p.iloc[4:6].isna().all()
    assert (df["ray-head_time_to_first_token_seconds_p95"] == 0.05).all()
    assert (df["ray-head_requests"] == 5.0).all()
    # study-view columns come first
    views = [view_of(c) for c in df.columns if c != "time"]
    assert views == sorted(views, key=lambda v: v != "study")
    assert any("rate(container_cpu_usage_seconds_total[5s])" in q for q in _FakeProm.seen)
    assert any(q.startswith("histogram_quantile(0.95, sum by (service, le)") for q in _FakeProm.seen)
    # a label map for another cluster: other label names, a pattern, a filter, only some services
    _FakeProm.seen = []
    lm = LabelMap.from_dict({"labels": {"container": "pod"}, "pattern": r"(?P<service>vllm-\d+)-[a-z0-9]+$",
                             "selectors": {"container": 'namespace="llm"'}})
    _FakeProm.answers = {"rate(container_cpu_usage_seconds_total": [
        ({"pod": "vllm-0-abc12"}, lambda t: 2.0), ({"pod": "vllm-0-zz9"}, lambda t: 1.0),
        ({"pod": "grafana-x"}, lambda t: 9.0)]}
    df = collect_metrics(PromClient(url), 100.0, 110.0, 5.0, rate_window=15.0, labels=lm)
    assert list(df.columns) == ["time", "vllm-0_ctn_cpu", "vllm-0_cpu_usage_seconds"]
    assert (df["vllm-0_ctn_cpu"] == 3.0).all()  # two pods of one service add up
    assert any('container_cpu_usage_seconds_total{namespace="llm"}[15s]' in q for q in _FakeProm.seen)
    with pytest.raises(LlmrcaError, match="unknown source group"):
        LabelMap.from_dict({"labels": {"gpus": "x"}})
    from llmrca.testbed.collector import collect_prometheus_case

    case = collect_prometheus_case(url, 100.0, 110.0, step=5.0, labels=lm, case_id="prod/1")
    case.validate()
    assert case.truth.is_normal and case.observation.topology.services == ("vllm-0",)


def test_collector_reports_prometheus_errors(fake_prom):
    from llmrca.testbed.prometheus import PromClient, PrometheusError

    with pytest.raises(PrometheusError, match="cannot query"):
        PromClient("http://127.0.0.1:9", timeout=1.0).query_range("up", 0, 10, 1)


def test_traces_logs_and_truth_from_files(tmp_path):
    from llmrca.case import TRACE_COLUMNS
    from llmrca.testbed.collector import injection_in, read_spans, traces_frame, truth_of
    from llmrca.testbed.logs import JsonLog, mask
    from llmrca.testbed.nginx import gateway_span, parse_access_line

    line = ('127.0.0.1 - - [25/Nov/2026:17:27:52 +0000] "POST /v1/chat/completions HTTP/1.1" 200 63583 "-" '
            '"Python/3.11 aiohttp/3.14.5" rt=6.521 uct="0.000" urt="6.520" ua="127.0.0.1:45093" us="200" '
            'msec=1795627672.634 tp="00-1b3fae1821e7a7f171160177de56088f-00488edb475a002f-01" '
            'sid=769349aec878604c tid=1b3fae1821e7a7f171160177de56088f')
    rec = parse_access_line(line)
    assert rec["status"] == 200 and rec["upstream_time"] == 6.52 and rec["parent_span_id"] == "00488edb475a002f"
    assert math.isclose(rec["start"], 1795627672.634 - 6.521)
    assert parse_access_line("garbage") is None
    assert "<*>" in mask(line) and "1b3fae" not in mask(line) and "POST /v1/chat/completions" in mask(line)
    g = gateway_span(rec, "nginx-proxy")
    spans = tmp_path / "spans.jsonl"
    start_ns = int(rec["start"] * 1e9) + 1000
    spans.write_text(json.dumps({"trace_id": rec["trace_id"], "span_id": "aaaaaaaaaaaaaaaa",
                                 "parent_span_id": g["span_id"], "service": "ray-head", "name": "proxy_http_request",
                                 "kind": "SERVER", "start_ns": start_ns, "end_ns": start_ns + 10**9,
                                 "status": "ERROR", "attributes": {"http.status_code": 502}}) + "\nnot json\n")
    rows = read_spans(spans, rec["start"] - 1, rec["end"], ["ray-head"]) + [g]
    tf = traces_frame(rows)
    assert list(tf.columns) == list(TRACE_COLUMNS)
    assert tf.loc[tf.service == "nginx-proxy", "parent_span_id"].isna().all()  # the client's span is not ours
    assert tf.loc[tf.service == "ray-head", "parent_span_id"].iloc[0] == g["span_id"]
    assert tf.loc[tf.service == "ray-head", "http_status"].iloc[0] == 502
    log = JsonLog(tmp_path / "x.jsonl", "ray-head", "vllm")
    log.write("INFO", "Finished request {}.", "chatcmpl-1")
    log.close()
    r = json.loads((tmp_path / "x.jsonl").read_text())
    assert r["message"] == "Finished request chatcmpl-1." and r["template"] == "Finished request <*>."
    recs = [{"id": "a", "inject_time": 50.0, "fault": "cpu", "target": "r1", "end": 60.0, "params": {"workers": 1},
             "indicator": "ctn_cpu"},
            {"id": "a", "inject_time": 50.0, "fault": "cpu", "target": "r1", "end": 60.0, "undone_at": 59.0,
             "params": {"workers": 1, "load": 100}, "indicator": "ctn_cpu"},
            {"id": "b", "inject_time": 80.0, "fault": "gpu", "target": "r2", "end": 90.0, "params": {}}]
    assert injection_in(recs, 0, 70)["undone_at"] == 59.0
    assert injection_in(recs, 60, 70) is None
    with pytest.raises(LlmrcaError, match="2 injections"):
        injection_in(recs, 0, 100)
    t = truth_of(injection_in(recs, 0, 70))
    assert (t.service, t.fault_type, t.indicator, t.end) == ("r1", "cpu", "r1_ctn_cpu", 59.0)
    assert t.params["workers"] == 1 and "live" not in t.params  # the applied values, nothing beside them


def test_otlp_receiver_decodes_what_the_sdk_sends():
    pytest.importorskip("opentelemetry.proto")
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from llmrca.errors import FormatError
    from llmrca.testbed.otlp import decode

    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    kv = rs.resource.attributes.add()
    kv.key, kv.value.string_value = "service.name", "ray-replicas-1"
    s = rs.scope_spans.add().spans.add()
    s.trace_id, s.span_id, s.name, s.kind = bytes(range(16)), bytes(range(8)), "llm_request", 2
    s.start_time_unix_nano, s.end_time_unix_nano = 10**18, 10**18 + 5 * 10**8
    s.status.code = 2
    a = s.attributes.add()
    a.key, a.value.int_value = "gen_ai.usage.prompt_tokens", 512
    out = decode(req.SerializeToString())
    assert out == [{"trace_id": bytes(range(16)).hex(), "span_id": bytes(range(8)).hex(), "parent_span_id": None,
                    "service": "ray-replicas-1", "component": None, "name": "llm_request", "kind": "SERVER",
                    "start_ns": 10**18, "end_ns": 10**18 + 5 * 10**8, "status": "ERROR",
                    "attributes": {"gen_ai.usage.prompt_tokens": 512}}]
    with pytest.raises(FormatError):
        decode(b"\xff\xff\xff")


def test_parse_ss_segments():
    from llmrca.testbed.procstats import parse_ss

    text = textwrap.dedent("""\
        ESTAB 0 0 127.0.0.1:4000 127.0.0.1:5000 users:(("python",pid=42,fd=7)) ino:991 sk:1 cgroup:/ -->
        \t ts sack cubic bytes_sent:27 segs_out:6 segs_in:5 data_segs_out:1
        TIME-WAIT 0 0 127.0.0.1:4001 127.0.0.1:5001 timer:(timewait,59sec,0) ino:0 sk:2
        \t
        """)
    socks = parse_ss(text)
    assert [(s.inode, s.pid, s.segs_out, s.segs_in) for s in socks] == [(991, 42, 6, 5)]


# -- cleanup and injectors -------------------------------------------------------------------------------------


def test_cleanup_registry_runs_each_action_once_last_first():
    reg = CleanupRegistry()
    done = []
    reg.register(lambda: done.append("a"), "a")
    h = reg.register(lambda: done.append("b"), "b")
    reg.register(lambda: 1 / 0, "boom")
    reg.register(lambda: done.append("c"), "c")
    reg.run(h)
    reg.run(h)
    assert done == ["b"]
    reg.run_all()
    reg.run_all()
    assert done == ["b", "c", "a"]
    assert len(reg.errors) == 1 and "boom" in reg.errors[0]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cleanup_runs_when_the_process_is_signalled(tmp_path, sig):
    marker = tmp_path / "undone"
    code = textwrap.dedent(f"""
        import sys, time
        from llmrca.testbed.cleanup import CleanupRegistry
        reg = CleanupRegistry()
        reg.install()
        reg.register(lambda: open({str(marker)!r}, "w").write("ok"), "undo")
        print("ready", flush=True)
        time.sleep(30)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        p.send_signal(sig)
        p.wait(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
    assert marker.read_text() == "ok"


class _FakeHost:
    def __init__(self, tmp_path):
        from llmrca.testbed.procs import Containment

        self.state = {"ports": {}, "real_gpus": {}}
        self.containment = Containment("none")
        self.scaling = scaling(TestbedConfig(), Machine(2, 24 * GIB, 20 * GIB))
        self.members: dict[str, list[int]] = {}
        self.tmp = tmp_path

    def service_pids(self, service):
        return []

    def attach(self, service, pid):
        self.members.setdefault(service, []).append(pid)

    def detach(self, service, pid):
        self.members[service].remove(pid)

    def out_path(self, name):
        return self.tmp / f"{name}.out"


@pytest.mark.parametrize("fault", ["cpu", "memory"])
def test_stress_injector_is_undone_with_every_process_it_started(tmp_path, fault):
    import psutil

    from llmrca.testbed.injectors import Injector, plan

    host = _FakeHost(tmp_path)
    # load 20 %: keep the shared test machine usable
    params = {"size_gb": 0.2} if fault == "memory" else {"load": 20}
    live = plan(fault, "r1", params, "a100-80gb", host.scaling, time.time(), time.time() + 30,
                available_bytes=20 * GIB)
    inj = Injector(host, live, end=time.time() + 30)
    inj.apply()
    try:
        root = host.members["r1"][0]
        deadline = time.time() + 10
        kids = []
        while time.time() < deadline and not kids:
            kids = psutil.Process(root).children(recursive=True)
            time.sleep(0.1)
        everyone = [root, *(k.pid for k in kids)]
        assert kids, "the stressor started no worker"
    finally:
        inj.undo()
    inj.undo()  # idempotent
    assert host.members["r1"] == []
    for pid in everyone:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_replica_kill_injector_kills_and_restarts_through_the_host(tmp_path):
    from llmrca.testbed.injectors import Injector, plan

    calls = []

    class Host(_FakeHost):
        def kill_engine(self, service, restart_after_s):
            calls.append(("kill", service, restart_after_s))
            return 4242

        def ensure_engine(self, service):
            calls.append(("ensure", service))

    live = plan("replica-kill", "r1", {"load_s": 5.0}, "a100", Host(tmp_path).scaling, 0.0, 30.0)
    assert [p.cause for p in live.effects] == ["process_kill"] and live.recorded() == {"load_s": 5.0}
    inj = Injector(Host(tmp_path), live, end=time.time() + 30)
    inj.apply()
    inj.undo()
    inj.undo()  # idempotent
    assert calls == [("kill", "r1", 5.0), ("ensure", "r1")] and inj.notes["killed_pid"] == 4242


def test_engine_power_is_read_from_its_metrics_text():
    from llmrca.testbed.injectors import power_in_exposition

    text = ('# HELP DCGM_FI_DEV_POWER_USAGE x\n# TYPE DCGM_FI_DEV_POWER_USAGE gauge\n'
            'DCGM_FI_DEV_POWER_USAGE{gpu="0",modelName="a100-80gb"} 211.5\n')
    assert power_in_exposition(text, "engine") == 211.5
    with pytest.raises(FaultParamError, match="draw is unknown"):
        power_in_exposition("vllm:num_requests_running 1\n", "engine")


def test_live_parameters_scale_to_the_machine():
    from llmrca.testbed.injectors import MECHANISMS, live_faults, plan

    def live(fault, params=None, sc=None, gpu="a100", free=20 * GIB, draw=None):
        return plan(fault, "r1", params, gpu, sc or small, 0.0, 60.0, available_bytes=free,
                    power_draw_w=draw).recorded()

    small = scaling(TestbedConfig(), Machine(2, 24 * GIB, 20 * GIB))
    assert small.pod_cpu == pytest.approx(0.4) and small.cpu_factor == pytest.approx(0.05)
    big = scaling(TestbedConfig(), Machine(128, 1024 * GIB, 900 * GIB))
    assert big.pod_cpu == 8.0 and big.pod_memory_bytes == 16 * GIB  # the study's pods, no larger
    # Every registry fault whose causes have a mechanism is live, replica-kill included; names are the causes'.
    assert set(live_faults()) >= {"cpu", "memory", "network", "gpu", "replica-kill"}
    assert set(MECHANISMS) <= set(faults.CAUSES)
    cpu = live("cpu")
    assert cpu["workers"] == 1 and cpu["load"] == 100 and cpu["machine"]["cpu_stress"]["pod_cpu"] == 0.4
    assert live("cpu", sc=big)["workers"] == 16
    mem = live("memory")
    assert mem["bytes"] == int(8e9 * small.memory_factor) and not mem["machine"]["memory_hog"]["capped_by_free_memory"]
    tight = live("memory", free=GIB)
    assert tight["bytes"] == int(0.3 * GIB) and tight["machine"]["memory_hog"]["capped_by_free_memory"]
    assert live("network") == {"latency_s": 1.0, "jitter_s": 0.1, "correlation": 0.25}
    assert live("gpu") == {"watts": 150.0}
    with pytest.raises(FaultParamError, match="power_limit_w.*nvidia-smi -pl would refuse"):
        live("gpu", gpu="h100")  # 150 W is below an H100's minimum
    assert live("gpu", {"power_limit_frac": 0.375}, gpu="h100")["watts"] == 262.5
    # A cap relative to the engine's draw: half-way from its 212 W to the study's 150 W.
    rel = live("gpu", {"depth": 0.5}, draw=lambda: 212.0)
    assert rel["watts"] == pytest.approx(181.0) and rel["basis"] == {"depth": 0.5, "power_draw_w": 212.0}
    with pytest.raises(UnknownNameError):
        live("cpu", {"threads": 3})
    with pytest.raises(UnknownNameError):
        live("replica-kill", {"nope": 1})
    assert live("replica-kill", {"load_s": 8.0}) == {"load_s": 8.0}
    with pytest.raises(TestbedConfigError, match="deploy.rate_window"):
        TestbedConfig(deploy=DeployConfig(step=5.0, rate_window=5.0))
    with pytest.raises(UnknownNameError):
        TestbedConfig.from_dict({"replica": 3})
    with pytest.raises(UnknownNameError, match="deploy"):
        TestbedConfig.from_dict({"replicas": 3})  # a deployment field belongs to the deploy config


def test_pod_limits_follow_the_deployment_and_are_scaled_only_when_asked():
    small = Machine(2, 24 * GIB, 20 * GIB)
    half = scaling(TestbedConfig(deploy=DeployConfig(pod_cpu=4.0, pod_memory_gib=8.0)),
                   Machine(128, 1024 * GIB, 900 * GIB))
    assert (half.pod_cpu, half.pod_memory_bytes, half.cpu_factor) == (4.0, 8 * GIB, 1.0)
    fixed = scaling(TestbedConfig(deploy=DeployConfig(pod_cpu=2.0), scale_pods=False), small)
    assert fixed.pod_cpu == 2.0 and fixed.cpu_factor == 1.0 and fixed.pod_memory_bytes == 16 * GIB
    scaled = scaling(TestbedConfig(deploy=DeployConfig(pod_cpu=2.0)), small)
    assert scaled.pod_cpu == pytest.approx(0.4) and scaled.cpu_factor == pytest.approx(0.2)
    from llmrca.testbed.config import Scaling

    assert Scaling.from_dict(scaled.to_dict()) == scaled


def test_testbed_config_round_trips_through_its_dict():
    cfg = TestbedConfig(deploy=DeployConfig(replicas=2, step=1.0, rate_window=5.0), load=False, seed=4)
    assert TestbedConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["deploy"] == cfg.deploy.to_dict()  # the simulator's config of the same deployment


def test_nvidia_smi_command_for_real_gpus():
    from llmrca.testbed.injectors import nvidia_smi_power_limit

    assert nvidia_smi_power_limit("1", 150.0) == ["nvidia-smi", "-i", "1", "-pl", "150"]


# -- small pieces ---------------------------------------------------------------------------------------------


def test_router_policies():
    from llmrca.testbed.proxy_server import Router

    r = Router(["a", "b", "c"], "least-loaded", np.random.default_rng(0))
    r.ongoing.update({"a": 3, "b": 1, "c": 2})
    assert r.choose(0.0) == "b"
    r.down_until["b"] = 10.0
    assert r.choose(5.0) == "c" and r.choose(11.0) == "b"
    rr = Router(["a", "b"], "round-robin", np.random.default_rng(0))
    assert [rr.choose(0.0) for _ in range(4)] == ["a", "b", "a", "b"]
    r.down_until.update({"a": 99.0, "b": 99.0, "c": 99.0})
    assert r.choose(0.0) is None


def test_campaign_plan_and_time_parsing():
    from llmrca.testbed.campaign import Timing, plan
    from llmrca.testbed.cli import parse_time

    p = plan(["cpu", "gpu"], ["r0", "r1"], 2)
    assert p[:4] == [("cpu", "r0", 0), ("cpu", "r1", 0), ("gpu", "r0", 0), ("gpu", "r1", 0)] and len(p) == 8
    assert Timing().per_case == 240.0
    with pytest.raises(LlmrcaError):
        Timing(normal=0)
    assert parse_time("5m", now=1000.0) == 700.0 and parse_time("1712345678") == 1712345678.0
    with pytest.raises(LlmrcaError, match="cannot read time"):
        parse_time("yesterday")


def test_scrape_config_is_loopback_only():
    from llmrca.testbed.prometheus import command, duration, scrape_config

    text = scrape_config(1.0, {"vllm": [(1234, {"service": "ray-head"})]})
    assert "scrape_interval: 1s" in text and "scrape_timeout: 800ms" in text
    assert '"127.0.0.1:1234"' in text
    assert duration(0.25) == "250ms" and duration(2.0) == "2s"
    assert "--web.listen-address=127.0.0.1:9" in command("prometheus", "c", "d", 9)


def test_nginx_config_listens_on_loopback(tmp_path):
    from llmrca.testbed.nginx import config

    text = config(tmp_path, 8080, 8081, 60.0, tmp_path / "a.log", tmp_path / "e.log")
    listens = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("listen")]
    assert listens == ["listen 127.0.0.1:8080;"]
    assert "proxy_set_header traceparent" in text and "proxy_buffering off" in text


def test_down_on_a_missing_testbed_says_what_to_do(tmp_path):
    from llmrca.testbed import control
    from llmrca.testbed.rundir import TestbedError

    with pytest.raises(TestbedError, match="llmrca testbed up"):
        control.down(tmp_path / "nothing")
    with pytest.raises(TestbedError, match="llmrca testbed up"):
        control.status(tmp_path / "nothing")


def test_free_ports_are_distinct_and_loopback():
    from llmrca.testbed.rundir import free_ports, port_open

    ports = free_ports(5)
    assert len(set(ports)) == 5
    assert not any(port_open(p) for p in ports)


def test_environment_does_not_leak(monkeypatch, tmp_path):
    from llmrca.testbed.rundir import ENV_VAR, RunDir

    monkeypatch.setenv(ENV_VAR, str(tmp_path / "tb"))
    assert RunDir().path == tmp_path / "tb"
    assert os.environ[ENV_VAR] == str(tmp_path / "tb")


def test_a_relative_run_folder_is_made_absolute(tmp_path, monkeypatch):
    """nginx and the engines resolve paths against their own prefix or working folder: the run folder a user names
    relative to the shell's folder reaches them absolute."""
    from llmrca.testbed.rundir import RunDir

    monkeypatch.chdir(tmp_path)
    rd = RunDir("runs/tb")
    assert rd.path.is_absolute() and rd.path == tmp_path / "runs" / "tb"
