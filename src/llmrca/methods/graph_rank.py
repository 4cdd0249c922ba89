"""Causal graph + head: the eight ``<graph>-<head>`` methods of the study (RCAEval's PC/FCI/Granger/LiNGAM ×
PageRank/random walk).

Each builds one causal graph over every metric column of the window (normal and abnormal rows together), then
scores nodes with a head:

- ``pagerank``: PageRank on the reversed graph (effects point to causes);
- ``randomwalk``: a seeded walk from the SLI (the entry service's latency) with correlation-weighted forward
  (towards causes), backward (``rho``-damped) and self transitions; visit frequencies are the scores.

Columns that are not graph nodes (constant or non-finite in the window) or that the walk never reaches follow the
others: for the walk, by their |correlation| with the SLI (``unvisited="similarity"``, the default; "name" keeps
the study's order by name, see ``unvisited_by_similarity``); for PageRank, with the teleport share, by name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import ClassVar

import networkx as nx

from llmrca.case import Observation
from llmrca.errors import MethodError
from llmrca.methods import causal_graphs as cg
from llmrca.methods.base import BaseMethod, Ranking
from llmrca.methods.graph_heads import abs_correlation_with, pagerank_head, random_walk_head
from llmrca.methods.sli import sli_column
from llmrca.methods.window import DEFAULT_WINDOW, MetricWindow, metric_window


def window_with_sli(obs: Observation, window: int | None) -> tuple[MetricWindow, str]:
    """The metrics window and the SLI column, which is always among the window's columns."""
    w = metric_window(obs, window=window)
    sli = sli_column(obs)
    if sli not in w.columns:  # sli_column picks from the observation's metric columns; kept as a guard
        raise MethodError(f"SLI column {sli!r} is not among the metric columns")
    return w, sli


def full_ranking(columns: list[str], scores: dict[str, float]) -> Ranking:
    """Every column once: scored ones by score, the rest with 0 (ties by name)."""
    return Ranking.from_scores(columns, [float(scores.get(c, 0.0)) for c in columns])


_BUILDER_PARAMS: dict[str, dict[str, object]] = {
    "pc": {"alpha": 0.05, "max_cond": 3, "timeout_s": 120.0},
    "fci": {"alpha": 0.05, "max_cond": 3, "max_path_length": -1, "timeout_s": 120.0},
    "granger": {"max_lag": 2, "alpha": 0.05, "family": "pair", "timeout_s": 120.0},
    "lingam": {"threshold": 0.01, "timeout_s": 120.0},
}
_BUILDERS: dict[str, Callable[..., nx.DiGraph]] = {
    "pc": cg.pc_graph,
    "fci": cg.fci_graph,
    "granger": cg.granger_graph,
    "lingam": cg.lingam_graph,
}
_HEAD_PARAMS: dict[str, dict[str, object]] = {
    "pagerank": {"damping": 0.85},
    "randomwalk": {"steps": 10_000, "rho": 0.2, "unvisited": "similarity"},
}


def unvisited_by_similarity(scores: dict[str, float], sim: Mapping[str, float], columns: list[str],
                            steps: int) -> dict[str, float]:
    """Order the columns the walk never reached by the walk's own transition weight ``sim``, |corr(column, SLI)|:
    each scores half a visit (0.5 / ``steps``) times that similarity, below every visited node (at least
    1 / ``steps``) and above the columns that carry no signal. Visited nodes keep their frequency."""
    return {c: (scores[c] if scores.get(c, 0.0) > 0 else 0.5 / steps * sim.get(c, 0.0)) for c in columns}


class GraphHeadMethod(BaseMethod):
    """Causal graph (``builder``) + head. Parameters (see docs/methods.md):

    - ``window``: samples each side of the injection (60, as in the study);
    - builder: ``alpha`` (CI-test level), ``max_cond`` (largest conditioning set: PC/FCI; bounds cost, the
      study's runs used unbounded depth), ``max_path_length`` (FCI discriminating paths, -1 = unbounded), ``max_lag``
      (Granger), ``family`` (Granger: "pair" tests every pair at ``alpha``, "target" Bonferroni-corrects each
      target's tests; see ``causal_graphs.granger_graph``), ``threshold`` (LiNGAM |coefficient| for an edge),
      ``timeout_s`` (budget for discovery; past it the method raises MethodError);
    - head: ``damping`` (PageRank), ``steps`` and ``rho`` (random walk length and backward-move weight),
      ``unvisited`` (walk: order of the columns it never reached, "similarity" or "name").
    """

    builder: ClassVar[str]
    head: ClassVar[str]

    @classmethod
    def default_params(cls) -> dict[str, object]:
        return {"window": DEFAULT_WINDOW, **_BUILDER_PARAMS[cls.builder], **_HEAD_PARAMS[cls.head]}

    def rank(self, obs: Observation, *, seed: int = 0) -> Ranking:
        p = self.params
        if self.head == "randomwalk" and p["unvisited"] not in ("name", "similarity"):
            raise MethodError(f"method {self.name!r}: parameter unvisited must be 'name' or 'similarity', "
                              f"got {p['unvisited']!r}")
        if self.head == "pagerank":  # PageRank needs no symptom, so no SLI
            w, sli = metric_window(obs, window=p["window"]), None
        else:
            w, sli = window_with_sli(obs, p["window"])
        bkw = {k: p[k] for k in _BUILDER_PARAMS[self.builder]}
        G = _BUILDERS[self.builder](w.values, w.columns, seed=seed, **bkw)
        if sli is None:
            scores = pagerank_head(G, alpha=float(p["damping"]))
        else:
            steps = int(p["steps"])
            sim = abs_correlation_with(w.values, w.columns, sli)  # the walk's weights, and the unvisited order
            scores = random_walk_head(G, w.values, w.columns, sli, steps=steps, rho=float(p["rho"]),
                                      seed=seed, method=self.name, similarity=sim)
            if p["unvisited"] == "similarity":
                scores = unvisited_by_similarity(scores, sim, w.columns, steps)
        return full_ranking(w.columns, scores)


class PCPageRank(GraphHeadMethod):
    name = "pc-pagerank"
    builder, head = "pc", "pagerank"


class PCRandomWalk(GraphHeadMethod):
    name = "pc-randomwalk"
    builder, head = "pc", "randomwalk"


class FCIPageRank(GraphHeadMethod):
    name = "fci-pagerank"
    builder, head = "fci", "pagerank"


class FCIRandomWalk(GraphHeadMethod):
    name = "fci-randomwalk"
    builder, head = "fci", "randomwalk"


class GrangerPageRank(GraphHeadMethod):
    """PageRank on the Granger graph, each target's tests Bonferroni-corrected (``family="target"``): without a
    correction the false edges grow as alpha·k² and PageRank on them ranks by in-degree noise at 1,000 columns
    (docs/methods.md, granger-pagerank)."""

    name = "granger-pagerank"
    builder, head = "granger", "pagerank"

    @classmethod
    def default_params(cls) -> dict[str, object]:
        return {**super().default_params(), "family": "target"}


class GrangerRandomWalk(GraphHeadMethod):
    name = "granger-randomwalk"
    builder, head = "granger", "randomwalk"


class LiNGAMPageRank(GraphHeadMethod):
    name = "lingam-pagerank"
    builder, head = "lingam", "pagerank"


class LiNGAMRandomWalk(GraphHeadMethod):
    name = "lingam-randomwalk"
    builder, head = "lingam", "randomwalk"
