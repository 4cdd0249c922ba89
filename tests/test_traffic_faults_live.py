"""prompt-surge, proxy-overload and routing-skew on the live testbed (emulated engine): the Serve-like proxy's
capacity and routing controls and the load generator's surge control in real processes, their token, their
self-expiry, the injectors that drive them, and the workload node in the live topology."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from _live import src_env as _env
from _live import wait

from llmrca import faults
from llmrca.errors import UnknownNameError
from llmrca.faults import FaultParamError
from llmrca.sim.hardware import GIB
from llmrca.testbed import auth
from llmrca.testbed import injectors as injmod
from llmrca.testbed.config import Machine, TestbedConfig, scaling
from llmrca.testbed.rundir import RunDir, port_open

HEAD, HOT = "ray-head", "ray-replicas-0"


def _run_dir(tmp_path, **deploy):
    from llmrca.deploy import DeployConfig
    from llmrca.testbed.supervisor import CONFIG_FILE, plan_state

    rd = RunDir(tmp_path / "tb")
    rd.create()
    auth.create_token(rd.path)
    cfg = TestbedConfig(deploy=DeployConfig(**deploy), seed=1)
    (rd.path / CONFIG_FILE).write_text(json.dumps({"config": cfg.to_dict()}), encoding="utf-8")
    state = plan_state(rd, cfg)
    state["otlp_endpoint"] = None
    rd.write_state(state)
    return rd, state


def _start(*argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", *argv], env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:  # only the processes this test started, by their handle
        p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def _req(url: str, body: dict | None = None, headers: dict | None = None, timeout: float = 30.0) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    r = urllib.request.Request(url, data=data, method="POST" if body is not None else "GET",
                               headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(r, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _metric(text: str, name: str, labels: str = "") -> float:
    """The value of series ``name`` (whose labels contain ``labels``) in an exposition; 0 when absent."""
    total = 0.0
    for m in re.finditer(rf"^{re.escape(name)}(\{{[^}}]*\}})? ([0-9.eE+-]+)$", text, re.MULTILINE):
        if labels in (m.group(1) or ""):
            total += float(m.group(2))
    return total


def _chat(url: str, answer: int = 4) -> float:
    """One chat completion through ``url``; the time it took."""
    t0 = time.time()
    code, _ = _req(url + "/v1/chat/completions", {"messages": [{"role": "user", "content": "w w w w Answer in "
                                                                 f"{answer} words."}], "max_tokens": answer})
    assert code == 200
    return time.time() - t0


def _parallel(url: str, n: int) -> list[float]:
    """``n`` chats sent at once; when each finished (s after the first was sent)."""
    t0 = time.time()
    done: list[float] = []
    lock = threading.Lock()

    def one() -> None:
        _chat(url)
        with lock:
            done.append(time.time() - t0)

    threads = [threading.Thread(target=one, daemon=True) for _ in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    return sorted(done)


class _Host:
    def __init__(self, state):
        from llmrca.testbed.procs import Containment

        self.state = state
        self.containment = Containment("none")
        self.scaling = scaling(TestbedConfig(), Machine(2, 24 * GIB, 20 * GIB))


def _injector(host, fault, target, params=None, seconds=60.0):
    now = time.time()
    live = injmod.plan(fault, target, params, "a100", host.scaling, now, now + seconds)
    return injmod.Injector(host, live, end=now + seconds, injection_id=f"{fault}-{target}-1")


@pytest.fixture
def proxy_testbed(tmp_path):
    """Two emulated engines, the mesh between them and the Serve-like proxy (no gateway, no load)."""
    rd, state = _run_dir(tmp_path, replicas=2)
    ports = state["ports"]
    procs = [_start("llmrca.testbed.engine_server", str(rd.path), r) for r in state["replicas"]]
    procs += [_start("llmrca.testbed.mesh", str(rd.path)), _start("llmrca.testbed.proxy_server", str(rd.path))]
    try:
        for name in ("engine:" + HEAD, "engine:" + HOT, "mesh", "proxy"):
            assert wait(lambda n=name: port_open(ports[n]), 60), name
        url = f"http://127.0.0.1:{ports['proxy']}"
        assert wait(lambda: _req(url + "/-/healthz")[0] == 200, 30)
        # both replicas healthy in the proxy's eyes (its health loop marks a replica up once /health answers)
        assert wait(lambda: _req(url + "/v1/chat/completions", {"messages": [{"role": "user", "content": "w"}],
                                                            "max_tokens": 1})[0] == 200, 90, every=1.0)
        assert wait(lambda: all(port_open(ports["engine:" + r]) for r in state["replicas"]), 30)
        time.sleep(2.5)  # the health loop's next round sees both
        _chat(url)  # every link warm
        yield rd, state, url
    finally:
        _stop(procs)


def test_proxy_capacity_queues_requests_in_the_proxy_and_expires_by_itself(proxy_testbed):
    rd, _state, url = proxy_testbed
    token = {auth.HEADER: auth.read_token(rd.path), auth.INJECTION_HEADER: "proxy-overload-ray-head-1"}
    cap = url + "/control/capacity"
    assert _req(cap, {"dispatch_s": 0.5, "expires_at": time.time() + 30})[0] == 401
    assert _req(cap, {"dispatch_s": 0.5, "expires_at": time.time() + 30}, {auth.HEADER: "x"})[0] == 403
    for bad in ({"dispatch_s": 0.5}, {"dispatch_s": "slow", "expires_at": time.time() + 30},
                {"dispatch_s": 0.5, "expires_at": float("inf")}, {"dispatch_s": -1, "expires_at": time.time() + 9}):
        code, _text = _req(cap, bad, token)
        assert code == 400, bad
    free = _parallel(url, 6)
    assert free[-1] < 2.0  # a free proxy dispatches them at once
    code, st = _req(cap, {"dispatch_s": 0.5, "expires_at": time.time() + 60}, token)
    assert code == 200 and json.loads(st)["capacity"] == {"dispatch_s": 0.5}
    capped = _parallel(url, 6)
    # one dispatch at a time, 0.5 s each: the sixth leaves the proxy's queue ~3 s after it arrived
    assert capped[-1] > 2.7 and capped[-1] - capped[0] > 2.0
    assert all(b - a > 0.3 for a, b in itertools.pairwise(capped))
    change = [r for r in rd.read_injections() if r.get("kind") == "control"][-1]
    assert change["service"] == HEAD and change["injection"] == "proxy-overload-ray-head-1"
    assert change["change"]["capacity"] == {"dispatch_s": 0.5}
    assert _req(cap, {"dispatch_s": None}, token)[0] == 200
    assert _parallel(url, 6)[-1] < 2.0
    # a cap ends by itself at its expiry, should the undo never come
    _req(cap, {"dispatch_s": 0.5, "expires_at": time.time() + 1.0}, token)
    assert wait(lambda: json.loads(_req(url + "/control")[1])["capacity"] is None, 10)
    assert [r for r in rd.read_injections() if r.get("kind") == "control"][-1]["reason"] == "expired"


def test_proxy_routing_pins_the_share_to_the_hot_replica(proxy_testbed):
    rd, _state, url = proxy_testbed
    token = {auth.HEADER: auth.read_token(rd.path)}
    routing = url + "/control/routing"
    assert _req(routing, {"replica": HOT, "share": 1.0, "expires_at": time.time() + 30})[0] == 401
    assert _req(routing, {"replica": "ray-replicas-7", "share": 1.0, "expires_at": time.time() + 30},
                token)[0] == 400
    assert _req(routing, {"replica": HOT, "share": 2.0, "expires_at": time.time() + 30}, token)[0] == 400

    def remote_calls() -> float:  # the proxy's mesh counter of calls to the remote replica
        return _metric(_req(url + "/metrics")[1], "istio_requests_total", f'destination_workload="{HOT}"')

    assert _req(routing, {"replica": HOT, "share": 1.0, "expires_at": time.time() + 60}, token)[0] == 200
    before = remote_calls()
    for _ in range(8):
        _chat(url)
    assert remote_calls() - before == 8  # every one of them on the hot replica
    assert _req(routing, {"replica": HEAD, "share": 1.0, "expires_at": time.time() + 60}, token)[0] == 200
    before = remote_calls()
    for _ in range(8):
        _chat(url)
    assert remote_calls() == before  # now all on the head's own
    _req(routing, {"replica": HEAD, "share": 1.0, "expires_at": time.time() + 1.0}, token)
    assert wait(lambda: json.loads(_req(url + "/control")[1])["routing"] is None, 10)


def test_the_injectors_drive_the_proxys_controls_and_undo_them(proxy_testbed):
    rd, state, url = proxy_testbed
    host = _Host({**state, "run_dir": str(rd.path)})
    inj = _injector(host, "proxy-overload", HEAD, {"max_rps": 4.0})
    assert inj.plan.recorded() == {"dispatch_s": 0.25}
    inj.apply()
    st = json.loads(_req(url + "/control")[1])
    assert st["capacity"] == {"dispatch_s": 0.25} and abs(st["capacity_expires_at"] - inj.end - 15.0) < 2.0
    inj.undo()
    assert json.loads(_req(url + "/control")[1])["capacity"] is None
    inj = _injector(host, "routing-skew", HEAD)
    inj.apply()
    assert json.loads(_req(url + "/control")[1])["routing"] == {"replica": HOT, "share": 0.8}
    assert inj.notes["hot_replica_name"] == HOT
    inj.undo()
    assert json.loads(_req(url + "/control")[1])["routing"] is None
    with pytest.raises(FaultParamError, match="'hot_replica': 5 is not a replica index .*ray-head, ray-replicas-0"):
        _injector(host, "routing-skew", HEAD, {"hot_replica": 5}).apply()


def test_the_load_generator_is_the_workload_node_and_surges_its_prompts(tmp_path):
    rd, state = _run_dir(tmp_path, replicas=2, workload_node=True, rate=8.0, users=50, prompt_tokens=64,
                         output_tokens=8)
    from llmrca.testbed.collector import topology_of

    topo = topology_of(state)
    assert state["client"] == "loadgen" and ("loadgen", "nginx-proxy") in topo.edges
    assert faults.get("prompt-surge").target_services(topo) == ["loadgen"]
    assert "loadgen" not in state["services"]  # no container of the deployment: no cgroup, no container series
    url = f"http://127.0.0.1:{state['ports']['loadgen']}"
    token = {auth.HEADER: auth.read_token(rd.path), auth.INJECTION_HEADER: "prompt-surge-loadgen-1"}
    # no gateway listens: every request fails fast, and the client counts what it sent and what failed
    p = _start("llmrca.testbed.loadgen", str(rd.path))
    try:
        assert wait(lambda: port_open(state["ports"]["loadgen"]), 30)

        def counts() -> tuple[float, float, float]:
            text = _req(url + "/metrics")[1]
            return (_metric(text, "loadgen_requests_total"), _metric(text, "loadgen_prompt_tokens_total"),
                    _metric(text, "loadgen_request_failures_total"))

        assert wait(lambda: counts()[0] >= 10, 30)
        time.sleep(1.0)
        n0, tok0, _ = counts()
        time.sleep(3.0)
        n1, tok1, fail1 = counts()
        usual = (tok1 - tok0) / (n1 - n0)
        assert 40 < usual < 90 and fail1 > 0
        surge = url + "/control/surge"
        assert _req(surge, {"factor": 8.0, "share": 1.0, "expires_at": time.time() + 30})[0] == 401
        for bad in ({"factor": 8.0, "share": 1.0}, {"factor": 0.5, "share": 1.0, "expires_at": time.time() + 9},
                    {"factor": 8.0, "share": None, "expires_at": time.time() + 9}):
            assert _req(surge, bad, token)[0] == 400, bad
        host = _Host({**state, "run_dir": str(rd.path)})
        inj = _injector(host, "prompt-surge", "loadgen")
        inj.apply()
        assert json.loads(_req(url + "/control")[1])["surge"] == {"factor": 8.0, "share": 1.0}
        n2, tok2, _ = counts()
        time.sleep(3.0)
        n3, tok3, _ = counts()
        assert (tok3 - tok2) / (n3 - n2) > 6 * usual  # x8, the same request rate
        assert abs((n3 - n2) - (n1 - n0)) <= 0.5 * (n1 - n0) + 3
        inj.undo()
        assert json.loads(_req(url + "/control")[1])["surge"] is None
        n4, tok4, _ = counts()
        time.sleep(2.0)
        n5, tok5, _ = counts()
        assert (tok5 - tok4) / (n5 - n4) < 1.5 * usual
        _req(surge, {"factor": 4.0, "share": 0.5, "expires_at": time.time() + 1.0}, token)
        assert wait(lambda: json.loads(_req(url + "/control")[1])["surge"] is None, 10)
        assert [r for r in rd.read_injections() if r.get("kind") == "control"][-1]["reason"] == "expired"
    finally:
        _stop([p])


def test_a_surge_needs_the_workload_node(tmp_path):
    rd, state = _run_dir(tmp_path, replicas=2)
    from llmrca.testbed.collector import topology_of

    assert "client" not in state and "loadgen" not in state["ports"]
    with pytest.raises(UnknownNameError, match="no workload node"):
        faults.get("prompt-surge").check_target("loadgen", topology_of(state))
    host = _Host({**state, "run_dir": str(rd.path)})
    with pytest.raises(FaultParamError, match="runs no loadgen control .*workload_node = true"):
        _injector(host, "prompt-surge", "loadgen").apply()
    assert {"prompt-surge", "proxy-overload", "routing-skew"} <= set(injmod.live_faults())


def test_a_campaign_runs_each_traffic_fault_on_its_own_target(tmp_path):
    from llmrca.testbed.campaign import own_targets

    _, state = _run_dir(tmp_path, replicas=2)
    assert own_targets("cpu", state) is None  # a replica fault: the campaign's targets
    assert own_targets("proxy-overload", state) == own_targets("routing-skew", state) == [HEAD]
    with pytest.raises(UnknownNameError, match="no workload node"):
        own_targets("prompt-surge", state)
    _, state = _run_dir(tmp_path / "w", replicas=2, workload_node=True)
    assert own_targets("prompt-surge", state) == ["loadgen"]
