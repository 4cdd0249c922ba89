"""llmrca: test root cause analysis methods on GPU-driven LLM inference deployments.

The public API (everything else is internal and may change)::

    import llmrca
    case = llmrca.simulate(fault=llmrca.Injection("cpu", "ray-head"), seed=0)   # or llmrca.load_case("path")
    ranking = llmrca.get_method("baro").rank(case.observation, seed=0)
    rows = llmrca.evaluate(llmrca.find_cases("suites/paper"), ["baro", "nsigma"], "results")

Names are imported when first used, so ``import llmrca`` stays light (no numpy/pandas until needed).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it
_API = {
    "Case": "llmrca.case.model",
    "Ranking": "llmrca.methods.base",
    "Injection": "llmrca.faults",
    "DeployConfig": "llmrca.deploy",
    "load_case": "llmrca.io",
    "save_case": "llmrca.io",
    "find_cases": "llmrca.io",
    "simulate": "llmrca.sim.run",
    "generate_suite": "llmrca.sim.suites",
    "get_method": "llmrca.methods.registry",
    "method_names": "llmrca.methods.registry",
    "evaluate": "llmrca.evaluate",
    "LlmrcaError": "llmrca.errors",
    "CaseError": "llmrca.errors",
    "FormatError": "llmrca.errors",
    "UnknownNameError": "llmrca.errors",
    "MethodError": "llmrca.errors",
    "NoAnswer": "llmrca.errors",
}
_RENAMED = {"method_names": "names"}

__all__ = ["__version__", *_API.keys()]  # noqa: PLE0604 - the keys are the names above


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'llmrca' has no attribute {name!r}")
    value = getattr(import_module(_API[name]), _RENAMED.get(name, name))
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
