"""Accuracy scores of RCA rankings, as RCAEval defines them, and the chance baseline.

AC@k  = share of cases whose true root cause is among the top k candidates. A multi-fault case has several roots:
        ``rank`` is the best root's ("any root in top k"), ``rank_all`` the worst's ("all roots in top k");
        for a single-fault case both are the root's rank, so both read as the usual AC@k.
Avg@k = mean of AC@1 .. AC@k.

A case's rank is 1-based; a missing rank (None, NaN, pd.NA: the truth was absent from the ranking, or the
method failed) is a miss at every k. Normal cases (no root cause) have no rank to score: callers leave them
out.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

import numpy as np
import pandas as pd

from llmrca.case import GroundTruth, Observation
from llmrca.methods.base import Ranking


def _ranks_array(ranks: Iterable[object]) -> np.ndarray:
    """Ranks as floats with misses as +inf, so ``r <= k`` is the hit test."""
    out = []
    for r in ranks:
        if r is None or r is pd.NA or (isinstance(r, float) and np.isnan(r)):
            out.append(np.inf)
        else:
            out.append(float(r))
    return np.asarray(out, dtype=float)


def _check_k(k: int) -> None:
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")


def ac_at_k(ranks: Iterable[object], k: int) -> float:
    """Share of cases whose rank is at most ``k``; NaN for no case."""
    _check_k(k)
    r = _ranks_array(ranks)
    return float(np.mean(r <= k)) if len(r) else float("nan")


def avg_at_k(ranks: Iterable[object], k: int) -> float:
    """Mean of AC@1 .. AC@k; NaN for no case."""
    _check_k(k)
    r = _ranks_array(ranks)
    if not len(r):
        return float("nan")
    return float(np.mean([np.mean(r <= j) for j in range(1, k + 1)]))


def chance_ac_at_k(n_candidates: Iterable[object], k: int) -> float:
    """AC@k of a ranking drawn uniformly at random: per case min(k, n)/n, averaged over cases.

    ``n`` is the number of candidate services of each case; cases with an unknown or zero ``n`` are skipped.
    """
    _check_k(k)
    n = _ranks_array(n_candidates)
    n = n[np.isfinite(n) & (n > 0)]
    return float(np.mean(np.minimum(k, n) / n)) if len(n) else float("nan")


def chance_avg_at_k(n_candidates: Iterable[object], k: int) -> float:
    """Avg@k of a uniformly random ranking (mean of the chance AC@1 .. AC@k)."""
    _check_k(k)
    n = list(n_candidates)
    return float(np.mean([chance_ac_at_k(n, j) for j in range(1, k + 1)]))


@dataclass(frozen=True)
class TruthRanks:
    """Where the truth landed in one ranking.

    ``rank``: 1-based service-level rank of the true service (None when absent or the case is normal).
    ``fine_level``: whether the case can be scored at fine-grained level for this ranking, i.e. the true
    indicator is known and the ranking ranks indicators (metric columns of the observation).
    ``rank_fine``: 1-based rank of the true indicator among the candidates when ``fine_level``; None otherwise
    or when absent.
    """

    rank: int | None
    rank_fine: int | None
    fine_level: bool
    rank_all: int | None = None  # multi-fault: the rank by which every root is in (worst root); = rank when one


def _root_ranks(ranking: Ranking, truth: GroundTruth) -> tuple[int | None, int | None]:
    """(any, all): the best root's rank and the worst root's (None if some root is absent). A single-fault case
    has one root, so both are its rank; ``rank <= k`` is then "any root in top k", ``rank_all <= k`` "all"."""
    ranks = [ranking.rank_of(s) for s in truth.roots]
    found = [r for r in ranks if r is not None]
    best = min(found) if found else None
    worst = max(ranks) if ranks and all(r is not None for r in ranks) else None
    return best, worst


def truth_ranks(ranking: Ranking, truth: GroundTruth, obs: Observation) -> TruthRanks:
    return rank_of_truth(ranking, truth, set(obs.metric_columns))


def rank_of_truth(ranking: Ranking, truth: GroundTruth, columns: AbstractSet[str]) -> TruthRanks:
    """``truth_ranks`` given the observation's metric column names only (all the grid's runner keeps)."""
    rank, rank_all = _root_ranks(ranking, truth)
    fine = truth.indicator is not None and any(c in columns for c in ranking.candidates)
    rank_fine = ranking.rank_of(truth.indicator, level="fine") if fine else None
    return TruthRanks(rank, rank_fine, fine, rank_all)
