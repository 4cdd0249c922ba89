"""Rank one case with one method in this process (what `llmrca rank` does)."""

from __future__ import annotations

import time
from pathlib import Path

from llmrca.io import load_case
from llmrca.methods import Ranking, entry, get_method
from llmrca.methods.params import checked_params


def rank_case(path: str | Path, method: str, *, seed: int = 0, **params: object) -> tuple[Ranking, float]:
    """Load the case, hand the method only its observation (never the ground truth), time rank().

    ``method``: a name or a plug-in's ``module:Class``; ``params`` are checked as ``evaluate`` checks them."""
    name = entry(method).name
    m = get_method(name, **checked_params({name: params}, [name]).get(name, {}))
    obs = load_case(path).observation
    t0 = time.perf_counter()
    ranking = m.rank(obs, seed=seed)
    return ranking, time.perf_counter() - t0
