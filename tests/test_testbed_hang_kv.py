"""engine-hang and kv-cache-pressure on the live testbed: the emulated engine's /control/stall in a real engine
process, SIGSTOP/SIGCONT of a real engine's workers (a fake process tree), and a restart with --kv-cache-tokens
through the supervisor."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request

import psutil
from _live import src_env as _env

from llmrca.sim.hardware import GIB
from llmrca.testbed import auth
from llmrca.testbed import injectors as injmod
from llmrca.testbed.config import Machine, TestbedConfig, scaling
from llmrca.testbed.rundir import RunDir, port_open

HEAD = "ray-head"


def _run_dir(tmp_path):
    from llmrca.deploy import DeployConfig
    from llmrca.testbed.supervisor import CONFIG_FILE, plan_state

    rd = RunDir(tmp_path / "tb")
    rd.create()
    auth.create_token(rd.path)
    cfg = TestbedConfig(deploy=DeployConfig(replicas=1), seed=1)
    (rd.path / CONFIG_FILE).write_text(json.dumps({"config": cfg.to_dict()}), encoding="utf-8")
    state = plan_state(rd, cfg)
    state["otlp_endpoint"] = None
    rd.write_state(state)
    return rd, state


def _req(url: str, body: dict | None = None, headers: dict | None = None, timeout: float = 10.0) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    r = urllib.request.Request(url, data=data, method="POST" if body is not None else "GET",
                               headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(r, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)}\{{[^}}]*\}} ([0-9.eE+-]+)$", text, re.MULTILINE)
    assert m, name
    return float(m.group(1))


def _wait(cond, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _chat(url: str, words: int, answer: int, timeout: float = 60.0) -> threading.Thread:
    prompt = " ".join(["w"] * words) + f" Answer in {answer} words."

    def call() -> None:
        try:
            _req(url + "/v1/chat/completions", {"messages": [{"role": "user", "content": prompt}],
                                                 "max_tokens": answer}, None, timeout)
        except OSError:
            pass  # the engine went away under it (the test ends, or restarts it)

    th = threading.Thread(target=call, daemon=True)
    th.start()
    return th


def test_emulated_engine_stall_freezes_stepping_and_metrics_while_health_answers(tmp_path):
    rd, state = _run_dir(tmp_path)
    port = state["ports"][f"engine:{HEAD}"]
    url = f"http://127.0.0.1:{port}"
    token = {auth.HEADER: auth.read_token(rd.path), auth.INJECTION_HEADER: "engine-hang-ray-head-1"}
    p = subprocess.Popen([sys.executable, "-m", "llmrca.testbed.engine_server", str(rd.path), HEAD], env=_env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait(lambda: port_open(port), 30, "the engine's port")
        stall = url + "/control/stall"
        assert _req(stall, {"stalled": True, "expires_at": time.time() + 30})[0] == 401
        for bad in ({"stalled": True}, {"stalled": "yes", "expires_at": time.time() + 30},
                    {"stalled": True, "expires_at": float("inf")}):
            assert _req(stall, bad, token)[0] == 400, bad
        _chat(url, 50, 20000)  # one long answer, generating throughout
        _wait(lambda: _metric(_req(url + "/metrics")[1], "vllm:generation_tokens_total") > 0, 10, "tokens")
        code, st = _req(stall, {"stalled": True, "expires_at": time.time() + 60}, token)
        assert code == 200 and json.loads(st)["stalled"] is True
        time.sleep(1.5)  # the tick in flight closes
        before = _req(url + "/metrics")[1]
        time.sleep(2.5)
        after = _req(url + "/metrics")[1]
        for name in ("vllm:generation_tokens_total", "vllm:num_requests_running", "vllm:kv_cache_usage_perc",
                     "vllm:prompt_tokens_total"):
            assert _metric(after, name) == _metric(before, name), name
        assert _metric(after, "vllm:num_requests_running") == 1
        assert _req(url + "/health")[0] == 200  # the API server still answers
        assert rd.read_injections()[-1]["change"]["stalled"] is True
        code, st = _req(stall, {"stalled": False}, token)
        assert code == 200 and json.loads(st)["stalled"] is False
        _wait(lambda: _metric(_req(url + "/metrics")[1], "vllm:generation_tokens_total")
              > _metric(after, "vllm:generation_tokens_total"), 10, "generation to resume")
        # a stall ends by itself at its expiry, should the undo never come
        _req(stall, {"stalled": True, "expires_at": time.time() + 1.0}, token)
        _wait(lambda: json.loads(_req(url + "/control")[1])["stalled"] is False, 10, "the stall's expiry")
        # the injector's emulated branch: the endpoint, with the stall's end as its expiry
        host = _Host(tmp_path, None)
        host.state = {"ports": state["ports"], "run_dir": str(rd.path)}
        now = time.time()
        inj = injmod.Injector(host, injmod.plan("engine-hang", HEAD, {"stall_s": 30.0}, "a100", host.scaling, now,
                                                now + 60), end=now + 60, injection_id="engine-hang-ray-head-2")
        inj.apply()
        st = json.loads(_req(url + "/control")[1])
        assert st["stalled"] is True and abs(st["stall_expires_at"] - (now + 30.0)) < 2.0
        inj.undo()
        assert json.loads(_req(url + "/control")[1])["stalled"] is False
    finally:
        p.terminate()
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:  # a graceful stop waits for the long answer still streaming
            p.kill()
            p.wait(5)


class _Host:
    def __init__(self, tmp_path, api_pid):
        from llmrca.testbed.procs import Containment

        self.state = {"ports": {}, "real_gpus": {}, "engine": {"kind": "vllm"}}
        self.containment = Containment("none")
        self.scaling = scaling(TestbedConfig(), Machine(2, 24 * GIB, 20 * GIB))
        self.api_pid = api_pid

    def engine_pid(self, service):
        return self.api_pid


_TREE = textwrap.dedent("""
    import subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", '''
    import sys, time
    while True:
        open(sys.argv[1], "w").write(repr(time.monotonic()))
        time.sleep(0.02)
    ''', sys.argv[1]])
    print(child.pid, flush=True)
    while True:
        time.sleep(0.05)
""")


def _beats(path) -> bool:
    """The heartbeat file changes within half a second."""
    a = path.read_text()
    time.sleep(0.5)
    return path.read_text() != a


def test_real_engine_hang_stops_the_workers_and_always_continues_them(tmp_path, monkeypatch):
    """The real engine's branch on a fake process tree: an API-server-like parent whose child (the "worker")
    writes a heartbeat. SIGSTOP stops the child's heartbeat, not the parent; undo, the timer and the cleanup
    registry each continue it."""
    from llmrca.testbed.cleanup import CleanupRegistry

    beat = tmp_path / "beat"
    parent = subprocess.Popen([sys.executable, "-c", _TREE, str(beat)], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        _wait(lambda: beat.exists() and beat.read_text() != "", 10, "the first heartbeat")
        monkeypatch.setattr(injmod, "_worker_pids", lambda api: [c.pid for c in psutil.Process(api).children()])
        host = _Host(tmp_path, parent.pid)

        def hang(stall_s: float) -> injmod.Injector:
            now = time.time()
            live = injmod.plan("engine-hang", "r1", {"stall_s": stall_s}, "a100", host.scaling, now, now + 60)
            assert [p.cause for p in live.effects] == ["engine_stall"] and live.recorded() == {"stall_s": stall_s}
            inj = injmod.Injector(host, live, end=now + 60)
            inj.apply()
            return inj

        inj = hang(60.0)
        assert inj.notes["stopped_pids"] == [child] and "SIGSTOP" in inj.method
        assert psutil.Process(child).status() == psutil.STATUS_STOPPED
        assert psutil.Process(parent.pid).status() != psutil.STATUS_STOPPED  # the API server answers on
        assert not _beats(beat)
        inj.undo()
        inj.undo()  # idempotent
        assert _beats(beat)

        inj = hang(0.5)  # ends by itself
        _wait(lambda: psutil.Process(child).status() != psutil.STATUS_STOPPED, 10, "the timer's SIGCONT")
        assert _beats(beat)
        inj.undo()

        reg = CleanupRegistry()  # the supervisor stops: its registry undoes the fault
        inj = hang(60.0)
        reg.register(inj.undo, "undo hang")
        assert not _beats(beat)
        reg.run_all()
        assert _beats(beat)
    finally:
        for c in psutil.Process(parent.pid).children():
            c.resume()
            c.kill()
        parent.kill()
        parent.wait(10)


def test_restart_engine_with_a_small_kv_cache_preempts_under_load(tmp_path):
    from llmrca.testbed.supervisor import Managed, Supervisor

    rd, _ = _run_dir(tmp_path)
    sup = Supervisor(rd)
    sup.state["otlp_endpoint"] = None
    port = sup.state["ports"][f"engine:{HEAD}"]
    url = f"http://127.0.0.1:{port}"
    argv, env = sup.engine_argv(HEAD)
    assert argv[-2:] == [str(rd.path), HEAD] and env is None
    assert sup.engine_argv(HEAD, 2048)[0][-2:] == ["--kv-cache-tokens", "2048"]
    m = sup.procs[f"engine:{HEAD}"] = Managed(f"engine:{HEAD}", HEAD, argv, port, restart_after_s=0.5)

    def kv() -> int:
        return json.loads(_req(url + "/control")[1])["kv_cache_tokens"]

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        monitor = asyncio.create_task(sup._monitor(stop))
        try:
            sup._start(m)
            await loop.run_in_executor(None, _wait, lambda: port_open(port), 30, "the engine")
            normal = kv()
            assert normal > 100_000
            # through the injector, as an injection does it: the supervisor is its host
            now = time.time()
            live = injmod.plan("kv-cache-pressure", HEAD, {"tokens": 2048, "load_s": 0.5}, "a100", sup.scaling,
                               now, now + 60)
            assert live.recorded() == {"tokens": 2048, "fraction": None, "load_s": 0.5}
            inj = injmod.Injector(sup, live, end=now + 60)
            old = m.popen.pid
            await loop.run_in_executor(None, inj.apply)
            assert inj.notes["restarted_pid"] == old and inj.notes["kv_cache_tokens"] == 2048
            await loop.run_in_executor(None, _wait, lambda: m.popen.pid != old and port_open(port), 30, "restart")
            assert kv() == 2048 and "--kv-cache-tokens" in m.argv
            threads = [_chat(url, 200, 200) for _ in range(6)]  # 6 x 400 tokens > 2,048
            for th in threads:
                await loop.run_in_executor(None, th.join, 60)
            await asyncio.sleep(1.5)  # the last tick reaches the counters
            assert _metric(_req(url + "/metrics")[1], "vllm:num_preemptions_total") > 0
            old = m.popen.pid
            await loop.run_in_executor(None, inj.undo)
            await loop.run_in_executor(None, _wait, lambda: m.popen.pid != old and port_open(port), 30, "restart")
            assert kv() == normal and "--kv-cache-tokens" not in m.argv
            log = rd.log(f"engine-{HEAD}").read_text()
            assert "GPU KV cache size: 2,048 tokens" in log and "is preempted by" not in log
            assert "died unexpectedly" not in rd.log("controller").read_text()
        finally:
            stop.set()
            await monitor
            sup._stop_children()

    asyncio.run(scenario())
