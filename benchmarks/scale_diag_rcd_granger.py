"""Why rcd and granger-pagerank lose accuracy from 3 to 16 replicas (issue 17, item 2): per-case evidence.

    python benchmarks/scale_diag_rcd_granger.py                 # sim3 and sim16, seeds 0-7 (~4 min, loaded 2 cores)
    python benchmarks/scale_diag_rcd_granger.py --levels        # + granger at two fixed levels (~7 min)
    python benchmarks/scale_diag_rcd_granger.py --replicas 3,16 --seeds 8 --kmeans

The cases are ``benchmarks/scale.py``'s ``sim3`` / ``sim16`` (the full view of the ``paper`` scenario; seeds 0-3
fault ``ray-replicas-0``, 4-7 ``ray-head``, at every replica count). Ranks are service-level, rank% as in
``scale.py`` (mean of (rank − 1) / (services − 1)). Printed per replica count:

rcd
- ``rcd``: the method as shipped;
- ``F-test only``: every column ranked by its unconditional chi-square test with F alone (rcd's tier 1), i.e.
  the ranking without the localized search and chunking. If it falls as rcd falls, the loss is in the F-node test,
  not in the hierarchical search;
- ``per-chunk alpha relaxation``: the RCD authors' implementation's chunk step (Ψ-PC retried at ``alpha`` +
  0.1, + 0.2, … until a chunk keeps at least one column; the final candidates ordered by the level at which they
  are first found);
- ``F-test, autocorrelation-adjusted``: a diagnostic outside RCD's paper (not in the method): the marginal
  chi-square statistic divided by the variance inflation (1 + ρ) / (1 − ρ) of a series with lag-1
  autocorrelation ρ (over the normal rows) against a step (Bartlett's effective sample size), to show whether
  the iid assumption is what fails;
- per case: how many columns (and of which services) score above the root's best column, and the metric names
  of those columns (the kinds counted);
- with ``--kmeans``: rcd with ``strategy="kmeans"`` (the authors' discretiser; ~15x slower).

granger-pagerank
- per case: edges out of the root's columns (to other services, within the root), the edges among the other
  services ("bystanders"), the root's share of the graph's edges, and the root service's PageRank rank;
- the same graph ranked by PageRank weighted by the edges' F statistic (``pagerank_head(weight="weight")``);
- with ``--levels``: granger-pagerank with the study's ``family="pair"`` at the per-target level of 3 replicas'
  (0.05 / 300) and of 16 replicas' (0.05 / 1,556) column counts, the same level at both sizes.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _rank_pct(ranks: list[int | None], services: int) -> tuple[float, float]:
    ac1 = sum(r == 1 for r in ranks) / len(ranks)
    return ac1, statistics.fmean((r - 1) / (services - 1) if r is not None else 1.0 for r in ranks)


def _rcd_inputs(obs):  # the same steps as RCD.rank before its search
    from llmrca.methods.causal_graphs import usable_columns
    from llmrca.methods.rcd import discretise
    from llmrca.methods.window import metric_window

    w = metric_window(obs, window="auto")
    u = usable_columns(w.values, w.columns)
    codes = discretise(u.data, 5, "quantile")
    varied = [j for j in range(codes.shape[1]) if len(np.unique(codes[:, j])) > 1]
    f_col = (np.arange(len(w.times)) >= w.split).astype(np.int64)
    return w, u, varied, np.column_stack([codes[:, varied], f_col])


def rcd_variants(obs) -> dict[str, object]:
    """Rankings (Ranking objects) of the rcd variants of the module docstring on one case."""
    from scipy import stats

    from llmrca.methods.base import Ranking
    from llmrca.methods.causal_graphs import BudgetedCIT
    from llmrca.methods.rcd import _log_p, _tier, chunks, localized_search

    w, u, varied, data = _rcd_inputs(obs)
    names = [u.names[j] for j in varied]
    f = data.shape[1] - 1
    cit = BudgetedCIT(data, inner="chisq", deadline=None)
    marginal = {x: _log_p(cit, f, x) for x in range(len(names))}
    out: dict[str, object] = {}

    def full(sc: dict[str, float]) -> Ranking:
        return Ranking.from_scores(w.columns, [sc.get(c, 0.0) for c in w.columns])

    out["F-test only"] = full({names[x]: _tier(1, marginal[x]) for x in range(len(names))})

    alphas = [0.05 + 0.1 * i for i in range(10) if 0.05 + 0.1 * i < 1]
    rng = np.random.default_rng([0, 0])
    cands = list(range(len(names)))
    while True:
        survivors: list[int] = []
        for part in chunks(cands, 5, rng):
            for a in alphas:
                kept, _ = localized_search(cit, f, part, a, None)
                if kept:
                    break
            survivors.extend(kept)
        done = len(survivors) <= 5 or len(survivors) >= len(cands)
        cands = sorted(survivors)
        if done:
            break
    level: dict[int, int] = {}
    for i, a in enumerate(alphas):
        for x in localized_search(cit, f, cands, a, None)[0]:
            level.setdefault(x, i)
    sc = {names[x]: _tier(2 + 2 * (len(alphas) - level[x]), marginal[x]) if x in level else _tier(1, marginal[x])
          for x in range(len(names))}
    out["per-chunk alpha relaxation"] = full(sc)

    adj = {}
    F = data[:, f]
    for x, j in enumerate(varied):
        tab = np.array([[np.sum((data[:, x] == b) & (F == v)) for v in (0, 1)] for b in np.unique(data[:, x])])
        chi2, _, dof, _ = stats.chi2_contingency(tab, correction=False)
        z = u.data[: w.split, j] - u.data[: w.split, j].mean()
        rho = min(max(float(z[1:] @ z[:-1]) / max(float(z @ z), 1e-300), 0.0), 0.99)
        adj[names[x]] = -math.log10(max(stats.chi2.sf(chi2 * (1 - rho) / (1 + rho), dof), 1e-300))
    out["F-test, autocorrelation-adjusted"] = full(adj)
    return out


def above_root(ranking, root: str) -> list[str]:
    from llmrca.case import service_of

    best = next(s for c, s in zip(ranking.candidates, ranking.scores, strict=True) if service_of(c) == root)
    return [c for c, s in zip(ranking.candidates, ranking.scores, strict=True) if s > best]


def granger_facts(obs, root: str) -> dict[str, float]:
    from llmrca.case import service_of
    from llmrca.methods import causal_graphs as cg
    from llmrca.methods.graph_heads import pagerank_head
    from llmrca.methods.graph_rank import full_ranking
    from llmrca.methods.window import metric_window

    w = metric_window(obs, window="auto")
    G = cg.granger_graph(w.values, w.columns, max_lag=2, alpha=0.05, family="target")
    kinds = Counter(("root" if service_of(a) == root else "by") + ">" + ("root" if service_of(b) == root else "by")
                    for a, b in G.edges)
    facts = {"root>other": kinds["root>by"], "root>root": kinds["root>root"], "bystander": kinds["by>by"],
             "share": (kinds["root>by"] + kinds["root>root"]) / max(1, G.number_of_edges())}
    for label, weight in (("rank", None), ("rank weighted", "weight")):
        facts[label] = full_ranking(w.columns, pagerank_head(G, weight=weight)).rank_of(root)
    return facts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicas", default="3,16")
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--kmeans", action="store_true", help="also rcd with strategy='kmeans' (slow)")
    ap.add_argument("--levels", action="store_true", help="also granger-pagerank at two fixed levels")
    args = ap.parse_args()
    import scale

    from llmrca.case import service_of
    from llmrca.methods import get_method

    for r in (int(x) for x in args.replicas.split(",")):
        cases = [scale.simulated(r, s) for s in range(args.seeds)]
        services = len(cases[0].observation.topology.services)
        ranks: dict[str, list[int | None]] = {}
        kinds: Counter[str] = Counter()
        gf = []
        print(f"## {r} replicas: {len(cases[0].observation.metric_columns)} columns, {services} services")
        for s, case in enumerate(cases):
            root = case.truth.service
            shipped = get_method("rcd").rank(case.observation, seed=0)
            ranks.setdefault("rcd", []).append(shipped.rank_of(root))
            for label, rk in rcd_variants(case.observation).items():
                ranks.setdefault(label, []).append(rk.rank_of(root))
            if args.kmeans:
                rk = get_method("rcd", strategy="kmeans").rank(case.observation, seed=0)
                ranks.setdefault("rcd kmeans", []).append(rk.rank_of(root))
            if args.levels:
                for label, level in (("granger pair 0.05/300", 0.05 / 300),
                                     ("granger pair 0.05/1556", 0.05 / 1556)):
                    rk = get_method("granger-pagerank", family="pair", alpha=level).rank(case.observation, seed=0)
                    ranks.setdefault(label, []).append(rk.rank_of(root))
            above = above_root(shipped, root)
            kinds.update(c.split("_", 1)[1] if "_" in c else c for c in above)
            g = granger_facts(case.observation, root)
            gf.append(g)
            print(f"seed {s} root {root}: rcd rank {ranks['rcd'][-1]}, {len(above)} columns of "
                  f"{len({service_of(c) for c in above})} services above the root's best; granger root>other "
                  f"{g['root>other']} root>root {g['root>root']} bystander {g['bystander']} "
                  f"share {g['share']:.3f} rank {g['rank']} (weighted {g['rank weighted']})")
        for label, rs in ranks.items():
            ac1, pct = _rank_pct(rs, services)
            print(f"{'' if label.startswith('granger') else 'rcd | '}{label:34s} AC@1 {ac1:.2f} rank% {pct:.3f} ranks {rs}")
        print("rcd | metrics of the columns above the root (all cases):", dict(kinds.most_common(8)))
        for label in ("rank", "rank weighted"):
            ac1, pct = _rank_pct([g[label] for g in gf], services)
            print(f"granger-pagerank | {label:13s} AC@1 {ac1:.2f} rank% {pct:.3f}")
        med = {k: statistics.median(g[k] for g in gf) for k in ("root>other", "root>root", "bystander", "share")}
        print("granger-pagerank | medians:", {k: round(v, 3) for k, v in med.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
