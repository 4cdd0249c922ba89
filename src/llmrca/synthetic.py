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
    seed: int = 0,
) -> Case:
    """One case; root service index drawn from ``seed`` unless given. Service names are ``svc-<i>``."""
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
    obs = Observation(
        metrics=pd.DataFrame(cols),
        inject_time=float(times[inject_row]),
        topology=Topology(services=tuple(names), edges=edges),
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
