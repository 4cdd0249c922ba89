"""Real fault injectors for the live testbed. A fault of the registry (``llmrca.faults``) is turned into
perturbations of causes by its spec, exactly as in the simulator (``spec.applied`` then ``spec.effect``); this
module maps each *cause* to one live mechanism, scales it to this machine once, and undoes it whatever happens:
on schedule, on request, when the process that asked for it goes away, when the supervisor stops (its cleanup
registry), and, as a last resort, by itself (a stressor's own ``--timeout``, the engine's and the mesh's expiry of
a power cap or a delay, a real GPU's restore process).

* ``cpu_stress``: ``stress-ng --cpu W --cpu-load L`` in the target's container (its cgroup, or pinned with it);
  workers scaled by pod CPU / 8 (the study's pods).
* ``memory_hog``: ``stress-ng --vm W --vm-bytes B --vm-hang 0`` (allocate, touch, hold) there; bytes scaled by pod
  memory / 16 GiB and never more than 30 % of the free memory.
* ``ingress_delay``: a delay on the mesh links towards the target (netem's latency/jitter/correlation).
* ``power_limit``: the emulated GPU's control endpoint; on a real GPU (``llmrca.testbed.gpu_host``)
  ``nvidia-smi -i N -pl W``, the driver's default limit restored after. Refused for the real engine on a CPU host.
* ``process_kill``: SIGKILL of the target's engine; the supervisor starts it again after ``load_s``.
* ``engine_stall``: the emulated engine's ``/control/stall`` (it stops stepping, its gauges freeze, ``/health`` stays
  200); on the real engine SIGSTOP of its worker processes (``vllm_engine.worker_pids``), SIGCONT after
  ``stall_s``, on undo, and when the supervisor stops.
* ``kv_cache_limit``: the supervisor restarts the target's engine with a KV cache of N tokens
  (``--kv-cache-tokens``; the real engine's ``--kv-cache-memory-bytes``) and again with its normal cache on undo.
* ``device_slowdown``: the emulated GPU's ``/control/slowdown`` (its kernels ``factor`` times slower, self-expiring);
  refused for the real engine (no honest way to slow its device here).
* ``ingress_loss``: the mesh's links towards the target drop segments and hold each chunk for the TCP recovery of
  its lost segments (``llmrca.sim.tcploss``, the simulator's model), self-expiring.

A fault with several perturbations of a cause at different times (a crash loop's kills) applies the later ones
from a thread of its injection, at their offsets (a real engine's next kill: its uptime after it serves again).

* ``prompt_surge``: the load generator's ``/control/surge`` (the workload node's client sends the long prompts);
  it expires by itself, undone by switching it off.
* ``proxy_capacity``: the Serve-like proxy's ``/control/capacity`` (one dispatch at a time, ``dispatch_s`` each:
  requests queue in the proxy); self-expiring.
* ``routing_weights``: the proxy's ``/control/routing`` (a share of requests pinned to one replica);
  self-expiring. The three act above the engines, so they are the same for the emulated and the real engine.

The live faults are the registry's faults whose causes all have a mechanism here (``live_faults()``). A case
records the values applied on this machine under the causes' names, the same names a simulated case uses.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import sys
import threading
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
from llmrca.testbed import gpu_host
from llmrca.testbed.config import Scaling
from llmrca.testbed.procs import Containment, alive, kill_tree, spawn
from llmrca.testbed.rundir import LOOPBACK

MEMORY_SHARE_OF_AVAILABLE = 0.3  # a memory hog never takes more than this share of the machine's free memory
SAFETY_MARGIN_S = 15.0  # self-expiry after the planned end, should every other undo path fail
SERVING_WAIT_S = 960.0  # the longest a crash loop waits for a real engine to serve again (its model load)


class Host(Protocol):
    """What an injector needs from the supervisor."""

    state: dict[str, Any]
    containment: Containment
    scaling: Scaling

    def service_pids(self, service: str) -> list[int]: ...

    def attach(self, service: str, pid: int) -> None: ...

    def detach(self, service: str, pid: int) -> None: ...

    def kill_engine(self, service: str, restart_after_s: float, backoff_s: float = 0.0) -> int | None: ...

    def hold_engine(self, service: str, restart_after_s: float) -> int | None: ...

    def ensure_engine(self, service: str) -> None: ...

    def engine_pid(self, service: str) -> int | None: ...

    def restart_engine(self, service: str, kv_cache_tokens: int | None, down_s: float = 0.0) -> int | None: ...

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
    "engine_stall": Mechanism("engine stall endpoint / SIGSTOP of the engine's workers", _as_given, "_apply_stall",
                              "_undo_stall"),
    "kv_cache_limit": Mechanism("restart of the engine with a smaller KV cache", _as_given, "_apply_kv", "_undo_kv"),
    # -- traffic faults (faults/traffic_faults.py): controls of the load generator and the proxy --
    "prompt_surge": Mechanism("load generator's surge control", _as_given, "_apply_surge", "_undo_surge"),
    "proxy_capacity": Mechanism("proxy's capacity control", _as_given, "_apply_capacity", "_undo_capacity"),
    "routing_weights": Mechanism("proxy's routing control", _as_given, "_apply_routing", "_undo_routing"),
    # -- replica faults (faults/replica_faults.py) --
    "device_slowdown": Mechanism("emulated GPU's slow-down endpoint", _as_given, "_apply_slowdown", "_undo_slowdown"),
    "ingress_loss": Mechanism("mesh loss towards the target (TCP recovery emulated)", _as_given, "_apply_loss",
                              "_undo_loss"),
    # -- GPU hardware faults (faults/gpu_faults.py): the emulated GPU's control endpoints only --
    "gpu_lost": Mechanism("emulated GPU's /control/gpu-fault (Xid 79): the engine dies, restarted after "
                          "recover_s + load_s (cordoned: on undo)", _as_given, "_apply_gpu_fault", "_undo_gpu_fault"),
    "gpu_ecc": Mechanism("emulated GPU's /control/gpu-fault (Xid 48 / 94): the engine dies, restarted after "
                         "reset_s + load_s", _as_given, "_apply_gpu_fault", "_undo_gpu_fault"),
    "gpu_cooling": Mechanism("emulated GPU's /control/cooling (thermal resistance factor, with an expiry)", _as_given,
                             "_apply_cooling", "_undo_cooling"),
}
LATER_S = 0.5  # a perturbation that starts later than this after the injection is applied at its time (a crash loop)
GPU_FAULT_CAUSES = ("gpu_lost", "gpu_ecc", "gpu_cooling")


def refuse_real_gpu_fault(fault: str, target: str, state: dict[str, Any] | None) -> None:
    """GPU hardware faults act on the emulated GPU only: on the real engine they are refused, with the reason."""
    engine = (((state or {}).get("config") or {}).get("deploy") or {}).get("engine", "emulated")
    if engine != "vllm":
        return
    if real_gpu_of(state, target) is None:
        raise FaultParamError(f"fault {fault!r} on {target}: the real engine runs on CPU here: there is no GPU to "
                              "fail or to heat (GPU faults on the real engine are never emulated)")
    why = ("no honest mechanism heats a real GPU: nvidia-smi can cap power or lock clocks, which is not thermal "
           "throttling" if fault == "gpu-thermal" else
           "no honest mechanism makes a real GPU fall off the bus or produce an ECC error (Dynamo's injector only "
           "writes a fake Xid line and fails CUDA calls through a shim)")
    raise FaultParamError(f"fault {fault!r} on {target}: refused on a real GPU: {why}")


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
         power_draw_w: Callable[[], float] | None = None, state: dict[str, Any] | None = None) -> LivePlan:
    """``fault`` on ``target`` as this machine does it: the registry's parameters checked and applied (a cap must be
    one the GPU accepts), its perturbations, each scaled to the machine by its cause's mechanism. ``state``: the
    run's state (its engine and real GPUs), which decides what GPU a power cap acts on (:func:`target_facts`)."""
    spec = fault_registry.get(fault)
    if fault not in live_faults():
        missing = [c for c in spec.causes if c not in MECHANISMS]
        raise UnknownNameError(f"no live mechanism for fault {fault!r} (cause {', '.join(missing)}); live faults: "
                               f"{', '.join(live_faults())}")
    if "device_slowdown" in spec.causes and _engine_kind(state) == "vllm":
        raise FaultParamError(refuse_slowdown(target, state))
    if "device_slowdown" in spec.causes and not gpu_kind(gpu).is_gpu:
        raise FaultParamError(f"fault {fault!r} slows a GPU's kernels; deployment.gpu = {gpu!r} is not a GPU")
    if set(spec.causes) & set(GPU_FAULT_CAUSES):
        refuse_real_gpu_fault(fault, target, state)
    if "power_limit" in spec.causes:
        facts = target_facts(fault, target, gpu, state, power_draw_w)
    else:
        facts = _emulated_facts(gpu, power_draw_w)
    applied = spec.applied(params, facts)
    effects, machine = [], {}
    for p in spec.effect(applied, target, start, end):
        values, how = MECHANISMS[p.cause].scale(dict(p.values), scaling, available_bytes)
        effects.append(Perturbation(p.cause, p.service, p.start, p.end, values))
        machine[p.cause] = how
    return LivePlan(fault, target, applied, tuple(effects), machine)


def _engine_kind(state: dict[str, Any] | None) -> str:
    return ((state or {}).get("engine") or {}).get("kind") or \
        (((state or {}).get("config") or {}).get("deploy") or {}).get("engine", "emulated")


def refuse_slowdown(target: str, state: dict[str, Any] | None) -> str:
    """Why a slow GPU is not injected into the real engine: nothing here slows a device honestly."""
    if real_gpu_of(state, target) is None:
        return (f"fault 'straggler' on {target}: the real engine runs on CPU here: there is no GPU to slow down, and "
                "throttling the engine's CPU quota would be CPU contention (the cpu fault), not a degraded GPU; use "
                "--engine emulated")
    return (f"fault 'straggler' on {target}: this testbed sets no GPU clock lock on a real GPU (the Kubernetes "
            "expression is a privileged nvidia-smi --lock-gpu-clocks Job); use --engine emulated")


def _emulated_facts(gpu: str, power_draw_w: Callable[[], float] | None) -> TargetFacts:
    g = gpu_kind(gpu)
    return TargetFacts(g.name, g.min_power_w, g.tdp_w, power_draw_w)


def real_gpu_of(state: dict[str, Any] | None, target: str) -> str | None:
    """The real GPU index ``target`` runs on (``state["real_gpus"]``), or None."""
    return ((state or {}).get("real_gpus") or {}).get(target)


def target_facts(fault: str, target: str, gpu: str, state: dict[str, Any] | None,
                 power_draw_w: Callable[[], float] | None) -> TargetFacts:
    """The GPU a power cap on ``target`` acts on. A real GPU: its own accepted range (``nvidia-smi``'s min and
    default limit, as recorded at start) and its draw now. The real engine with no GPU (a CPU host): refused,
    never emulated. Otherwise the emulated GPU of ``deploy.gpu`` and the engine's own power gauge."""
    real = real_gpu_of(state, target)
    if real is not None:
        g = gpu_host.facts_gpu(state or {}, real)
        return TargetFacts(g.name, g.min_limit_w, g.default_limit_w,
                           lambda: gpu_host.read_one(real, "power.draw"))
    engine = (((state or {}).get("config") or {}).get("deploy") or {}).get("engine", "emulated")
    if engine == "vllm":
        raise FaultParamError(
            f"fault {fault!r} on {target}: the real engine runs on CPU here: no GPU to cap "
            f"({'nvidia-smi not found' if gpu_host.nvidia_smi() is None else 'no GPU assigned to ' + target}); "
            "GPU faults on the real engine need a GPU host and are never emulated")
    return _emulated_facts(gpu, power_draw_w)


_POWER_LINE = re.compile(r"^DCGM_FI_DEV_POWER_USAGE(?:\{[^}]*\})?\s+([0-9.eE+-]+)\s*$", re.MULTILINE)


def power_in_exposition(text: str, where: str) -> float:
    """The DCGM power gauge (W) in a Prometheus text exposition."""
    m = _POWER_LINE.search(text)
    if m is None:
        raise FaultParamError(f"{where} reports no DCGM_FI_DEV_POWER_USAGE: the GPU's draw is unknown")
    return float(m.group(1))


_CACHE_INFO = re.compile(r"^vllm:cache_config_info\{(.*)\}\s+\S+\s*$", re.MULTILINE)


def kv_tokens_in_exposition(text: str) -> int | None:
    """The KV cache in tokens from vLLM's ``vllm:cache_config_info`` (its kv_cache_size_tokens, else num_gpu_blocks ×
    block_size), if shown."""
    m = _CACHE_INFO.search(text)
    if m is None:
        return None
    labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(1)))
    try:
        if labels.get("kv_cache_size_tokens", "None") != "None":  # vLLM 0.32 states it
            return int(labels["kv_cache_size_tokens"])
        return int(labels["num_gpu_blocks"]) * int(labels["block_size"])
    except (KeyError, ValueError):
        return None


def engine_kv_tokens(port: int) -> int:
    """The engine's KV-cache capacity now, in tokens: vLLM's cache_config_info on /metrics, or the emulated
    engine's /control."""
    with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/metrics", timeout=5.0) as r:  # loopback only
        tokens = kv_tokens_in_exposition(r.read().decode(errors="replace"))
    if tokens is None:
        tokens = _http("GET", f"http://{LOOPBACK}:{port}/control").get("kv_cache_tokens")
    if not tokens:
        raise FaultParamError(f"the engine on port {port} reports no KV-cache size: a fraction of it is unknown")
    return int(tokens)


def _worker_pids(api_pid: int) -> list[int]:
    """The real engine's processes that step the model (its workers, or the EngineCore that runs it)."""
    try:
        from llmrca.testbed.vllm_engine import worker_pids
    except ImportError as e:  # the real engine's module is not in this build
        raise FaultParamError(f"engine-hang on a real engine needs llmrca.testbed.vllm_engine: {e}") from None
    return worker_pids(api_pid)


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
    _stopped: list[Any] = field(default_factory=list)  # psutil.Process of the real engine's stopped workers
    _resume_timer: Any = None
    _cancel: Any = None  # set on undo: later effects (a crash loop's next kills) are not applied
    _later: Any = None
    _lock: Any = field(default_factory=threading.Lock)

    @property
    def target(self) -> str:
        return self.plan.target

    def apply(self) -> None:
        """Every effect that starts now, at once; later ones (a crash loop's next kills) from a thread of this
        injection, which undo stops."""
        first = min((p.start for p in self.plan.effects), default=0.0)
        now, later = [], []
        for p in self.plan.effects:
            (later if p.start - first > LATER_S else now).append(p)
        for p in now:
            getattr(self, MECHANISMS[p.cause].apply)(p.values)
        if later:
            self._cancel = threading.Event()
            self._later = threading.Thread(target=self._run_later, args=(now[-1] if now else None, later, first),
                                           daemon=True, name=f"later-{self.target}")
            self._later.start()

    def _run_later(self, prev: Perturbation | None, later: list[Perturbation], first: float) -> None:
        """Apply ``later`` in order, each at its offset from the first effect (wall clock from the apply). A kill of
        the real engine follows its previous restart instead: it comes its uptime after the engine serves again
        (its model load is real, not the planned load_s)."""
        t0 = time.time()
        for p in later:
            if self._real_engine() and p.cause == "process_kill" and prev is not None and prev.cause == p.cause:
                uptime = p.start - prev.end  # the gap the plan leaves between serving again and the next death
                if not self._wait_serving():
                    return
                due = time.time() + max(0.0, uptime)
            else:
                due = t0 + (p.start - first)
            if self._cancel.wait(max(0.0, due - time.time())):
                return
            with self._lock:
                if self.undone:
                    return
                try:
                    getattr(self, MECHANISMS[p.cause].apply)(p.values)
                except Exception as e:  # noqa: BLE001 - recorded, not raised: nobody waits on this thread
                    self.notes.setdefault("later_errors", []).append(f"{p.cause} at +{p.start - first:g} s: {e}")
                    return
            prev = p

    def _wait_serving(self) -> bool:
        """Wait until the target's engine serves again (the supervisor's view); False if the injection is undone
        first or the engine does not come back within the margin."""
        serving = getattr(self.host, "engine_serving", None)
        deadline = time.time() + SERVING_WAIT_S
        while not self._cancel.is_set() and time.time() < deadline:
            if serving is None or serving(self.target):
                return True
            self._cancel.wait(0.5)
        return False

    def undo(self) -> None:
        with self._lock:
            if self.undone:
                return
            self.undone = True
        if self._cancel is not None:
            self._cancel.set()
        done: set[str] = set()
        for p in reversed(self.plan.effects):
            if p.cause in done:  # a cause is restored once (a crash loop's kills: the engine is started once)
                continue
            done.add(p.cause)
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
            # The default limit as the driver reports it now (not a number of ours): what undo restores.
            self.notes["default_watts"] = nvidia_default_limit(real)
            self.notes["limit_before_w"] = gpu_host.read_one(real, "power.limit")
            # Its last-resort restore first: a cap is never set without one.
            self.notes["restore_pid"] = gpu_host.restore_later(real, self.notes["default_watts"], self._timeout(),
                                                               out=self.host.out_path(f"gpu-restore-{self.target}"))
            try:
                self.method = " ".join(gpu_host.set_power_limit(real, v["watts"]))
            except gpu_host.GpuHostError:
                kill_tree(self.notes.pop("restore_pid"), timeout=3.0)  # nothing changed: nothing to restore
                raise
            return
        port = self.host.state["ports"][f"engine:{self.target}"]
        self._control("POST", f"http://{LOOPBACK}:{port}/control/power-limit",
                      {"watts": v["watts"], "expires_at": self.end + SAFETY_MARGIN_S, "reason": "fault injection"})
        self.method = f"emulated GPU control endpoint: power limit {v['watts']:g} W"

    def _undo_power(self, v: dict[str, Any]) -> None:
        real = self._real_gpu()
        if real is not None:
            if "default_watts" in self.notes:  # else apply failed before it read (and changed) anything
                gpu_host.set_power_limit(real, self.notes["default_watts"])
                self.notes["restored_w"] = self.notes["default_watts"]
                # restored: its last-resort restore must not fire later (under a next fault's cap); kept if not
                kill_tree(self.notes.get("restore_pid"), timeout=3.0)
            return
        port = self.host.state["ports"][f"engine:{self.target}"]
        try:
            self._control("POST", f"http://{LOOPBACK}:{port}/control/power-limit",
                          {"watts": None, "reason": "fault undone"})
        except (OSError, FaultParamError):
            pass  # the engine is gone (and comes back at its default limit)

    # -- the process --------------------------------------------------------------------------------------
    def _apply_kill(self, v: dict[str, Any]) -> None:
        backoff = float(v.get("backoff_s") or 0.0)
        if backoff:  # a crash loop's restart after the kubelet's back-off
            pid = self.host.kill_engine(self.target, backoff + v["load_s"], backoff_s=backoff)
            self.notes.setdefault("kills", []).append({"at": time.time(), "pid": pid, "backoff_s": backoff})
        else:
            pid = self.host.kill_engine(self.target, v["load_s"])
            if "killed_pid" in self.notes:  # a crash loop's first kill was at once; its later ones are listed
                self.notes.setdefault("kills", []).append({"at": time.time(), "pid": pid, "backoff_s": 0.0})
        self.notes.setdefault("killed_pid", pid)
        then = f" after a back-off of {backoff:g} s" if backoff else ""
        if (self.host.state.get("engine") or {}).get("kind") == "vllm":
            # the real death path: the server logs the worker's death and exits; its restart loads the model for real
            self.method = (f"SIGKILL of vLLM worker pid {pid}; the server exits, restarted{then or ' at once'} "
                           "(real model load)")
            self.notes["emulated_load_s_ignored"] = v["load_s"]
        else:
            self.method = f"SIGKILL pid {pid}; restart after {v['load_s']:g} s{then}"

    def _undo_kill(self, v: dict[str, Any]) -> None:
        self.host.ensure_engine(self.target)

    def _real_engine(self) -> bool:
        return (self.host.state.get("engine") or {}).get("kind") == "vllm"

    def _engine_url(self) -> str:
        return f"http://{LOOPBACK}:{self.host.state['ports'][f'engine:{self.target}']}"

    # -- a stopped engine (engine-hang) ---------------------------------------------------------------------
    def _apply_stall(self, v: dict[str, Any]) -> None:
        # It ends by itself after stall_s (or at the injection's end and a margin, whichever first): the emulated
        # engine's own expiry, a timer here for the real one.
        until = min(time.time() + float(v["stall_s"]), self.end + SAFETY_MARGIN_S)
        self.notes["stall_until"] = until
        if not self._real_engine():
            self._control("POST", self._engine_url() + "/control/stall",
                          {"stalled": True, "expires_at": until, "reason": "fault injection"})
            self.method = f"emulated engine's stall endpoint: stopped for {v['stall_s']:g} s"
            return
        api = self.host.engine_pid(self.target)
        if api is None:
            raise FaultParamError(f"the engine of {self.target!r} is not running: nothing to stop")
        pids = _worker_pids(api)
        if not pids:
            raise FaultParamError(f"the engine of {self.target!r} (pid {api}) has no worker process to stop")
        self.stop_processes(pids)
        self.notes["stopped_pids"] = pids
        self.method = f"SIGSTOP of vLLM worker pid(s) {', '.join(map(str, pids))} for {v['stall_s']:g} s"
        self._resume_timer = threading.Timer(max(0.0, until - time.time()), self.continue_processes)
        self._resume_timer.daemon = True
        self._resume_timer.start()

    def stop_processes(self, pids: list[int]) -> None:
        """SIGSTOP each of ``pids``, remembered by process identity (a pid reused later is never signalled)."""
        for pid in pids:
            try:
                p = psutil.Process(pid)
                self._stopped.append(p)  # first: should the stop race with anything, the undo still continues it
                p.suspend()
            except psutil.NoSuchProcess:
                continue

    def continue_processes(self) -> None:
        """SIGCONT every process this injection stopped (idempotent; a process gone meanwhile is skipped)."""
        for p in self._stopped:
            try:
                p.resume()
            except psutil.NoSuchProcess:
                continue

    def _undo_stall(self, v: dict[str, Any]) -> None:
        if self._resume_timer is not None:
            self._resume_timer.cancel()
        if self._stopped or self._real_engine():
            self.continue_processes()
            return
        try:
            self._control("POST", self._engine_url() + "/control/stall", {"stalled": False, "reason": "fault undone"})
        except (OSError, FaultParamError):
            pass  # the engine is gone (and comes back running)

    # -- a slow GPU (straggler) ------------------------------------------------------------------------------
    def _apply_slowdown(self, v: dict[str, Any]) -> None:
        if self._real_engine():  # plan() refuses it before anything; a last guard, should a caller skip it
            raise FaultParamError(refuse_slowdown(self.target, self.host.state))
        self._control("POST", self._engine_url() + "/control/slowdown",
                      {"factor": v["factor"], "expires_at": self.end + SAFETY_MARGIN_S, "reason": "fault injection"})
        self.method = f"emulated GPU's slow-down endpoint: kernels {v['factor']:g}x slower"

    def _undo_slowdown(self, v: dict[str, Any]) -> None:
        if self._real_engine():
            return
        try:
            self._control("POST", self._engine_url() + "/control/slowdown", {"factor": None, "reason": "fault undone"})
        except (OSError, FaultParamError):
            pass  # the engine is gone (and comes back healthy)

    # -- packet loss on the mesh (network-loss) ------------------------------------------------------------------
    def _apply_loss(self, v: dict[str, Any]) -> None:
        body = {"target": self.target, **v, "expires_at": self.end + SAFETY_MARGIN_S, "seed": self.seed}
        r = self._control("POST", self._mesh() + "/loss", body)
        self.method = (f"mesh loss {100 * v['loss']:g} % (correlation {v['correlation']:g}) with TCP recovery "
                       f"emulated on {', '.join(r.get('links', []))}")

    def _undo_loss(self, v: dict[str, Any]) -> None:
        r = self._control("DELETE", f"{self._mesh()}/loss/{self.target}")
        # what the loss did on each link while it lasted (segments sent and dropped): the case records it
        self.notes["mesh_loss"] = r.get("while_active", [])

    # -- a smaller KV cache (kv-cache-pressure) ---------------------------------------------------------------
    def _apply_kv(self, v: dict[str, Any]) -> None:
        if v.get("tokens") is not None:
            tokens = int(v["tokens"])
        else:
            normal = engine_kv_tokens(self.host.state["ports"][f"engine:{self.target}"])
            tokens = max(1, int(normal * float(v["fraction"])))
            self.notes["normal_kv_cache_tokens"] = normal
        # The emulated engine loads its model in load_s; the real one takes its own (real) load time.
        down = 0.0 if self._real_engine() else float(v["load_s"])
        pid = self.host.restart_engine(self.target, tokens, down)
        self.notes.update(kv_cache_tokens=tokens, restarted_pid=pid)
        self.method = f"restart of {self.target}'s engine (pid {pid}) with a KV cache of {tokens} tokens"

    def _undo_kv(self, v: dict[str, Any]) -> None:
        self.host.restart_engine(self.target, None, 0.0 if self._real_engine() else float(v["load_s"]))


    # -- traffic faults: the load generator's and the proxy's self-expiring controls -------------------------------
    def _service_url(self, port_name: str) -> str:
        port = self.host.state["ports"].get(port_name)
        if port is None:
            raise FaultParamError(f"fault {self.plan.fault!r}: the testbed runs no {port_name} control (a workload "
                                  "fault needs workload.workload_node = true)")
        return f"http://{LOOPBACK}:{port}"

    def _switch_off(self, port_name: str, path: str, body: dict[str, Any]) -> None:
        try:
            self._control("POST", self._service_url(port_name) + path, {**body, "reason": "fault undone"})
        except (OSError, FaultParamError):
            pass  # the service is gone (it comes back without the setting)

    def _apply_surge(self, v: dict[str, Any]) -> None:
        self._control("POST", self._service_url("loadgen") + "/control/surge",
                      {"factor": v["factor"], "share": v["share"], "expires_at": self.end + SAFETY_MARGIN_S,
                       "reason": "fault injection"})
        self.method = f"load generator's surge control: {v['share']:g} of prompts x{v['factor']:g}"

    def _undo_surge(self, v: dict[str, Any]) -> None:
        self._switch_off("loadgen", "/control/surge", {"factor": None})

    def _apply_capacity(self, v: dict[str, Any]) -> None:
        self._control("POST", self._service_url("proxy") + "/control/capacity",
                      {"dispatch_s": v["dispatch_s"], "expires_at": self.end + SAFETY_MARGIN_S,
                       "reason": "fault injection"})
        self.method = f"proxy's capacity control: one dispatch at a time, {v['dispatch_s']:.3g} s each"

    def _undo_capacity(self, v: dict[str, Any]) -> None:
        self._switch_off("proxy", "/control/capacity", {"dispatch_s": None})

    def _apply_routing(self, v: dict[str, Any]) -> None:
        replicas = list(self.host.state["replicas"])
        k = int(v["hot_replica"])
        if not 0 <= k < len(replicas):
            raise FaultParamError(f"fault 'routing-skew' parameter 'hot_replica': {k} is not a replica index of this "
                                  f"deployment (0..{len(replicas) - 1}: {', '.join(replicas)})")
        self._control("POST", self._service_url("proxy") + "/control/routing",
                      {"replica": replicas[k], "share": v["share"], "expires_at": self.end + SAFETY_MARGIN_S,
                       "reason": "fault injection"})
        self.notes["hot_replica_name"] = replicas[k]
        self.method = f"proxy's routing control: {v['share']:g} of requests pinned to {replicas[k]}"

    def _undo_routing(self, v: dict[str, Any]) -> None:
        self._switch_off("proxy", "/control/routing", {"replica": None})
    # -- GPU hardware faults (gpu-xid, gpu-ecc, gpu-thermal) on the emulated GPU ----------------------------------
    def _apply_gpu_fault(self, v: dict[str, Any]) -> None:
        """The emulated GPU reports the Xid and its engine dies on its own death path; the supervisor holds it down
        until the GPU is usable (recover_s / reset_s) and the model loaded (load_s), or until the undo (cordoned)."""
        from llmrca.testbed import gpu_ras

        if self._real_engine():
            raise FaultParamError(f"GPU faults on {self.target}: refused on the real engine (never emulated)")
        xid = int(v["xid"])
        cordoned = bool(v.get("cordoned"))
        down = math.inf if cordoned else float(v.get("recover_s", v.get("reset_s", 0.0))) + float(v["load_s"])
        pid = self.host.hold_engine(self.target, down)
        self.notes.update(xid=xid, held_pid=pid, down_s=None if cordoned else down)
        if not cordoned:  # the replica is down for its recovery, whatever the nominal window (as in the simulator)
            self.end = max(self.end, time.time() + down)
        try:
            self._control("POST", self._engine_url() + "/control/gpu-fault", {"xid": xid})
        except (OSError, FaultParamError):
            self.host.ensure_engine(self.target)  # nothing happened: release the hold
            raise
        reset_s = float(v.get("reset_s") or 0.0)
        if reset_s > 0:  # the GPU reset (Xid 48): the remap is performed, the volatile ECC count clears
            self._reset_timer = threading.Timer(reset_s, gpu_ras.reset, (self.host.state["run_dir"], self.target))
            self._reset_timer.daemon = True
            self._reset_timer.start()
        self.method = (f"emulated GPU's Xid {xid}: engine pid {pid} died; "
                       + ("node cordoned: held down until the undo" if cordoned else f"restart after {down:g} s"))

    def _undo_gpu_fault(self, v: dict[str, Any]) -> None:
        from llmrca.testbed import gpu_ras

        if getattr(self, "_reset_timer", None) is not None:
            self._reset_timer.cancel()
        # The GPU reset or replaced before the next case: healthy again, and its replica serves (uncordoned).
        gpu_ras.clear(self.host.state["run_dir"], self.target)
        self.host.ensure_engine(self.target)

    def _apply_cooling(self, v: dict[str, Any]) -> None:
        if self._real_engine():
            raise FaultParamError(f"gpu-thermal on {self.target}: refused on the real engine (never emulated)")
        self._control("POST", self._engine_url() + "/control/cooling",
                      {"r_factor": float(v["r_factor"]), "ramp_s": float(v.get("ramp_s") or 0.0),
                       "expires_at": self.end + SAFETY_MARGIN_S, "reason": "fault injection"})
        self.method = f"emulated GPU's cooling: thermal resistance x{float(v['r_factor']):g}"

    def _undo_cooling(self, v: dict[str, Any]) -> None:
        try:
            self._control("POST", self._engine_url() + "/control/cooling", {"r_factor": 1.0, "reason": "fault undone"})
        except (OSError, FaultParamError):
            pass  # the engine is gone (and comes back with healthy cooling)


def nvidia_smi_power_limit(gpu_index: str, watts: float) -> list[str]:
    return ["nvidia-smi", *gpu_host.power_limit_args(gpu_index, watts)]


def nvidia_default_limit(gpu_index: str) -> float:
    """GPU ``gpu_index``'s default power limit (W), read from the driver."""
    return gpu_host.read_one(gpu_index, "power.default_limit")


def stop_pid(pid: int) -> None:
    """Stop a stressor by its id (and its children)."""
    if alive(pid):
        kill_tree(pid, timeout=3.0, sig=signal.SIGTERM)
