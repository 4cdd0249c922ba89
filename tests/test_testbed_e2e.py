"""End to end on the live testbed: up, one fault injected, the case collected from real Prometheus, spans and logs,
the target's working set rises by about the hog's size and BARO ranks it first, the simulator's case of the same
deployment and fault has the same metric columns, log templates and span attributes, a CLI killed mid-fault leaves
nothing behind, down leaves no process or port.

Needs the Debian packages prometheus and nginx (and the `testbed` extra); skipped with the reason otherwise. It waits
on events (Prometheus holds the data, the fault has ended), never on fixed sleeps, so a loaded machine makes it slower,
not flaky: about 2-3 minutes of wall time, little CPU (a light load: 2 req/s of short answers).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from _live import rows as _rows
from _live import tree as _tree
from _live import wait as _wait

pytest.importorskip("aiohttp", reason="the testbed extra is not installed (pip install -e '.[testbed]')")
pytest.importorskip("prometheus_client", reason="the testbed extra is not installed (pip install -e '.[testbed]')")
pytest.importorskip("opentelemetry.sdk", reason="the testbed extra is not installed (pip install -e '.[testbed]')")

from llmrca.testbed.nginx import nginx_binary
from llmrca.testbed.prometheus import prometheus_binary

pytestmark = pytest.mark.skipif(
    prometheus_binary() is None or nginx_binary() is None or os.environ.get("LLMRCA_SKIP_TESTBED") == "1",
    reason="the live testbed needs the Debian packages prometheus and nginx (apt-get install -y prometheus nginx "
           "stress-ng); LLMRCA_SKIP_TESTBED=1 skips it",
)

TARGET = "ray-replicas-1"
BASELINE_ROWS = 20  # scrapes of the target before the fault (the study's 5 min at 5 s is 60)
FAULT_S = 15.0
AFTER_ROWS = 8  # scrapes after the fault was undone


def _memory_rise(obs, rec) -> dict[str, float]:
    """Per service: the working set's 90th percentile while the fault held minus its median before. (A hog
    touches its pages over several seconds, more on a loaded machine: a median of the fault's window measured
    half the hog once; the plateau it reaches is the signal.)"""
    t = obs.metrics["time"].to_numpy()
    start, end = rec["inject_time"], rec["undone_at"]
    before, during = t < start, (t >= start + 5.0) & (t <= end - 2.0)
    out = {}
    for c in obs.metrics.columns:
        if c.endswith("_ctn_memory"):
            v = obs.metrics[c]
            out[c[: -len("_ctn_memory")]] = float(v[during].quantile(0.9) - v[before].median())
    return out


@pytest.mark.timeout(1200)
def test_live_testbed_end_to_end(tmp_path):
    from llmrca.case.views import select_view
    from llmrca.io import load_case, save_case
    from llmrca.methods import get_method
    from llmrca.testbed import control
    from llmrca.testbed.collector import collect_case
    from llmrca.testbed.config import TestbedConfig

    run_dir = tmp_path / "tb"
    from llmrca.deploy import DeployConfig

    # The testbed's 1 s scrapes and 5 s windows (the live scenario's), not the study's 5 s / 15 s.
    cfg = TestbedConfig(deploy=DeployConfig(rate=2.0, prompt_tokens=256, output_tokens=64, step=1.0, rate_window=5.0),
                        model_load_s=2.0, seed=1)
    started: list[psutil.Process] = []
    try:
        st = control.up(cfg, run_dir, detach=False, timeout=300)  # generous: a loaded machine starts slowly
        sup = st["supervisor"]["pid"]
        started = _tree(sup)
        assert len(started) >= 9  # supervisor, 4 engines, proxy, mesh, nginx (+ worker), Prometheus, load

        # Nothing listens on a non-loopback address.
        listening = [c for p in started for c in _connections(p) if c.status == psutil.CONN_LISTEN]
        assert listening and all(c.laddr.ip == "127.0.0.1" for c in listening), listening

        # Wait on events, not the clock: the load has reached the target and Prometheus holds its series, then a
        # full baseline of scrapes, then the fault (held to its end), then scrapes well past its end.
        step = cfg.deploy.step
        target_cols = [f"{TARGET}_ctn_memory", f"{TARGET}_latency"]
        # (each poll is one collection from Prometheus: every 2 s, so the test adds little load of its own)
        assert _wait(lambda: _rows(run_dir, time.time() - 10 * step, target_cols) >= 5, 180, every=2.0), \
            "no load reached the target, or Prometheus never scraped it"
        t0 = time.time()
        assert _wait(lambda: _rows(run_dir, t0, target_cols) >= BASELINE_ROWS, 300, every=2.0), "no baseline in 300 s"
        rec = control.inject("memory", TARGET, FAULT_S, run_dir=run_dir)
        assert rec["status"] == "done" and rec["params"]["bytes"] > 0
        after = float(rec["undone_at"])
        assert _wait(lambda: _rows(run_dir, after, target_cols) >= AFTER_ROWS, 120, every=2.0), \
            "no scrapes after the fault"
        t1 = time.time()

        case = collect_case(run_dir, t0, t1, case_id="e2e")
        case.validate()
        obs = case.observation
        assert case.truth.service == TARGET and case.truth.fault_type == "memory"
        assert abs(obs.inject_time - rec["inject_time"]) < 1e-6
        for metric in ("ctn_cpu", "ctn_memory", "ctn_network", "ctn_gpu", "latency"):
            assert f"{TARGET}_{metric}" in obs.metrics.columns, metric
        for metric in ("num_requests_running", "power_usage", "time_to_first_token_seconds_p95"):
            assert f"{TARGET}_{metric}" in obs.metrics.columns, metric
        # one row per scrape step over the window (a loaded machine may miss a few scrapes, never add any)
        span = (t1 - t0) / step
        assert 0.8 * span <= len(obs.metrics) <= span + 2, (len(obs.metrics), span)
        ops = set(obs.traces["operation"])
        assert {"POST /v1/chat/completions", "proxy_http_request", "process_request", "llm_request"} <= ops
        one = obs.traces[obs.traces["trace_id"] == obs.traces["trace_id"].iloc[len(obs.traces) // 2]]
        assert one["parent_span_id"].isna().sum() == 1 and len(one) == 4  # gateway → proxy → call → engine
        assert set(obs.logs["service"]) >= {"nginx-proxy", "ray-head", TARGET}
        # no leak of the truth (as words: Ray Serve's app is called "default")
        assert not obs.logs["message"].str.contains(r"\b(?:stress|inject|fault)", case=False).any()

        # The signal the fault really makes: the target's working set rises by about the hog's size while it
        # holds, and no other service's does.
        rise = _memory_rise(obs, rec)
        hog = rec["params"]["bytes"]
        print(f"\nmemory hog {hog / 2**20:.0f} MiB; working-set rise per service (MiB): "
              + ", ".join(f"{s} {r / 2**20:.0f}" for s, r in sorted(rise.items())))
        assert 0.7 * hog <= rise[TARGET] <= 1.3 * hog, (rise[TARGET], hog)
        others = {s: r for s, r in rise.items() if s != TARGET}
        assert others and all(abs(r) < 0.1 * hog for r in others.values()), (others, hog)

        _same_telemetry_as_the_simulator(cfg, case)

        folder = save_case(case, tmp_path / "case")
        again = load_case(folder)
        assert again.truth.service == TARGET
        # BARO (robust z-scores against the baseline) on the study's feature set puts the target first: the hog
        # moves its working set by thousands of its baseline IQRs, far more than any other container or node series
        # (chance: 1 in ~7). The full view is left out: a histogram quantile flat in the baseline (IQR ~0) that
        # steps one bucket scores as high by BARO's rule, whatever the fault.
        ranking = get_method("baro").rank(select_view(again.observation, "study"), seed=0)
        print(f"baro (study view): {list(zip(ranking.candidates[:3], [round(x, 1) for x in ranking.scores[:3]]))}")
        assert ranking.services()[0] == TARGET, ranking.services()[:5]
        assert ranking.candidates[0] == f"{TARGET}_ctn_memory", ranking.candidates[:5]

        # A CLI killed while it holds a fault: the supervisor undoes the fault at once.
        env = dict(os.environ, LLMRCA_TESTBED_DIR=str(run_dir))
        cli = subprocess.Popen([sys.executable, "-m", "llmrca.cli", "testbed", "inject", "cpu", "--target", TARGET,
                                "--duration", "120"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            assert _wait(lambda: control.status(run_dir)["injections"], 120), "the fault never became active"
            stressors = [p for p in _tree(sup) if "stress" in " ".join(_cmdline(p))]
            assert stressors
            cli.send_signal(signal.SIGKILL)
            cli.wait(timeout=10)
            assert _wait(lambda: not control.status(run_dir)["injections"], 60), "the fault outlived its CLI"
            assert _wait(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in stressors), 60)
        finally:
            if cli.poll() is None:
                cli.kill()
        started = _tree(sup)
    finally:
        if (run_dir / "state.json").exists():
            report = control.down(run_dir)  # raises if it had to kill leftovers or a port stayed open
            assert report["open_ports"] == [] and report["killed_leftovers"] == []
    left = [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert left == [], [(p.pid, _cmdline(p)) for p in left]


def _kinds(logs) -> dict[str, set[str]]:
    """Catalogue line kind → the templates the case's lines of that kind carry."""
    from llmrca.deploy.telemetry import LINES

    out: dict[str, set[str]] = {}
    for msg, tmpl in zip(logs["message"], logs["template"]):
        for name, kind in LINES.items():
            if kind.match(msg) is not None:
                out.setdefault(name, set()).add(tmpl)
                break
    return out


def _same_telemetry_as_the_simulator(cfg, live) -> None:
    """The simulator's case of the same deployment, workload and fault: same metric columns per service (for the
    services both have), same template for every line kind both wrote, same span attributes per operation."""
    import dataclasses
    import json

    from llmrca.case import catalog as cat
    from llmrca.faults import Injection
    from llmrca.sim.run import simulate

    sc = dataclasses.replace(cfg.deploy, duration=120.0, warmup=10.0, inject_at=60.0)
    sim = simulate(sc, Injection("memory", TARGET), seed=cfg.seed).observation
    obs = live.observation

    def per_service(metrics) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for c in metrics.columns:
            if c != "time":
                svc, metric = c.split("_", 1)
                out.setdefault(svc, set()).add(metric)
        return out

    hist = {m.metric for m in cat.CATALOG if m.kind == "histogram"}
    s_cols, l_cols = per_service(sim.metrics), per_service(obs.metrics)
    common = sorted(set(s_cols) & set(l_cols))
    assert {"nginx-proxy", "ray-head", TARGET} <= set(common), common
    for svc in common:
        # a histogram that saw no observation in the window has no series on either side; nothing else may differ
        diff = s_cols[svc] ^ l_cols[svc]
        assert diff <= hist and len(diff) <= 4, (svc, sorted(s_cols[svc] - l_cols[svc]),
                                                 sorted(l_cols[svc] - s_cols[svc]))
    node_metrics = {m.metric for m in cat.CATALOG if m.scope == "node"}
    assert l_cols["node-local"] == node_metrics
    assert all(s_cols[n] == node_metrics for n in s_cols if n.startswith("node-"))

    s_kinds, l_kinds = _kinds(sim.logs), _kinds(obs.logs)
    both = set(s_kinds) & set(l_kinds)
    assert {"nginx.access", "serve.proxy_access", "serve.replica_access", "vllm.request_received",
            "vllm.request_added", "vllm.request_finished", "vllm.engine_stats"} <= both, (sorted(s_kinds),
                                                                                          sorted(l_kinds))
    for kind in both:
        assert s_kinds[kind] == l_kinds[kind], (kind, s_kinds[kind], l_kinds[kind])

    def keys(traces) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for op, a in zip(traces["operation"], traces["attributes"]):
            out.setdefault(op, set()).update(json.loads(a))
        return out

    s_keys, l_keys = keys(sim.traces), keys(obs.traces)
    assert set(s_keys) == set(l_keys)
    for op in s_keys:
        assert s_keys[op] == l_keys[op], (op, sorted(s_keys[op] ^ l_keys[op]))


def _connections(p: psutil.Process) -> list:
    try:
        return p.net_connections(kind="inet")
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []
