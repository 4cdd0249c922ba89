"""Checks of fault parameters that need the deployment: what the registry cannot know about a fault on its own.

Kept in one function so that a scenario, a suite and the live testbed ask the same question in the same words
(and so that it can move next to the fault registry's own checks without its callers changing).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llmrca.deploy.config import DeployConfig, path_of
from llmrca.sim.hardware import GIB


def deployment_problems(fault: str, params: Mapping[str, Any], deploy: DeployConfig) -> list[str]:
    """Why ``params`` of ``fault`` (as the registry resolved them) cannot be applied to ``deploy``, one message
    per problem naming the scenario key (``faults.<fault>.<param>``); empty when they can.

    - a GPU power cap in watts must be one the GPU accepts (``nvidia-smi -pl`` refuses anything outside
      ``min_power_w .. tdp_w``); a cap given as a fraction or a depth is checked by the fault registry
      (``FaultSpec.applied``) when the case is made, since a depth needs the target's draw;
    - a memory hog cannot be larger than the pod's memory limit (the pod would be OOM-killed before the hog holds
      its size, so the case would not be the fault it claims).
    """
    out: list[str] = []
    watts = params.get("power_limit_w")
    if fault == "gpu" and watts is not None and params.get("power_limit_frac") is None:
        g = deploy.gpu_kind
        if not (g.min_power_w <= float(watts) <= g.tdp_w):
            out.append(f"faults.gpu.power_limit_w = {float(watts):g} W is outside what an {g.name} accepts "
                       f"({g.min_power_w:g}-{g.tdp_w:g} W)")
    size = params.get("size_gb")
    if fault == "memory" and size is not None:
        limit = deploy.pod_memory_gib * GIB
        if float(size) * 1e9 > limit:
            out.append(f"faults.memory.size_gb = {float(size):g} GB is more than the pod's memory limit "
                       f"({path_of('pod_memory_gib')} = {deploy.pod_memory_gib:g} GiB = {limit / 1e9:.1f} GB)")
    return out
