"""CausalAI root-cause detection (after Salesforce CausalAI's tabular root-cause detector).

The fault is treated as an intervention: a regime indicator F (0 before the injection, 1 from it on) joins the
metric columns, and the PC algorithm runs over normal and abnormal rows together. F has no causes, so the
variables that stay adjacent to F after the skeleton search are its children — the metrics the intervention
changed directly, i.e. the root causes. Descendants of a root cause become independent of F given it and are
separated.

Only F's neighbours are asked for, so the search is local to F (``local_neighbours``; CausalAI's library has a
single-target PC, ``PCSingle``, for that purpose): PC's skeleton phase restricted to the edges F–X, removals at
once as in the original PC (not PC-stable: that separates the root's near-copies from F together),
conditioning sets drawn from F's remaining neighbours, |S| = 0, 1, … ``max_cond``, every test a Fisher-z test on
one correlation matrix (partial correlations of a whole depth solved as one batch of small inverses). Full PC
would also try sets from X's own neighbours; under faithfulness both keep exactly F's children, and the graph
among the other columns, which the ranking never uses, is not learned: 16 s → 0.1 s at 200 columns,
``python benchmarks/scale.py --methods causalai``. (Deviation from running the whole PC, documented in
docs/methods.md.)

Ranking (every column once):
1. F's neighbours, strongest first by the weakest evidence PC saw for the edge (the largest Fisher-z p-value
   over the tests run on F–X, compared in log space so tiny p-values do not tie);
2. the other columns by their marginal dependence on F (Fisher-z of the unconditional correlation with F): the
   documented secondary score — descendants of the root that moved with the fault come before unaffected series;
3. constant / non-finite columns (not testable) with score 0, by name.
Scores are ``tier + e / (1 + e)`` with e = −log10 p, so they order as described.
"""

from __future__ import annotations

import math
import time
from itertools import combinations, islice

import numpy as np
from scipy.special import log_ndtr

from llmrca.case import Observation
from llmrca.errors import MethodError, NoAnswer
from llmrca.methods.base import BaseMethod, Ranking
from llmrca.methods.causal_graphs import usable_columns
from llmrca.methods.window import DEFAULT_WINDOW, metric_window

REGIME = "__regime__"  # the indicator's node name; cannot clash with '<service>_<metric>' columns


def fisherz_log10p(r: np.ndarray, n: int, n_cond: int = 0) -> np.ndarray:
    """log10 of the two-sided Fisher-z p-value of correlation(s) ``r`` on ``n`` rows, exact in the far tail."""
    r = np.clip(np.asarray(r, dtype=float), -1 + 1e-15, 1 - 1e-15)
    stat = math.sqrt(max(n - n_cond - 3, 1)) * np.abs(np.arctanh(r))
    return (math.log(2.0) + log_ndtr(-stat)) / math.log(10.0)


def tiered_score(tier: int, log10p: float) -> float:
    e = max(0.0, -float(log10p))
    return tier + e / (1.0 + e)


def _partial_corr_batch(C: np.ndarray, f: int, x: int, sets: np.ndarray) -> np.ndarray:
    """Partial correlations of columns f and x given each row of ``sets`` (m × d indices), from the correlation
    matrix C: −P[0, 1] / sqrt(P[0, 0] P[1, 1]) with P the inverse of C over (f, x, *S), as causal-learn's
    Fisher-z test computes it (pseudo-inverse where a set is collinear)."""
    m = len(sets)
    idx = np.column_stack([np.full(m, f), np.full(m, x), sets])
    sub = C[idx[:, :, None], idx[:, None, :]]
    try:
        P = np.linalg.inv(sub)
    except np.linalg.LinAlgError:
        P = np.linalg.pinv(sub)
    return -P[:, 0, 1] / np.sqrt(np.abs(P[:, 0, 0] * P[:, 1, 1]))


def local_neighbours(C: np.ndarray, n: int, f: int, *, alpha: float, max_cond: int | None,
                     deadline: float | None = None, batch: int = 50_000) -> dict[int, float]:
    """F's neighbours after PC's skeleton search restricted to the edges F–X (see the module docstring):
    {column: the largest log10 Fisher-z p-value of its tests with F}. ``C``: correlation matrix of the data with
    F as column ``f``; ``n`` rows. A set of tests separates X from F when its p-value exceeds ``alpha``; F's
    neighbours are visited in column order and an edge is removed as soon as it is separated, as in the original
    PC (Spirtes & Glymour), so of two near-copies of one signal the second is tested without the first and stays
    (PC-stable, which removes after the whole depth, separates both from F). Past ``deadline``
    (``time.monotonic``) raises TimeoutError."""
    log_alpha = math.log10(alpha)
    cand = [x for x in range(C.shape[0]) if x != f]
    logp0 = fisherz_log10p(C[f, cand], n, 0)
    best = {x: float(lp) for x, lp in zip(cand, logp0, strict=True)}
    adj = [x for x in cand if best[x] <= log_alpha]
    depth = 1
    while len(adj) - 1 >= depth and (max_cond is None or depth <= int(max_cond)):
        for x in list(adj):
            others = [o for o in adj if o != x]
            it = combinations(others, depth)
            while True:
                chunk = np.array(list(islice(it, batch)), dtype=np.intp).reshape(-1, depth)
                if not len(chunk):
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError
                lp = float(fisherz_log10p(_partial_corr_batch(C, f, x, chunk), n, depth).max())
                best[x] = max(best[x], lp)
                if lp > log_alpha:
                    adj.remove(x)  # at once, as the original PC: later X draw their sets from what is left
                    break
        depth += 1
    return {x: best[x] for x in adj}


class CausalAI(BaseMethod):
    """PC with a regime indicator; F's neighbours are the root causes, ranked by p-value.

    Parameters: ``window`` (samples each side, 60); ``alpha`` (Fisher-z level, 0.05); ``max_cond`` (largest
    conditioning set of the PC search — bounds cost; None = unbounded as in the original); ``timeout_s``
    (discovery budget; past it MethodError).
    """

    name = "causalai"

    @classmethod
    def default_params(cls) -> dict[str, object]:
        return {"window": DEFAULT_WINDOW, "alpha": 0.05, "max_cond": 3, "timeout_s": 120.0}

    def rank(self, obs: Observation, *, seed: int = 0) -> Ranking:
        p = self.params
        w = metric_window(obs, window=p["window"])
        regime = (np.arange(len(w.times)) >= w.split).astype(float)
        u = usable_columns(w.values, w.columns)
        if u.nothing_moves():
            raise NoAnswer("causalai: every metric column with data is constant in the window")
        if not u.names:
            raise MethodError("causalai: every metric column is non-finite in the window")
        data = np.column_stack([u.data, regime])
        n, k = data.shape
        if not 0 < float(p["alpha"]) < 1:
            raise MethodError(f"causalai: alpha must be in (0, 1), got {p['alpha']}")
        if p["max_cond"] is not None and int(p["max_cond"]) < 0:
            raise MethodError(f"causalai: max_cond must be >= 0 or None, got {p['max_cond']}")
        depth = k - 2 if p["max_cond"] is None else min(int(p["max_cond"]), k - 2)
        if n < depth + 4:  # as the full PC's Fisher-z test asked: n - |S| - 3 >= 1 at the deepest level
            raise MethodError(f"causalai (PC, Fisher-z) needs at least {depth + 4} rows in the window, got {n}")
        C = np.corrcoef(data.T)
        deadline = None if p["timeout_s"] is None else time.monotonic() + float(p["timeout_s"])
        try:
            children = local_neighbours(C, n, k - 1, alpha=float(p["alpha"]), max_cond=p["max_cond"],
                                        deadline=deadline)
        except TimeoutError:
            raise MethodError(f"causalai exceeded its time budget of {p['timeout_s']:g} s on {k - 1} columns") \
                from None
        marginal = fisherz_log10p(C[-1, :-1], n)
        scores: dict[str, float] = {}
        for j, c in enumerate(u.names):
            if j in children:
                scores[c] = tiered_score(2, children[j])
            else:
                scores[c] = tiered_score(1, float(marginal[j]))
        return Ranking.from_scores(w.columns, [scores.get(c, 0.0) for c in w.columns])
