"""MicroScope (Lin, Chen & Zheng, ICSOC'18): anomaly detection per service, then a traversal of the service
dependency graph from the frontend that follows anomalous callees, then a ranking of the candidates.

1. Anomaly detection: a service is anomalous when at least ``min_share`` of its post-injection samples lie
   beyond ``k_sigma`` standard deviations of its pre-injection mean (the paper's SLO-violation check). It is
   judged on its latency series; a service that reports no latency, on all of its series (any one).
2. Cause inference: a depth-first traversal from the frontend (the entry service: the symptom the analysis
   starts from) into anomalous callees only. A visited anomalous service none of whose callees is anomalous
   is a root-cause candidate: the anomaly stops there. The paper runs one traversal per branch in parallel;
   the set of candidates is the same as one traversal's, which is what we compute.
3. Ranking: candidates by the largest |Pearson r| between one of their series and the frontend SLI over the
   window. Services that are not candidates are not scored (0; last, by name). Within a service, series come
   by their |r| with the SLI. No candidate at all: the method abstains (``NoAnswer``).

Needs the call graph: ``topology.edges`` (caller → callee), else the traces' parent → child spans, else (no
call known, e.g. an RCAEval RE1 folder) the star ``call_graph.walk_graph`` assumes: the entry calling every service. The
dependency graph is used as it is; the paper's PC refinement of it is not applied.
"""

from __future__ import annotations

import networkx as nx
import numpy as np

from llmrca.case import Observation
from llmrca.errors import MethodError, NoAnswer
from llmrca.methods.base import BaseMethod, Ranking
from llmrca.methods.by_service import (
    abs_corr,
    finite_window,
    group_columns,
    service_first_ranking,
)
from llmrca.methods.call_graph import walk_graph
from llmrca.methods.params import check_float
from llmrca.methods.sli import entry_service, latency_column, sli_column
from llmrca.methods.window import DEFAULT_WINDOW, MetricWindow, metric_window


class MicroScope(BaseMethod):
    name = "microscope"

    @classmethod
    def default_params(cls) -> dict[str, object]:
        return {
            "window": DEFAULT_WINDOW,  # rows each side of inject_time ("auto": by source)
            "k_sigma": 3.0,  # a sample violates when |x − mean_pre| > k_sigma · std_pre
            "min_share": 0.1,  # share of post-injection samples that must violate to make a service anomalous
        }

    def rank(self, obs: Observation, *, seed: int = 0) -> Ranking:
        p = self.params
        k_sigma = check_float(self.name, "k_sigma", p["k_sigma"], low=0.0, high=np.inf)
        min_share = check_float(self.name, "min_share", p["min_share"], low=0.0, high=1.0)
        w = finite_window(metric_window(obs, window=p["window"], min_pre=3))
        g = walk_graph(obs)
        sli, entry = sli_column(obs), entry_service(obs)
        if entry not in g:
            raise MethodError(f"microscope: the entry service {entry!r} is not in the call graph")
        anomalous = anomalous_services(w, k_sigma, min_share)
        candidates = traverse(g, entry, anomalous)
        if not candidates:
            raise NoAnswer(
                f"microscope: no anomalous service reachable from the entry {entry!r} through anomalous "
                f"callees (anomalous services: {', '.join(sorted(anomalous)) or 'none'})"
            )
        corr = dict(zip(w.columns, abs_corr(w.values, w.values[:, w.columns.index(sli)])))
        groups = group_columns(w.columns)
        # 1 + r keeps a candidate ahead of the unscored services even when its r is 0.
        score = {s: 1.0 + max(corr[c] for c in groups[s]) for s in candidates if s in groups}
        return service_first_ranking(w.columns, score, corr)


def violation_share(w: MetricWindow, k_sigma: float) -> np.ndarray:
    """Per column, the share of post-injection samples beyond k_sigma pre-injection standard deviations.

    A column flat before injection has no noise estimate: any post-injection change counts as a violation.
    """
    mu = w.pre.mean(axis=0)
    sd = w.pre.std(axis=0, ddof=1)
    dev = np.abs(w.post - mu)
    flat = ~(sd > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        viol = np.where(flat, dev > 0, dev > k_sigma * np.where(flat, 1.0, sd))
    return viol.mean(axis=0)


def anomalous_services(w: MetricWindow, k_sigma: float, min_share: float) -> set[str]:
    share = dict(zip(w.columns, violation_share(w, k_sigma)))
    out = set()
    for s, cols in group_columns(w.columns).items():
        lat = latency_column(s, cols)
        judged = [lat] if lat else cols
        if max(share[c] for c in judged) >= min_share:
            out.add(s)
    return out


def traverse(g: nx.DiGraph, entry: str, anomalous: set[str]) -> set[str]:
    """Anomalous services reached from ``entry`` through anomalous callees that have no anomalous callee."""
    candidates: set[str] = set()
    seen = {entry}
    stack = [entry]
    while stack:
        u = stack.pop()
        bad = sorted(v for v in g.successors(u) if v in anomalous and v != u)
        if u in anomalous and not bad:
            candidates.add(u)
        for v in bad:
            if v not in seen:
                seen.add(v)
                stack.append(v)
    return candidates
