"""GPU hardware faults: a GPU that falls off the bus (Xid 79), an uncorrectable ECC error (Xid 48 / 94), and thermal
throttling from degraded cooling. Each perturbs one cause of the system model (``gpu_lost``, ``gpu_ecc``,
``gpu_cooling``); what the telemetry shows follows from the model (docs/faults.md, "GPU hardware faults").

Sources: NVIDIA's Xid catalogue (Xid 79 "GPU has fallen off the bus", 48 "DBE", 94 "contained ECC error", 95
"uncontained"), its A100/H100 memory error management notes (row remapping, pending until a GPU reset) and the DCGM
field list; the fault-injection service of NVIDIA Dynamo (ai-dynamo/dynamo, tests/fault_tolerance/hardware) for the
Kubernetes expression.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llmrca.faults.spec import FaultParamError, FaultSpec, Param, Perturbation, TargetFacts
from llmrca.sim.hardware import NO_ECC_MEMORY

XID_OFF_THE_BUS = 79
ECC_XIDS = (48, 94)  # double-bit error (needs a GPU reset), contained uncorrectable error (only the process dies)
# Xid 48 leaves the GPU unusable until it is reset: the node's health agent drains it and resets it (our estimate
# of detection, drain and `nvidia-smi -r`; Dynamo's injector documents ~2 min for its XID 48 recovery).
ECC_RESET_S = {48: 60.0, 94: 0.0}
# A cordoned node stays cordoned until someone uncordons it: longer than any case.
CORDON_S = 86400.0


def _require_gpu(fault: str, facts: TargetFacts) -> None:
    if facts.gpu == "cpu":
        raise FaultParamError(f"fault {fault!r} acts on a GPU; the target runs on the host CPU (deployment.gpu = "
                              "'cpu'): there is no GPU to fail")


def _apply_lost(fault: str, p: Mapping[str, Any], facts: TargetFacts) -> dict[str, Any]:
    _require_gpu(fault, facts)
    if p["cordon"] not in (0, 1):
        raise FaultParamError(f"fault {fault!r} parameter 'cordon': 0 or 1, is {p['cordon']!r}")
    return dict(p)


def _lost(p: Mapping[str, Any], target: str, start: float, end: float) -> list[Perturbation]:
    # Down from the Xid until the GPU is back and the model loaded, whatever the nominal window; a cordoned node
    # keeps the replica down until it is uncordoned (live: the undo).
    cordoned = int(p["cordon"])
    until = start + (CORDON_S if cordoned else p["recover_s"] + p["load_s"])
    return [Perturbation("gpu_lost", target, start, until, {
        "xid": XID_OFF_THE_BUS, "recover_s": p["recover_s"], "load_s": p["load_s"], "cordoned": cordoned})]


def _apply_ecc(fault: str, p: Mapping[str, Any], facts: TargetFacts) -> dict[str, Any]:
    _require_gpu(fault, facts)
    if facts.gpu in NO_ECC_MEMORY:
        raise FaultParamError(f"fault {fault!r}: a {facts.gpu} has no ECC memory: it reports no ECC error")
    xid = int(p["xid"])
    if xid not in ECC_XIDS:
        raise FaultParamError(f"fault {fault!r} parameter 'xid': one of {', '.join(map(str, ECC_XIDS))}, is {xid}")
    reset = ECC_RESET_S[xid] if p.get("reset_s") is None else float(p["reset_s"])
    return {**p, "xid": xid, "reset_s": reset}


def _ecc(p: Mapping[str, Any], target: str, start: float, end: float) -> list[Perturbation]:
    return [Perturbation("gpu_ecc", target, start, start + p["reset_s"] + p["load_s"], {
        "xid": int(p["xid"]), "reset_s": p["reset_s"], "load_s": p["load_s"]})]


def _cooling(p: Mapping[str, Any], target: str, start: float, end: float) -> list[Perturbation]:
    return [Perturbation("gpu_cooling", target, start, end, {"r_factor": p["r_factor"], "ramp_s": p["ramp_s"]})]


def _apply_cooling(fault: str, p: Mapping[str, Any], facts: TargetFacts) -> dict[str, Any]:
    _require_gpu(fault, facts)
    return dict(p)


def _scale_lost(p: Mapping[str, Any], s: float) -> dict[str, Any]:
    return {**p, "recover_s": p["recover_s"] * s, "load_s": p["load_s"] * s}


def _scale_ecc(p: Mapping[str, Any], s: float) -> dict[str, Any]:
    out = {**p, "load_s": p["load_s"] * s}
    if p.get("reset_s") is not None:
        out["reset_s"] = p["reset_s"] * s
    return out


def _scale_cooling(p: Mapping[str, Any], s: float) -> dict[str, Any]:
    # Strength scales the loss of cooling: 1 + (r_factor - 1) * s (0 = healthy cooling).
    return {**p, "r_factor": max(1.0, 1.0 + (p["r_factor"] - 1.0) * s)}


_REAL_ENGINE = ("on the real vLLM engine it is refused: no honest mechanism makes a real GPU {what}, and on a CPU "
                "host there is no GPU at all")

GPU_XID = FaultSpec(
    id="gpu-xid",
    layer="gpu",
    targets="replicas",
    params=(
        # A GPU off the bus rarely comes back with a reset; usually the node is drained and rebooted (minutes).
        Param("recover_s", 120.0, " s", "time from the Xid until the GPU is back on the bus (GPU reset or node "
                                        "reboot by the node's health agent)", minimum=0.0, maximum=86400.0),
        Param("load_s", 30.0, " s", "model load of the restarted replica once its GPU is back", minimum=0.1,
              maximum=3600.0),
        Param("cordon", 0, "", "1: the node is cordoned and the replica stays down for the rest of the case "
                               "(live: until the undo)", kind=int, minimum=0, maximum=1),
    ),
    description="the target's GPU falls off the bus (Xid 79): the node's kernel logs 'NVRM: Xid (PCI:...): 79, ... "
                "GPU has fallen off the bus.', the engine's next CUDA call fails and vLLM's EngineCore dies "
                "(EngineDeadError), its in-flight requests fail (502 at the proxy) and the Serve controller stops "
                "routing to it; DCGM keeps reporting the last Xid (DCGM_FI_DEV_XID_ERRORS = 79) but every sampled "
                "GPU field (utilisation, power, clocks, temperatures, memory) and Ray's GPU gauge vanish while the "
                "GPU is off the bus; the replica serves again after recover_s + load_s, or never within the case "
                "when its node is cordoned. NVIDIA Xid catalogue (Xid 79)",
    live="the emulated engine's /control/gpu-fault (xid 79): its GPU reports Xid 79 and nothing else, the node log "
         "gets the Xid line, the engine logs the CUDA error and EngineDeadError and exits; the supervisor restarts "
         "it after recover_s + load_s (cordon: on the undo). " + _REAL_ENGINE.format(what="fall off the bus"),
    kubernetes="NVIDIA Dynamo's fault-injection service: a privileged DaemonSet agent on the target's node writes "
               "the Xid 79 line into the host's /dev/kmsg (nsenter) and a CUDA shim (LD_PRELOAD) makes the engine's "
               "CUDA calls fail (CUDA_ERROR_NO_DEVICE); the node's GPU health monitor (NVSentinel / the GPU "
               "operator's health checks) sees the Xid, cordons the node and evicts the pod (2-5 min), which is "
               "rescheduled on a healthy node",
    indicator="xid_errors",
    effect=_lost,
    causes=("gpu_lost",),
    apply=_apply_lost,
    scale=_scale_lost,
    onset_lag_s=(2.0, 6.0),  # the node agent's Job/exec has to start before it writes the Xid
    end_lag_s=(2.0, 6.0),
)

GPU_ECC = FaultSpec(
    id="gpu-ecc",
    layer="gpu",
    targets="replicas",
    params=(
        Param("xid", 94, "", "48: double-bit error (DBE; the GPU needs a reset), 94: contained uncorrectable ECC "
                             "error (only the process using the memory dies)", kind=int, minimum=48, maximum=94),
        Param("reset_s", None, " s", "time from the error until the GPU is reset and usable again (default: 60 s "
                                     "for Xid 48, 0 for 94: no reset)", optional=True, minimum=0.0, maximum=86400.0),
        Param("load_s", 30.0, " s", "model load of the restarted replica", minimum=0.1, maximum=3600.0),
    ),
    description="an uncorrectable ECC error in the target GPU's memory: the node's kernel logs the Xid (94: "
                "'Contained: ...', 48: 'An uncorrectable double bit error (DBE) ...'), the engine's CUDA call fails "
                "('CUDA error: uncorrectable ECC error encountered') and vLLM dies (EngineDeadError), in-flight "
                "requests fail and the proxy routes around the replica; DCGM's XID_ERRORS shows the Xid, "
                "ECC_DBE_VOL_TOTAL counts the error and ROW_REMAP_PENDING goes to 1 (the row is remapped at the "
                "next GPU reset). Xid 94 is contained: the GPU stays usable and the replica restarts after load_s; "
                "Xid 48 needs a GPU reset first (reset_s): the reset clears the volatile ECC count and performs the "
                "remap (UNCORRECTABLE_REMAPPED_ROWS +1, pending 0). NVIDIA Xid catalogue, A100 memory error "
                "management",
    live="the emulated engine's /control/gpu-fault (xid 48 or 94): its GPU reports the Xid and the ECC and "
         "row-remap counters, the node log gets the Xid line, the engine logs the CUDA ECC error and "
         "EngineDeadError and exits; the supervisor restarts it after reset_s + load_s. "
         + _REAL_ENGINE.format(what="produce an ECC error"),
    kubernetes="NVIDIA Dynamo's fault-injection service: a privileged DaemonSet agent writes the Xid 48/94 line into "
               "the node's /dev/kmsg and a CUDA shim makes the engine's CUDA calls fail with "
               "CUDA_ERROR_ECC_UNCORRECTABLE; the GPU health monitor (NVSentinel) sees it: for 94 the pod restarts on "
               "the same GPU, for 48 the node is cordoned, drained and the GPU reset (its driver restarted) before "
               "pods return",
    indicator="ecc_dbe_vol_total",
    effect=_ecc,
    causes=("gpu_ecc",),
    apply=_apply_ecc,
    scale=_scale_ecc,
    onset_lag_s=(2.0, 6.0),
    end_lag_s=(2.0, 6.0),
)

GPU_THERMAL = FaultSpec(
    id="gpu-thermal",
    layer="gpu",
    targets="replicas",
    params=(
        # x4: much of the heat sink's airflow gone (a failed fan; our estimate). Heating is bounded by the GPU's heat
        # capacity (thermal_tau_s / thermal_r): an A100 at ~210 W reaches its thermal target ~2 min after the fan
        # stops, so a case needs a fault longer than that to show the throttling (the temperature climbs at once).
        Param("r_factor", 4.0, "x", "thermal resistance from the GPU to the air, as a multiple of the healthy one "
                                    "(1 = healthy; a failed fan or a blocked intake)", minimum=1.0, maximum=50.0),
        Param("ramp_s", 0.0, " s", "time over which the resistance rises to r_factor (0: a fan that stops; longer: "
                                   "an intake clogging)", minimum=0.0, maximum=86400.0),
    ),
    description="the target GPU's cooling degrades (its thermal resistance to the air x r_factor, so its thermal "
                "time constant grows too): under the same load its temperature climbs towards a far higher steady "
                "state; once it reaches the GPU's thermal target (3 C below its slowdown temperature) the driver's "
                "software thermal control lowers the SM clock so that the GPU holds that temperature "
                "(clocks-event reason SW thermal slowdown 0x20, DCGM_FI_DEV_THERMAL_VIOLATION counts), power falls, "
                "inter-token latency and prefill time rise on that replica; if even the lowest clock cannot hold it "
                "the slowdown temperature is passed and hardware slowdown (0x40) halves the clock. When the cooling "
                "is restored the GPU cools and its clocks come back. NVIDIA NVML clock event reasons",
    live="the emulated engine's /control/cooling: its GPU model takes the thermal resistance factor (with an expiry, "
         "undone on schedule, undo or the supervisor's stop) and heats and clocks down by itself; on a real GPU "
         "refused: nvidia-smi can lock or cap clocks but cannot make a GPU hot, and a clock lock is not thermal "
         "throttling (it would show no temperature rise and no thermal reason bit)",
    kubernetes="a node action on the target's node: stop or slow the chassis fans through the BMC (ipmitool raw fan "
               "control / Redfish) from a privileged Job, restored after; no Chaos Mesh kind acts on cooling",
    indicator="gpu_temp",
    effect=_cooling,
    causes=("gpu_cooling",),
    apply=_apply_cooling,
    scale=_scale_cooling,
    onset_lag_s=(2.0, 6.0),
    end_lag_s=(2.0, 6.0),
)

GPU_FAULTS = (GPU_XID, GPU_ECC, GPU_THERMAL)
