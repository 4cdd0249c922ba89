"""The ground truth of a case collected from a user's own Prometheus (``testbed collect --prometheus``).

The testbed's own cases take their truth from its injection log; a user's cluster has none, so the user says
what was done: the fault type (one of ``llmrca faults``), the root-cause service and when the fault began (the
case's ``inject_time``, which most methods need). Every check here names the option at fault.
"""

from __future__ import annotations

import math

from llmrca.case import GroundTruth
from llmrca.errors import LlmrcaError


def user_truth(*, inject_time: float | None, fault: str | None, target: str | None, fault_end: float | None,
               start: float, end: float) -> tuple[float | None, GroundTruth | None]:
    """(inject_time, ground truth or None) from the options; errors for a half-given truth or a time outside
    the window [start, end]."""
    if (fault is None) != (target is None):
        raise LlmrcaError("--fault and --target go together: the ground truth is a fault type on a service")
    if fault is not None and inject_time is None:
        raise LlmrcaError("--fault needs --inject-time: when the fault began (unix s, ISO time or an age like 3m)")
    if fault_end is not None and fault is None:
        raise LlmrcaError("--fault-end needs --fault and --target")
    if inject_time is not None and not (math.isfinite(inject_time) and start < inject_time <= end):
        raise LlmrcaError(f"--inject-time {inject_time:.0f} is not inside the window ({start:.0f}, {end:.0f}]: "
                          "the case needs rows before and after the onset")
    if fault_end is not None and not fault_end > inject_time:  # type: ignore[operator]
        raise LlmrcaError(f"--fault-end {fault_end:.0f} is not after --inject-time {inject_time:.0f}")
    if fault is None:
        return inject_time, None
    from llmrca.faults import get

    spec = get(fault)  # an unknown name: UnknownNameError listing the catalogue
    return inject_time, GroundTruth(service=target, fault_type=spec.id, start=inject_time, end=fault_end)
