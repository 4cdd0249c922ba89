"""The study's four faults (suite ``paper``), with its exact parameters as defaults (PAPER_TESTBED.md)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llmrca.faults.spec import FaultSpec, Param, Perturbation

# The study capped A100-class GPUs at 150 W; as a fraction of an A100 SXM's 400 W default limit.
STUDY_POWER_FRACTION = 150.0 / 400.0


def _cpu(p: Mapping[str, Any], target: str, start: float, end: float) -> list[Perturbation]:
    return [Perturbation("cpu_stress", target, start, end, {"workers": p["workers"], "load": p["load"]})]


def _memory(p: Mapping[str, Any], target: str, start: float, end: float) -> list[Perturbation]:
    return [Perturbation("memory_hog", target, start, end, {"bytes": p["size_gb"] * 1e9, "workers": p["workers"]})]


def _network(p: Mapping[str, Any], target: str, start: float, end: float) -> list[Perturbation]:
    return [Perturbation("ingress_delay", target, start, end, {
        "latency_s": p["latency_ms"] / 1000.0, "jitter_s": p["jitter_ms"] / 1000.0, "correlation": p["correlation"],
    })]


def _gpu(p: Mapping[str, Any], target: str, start: float, end: float) -> list[Perturbation]:
    return [Perturbation("power_limit", target, start, end,
                         {"watts": p["power_limit_w"] if p["power_limit_frac"] is None else None,
                          "fraction": p["power_limit_frac"]})]


def _scale_cpu(p: Mapping[str, Any], s: float) -> dict[str, Any]:
    return {**p, "workers": max(1, round(p["workers"] * s))}


def _scale_memory(p: Mapping[str, Any], s: float) -> dict[str, Any]:
    return {**p, "size_gb": p["size_gb"] * s}


def _scale_network(p: Mapping[str, Any], s: float) -> dict[str, Any]:
    return {**p, "latency_ms": p["latency_ms"] * s, "jitter_ms": p["jitter_ms"] * s}


def _scale_gpu(p: Mapping[str, Any], s: float) -> dict[str, Any]:
    # Strength scales how far below the default limit the cap goes; the GPU kind then gives the watts.
    frac = p["power_limit_frac"] if p["power_limit_frac"] is not None else STUDY_POWER_FRACTION
    return {**p, "power_limit_frac": max(0.01, 1.0 - s * (1.0 - frac))}


CPU = FaultSpec(
    id="cpu",
    layer="container",
    targets="replicas",
    params=(
        Param("workers", 16, "", "stress workers", kind=int, minimum=1),
        Param("load", 100, "%", "load per worker", kind=int, minimum=1),
    ),
    description="16 busy workers share the target container's CPU quota: HTTP handling, tokenization, scheduling "
                "and detokenization slow down, the GPU waits between steps, container CPU saturates at its limit",
    live="stress-ng --cpu 16 --cpu-load 100 in the target's cgroup / CPU set",
    kubernetes="Chaos Mesh StressChaos (cpu: workers 16, load 100)",
    indicator="ctn_cpu",
    effect=_cpu,
    scale=_scale_cpu,
)

MEMORY = FaultSpec(
    id="memory",
    layer="container",
    targets="replicas",
    params=(
        Param("size_gb", 8.0, " GB", "bytes allocated and touched (decimal GB)", minimum=0.0),
        Param("workers", 1, "", "allocating workers", kind=int, minimum=1),
    ),
    description="8 GB allocated in the target container: working set jumps; near the container limit, reclaim "
                "slows CPU-side work; above it the kernel OOM-kills the largest process",
    live="stress-ng --vm 1 --vm-bytes 8G --vm-keep (a memory hog) in the target's cgroup",
    kubernetes="Chaos Mesh StressChaos (memory: workers 1, size 8GB)",
    indicator="ctn_memory",
    effect=_memory,
    scale=_scale_memory,
)

NETWORK = FaultSpec(
    id="network",
    layer="network",
    targets="replicas",
    params=(
        Param("latency_ms", 1000.0, " ms", "added delay", minimum=0.0),
        Param("jitter_ms", 100.0, " ms", "delay jitter (uniform)", minimum=0.0),
        Param("correlation", 0.25, "", "correlation of successive jitters (0..1)", minimum=0.0),
    ),
    description="1000 ms +- 100 ms (corr. 0.25) on packets towards the target pod: callers (proxy CLIENT span, "
                "mesh latency, gateway) see ~1 s more per request routed there; the engine barely moves",
    live="tc netem delay on the target's interface inside its network namespace, or a delay proxy",
    kubernetes="Chaos Mesh NetworkChaos (action delay, direction to, latency 1000ms, jitter 100ms, correlation 25)",
    indicator="latency",
    effect=_network,
    scale=_scale_network,
)

GPU = FaultSpec(
    id="gpu",
    layer="gpu",
    targets="replicas",
    params=(
        Param("power_limit_w", 150.0, " W", "power cap (nvidia-smi -pl)", minimum=1.0),
        Param("power_limit_frac", None, "", "power cap as a fraction of the GPU's default limit, held to the range "
                                                 "the GPU accepts (overrides watts)",
              optional=True, minimum=0.01),
    ),
    description="power cap of 150 W on the target's GPU: SM clock falls, power flattens at the cap, inter-token "
                "latency and prefill time rise on that replica while its GPU utilisation stays high or rises",
    live="the engine's GPU model takes a cap via its control endpoint; on real GPUs nvidia-smi -pl 150, reset after",
    kubernetes="privileged Job on the target's node running nvidia-smi -i <gpu> -pl 150 (and -pl <default> after)",
    indicator="power_usage",
    effect=_gpu,
    scale=_scale_gpu,
    # A Kubernetes Job has to be scheduled and its container started before nvidia-smi runs.
    onset_lag_s=(2.0, 6.0),
    end_lag_s=(2.0, 6.0),
)

PAPER_FAULTS = (CPU, MEMORY, NETWORK, GPU)
