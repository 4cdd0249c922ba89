"""The live testbed's configuration, and how the study's numbers scale to the machine it runs on.

The deployment, its telemetry settings and its workload are the one deployment model
(``llmrca.deploy.config.DeployConfig``, which the simulator runs too), held as ``TestbedConfig.deploy``; this module
adds only what exists on a live machine and nowhere in a model: the load generator switch, nginx's read timeout, an
emulated model load, the seed of the live processes, and whether the pod limits are scaled to this machine. What
cannot be the study's on one small machine is scaled, and the scaling is recorded in every case: a pod's CPU limit
(the study gave each pod 8 cores on large nodes), and a memory hog's size (8 GB of a 16 GiB pod).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import psutil

from llmrca.deploy.config import DeployConfig, check_fields
from llmrca.errors import LlmrcaError

STUDY_POD_CPU = 8.0  # cores per Ray pod in the study
STUDY_POD_MEMORY_GIB = 16.0
GIB = 1024**3
NODE = "node-local"  # the one machine every live service runs on


class TestbedConfigError(LlmrcaError, ValueError):
    """A testbed setting is out of range; the message names the field."""

    __test__ = False  # not a pytest test class, whatever its name


@dataclass(frozen=True)
class Machine:
    """What the testbed may use of this machine."""

    cores: int
    memory_bytes: int
    available_bytes: int

    @classmethod
    def probe(cls) -> Machine:
        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cores = os.cpu_count() or 1
        vm = psutil.virtual_memory()
        return cls(cores=max(1, cores), memory_bytes=int(vm.total), available_bytes=int(vm.available))


@dataclass(frozen=True)
class TestbedConfig:
    """A live deployment: ``deploy`` (the one deployment model) plus the knobs only a live machine has.

    The collector's query step and Prometheus' scrape interval are ``deploy.step``, its rate() range
    ``deploy.rate_window``; the pod limits are ``deploy.pod_cpu`` / ``deploy.pod_memory_gib``, held to this
    machine's share when ``scale_pods``.
    """

    __test__ = False  # not a pytest test class, whatever its name

    deploy: DeployConfig = field(default_factory=DeployConfig)
    load: bool = True  # run the load generator with the deployment
    scale_pods: bool = True  # pod limits at most this machine's even share (see `scaling`); False: as deployed
    read_timeout_s: float = 60.0  # nginx proxy_read_timeout; the engine abandons requests waiting longer
    model_load_s: float = 8.0  # a killed replica's restart delay (emulated model load)
    seed: int = 0  # seed of the live processes (workload, routing ties, emulated hardware)

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.deploy, DeployConfig):
            problems.append(f"deploy must be a DeployConfig, is {type(self.deploy).__name__}")
        for n in ("load", "scale_pods"):
            if not isinstance(getattr(self, n), bool):
                problems.append(f"{n} must be true or false, is {getattr(self, n)!r}")
        v = self.read_timeout_s
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            problems.append(f"read_timeout_s must be a positive number, is {v!r}")
        v = self.model_load_s
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            problems.append(f"model_load_s must be >= 0, is {v!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            problems.append(f"seed must be a whole number, is {self.seed!r}")
        if not problems and self.deploy.rate_window < 2 * self.deploy.step:
            # rate() over a live Prometheus needs two scrapes inside its range; a model needs no such margin
            problems.append(f"deploy.rate_window ({self.deploy.rate_window:g}) must cover at least two scrapes "
                            f"(2 x deploy.step = {2 * self.deploy.step:g})")
        if problems:
            raise TestbedConfigError("testbed config: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["deploy"] = self.deploy.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> TestbedConfig:
        d = dict(d or {})
        check_fields(cls, d, "testbed config", " (deployment fields go in 'deploy')")
        if isinstance(d.get("deploy"), dict):
            d["deploy"] = DeployConfig.from_dict(d["deploy"])
        return cls(**d)

    def with_(self, **changes: Any) -> TestbedConfig:
        check_fields(type(self), changes, "testbed config", " (deployment fields go in 'deploy')")
        return replace(self, **changes)


def live_config(**knobs: Any) -> TestbedConfig:
    """The live testbed's default: the shipped ``live`` scenario's deployment (the study's, with 1 s scrapes,
    5 s rate windows and compressed timing) and ``knobs`` (testbed-only fields)."""
    from llmrca.scenarios import load

    return TestbedConfig(deploy=load("live").deploy, **knobs)


@dataclass(frozen=True)
class Scaling:
    """The deployment's pod limits scaled to this machine; ``cpu_factor`` = live pod CPU / the deployed pod's
    (the study's 8 cores by default), so a fault sized for the deployed pod is sized the same way live."""

    pod_cpu: float
    pod_memory_bytes: float
    machine: Machine
    deployed_cpu: float = STUDY_POD_CPU
    deployed_memory_bytes: float = STUDY_POD_MEMORY_GIB * GIB

    @property
    def cpu_factor(self) -> float:
        return self.pod_cpu / self.deployed_cpu

    @property
    def memory_factor(self) -> float:
        return self.pod_memory_bytes / self.deployed_memory_bytes

    def to_dict(self) -> dict[str, Any]:
        return {"pod_cpu": self.pod_cpu, "pod_memory_bytes": self.pod_memory_bytes,
                "cpu_factor": self.cpu_factor, "memory_factor": self.memory_factor,
                "deployed_cpu": self.deployed_cpu, "deployed_memory_bytes": self.deployed_memory_bytes,
                "machine": asdict(self.machine)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scaling:
        return cls(float(d["pod_cpu"]), float(d["pod_memory_bytes"]), Machine(**d["machine"]),
                   float(d.get("deployed_cpu", STUDY_POD_CPU)),
                   float(d.get("deployed_memory_bytes", STUDY_POD_MEMORY_GIB * GIB)))


def scaling(config: TestbedConfig, machine: Machine | None = None) -> Scaling:
    """Pod limits for this machine: the deployment's (``deploy.pod_cpu`` cores, ``deploy.pod_memory_gib``), held to
    an even share of this machine's cores and memory among the gateway and the replica pods when
    ``config.scale_pods``; as deployed otherwise."""
    m = machine or Machine.probe()
    d = config.deploy
    want_cpu, want_mem = float(d.pod_cpu), float(d.pod_memory_gib) * GIB
    cpu, mem = want_cpu, want_mem
    if config.scale_pods:
        pods = d.replicas + 1
        cpu = min(want_cpu, max(0.25, m.cores / pods))
        mem = min(want_mem, m.memory_bytes / pods)
    return Scaling(pod_cpu=float(cpu), pod_memory_bytes=float(mem), machine=m, deployed_cpu=want_cpu,
                   deployed_memory_bytes=want_mem)
