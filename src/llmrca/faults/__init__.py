"""The fault catalogue: one declarative spec per fault type (docs/faults.md), shared by the simulator and the live
testbed. ``get(id)`` and ``specs()`` read it; ``rows()`` is what ``llmrca faults`` lists."""

from __future__ import annotations

from llmrca.errors import UnknownNameError
from llmrca.faults.catalog import EXTRA_FAULTS, PAPER_FAULTS, STUDY_POWER_FRACTION, study_cap_w
from llmrca.faults.gpu_faults import GPU_FAULTS
from llmrca.faults.replica_faults import REPLICA_FAULTS
from llmrca.faults.spec import (
    CAUSES,
    TARGET_RULES,
    FaultParamError,
    FaultSpec,
    Injection,
    Param,
    Perturbation,
    TargetFacts,
    recorded,
)
from llmrca.faults.traffic_faults import TRAFFIC_FAULTS

_SPECS: dict[str, FaultSpec] = {}


def register(spec: FaultSpec) -> None:
    if spec.targets not in TARGET_RULES:
        raise UnknownNameError(f"fault {spec.id!r}: unknown targets rule {spec.targets!r}")
    unknown = [c for c in spec.causes if c not in CAUSES] or ([] if spec.causes else ["(none declared)"])
    if unknown:
        raise UnknownNameError(f"fault {spec.id!r}: unknown cause(s) {', '.join(unknown)}; known: {', '.join(CAUSES)}")
    _SPECS[spec.id] = spec


for _s in (*PAPER_FAULTS, *EXTRA_FAULTS, *GPU_FAULTS, *REPLICA_FAULTS, *TRAFFIC_FAULTS):
    register(_s)


def get(fault_id: str) -> FaultSpec:
    try:
        return _SPECS[fault_id]
    except KeyError:
        raise UnknownNameError(f"unknown fault {fault_id!r}; known: {', '.join(_SPECS)}") from None


def specs() -> list[FaultSpec]:
    return list(_SPECS.values())


def ids() -> list[str]:
    return list(_SPECS)


def rows() -> list[tuple[str, str, str, str]]:
    """(id, layer, parameters with defaults, description) per fault, for ``llmrca faults``."""
    return [(s.id, s.layer, s.param_text(), s.description) for s in _SPECS.values()]


def kind_of(fault_type: str | None) -> str:
    """The kind of a case's fault type: ``normal``/``unknown`` as they are, a registered fault's ``fault_kind``,
    and any other name (a fault of an imported data set) as itself."""
    if not fault_type:
        return "normal"
    spec = _SPECS.get(fault_type)
    return spec.fault_kind if spec is not None else fault_type


__all__ = [
    "CAUSES",
    "STUDY_POWER_FRACTION",
    "TARGET_RULES",
    "TRAFFIC_FAULTS",
    "FaultParamError",
    "FaultSpec",
    "Injection",
    "Param",
    "Perturbation",
    "TargetFacts",
    "get",
    "ids",
    "kind_of",
    "recorded",
    "register",
    "rows",
    "specs",
    "study_cap_w",
]
