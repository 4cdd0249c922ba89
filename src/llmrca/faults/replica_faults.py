"""Replica-level faults: a replica whose engine crashes again and again (``replica-crash-loop``), one replica slower
than its peers (``straggler``), packet loss towards one replica (``network-loss``). Documented in
docs/faults.md, "Replica faults"."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llmrca.faults.spec import FaultSpec, Param, Perturbation

# Kubernetes' kubelet: the first restart of a crashed container is at once, every later one waits an exponential
# back-off of 10 s, 20 s, 40 s ... capped at 300 s (reset after 10 min of running fine; Pod Lifecycle docs).
KUBELET_BACKOFF_S = 10.0
KUBELET_BACKOFF_MAX_S = 300.0


def crash_loop_backoffs(crashes: int, base_s: float, max_s: float) -> list[float]:
    """The kubelet's wait before each restart: none before the first, then base, 2·base, 4·base … up to max_s."""
    return [0.0 if k == 0 else min(base_s * 2.0 ** (k - 1), max_s) for k in range(int(crashes))]


def _crash_loop(p: Mapping[str, Any], target: str, start: float, end: float) -> list[Perturbation]:
    # Each crash kills the engine; it is down for the back-off and the model load, serves uptime_s, crashes again.
    # The loop stops at the fault's end (the fix is out: no crash after it; the last restart still takes its time,
    # as replica-kill's does), or after `crashes`.
    out, t = [], start
    for b in crash_loop_backoffs(p["crashes"], p["backoff_s"], p["backoff_max_s"]):
        if out and t >= end:
            break
        down = b + p["load_s"]
        out.append(Perturbation("process_kill", target, t, t + down, {"load_s": p["load_s"], "backoff_s": b}))
        t += down + p["uptime_s"]
    return out


def _scale_crash_loop(p: Mapping[str, Any], s: float) -> dict[str, Any]:
    # Strength is the number of crashes (at least one): 1 = the reference loop, 2 = twice as many.
    return {**p, "crashes": max(1, round(p["crashes"] * s))}


def _straggler(p: Mapping[str, Any], target: str, start: float, end: float) -> list[Perturbation]:
    return [Perturbation("device_slowdown", target, start, end, {"factor": p["factor"]})]


def _scale_straggler(p: Mapping[str, Any], s: float) -> dict[str, Any]:
    # Strength scales the excess: factor 1 + s·(factor - 1), so s → 0 is a healthy GPU.
    return {**p, "factor": 1.0 + s * (p["factor"] - 1.0)}


def _loss(p: Mapping[str, Any], target: str, start: float, end: float) -> list[Perturbation]:
    return [Perturbation("ingress_loss", target, start, end, {
        "loss": p["loss_pct"] / 100.0, "correlation": p["correlation"]})]


def _scale_loss(p: Mapping[str, Any], s: float) -> dict[str, Any]:
    return {**p, "loss_pct": min(100.0, p["loss_pct"] * s)}


REPLICA_CRASH_LOOP = FaultSpec(
    id="replica-crash-loop",
    layer="process",
    targets="replicas",
    params=(
        Param("crashes", 3, "", "how many times at most the engine dies while the fault lasts (the first restart "
                                "is at once, each later one after the kubelet's back-off)", kind=int, minimum=1,
              maximum=100),
        Param("uptime_s", 15.0, " s", "how long the restarted replica serves before it dies again (a crash at the "
                                      "first large batch, a leak that runs out)", minimum=0.0, maximum=3600.0),
        # As replica-kill: our estimate for a 7B model from local disk (weights into HBM, CUDA graph capture).
        Param("load_s", 30.0, " s", "model load time of every restart", minimum=0.1, maximum=3600.0),
        Param("backoff_s", KUBELET_BACKOFF_S, " s", "the kubelet's first back-off (doubles for each later restart)",
              minimum=0.0, maximum=300.0),
        Param("backoff_max_s", KUBELET_BACKOFF_MAX_S, " s", "the back-off's cap", minimum=0.0, maximum=3600.0),
    ),
    description="the target's engine process dies (SIGKILL, as an OOM kill or a crash at a given batch) and is "
                "restarted, again and again: each death fails its in-flight requests (502 at the proxy), the Serve "
                "controller marks the replica unhealthy and routes its load to the peers; each restart waits the "
                "kubelet's back-off (none, 10 s, 20 s, 40 s … capped at 5 min: CrashLoopBackOff) and the model's "
                "load time, then the replica serves for uptime_s and dies again: a saw-tooth of running requests, "
                "GPU use and KV cache on the target, repeated failed-health / started lines in the controller log, "
                "a new Serve replica id after every restart, bursts of 502s",
    live="SIGKILL of the target's engine, crashes times: the supervisor restarts it after the back-off and load_s "
         "(emulated engine), or after the back-off with its real model load (real vLLM: its worker is killed, the "
         "server exits through its own death path); the next kill comes uptime_s after it serves again",
    kubernetes="a crashing container under restartPolicy Always: the kubelet restarts it with its CrashLoopBackOff "
               "back-off (10 s doubling to 300 s); to inject it, Chaos Mesh PodChaos (action container-kill, "
               "containerNames [the engine]) scheduled crashes times (a Schedule with the same interval), or a "
               "rolled-out engine flag that makes it exit uptime_s after its start",
    indicator="num_requests_running",
    effect=_crash_loop,
    causes=("process_kill",),
    scale=_scale_crash_loop,
)

STRAGGLER = FaultSpec(
    id="straggler",
    layer="gpu",
    targets="replicas",
    params=(
        Param("factor", 2.0, "x", "how much longer the replica's GPU kernels take (memory-bound decode and "
                                  "compute-bound prefill alike): 1 = healthy", minimum=1.0, maximum=20.0),
    ),
    description="one replica's GPU is persistently slower than its peers' (a degraded GPU: an HBM or clock "
                "degradation, a fail-slow device): every engine step takes longer, so its inter-token latency, "
                "prefill time and TTFT rise by about the factor, its GPU stays busier (utilisation up, the same "
                "work per step), tokens per second per request fall; least-loaded routing sees its requests stay "
                "in flight longer and sends its peers more of the load. Nothing fails and no line is logged",
    live="the emulated GPU's /control/slowdown (factor, self-expiring like the power cap); refused on the real "
         "engine: on a CPU host a CPU-quota throttle is CPU contention (the cpu fault), not a slow GPU, and on a "
         "GPU host no clock lock is set by this testbed",
    kubernetes="no Chaos Mesh kind slows a GPU; a privileged Job on the target's node that locks its clocks low "
               "(nvidia-smi -i <gpu> --lock-gpu-clocks=<min>,<low>, reset with --reset-gpu-clocks after) emulates a "
               "clock-degraded GPU; a real straggler is found, not injected (DCGM diagnostics, per-GPU step times)",
    indicator="latency",
    effect=_straggler,
    causes=("device_slowdown",),
    scale=_scale_straggler,
)

NETWORK_LOSS = FaultSpec(
    id="network-loss",
    layer="network",
    targets="replicas",
    params=(
        Param("loss_pct", 30.0, " %", "share of packets towards the target that are dropped", minimum=0.0,
              maximum=100.0),
        Param("correlation", 0.25, "", "correlation of successive drops (0..1, netem's)", minimum=0.0,
              maximum=1.0),
    ),
    description="netem drops loss_pct of the packets sent towards the target pod: TCP recovers each lost segment "
                "of a request by its retransmission timer (at least 200 ms on Linux, doubled for every lost "
                "retransmission: 200, 400, 800 ms …), so calls to that replica get a heavy latency tail (proxy "
                "CLIENT span, mesh latency, gateway latency), while its engine sees fewer, later requests and "
                "barely moves; at high loss chains of lost retransmissions outlast nginx's read timeout: 504 and "
                "'upstream timed out' at the gateway",
    live="the mesh's links towards the target drop segments per the same loss model and hold each chunk for the "
         "TCP retransmissions that would recover it (an emulation of TCP loss recovery at the proxy level: "
         "loopback drops nothing without tc netem and privileges); works for both engines",
    kubernetes="Chaos Mesh NetworkChaos (action loss, direction to, loss '30', correlation '25') on the target's pod",
    indicator="latency",
    effect=_loss,
    causes=("ingress_loss",),
    scale=_scale_loss,
)

REPLICA_FAULTS = (REPLICA_CRASH_LOOP, STRAGGLER, NETWORK_LOSS)
