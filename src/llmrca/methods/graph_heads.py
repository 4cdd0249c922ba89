"""Graph heads: turn a causal graph (edges cause → effect) into suspicion scores per node.

- ``pagerank_head``: PageRank on the reversed graph, so that rank flows from effects to their causes and
  accumulates at the roots of the anomaly's propagation.
- ``random_walk_head``: the symptom-driven walk of CloudRanger (Wang et al., CCGrid'18) and MicroCause (Meng et al.,
  IWQoS'20): start at the SLI, move towards causes with probability proportional to their similarity to the SLI,
  back to effects with a damped probability, or stay; the visit frequency is the score.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence

import networkx as nx
import numpy as np

from llmrca.errors import MethodError, NoAnswer

DENSE_PAGERANK_MAX_NODES = 250  # where the dense iteration stops being cheaper than networkx's sparse one


def pagerank_head(
    G: nx.DiGraph,
    *,
    alpha: float = 0.85,
    weight: str | None = None,
    max_iter: int = 1000,
    tol: float = 1e-10,
) -> dict[str, float]:
    """PageRank of every node of ``G`` on the reversed graph; ``weight`` names an edge attribute to weight
    transitions by (None = unweighted). Isolated nodes keep the teleport share.

    The definition is networkx's ``pagerank`` with no personalization, start or dangling vector (uniform
    teleport, a dangling node's rank spread uniformly, power iteration from the uniform vector until the L1
    change is below N·``tol``). Unweighted (the pc/fci/granger/lingam heads), it runs here on the dense
    adjacency matrix (``pagerank_dense``), with the same operations in the same order as networkx's
    sparse-matrix iteration, so the same values bit for bit (``tests/test_graph_heads_pagerank.py``) without
    building a sparse matrix per call — up to ``DENSE_PAGERANK_MAX_NODES`` nodes: an iteration costs N² there
    against the edges' count in networkx (measured: 0.35 against 1.2 ms at 33 nodes, 1.3 against 1.6 at 200,
    25 against 3.8 at 1,000), so larger graphs go to networkx on a reversed view, the same values either way.
    Weighted (CausalRCA), networkx on a reversed copy: a node's weight sum there follows its edges' order,
    which the dense row sum would not."""
    if G.number_of_nodes() == 0:
        return {}
    if weight is None and G.number_of_nodes() <= DENSE_PAGERANK_MAX_NODES:
        nodes = list(G)
        index = {n: i for i, n in enumerate(nodes)}
        # the reversed graph's matrix: an edge u -> v of G is v -> u there
        src = [index[v] for u, v in G.edges()]
        dst = [index[u] for u, v in G.edges()]
        A = np.zeros((len(nodes), len(nodes)))
        A[src, dst] = 1.0
        x = pagerank_dense(A, alpha=alpha, max_iter=max_iter, tol=tol)
        return {str(k): v for k, v in zip(nodes, x.tolist())}
    R = nx.reverse_view(G) if weight is None else G.reverse(copy=True)
    try:
        pr = nx.pagerank(R, alpha=alpha, weight=weight, max_iter=max_iter, tol=tol)
    except nx.PowerIterationFailedConvergence as e:
        raise MethodError(f"PageRank did not converge in {max_iter} iterations: {e}") from e
    return {str(k): float(v) for k, v in pr.items()}


def pagerank_dense(A: np.ndarray, *, alpha: float = 0.85, max_iter: int = 1000, tol: float = 1e-10) -> np.ndarray:
    """PageRank of the graph with adjacency matrix ``A`` (``A[i, j]`` > 0: an edge i -> j of that weight),
    uniform teleport and dangling nodes' rank spread uniformly; MethodError past ``max_iter`` iterations.

    Each step is networkx's: x <- alpha·(x P + (Σ over dangling x)·p) + (1 − alpha)·p with P the rows of A
    divided by their sums and p uniform, until Σ|x − x_last| < N·tol. The operation order is kept so the
    values are networkx's bitwise: row i of P is A[i]·(1 / sum_i); x P accumulates each column over the rows
    in order (what the sparse transpose-times-vector does; the zero entries add exact zeros), as numpy's
    reduction over the first axis of a C-ordered array does; the dangling sum is a sequential Python sum."""
    N = A.shape[0]
    if N == 0:
        return np.zeros(0)
    S = A.sum(axis=1)
    out = S != 0
    S[out] = 1.0 / S[out]
    P = A * S[:, None]
    dangling = np.flatnonzero(~out)
    p = np.repeat(1.0 / N, N)
    x = np.repeat(1.0 / N, N)
    scratch = np.empty_like(P)
    for _ in range(max_iter):
        xlast = x
        np.multiply(x[:, None], P, out=scratch)
        x = alpha * (np.add.reduce(scratch, axis=0) + sum(x[dangling].tolist()) * p) + (1 - alpha) * p
        if np.absolute(x - xlast).sum() < N * tol:
            return x
    raise MethodError(f"PageRank did not converge in {max_iter} iterations")


def abs_correlation_with(X: np.ndarray, names: Sequence[str], target: str) -> dict[str, float]:
    """|Pearson correlation| of every column with column ``target``; 0 for a constant column."""
    names = list(names)
    if target not in names:
        raise MethodError(f"column {target!r} is not among the data's columns")
    Z = np.asarray(X, dtype=float)
    Z = Z - Z.mean(axis=0)
    norm = np.sqrt((Z**2).sum(axis=0))
    t = Z[:, names.index(target)]
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.abs(Z.T @ t) / (norm * norm[names.index(target)])
    r = np.where(np.isfinite(r), r, 0.0)
    return {n: float(min(v, 1.0)) for n, v in zip(names, r)}


def require_sli_node(G: nx.DiGraph, X: np.ndarray, names: Sequence[str], sli: str, method: str) -> None:
    """Stop unless the SLI is a node of ``G``, from which a symptom-driven walk starts.

    A graph builder leaves out constant and non-finite columns. A constant SLI means the symptom does not move
    in the window, so there is nothing to explain: an abstention (``NoAnswer``). An SLI without finite values is
    missing data: the method cannot run (``MethodError``).
    """
    if sli in G:
        return
    names = list(names)
    col = np.asarray(X, dtype=float)[:, names.index(sli)] if sli in names else np.empty(0)
    if len(col) and np.isfinite(col).all():
        raise NoAnswer(f"{method}: the SLI column {sli!r} is constant in the window; no symptom to explain")
    raise MethodError(f"{method}: the SLI column {sli!r} is missing or non-finite in the window; a walk from the "
                      "symptom cannot start")


def random_walk_head(
    G: nx.DiGraph,
    X: np.ndarray,
    names: Sequence[str],
    sli: str,
    *,
    steps: int = 10_000,
    rho: float = 0.2,
    seed: int = 0,
    similarity: Mapping[str, float] | None = None,
    method: str = "random walk",
) -> dict[str, float]:
    """Visit frequency of a seeded random walk of ``steps`` moves started at the SLI node.

    From node i with similarity s(i) (default: |corr(i, SLI)| over the rows of ``X``): to each cause j
    (predecessor) with weight s(j) ("forward", towards the root cause); to each effect j (successor) with weight
    ``rho`` * s(j) ("backward", to escape a wrong branch); to itself with weight max(0, s(i) − max over
    neighbours s(j)) (stay where the evidence peaks). A node whose weights are all zero stays put. Nodes never
    visited score 0. ``similarity`` replaces the default correlation (MicroCause passes partial correlations).
    ``method`` names the caller in the messages; the SLI outside ``G`` is handled by ``require_sli_node``.
    """
    require_sli_node(G, X, names, sli, method)
    if steps < 1 or rho < 0:
        raise MethodError(f"random walk: need steps >= 1 and rho >= 0, got steps={steps}, rho={rho}")
    sim = dict(similarity) if similarity is not None else abs_correlation_with(X, names, sli)
    nodes = list(G.nodes)
    index = {n: i for i, n in enumerate(nodes)}
    targets: list[list[int]] = []
    cumprob: list[list[float]] = []
    for n in nodes:
        causes = [c for c in G.predecessors(n) if c != n]
        effects = [e for e in G.successors(n) if e != n]
        nbr_sim = [sim.get(c, 0.0) for c in causes] + [sim.get(e, 0.0) for e in effects]
        w = [sim.get(c, 0.0) for c in causes] + [rho * sim.get(e, 0.0) for e in effects]
        to = [index[c] for c in causes] + [index[e] for e in effects]
        w.append(max(0.0, sim.get(n, 0.0) - max(nbr_sim, default=0.0)))
        to.append(index[n])
        wa = np.asarray(w, dtype=float)
        total = wa.sum()
        if not total > 0:
            wa, to = np.array([1.0]), [index[n]]
            total = 1.0
        targets.append([int(t) for t in to])
        cumprob.append(np.cumsum(wa / total).tolist())
    rng = np.random.default_rng(seed)
    visits = [0] * len(nodes)
    cur = index[sli]
    # Plain lists and bisect: the walk is sequential, and per-step numpy calls would dominate its cost. Each
    # node's targets get their last one repeated, so that bisect's one-past-the-end index needs no clamp.
    table = [(cp, cp[-1], [*to, to[-1]]) for cp, to in zip(cumprob, targets)]
    bisect_right = bisect.bisect_right
    for u in rng.random(steps).tolist():
        cp, last, to = table[cur]
        cur = to[bisect_right(cp, u * last)]
        visits[cur] += 1
    return {n: v / steps for n, v in zip(nodes, visits)}
