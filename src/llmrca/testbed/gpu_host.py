"""The testbed on a GPU host: real GPUs found with ``nvidia-smi``, mapped to replicas, capped with
``nvidia-smi -pl`` and watched under DCGM's names.

* :func:`list_gpus`: the host's GPUs with their default and accepted power limits.
* :func:`assign`: replica → GPU index (``--real-gpu REPLICA=INDEX``, else replica *i* on GPU *i*).
* :func:`setup`: what the supervisor does once at start: the GPUs, the mapping, and whether a dcgm-exporter
  answers (``LLMRCA_DCGM_EXPORTER_URL``, default ``http://127.0.0.1:9400/metrics``; ``off`` disables the probe).
* :class:`Poller`: with no dcgm-exporter, ``nvidia-smi --query-gpu`` every scrape step in its own thread (so a slow
  or hung driver never blocks the agent), its readings exported by the supervisor's agent under the DCGM names
  the metric catalogue queries (``DCGM_FI_DEV_*``, in DCGM's units) and Ray's ``ray_node_gpus_utilization``,
  labelled with the replica's ``service``. With a dcgm-exporter, Prometheus scrapes it instead
  (:func:`dcgm_scrape_job` relabels its ``gpu`` index to the replica) and the poller exports only Ray's series,
  which Ray's agent reads from NVML whether DCGM runs or not.

Only what ``nvidia-smi`` reports is exported: the catalogue's DCGM columns it has no field for (energy counter,
XID errors, PCIe throughput, profiling and violation counters) come only from a dcgm-exporter.
Every call of ``nvidia-smi`` has a timeout and kills its whole process group when it runs out.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from llmrca.faults import FaultParamError

NVIDIA_SMI_TIMEOUT_S = 10.0
DCGM_URL_ENV = "LLMRCA_DCGM_EXPORTER_URL"
DEFAULT_DCGM_URL = "http://127.0.0.1:9400/metrics"
LIST_FIELDS = "index,name,uuid,power.default_limit,power.min_limit,power.max_limit"
# (nvidia-smi field, DCGM field, DCGM's unit = nvidia-smi's with nounits: W, MHz, C, %, MiB)
POLL_FIELDS: tuple[tuple[str, str | None], ...] = (
    ("index", None),
    ("power.draw", "POWER_USAGE"),
    ("power.limit", "POWER_MGMT_LIMIT"),
    ("clocks.sm", "SM_CLOCK"),
    ("clocks.mem", "MEM_CLOCK"),
    ("temperature.gpu", "GPU_TEMP"),
    ("temperature.memory", "MEMORY_TEMP"),
    ("utilization.gpu", "GPU_UTIL"),
    ("utilization.memory", "MEM_COPY_UTIL"),
    ("memory.used", "FB_USED"),
    ("memory.free", "FB_FREE"),
    ("memory.total", None),
    ("clocks_event_reasons.active", "CLOCKS_EVENT_REASONS"),  # a hex bitmask, NVML's clock event reasons
)
# Drivers before R535 call the clock event reasons "throttle reasons".
OLD_FIELD_NAMES = {"clocks_event_reasons.active": "clocks_throttle_reasons.active"}


class GpuHostError(FaultParamError):
    """nvidia-smi is missing, refused, failed or did not answer; the message says which and why."""


@dataclass(frozen=True)
class Gpu:
    index: str
    name: str
    uuid: str
    default_limit_w: float
    min_limit_w: float
    max_limit_w: float

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "name": self.name, "uuid": self.uuid, "default_limit_w": self.default_limit_w,
                "min_limit_w": self.min_limit_w, "max_limit_w": self.max_limit_w}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Gpu:
        return cls(str(d["index"]), str(d["name"]), str(d["uuid"]), float(d["default_limit_w"]),
                   float(d["min_limit_w"]), float(d["max_limit_w"]))


def nvidia_smi() -> str | None:
    """The ``nvidia-smi`` on PATH, or None (a CPU host)."""
    return shutil.which("nvidia-smi")


def run(args: list[str], timeout: float = NVIDIA_SMI_TIMEOUT_S) -> str:
    """``nvidia-smi ARGS``'s output. In its own process group, killed whole at the timeout: a wrapper's child that
    holds the pipe open must not turn a timeout into a hang."""
    exe = nvidia_smi()
    what = " ".join(["nvidia-smi", *args])
    if exe is None:
        raise GpuHostError(f"{what}: nvidia-smi not found on PATH (no NVIDIA driver on this host)")
    p = subprocess.Popen([exe, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        raise GpuHostError(f"{what}: no answer within {timeout:g} s (killed); is the driver hung?") from None
    if p.returncode != 0:
        raise GpuHostError(f"{what} failed (exit {p.returncode}): {_why(out, err)}")
    return out


def _why(out: str, err: str) -> str:
    """nvidia-smi's complaint on one line, with what to do about the common ones."""
    text = " ".join((err.strip() or out.strip() or "no message").split())
    low = text.lower()
    if "permission" in low or "root" in low or "not supported in current scope" in low:
        return f"{text} (changing a power limit needs root, or persistence mode: nvidia-smi -pm 1)"
    if "not a valid power limit" in low or "out of range" in low:
        return f"{text} (the cap is outside the range this GPU accepts)"
    return text


def _value(s: str) -> float | None:
    """A CSV cell as a number; ``[N/A]``, ``[Not Supported]``, ``N/A``: None (the GPU does not report it)."""
    s = s.strip()
    if not s or s.startswith("[") or s.upper() == "N/A":
        return None
    if s.lower().startswith("0x"):
        return float(int(s, 16))
    return float(s)


def _rows(text: str, n: int, what: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != n:
            raise GpuHostError(f"{what}: expected {n} comma-separated values per GPU, got {line!r}")
        rows.append(cells)
    return rows


def list_gpus(timeout: float = NVIDIA_SMI_TIMEOUT_S) -> list[Gpu]:
    """The host's GPUs (none when nvidia-smi is absent)."""
    if nvidia_smi() is None:
        return []
    args = [f"--query-gpu={LIST_FIELDS}", "--format=csv,noheader,nounits"]
    out = []
    for index, name, uuid, dflt, lo, hi in _rows(run(args, timeout), 6, "nvidia-smi --query-gpu"):
        limits = [_value(v) for v in (dflt, lo, hi)]
        if any(v is None for v in limits):
            raise GpuHostError(f"nvidia-smi reports no power limits for GPU {index} ({name}): it cannot be capped")
        out.append(Gpu(index, name, uuid, *(float(v) for v in limits)))  # type: ignore[arg-type]
    return out


def assign(replicas: list[str], given: Mapping[str, str] | None, gpus: list[Gpu]) -> dict[str, str]:
    """Replica → GPU index: the ``--real-gpu`` mapping, the other replicas on the unused GPUs in index order."""
    given = {str(k): str(v) for k, v in (given or {}).items()}
    known = {g.index for g in gpus}
    for r, i in given.items():
        if r not in replicas:
            raise GpuHostError(f"--real-gpu {r}={i}: no replica {r!r}; the replicas are {', '.join(replicas)}")
        if i not in known:
            have = ", ".join(sorted(known)) if known else "none (nvidia-smi found no GPU)"
            raise GpuHostError(f"--real-gpu {r}={i}: no GPU {i} on this host; its GPUs: {have}")
    out = dict(given)
    free = [g.index for g in gpus if g.index not in given.values()]
    rest = [r for r in replicas if r not in given]
    if len(free) < len(rest):
        raise GpuHostError(f"{len(replicas)} replicas need a GPU each but this host has {len(gpus)} "
                           f"({len(free)} left for {', '.join(rest)}): use fewer replicas or map them with "
                           "--real-gpu REPLICA=INDEX")
    out.update(zip(rest, free))
    return {r: out[r] for r in replicas if r in out}


def dcgm_url() -> str | None:
    """The dcgm-exporter URL to probe (None: the probe is off)."""
    url = os.environ.get(DCGM_URL_ENV, DEFAULT_DCGM_URL).strip()
    return None if url.lower() in ("", "off", "none", "0") else url


def dcgm_exporter_up(url: str, timeout: float = 1.0) -> bool:
    """A dcgm-exporter answers at ``url`` with DCGM fields."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # a local exporter, or the one the user named
            return r.status == 200 and b"DCGM_FI_" in r.read(1 << 20)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def dcgm_scrape_job(url: str, assigned: Mapping[str, str]) -> str:
    """A Prometheus scrape job (YAML lines under ``scrape_configs:``) for a dcgm-exporter: its ``gpu`` label (the
    index) relabelled to the replica's ``service``; GPUs no replica uses are dropped."""
    u = urllib.parse.urlsplit(url)
    if u.scheme not in ("http", "https") or not u.netloc:
        raise GpuHostError(f"{DCGM_URL_ENV}={url!r}: expected http(s)://HOST:PORT/PATH")
    lines = ['  - job_name: "dcgm-exporter"', f"    scheme: {u.scheme}", f'    metrics_path: "{u.path or "/metrics"}"',
             "    static_configs:", f'      - targets: ["{u.netloc}"]', "    metric_relabel_configs:"]
    for replica, index in sorted(assigned.items(), key=lambda kv: kv[1]):
        lines += ["      - source_labels: [gpu]", f'        regex: "{index}"', "        target_label: service",
                  f'        replacement: "{replica}"']
    lines += ["      - source_labels: [service]", '        regex: ""', "        action: drop"]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class HostGpus:
    """What :func:`setup` found: the GPUs, which replica runs on which, and the dcgm-exporter Prometheus scrapes
    (None: the poller exports the DCGM names)."""

    gpus: tuple[Gpu, ...]
    assigned: dict[str, str]
    dcgm_url: str | None

    def gpu(self, index: str) -> Gpu:
        return next(g for g in self.gpus if g.index == index)

    def to_state(self) -> dict[str, Any]:
        return {"gpus": {g.index: g.to_dict() for g in self.gpus}, "dcgm_exporter": self.dcgm_url}


def setup(engine: str, replicas: list[str], given: Mapping[str, str] | None) -> HostGpus:
    """The GPUs of this host for a deployment. The real engine (``vllm``) gets one GPU per replica when the host
    has any (none on a CPU host: it runs on CPU and refuses GPU faults); the emulated engine only the GPUs
    ``--real-gpu`` names (its power cap then goes to them)."""
    if not given and (engine != "vllm" or nvidia_smi() is None):
        return HostGpus((), {}, None)
    gpus = list_gpus()
    if given and not gpus:
        raise GpuHostError(f"--real-gpu {', '.join(f'{k}={v}' for k, v in given.items())}: nvidia-smi "
                           f"{'found no GPU' if nvidia_smi() else 'not found on PATH'} on this host")
    if engine == "vllm" and gpus:
        assigned = assign(replicas, given, gpus)
    else:
        assigned = assign([r for r in replicas if r in (given or {})], given, gpus)
    url = dcgm_url() if engine == "vllm" and assigned else None
    return HostGpus(tuple(gpus), assigned, url if url and dcgm_exporter_up(url) else None)


def facts_gpu(state: Mapping[str, Any], index: str) -> Gpu:
    """The GPU ``index`` as :func:`setup` recorded it in the run's state (listed again if it did not)."""
    rec = (state.get("gpu_host") or {}).get("gpus", {}).get(str(index))
    if rec is not None:
        return Gpu.from_dict(rec)
    for g in list_gpus():
        if g.index == str(index):
            return g
    raise GpuHostError(f"nvidia-smi lists no GPU {index}")


def cuda_visible_devices(state: Mapping[str, Any], replica: str) -> str | None:
    """The real engine's ``CUDA_VISIBLE_DEVICES`` for ``replica``: its GPU's UUID. CUDA numbers GPUs fastest
    first unless ``CUDA_DEVICE_ORDER=PCI_BUS_ID``, nvidia-smi by PCI bus: an index could name another GPU than the
    one the power cap goes to, a UUID names the same one. None: the replica has no GPU (a CPU host)."""
    index = (state.get("real_gpus") or {}).get(replica)
    if index is None:
        return None
    rec = (state.get("gpu_host") or {}).get("gpus", {}).get(str(index))
    return str(rec["uuid"]) if rec and rec.get("uuid") else str(index)


def read_one(index: str, field: str) -> float:
    """One field of one GPU (``power.draw``, ``power.default_limit`` …), a number."""
    out = run(["-i", str(index), f"--query-gpu={field}", "--format=csv,noheader,nounits"])
    lines = [ln for ln in out.splitlines() if ln.strip()]
    v = _value(lines[0]) if lines else None
    if v is None:
        raise GpuHostError(f"nvidia-smi reports no {field} for GPU {index} (got {out.strip()!r})")
    return v


def power_limit_args(index: str, watts: float) -> list[str]:
    return ["-i", str(index), "-pl", f"{watts:g}"]


def set_power_limit(index: str, watts: float) -> list[str]:
    """``nvidia-smi -i INDEX -pl WATTS``; the command run (for the injection record)."""
    args = power_limit_args(index, watts)
    run(args)
    return ["nvidia-smi", *args]


def restore_later(index: str, watts: float, after_s: float, out: Any = None) -> int:
    """A process of its own session (it outlives a supervisor killed with SIGKILL) that sets GPU ``index``'s limit
    back to ``watts`` after ``after_s`` seconds: a real cap's last-resort expiry, as the emulated cap's
    ``expires_at``. Its pid; stop it (``kill_tree``) once the limit is restored."""
    from llmrca.testbed.procs import spawn

    exe = nvidia_smi()
    if exe is None:
        raise GpuHostError("nvidia-smi not found on PATH (no NVIDIA driver on this host)")
    script = f'sleep {max(1.0, after_s):g} && exec "$0" {" ".join(power_limit_args(index, watts))}'
    return spawn(["sh", "-c", script, exe], out=out, die_with_parent=False, new_session=True).pid


# -- the poller --------------------------------------------------------------------------------------------
def query_sample(fields: tuple[str, ...], timeout: float) -> dict[str, dict[str, float | None]]:
    """One ``nvidia-smi --query-gpu`` of ``fields`` (``index`` first): GPU index → field → value."""
    out = run([f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"], timeout)
    return {cells[0]: {f: _value(c) for f, c in zip(fields[1:], cells[1:])}
            for cells in _rows(out, len(fields), "nvidia-smi --query-gpu")}


class Poller:
    """``nvidia-smi --query-gpu`` every ``step`` seconds in a daemon thread; :meth:`collect` (a prometheus-client
    collector's method, called by the agent's ``/metrics``) only reads the last sample, so it never waits on the
    driver. A sample older than ``stale_s`` is not exported: a gap, as a dead exporter gives."""

    def __init__(self, host: HostGpus, step: float, hostname: str, *, dcgm: bool,
                 timeout: float = NVIDIA_SMI_TIMEOUT_S, log: Any = None):
        self.host = host
        self.step = float(step)
        self.hostname = hostname
        self.dcgm = dcgm  # export the DCGM names (False: a dcgm-exporter does; only Ray's series here)
        self.timeout = min(timeout, max(1.0, 4.0 * self.step))
        self.stale_s = max(3.0 * self.step, self.timeout + self.step)
        self.log = log
        self.fields = tuple(f for f, _ in POLL_FIELDS)
        self.sample: dict[str, dict[str, float | None]] = {}
        self.sampled_at = 0.0
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll_once(self) -> None:
        try:
            try:
                s = query_sample(self.fields, self.timeout)
            except GpuHostError as e:
                old = next((f for f in self.fields if f in OLD_FIELD_NAMES and f in str(e)), None)
                if old is None:
                    raise
                # an older driver: the same bitmask under its old name
                self.fields = tuple(OLD_FIELD_NAMES.get(f, f) for f in self.fields)
                s = query_sample(self.fields, self.timeout)
                s = {i: {{v: k for k, v in OLD_FIELD_NAMES.items()}.get(f, f): x for f, x in row.items()}
                     for i, row in s.items()}
        except GpuHostError as e:
            if self.log is not None and str(e) != self.error:
                self.log.write("ERROR", "GPU poller: {}", str(e))
            self.error = str(e)
            return
        self.sample, self.sampled_at, self.error = s, time.time(), None

    def _loop(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            self.poll_once()
            self._stop.wait(max(0.05, self.step - (time.monotonic() - t0)))

    def start(self) -> Poller:
        self._thread = threading.Thread(target=self._loop, name="gpu-poller", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 2.0)

    def power_draw_w(self, index: str) -> float | None:
        row = self.sample.get(str(index)) if time.time() - self.sampled_at <= self.stale_s else None
        return None if row is None else row.get("power.draw")

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        if not self.sample or time.time() - self.sampled_at > self.stale_s:
            return
        labels = ["gpu", "UUID", "device", "modelName", "Hostname", "service"]
        by_index = {i: r for r, i in self.host.assigned.items()}
        rows = [(i, by_index[i], row) for i, row in sorted(self.sample.items()) if i in by_index]
        if self.dcgm:
            for field, dcgm in POLL_FIELDS:
                if dcgm is None:
                    continue
                fam = GaugeMetricFamily(f"DCGM_FI_DEV_{dcgm}", f"DCGM field {dcgm} (nvidia-smi {field}).",
                                        labels=labels)
                for i, svc, row in rows:
                    v = row.get(field)
                    if v is not None:  # a field this GPU does not report: no series, as DCGM gives
                        g = self.host.gpu(i)
                        fam.add_metric([i, g.uuid, f"nvidia{i}", g.name, self.hostname, svc], v)
                if fam.samples:
                    yield fam
        ray = GaugeMetricFamily("ray_node_gpus_utilization", "Ray's GPU utilisation (%), NVML's utilization.gpu.",
                                labels=["GpuIndex", "GpuDeviceName", "service"])
        for i, svc, row in rows:
            if row.get("utilization.gpu") is not None:
                ray.add_metric([i, self.host.gpu(i).name, svc], row["utilization.gpu"])
        if ray.samples:
            yield ray
