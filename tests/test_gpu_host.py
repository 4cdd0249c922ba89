"""The testbed on a GPU host (``llmrca.testbed.gpu_host``), with a fake ``nvidia-smi`` first on PATH: it records
its arguments, keeps its GPUs' power limits in a JSON file, prints CSV as the real tool does (``noheader,nounits``)
and can refuse (no root), hang, or be an older driver. This machine has no GPU: nothing here touches a real one."""

from __future__ import annotations

import http.server
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from llmrca.faults import FaultParamError
from llmrca.testbed import gpu_host
from llmrca.testbed.gpu_host import Gpu, GpuHostError

FAKE = r'''#!PYTHON
import json, os, subprocess, sys
args = sys.argv[1:]
with open(os.environ["FAKE_SMI_LOG"], "a") as f:
    f.write(json.dumps(args) + "\n")
st_path = os.environ["FAKE_SMI_STATE"]
st = json.load(open(st_path))
if st.get("hang"):
    child = subprocess.Popen(["sleep", "60"])  # a child that holds the pipes open, as a wrapper script's would
    open(st_path + ".child", "w").write(str(child.pid))
    child.wait()
    sys.exit(0)
sel = None
if "-i" in args:
    sel = args[args.index("-i") + 1]
gpus = [g for g in st["gpus"] if sel is None or g["index"] == sel]
if sel is not None and not gpus:
    print(f"No devices were found matching {sel}"); sys.exit(6)
if "-pl" in args:
    w = float(args[args.index("-pl") + 1])
    g = gpus[0]
    if not st.get("root", True):
        print(f"Changing power management limit is not supported for GPU: {g['bus']}.")
        print("Insufficient Permissions"); print("Terminating early due to previous errors."); sys.exit(4)
    if not (g["power.min_limit"] <= w <= g["power.max_limit"]):
        print(f"Provided power limit {w:.2f} W is not a valid power limit which should be between "
              f"{g['power.min_limit']:.2f} W and {g['power.max_limit']:.2f} W for GPU {g['bus']}")
        print("Terminating early due to previous errors."); sys.exit(2)
    g["power.limit"] = w
    json.dump(st, open(st_path, "w"))
    print(f"Power limit for GPU {g['bus']} was set to {w:.2f} W from ... W."); print("All done."); sys.exit(0)
q = next(a for a in args if a.startswith("--query-gpu="))[len("--query-gpu="):].split(",")
for f in q:
    if f in st.get("invalid", []):
        print(f'Field "{f}" is not a valid field to query.'); sys.exit(2)
for g in gpus:
    print(", ".join(str(g.get(f.replace("clocks_throttle_reasons", "clocks_event_reasons"), "[N/A]")) for f in q))
'''


def _gpu(i: int, **kw):
    g = {"index": str(i), "name": "NVIDIA H100 80GB HBM3", "uuid": f"GPU-0000000{i}-aaaa", "bus": f"00000000:0{i}:00.0",
         "power.default_limit": 700.0, "power.min_limit": 200.0, "power.max_limit": 700.0, "power.limit": 650.0,
         "power.draw": 412.5 + i, "clocks.sm": 1980, "clocks.mem": 2619, "temperature.gpu": 41 + i,
         "temperature.memory": "[N/A]", "utilization.gpu": 87, "utilization.memory": 34, "memory.used": 70123,
         "memory.free": 10956, "memory.total": 81559, "clocks_event_reasons.active": "0x0000000000000004"}
    g.update(kw)
    return g


class FakeSmi:
    def __init__(self, root: Path, n: int = 2):
        self.bin = root / "bin"
        self.bin.mkdir()
        self.log = root / "smi.log"
        self.state = root / "smi.json"
        exe = self.bin / "nvidia-smi"
        exe.write_text(FAKE.replace("PYTHON", sys.executable))
        exe.chmod(0o755)
        self.write({"gpus": [_gpu(i) for i in range(n)]})

    def write(self, st):
        self.state.write_text(json.dumps(st))

    def update(self, **kw):
        st = json.loads(self.state.read_text())
        st.update(kw)
        self.write(st)

    def read(self):
        return json.loads(self.state.read_text())

    def calls(self) -> list[list[str]]:
        return [json.loads(x) for x in self.log.read_text().splitlines()] if self.log.exists() else []


@pytest.fixture
def smi(tmp_path, monkeypatch):
    f = FakeSmi(tmp_path)
    monkeypatch.setenv("PATH", f"{f.bin}:/usr/bin:/bin")
    monkeypatch.setenv("FAKE_SMI_LOG", str(f.log))
    monkeypatch.setenv("FAKE_SMI_STATE", str(f.state))
    monkeypatch.setenv(gpu_host.DCGM_URL_ENV, "off")
    return f


@pytest.fixture
def cpu_host(tmp_path, monkeypatch):
    empty = tmp_path / "nobin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert gpu_host.nvidia_smi() is None


def test_list_gpus_reads_index_name_uuid_and_power_limits(smi):
    gpus = gpu_host.list_gpus()
    assert gpus == [Gpu("0", "NVIDIA H100 80GB HBM3", "GPU-00000000-aaaa", 700.0, 200.0, 700.0),
                    Gpu("1", "NVIDIA H100 80GB HBM3", "GPU-00000001-aaaa", 700.0, 200.0, 700.0)]
    assert smi.calls() == [["--query-gpu=index,name,uuid,power.default_limit,power.min_limit,power.max_limit",
                            "--format=csv,noheader,nounits"]]


def test_no_gpus_without_nvidia_smi(cpu_host):
    assert gpu_host.list_gpus() == []
    hg = gpu_host.setup("vllm", ["replica-0"], {})
    assert hg.assigned == {} and hg.dcgm_url is None
    with pytest.raises(GpuHostError, match="not found on PATH"):
        gpu_host.setup("emulated", ["replica-0"], {"replica-0": "0"})


def test_assign_replica_i_to_gpu_i_or_as_given():
    gpus = [Gpu(str(i), "H100", f"u{i}", 700.0, 200.0, 700.0) for i in range(3)]
    assert gpu_host.assign(["a", "b"], None, gpus) == {"a": "0", "b": "1"}
    assert gpu_host.assign(["a", "b"], {"b": "0"}, gpus) == {"a": "1", "b": "0"}
    assert gpu_host.assign(["a", "b"], {"a": "2", "b": "1"}, gpus) == {"a": "2", "b": "1"}
    with pytest.raises(GpuHostError, match="4 replicas need a GPU each but this host has 3"):
        gpu_host.assign(["a", "b", "c", "d"], None, gpus)
    with pytest.raises(GpuHostError, match="no GPU 7 on this host; its GPUs: 0, 1, 2"):
        gpu_host.assign(["a"], {"a": "7"}, gpus)
    with pytest.raises(GpuHostError, match="no replica 'z'"):
        gpu_host.assign(["a"], {"z": "0"}, gpus)


def test_setup_gives_the_real_engine_a_gpu_per_replica_and_the_emulated_only_the_named(smi):
    hg = gpu_host.setup("vllm", ["replica-0", "replica-1"], {})
    assert hg.assigned == {"replica-0": "0", "replica-1": "1"} and hg.dcgm_url is None
    assert hg.to_state()["gpus"]["1"]["default_limit_w"] == 700.0
    assert gpu_host.setup("emulated", ["replica-0", "replica-1"], {}).assigned == {}
    assert gpu_host.setup("emulated", ["replica-0", "replica-1"], {"replica-1": "0"}).assigned == {"replica-1": "0"}
    with pytest.raises(GpuHostError, match="3 replicas need a GPU each but this host has 2"):
        gpu_host.setup("vllm", ["replica-0", "replica-1", "replica-2"], {})
    # the engine is given the GPU by UUID: CUDA's device order need not be nvidia-smi's
    state = {"real_gpus": hg.assigned, "gpu_host": hg.to_state()}
    assert gpu_host.cuda_visible_devices(state, "replica-1") == "GPU-00000001-aaaa"
    assert gpu_host.cuda_visible_devices({"real_gpus": {}}, "replica-1") is None


def _exposition(collector) -> str:
    from prometheus_client import CollectorRegistry, generate_latest

    reg = CollectorRegistry()
    reg.register(collector)
    return generate_latest(reg).decode()


def _poller(smi, *, dcgm=True, assigned=None):
    hg = gpu_host.HostGpus(tuple(gpu_host.list_gpus()), assigned or {"replica-0": "0", "replica-1": "1"}, None)
    return gpu_host.Poller(hg, 1.0, "node-0", dcgm=dcgm)


def test_poller_exports_dcgm_names_labelled_with_the_service_in_nvidia_smis_units(smi):
    p = _poller(smi, assigned={"replica-1": "1"})  # GPU 0 is no replica's: not exported
    p.poll_once()
    assert smi.calls()[-1] == ["--query-gpu=" + ",".join(f for f, _ in gpu_host.POLL_FIELDS),
                               "--format=csv,noheader,nounits"]
    text = _exposition(p)
    lab = ('{Hostname="node-0",UUID="GPU-00000001-aaaa",device="nvidia1",gpu="1",'
           'modelName="NVIDIA H100 80GB HBM3",service="replica-1"}')
    for line in (f"DCGM_FI_DEV_POWER_USAGE{lab} 413.5", f"DCGM_FI_DEV_POWER_MGMT_LIMIT{lab} 650.0",
                 f"DCGM_FI_DEV_SM_CLOCK{lab} 1980.0", f"DCGM_FI_DEV_MEM_CLOCK{lab} 2619.0",
                 f"DCGM_FI_DEV_GPU_TEMP{lab} 42.0", f"DCGM_FI_DEV_GPU_UTIL{lab} 87.0",
                 f"DCGM_FI_DEV_MEM_COPY_UTIL{lab} 34.0", f"DCGM_FI_DEV_FB_USED{lab} 70123.0",
                 f"DCGM_FI_DEV_FB_FREE{lab} 10956.0",
                 f"DCGM_FI_DEV_CLOCKS_EVENT_REASONS{lab} 4.0",  # 0x4: SW power cap
                 ('ray_node_gpus_utilization{GpuDeviceName="NVIDIA H100 80GB HBM3",GpuIndex="1",'
                  'service="replica-1"} 87.0')):
        assert line in text.splitlines(), line
    assert "DCGM_FI_DEV_MEMORY_TEMP" not in text  # [N/A] on this GPU: no series, not a zero
    assert 'gpu="0"' not in text and 'GpuIndex="0"' not in text
    assert p.power_draw_w("1") == 413.5


def test_poller_names_and_units_are_the_catalogues():
    from llmrca.case.catalog import CATALOG

    by_series = {m.series: m for m in CATALOG if m.source == "dcgm"}
    unit = {"POWER_USAGE": "W", "SM_CLOCK": "MHz", "MEM_CLOCK": "MHz", "GPU_TEMP": "C", "MEMORY_TEMP": "C",
            "GPU_UTIL": "percent", "MEM_COPY_UTIL": "percent", "FB_USED": "MiB", "FB_FREE": "MiB",
            "CLOCKS_EVENT_REASONS": "bitmask"}
    exported = {d for _, d in gpu_host.POLL_FIELDS if d is not None}
    assert exported - set(unit) == {"POWER_MGMT_LIMIT"}  # DCGM's name; not a catalogue column
    for field, u in unit.items():
        assert by_series[f"DCGM_FI_DEV_{field}"].unit == u, field
    assert "ray_node_gpus_utilization" in {m.series for m in CATALOG if m.source == "ray"}


def test_with_a_dcgm_exporter_the_poller_exports_only_rays_series(smi):
    p = _poller(smi, dcgm=False)
    p.poll_once()
    text = _exposition(p)
    assert "DCGM_FI_" not in text
    assert 'ray_node_gpus_utilization{GpuDeviceName="NVIDIA H100 80GB HBM3",GpuIndex="0",service="replica-0"}' \
        in text


def test_poller_falls_back_to_the_older_drivers_field_name(smi):
    smi.update(invalid=["clocks_event_reasons.active"])
    p = _poller(smi)
    p.poll_once()
    assert p.error is None
    assert any("clocks_throttle_reasons.active" in a[0] for a in smi.calls())
    assert "DCGM_FI_DEV_CLOCKS_EVENT_REASONS{" in _exposition(p)


def test_a_hung_nvidia_smi_times_out_and_is_killed_never_hangs(smi):
    smi.update(hang=True)
    t0 = time.monotonic()
    with pytest.raises(GpuHostError, match=r"no answer within 1 s \(killed\)"):
        gpu_host.run(["--query-gpu=index", "--format=csv,noheader,nounits"], timeout=1.0)
    assert time.monotonic() - t0 < 5.0
    assert _gone(int(Path(str(smi.state) + ".child").read_text()))  # the fake's child went with its group


def test_the_poller_survives_a_failing_nvidia_smi_and_exports_nothing_stale(smi):
    p = _poller(smi)
    p.poll_once()
    assert "DCGM_FI_DEV_POWER_USAGE" in _exposition(p)
    smi.update(invalid=["power.draw"])  # nvidia-smi now fails
    p.poll_once()
    assert "power.draw" in p.error
    p.sampled_at -= p.stale_s + 1  # the last good sample is now too old to export
    assert _exposition(p).strip() == ""
    p.poll_once()  # another failure, no exception either


def test_the_poller_thread_polls_each_step_and_stops(smi):
    p = _poller(smi)
    p.step = 0.1
    p.start()
    try:
        deadline = time.monotonic() + 10
        while len(smi.calls()) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        p.stop()
    assert len(smi.calls()) >= 4 and not p._thread.is_alive()


# -- the power cap ---------------------------------------------------------------------------------------------
class _Host:
    def __init__(self, tmp_path, state):
        from llmrca.testbed.config import Machine, TestbedConfig, scaling
        from llmrca.testbed.procs import Containment

        self.state = state
        self.containment = Containment("none")
        self.scaling = scaling(TestbedConfig(), Machine(2, 24 * 2**30, 20 * 2**30))
        self.tmp = tmp_path

    def out_path(self, name):
        return self.tmp / f"{name}.out"


def _state(engine: str, real_gpus: dict[str, str], host_gpus=None):
    st = {"config": {"deploy": {"engine": engine}}, "real_gpus": real_gpus, "ports": {}}
    if host_gpus is not None:
        st["gpu_host"] = host_gpus.to_state()
    return st


def _inject(tmp_path, smi, params, duration=30.0):
    from llmrca.testbed.injectors import Injector, plan

    hg = gpu_host.setup("vllm", ["replica-0", "replica-1"], {})
    host = _Host(tmp_path, _state("vllm", hg.assigned, hg))
    now = time.time()
    live = plan("gpu", "replica-1", params, "a100-80gb", host.scaling, now, now + duration, state=host.state)
    return Injector(host, live, end=now + duration), live


def _gone(pid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return True
        time.sleep(0.05)
    return False


def test_power_cap_on_a_real_gpu_uses_its_range_and_restores_the_drivers_default(tmp_path, smi):
    # 500 W: in the H100's range (200-700 W), above the emulated A100's 400 W: the real GPU's range decides
    inj, live = _inject(tmp_path, smi, {"power_limit_w": 500.0})
    assert live.applied["power_limit_w"] == 500.0
    n = len(smi.calls())
    inj.apply()
    assert smi.read()["gpus"][1]["power.limit"] == 500.0
    assert ["-i", "1", "-pl", "500"] in smi.calls()[n:]
    assert inj.method == "nvidia-smi -i 1 -pl 500"
    assert inj.notes["default_watts"] == 700.0 and inj.notes["limit_before_w"] == 650.0
    inj.undo()
    assert smi.calls()[-1] == ["-i", "1", "-pl", "700"]  # the default read before the fault, not 650 W or a constant
    assert smi.read()["gpus"][1]["power.limit"] == 700.0
    assert smi.read()["gpus"][0]["power.limit"] == 650.0  # the other GPU untouched
    assert _gone(inj.notes["restore_pid"])  # its last-resort restore is stopped: it cannot fire later
    inj.undo()  # idempotent
    assert smi.calls()[-1] == ["-i", "1", "-pl", "700"] and sum(a[-2:] == ["-pl", "700"] for a in smi.calls()) == 1


def test_a_real_cap_expires_by_itself_when_nothing_undoes_it(tmp_path, smi, monkeypatch):
    from llmrca.testbed import injectors

    monkeypatch.setattr(injectors, "SAFETY_MARGIN_S", 0.0)  # expire at the planned end (3 s), not 15 s after
    inj, _ = _inject(tmp_path, smi, {"power_limit_w": 300.0}, duration=3.0)
    inj.apply()  # and then the supervisor is killed: no undo, no cleanup registry
    assert smi.read()["gpus"][1]["power.limit"] == 300.0
    assert _gone(inj.notes["restore_pid"], within=20.0)
    assert smi.calls()[-1] == ["-i", "1", "-pl", "700"] and smi.read()["gpus"][1]["power.limit"] == 700.0


def test_relative_caps_use_the_real_gpus_limits_and_draw(tmp_path, smi):
    _, live = _inject(tmp_path, smi, {"power_limit_frac": 0.5})
    assert live.applied["power_limit_w"] == 350.0  # half the H100's 700 W default (not the emulated A100's 400)
    _, live = _inject(tmp_path, smi, {"depth": 1.0})
    # the study's cap on this GPU: 37.5 % of 700 W = 262.5 W, below its draw of 413.5 W
    assert live.applied["power_limit_w"] == 262.5 and live.applied["power_draw_w"] == 413.5
    assert ["-i", "1", "--query-gpu=power.draw", "--format=csv,noheader,nounits"] in smi.calls()
    with pytest.raises(FaultParamError, match="outside what a NVIDIA H100 80GB HBM3 accepts"):
        _inject(tmp_path, smi, {"power_limit_w": 150.0})


def test_the_cleanup_registry_restores_the_default_when_the_supervisor_stops(tmp_path, smi):
    from llmrca.testbed.cleanup import CleanupRegistry

    inj, _ = _inject(tmp_path, smi, {"power_limit_w": 250.0})
    reg = CleanupRegistry()
    inj.apply()
    reg.register(inj.undo, "undo gpu")
    reg.run_all()
    assert smi.calls()[-1] == ["-i", "1", "-pl", "700"] and smi.read()["gpus"][1]["power.limit"] == 700.0
    assert inj.undone and _gone(inj.notes["restore_pid"])


def test_nvidia_smi_refusals_are_one_clear_line(tmp_path, smi, monkeypatch):
    inj, _ = _inject(tmp_path, smi, {"power_limit_w": 300.0})
    smi.update(root=False)
    started, restore_later = [], gpu_host.restore_later
    monkeypatch.setattr(gpu_host, "restore_later", lambda *a, **k: started.append(restore_later(*a, **k)) or started[-1])
    with pytest.raises(GpuHostError) as e:
        inj.apply()
    assert smi.read()["gpus"][1]["power.limit"] == 650.0  # nothing changed, and nothing left to restore it later
    assert len(started) == 1 and _gone(started[0]) and "restore_pid" not in inj.notes
    msg = str(e.value)
    assert "\n" not in msg and "nvidia-smi -i 1 -pl 300 failed (exit 4)" in msg
    assert "Insufficient Permissions" in msg and "needs root, or persistence mode: nvidia-smi -pm 1" in msg
    smi.update(root=True)
    with pytest.raises(GpuHostError) as e:
        gpu_host.set_power_limit("0", 50.0)
    assert "\n" not in str(e.value) and "not a valid power limit" in str(e.value)
    assert "outside the range this GPU accepts" in str(e.value)


def test_gpu_fault_on_the_real_engine_on_a_cpu_host_is_refused(tmp_path, cpu_host):
    from llmrca.testbed.injectors import plan

    host = _Host(tmp_path, _state("vllm", {}))
    now = time.time()
    with pytest.raises(FaultParamError) as e:
        plan("gpu", "replica-0", {"depth": 1.0}, "a100-80gb", host.scaling, now, now + 30, state=host.state)
    msg = str(e.value)
    assert "\n" not in msg
    assert "fault 'gpu' on replica-0: the real engine runs on CPU here: no GPU to cap (nvidia-smi not found)" in msg
    # other faults still plan on the real engine; the emulated engine keeps its emulated GPU
    plan("cpu", "replica-0", {}, "a100-80gb", host.scaling, now, now + 30, state=host.state, available_bytes=2**30)
    live = plan("gpu", "replica-0", {"power_limit_w": 150.0}, "a100-80gb", host.scaling, now, now + 30,
                state=_state("emulated", {}))
    assert live.applied["power_limit_w"] == 150.0


def test_refused_on_a_gpu_host_too_when_the_target_has_no_gpu(tmp_path, smi):
    from llmrca.testbed.injectors import plan

    host = _Host(tmp_path, _state("vllm", {"replica-0": "0"}))
    now = time.time()
    with pytest.raises(FaultParamError, match="no GPU to cap \\(no GPU assigned to replica-1\\)"):
        plan("gpu", "replica-1", {"power_limit_w": 300.0}, "h100", host.scaling, now, now + 30, state=host.state)


# -- dcgm-exporter ----------------------------------------------------------------------------------------------
class _Exporter(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *a):
        pass


@pytest.fixture
def exporter():
    lines = []
    for i in range(2):
        lab = (f'gpu="{i}",UUID="GPU-{i}",pci_bus_id="00000000:0{i}:00.0",device="nvidia{i}",'
               f'modelName="NVIDIA H100 80GB HBM3",Hostname="gpuhost"')
        lines += [f"DCGM_FI_DEV_POWER_USAGE{{{lab}}} {300 + i}.5", f"DCGM_FI_DEV_SM_CLOCK{{{lab}}} 1980"]
    handler = type("H", (_Exporter,), {"body": ("\n".join(lines) + "\n").encode()})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/metrics"
    srv.shutdown()
    srv.server_close()


def test_a_running_dcgm_exporter_is_detected_and_replaces_the_poller(smi, exporter, monkeypatch):
    from llmrca.testbed.rundir import free_ports

    assert gpu_host.dcgm_exporter_up(exporter)
    assert not gpu_host.dcgm_exporter_up(f"http://127.0.0.1:{free_ports(1)[0]}/metrics")
    monkeypatch.setenv(gpu_host.DCGM_URL_ENV, exporter)
    assert gpu_host.setup("vllm", ["replica-0", "replica-1"], {}).dcgm_url == exporter
    assert gpu_host.setup("emulated", ["replica-0"], {"replica-0": "1"}).dcgm_url is None  # emulated GPU's own


def test_dcgm_scrape_job_relabels_the_gpu_index_to_the_service(tmp_path, exporter):
    from llmrca.testbed import prometheus as prom

    job = gpu_host.dcgm_scrape_job(exporter, {"replica-0": "1", "replica-1": "0"})
    conf = prom.scrape_config(1.0, {"vllm": [(1234, {"service": "replica-0"})]}) + job
    path = tmp_path / "prometheus.yml"
    path.write_text(conf)
    if shutil.which("promtool"):
        r = subprocess.run(["promtool", "check", "config", str(path)], capture_output=True, text=True,
                           check=False)
        assert r.returncode == 0, r.stdout + r.stderr
    pb = prom.prometheus_binary()
    if pb is None:
        pytest.skip("prometheus is not installed (apt-get install -y prometheus): relabelling not run")
    from llmrca.testbed.rundir import free_ports

    port = free_ports(1)[0]
    p = subprocess.Popen(prom.command(pb, path, tmp_path / "tsdb", port), stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        client = prom.PromClient(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 30
        got = []
        while time.monotonic() < deadline and len(got) < 2:
            time.sleep(0.5)
            if client.ready():
                got = client.query("DCGM_FI_DEV_POWER_USAGE")
        by = {s["metric"]["service"]: (s["metric"]["gpu"], float(s["value"][1])) for s in got}
        assert by == {"replica-0": ("1", 301.5), "replica-1": ("0", 300.5)}
    finally:
        p.terminate()
        p.wait(timeout=10)


# -- the supervisor's hooks --------------------------------------------------------------------------------------
def _supervisor(tmp_path, engine: str, real_gpus=None):
    from llmrca.testbed.config import TestbedConfig
    from llmrca.testbed.rundir import RunDir
    from llmrca.testbed.supervisor import CONFIG_FILE, Supervisor

    cfg = TestbedConfig.from_dict({"deploy": {"engine": engine, "replicas": 2}})
    rd = RunDir(tmp_path / "run")
    rd.create()
    (rd.path / CONFIG_FILE).write_text(json.dumps({"config": cfg.to_dict(), "real_gpus": real_gpus or {}}))
    return Supervisor(rd)


def test_the_supervisors_agent_exports_the_real_engines_gpus(tmp_path, smi):
    sup = _supervisor(tmp_path, "vllm")
    try:
        sup._gpu_host()
        assert sup.state["real_gpus"] == {r: str(i) for i, r in enumerate(sup.state["replicas"])}
        assert sup.rd.read_state()["real_gpus"] == sup.state["real_gpus"]  # on disk before any engine starts
        assert sup.gpu_poller is not None
        deadline = time.monotonic() + 10
        while not sup.gpu_poller.sample and time.monotonic() < deadline:
            time.sleep(0.05)
        text = _exposition(sup)
        r1 = sup.state["replicas"][1]
        assert f'DCGM_FI_DEV_POWER_USAGE{{Hostname="{sup.state["node"]}",UUID="GPU-00000001-aaaa"' in text
        assert f'service="{r1}"}} 413.5' in text
    finally:
        sup.cleanup.run_all()
    assert not sup.gpu_poller._thread.is_alive()


def test_the_emulated_engine_keeps_its_emulated_gpu(tmp_path, smi):
    sup = _supervisor(tmp_path, "emulated")
    sup._gpu_host()
    assert sup.gpu_poller is None and sup.state["real_gpus"] == {}
    assert "DCGM_FI_" not in _exposition(sup)


def _testbed_missing() -> str | None:
    from llmrca.testbed.nginx import nginx_binary
    from llmrca.testbed.prometheus import prometheus_binary

    if prometheus_binary() is None or nginx_binary() is None:
        return "the live testbed needs the Debian packages prometheus and nginx (apt-get install -y prometheus nginx)"
    if __import__("os").environ.get("LLMRCA_SKIP_TESTBED") == "1":
        return "LLMRCA_SKIP_TESTBED=1"
    return None


def test_a_testbed_caps_its_real_gpu_and_down_restores_the_default(tmp_path, smi):
    """The whole path on a running testbed (the emulated engine, one replica on fake GPU 1): inject through the
    control API, then `down` while the fault holds — the supervisor's cleanup registry puts the default back."""
    why = _testbed_missing()
    if why:
        pytest.skip(why)
    from llmrca.testbed import control
    from llmrca.testbed.config import TestbedConfig

    run = tmp_path / "run"
    cfg = TestbedConfig.from_dict({"deploy": {"replicas": 2}, "load": False})
    st = control.up(cfg, run, detach=True, real_gpus={"ray-replicas-0": "1"})
    try:
        assert st["real_gpus"] == {"ray-replicas-0": "1"} and st["gpu_host"]["gpus"]["1"]["default_limit_w"] == 700.0
        rec = control.inject("gpu", "ray-replicas-0", 300.0, {"depth": 1.0}, run, wait=False)
        assert rec["method"] == "nvidia-smi -i 1 -pl 262.5"  # 37.5 % of the real GPU's 700 W, under its 413.5 W
        assert smi.read()["gpus"][1]["power.limit"] == 262.5
    finally:
        control.down(run)
    assert ["-i", "1", "-pl", "700"] in smi.calls() and smi.read()["gpus"][1]["power.limit"] == 700.0
    assert _gone(rec["notes"]["restore_pid"])
    assert not any(a[:2] == ["-i", "0"] for a in smi.calls())  # no replica on GPU 0: never touched
    done = [json.loads(x) for x in (run / "injections.jsonl").read_text().splitlines()][-1]
    assert done["status"] == "done" and done["undo_reason"] == "the testbed stopped"
