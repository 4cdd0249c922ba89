"""The fast simulator of an LLM serving deployment (the reference study's by default).

``simulate(config, fault, seed)`` gives a native ``Case``; ``generate_suite`` writes suites of them. See
docs/simulator.md for the model, its parameters, the metric views and the calibration. (``llmrca.sim.run`` is the
module holding ``run``/``simulate``; the package exports ``simulate`` only, so the two names never clash.)
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SimConfig": "llmrca.sim.config",
    "Injection": "llmrca.faults",
    "simulate": "llmrca.sim.run",
    "select_view": "llmrca.sim.views",
    "generate_suite": "llmrca.sim.suites",
    "suites": "llmrca.sim.suites",
    "get_suite": "llmrca.sim.suites",
}

__all__ = ["Injection", "SimConfig", "generate_suite", "get_suite", "select_view", "simulate", "suites"]


def __getattr__(name: str) -> Any:  # lazy, so `import llmrca.sim.traces` stays light for its own users
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'llmrca.sim' has no attribute {name!r}")
