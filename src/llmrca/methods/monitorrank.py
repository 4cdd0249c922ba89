"""MonitorRank (Kim, Sumbaly & Shah, SIGMETRICS'13): a random walk on the service call graph.

The walker starts at the frontend (the entry service, whose latency is the SLI) and moves over the call graph
with transition weights given by each service's *similarity* to the frontend's anomaly:

- forward edge caller i → callee j with weight S_j: walk towards callees that look like the symptom;
- backward edge callee j → caller i with weight ρ·S_i, so a walker that took a wrong turn can come back;
- self edge at i with weight max(0, S_i − max_{callees j} S_j): stay at a service that explains the symptom
  better than anything it calls.

With probability ``restart`` each step the walker jumps to a service drawn in proportion to S (the paper's
personalised random walk). Services are scored by visit counts. S_i is the largest |Pearson r| between a
series of service i and the SLI over the window (the SLI itself is left out of the frontend's own similarity).

Needs the call graph: ``topology.edges`` (caller → callee), else the traces' parent → child spans, else (no
call known, e.g. an RCAEval RE1 folder) the star ``call_graph.walk_graph`` assumes: the entry calling every service.
"""

from __future__ import annotations

import networkx as nx
import numpy as np

from llmrca.case import Observation
from llmrca.errors import MethodError, NoAnswer
from llmrca.methods.base import BaseMethod, Ranking
from llmrca.methods.by_service import abs_corr, finite_window, group_columns, service_first_ranking
from llmrca.methods.call_graph import walk_graph
from llmrca.methods.params import check_float, check_int
from llmrca.methods.sli import entry_service, sli_column
from llmrca.methods.window import DEFAULT_WINDOW, metric_window


class MonitorRank(BaseMethod):
    name = "monitorrank"

    @classmethod
    def default_params(cls) -> dict[str, object]:
        return {
            "window": DEFAULT_WINDOW,  # rows each side of inject_time ("auto": by source)
            "rho": 0.1,  # weight of backward (callee → caller) edges relative to forward ones
            "restart": 0.15,  # per-step probability of jumping to a service drawn by similarity
            "n_steps": 20_000,  # walk length: more steps, less sampling noise in the visit counts
        }

    def rank(self, obs: Observation, *, seed: int = 0) -> Ranking:
        p = self.params
        rho = check_float(self.name, "rho", p["rho"], low=0.0, high=1.0, low_open=False)
        restart = check_float(self.name, "restart", p["restart"], low=0.0, high=0.999, low_open=False)
        n_steps = check_int(self.name, "n_steps", p["n_steps"], minimum=1)
        w = finite_window(metric_window(obs, window=p["window"], min_pre=3))
        g = walk_graph(obs)
        sli, entry = sli_column(obs), entry_service(obs)
        corr = abs_corr(w.values, w.values[:, w.columns.index(sli)])
        col_sim = dict(zip(w.columns, corr))
        col_sim[sli] = 0.0  # the SLI is trivially similar to itself
        groups = group_columns(w.columns)
        sim = {s: max((col_sim[c] for c in cols), default=0.0) for s, cols in groups.items()}
        visits = random_walk(g, sim, entry, rho=rho, restart=restart, n_steps=n_steps, seed=seed)
        return service_first_ranking(w.columns, visits, col_sim)


def transition_weights(g: nx.DiGraph, sim: dict[str, float], rho: float) -> dict[str, dict[str, float]]:
    """Unnormalised out-weights per node: forward S_callee, backward ρ·S_caller, self S_i − max S_callee."""
    out: dict[str, dict[str, float]] = {}
    for i in sorted(g.nodes):
        s_i = sim.get(i, 0.0)
        ws: dict[str, float] = {}
        callees = [j for j in g.successors(i) if j != i]
        for j in callees:
            ws[j] = ws.get(j, 0.0) + sim.get(j, 0.0)
        for k in g.predecessors(i):
            if k != i:
                ws[k] = ws.get(k, 0.0) + rho * sim.get(k, 0.0)
        ws[i] = ws.get(i, 0.0) + max(0.0, s_i - max((sim.get(j, 0.0) for j in callees), default=0.0))
        out[i] = {k: v for k, v in ws.items() if v > 0}
    return out


def random_walk(
    g: nx.DiGraph,
    sim: dict[str, float],
    start: str,
    *,
    rho: float,
    restart: float,
    n_steps: int,
    seed: int,
) -> dict[str, float]:
    """Share of steps spent at each node of a seeded walk from ``start``."""
    nodes = sorted(g.nodes)
    if start not in g:
        raise MethodError(f"monitorrank: the entry service {start!r} is not in the call graph")
    idx = {n: i for i, n in enumerate(nodes)}
    pref = np.array([sim.get(n, 0.0) for n in nodes])
    if pref.sum() <= 0:
        raise NoAnswer("monitorrank: no series correlates with the SLI in the window (all similarities 0)")
    pref_cum = np.cumsum(pref / pref.sum())
    weights = transition_weights(g, sim, rho)
    targets: list[np.ndarray] = []
    cums: list[np.ndarray | None] = []
    for n in nodes:
        ws = weights[n]
        if ws:
            keys = sorted(ws)
            v = np.array([ws[k] for k in keys])
            targets.append(np.array([idx[k] for k in keys]))
            cums.append(np.cumsum(v / v.sum()))
        else:  # nowhere to go: the walker restarts
            targets.append(np.empty(0, dtype=int))
            cums.append(None)
    rng = np.random.default_rng(seed)
    jump = rng.random(n_steps) < restart
    u = rng.random(n_steps)
    counts = np.zeros(len(nodes))
    cur = idx[start]
    for t in range(n_steps):
        cum = cums[cur]
        if jump[t] or cum is None:
            cur = int(min(np.searchsorted(pref_cum, u[t], side="right"), len(nodes) - 1))
        else:
            cur = int(targets[cur][min(np.searchsorted(cum, u[t], side="right"), len(cum) - 1)])
        counts[cur] += 1
    return {n: counts[i] / n_steps for i, n in enumerate(nodes)}
