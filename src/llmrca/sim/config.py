"""The simulator's one configuration object. Defaults are the reference study's deployment (PAPER_TESTBED.md)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from llmrca.errors import LlmrcaError, UnknownNameError
from llmrca.sim.hardware import GIB, gpu_kind, model_spec

ROUTING = ("least-loaded", "power-of-two", "round-robin")
ARRIVALS = ("constant", "poisson", "bursty")
MESH_QUANTILES = ("exact", "istio")
NOISE_LEVELS = ("realistic", "none")  # background activity not caused by any fault


class ConfigError(LlmrcaError, ValueError):
    """A simulator configuration value is out of range; the message names the field."""


@dataclass(frozen=True)
class SimConfig:
    # Deployment
    replicas: int = 4
    gpu: str = "a100-80gb"
    model: str = "tiiuae/Falcon-H1-7B-Instruct"
    routing: str = "least-loaded"
    gpus_per_node: int = 2
    pod_cpu: float = 8.0  # CPU limit of each Ray pod (cores)
    pod_memory_gib: float = 16.0  # memory limit of each Ray pod
    gpu_memory_utilization: float = 0.9
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048  # vLLM V1 chunked-prefill token budget for the API server
    block_size: int = 16
    shared_prefix_tokens: int = 32  # chat template / system prompt every request shares (prefix cache hits)
    # Workload (Locust in the study: 300 users, constant 5 req/s, streaming chat, 512 in / 256 out)
    rate: float = 5.0
    arrival: str = "constant"
    users: int = 300
    burst_factor: float = 3.0  # bursty: rate multiplier while a burst lasts
    burst_share: float = 0.2  # bursty: share of time in bursts (mean rate stays `rate`)
    burst_length_s: float = 10.0
    prompt_tokens: int = 512
    output_tokens: int = 256  # max_tokens of every request
    token_spread: float = 0.1  # relative spread of prompt lengths and of the output length the model wants
    eos_share: float = 0.3  # share of requests whose answer ends (EOS) before max_tokens
    # Timing (seconds)
    duration: float = 360.0
    warmup: float = 30.0  # load runs this long before t=0, so the window starts in steady state
    inject_at: float = 285.0
    fault_duration: float = 60.0
    step: float = 5.0  # metrics step (Prometheus query step = scrape interval)
    rate_window: float = 15.0  # range of rate() and histogram_quantile() windows; a multiple of `step`
    tick: float = 1.0  # engine control-loop tick: clocks, power, temperature, gauges
    start: float | None = None  # unix s of t=0; None: derived from the seed
    # Fidelity
    mesh_quantiles: str = "istio"  # Istio's classic buckets (as the study's mesh), or "exact" quantiles of the window
    variability: bool = True  # per-run differences (load, hardware speed, thermal start, baselines)
    # "realistic": background activity not caused by the fault (neighbours, GC-like spikes, scrape gaps, unrelated
    # warnings); "none": only measurement noise (the clean cases of earlier versions).
    noise: str = "realistic"

    def __post_init__(self) -> None:
        for n, allowed in (("routing", ROUTING), ("arrival", ARRIVALS), ("mesh_quantiles", MESH_QUANTILES),
                           ("noise", NOISE_LEVELS)):
            if getattr(self, n) not in allowed:
                raise UnknownNameError(f"sim config: {n} must be one of {', '.join(allowed)}, is {getattr(self, n)!r}")
        gpu_kind(self.gpu)
        model_spec(self.model)
        problems = self.problems()
        if problems:
            raise ConfigError("sim config: " + "; ".join(problems))

    def problems(self) -> list[str]:
        out: list[str] = []

        def positive(name: str, integer: bool = False) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                out.append(f"{name} must be a positive number, is {v!r}")
            elif integer and int(v) != v:
                out.append(f"{name} must be a whole number, is {v!r}")

        for n in ("replicas", "gpus_per_node", "max_num_seqs", "max_num_batched_tokens", "block_size", "users",
                  "prompt_tokens", "output_tokens"):
            positive(n, integer=True)
        for n in ("pod_cpu", "pod_memory_gib", "rate", "duration", "step", "rate_window", "tick",
                  "burst_factor", "burst_length_s", "fault_duration"):
            positive(n)
        for n, lo, hi in (("gpu_memory_utilization", 0.05, 0.99), ("token_spread", 0.0, 1.0),
                          ("eos_share", 0.0, 1.0), ("burst_share", 0.01, 0.99)):
            v = getattr(self, n)
            if not isinstance(v, (int, float)) or not (lo <= v <= hi):
                out.append(f"{n} must be in [{lo}, {hi}], is {v!r}")
        if out:
            return out
        for n, allowed in (("routing", ROUTING), ("arrival", ARRIVALS), ("mesh_quantiles", MESH_QUANTILES)):
            if getattr(self, n) not in allowed:
                out.append(f"{n} must be one of {', '.join(allowed)}, is {getattr(self, n)!r}")
        try:
            g = gpu_kind(self.gpu)
            m = model_spec(self.model)
        except UnknownNameError as e:
            out.append(str(e))
            return out
        if m.weight_bytes + 1.5 * GIB > self.gpu_memory_utilization * g.hbm_bytes:
            out.append(f"model {m.name} ({m.weight_bytes / GIB:.1f} GiB of weights) leaves no KV cache on a {g.name} "
                       f"at gpu_memory_utilization={self.gpu_memory_utilization}")
        if self.warmup < 0:
            out.append(f"warmup must be >= 0, is {self.warmup!r}")
        if not (0 < self.inject_at < self.duration):
            out.append(f"inject_at must lie inside (0, duration={self.duration:g}), is {self.inject_at!r}")
        ratio = self.rate_window / self.step
        if abs(ratio - round(ratio)) > 1e-9:
            out.append(f"rate_window ({self.rate_window:g}) must be a multiple of step ({self.step:g})")
        if abs(self.duration / self.step - round(self.duration / self.step)) > 1e-9:
            out.append(f"duration ({self.duration:g}) must be a multiple of step ({self.step:g})")
        if self.tick > self.step:
            out.append(f"tick ({self.tick:g}) must not exceed step ({self.step:g})")
        return out

    @property
    def gpu_kind(self):
        return gpu_kind(self.gpu)

    @property
    def model_spec(self):
        return model_spec(self.model)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["gpu"] = self.gpu_kind.name
        d["model"] = self.model_spec.name
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> SimConfig:
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UnknownNameError(f"sim config: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**d)

    def with_(self, **changes: Any) -> SimConfig:
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise UnknownNameError(f"sim config: unknown field(s) {', '.join(unknown)}")
        return replace(self, **changes)
