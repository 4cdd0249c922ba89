"""MicroCause (Meng et al., "Localizing Failure Root Causes in a Microservice through Causality Inference",
IWQoS'20).

1. Causal graph: PCMCI (tigramite, ParCorr) over the window's metrics — a time-lagged causal graph, edges from
   a series' past to another's present (``causal_graphs.pcmci_graph``).
2. Anomaly score per metric: the paper detects anomalies with SPOT; here the injection time is known, so the
   score is the largest robust z-score of the abnormal rows against the normal ones (|x − median| / (1.4826 MAD)),
   scaled to [0, 1] by the largest over metrics.
3. TCORW (temporal cause oriented random walk): a walk from the SLI over the causal graph where the weight of
   moving to a node is its *partial* correlation with the SLI given the node's own parents in the graph (the
   "cause-oriented" part: a node that only relays its parents' change earns little), with damped backward moves
   (``rho``) and self moves, as in ``graph_heads.random_walk_head``.
4. Root-cause score = ``lam`` * (visit frequency / largest visit frequency) + (1 − ``lam``) * anomaly score.
   The paper combines the walk's result with the anomaly degree; ``lam`` is our documented weighting.

Columns outside the graph (constant / non-finite in the window) score 0 and come last, by name.
"""

from __future__ import annotations

import numpy as np

from llmrca.case import Observation
from llmrca.errors import MethodError
from llmrca.methods.base import BaseMethod, Ranking
from llmrca.methods.causal_graphs import pcmci_graph
from llmrca.methods.graph_heads import random_walk_head, require_sli_node
from llmrca.methods.graph_rank import full_ranking, window_with_sli
from llmrca.methods.params import check_int
from llmrca.methods.window import DEFAULT_WINDOW

# Why wider cases are refused: PCMCI's MCI step tests every link i(t-tau) -> j(t), k^2 * tau_max tests one at a
# time (168,000 at 200 columns; 2 million at 1,000), in causal_graphs._budgeted_parcorr. Measured with
# `python benchmarks/scale.py --methods microcause` (2026-12-07, loaded 2-core VM): 9-23 s at 200 columns, past 120 s
# at 1,000; ~k^2 growth: 300 series is what fits a 60 s budget on 2 cores.
MAX_COLUMNS_NOTE = "PCMCI tests every lagged pair, ~k^2 tests: 300 series fit ~60 s on 2 cores"


def robust_anomaly_scores(pre: np.ndarray, post: np.ndarray) -> np.ndarray:
    """Largest |post − median(pre)| / (1.4826 MAD(pre)) per column; a zero MAD falls back to pre's std, then 1."""
    med = np.median(pre, axis=0)
    mad = 1.4826 * np.median(np.abs(pre - med), axis=0)
    sd = pre.std(axis=0)
    scale = np.where(mad > 0, mad, np.where(sd > 0, sd, 1.0))
    return np.max(np.abs(post - med) / scale, axis=0) if len(post) else np.zeros(pre.shape[1])


def partial_corr_with(data: np.ndarray, i: int, target: int, cond: list[int]) -> float:
    """|partial correlation| of columns i and target given columns ``cond`` (OLS residuals)."""
    x, y = data[:, i], data[:, target]
    if cond:
        Z = np.column_stack([np.ones(len(data)), data[:, cond]])
        x = x - Z @ np.linalg.lstsq(Z, x, rcond=None)[0]
        y = y - Z @ np.linalg.lstsq(Z, y, rcond=None)[0]
    x = x - x.mean()
    y = y - y.mean()
    den = float(np.sqrt((x @ x) * (y @ y)))
    return abs(float(x @ y)) / den if den > 1e-12 else 0.0


class MicroCause(BaseMethod):
    """PCMCI causal graph + TCORW random walk from the SLI with partial-correlation weights and anomaly scores.

    Parameters: ``window`` (60 samples each side); ``tau_min``/``tau_max`` (lags of PCMCI, 1..2), ``pc_alpha``
    (PC1 condition-selection level), ``alpha_level`` (MCI significance), ``max_conds_dim`` (largest PC1
    conditioning set — bounds cost); ``steps``, ``rho`` (walk length and backward weight); ``lam`` (weight of
    the walk vs the anomaly score); ``timeout_s`` (PCMCI budget, 600 s: PCMCI's cost grows with the square of the
    column count and more, ~1.5 s at 40 columns, minutes at 200; past it MethodError).
    """

    name = "microcause"

    @classmethod
    def default_params(cls) -> dict[str, object]:
        return {
            "window": DEFAULT_WINDOW,
            "tau_min": 1,
            "tau_max": 2,
            "pc_alpha": 0.05,
            "alpha_level": 0.05,
            "max_conds_dim": 3,
            "steps": 10_000,
            "rho": 0.2,
            "lam": 0.5,
            "timeout_s": 600.0,
            "max_columns": 300,  # refuse wider cases before PCMCI starts (see MAX_COLUMNS_NOTE); None: no limit
        }

    def rank(self, obs: Observation, *, seed: int = 0) -> Ranking:
        p = self.params
        if not 0.0 <= float(p["lam"]) <= 1.0:
            raise MethodError(f"microcause: lam must be in [0, 1], got {p['lam']}")
        check_int(self.name, "max_columns", p["max_columns"], minimum=2, allow_none=True)
        w, sli = window_with_sli(obs, p["window"])
        varied = int(np.sum(np.ptp(np.where(np.isfinite(w.values), w.values, 0.0), axis=0) > 0))
        if p["max_columns"] is not None and varied > int(p["max_columns"]):
            raise MethodError(f"microcause: {varied} varying series, more than max_columns={p['max_columns']} "
                              f"({MAX_COLUMNS_NOTE}); use a narrower view or raise max_columns")
        G = pcmci_graph(w.values, w.columns, tau_min=int(p["tau_min"]), tau_max=int(p["tau_max"]),
                        pc_alpha=float(p["pc_alpha"]), alpha_level=float(p["alpha_level"]),
                        max_conds_dim=p["max_conds_dim"], seed=seed, timeout_s=p["timeout_s"])
        require_sli_node(G, w.values, w.columns, sli, self.name)
        idx = {c: j for j, c in enumerate(w.columns)}
        t = idx[sli]
        sim = {}
        for n in G.nodes:
            if n == sli:
                sim[n] = 1.0
                continue
            parents = [idx[q] for q in G.predecessors(n) if q not in (n, sli)]
            sim[n] = partial_corr_with(w.values, idx[n], t, parents)
        visits = random_walk_head(G, w.values, w.columns, sli, steps=int(p["steps"]), rho=float(p["rho"]),
                                  seed=seed, similarity=sim)
        top = max(visits.values(), default=0.0)
        anomaly = robust_anomaly_scores(w.pre, w.post)
        amax = float(anomaly[[idx[n] for n in G.nodes]].max()) if G.number_of_nodes() else 0.0
        lam = float(p["lam"])
        scores = {
            n: lam * (visits[n] / top if top > 0 else 0.0)
            + (1 - lam) * (float(anomaly[idx[n]]) / amax if amax > 0 else 0.0)
            for n in G.nodes
        }
        return full_ranking(w.columns, scores)
