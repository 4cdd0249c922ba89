"""The live testbed's configuration, and how the study's numbers scale to the machine it runs on.

The deployment (replica count, GPU kind, model, engine limits) and the workload are the simulator's
(``llmrca.sim.config.SimConfig``), so a live run and a simulated run of the same settings are the same system.
What cannot be the study's on one small machine is scaled, and the scaling is recorded in every case:
a pod's CPU limit (the study gave each pod 8 cores on large nodes), and a memory hog's size (8 GB of a 16 GiB pod).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import psutil

from llmrca.errors import LlmrcaError, UnknownNameError
from llmrca.sim.config import SimConfig

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
    __test__ = False  # not a pytest test class, whatever its name

    # Deployment (as the simulator's)
    replicas: int = 4
    gpu: str = "a100-80gb"
    model: str = "tiiuae/Falcon-H1-7B-Instruct"
    routing: str = "least-loaded"
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    block_size: int = 16
    gpu_memory_utilization: float = 0.9
    shared_prefix_tokens: int = 32
    # Workload (the study's: constant 5 req/s from 300 users, 512 prompt / 256 output tokens, streaming)
    rate: float = 5.0
    arrival: str = "constant"
    users: int = 300
    prompt_tokens: int = 512
    output_tokens: int = 256
    token_spread: float = 0.1
    eos_share: float = 0.3
    load: bool = True  # run the load generator with the deployment
    # Telemetry
    scrape_interval: float = 1.0  # Prometheus scrape interval and the collector's query step (s)
    rate_window: float = 5.0  # range of rate() / histogram_quantile() in the collector's queries (s)
    # Per-pod limits; None: scaled to this machine (see `scaled`)
    pod_cpu: float | None = None
    pod_memory_gib: float | None = None
    # Robustness
    read_timeout_s: float = 60.0  # nginx proxy_read_timeout; the engine abandons requests waiting longer
    model_load_s: float = 8.0  # a killed replica's restart delay (emulated model load)
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        for n in ("replicas", "prompt_tokens", "output_tokens", "users", "max_num_seqs", "max_num_batched_tokens",
                  "block_size"):
            v = getattr(self, n)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                problems.append(f"{n} must be a positive whole number, is {v!r}")
        for n in ("rate", "scrape_interval", "rate_window", "read_timeout_s"):
            v = getattr(self, n)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                problems.append(f"{n} must be a positive number, is {v!r}")
        if self.model_load_s < 0:
            problems.append(f"model_load_s must be >= 0, is {self.model_load_s!r}")
        for n in ("pod_cpu", "pod_memory_gib"):
            v = getattr(self, n)
            if v is not None and (not isinstance(v, (int, float)) or v <= 0):
                problems.append(f"{n} must be a positive number or None, is {v!r}")
        if not problems and self.rate_window < 2 * self.scrape_interval:
            problems.append(f"rate_window ({self.rate_window:g}) must cover at least two scrapes "
                            f"(2 x scrape_interval = {2 * self.scrape_interval:g})")
        if problems:
            raise TestbedConfigError("testbed config: " + "; ".join(problems))
        self.sim_config()  # the simulator validates the shared fields (GPU, model, routing, arrival, ...)

    def sim_config(self) -> SimConfig:
        """The simulator's configuration of the same deployment and workload."""
        return SimConfig(
            replicas=self.replicas, gpu=self.gpu, model=self.model, routing=self.routing,
            max_num_seqs=self.max_num_seqs, max_num_batched_tokens=self.max_num_batched_tokens,
            block_size=self.block_size, gpu_memory_utilization=self.gpu_memory_utilization,
            shared_prefix_tokens=self.shared_prefix_tokens, rate=self.rate, arrival=self.arrival, users=self.users,
            prompt_tokens=self.prompt_tokens, output_tokens=self.output_tokens, token_spread=self.token_spread,
            eos_share=self.eos_share,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> TestbedConfig:
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UnknownNameError(f"testbed config: unknown field(s) {', '.join(unknown)}; "
                                   f"known: {', '.join(sorted(known))}")
        return cls(**d)

    def with_(self, **changes: Any) -> TestbedConfig:
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise UnknownNameError(f"testbed config: unknown field(s) {', '.join(unknown)}")
        return replace(self, **changes)


@dataclass(frozen=True)
class Scaling:
    """The study's pod limits scaled to this machine; ``factor`` = live pod CPU / the study's 8 cores."""

    pod_cpu: float
    pod_memory_bytes: float
    machine: Machine

    @property
    def cpu_factor(self) -> float:
        return self.pod_cpu / STUDY_POD_CPU

    @property
    def memory_factor(self) -> float:
        return self.pod_memory_bytes / (STUDY_POD_MEMORY_GIB * GIB)

    def to_dict(self) -> dict[str, Any]:
        return {"pod_cpu": self.pod_cpu, "pod_memory_bytes": self.pod_memory_bytes,
                "cpu_factor": self.cpu_factor, "memory_factor": self.memory_factor,
                "machine": asdict(self.machine)}


def scaling(config: TestbedConfig, machine: Machine | None = None) -> Scaling:
    """Pod limits for this machine: the cores and memory shared evenly by the gateway and the replica pods
    (the study's 8 cores / 16 GiB at most), unless the config fixes them."""
    m = machine or Machine.probe()
    pods = config.replicas + 1
    cpu = config.pod_cpu if config.pod_cpu is not None else min(STUDY_POD_CPU, max(0.25, m.cores / pods))
    mem = (config.pod_memory_gib * GIB if config.pod_memory_gib is not None
           else min(STUDY_POD_MEMORY_GIB * GIB, m.memory_bytes / pods))
    return Scaling(pod_cpu=float(cpu), pod_memory_bytes=float(mem), machine=m)
