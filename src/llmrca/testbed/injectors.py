"""Real fault injectors for the live testbed, one per fault of the registry (``llmrca.faults``), each undone
whatever happens: on schedule, on request, when the process that asked for it goes away, when the supervisor
stops (its cleanup registry), and, as a last resort, by itself (a stressor's own ``--timeout``, the engine's and
the mesh's expiry of a power cap or a delay).

| fault         | live injection                                                                               |
|---------------|----------------------------------------------------------------------------------------------|
| cpu           | ``stress-ng --cpu W --cpu-load L`` inside the target's container (its cgroup, or pinned with it)|
| memory        | ``stress-ng --vm W --vm-bytes B --vm-hang 0`` (allocate, touch, hold) in the target's container  |
| network       | a delay on the mesh links towards the target (netem's latency/jitter/correlation)              |
| gpu           | the power cap of the target's emulated GPU through its control endpoint (``nvidia-smi -pl`` on a real GPU) |
| replica-kill  | SIGKILL of the target's engine; the supervisor restarts it after the model's load time          |

Parameters are the registry's (the study's defaults); what cannot be the study's on this machine is scaled
(``live_params``) and both are recorded in the case.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Protocol

import psutil

from llmrca import faults as fault_registry
from llmrca.errors import UnknownNameError
from llmrca.faults import FaultParamError
from llmrca.sim.hardware import gpu_kind
from llmrca.testbed.config import Scaling
from llmrca.testbed.procs import Containment, alive, kill_tree, spawn
from llmrca.testbed.rundir import LOOPBACK

REPLICA_KILL = "replica-kill"
LIVE_FAULTS = ("cpu", "memory", "network", "gpu", REPLICA_KILL)
MEMORY_SHARE_OF_AVAILABLE = 0.3  # a memory hog never takes more than this share of the machine's free memory
SAFETY_MARGIN_S = 15.0  # self-expiry after the planned end, should every other undo path fail


class Host(Protocol):
    """What an injector needs from the supervisor."""

    state: dict[str, Any]
    containment: Containment
    scaling: Scaling

    def service_pids(self, service: str) -> list[int]: ...

    def attach(self, service: str, pid: int) -> None: ...

    def detach(self, service: str, pid: int) -> None: ...

    def kill_engine(self, service: str, restart_after_s: float) -> int | None: ...

    def ensure_engine(self, service: str) -> None: ...

    def out_path(self, name: str) -> Any: ...


def _http(method: str, url: str, body: dict | None = None, timeout: float = 5.0) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:  # loopback only: the URLs are built from ports
            return json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        raise FaultParamError(f"{method} {url}: {e.code} {e.read().decode(errors='replace')}") from None


def resolve_params(fault: str, params: dict[str, Any] | None, gpu: str) -> dict[str, Any]:
    """The fault's parameters from the registry (``replica-kill``: its own), checked."""
    if fault == REPLICA_KILL:
        try:
            return fault_registry.get(REPLICA_KILL).resolve(params)
        except UnknownNameError:
            p = dict(params or {})
            unknown = sorted(set(p) - {"load_s"})
            if unknown:
                raise UnknownNameError(f"fault 'replica-kill' has no parameter(s) {', '.join(unknown)}; "
                                       "known: load_s") from None
            return p
    spec = fault_registry.get(fault)
    out = spec.resolve(params)
    if fault == "gpu":
        power_watts(out, gpu)  # the GPU must accept the cap (as nvidia-smi would refuse it)
    return out


def power_watts(params: dict[str, Any], gpu: str) -> float:
    """The cap in watts, as the simulator resolves it: a fraction is held to what the GPU accepts, a wattage
    outside that range is refused."""
    g = gpu_kind(gpu)
    if params.get("power_limit_frac") is not None:
        return float(min(max(params["power_limit_frac"] * g.tdp_w, g.min_power_w), g.tdp_w))
    w = float(params["power_limit_w"])
    if not (g.min_power_w <= w <= g.tdp_w):
        raise FaultParamError(f"power limit {w:g} W is outside what a {g.name} accepts ({g.min_power_w:g}-"
                              f"{g.tdp_w:g} W): nvidia-smi -pl would refuse it")
    return w


def live_params(fault: str, params: dict[str, Any], scaling: Scaling, gpu: str, *,
                available_bytes: int | None = None, model_load_s: float = 8.0) -> dict[str, Any]:
    """What the injector really does on this machine, from the study's parameters: stress workers in proportion
    to the pod's CPU (16 workers for 8 cores), a hog in proportion to the pod's memory (8 GB of 16 GiB) and never
    more than a share of the free memory; delays and power caps as given."""
    if fault == "cpu":
        return {"workers": max(1, round(params["workers"] * scaling.cpu_factor)), "load": int(params["load"]),
                "pod_cpu": scaling.pod_cpu}
    if fault == "memory":
        avail = available_bytes if available_bytes is not None else psutil.virtual_memory().available
        want = params["size_gb"] * 1e9 * scaling.memory_factor
        size = min(want, MEMORY_SHARE_OF_AVAILABLE * avail)
        return {"bytes": int(size), "workers": int(params["workers"]), "pod_memory_bytes": scaling.pod_memory_bytes,
                "capped_by_free_memory": bool(size < want)}
    if fault == "network":
        return {"latency_s": params["latency_ms"] / 1000.0, "jitter_s": params["jitter_ms"] / 1000.0,
                "correlation": float(params["correlation"])}
    if fault == "gpu":
        return {"watts": power_watts(params, gpu), "gpu": gpu_kind(gpu).name}
    if fault == REPLICA_KILL:
        return {"load_s": float(params.get("load_s", model_load_s))}
    raise UnknownNameError(f"no live injector for fault {fault!r}; live faults: {', '.join(LIVE_FAULTS)}")


@dataclass
class Injector:
    """One injection: ``apply`` does it, ``undo`` (idempotent) restores the system."""

    host: Host
    fault: str
    target: str
    params: dict[str, Any]
    live: dict[str, Any]
    end: float  # planned end (unix s)
    seed: int = 0
    method: str = ""
    undone: bool = False
    _pids: list[int] = field(default_factory=list)
    _pinned: dict[int, list[int]] = field(default_factory=dict)

    def apply(self) -> None:
        getattr(self, "_apply_" + self.fault.replace("-", "_"))()

    def undo(self) -> None:
        if self.undone:
            return
        self.undone = True
        getattr(self, "_undo_" + self.fault.replace("-", "_"))()

    # -- stress in the target's container --------------------------------------------------------------
    def _stressor(self, argv: list[str], name: str) -> None:
        c = self.host.containment
        cpus = None
        if c.mode == "affinity":
            self._pinned = c.pin(self.host.service_pids(self.target))
            cpus = sorted(os.sched_getaffinity(0))[-1:]
        p = spawn(argv, out=self.host.out_path(name), cgroup_procs=c.procs_files(self.target),
                  new_session=True, cpus=cpus)
        self._pids.append(p.pid)
        self.host.attach(self.target, p.pid)
        self.method = f"{' '.join(argv)} [{c.mode}]"

    def _stop_stressors(self) -> None:
        for pid in self._pids:
            kill_tree(pid, timeout=3.0)
            self.host.detach(self.target, pid)
        if self._pinned:
            Containment.unpin(self._pinned)

    def _timeout(self) -> int:
        return max(1, int(self.end - time.time() + SAFETY_MARGIN_S))

    def _apply_cpu(self) -> None:
        w, load = self.live["workers"], self.live["load"]
        exe = shutil.which("stress-ng")
        if exe:
            argv = [exe, "--cpu", str(w), "--cpu-load", str(load), "--timeout", f"{self._timeout()}s", "--quiet"]
        else:  # no stress-ng: busy Python workers, each capped by the same timeout
            argv = [sys.executable, "-m", "llmrca.testbed.hog", "cpu", str(w), str(load), str(self._timeout())]
        self._stressor(argv, f"stress-cpu-{self.target}")

    _undo_cpu = _stop_stressors

    def _apply_memory(self) -> None:
        w = max(1, int(self.live["workers"]))
        per = max(4096, self.live["bytes"] // w)
        exe = shutil.which("stress-ng")
        if exe:
            argv = [exe, "--vm", str(w), "--vm-bytes", f"{per}", "--vm-hang", "0", "--vm-keep", "--vm-populate",
                    "--vm-method", "write64",
                    "--timeout", f"{self._timeout()}s", "--quiet"]
        else:
            argv = [sys.executable, "-m", "llmrca.testbed.hog", "memory", str(w), str(per), str(self._timeout())]
        self._stressor(argv, f"stress-memory-{self.target}")

    _undo_memory = _stop_stressors

    # -- the mesh ----------------------------------------------------------------------------------------
    def _mesh(self) -> str:
        return f"http://{LOOPBACK}:{self.host.state['ports']['mesh']}"

    def _apply_network(self) -> None:
        body = {"target": self.target, **self.live, "expires_at": self.end + SAFETY_MARGIN_S, "seed": self.seed}
        r = _http("POST", self._mesh() + "/delay", body)
        self.method = f"mesh delay on {', '.join(r.get('links', []))}"

    def _undo_network(self) -> None:
        _http("DELETE", f"{self._mesh()}/delay/{self.target}")

    # -- the GPU -----------------------------------------------------------------------------------------
    def _real_gpu(self) -> str | None:
        return (self.host.state.get("real_gpus") or {}).get(self.target)

    def _apply_gpu(self) -> None:
        real = self._real_gpu()
        if real is not None:
            self.live["default_watts"] = nvidia_default_limit(real)
            run_nvidia_smi(nvidia_smi_power_limit(real, self.live["watts"]))
            self.method = " ".join(nvidia_smi_power_limit(real, self.live["watts"]))
            return
        port = self.host.state["ports"][f"engine:{self.target}"]
        _http("POST", f"http://{LOOPBACK}:{port}/control/power-limit",
              {"watts": self.live["watts"], "expires_at": self.end + SAFETY_MARGIN_S, "reason": "fault injection"})
        self.method = f"emulated GPU control endpoint: power limit {self.live['watts']:g} W"

    def _undo_gpu(self) -> None:
        real = self._real_gpu()
        if real is not None:
            run_nvidia_smi(nvidia_smi_power_limit(real, self.live["default_watts"]))
            return
        port = self.host.state["ports"][f"engine:{self.target}"]
        try:
            _http("POST", f"http://{LOOPBACK}:{port}/control/power-limit", {"watts": None, "reason": "fault undone"})
        except (OSError, FaultParamError):
            pass  # the engine is gone (and comes back at its default limit)

    # -- the process --------------------------------------------------------------------------------------
    def _apply_replica_kill(self) -> None:
        pid = self.host.kill_engine(self.target, self.live["load_s"])
        self.live["killed_pid"] = pid
        self.method = f"SIGKILL pid {pid}; restart after {self.live['load_s']:g} s"

    def _undo_replica_kill(self) -> None:
        self.host.ensure_engine(self.target)


def nvidia_smi_power_limit(gpu_index: str, watts: float) -> list[str]:
    return ["nvidia-smi", "-i", str(gpu_index), "-pl", f"{watts:g}"]


def nvidia_default_limit(gpu_index: str) -> float:
    r = subprocess.run(["nvidia-smi", "-i", str(gpu_index), "--query-gpu=power.default_limit",
                        "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20, check=False)
    if r.returncode != 0:
        raise FaultParamError(f"nvidia-smi could not read GPU {gpu_index}'s default power limit: {r.stderr.strip()}")
    return float(r.stdout.strip().splitlines()[0])


def run_nvidia_smi(argv: list[str]) -> None:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    if r.returncode != 0:
        raise FaultParamError(f"{' '.join(argv)} failed: {(r.stderr or r.stdout).strip()}")


def stop_pid(pid: int) -> None:
    """Stop a stressor by its id (and its children)."""
    if alive(pid):
        kill_tree(pid, timeout=3.0, sig=signal.SIGTERM)
