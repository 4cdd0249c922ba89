"""The live testbed's guard rails, without the full testbed: control needs the run's token, values are checked,
every change is in the injection log, requests are bounded by the model's context and aborted when the client
leaves, one testbed per run folder, and ``testbed inject`` prints one JSON document."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import time

import pytest

pytest.importorskip("aiohttp", reason="the testbed extra is not installed (pip install -e '.[testbed]')")
pytest.importorskip("prometheus_client", reason="the testbed extra is not installed")
pytest.importorskip("opentelemetry.sdk", reason="the testbed extra is not installed")

from llmrca.errors import LlmrcaError
from llmrca.testbed import auth, control
from llmrca.testbed.config import TestbedConfig
from llmrca.testbed.rundir import RunDir, TestbedError, free_ports


# -- the token --------------------------------------------------------------------------------------------------
def test_token_file_is_private_and_checked(tmp_path):
    token = auth.create_token(tmp_path)
    path = tmp_path / auth.TOKEN_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert auth.read_token(tmp_path) == token and len(token) == 64
    assert auth.create_token(tmp_path) != token  # a new one per up
    assert auth.check(token, None) == 401 and auth.check(token, "x" * 64) == 403 and auth.check(token, token) is None
    os.chmod(path, 0o644)
    with pytest.raises(TestbedError, match="readable by others"):
        auth.read_token(tmp_path)
    path.unlink()
    with pytest.raises(TestbedError, match="no control token"):
        auth.read_token(tmp_path)


def _post(url: str, body: str | bytes, headers: dict[str, str] | None = None, method: str = "POST"
          ) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    data = body.encode() if isinstance(body, str) else body
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


async def _serve(app, port: int):
    from llmrca.testbed.service import start_site

    return await start_site(app, port)


async def _call(*args, **kw):
    return await asyncio.get_running_loop().run_in_executor(None, lambda: _post(*args, **kw))


def _run_dir(tmp_path, replicas: int = 2) -> tuple[RunDir, dict]:
    from llmrca.deploy import DeployConfig
    from llmrca.testbed.supervisor import CONFIG_FILE, plan_state

    rd = RunDir(tmp_path / "tb")
    rd.create()
    auth.create_token(rd.path)
    cfg = TestbedConfig(deploy=DeployConfig(replicas=replicas), seed=1)
    (rd.path / CONFIG_FILE).write_text(json.dumps({"config": cfg.to_dict()}), encoding="utf-8")
    state = plan_state(rd, cfg)
    state["otlp_endpoint"] = None
    rd.write_state(state)
    return rd, state


# -- the supervisor's control API ---------------------------------------------------------------------------------
def test_supervisor_control_refuses_without_the_token_and_checks_durations(tmp_path):
    from llmrca.testbed.supervisor import Supervisor

    rd, _ = _run_dir(tmp_path)
    token = auth.read_token(rd.path)
    good = {auth.HEADER: token}

    async def scenario() -> None:
        sup = Supervisor(rd)
        stop = asyncio.Event()
        port = free_ports(1)[0]
        runner = await _serve(sup._control_app(stop), port)
        url = f"http://127.0.0.1:{port}"
        body = '{"fault": "gpu", "target": "ray-replicas-0", "duration": 30, "lease": false}'
        try:
            for path in ("/inject", "/undo", "/shutdown"):
                code, msg = await _call(url + path, body)
                assert code == 401 and "control token" in msg["error"], (path, code, msg)
                code, _ = await _call(url + path, body, {auth.HEADER: "0" * 64})
                assert code == 403, path
            assert not stop.is_set() and not rd.injections.exists()  # nothing changed
            code, st = await _call(url + "/status", None, method="GET")  # reading stays open
            assert code == 200 and st["injections"] == []
            for dur, why in (("Infinity", "finite"), ("NaN", "finite"), ("-5", "above 0"), ("1e9", "at most"),
                             ('"60"', "number")):
                code, msg = await _call(url + "/inject", body.replace('"duration": 30', f'"duration": {dur}'), good)
                assert code == 400 and why in msg["error"] and "\n" not in msg["error"], (dur, msg)
            code, msg = await _call(url + "/inject", "[1, 2]", good)
            assert code == 400
            code, msg = await _call(url + "/undo", '{"nothing": 1}', good)
            assert code == 400
            assert not rd.injections.exists() and sup.injections == {}
            code, _ = await _call(url + "/shutdown", "{}", good)
            assert code == 200 and stop.is_set()
        finally:
            await runner.cleanup()
            sup.log.close()
            sup.tlog.close()

    asyncio.run(scenario())


def test_a_fault_undone_when_the_supervisor_stops_is_recorded(tmp_path):
    from llmrca.testbed.supervisor import Supervisor

    rd, _ = _run_dir(tmp_path)
    sup = Supervisor(rd)

    class FakeInjector:
        undone = False

        def undo(self) -> None:
            self.undone = True

    rec = {"id": "cpu-x-1", "fault": "cpu", "target": "ray-replicas-0", "inject_time": 1.0, "end": 61.0,
           "status": "active"}
    inj = FakeInjector()
    import functools

    handle = sup.cleanup.register(functools.partial(sup._undo_now, rec["id"]), "undo")
    sup.injections[rec["id"]] = (inj, rec, handle)
    sup.cleanup.run_all()  # what the supervisor does when it stops
    assert inj.undone
    last = rd.read_injections()[-1]
    assert last["status"] == "done" and last["undo_reason"] == "the testbed stopped" and last["undone_at"] > 1.0
    sup.log.close()
    sup.tlog.close()


def test_a_client_that_leaves_while_its_fault_is_applied_gets_it_undone_and_logged(tmp_path):
    import functools

    import aiohttp

    from llmrca.testbed.supervisor import Supervisor

    rd, _ = _run_dir(tmp_path)
    token = auth.read_token(rd.path)

    class SlowInjector:
        undone = False

        def undo(self) -> None:
            self.undone = True

    async def scenario() -> None:
        sup = Supervisor(rd)
        inj = SlowInjector()

        async def slow_inject(fault, target, params, duration, lease):  # the apply takes a while (stress-ng start)
            await asyncio.sleep(0.8)
            rec = {"id": "cpu-ray-head-1", "fault": fault, "target": target, "inject_time": time.time(),
                   "end": time.time() + duration, "lease": lease, "status": "active"}
            handle = sup.cleanup.register(functools.partial(sup._undo_now, rec["id"]), "undo")
            sup.injections[rec["id"]] = (inj, rec, handle)
            rd.append_injection(rec)
            return rec

        sup.inject = slow_inject
        port = free_ports(1)[0]
        runner = await _serve(sup._control_app(asyncio.Event()), port)
        try:
            async with aiohttp.ClientSession() as s:
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(s.post(f"http://127.0.0.1:{port}/inject", headers={auth.HEADER: token},
                                                  json={"fault": "cpu", "target": "ray-head", "duration": 30}), 0.2)
            end = time.monotonic() + 10
            # the undo runs in a worker thread: the injector is undone first, its log record written right after
            while time.monotonic() < end and not (inj.undone and len(rd.read_injections()) >= 2):
                await asyncio.sleep(0.1)
            assert inj.undone, "the fault outlived the client that held it"
            assert [(r["status"], r.get("undo_reason")) for r in rd.read_injections()] == [
                ("active", None), ("done", "the client went away")]
        finally:
            await runner.cleanup()
            sup.log.close()
            sup.tlog.close()

    asyncio.run(scenario())


def test_client_refuses_an_infinite_duration_before_asking(tmp_path, monkeypatch):
    monkeypatch.setattr(control, "running_state", lambda run_dir: {"run_dir": str(tmp_path), "ports": {}})
    with pytest.raises(TestbedError, match="duration must be finite"):
        control.inject("cpu", "ray-replicas-1", float("inf"), run_dir=tmp_path)


# -- the engine ----------------------------------------------------------------------------------------------------
def test_requests_are_checked_against_the_models_context():
    """As vLLM 0.32.0 checks them (tests/fixtures/vllm_0.32.0): max_tokens above the context or a prompt longer
    than it is a 400; prompt + max_tokens beyond it runs with max_tokens cut to what the prompt leaves."""
    from llmrca.sim.hardware import model_spec
    from llmrca.testbed.vllm_api import ApiError, parse_chat

    assert model_spec("llama-3.1-8b").context_tokens == 131072 and model_spec("gemma-2-9b").context_tokens == 8192
    msg = {"messages": [{"role": "user", "content": "one two three"}]}
    ok = parse_chat({**msg, "max_tokens": 100}, 1000, "m")
    assert ok["prompt_tokens"] == 3 and ok["max_tokens"] == 100 and ok["max_tokens_set"]
    unset = parse_chat(msg, 1000, "m")
    assert unset["max_tokens"] == 997 and not unset["max_tokens_set"]  # vLLM's default: what the context leaves
    assert parse_chat({**msg, "max_tokens": 998}, 1000, "m")["max_tokens"] == 997  # cut, not refused
    for bad, why in ((10**9, "cannot be greater than max_model_len=1000"), (0, "at least 1, got 0"),
                     (-5, "at least 1, got -5"), ("abc", "valid integer"), (2.5, "fractional part")):
        with pytest.raises(ApiError, match=why) as e:
            parse_chat({**msg, "max_tokens": bad}, 1000, "m")
        assert e.value.status == 400 and "\n" not in e.value.message.split(":", 1)[0], bad
    with pytest.raises(ApiError, match="at least 1, got 0"):  # a prompt that fills the context leaves nothing
        parse_chat(msg, 3, "m")
    with pytest.raises(ApiError, match="contains at least 3 input tokens"):
        parse_chat(msg, 2, "m")
    for body, why in ((None, "valid dictionary"), ([], "valid dictionary"), ({"messages": "hi"}, "valid list"),
                      ({"messages": ["hi"]}, "valid dictionary"), ({}, "Field required"),
                      ({"messages": []}, "empty conversation")):
        with pytest.raises(ApiError, match=why):
            parse_chat(body, 1000, "m")
    for key, value, why in (("temperature", "hot", "valid number"), ("temperature", -1, "non-negative"),
                            ("top_p", 5, r"top_p must be in \(0, 1\]"), ("n", 0, "n must be at least 1")):
        with pytest.raises(ApiError, match=why):
            parse_chat({**msg, key: value}, 1000, "m")
    with pytest.raises(ApiError, match="does not exist") as e:
        parse_chat({**msg, "model": "other"}, 1000, "m")
    assert e.value.status == 404 and e.value.body()["error"]["type"] == "NotFoundError"


def test_engine_answers_400_guards_its_control_and_aborts_abandoned_requests(tmp_path):
    import aiohttp

    from llmrca.testbed.engine_server import Engine, make_app

    rd, state = _run_dir(tmp_path)
    token = auth.read_token(rd.path)

    async def scenario() -> None:
        eng = Engine("ray-head", state, rd)
        stop = asyncio.Event()
        driver = asyncio.create_task(eng.drive(stop))
        port = free_ports(1)[0]
        runner = await _serve(make_app(eng, token), port)
        url = f"http://127.0.0.1:{port}"
        chat = url + "/v1/chat/completions"
        ctx = eng.model.context_tokens
        try:
            for mt in ('"abc"', "-5", "1000000000", "2.5"):
                code, msg = await _call(chat, '{"messages": [{"role": "user", "content": "hi"}], "max_tokens": '
                                              + mt + "}")
                assert code == 400 and msg["error"]["type"] in ("BadRequestError", "Bad Request"), (mt, code, msg)
            long = " ".join(["w"] * (ctx + 1))
            code, msg = await _call(chat, json.dumps({"messages": [{"role": "user", "content": long}]}))
            assert code == 400 and f"at least {ctx + 1} input tokens" in msg["error"]["message"]

            # The power cap: no token, a wrong one, then non-finite values, refused, nothing changed.
            cap = {"watts": 150, "expires_at": time.time() + 60}
            code, _ = await _call(url + "/control/power-limit", json.dumps(cap))
            assert code == 401
            code, _ = await _call(url + "/control/power-limit", json.dumps(cap), {auth.HEADER: "f" * 64})
            assert code == 403
            for body in ('{"watts": 150, "expires_at": Infinity}', '{"watts": NaN, "expires_at": 1}',
                         '{"watts": 150}', '{"watts": 5000, "expires_at": ' + str(time.time() + 60) + "}"):
                code, msg = await _call(url + "/control/power-limit", body, {auth.HEADER: token})
                assert code == 400 and msg["error"], body
            assert eng.rt.power_limit == eng.gpu.tdp_w and not rd.injections.exists()
            code, st = await _call(url + "/control/power-limit", json.dumps(cap),
                                   {auth.HEADER: token, auth.INJECTION_HEADER: "gpu-ray-head-1"})
            assert code == 200 and st["power_limit_w"] == 150
            change = rd.read_injections()[-1]
            assert change["kind"] == "control" and change["injection"] == "gpu-ray-head-1"
            assert change["change"]["power_limit_w"] == 150

            # A long answer whose client hangs up after a second: the engine stops generating it.
            async with aiohttp.ClientSession() as s:
                body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": ctx - 10}
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(s.post(chat, json=body), 1.0)
            end = time.monotonic() + 10
            while time.monotonic() < end and (eng.rt.engine.running or not eng.rt.aborted):
                await asyncio.sleep(0.1)
            assert eng.rt.aborted and not eng.rt.engine.running, "the abandoned request is still generating"
        finally:
            await runner.cleanup()
            stop.set()
            driver.cancel()
            eng.log.close()

    asyncio.run(scenario())


# -- the mesh ------------------------------------------------------------------------------------------------------
def test_mesh_delay_needs_the_token_and_finite_values(tmp_path):
    from llmrca.testbed.mesh import Mesh, checked_delay, make_app

    now = 1000.0
    ok = {"target": "ray-replicas-0", "latency_s": 1.0, "jitter_s": 0.1, "correlation": 0.25, "expires_at": now + 60}
    assert checked_delay(ok, now).latency_s == 1.0
    for key, value in (("latency_s", float("inf")), ("latency_s", 1e9), ("latency_s", -1), ("jitter_s", float("nan")),
                       ("correlation", 2), ("expires_at", float("inf")), ("expires_at", None), ("expires_at", now - 1),
                       ("seed", 1.5)):
        with pytest.raises((ValueError, TypeError), match=key):
            checked_delay({**ok, key: value}, now)

    rd, state = _run_dir(tmp_path)
    token = auth.read_token(rd.path)

    async def scenario() -> None:
        mesh = Mesh(state, rd)
        port = free_ports(1)[0]
        runner = await _serve(make_app(mesh, token), port)
        url = f"http://127.0.0.1:{port}"
        body = json.dumps({**ok, "expires_at": time.time() + 60})
        try:
            code, _ = await _call(url + "/delay", body)
            assert code == 401
            code, _ = await _call(url + "/delay/ray-replicas-0", None, method="DELETE")
            assert code == 401
            code, _ = await _call(url + "/delay", body.replace('"latency_s": 1.0', '"latency_s": Infinity'),
                                  {auth.HEADER: token})
            assert code == 400
            assert all(x.delay_up is None and x.delay_down is None for x in mesh.links) and not rd.injections.exists()
            code, _ = await _call(url + "/delay", body, {auth.HEADER: token})
            assert code == 200
            code, links = await _call(url + "/links", None, method="GET")
            assert code == 200 and any(x["delay_up"] for x in links)
            rec = rd.read_injections()[-1]
            assert rec["kind"] == "control" and rec["injection"] is None and rec["change"]["delay"]["latency_s"] == 1
        finally:
            await runner.cleanup()
            mesh.log.close()

    asyncio.run(scenario())


# -- collected ground truth ----------------------------------------------------------------------------------------
def test_collector_refuses_a_window_with_a_change_its_truth_does_not_hold():
    from llmrca.testbed.collector import injection_in

    inj = {"id": "gpu-r1-100", "fault": "gpu", "target": "r1", "inject_time": 100.0, "end": 160.0}
    own = {"kind": "control", "time": 101.0, "service": "r1", "change": {"power_limit_w": 150},
           "injection": "gpu-r1-100", "reason": "fault injection"}
    foreign = {**own, "time": 130.0, "service": "r2", "injection": None, "reason": "control endpoint"}
    assert injection_in([inj, own], 50, 200)["id"] == "gpu-r1-100"
    with pytest.raises(LlmrcaError, match="not made by injection gpu-r1-100.*r2"):
        injection_in([inj, own, foreign], 50, 200)
    with pytest.raises(LlmrcaError, match="not made by an injection"):
        injection_in([foreign], 120, 140)  # a "normal" window that was not normal
    assert injection_in([inj, own, foreign], 170, 200) is None  # outside the window: no matter
    # an injection still active at the window's start
    with pytest.raises(LlmrcaError, match="still active at the window's start"):
        injection_in([inj], 130, 200)
    assert injection_in([inj, {**inj, "status": "done", "undone_at": 125.0}], 130, 200) is None
    with pytest.raises(LlmrcaError, match="not a finite time"):
        injection_in([{**inj, "end": float("inf")}], 50, 200)


# -- one testbed per run folder ------------------------------------------------------------------------------------
def test_run_folder_lock_is_exclusive_and_dies_with_its_holder(tmp_path):
    rd = RunDir(tmp_path)
    fd = control.take_lock(rd)
    with pytest.raises(TestbedError, match=f"another testbed holds the run folder {tmp_path} \\(pid {os.getpid()}\\)"):
        control.take_lock(rd)
    os.close(fd)
    os.close(control.take_lock(rd))
    # A holder killed with SIGKILL leaves no stale lock.
    code = ("import os, sys, time; from llmrca.testbed.control import take_lock; from llmrca.testbed.rundir import "
            f"RunDir; take_lock(RunDir({str(tmp_path)!r})); print('held', flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        with pytest.raises(TestbedError, match=f"pid {p.pid}"):
            control.take_lock(rd)
    finally:
        p.kill()
        p.wait(timeout=10)
    os.close(control.take_lock(rd))


def test_second_up_on_a_held_run_folder_is_one_line_and_touches_nothing(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from llmrca.cli import app

    rd = RunDir(tmp_path)
    rd.write_state({"status": "up", "marker": 1})
    monkeypatch.setattr(control, "_check_binaries", lambda: None)
    fd = control.take_lock(rd)
    try:
        r = CliRunner().invoke(app, ["testbed", "up", "--run-dir", str(tmp_path)])
        assert r.exit_code != 0
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and "another testbed holds the run folder" in lines[0], r.output
        assert "Traceback" not in r.output
        assert rd.read_state() == {"status": "up", "marker": 1}
    finally:
        os.close(fd)


# -- testbed inject's JSON -----------------------------------------------------------------------------------------
def test_inject_prints_one_json_document_at_any_width(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from llmrca.cli import app

    rec = {"id": "network-ray-replicas-1-1765000000", "fault": "network", "target": "ray-replicas-1",
           "inject_time": 1765000000.123456, "end": 1765000060.123456, "status": "done",
           "params": {"latency_s": 1.0, "jitter_s": 0.1, "correlation": 0.25, "machine": {"note": "x" * 120}},
           "method": "mesh delay on nginx-proxy->ray-head (up), ray-head->ray-replicas-1 (up) " * 2}
    monkeypatch.setattr(control, "inject", lambda *a, **k: rec)
    monkeypatch.setenv("COLUMNS", "80")
    r = CliRunner().invoke(app, ["testbed", "inject", "network", "--target", "ray-replicas-1", "--duration", "5",
                                 "--run-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    out = r.stdout.strip()
    assert "\n" not in out and len(out) > 200
    doc = json.loads(out)
    assert doc["id"] == rec["id"] and doc["method"] == rec["method"] and doc["params"] == rec["params"]


# -- one short live check: the real processes behind nginx -----------------------------------------------------------
def _live_skip() -> str | None:
    from llmrca.testbed.nginx import nginx_binary
    from llmrca.testbed.prometheus import prometheus_binary

    if prometheus_binary() is None or nginx_binary() is None:
        return "the live testbed needs the Debian packages prometheus and nginx"
    if os.environ.get("LLMRCA_SKIP_TESTBED") == "1":
        return "LLMRCA_SKIP_TESTBED=1"
    return None


def _running_requests(port: int) -> float:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith("vllm:num_requests_running{"))


@pytest.mark.skipif(_live_skip() is not None, reason=str(_live_skip()))
def test_live_control_needs_the_token_and_abandoned_requests_stop(tmp_path):
    import threading
    import urllib.request

    from llmrca.deploy import DeployConfig
    from llmrca.sim.hardware import model_spec

    run_dir = tmp_path / "tb"
    cfg = TestbedConfig(deploy=DeployConfig(replicas=2, step=1.0, rate_window=5.0), load=False, model_load_s=1.0,
                        seed=2)
    st = control.up(cfg, run_dir, detach=False, timeout=150)
    try:
        p = st["ports"]
        engines = [p[f"engine:{r}"] for r in st["replicas"]]
        body = '{"fault": "gpu", "target": "ray-replicas-0", "duration": 5, "lease": false}'
        assert _post(f"http://127.0.0.1:{p['control']}/inject", body)[0] == 401
        assert _post(f"http://127.0.0.1:{engines[0]}/control/power-limit",
                     json.dumps({"watts": 150, "expires_at": time.time() + 30}))[0] == 401
        assert not (run_dir / "injections.jsonl").exists()

        gateway = f"http://127.0.0.1:{p['gateway']}/v1/chat/completions"
        ctx = model_spec(cfg.deploy.model).context_tokens
        code, msg = _post(gateway, json.dumps({"messages": [{"role": "user", "content": "hi"}],
                                               "max_tokens": 10**9}))
        assert code == 400 and f"cannot be greater than max_model_len={ctx}" in msg["error"]["message"]

        # A long answer through nginx, the proxy and the mesh; the client leaves after 3 s: the engine stops.
        def client() -> None:
            req = urllib.request.Request(gateway, data=json.dumps({"messages": [{"role": "user", "content": "hi"}],
                                                                   "max_tokens": ctx - 10}).encode(),
                                         headers={"Content-Type": "application/json"})
            try:
                urllib.request.urlopen(req, timeout=3).read()
            except OSError:
                pass

        t = threading.Thread(target=client)
        t.start()
        seen = False
        end = time.monotonic() + 3
        while time.monotonic() < end and not seen:
            seen = sum(_running_requests(e) for e in engines) >= 1
            time.sleep(0.2)
        t.join()
        assert seen, "the long request never ran"
        end = time.monotonic() + 20
        while time.monotonic() < end and sum(_running_requests(e) for e in engines) > 0:
            time.sleep(0.3)
        assert sum(_running_requests(e) for e in engines) == 0, "the abandoned request is still generating"

        # With the token (every llmrca client sends it): the fault runs, and its engine change is logged under it.
        rec = control.inject("gpu", "ray-replicas-0", 3.0, run_dir=run_dir)
        assert rec["status"] == "done"
        log = RunDir(run_dir).read_injections()
        changes = [r for r in log if r.get("kind") == "control"]
        assert changes and all(c["injection"] == rec["id"] for c in changes), changes
        assert [r["status"] for r in log if r.get("id") == rec["id"]] == ["active", "done"]
    finally:
        report = control.down(run_dir)
        assert report["open_ports"] == [] and report["killed_leftovers"] == []
