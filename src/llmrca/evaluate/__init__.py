"""Evaluation: the grid runner (methods × cases in worker processes), its result store, and AC@k/Avg@k."""

import sys as _sys
from typing import Any as _Any

from llmrca.evaluate.runner import default_memory_limit_mb, evaluate
from llmrca.evaluate.scores import (
    TruthRanks,
    ac_at_k,
    avg_at_k,
    chance_ac_at_k,
    chance_avg_at_k,
    truth_ranks,
)
from llmrca.evaluate.store import COLUMNS, KEY, ResultStore, load_results

__all__ = [
    "COLUMNS",
    "KEY",
    "ResultStore",
    "TruthRanks",
    "ac_at_k",
    "avg_at_k",
    "chance_ac_at_k",
    "chance_avg_at_k",
    "default_memory_limit_mb",
    "evaluate",
    "load_results",
    "truth_ranks",
]


# `llmrca.evaluate` is both this package and the public function (llmrca/__init__.py). Importing any submodule
# (`llmrca.evaluate.store`) binds the package to that name on `llmrca`, hiding the function; a package that can
# be called as the function keeps `llmrca.evaluate(cases, methods, out)` working either way.
class _CallablePackage(_sys.modules[__name__].__class__):
    def __call__(self, *args: _Any, **kwargs: _Any) -> _Any:
        return evaluate(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallablePackage
