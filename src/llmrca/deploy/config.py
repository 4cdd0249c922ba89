"""The one description of a deployment: what runs (replicas, GPU, model, pod limits, engine limits, routing), how it
is observed (metric step, rate window, mesh quantiles), the load it serves, the background noise around it, and the
timing of a run. The simulator runs it (``llmrca.sim``), the live testbed starts it (``llmrca.testbed``), scenario
files write it (``llmrca.scenario``).

Every field has one default: the reference study's deployment (4 vLLM replicas on A100-80GB, 5 req/s of 512/256-token
streaming chat, Prometheus at a 5 s step with 15 s rate windows, a 360 s run with the fault at 285 s for 60 s).
Every field also names the scenario table it belongs to (``metadata["table"]``), so a scenario file and this class
cannot drift apart. Validation lives here, once; every message starts with the name of the field at fault.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, Field, asdict, dataclass, field, fields, replace
from typing import Any

from llmrca.errors import LlmrcaError, UnknownNameError
from llmrca.sim.hardware import GIB, gpu_kind, model_spec

ROUTING = ("least-loaded", "power-of-two", "round-robin")
ARRIVALS = ("constant", "poisson", "bursty")
MESH_QUANTILES = ("exact", "istio")
ENGINES = ("emulated", "vllm")  # the live testbed's replicas: llmrca's model of vLLM, or a real vLLM server
NOISE_LEVELS = ("realistic", "none")  # background activity not caused by any fault
# The scenario tables a field may belong to, in the order a scenario file lists them.
TABLES = ("deployment", "workload", "telemetry", "noise", "timing")
# Fields whose scenario key differs from the field name (``[noise] level`` reads better than ``[noise] noise``).
_KEYS = {"noise": "level"}
# Fields left out of a recorded config (``to_dict``) and a scenario document while they hold their default: added
# later, they keep every config recorded before them (the paper suite's cases and scenario hashes) byte for byte.
_OMITTED_AT_DEFAULT = ("workload_node",)


class ConfigError(LlmrcaError, ValueError):
    """A deployment configuration value is out of range; the message names the field."""


def _f(default: Any, table: str, doc: str) -> Any:
    return field(default=default, metadata={"table": table, "doc": doc})


@dataclass(frozen=True)
class DeployConfig:
    # Deployment (the reference study's: nginx → Ray Serve proxy → 4 vLLM replicas on A100-80GB GPUs)
    replicas: int = _f(4, "deployment", "vLLM replicas (the first runs in the Ray head pod)")
    gpu: str = _f("a100-80gb", "deployment", "GPU kind of every replica: a100-80gb, h100, l4, ... or cpu "
                 "(one host core, no GPU telemetry)")
    model: str = _f("tiiuae/Falcon-H1-7B-Instruct", "deployment", "served model (or an alias: 7b, 8b, 14b, ...)")
    routing: str = _f("least-loaded", "deployment", "the proxy's replica choice: " + ", ".join(ROUTING))
    gpus_per_node: int = _f(2, "deployment", "GPUs (replicas) per node")
    pod_cpu: float = _f(8.0, "deployment", "CPU limit of each Ray pod, cores")
    pod_memory_gib: float = _f(16.0, "deployment", "memory limit of each Ray pod, GiB")
    gpu_memory_utilization: float = _f(0.9, "deployment", "share of GPU memory vLLM may use (weights + KV cache)")
    max_num_seqs: int = _f(256, "deployment", "vLLM: most sequences in a batch")
    max_num_batched_tokens: int = _f(2048, "deployment", "vLLM V1: chunked-prefill token budget per step")
    block_size: int = _f(16, "deployment", "vLLM: KV-cache block size, tokens")
    shared_prefix_tokens: int = _f(32, "deployment", "chat template / system prompt every request shares "
                                   "(prefix-cache hits)")
    # Workload (Locust in the study: 300 users, constant 5 req/s, streaming chat, 512 in / 256 out)
    rate: float = _f(5.0, "workload", "mean load, requests/s")
    arrival: str = _f("constant", "workload", "arrival process: " + ", ".join(ARRIVALS))
    users: int = _f(300, "workload", "simulated users (constant pacing: each sends every users/rate s)")
    burst_factor: float = _f(3.0, "workload", "bursty: rate multiplier while a burst lasts")
    burst_share: float = _f(0.2, "workload", "bursty: share of time in bursts (the mean rate stays `rate`)")
    burst_length_s: float = _f(10.0, "workload", "bursty: mean burst length, s")
    prompt_tokens: int = _f(512, "workload", "prompt length, tokens")
    output_tokens: int = _f(256, "workload", "max_tokens of every request")
    token_spread: float = _f(0.1, "workload", "relative spread of prompt lengths and of the answer length")
    eos_share: float = _f(0.3, "workload", "share of answers that end (EOS) before max_tokens")
    # The order below is the order of every case's recorded config (provenance): kept as it was, so that a case
    # made before this class existed and one made now with the same settings have the same bytes.
    # Timing (seconds)
    duration: float = _f(360.0, "timing", "length of the observed window, s")
    warmup: float = _f(30.0, "timing", "load runs this long before t=0, so the window starts in steady state")
    inject_at: float = _f(285.0, "timing", "fault start after t=0, s")
    fault_duration: float = _f(60.0, "timing", "how long the fault lasts, s")
    # Telemetry. One default for the step and the window: the study's 5 s Prometheus step and 15 s rate windows
    # (what its cases were computed with). The live testbed scrapes faster through its own scenario (live.toml).
    step: float = _f(5.0, "telemetry", "metrics step = Prometheus scrape interval and query step, s")
    rate_window: float = _f(15.0, "telemetry", "range of rate() and histogram_quantile() windows, s; a multiple "
                            "of step")
    tick: float = _f(1.0, "timing", "engine control-loop tick (clocks, power, temperature, gauges), s")
    start: float | None = _f(None, "timing", "unix time of t=0; absent: derived from the seed")
    mesh_quantiles: str = _f("istio", "telemetry", "mesh latency quantiles: istio (interpolated from Istio's "
                             "classic buckets, as the study's Prometheus did) or exact")
    # Noise
    variability: bool = _f(True, "noise", "per-run differences (load, hardware speed, thermal start, baselines)")
    noise: str = _f("realistic", "noise", "background activity not caused by the fault: realistic (neighbours, "
                    "GC-like spikes, scrape gaps, unrelated warnings) or none (measurement noise only)")
    # Added after the fields above, so that a config recorded before them keeps its order.
    engine: str = _f("emulated", "deployment", "the live testbed's engine: emulated (llmrca's model of vLLM, any "
                     "machine) or vllm (a real vLLM OpenAI server); the simulator models vLLM either way")
    kv_cache_tokens: int | None = _f(None, "deployment", "KV-cache capacity of each replica, tokens; absent: what "
                                     "gpu_memory_utilization leaves after the weights")
    workload_node: bool = _f(False, "workload", "the load generator is a service of the deployment (`loadgen`, "
                             "calling the gateway) with its own client-side telemetry (requests and prompt tokens "
                             "sent, response times, failures); a workload fault (prompt-surge) needs it")

    def __post_init__(self) -> None:
        for n, allowed in (("routing", ROUTING), ("arrival", ARRIVALS), ("mesh_quantiles", MESH_QUANTILES),
                           ("noise", NOISE_LEVELS), ("engine", ENGINES)):
            if getattr(self, n) not in allowed:
                raise UnknownNameError(f"deploy config: {n} must be one of {', '.join(allowed)}, "
                                       f"is {getattr(self, n)!r}")
        gpu_kind(self.gpu)
        model_spec(self.model)
        problems = self.problems()
        if problems:
            raise ConfigError("deploy config: " + "; ".join(problems))

    def problems(self) -> list[str]:
        """Every out-of-range value, each message starting with its field's name."""
        return [text for _, text in self.field_problems()]

    def field_problems(self) -> list[tuple[str, str]]:
        """(field, message) for every out-of-range value; the message starts with the field's name."""
        out: list[tuple[str, str]] = []

        def positive(name: str, integer: bool = False) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                out.append((name, f"{name} must be a positive number, is {v!r}"))
            elif integer and int(v) != v:
                out.append((name, f"{name} must be a whole number, is {v!r}"))

        for n in ("replicas", "gpus_per_node", "max_num_seqs", "max_num_batched_tokens", "block_size", "users",
                  "prompt_tokens", "output_tokens"):
            positive(n, integer=True)
        for n in ("pod_cpu", "pod_memory_gib", "rate", "duration", "step", "rate_window", "tick",
                  "burst_factor", "burst_length_s", "fault_duration"):
            positive(n)
        for n, lo, hi in (("gpu_memory_utilization", 0.05, 0.99), ("token_spread", 0.0, 1.0),
                          ("eos_share", 0.0, 1.0), ("burst_share", 0.01, 0.99)):
            v = getattr(self, n)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (lo <= v <= hi):
                out.append((n, f"{n} must be in [{lo}, {hi}], is {v!r}"))
        v = self.kv_cache_tokens
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < self.block_size):
            out.append(("kv_cache_tokens", (f"kv_cache_tokens must be a whole number of at least block_size "
                                            f"({self.block_size}) tokens, or absent; is {v!r}")))
        if not isinstance(self.workload_node, bool):
            out.append(("workload_node", f"workload_node must be true or false, is {self.workload_node!r}"))
        if out:
            return out
        for n, allowed in (("routing", ROUTING), ("arrival", ARRIVALS), ("mesh_quantiles", MESH_QUANTILES),
                           ("noise", NOISE_LEVELS), ("engine", ENGINES)):
            if getattr(self, n) not in allowed:
                out.append((n, f"{n} must be one of {', '.join(allowed)}, is {getattr(self, n)!r}"))
        try:
            g = gpu_kind(self.gpu)
        except UnknownNameError as e:
            out.append(("gpu", f"gpu: {e}"))
            return out
        try:
            m = model_spec(self.model)
        except UnknownNameError as e:
            out.append(("model", f"model: {e}"))
            return out
        if m.weight_bytes + 1.5 * GIB > self.gpu_memory_utilization * g.hbm_bytes:
            out.append(("model", (f"model {m.name} ({m.weight_bytes / GIB:.1f} GiB of weights) leaves no KV cache "
                                 f"on a {g.name} at gpu_memory_utilization={self.gpu_memory_utilization}")))
        if self.warmup < 0:
            out.append(("warmup", f"warmup must be >= 0, is {self.warmup!r}"))
        if not (0 < self.inject_at < self.duration):
            out.append(("inject_at", (f"inject_at must lie inside (0, duration={self.duration:g}), "
                                     f"is {self.inject_at!r}")))
        ratio = self.rate_window / self.step
        if abs(ratio - round(ratio)) > 1e-9:
            out.append(("rate_window", (f"rate_window ({self.rate_window:g}) must be a multiple of step "
                                       f"({self.step:g})")))
        if abs(self.duration / self.step - round(self.duration / self.step)) > 1e-9:
            out.append(("duration", f"duration ({self.duration:g}) must be a multiple of step ({self.step:g})"))
        if self.tick > self.step:
            out.append(("tick", f"tick ({self.tick:g}) must not exceed step ({self.step:g})"))
        return out

    @property
    def gpu_kind(self):
        return gpu_kind(self.gpu)

    @property
    def model_spec(self):
        return model_spec(self.model)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for name in _OMITTED_AT_DEFAULT:
            if d[name] == default_of(_field(name)):
                del d[name]
        d["gpu"] = self.gpu_kind.name
        d["model"] = self.model_spec.name
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> DeployConfig:
        d = dict(d or {})
        check_fields(cls, d, "deploy config")
        return cls(**d)

    def with_(self, **changes: Any) -> DeployConfig:
        check_fields(type(self), changes, "deploy config")
        return replace(self, **changes)


def check_fields(cls: type, given: dict[str, Any], what: str, hint: str = "") -> None:
    """Refuse keys of ``given`` that are not fields of the dataclass ``cls``, naming them and the known ones."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise UnknownNameError(f"{what}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
                               + hint)


# ------------------------------------------------------------------------------------ scenario-table layout


def table_of(name: str) -> str:
    """The scenario table a field belongs to."""
    return _field(name).metadata["table"]


def key_of(name: str) -> str:
    """The field's key in its scenario table (``noise`` is ``[noise] level``)."""
    return _KEYS.get(name, name)


def path_of(name: str) -> str:
    """``table.key`` of a field, as scenario files and ``--set`` spell it."""
    return f"{table_of(name)}.{key_of(name)}"


def table_fields(table: str) -> dict[str, Field]:
    """key → field of one scenario table, in declaration order."""
    return {key_of(f.name): f for f in fields(DeployConfig) if f.metadata["table"] == table}


def default_of(f: Field) -> Any:
    return None if f.default is MISSING else f.default


def _field(name: str) -> Field:
    for f in fields(DeployConfig):
        if f.name == name:
            return f
    raise UnknownNameError(f"deploy config has no field {name!r}")
