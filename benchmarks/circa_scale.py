"""CIRCA at 200 to 2,000 columns: time and accuracy per size, and its regression step against the per-series
scikit-learn loop it replaced, side by side on the same graphs.

    PYTHONPATH=src python benchmarks/circa_scale.py [--columns 200,1000] [--seeds 3] [--pc-columns 200]

Cases are ``llmrca.synthetic.planted_case`` with four metrics per service (cpu, mem, latency, requests; the fault
enters cpu) and ``edge_prob = 4 / services``, so a service has the same expected number of neighbours (about 2
upstream) at every size and accuracy compares across sizes. "structural" is CIRCA's default path when the case has
a call graph (the planted DAG); "pc" drops the topology so CIRCA learns its graph with PC
(``causal_graphs.pc_graph``), timed separately because PC's cost is not CIRCA's own; it is run only at the sizes in
``--pc-columns``, with CIRCA's default budget (``pc_timeout_s`` 60). Per size: seconds per case (median over seeds)
of the whole ``rank`` call, of its regressions alone (``regression.residual_test``) and of a per-series
loop on the same graph (one scikit-learn ``RidgeCV`` per series, its leave-one-out predictions the normal
baseline, as ``residual_test``'s closed form), their ratio, and AC@1 / Avg@5 at service level.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import numpy as np
from sklearn.linear_model import RidgeCV

from llmrca.case import Topology
from llmrca.errors import MethodError
from llmrca.methods import get_method
from llmrca.methods.by_service import finite_window
from llmrca.methods.regression import residual_test
from llmrca.methods.scoring import baseline
from llmrca.methods.window import metric_window
from llmrca.synthetic import planted_case

METRICS = ("cpu", "mem", "latency", "requests")


def _case(columns: int, seed: int):
    services = columns // len(METRICS)
    return planted_case(n_services=services, metrics=METRICS, edge_prob=min(0.3, 4.0 / services), seed=seed)


def _sklearn_loop(values: np.ndarray, split: int, parents: list[list[int]], alpha: float) -> np.ndarray:
    """The per-series loop: one scikit-learn estimator per series (max |z| of the post residuals against the normal
    rows' leave-one-out residuals, here scikit-learn's own: ``RidgeCV``'s stored leave-one-out predictions)."""
    sd = values[:split].std(axis=0)
    v = (values - values[:split].mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    out = np.zeros(v.shape[1])
    for j in range(v.shape[1]):
        y, pa = v[:, j], [p for p in parents[j] if p != j]
        if pa:
            m = RidgeCV(alphas=[alpha], store_cv_results=True, scoring="neg_mean_squared_error")
            m.fit(v[:split, pa], y[:split])
            loo, resid = y[:split] - m.cv_results_[:, 0], y - m.predict(v[:, pa])
        else:
            loo, resid = (y[:split] - y[:split].mean()) * split / (split - 1.0), y - y[:split].mean()
        c, s = baseline(loo[:, None], resid[split:, None], "standard")
        if s[0] > 0:
            out[j] = float(np.abs(resid[split:] - c[0]).max() / s[0])
    return out


def _avg5(ranks: list[int | None]) -> float:
    return float(np.mean([np.mean([r is not None and r <= k for r in ranks]) for k in range(1, 6)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--columns", default="200,1000")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--pc-columns", default="200", help="sizes at which the PC path is also run ('' for none)")
    a = ap.parse_args()
    pc_sizes = {int(x) for x in a.pc_columns.split(",") if x}
    circa = get_method("circa")
    print(f"{'cols':>5} {'graph':>10} {'rank s':>8} {'regress s':>9} {'sklearn s':>9} {'ratio':>6} "
          f"{'edges':>6} {'AC@1':>5} {'Avg@5':>5}")
    for cols in (int(x) for x in a.columns.split(",")):
        for mode in ("structural", "pc") if cols in pc_sizes else ("structural",):
            t_rank, t_reg, t_old, n_edges, ranks, note = [], [], [], [], [], ""
            for seed in range(a.seeds):
                case = _case(cols, seed)
                obs = case.observation
                if mode == "pc":
                    obs = dataclasses.replace(obs, topology=Topology(services=obs.topology.services))
                t0 = time.perf_counter()
                try:
                    r = circa.rank(obs, seed=0)
                except MethodError as e:  # PC past its budget: say so, with the time it took
                    note = f"  ({e}; after {time.perf_counter() - t0:.0f} s)"
                    ranks.append(None)
                    t_rank.append(time.perf_counter() - t0)
                    continue
                t_rank.append(time.perf_counter() - t0)
                ranks.append(r.rank_of(case.truth.service))
                if mode == "pc":
                    continue  # the regressions are the same code as below; the graph is what differs
                w = finite_window(metric_window(obs, window=60, min_pre=3))
                g = circa._graph(obs, w.columns, w.pre, mode, 0)
                idx = {c: i for i, c in enumerate(w.columns)}
                parents = [[idx[p] for p in g.predecessors(c) if p in idx] for c in w.columns]
                n_edges.append(g.number_of_edges())
                t1 = time.perf_counter()
                new = residual_test(w.values, w.split, parents, regressor="ridge", ridge_alpha=0.1).scores("max")
                t2 = time.perf_counter()
                old = _sklearn_loop(w.values, w.split, parents, 0.1)
                t3 = time.perf_counter()
                if not np.allclose(new, old, rtol=1e-6, atol=1e-6):
                    raise SystemExit(f"{cols} columns, seed {seed}: the regressions disagree with scikit-learn")
                t_reg.append(t2 - t1)
                t_old.append(t3 - t2)
            med = statistics.median
            reg = f"{med(t_reg):>9.3f} {med(t_old):>9.3f} {med(t_old) / max(med(t_reg), 1e-9):>6.1f}" if t_reg else \
                f"{'-':>9} {'-':>9} {'-':>6}"
            edges = f"{int(med(n_edges)):>6}" if n_edges else f"{'-':>6}"
            print(f"{cols:>5} {mode:>10} {med(t_rank):>8.2f} {reg} {edges} "
                  f"{np.mean([r == 1 for r in ranks]):>5.2f} {_avg5(ranks):>5.2f}{note}", flush=True)


if __name__ == "__main__":
    main()
