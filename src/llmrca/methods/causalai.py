"""CausalAI root-cause detection (after Salesforce CausalAI's tabular root-cause detector).

The fault is treated as an intervention: a regime indicator F (0 before the injection, 1 from it on) joins the
metric columns, and the PC algorithm runs over normal and abnormal rows together. F has no causes, so the
variables that stay adjacent to F after the skeleton search are its children — the metrics the intervention
changed directly, i.e. the root causes. Descendants of a root cause become independent of F given it and are
separated.

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

import numpy as np
from scipy.special import log_ndtr

from llmrca.case import Observation
from llmrca.errors import MethodError, NoAnswer
from llmrca.methods.base import BaseMethod, Ranking
from llmrca.methods.causal_graphs import pc_graph, usable_columns
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
        names = [*u.names, REGIME]
        G = pc_graph(data, names, alpha=float(p["alpha"]), max_cond=p["max_cond"], seed=seed,
                     timeout_s=p["timeout_s"])
        children = set(G.predecessors(REGIME)) | set(G.successors(REGIME))
        n = len(regime)
        marginal = fisherz_log10p(np.corrcoef(data.T)[-1, :-1], n)
        scores: dict[str, float] = {}
        for j, c in enumerate(u.names):
            if c in children:
                edge = G.edges[REGIME, c] if G.has_edge(REGIME, c) else G.edges[c, REGIME]
                scores[c] = tiered_score(2, float(edge.get("log10_pvalue", marginal[j])))
            else:
                scores[c] = tiered_score(1, float(marginal[j]))
        return Ranking.from_scores(w.columns, [scores.get(c, 0.0) for c in w.columns])
