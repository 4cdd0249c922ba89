"""Evaluation: the grid runner (methods × cases in worker processes), its result store, and AC@k/Avg@k."""

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
