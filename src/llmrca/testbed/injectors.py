"""Real fault injectors for the live testbed. A fault of the registry (``llmrca.faults``) is turned into
perturbations of causes by its spec, exactly as in the simulator (``spec.applied`` then ``spec.effect``); this
module maps each *cause* to one live mechanism, scales it to this machine once, and undoes it whatever happens:
on schedule, on request, when the process that asked for it goes away, when the supervisor stops (its cleanup
registry), and, as a last resort, by itself (a stressor's own ``--timeout``, the engine's and the mesh's expiry of
a power cap or a delay).

* ``cpu_stress``: ``stress-ng --cpu W --cpu-load L`` in the target's container (its cgroup, or pinned with it);
  workers scaled by pod CPU / 8 (the study's pods).
* ``memory_hog``: ``stress-ng --vm W --vm-bytes B --vm-hang 0`` (allocate, touch, hold) there; bytes scaled by pod
  memory / 16 GiB and never more than 30 % of the free memory.
* ``ingress_delay``: a delay on the mesh links towards the target (netem's latency/jitter/correlation).
* ``power_limit``: the emulated GPU's control endpoint (``nvidia-smi -pl`` on a real GPU).
* ``process_kill``: SIGKILL of the target's engine; the supervisor starts it again after ``load_s``.

The live faults are the registry's faults whose causes all have a mechanism here (``live_faults()``). A case
records the values applied on this machine under the causes' names, the same names a simulated case uses.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import psutil

from llmrca import faults as fault_registry
from llmrca.errors import UnknownNameError
from llmrca.faults import FaultParamError, Perturbation, TargetFacts
from llmrca.sim.hardware import gpu_kind
from llmrca.testbed.config import Scaling
from llmrca.testbed.procs import Containment, alive, kill_tree, spawn
from llmrca.testbed.rundir import LOOPBACK

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


def _http(method: str, url: str, body: dict | None = None, timeout: float = 5.0,
          headers: dict[str, str] | None = None) -> dict:
    data = json.dumps(body, allow_nan=False).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:  # loopback only: the URLs are built from ports
            return json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        raise FaultParamError(f"{method} {url}: {e.code} {e.read().decode(errors='replace')}") from None


# -- machine scaling, once per cause: (cause values, scaling, free bytes) -> (live values, how they were scaled) --
def _scale_cpu(v: dict[str, Any], sc: Scaling, free: int | None) -> tuple[dict[str, Any], dict[str, Any]]:
    # The study's 16 workers next to an 8-CPU pod: as many per core of this machine's pod.
    return ({"workers": max(1, round(v["workers"] * sc.cpu_factor)), "load": int(v["load"])},
            {"pod_cpu": sc.pod_cpu, "cpu_factor": sc.cpu_factor})


def _scale_memory(v: dict[str, Any], sc: Scaling, free: int | None) -> tuple[dict[str, Any], dict[str, Any]]:
    # The study's 8 GB of a 16 GiB pod, as the same share of this pod, never more than a share of free memory.
    avail = free if free is not None else psutil.virtual_memory().available
    want = v["bytes"] * sc.memory_factor
    size = min(want, MEMORY_SHARE_OF_AVAILABLE * avail)
    return ({"bytes": int(size), "workers": int(v["workers"])},
            {"pod_memory_bytes": sc.pod_memory_bytes, "memory_factor": sc.memory_factor,
             "capped_by_free_memory": bool(size < want)})


def _as_given(v: dict[str, Any], sc: Scaling, free: int | None) -> tuple[dict[str, Any], dict[str, Any]]:
    return dict(v), {}


@dataclass(frozen=True)
class Mechanism:
    how: str  # what it does, in words
    scale: Callable[[dict[str, Any], Scaling, int | None], tuple[dict[str, Any], dict[str, Any]]]
    apply: str  # Injector method that does it
    undo: str  # Injector method that restores the system


MECHANISMS: dict[str, Mechanism] = {
    "cpu_stress": Mechanism("stress-ng --cpu in the target's container", _scale_cpu, "_apply_cpu", "_stop_stressors"),
    "memory_hog": Mechanism("stress-ng --vm in the target's container", _scale_memory, "_apply_memory",
                            "_stop_stressors"),
    "ingress_delay": Mechanism("mesh delay towards the target", _as_given, "_apply_delay", "_undo_delay"),
    "power_limit": Mechanism("engine control endpoint / nvidia-smi -pl", _as_given, "_apply_power", "_undo_power"),
    "process_kill": Mechanism("SIGKILL of the engine, restart after load_s", _as_given, "_apply_kill", "_undo_kill"),
}


def live_faults() -> tuple[str, ...]:
    """The registry's faults the live testbed can inject: those whose causes all have a mechanism here."""
    return tuple(s.id for s in fault_registry.specs() if s.causes and all(c in MECHANISMS for c in s.causes))


@dataclass(frozen=True)
class LivePlan:
    """A fault resolved for this machine: its perturbations with the values applied here."""

    fault: str
    target: str
    applied: dict[str, Any]  # the fault's parameters as they act on the target (a cap in watts)
    effects: tuple[Perturbation, ...]  # values as scaled to this machine
    machine: dict[str, Any]  # how the machine scaling changed them (factors, caps), per cause

    def recorded(self) -> dict[str, Any]:
        """What the case records (the simulator's names: workers, load, bytes, latency_s, watts, load_s, ...)."""
        out = fault_registry.recorded(list(self.effects), self.applied)
        if any(self.machine.values()):
            out["machine"] = {c: m for c, m in self.machine.items() if m}
        return out


def plan(fault: str, target: str, params: dict[str, Any] | None, gpu: str, scaling: Scaling, start: float,
         end: float, *, available_bytes: int | None = None,
         power_draw_w: Callable[[], float] | None = None) -> LivePlan:
    """``fault`` on ``target`` as this machine does it: the registry's parameters checked and applied (a cap must be
    one the GPU accepts), its perturbations, each scaled to the machine by its cause's mechanism."""
    spec = fault_registry.get(fault)
    if fault not in live_faults():
        missing = [c for c in spec.causes if c not in MECHANISMS]
        raise UnknownNameError(f"no live mechanism for fault {fault!r} (cause {', '.join(missing)}); live faults: "
                               f"{', '.join(live_faults())}")
    g = gpu_kind(gpu)
    applied = spec.applied(params, TargetFacts(g.name, g.min_power_w, g.tdp_w, power_draw_w))
    effects, machine = [], {}
    for p in spec.effect(applied, target, start, end):
        values, how = MECHANISMS[p.cause].scale(dict(p.values), scaling, available_bytes)
        effects.append(Perturbation(p.cause, p.service, p.start, p.end, values))
        machine[p.cause] = how
    return LivePlan(fault, target, applied, tuple(effects), machine)


_POWER_LINE = re.compile(r"^DCGM_FI_DEV_POWER_USAGE(?:\{[^}]*\})?\s+([0-9.eE+-]+)\s*$", re.MULTILINE)


def power_in_exposition(text: str, where: str) -> float:
    """The DCGM power gauge (W) in a Prometheus text exposition."""
    m = _POWER_LINE.search(text)
    if m is None:
        raise FaultParamError(f"{where} reports no DCGM_FI_DEV_POWER_USAGE: the GPU's draw is unknown")
    return float(m.group(1))


def engine_power_w(port: int) -> float:
    """The emulated GPU's power draw now, read from its engine's ``/metrics`` (what a relative cap goes under)."""
    with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/metrics", timeout=5.0) as r:  # loopback only
        return power_in_exposition(r.read().decode(errors="replace"), f"engine on port {port}")


@dataclass
class Injector:
    """One injection of a planned fault: ``apply`` does each effect, ``undo`` (idempotent) restores the system."""

    host: Host
    plan: LivePlan
    end: float  # planned end (unix s)
    seed: int = 0
    injection_id: str | None = None  # sent with every control change, which the engine/mesh record under it
    method: str = ""
    undone: bool = False
    notes: dict[str, Any] = field(default_factory=dict)  # what the mechanisms learnt (a killed pid, a default)
    _pids: list[int] = field(default_factory=list)
    _pinned: dict[int, list[int]] = field(default_factory=dict)

    @property
    def target(self) -> str:
        return self.plan.target

    def apply(self) -> None:
        for p in self.plan.effects:
            getattr(self, MECHANISMS[p.cause].apply)(p.values)

    def undo(self) -> None:
        if self.undone:
            return
        self.undone = True
        for p in reversed(self.plan.effects):
            getattr(self, MECHANISMS[p.cause].undo)(p.values)

    # -- stress in the target's container --------------------------------------------------------------
    def _stressor(self, argv: list[str], name: str) -> None:
        c = self.host.containment
        cpus = None
        core = getattr(self.host, "engine_core", lambda s: None)(self.target)
        if c.mode == "affinity" and core is not None:
            cpus = [core]  # a real engine's threads are bound to their core: the stressor goes there
        elif c.mode == "affinity":
            self._pinned = c.pin(self.host.service_pids(self.target))
            cpus = sorted(os.sched_getaffinity(0))[-1:]
        p = spawn(argv, out=self.host.out_path(name), cgroup_procs=c.procs_files(self.target),
                  new_session=True, cpus=cpus)
        self._pids.append(p.pid)
        self.host.attach(self.target, p.pid)
        self.method = f"{' '.join(argv)} [{c.mode}]"

    def _stop_stressors(self, values: dict[str, Any] | None = None) -> None:
        for pid in self._pids:
            kill_tree(pid, timeout=3.0)
            self.host.detach(self.target, pid)
        self._pids = []
        if self._pinned:
            Containment.unpin(self._pinned)
            self._pinned = {}

    def _timeout(self) -> int:
        return max(1, int(self.end - time.time() + SAFETY_MARGIN_S))

    def _apply_cpu(self, v: dict[str, Any]) -> None:
        w, load = v["workers"], v["load"]
        exe = shutil.which("stress-ng")
        if exe:
            argv = [exe, "--cpu", str(w), "--cpu-load", str(load), "--timeout", f"{self._timeout()}s", "--quiet"]
        else:  # no stress-ng: busy Python workers, each capped by the same timeout
            argv = [sys.executable, "-m", "llmrca.testbed.hog", "cpu", str(w), str(load), str(self._timeout())]
        self._stressor(argv, f"stress-cpu-{self.target}")

    def _apply_memory(self, v: dict[str, Any]) -> None:
        w = max(1, int(v["workers"]))
        per = max(4096, int(v["bytes"]) // w)
        exe = shutil.which("stress-ng")
        if exe:
            argv = [exe, "--vm", str(w), "--vm-bytes", f"{per}", "--vm-hang", "0", "--vm-keep", "--vm-populate",
                    "--vm-method", "write64",
                    "--timeout", f"{self._timeout()}s", "--quiet"]
        else:
            argv = [sys.executable, "-m", "llmrca.testbed.hog", "memory", str(w), str(per), str(self._timeout())]
        self._stressor(argv, f"stress-memory-{self.target}")

    # -- control endpoints (the run's token; the injection's id, under which the endpoint records the change) ----
    def _control(self, method: str, url: str, body: dict | None = None) -> dict:
        from llmrca.testbed import auth

        return _http(method, url, body, headers={**auth.headers(self.host.state["run_dir"]),
                                                 auth.INJECTION_HEADER: self.injection_id or ""})

    def _mesh(self) -> str:
        return f"http://{LOOPBACK}:{self.host.state['ports']['mesh']}"

    def _apply_delay(self, v: dict[str, Any]) -> None:
        body = {"target": self.target, **v, "expires_at": self.end + SAFETY_MARGIN_S, "seed": self.seed}
        r = self._control("POST", self._mesh() + "/delay", body)
        self.method = f"mesh delay on {', '.join(r.get('links', []))}"

    def _undo_delay(self, v: dict[str, Any]) -> None:
        self._control("DELETE", f"{self._mesh()}/delay/{self.target}")

    # -- the GPU -----------------------------------------------------------------------------------------
    def _real_gpu(self) -> str | None:
        return (self.host.state.get("real_gpus") or {}).get(self.target)

    def _apply_power(self, v: dict[str, Any]) -> None:
        real = self._real_gpu()
        if real is not None:
            self.notes["default_watts"] = nvidia_default_limit(real)
            run_nvidia_smi(nvidia_smi_power_limit(real, v["watts"]))
            self.method = " ".join(nvidia_smi_power_limit(real, v["watts"]))
            return
        port = self.host.state["ports"][f"engine:{self.target}"]
        self._control("POST", f"http://{LOOPBACK}:{port}/control/power-limit",
                      {"watts": v["watts"], "expires_at": self.end + SAFETY_MARGIN_S, "reason": "fault injection"})
        self.method = f"emulated GPU control endpoint: power limit {v['watts']:g} W"

    def _undo_power(self, v: dict[str, Any]) -> None:
        real = self._real_gpu()
        if real is not None:
            run_nvidia_smi(nvidia_smi_power_limit(real, self.notes["default_watts"]))
            return
        port = self.host.state["ports"][f"engine:{self.target}"]
        try:
            self._control("POST", f"http://{LOOPBACK}:{port}/control/power-limit",
                          {"watts": None, "reason": "fault undone"})
        except (OSError, FaultParamError):
            pass  # the engine is gone (and comes back at its default limit)

    # -- the process --------------------------------------------------------------------------------------
    def _apply_kill(self, v: dict[str, Any]) -> None:
        pid = self.host.kill_engine(self.target, v["load_s"])
        self.notes["killed_pid"] = pid
        if (self.host.state.get("engine") or {}).get("kind") == "vllm":
            # the real death path: the server logs the worker's death and exits; its restart loads the model for real
            self.method = f"SIGKILL of vLLM worker pid {pid}; the server exits, restarted at once (real model load)"
            self.notes["emulated_load_s_ignored"] = v["load_s"]
        else:
            self.method = f"SIGKILL pid {pid}; restart after {v['load_s']:g} s"

    def _undo_kill(self, v: dict[str, Any]) -> None:
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
