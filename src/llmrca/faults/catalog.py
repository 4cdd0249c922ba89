"""The study's four faults (suite ``paper``), with its exact parameters as defaults, and the extra faults:
``replica-kill``, ``engine-hang``, ``kv-cache-pressure``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llmrca.faults.spec import FaultParamError, FaultSpec, Param, Perturbation, TargetFacts

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
    return [Perturbation("power_limit", target, start, end, {"watts": p["power_limit_w"]})]


def _kill(p: Mapping[str, Any], target: str, start: float, end: float) -> list[Perturbation]:
    # The process is down from the kill until its model is loaded again, whatever the fault's nominal window.
    return [Perturbation("process_kill", target, start, start + p["load_s"], {"load_s": p["load_s"]})]


def _hang(p: Mapping[str, Any], target: str, start: float, end: float) -> list[Perturbation]:
    # The worker stays stopped for stall_s, whatever the fault's nominal window (an undo resumes it earlier live).
    return [Perturbation("engine_stall", target, start, start + p["stall_s"], {"stall_s": p["stall_s"]})]


def _kv(p: Mapping[str, Any], target: str, start: float, end: float) -> list[Perturbation]:
    # Restarted with the small cache at the start, restarted with the normal one at the end.
    return [Perturbation("kv_cache_limit", target, start, end, {
        "fraction": p["fraction"], "tokens": None if p["fraction"] is not None else p["tokens"], "load_s": p["load_s"],
    })]


def study_cap_w(facts: TargetFacts) -> float:
    """The study's cap on the target's GPU: 150 W on an A100, the same 37.5 % of the default limit on others, held
    to what the GPU accepts."""
    lo, hi = float(facts.min_power_w), float(facts.max_power_w)
    return min(max(STUDY_POWER_FRACTION * hi, lo), hi)


def _apply_gpu(fault: str, p: Mapping[str, Any], facts: TargetFacts) -> dict[str, Any]:
    """The cap in watts. ``depth`` places it between the GPU's draw before the fault (0) and the study's cap (1),
    so that every depth > 0 lies below what the GPU draws and acts; a wattage (or fraction of the default limit)
    is taken as given and must lie in the GPU's accepted range (``nvidia-smi -pl`` refuses anything else)."""
    if all(p.get(k) is None for k in ("power_limit_w", "power_limit_frac", "depth")):
        raise FaultParamError(f"fault {fault!r}: give the cap as power_limit_w, power_limit_frac or depth")
    if facts.min_power_w is None or facts.max_power_w is None:
        if p.get("depth") is None and p.get("power_limit_frac") is None and p.get("power_limit_w") is not None:
            return {**p}  # watts as given; the system model checks them against its GPU
        raise FaultParamError(f"fault {fault!r}: a relative cap needs the target's GPU (its accepted power range)")
    lo, hi = float(facts.min_power_w), float(facts.max_power_w)
    gpu = facts.gpu or "GPU"
    out = {**p}
    if p.get("depth") is not None:
        depth = float(p["depth"])
        if depth <= 0:
            raise FaultParamError(f"fault {fault!r} parameter 'depth': must be > 0, is {depth:g}")
        if facts.power_draw_w is None:
            raise FaultParamError(f"fault {fault!r} parameter 'depth': the target's power draw is unknown")
        draw = float(facts.power_draw_w())
        ref = study_cap_w(facts)
        if ref >= draw:  # the replica draws less than the study's cap: go towards the lowest accepted limit
            ref = lo
        if draw <= lo:
            raise FaultParamError(
                f"fault {fault!r} parameter 'depth': the target's {gpu} draws {draw:.1f} W, at or below the lowest "
                f"limit it accepts ({lo:g} W): no power cap can act on it")
        watts = max(lo, ref + (1.0 - depth) * (draw - ref))
        out.update(power_limit_w=watts, power_limit_frac=None, power_draw_w=draw)
        return out
    if p.get("power_limit_frac") is not None:
        name, watts = "power_limit_frac", float(p["power_limit_frac"]) * hi
    else:
        name, watts = "power_limit_w", float(p["power_limit_w"])
    if not (lo <= watts <= hi):
        raise FaultParamError(
            f"fault {fault!r} parameter {name!r}: a cap of {watts:g} W is outside what a {gpu} accepts "
            f"({lo:g}-{hi:g} W): nvidia-smi -pl would refuse it (give watts in range, or depth)")
    out.update(power_limit_w=watts, power_limit_frac=None)
    return out


def _scale_cpu(p: Mapping[str, Any], s: float) -> dict[str, Any]:
    return {**p, "workers": max(1, round(p["workers"] * s))}


def _scale_memory(p: Mapping[str, Any], s: float) -> dict[str, Any]:
    return {**p, "size_gb": p["size_gb"] * s}


def _scale_network(p: Mapping[str, Any], s: float) -> dict[str, Any]:
    return {**p, "latency_ms": p["latency_ms"] * s, "jitter_ms": p["jitter_ms"] * s}


def _scale_gpu(p: Mapping[str, Any], s: float) -> dict[str, Any]:
    # Strength is the cap's depth below the replica's own draw: any s > 0 caps below what the GPU draws, s = 1 is
    # the study's cap (150 W on an A100), s > 1 deeper, down to the lowest limit the GPU accepts.
    return {**p, "depth": s, "power_limit_frac": None, "power_limit_w": None}


def _scale_kill(p: Mapping[str, Any], s: float) -> dict[str, Any]:
    return {**p, "load_s": p["load_s"] * s}


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
    causes=("cpu_stress",),
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
    causes=("memory_hog",),
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
    causes=("ingress_delay",),
    scale=_scale_network,
)

GPU = FaultSpec(
    id="gpu",
    layer="gpu",
    targets="replicas",
    params=(
        Param("power_limit_w", 150.0, " W", "power cap (nvidia-smi -pl)", optional=True, minimum=1.0),
        Param("power_limit_frac", None, "", "power cap as a fraction of the GPU's default limit, inside the range "
                                                 "the GPU accepts (overrides watts)",
              optional=True, minimum=0.01),
        Param("depth", None, "", "cap between the GPU's draw before the fault (0) and the study's cap (1: 150 W on "
                                 "an A100, 37.5 % of the default limit elsewhere); overrides both; = strength",
              optional=True, minimum=0.0),
    ),
    description="power cap of 150 W on the target's GPU (or, with depth, between its own draw and that): SM clock "
                "falls, power flattens at the cap, inter-token latency and prefill time rise on that replica while "
                "its GPU utilisation stays high or rises",
    live="the engine's GPU model takes a cap via its control endpoint; on real GPUs nvidia-smi -pl 150, reset after",
    kubernetes="privileged Job on the target's node running nvidia-smi -i <gpu> -pl 150 (and -pl <default> after)",
    indicator="power_usage",
    effect=_gpu,
    causes=("power_limit",),
    apply=_apply_gpu,
    scale=_scale_gpu,
    # A Kubernetes Job has to be scheduled and its container started before nvidia-smi runs.
    onset_lag_s=(2.0, 6.0),
    end_lag_s=(2.0, 6.0),
)

REPLICA_KILL = FaultSpec(
    id="replica-kill",
    layer="process",
    targets="replicas",
    params=(
        # Our estimate for a 7B model from local disk: process start, weights into HBM, CUDA graph capture.
        Param("load_s", 30.0, " s", "time from the kill until the restarted replica serves again (model load)",
              minimum=0.1),
    ),
    description="the target's engine process is killed (SIGKILL): its in-flight requests fail (502 at the proxy), "
                "the Serve controller stops routing to it and restarts it, which takes the model's load time; "
                "meanwhile its load shifts to the peers",
    live="SIGKILL of the target's engine process; the supervisor starts it again after load_s",
    kubernetes="Chaos Mesh PodChaos (action pod-kill) on the target's pod",
    indicator="num_requests_running",
    effect=_kill,
    causes=("process_kill",),
    scale=_scale_kill,
)

def _scale_hang(p: Mapping[str, Any], s: float) -> dict[str, Any]:
    return {**p, "stall_s": p["stall_s"] * s}


def _scale_kv(p: Mapping[str, Any], s: float) -> dict[str, Any]:
    # Strength divides the capacity: 2 = half of the reference cache, towards 0 = a cache too large to matter.
    out = {**p, "tokens": max(16, round(p["tokens"] / s))}
    if p.get("fraction") is not None:
        out["fraction"] = min(1.0, p["fraction"] / s)
    return out


ENGINE_HANG = FaultSpec(
    id="engine-hang",
    layer="process",
    targets="replicas",
    params=(
        # Longer than nginx's proxy_read_timeout (60 s in the study's gateway): requests stuck in the hang's first
        # 30 s time out at the gateway; their streams' header went out at once, so nginx cuts them (200 in its access
        # log, 'while reading upstream'); a hang shorter than the timeout shows as a latency spike only.
        Param("stall_s", 90.0, " s", "how long the engine's worker stays stopped (SIGSTOP until SIGCONT); an undo "
                                     "resumes it earlier", minimum=0.1, maximum=86400.0),
    ),
    description="the target's engine stops stepping (its worker process is stopped, SIGSTOP) while its API server "
                "still answers /health with 200, so the proxy keeps routing to it: no token is generated, running "
                "requests stall and new ones queue, the engine's /metrics still answers but its vllm:* gauges and "
                "counters freeze (they come from the stopped engine core) while the GPU goes idle; nginx gives up "
                "on a request that gets nothing for proxy_read_timeout ('upstream timed out' in its error log; "
                "504, or a cut stream where the response header had gone out) — a hang shorter than the timeout "
                "is a latency spike only; on SIGCONT the engine resumes. As measured on vLLM 0.32.0 "
                "(SIGSTOP of the worker: /health 200, metrics frozen, requests stall)",
    live="SIGSTOP of the engine's worker processes (real vLLM: the EngineCore/worker children of the API server; "
         "emulated engine: its /control/stall endpoint), SIGCONT at the end, on undo and when the testbed stops",
    kubernetes="a privileged ephemeral container (kubectl debug --profile=sysadmin --target=<engine container>) "
               "or a node-level Job with hostPID that runs kill -STOP on the engine's worker pid, kill -CONT after "
               "(Chaos Mesh's PodChaos only fails or kills pods and containers; chaosd, its agent for physical "
               "machines, has 'attack process stop')",
    indicator="generation_tokens",
    effect=_hang,
    causes=("engine_stall",),
    scale=_scale_hang,
)

KV_CACHE_PRESSURE = FaultSpec(
    id="kv-cache-pressure",
    layer="config",
    targets="replicas",
    params=(
        # As measured on vLLM 0.32.0: a 2,048-token KV cache under 8 clients preempts (27 preemptions, TTFT p50
        # 2.85 s).
        Param("tokens", 2048, " tokens", "KV-cache capacity the replica restarts with", kind=int, minimum=16),
        Param("fraction", None, "", "capacity as a fraction of the replica's normal KV cache (overrides tokens)",
              optional=True, minimum=1e-6, maximum=1.0),
        Param("load_s", 30.0, " s", "restart time of the replica (model load), at the start and again at the end",
              minimum=0.0),
    ),
    description="the target replica is rolled out with too little KV cache (a gpu_memory_utilization / "
                "--kv-cache-memory-bytes misconfiguration): it restarts (in-flight requests fail with 502 at the "
                "proxy, load shifts to its peers for load_s, its log prints the new 'GPU KV cache size'), then "
                "under normal load its scheduler preempts running requests for recomputation "
                "(vllm:num_preemptions rises; vLLM V1 prints no per-preemption warning, only 'Preemptions: N' in "
                "its periodic stats line), requests queue, TTFT rises, throughput falls, KV-cache usage sits near "
                "1 and its GPU uses less memory; when it is undone the replica restarts again with its normal "
                "cache (a second restart). vLLM docs: Optimization and Tuning, preemption",
    live="the supervisor restarts the target's engine with --kv-cache-tokens N (emulated engine) or "
         "--kv-cache-memory-bytes (real vLLM), and again without it at the end",
    kubernetes="a changed Deployment / RayService spec of the target (vLLM's gpu_memory_utilization or "
               "--kv-cache-memory-bytes) rolled out to that replica, rolled back after",
    indicator="num_preemptions",
    effect=_kv,
    causes=("kv_cache_limit",),
    scale=_scale_kv,
)

PAPER_FAULTS = (CPU, MEMORY, NETWORK, GPU)
EXTRA_FAULTS = (REPLICA_KILL, ENGINE_HANG, KV_CACHE_PRESSURE)
