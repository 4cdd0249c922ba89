"""The shape of a fault: one declarative spec per fault type, shared by the simulator and the live testbed.

A spec says what the fault is (id, layer), whom it may hit (a targets rule over the topology), its parameters with
the reference defaults, how it is injected live, and what it does to the *causes* in a system model: a list of
:class:`Perturbation` (CPU stress in a container, a memory hog, a delay on the wire towards a pod, a GPU power
limit, a killed engine process). Symptoms are never part of a spec; they follow from the model's dynamics.

Parameters may be relative to the target (a power cap relative to the GPU's draw before the fault): ``applied``
turns them into absolute values with the facts of the target (:class:`TargetFacts`), once, and those applied
values are what a case records. The simulator and the live testbed both go through it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from llmrca.case import Topology
from llmrca.errors import LlmrcaError, UnknownNameError

# Causes a system model must understand, with the keys of their `values`.
CAUSES: dict[str, tuple[str, ...]] = {
    "cpu_stress": ("workers", "load"),  # busy threads in the target container's cgroup; load in percent
    "memory_hog": ("bytes", "workers"),  # resident bytes allocated in the target container
    "ingress_delay": ("latency_s", "jitter_s", "correlation"),  # netem delay on packets towards the target pod
    "power_limit": ("watts",),  # GPU power cap in watts, inside the GPU's accepted range
    # the engine process dies; the replica comes back after backoff_s (a kubelet's restart back-off; 0 if absent)
    # and then load_s of model loading
    "process_kill": ("load_s", "backoff_s"),
    # the engine stops stepping (its worker stopped) while its API server answers: nothing is scheduled or generated,
    # its engine-side gauges and counters freeze; it resumes when the perturbation ends
    "engine_stall": ("stall_s",),
    # the replica restarts (down for load_s) with a KV cache of `tokens` (or `fraction` of its normal capacity),
    # and restarts again with its normal capacity when the perturbation ends
    "kv_cache_limit": ("fraction", "tokens", "load_s"),
    # -- traffic faults above the replicas (faults/traffic_faults.py) --
    # the workload node's client sends a `share` of its requests with prompts `factor` times as long
    "prompt_surge": ("factor", "share"),
    # the Serve proxy dispatches one request at a time, each taking dispatch_s of its event loop (a cap of
    # 1/dispatch_s requests/s): requests queue in the proxy before any replica sees them
    "proxy_capacity": ("dispatch_s",),
    # the proxy's router pins a `share` of requests to replica number `hot_replica` (0 = the head's own replica),
    # the rest routed by its normal policy
    "routing_weights": ("hot_replica", "share"),
    # -- replica faults (faults/replica_faults.py) --
    # the replica's GPU runs its kernels `factor` times slower (memory-bound decode and compute-bound prefill alike):
    # a degraded GPU, a slow-down the straggler fault gives one replica
    "device_slowdown": ("factor",),
    # netem loss on packets towards the target pod: each segment is dropped with probability `loss` (0..1), successive
    # drops correlated by `correlation` (0..1); TCP recovers them (llmrca.sim.tcploss)
    "ingress_loss": ("loss", "correlation"),
    # -- GPU hardware faults (faults/gpu_faults.py) --
    # the GPU falls off the bus (Xid 79): its engine dies, nothing reads the GPU (NVML/DCGM) until it is back after
    # recover_s (reset / reboot), the replica serves again load_s later; cordoned: neither within the fault
    "gpu_lost": ("xid", "recover_s", "load_s", "cordoned"),
    # an uncorrectable ECC error (Xid 48 DBE, 94 contained): the process using the memory dies; ECC and row-remap
    # counters move; the GPU is reset after reset_s (0: no reset, the contained case); the engine is back load_s later
    "gpu_ecc": ("xid", "reset_s", "load_s"),
    # the GPU's cooling degrades (failed fan, blocked intake): its thermal resistance to the air is multiplied by
    # r_factor (reached over ramp_s); temperature, clocks and step times follow from the GPU model
    "gpu_cooling": ("r_factor", "ramp_s"),
}


class FaultParamError(LlmrcaError, ValueError):
    """A fault parameter has a bad value (or the target system cannot take it, e.g. a power cap below the GPU's
    minimum)."""


@dataclass(frozen=True)
class Param:
    name: str
    default: Any
    unit: str = ""
    help: str = ""
    kind: type = float  # int or float; values are checked and cast on resolve
    optional: bool = False  # None allowed
    minimum: float | None = None
    maximum: float | None = None


@dataclass(frozen=True)
class Perturbation:
    """A change of one cause on one service for [start, end) (seconds on the run's clock)."""

    cause: str
    service: str
    start: float
    end: float
    values: dict[str, Any] = field(default_factory=dict)

    def active(self, t: float) -> bool:
        return self.start <= t < self.end


@dataclass(frozen=True)
class TargetFacts:
    """What a relative parameter needs to know about the target, from the system model or the live machine.

    ``power_draw_w`` is a function (the simulator runs the fault-free twin to answer it; the live testbed reads
    the engine's power gauge), called only by a fault whose parameters need it.
    """

    gpu: str = ""
    min_power_w: float | None = None  # lowest power limit the GPU accepts
    max_power_w: float | None = None  # its default (and highest) limit
    power_draw_w: Callable[[], float] | None = None  # the target GPU's mean draw before the fault


Effect = Callable[[Mapping[str, Any], str, float, float], list[Perturbation]]
Scale = Callable[[Mapping[str, Any], float], dict[str, Any]]
Apply = Callable[[str, Mapping[str, Any], TargetFacts], dict[str, Any]]

# Targets rules: a name → the services of a topology the fault may hit.
TARGET_RULES: dict[str, Callable[[Topology], list[str]]] = {
    "replicas": lambda t: [s for group in t.replicas.values() for s in group] or [s for s in t.services if s in t.gpus],
    "gpu": lambda t: [s for s in t.services if s in t.gpus],
    "entry": lambda t: [t.entry_service()] if t.entry_service() else [],
    "any": lambda t: [s for s in t.services if s not in set(t.hosts.values())],
    # the service the entry calls: the Serve HTTP proxy (the Ray head pod)
    "proxy": lambda t: t.callees(t.entry_service())[:1] if t.entry_service() else [],
    # the workload's client (a load generator calling the entry), where the deployment models one
    "workload": lambda t: t.callers(t.entry_service()) if t.entry_service() else [],
}
# Why a rule can come back empty, for the error that says so.
TARGET_HINTS: dict[str, str] = {
    "workload": "the deployment has no workload node (set workload.workload_node = true: the load generator "
                "becomes a service with its own telemetry)",
}


@dataclass(frozen=True)
class FaultSpec:
    id: str
    layer: str  # container | network | gpu | process | config | workload
    targets: str  # a TARGET_RULES name
    params: tuple[Param, ...]
    description: str  # the effect, in words
    live: str  # how it is injected on the loopback testbed
    kubernetes: str  # how it is injected on Kubernetes
    indicator: str  # the metric (study view name where one exists) that should move first on the target
    effect: Effect  # (applied params, target, start, end) -> perturbations of the system model's causes
    causes: tuple[str, ...] = ()  # the CAUSES its effect perturbs (what a system model needs a mechanism for)
    apply: Apply | None = None  # (fault id, params, facts) -> applied params (relative values made absolute)
    scale: Scale | None = None  # (params, strength) -> params: strength 1 = the defaults, 0 = no fault
    onset_lag_s: tuple[float, float] = (0.5, 1.5)  # manifest created -> effect begins (uniform range)
    end_lag_s: tuple[float, float] = (0.2, 1.0)  # fault's end -> effect removed
    kind: str = ""  # the diagnosis class a method should name (several ids may share one); "" = the id

    @property
    def fault_kind(self) -> str:
        """The fault's kind: ``kind`` where given, else its id (the one place this default is resolved)."""
        return self.kind or self.id

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def resolve(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Defaults updated by ``overrides``; unknown names and bad values raise errors naming the parameter."""
        known = {p.name: p for p in self.params}
        out = self.defaults()
        for k, v in (overrides or {}).items():
            if k not in known:
                raise UnknownNameError(f"fault {self.id!r} has no parameter {k!r}; known: {', '.join(known)}")
            out[k] = v
        for name, v in out.items():
            out[name] = _check(self.id, known[name], v)
        return out

    def target_services(self, topology: Topology) -> list[str]:
        return TARGET_RULES[self.targets](topology)

    def check_target(self, target: str, topology: Topology) -> None:
        allowed = self.target_services(topology)
        if not allowed:
            why = TARGET_HINTS.get(self.targets, f"the topology has no service its targets rule ({self.targets}) "
                                                 "picks")
            raise UnknownNameError(f"fault {self.id!r} cannot target {target!r}: {why}")
        if target not in allowed:
            raise UnknownNameError(
                f"fault {self.id!r} cannot target {target!r}; its targets ({self.targets}) are: {', '.join(allowed)}"
            )

    def applied(self, params: Mapping[str, Any] | None = None, facts: TargetFacts | None = None) -> dict[str, Any]:
        """The parameters as they act on this target: relative ones made absolute (a power cap in watts), checked
        against what the target accepts. This is what a case records."""
        p = self.resolve(params)
        return self.apply(self.id, p, facts or TargetFacts()) if self.apply is not None else p

    def perturbations(self, target: str, start: float, end: float, params: Mapping[str, Any] | None = None,
                      facts: TargetFacts | None = None) -> list[Perturbation]:
        out = self.effect(self.applied(params, facts), target, start, end)
        odd = [p.cause for p in out if p.cause not in self.causes]
        if odd:
            raise FaultParamError(f"fault {self.id!r} perturbs {', '.join(odd)}, not among its causes")
        return out

    def scaled(self, strength: float, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Parameters at ``strength`` times the reference fault (1.0 = the defaults)."""
        if not (math.isfinite(strength) and strength > 0):
            raise FaultParamError(f"fault {self.id!r}: strength must be a positive number, is {strength!r}")
        if self.scale is None:
            raise FaultParamError(f"fault {self.id!r} has no notion of strength")
        return self.resolve(self.scale(self.resolve(params), strength))

    def param_text(self) -> str:
        parts = []
        for p in self.params:
            if p.optional and p.default is None:
                parts.append(f"{p.name} (optional)")
                continue
            parts.append(f"{p.name}={p.default:g}{p.unit}" if isinstance(p.default, float)
                         else f"{p.name}={p.default}{p.unit}")
        return ", ".join(parts)


def recorded(perturbations: list[Perturbation], applied: Mapping[str, Any]) -> dict[str, Any]:
    """What a case records as its fault's parameters: the values each cause actually got (watts, bytes, workers,
    delays, load time), plus, for a value derived from the target, what it was derived from (``basis``)."""
    out: dict[str, Any] = {}
    for p in perturbations:
        out.update(p.values)
    # Several perturbations of one cause (a crash loop's kills): each one's values and its offset from the first.
    for cause in dict.fromkeys(p.cause for p in perturbations):
        same = [p for p in perturbations if p.cause == cause]
        if len(same) > 1:
            out.setdefault("sequence", []).extend(
                {"cause": cause, "at_s": round(p.start - same[0].start, 6), **p.values} for p in same)
    basis = {k: applied[k] for k in ("depth", "power_draw_w") if applied.get(k) is not None}
    if basis:
        out["basis"] = basis
    return out


@dataclass(frozen=True)
class Injection:
    """One fault put into one run: which, where, with what, when (seconds after the run's t=0) and how long.

    ``start``/``duration`` default to the run's configuration (the study: 285 s, 60 s).
    """

    fault: str
    target: str
    params: dict[str, Any] = field(default_factory=dict)
    start: float | None = None
    duration: float | None = None


def _check(fault: str, p: Param, v: Any) -> Any:
    where = f"fault {fault!r} parameter {p.name!r}"
    if v is None:
        if p.optional:
            return None
        raise FaultParamError(f"{where}: a value is required")
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise FaultParamError(f"{where}: expected a number, got {v!r}")
    if not math.isfinite(float(v)):
        raise FaultParamError(f"{where}: must be finite, is {v!r}")
    if p.kind is int:
        if float(v) != int(v):
            raise FaultParamError(f"{where}: expected a whole number, got {v!r}")
        v = int(v)
    else:
        v = float(v)
    if p.minimum is not None and v < p.minimum:
        raise FaultParamError(f"{where}: must be at least {p.minimum:g}, is {v:g}")
    if p.maximum is not None and v > p.maximum:
        raise FaultParamError(f"{where}: must be at most {p.maximum:g}, is {v:g}")
    return v
