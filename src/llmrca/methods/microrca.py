"""MicroRCA (Wu, Tordsson, Elmroth & Kao, NOMS'20): personalised PageRank on an attributed graph of
services and hosts.

1. Attributed graph: services and hosts; caller → callee edges from the call graph, service → host edges
   from ``topology.hosts``.
2. Anomaly detection: BIRCH clustering of each service's latency over the window, smoothed by a trailing mean
   and scaled by its pre-injection mean and std. The paper flags a call whose response times leave the normal
   clusters; we flag a service when at least ``min_share`` of its post-injection samples fall in BIRCH
   subclusters holding no pre-injection sample. Per-edge response times are not in the metrics, so the
   latency of calls *to* a service is the callee's latency: an edge is anomalous when its callee is.
3. Anomalous subgraph: the anomalous services and everything adjacent to them (callers, callees, hosts).
4. Edge weights: an anomalous call edge gets the constant ``alpha``; another call edge u → v gets the largest
   |r| between v's latency and an anomalous service's latency; a service → host edge gets the largest |r|
   between the service's latency and one of the host's series (hosts without series get no edge).
5. Personalisation (the anomaly score of a service): mean weight of its edges in the subgraph (in and out:
   the frontend has no caller) × the largest |r| between its latency and one of its own non-latency series.
6. Personalised PageRank (networkx) over the subgraph; the walk follows calls towards callees and hosts,
   where a caller's slowness comes from. Services (and hosts with series of their own) are ranked by PageRank;
   those outside the subgraph are not scored (0; last, by name). Within a service, its other series come by
   |r| with its latency (the paper's evidence for the culprit resource), the latency series itself last.

Needs the call graph: ``topology.edges`` (caller → callee), else the traces' parent → child spans, else (no
call known, e.g. an RCAEval RE1 folder) the star ``call_graph.walk_graph`` assumes: the entry calling every service.
"""

from __future__ import annotations

import networkx as nx
import numpy as np
import pandas as pd
from sklearn.cluster import Birch

from llmrca.case import Observation
from llmrca.errors import MethodError, NoAnswer
from llmrca.methods.base import BaseMethod, Ranking
from llmrca.methods.by_service import (
    abs_corr,
    finite_window,
    group_columns,
    service_first_ranking,
)
from llmrca.methods.call_graph import attributed_graph
from llmrca.methods.params import check_float, check_int
from llmrca.methods.sli import latency_column
from llmrca.methods.window import DEFAULT_WINDOW, MetricWindow, metric_window


class MicroRCA(BaseMethod):
    name = "microrca"

    @classmethod
    def default_params(cls) -> dict[str, object]:
        return {
            "window": DEFAULT_WINDOW,  # rows each side of inject_time ("auto": by source)
            "smoothing": 5,  # trailing-mean length applied to latencies before clustering, samples
            "birch_threshold": 1.5,  # BIRCH subcluster radius, in pre-injection standard deviations
            "min_share": 0.1,  # share of post samples in new subclusters that makes a latency anomalous
            "alpha": 0.55,  # weight of anomalous call edges
            "damping": 0.85,  # PageRank damping factor
            "max_iter": 1000,  # PageRank power iterations
            "tol": 1e-10,  # PageRank convergence tolerance
        }

    def rank(self, obs: Observation, *, seed: int = 0) -> Ranking:
        p = self.params
        name = self.name
        smoothing = check_int(name, "smoothing", p["smoothing"], minimum=1)
        threshold = check_float(name, "birch_threshold", p["birch_threshold"], low=0.0, high=np.inf)
        min_share = check_float(name, "min_share", p["min_share"], low=0.0, high=1.0)
        alpha = check_float(name, "alpha", p["alpha"], low=0.0, high=1.0)
        damping = check_float(name, "damping", p["damping"], low=0.0, high=1.0)
        max_iter = check_int(name, "max_iter", p["max_iter"], minimum=1)
        tol = check_float(name, "tol", p["tol"], low=0.0, high=1.0)
        w = finite_window(metric_window(obs, window=p["window"], min_pre=3))
        g = attributed_graph(obs, assume_star=True)
        groups = group_columns(w.columns)
        col = {c: i for i, c in enumerate(w.columns)}
        lat = {s: latency_column(s, cols) for s, cols in groups.items()}
        lat = {s: c for s, c in lat.items() if c is not None}
        if not lat:
            raise MethodError("microrca: no service has a latency series (<service>_latency or similar)")
        share = {s: new_cluster_share(w, col[c], threshold, smoothing) for s, c in lat.items()}
        anomalous = {s for s, v in share.items() if v >= min_share}
        if not anomalous:
            raise NoAnswer(f"microrca: BIRCH found no latency anomaly in the {len(lat)} service(s)")
        anomalous_lat = [lat[a] for a in sorted(anomalous)]
        sub = nx.DiGraph()
        sub.add_nodes_from(sorted(anomalous))
        for u, v, kind in sorted(g.edges(data="kind")):
            if u not in anomalous and v not in anomalous:
                continue
            if kind == "calls":
                if v in anomalous:
                    wt = alpha
                else:  # by how the callee's series move with the anomalous latencies
                    wt = pair_corr(w, [lat[v]] if v in lat else groups.get(v, []), anomalous_lat)
            else:  # runs-on: service → host, by how its latency follows the host's resources
                if v not in groups or u not in lat:
                    continue
                wt = pair_corr(w, [lat[u]], groups[v])
            sub.add_edge(u, v, weight=wt)
        personal = {}
        for s in sub.nodes:
            if s not in lat:
                personal[s] = 0.0
                continue
            # In and out edges both: the frontend has no caller, yet its anomaly must count.
            ws = [d for *_, d in sub.in_edges(s, data="weight")]
            ws += [d for *_, d in sub.out_edges(s, data="weight")]
            resources = [c for c in groups[s] if c != lat[s]]
            personal[s] = (float(np.mean(ws)) if ws else 0.0) * pair_corr(w, [lat[s]], resources)
        if sum(personal.values()) <= 0:
            # All anomaly scores vanish (e.g. no resource series moves with latency): the paper's score is
            # undefined here, so the restart spreads evenly over the anomalous services.
            personal = {s: float(s in anomalous) for s in sub.nodes}
        try:
            pr = nx.pagerank(sub, alpha=damping, personalization=personal, weight="weight", max_iter=max_iter,
                             tol=tol, dangling=personal)
        except nx.PowerIterationFailedConvergence as e:
            raise MethodError(f"microrca: PageRank did not converge in {max_iter} iterations") from e
        column_score = {}
        for s, cols in groups.items():
            for c in cols:
                if s not in lat:  # no latency of its own: how it follows the anomalous latencies
                    column_score[c] = pair_corr(w, [c], anomalous_lat)
                else:
                    column_score[c] = -1.0 if c == lat[s] else pair_corr(w, [c], [lat[s]])
        service_score = {s: v for s, v in pr.items() if s in groups}
        return service_first_ranking(w.columns, service_score, column_score)


def pair_corr(w: MetricWindow, a: list[str], b: list[str]) -> float:
    """Largest |Pearson r| between a series of ``a`` and one of ``b`` in the window; 0 if either is empty."""
    if not a or not b:
        return 0.0
    ia = [w.columns.index(c) for c in a]
    return max(float(abs_corr(w.values[:, ia], w.values[:, w.columns.index(c)]).max()) for c in b)


def new_cluster_share(w: MetricWindow, j: int, threshold: float, smoothing: int) -> float:
    """Share of post-injection samples of column ``j`` that BIRCH puts in subclusters without a pre sample.

    The series is first smoothed by a trailing mean of ``smoothing`` samples (as the paper does, so that
    single noisy samples do not open clusters of their own), then scaled by its pre-injection mean and std.
    """
    x = w.values[:, j]
    if smoothing > 1:
        x = pd.Series(x).rolling(smoothing, min_periods=1).mean().to_numpy()
    pre = x[: w.split]
    mu, sd = pre.mean(), pre.std(ddof=1)
    if not sd > 0:
        return float(np.mean(x[w.split:] != mu))  # flat before: any change leaves the normal cluster
    z = ((x - mu) / sd).reshape(-1, 1)
    labels = Birch(threshold=threshold, n_clusters=None).fit(z).labels_
    normal = set(labels[: w.split].tolist())
    return float(np.mean([lab not in normal for lab in labels[w.split:]]))
