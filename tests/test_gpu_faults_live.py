"""gpu-xid, gpu-ecc and gpu-thermal on the live testbed's emulated engine: its /control/gpu-fault (the Xid in the
node's kernel log and the GPU's error state, the engine's own death path), the supervisor holding it down and the
undo bringing it back, /control/cooling with its expiry; and the refusal on the real vLLM engine."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from _live import src_env as _env

from llmrca.faults import FaultParamError
from llmrca.testbed import auth, gpu_ras
from llmrca.testbed import injectors as injmod
from llmrca.testbed.config import TestbedConfig
from llmrca.testbed.rundir import RunDir, port_open

HEAD = "ray-head"


def _run_dir(tmp_path, **deploy):
    from llmrca.deploy import DeployConfig
    from llmrca.testbed.supervisor import CONFIG_FILE, plan_state

    rd = RunDir(tmp_path / "tb")
    rd.create()
    auth.create_token(rd.path)
    cfg = TestbedConfig(deploy=DeployConfig(replicas=1, **deploy), seed=1)
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


def _engine(rd) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "llmrca.testbed.engine_server", str(rd.path), HEAD], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def test_emulated_gpu_fault_logs_the_xid_and_the_engine_dies_its_own_way(tmp_path):
    rd, state = _run_dir(tmp_path)
    port = state["ports"][f"engine:{HEAD}"]
    url = f"http://127.0.0.1:{port}"
    token = {auth.HEADER: auth.read_token(rd.path), auth.INJECTION_HEADER: "gpu-ecc-ray-head-1"}
    p = _engine(rd)
    try:
        _wait(lambda: port_open(port), 30, "the engine's port")
        fault = url + "/control/gpu-fault"
        assert _req(fault, {"xid": 94})[0] == 401  # the run's token
        for bad in ({"xid": 43}, {"xid": True}, {"xid": "94"}, [94]):
            assert _req(fault, bad, token)[0] == 400, bad
        code, body = _req(fault, {"xid": 94}, token)
        assert code == 200 and json.loads(body)["exiting"] is True
        assert p.wait(10) == 1  # the API server exits on EngineDeadError
        node = [json.loads(x) for x in rd.log("node").read_text().splitlines()]
        assert len(node) == 1 and node[0]["service"] == state["node"] and node[0]["kind"] == "kernel.xid"
        assert ": 94, " in node[0]["message"] and "Contained" in node[0]["message"]
        eng = rd.log(f"engine-{HEAD}").read_text()
        assert "RuntimeError: CUDA error: uncorrectable ECC error encountered" in eng
        assert "EngineDeadError: EngineCore encountered an issue." in eng
        assert gpu_ras.read(rd.path, HEAD) == {"xid": 94, "dbe": 1, "remapped_rows": 0, "remap_pending": 1}
        assert rd.read_injections()[-1]["change"] == {"xid": 94}
        # the GPU's errors outlive the process: the restarted engine's DCGM fields show them
        p = _engine(rd)
        _wait(lambda: port_open(port), 30, "the restarted engine")
        _wait(lambda: "DCGM_FI_DEV_XID_ERRORS{" in _req(url + "/metrics")[1], 10, "the DCGM fields")
        text = _req(url + "/metrics")[1]
        assert _metric(text, "DCGM_FI_DEV_XID_ERRORS") == 94 and _metric(text, "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL") == 1
        assert _metric(text, "DCGM_FI_DEV_ROW_REMAP_PENDING") == 1
        gpu_ras.reset(rd.path, HEAD)  # a GPU reset performs the remap and clears the volatile count
        _wait(lambda: _metric(_req(url + "/metrics")[1], "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS") == 1, 10,
              "the remap after the reset")
        assert _metric(_req(url + "/metrics")[1], "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL") == 0
    finally:
        _stop(p)


def test_emulated_cooling_takes_a_factor_with_its_expiry_and_the_injector_undoes_it(tmp_path):
    rd, state = _run_dir(tmp_path)
    port = state["ports"][f"engine:{HEAD}"]
    url = f"http://127.0.0.1:{port}"
    token = {auth.HEADER: auth.read_token(rd.path), auth.INJECTION_HEADER: "gpu-thermal-ray-head-1"}
    p = _engine(rd)
    try:
        _wait(lambda: port_open(port), 30, "the engine's port")
        cool = url + "/control/cooling"
        assert _req(cool, {"r_factor": 4.0, "expires_at": time.time() + 30})[0] == 401
        for bad in ({"r_factor": 4.0}, {"r_factor": 0.5, "expires_at": time.time() + 30},
                    {"r_factor": float("nan"), "expires_at": time.time() + 30}, {"r_factor": "4"}):
            assert _req(cool, bad, token)[0] == 400, bad
        code, body = _req(cool, {"r_factor": 4.0, "expires_at": time.time() + 1.5}, token)
        assert code == 200 and json.loads(body)["cooling_r_factor"] == 4.0
        # a degraded cooling ends by itself at its expiry, should the undo never come
        _wait(lambda: json.loads(_req(url + "/control")[1])["cooling_r_factor"] == 1.0, 10, "the expiry")
        assert "DCGM_FI_DEV_THERMAL_VIOLATION{" in _req(url + "/metrics")[1]

        class Host:
            def __init__(self) -> None:
                self.state = {"ports": state["ports"], "run_dir": str(rd.path), "engine": {"kind": "emulated"}}

        now = time.time()
        live = injmod.plan("gpu-thermal", HEAD, {"r_factor": 6.0}, "a100", None, now, now + 60)
        assert live.recorded() == {"r_factor": 6.0, "ramp_s": 0.0}
        inj = injmod.Injector(Host(), live, end=now + 60, injection_id="gpu-thermal-ray-head-2")
        inj.apply()
        st = json.loads(_req(url + "/control")[1])
        assert st["cooling_r_factor"] == 6.0 and abs(st["cooling_expires_at"] - (now + 60 + injmod.SAFETY_MARGIN_S)) < 2
        inj.undo()
        assert json.loads(_req(url + "/control")[1])["cooling_r_factor"] == 1.0
    finally:
        _stop(p)


def test_gpu_xid_through_the_supervisor_holds_the_replica_down_and_the_undo_brings_it_back(tmp_path):
    from llmrca.testbed.supervisor import Managed, Supervisor

    rd, _ = _run_dir(tmp_path)
    sup = Supervisor(rd)
    sup.state["otlp_endpoint"] = None
    sup.rd.write_state(sup.state)
    port = sup.state["ports"][f"engine:{HEAD}"]
    argv, _ = sup.engine_argv(HEAD)
    m = sup.procs[f"engine:{HEAD}"] = Managed(f"engine:{HEAD}", HEAD, argv, port, restart_after_s=0.5)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        monitor = asyncio.create_task(sup._monitor(stop))
        try:
            sup._start(m)
            await loop.run_in_executor(None, _wait, lambda: port_open(port), 30, "the engine")
            # cordoned: the engine dies by itself and stays down until the undo
            now = time.time()
            live = injmod.plan("gpu-xid", HEAD, {"cordon": 1}, "a100", sup.scaling, now, now + 60)
            assert live.recorded() == {"xid": 79, "recover_s": 120.0, "load_s": 30.0, "cordoned": 1}
            inj = injmod.Injector(sup, live, end=now + 60, injection_id="gpu-xid-ray-head-1")
            old = m.popen.pid
            await loop.run_in_executor(None, inj.apply)
            assert inj.notes["held_pid"] == old
            await loop.run_in_executor(None, _wait, lambda: m.popen.poll() is not None, 10, "the engine's death")
            assert m.popen.returncode == 1  # its own exit, not a SIGKILL
            await asyncio.sleep(2.0)
            assert m.popen.poll() is not None and not port_open(port)  # held down (cordoned)
            assert "GPU has fallen off the bus." in rd.log("node").read_text()
            assert "died unexpectedly" in rd.log("controller").read_text()
            assert gpu_ras.read(rd.path, HEAD)["xid"] == 79
            await loop.run_in_executor(None, inj.undo)
            await loop.run_in_executor(None, _wait, lambda: m.popen.pid != old and port_open(port), 30, "restart")
            assert gpu_ras.read(rd.path, HEAD) == gpu_ras.HEALTHY  # the GPU replaced: healthy again
            # not cordoned: restarted by the supervisor after recover_s + load_s, the injection lasts as long
            now = time.time()
            live = injmod.plan("gpu-xid", HEAD, {"recover_s": 1.0, "load_s": 1.0}, "a100", sup.scaling, now, now + 1)
            inj = injmod.Injector(sup, live, end=now + 1, injection_id="gpu-xid-ray-head-2")
            old = m.popen.pid
            await loop.run_in_executor(None, inj.apply)
            assert inj.end >= now + 2.0
            await loop.run_in_executor(None, _wait, lambda: m.popen.poll() is not None or m.popen.pid != old, 10,
                                       "the death")
            t_dead = time.time()
            await loop.run_in_executor(None, _wait, lambda: m.popen.pid != old and port_open(port), 30, "restart")
            assert time.time() - t_dead >= 1.0
            await loop.run_in_executor(None, inj.undo)
        finally:
            stop.set()
            await monitor
            sup._stop_children()

    asyncio.run(scenario())


def test_the_real_engine_refuses_gpu_faults_with_the_reason():
    cpu_host = {"config": {"deploy": {"engine": "vllm"}}, "real_gpus": {}}
    gpu_host = {"config": {"deploy": {"engine": "vllm"}}, "real_gpus": {HEAD: "0"}}
    for fid in ("gpu-xid", "gpu-ecc", "gpu-thermal"):
        with pytest.raises(FaultParamError, match="runs on CPU here"):
            injmod.plan(fid, HEAD, {}, "a100", None, 0.0, 60.0, state=cpu_host)
        with pytest.raises(FaultParamError, match="refused on a real GPU: no honest mechanism"):
            injmod.plan(fid, HEAD, {}, "a100", None, 0.0, 60.0, state=gpu_host)


def test_the_live_engines_gpu_model_heats_and_throttles_with_degraded_cooling():
    """The emulated engine's GPU model on a virtual clock: the cooling factor set live drives the same thermal
    control as the simulator (temperature to the target, SW thermal slowdown, a lower clock), and back."""
    from llmrca.sim.hardware import gpu_kind, model_spec
    from llmrca.testbed.realtime import RealtimeEngine

    now = [0.0]
    rt = RealtimeEngine(HEAD, gpu=gpu_kind("a100"), model=model_spec("7b"), max_num_seqs=256,
                        max_num_batched_tokens=2048, block_size=16, gpu_memory_utilization=0.9,
                        shared_prefix_tokens=32, clock=lambda: now[0], measure_cpu=False)

    def run_for(seconds: float) -> list[dict]:
        end = now[0] + seconds
        while now[0] < end:
            if len(rt.engine.running) + len(rt.engine.waiting) < 24:  # keep it decoding a busy batch
                rt.submit(512, 256, 600.0)
            now[0] += 0.05
            rt.poll()
        return rt.drain_ticks(keep=10_000)

    healthy = run_for(60.0)
    assert max(r["thermal"] for r in healthy) == 0 and healthy[-1]["temp"] < 70
    with pytest.raises(ValueError, match="r_factor"):
        rt.set_cooling(0.5)
    rt.set_cooling(4.0)
    hot = run_for(300.0)
    late = hot[-60:]
    assert 83 <= np.mean([r["temp"] for r in late]) <= 87
    assert np.mean([r["thermal"] == 1 for r in late]) > 0.8
    assert np.mean([r["clock"] for r in late]) < 0.85 * np.mean([r["clock"] for r in healthy[-30:]])
    rt.set_cooling(1.0)
    cooled = run_for(60.0)
    assert max(r["thermal"] for r in cooled[-30:]) == 0 and cooled[-1]["temp"] < 80
