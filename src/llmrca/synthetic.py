"""Planted-root synthetic cases: the answer is known, so methods can be tested against it.

A random DAG over services (each with a few metrics) drives a linear or non-linear structural equation model;
after ``inject_time`` the root's first metric gets a mean (and variance) shift that propagates to its
descendants through the model, not by painting.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from llmrca.case import Case, GroundTruth, Observation, Topology

DEFAULT_METRICS = ("cpu", "mem", "latency")


def planted_case(
    *,
    n_services: int = 8,
    metrics: tuple[str, ...] = DEFAULT_METRICS,
    n_rows: int = 240,
    inject_row: int = 120,
    root: int | None = None,
    shift: float = 6.0,
    edge_prob: float = 0.3,
    nonlinear: bool = False,
    interval: float = 5.0,
    start: float = 1_700_000_000.0,
    fault_type: str = "cpu",
    frontend: bool = False,
    seed: int = 0,
) -> Case:
    """One case; root service index drawn from ``seed`` unless given. Service names are ``svc-<i>``.

    Topology edges are the SEM's cause → effect edges. With ``frontend=True`` the case looks like a served
    system instead: an extra entry service ``frontend`` (never the root) calls the DAG's sinks, its metrics follow
    theirs, and the edges are caller → callee (effect → cause), so SLI-based methods have an entry whose latency
    the fault reaches — chosen without looking at the root. The other services' values are the same either way.
    """
    rng = np.random.default_rng(seed)
    names = [f"svc-{i}" for i in range(n_services)]
    root = int(rng.integers(n_services)) if root is None else root
    # Upper-triangular adjacency in a random order = a random DAG.
    order = rng.permutation(n_services)
    adj = np.zeros((n_services, n_services))
    for a in range(n_services):
        for b in range(a + 1, n_services):
            if rng.random() < edge_prob:
                adj[order[a], order[b]] = rng.uniform(0.5, 1.2) * rng.choice([-1, 1])
    topo_order = list(order)
    k = len(metrics)
    level = rng.normal(10.0, 3.0, size=(n_services, k))
    scale = rng.uniform(0.5, 2.0, size=(n_services, k))
    x = np.zeros((n_rows, n_services, k))
    noise = rng.normal(size=(n_rows, n_services, k))
    after = np.arange(n_rows) >= inject_row
    for j in topo_order:
        parents = np.nonzero(adj[:, j])[0]
        drive = np.zeros(n_rows)
        for p in parents:
            pv = x[:, p, 0]
            pv = (pv - pv[:inject_row].mean()) / (pv[:inject_row].std() + 1e-9)
            drive += adj[p, j] * (np.tanh(pv) * 2.0 if nonlinear else pv)
        base = noise[:, j, 0]
        if j == root:
            base = base + after * shift + after * noise[:, j, 0] * 0.5
        x[:, j, 0] = base + drive
        for m in range(1, k):  # other metrics of a service follow its first one, plus noise
            x[:, j, m] = 0.6 * x[:, j, 0] + noise[:, j, m]
    x = level + scale * x
    times = start + interval * np.arange(n_rows)
    cols = {"time": times}
    for j, n in enumerate(names):
        for m, metric in enumerate(metrics):
            cols[f"{n}_{metric}"] = x[:, j, m]
    edges = tuple((names[a], names[b]) for a, b in zip(*np.nonzero(adj)))
    services, entry = tuple(names), None
    if frontend:
        sinks = [j for j in range(n_services) if not adj[j].any()]
        z = (x[:, sinks, 0] - x[:inject_row, sinks, 0].mean(axis=0)) / (x[:inject_row, sinks, 0].std(axis=0) + 1e-9)
        # A separate stream keeps the other services' values identical to frontend=False.
        fnoise = np.random.default_rng([seed, 1]).normal(size=(n_rows, k))
        for m, metric in enumerate(metrics):
            cols[f"frontend_{metric}"] = 20.0 + z.mean(axis=1) * (1.0 if m == 0 else 0.6) + fnoise[:, m]
        edges = tuple((b, a) for a, b in edges) + tuple(("frontend", names[j]) for j in sinks)
        services, entry = ("frontend", *names), "frontend"
    obs = Observation(
        metrics=pd.DataFrame(cols),
        inject_time=float(times[inject_row]),
        topology=Topology(services=services, edges=edges, entry=entry),
        interval=interval,
    )
    truth = GroundTruth(
        service=names[root],
        fault_type=fault_type,
        indicator=f"{names[root]}_{metrics[0]}",
        start=float(times[inject_row]),
        end=float(times[-1]),
        params={"shift": shift, "nonlinear": nonlinear},
    )
    return Case(
        id=f"planted-{seed}",
        observation=obs,
        truth=truth,
        system="synthetic",
        provenance={"generator": "llmrca.synthetic.planted_case", "seed": seed},
    )
