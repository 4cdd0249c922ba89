"""Rank one case with one method in this process (what `llmrca rank` does)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from llmrca.io import load_case
from llmrca.io.system import SystemInfo, apply_system
from llmrca.methods import Ranking, entry, get_method
from llmrca.methods.params import checked_params


@dataclass(frozen=True)
class RankResult:
    ranking: Ranking
    seconds: float  # time of rank() alone
    view: str  # the view the method saw: the one asked for, or "all" for foreign data (case.views)


def rank_in_view(path: str | Path, method: str, *, seed: int = 0, view: str = "all",
                 system: SystemInfo | None = None, **params: object) -> RankResult:
    """Load the case, hand the method only its observation (never the ground truth) in ``view`` (see
    ``llmrca.case.views.effective_view``: a case of foreign data is given whole), time rank().

    ``method``: a name or a plug-in's ``module:Class``; ``params`` are checked as ``evaluate`` checks them.
    ``system``: the user's SLI column and call graph (``llmrca.io.system``), applied to the case's topology."""
    from llmrca.case.views import effective_view, select_view

    name = entry(method).name
    m = get_method(name, **checked_params({name: params}, [name]).get(name, {}))
    case = load_case(path)
    v = effective_view(case, view)
    case = apply_system(select_view(case, v, where=str(path)) if v != "all" else case, system, where=str(path))
    obs = case.observation
    t0 = time.perf_counter()
    ranking = m.rank(obs, seed=seed)
    return RankResult(ranking, time.perf_counter() - t0, v)


def rank_case(path: str | Path, method: str, *, seed: int = 0, view: str = "all",
              **params: object) -> tuple[Ranking, float]:
    """``rank_in_view`` as (ranking, seconds)."""
    r = rank_in_view(path, method, seed=seed, view=view, **params)
    return r.ranking, r.seconds
