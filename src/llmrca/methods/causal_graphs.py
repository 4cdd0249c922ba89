"""Causal-graph builders shared by the graph-based metric methods.

Every builder takes a data matrix ``X`` (rows = time, columns = series) and the column ``names``, and returns a
``networkx.DiGraph`` whose edges point cause → effect. Shared conventions:

- Columns that cannot enter a correlation-based test (constant over the window, or holding non-finite values)
  are left out of discovery: they are not nodes of the graph, and ``G.graph["dropped"]`` lists them. Methods
  rank them last with score 0. (A constant column makes the correlation matrix singular and its Fisher-z test
  meaningless; it carries no evidence either way.)
- ``G.graph["builder"]`` names the builder; edges may carry ``pvalue`` (test evidence for the edge) and
  ``weight`` (a non-negative strength) where the algorithm defines one.
- Edge marks of PC's CPDAG and FCI's PAG become directed edges as follows (``mark(a)`` = the mark at a's end):
  exactly one arrowhead → one edge into the arrowhead (``a → b``, ``a o→ b``); arrowheads at both ends
  (``a ↔ b``: a hidden common cause, or a PC orientation conflict) → both directions; no arrowhead with a tail at
  one end and a circle at the other (``a —o b``: a is an ancestor of b) → ``a → b``; otherwise (``a — b``,
  ``a o—o b``: orientation unknown) → both directions. Both directions keep every dependency the algorithm found
  walkable by the graph heads instead of guessing one orientation.
- A step that fails or runs past ``timeout_s`` raises ``MethodError`` (never a partial or empty graph).
"""

from __future__ import annotations

import contextlib
import io
import math
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import networkx as nx
import numpy as np
from causallearn.utils.cit import CIT, CIT_Base, register_ci_test
from scipy.special import log_ndtr

from llmrca.errors import MethodError
from llmrca.methods.lingam_fast import direct_lingam
from llmrca.methods.pc_skeleton import stable_skeleton

_CIT_NAME = "llmrca-budgeted"
_SQRT2 = math.sqrt(2.0)
_LOG2 = math.log(2.0)


class BudgetExceeded(Exception):
    """Raised inside a library's search loop when the builder's time budget is spent."""


@dataclass(frozen=True)
class Usable:
    """The columns a correlation-based builder can use, and those it leaves out (with why)."""

    data: np.ndarray  # (n, k) float64, usable columns only
    names: list[str]
    dropped: dict[str, str]  # name -> reason

    def nothing_moves(self) -> bool:
        """No usable column, yet some column holds data (constant): the window shows nothing to blame, which
        is an abstention (``NoAnswer``); no data at all is a failure to run (``MethodError``)."""
        return not self.names and "constant" in self.dropped.values()


def usable_columns(X: np.ndarray, names: Sequence[str]) -> Usable:
    """Split columns into usable ones and constant / non-finite ones (see the module docstring)."""
    X = np.asarray(X, dtype=float)
    names = [str(n) for n in names]
    if X.ndim != 2 or X.shape[1] != len(names):
        raise MethodError(f"data matrix shape {X.shape} does not match {len(names)} column names")
    if len(set(names)) != len(names):
        raise MethodError("duplicated column names given to a graph builder")
    dropped: dict[str, str] = {}
    keep: list[int] = []
    for j, n in enumerate(names):
        col = X[:, j]
        if not np.isfinite(col).all():
            dropped[n] = "non-finite values"
        elif len(col) == 0 or np.ptp(col) <= 1e-12 * max(1.0, float(np.abs(col).max())):
            dropped[n] = "constant"
        else:
            keep.append(j)
    return Usable(X[:, keep], [names[j] for j in keep], dropped)


def _deadline(timeout_s: float | None) -> float | None:
    return None if timeout_s is None else time.monotonic() + float(timeout_s)


def _check_rows(n: int, need: int, what: str) -> None:
    if n < need:
        raise MethodError(f"{what} needs at least {need} rows in the window, got {n}")


# --- conditional-independence tests ------------------------------------------------------------------------


class BudgetedCIT(CIT_Base):
    """Conditional-independence test for causal-learn's searches, with a time budget and a record of evidence.

    ``fisherz`` is the Fisher-z partial-correlation test computed from one correlation matrix (the same
    statistic as causal-learn's, without its per-call overhead); ``chisq`` / ``gsq`` delegate to causal-learn's
    tests for discrete data. ``max_logp[(i, j)]`` keeps, per unordered pair, the largest natural-log p-value
    seen: for an edge the search kept, the weakest evidence it found against independence (in log space, so
    that p-values below 1e-308 still order).
    """

    def __init__(
        self, data: np.ndarray, inner: str = "fisherz", deadline: float | None = None, **_: object
    ) -> None:
        super().__init__(data)
        self.inner_name = inner
        self.method = f"llmrca-{inner}"  # causal-learn dispatches on .method; never 'mc_fisherz'
        self.deadline = deadline
        self.sample_size, self.num_features = data.shape
        self.cache: dict[tuple[int, int, tuple[int, ...]], float] = {}
        self.max_logp: dict[tuple[int, int], float] = {}
        if inner == "fisherz":
            self.corr = np.corrcoef(data.T) if data.shape[1] > 1 else np.ones((1, 1))
            self.inner = None
        elif inner in ("chisq", "gsq"):
            self.inner = CIT(data, inner)
        else:
            raise MethodError(f"unknown CI test {inner!r}; known: fisherz, chisq, gsq")

    def __call__(self, X: int, Y: int, condition_set: Sequence[int] | None = None) -> float:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise BudgetExceeded
        x, y = (int(X), int(Y)) if X < Y else (int(Y), int(X))
        S = tuple(sorted({int(s) for s in condition_set})) if condition_set is not None else ()
        key = (x, y, S)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        if self.inner is None:
            p, logp = self._fisherz(x, y, S)
        else:
            p = float(self.inner(x, y, list(S)))
            logp = math.log(p) if p > 0 else -math.inf
        self.cache[key] = p
        if logp > self.max_logp.get((x, y), -math.inf) or (x, y) not in self.max_logp:
            self.max_logp[(x, y)] = logp
        return p

    def _fisherz(self, x: int, y: int, S: tuple[int, ...]) -> tuple[float, float]:
        C = self.corr
        if not S:
            r = C[x, y]
        elif len(S) == 1:  # closed form of the first-order partial correlation (the most frequent test)
            z = S[0]
            den = (1.0 - C[x, z] ** 2) * (1.0 - C[y, z] ** 2)
            r = (C[x, y] - C[x, z] * C[y, z]) / math.sqrt(den) if den > 1e-300 else 0.0
        else:
            idx = np.array([x, y, *S])
            sub = C[idx[:, None], idx]
            try:
                inv = np.linalg.inv(sub)
            except np.linalg.LinAlgError:
                # Exactly collinear conditioning sets (e.g. two identical series): the pseudo-inverse gives the
                # partial correlation on the non-degenerate part instead of aborting the search.
                inv = np.linalg.pinv(sub)
            r = -inv[0, 1] / math.sqrt(abs(inv[0, 0] * inv[1, 1]) or 1.0)
        r = min(max(float(r), -1.0 + 1e-15), 1.0 - 1e-15)
        dof = self.sample_size - len(S) - 3
        if dof <= 0:
            raise MethodError(
                f"Fisher-z test with {len(S)} conditioning variable(s) needs more than {len(S) + 3} rows, "
                f"got {self.sample_size}"
            )
        stat = math.sqrt(dof) * abs(math.atanh(r))
        p = math.erfc(stat / _SQRT2)
        return p, (math.log(p) if p > 1e-300 else _LOG2 + float(log_ndtr(-stat)))


def _register_cit() -> None:
    register_ci_test(_CIT_NAME, BudgetedCIT)


# --- conversion of causal-learn graphs ---------------------------------------------------------------------

_TAIL, _ARROW, _CIRCLE = -1, 1, 2


def _marks_to_digraph(g: np.ndarray, names: list[str]) -> list[tuple[str, str]]:
    """Directed edges from causal-learn's endpoint matrix (``g[a, b]`` = mark at a's end of the a–b edge), pairs
    a < b in row order, as the module docstring's rules."""
    g = np.asarray(g)
    ma, mb = g, g.T  # ma[a, b] = mark at a's end, mb[a, b] = mark at b's end
    edge = np.triu((ma != 0) | (mb != 0), 1)
    fwd = ((mb == _ARROW) & (ma != _ARROW)) | ((ma == _TAIL) & (mb == _CIRCLE))  # a -> b only
    bwd = ((ma == _ARROW) & (mb != _ARROW)) | ((mb == _TAIL) & (ma == _CIRCLE))  # b -> a only
    out: list[tuple[str, str]] = []
    for a, b in np.argwhere(edge).tolist():
        if fwd[a, b]:
            out.append((names[a], names[b]))
        elif bwd[a, b]:
            out.append((names[b], names[a]))
        else:
            out.extend([(names[a], names[b]), (names[b], names[a])])
    return out


def _new_graph(builder: str, u: Usable) -> nx.DiGraph:
    G = nx.DiGraph(builder=builder, dropped=dict(u.dropped))
    G.add_nodes_from(u.names)
    return G


def _constraint_search(
    which: str,
    X: np.ndarray,
    names: Sequence[str],
    *,
    alpha: float,
    max_cond: int | None,
    ci_test: str,
    timeout_s: float | None,
    max_path_length: int = -1,
) -> nx.DiGraph:
    u = usable_columns(X, names)
    G = _new_graph(which, u)
    if len(u.names) < 2:
        return G
    if not 0 < alpha < 1:
        raise MethodError(f"{which}: alpha must be in (0, 1), got {alpha}")
    if max_cond is not None and max_cond < 0:
        raise MethodError(f"{which}: max_cond must be >= 0 or None, got {max_cond}")
    depth = u.data.shape[1] - 2 if max_cond is None else max_cond
    _check_rows(u.data.shape[0], (min(depth, u.data.shape[1] - 2) + 4) if ci_test == "fisherz" else 4, which.upper())
    _register_cit()
    data = u.data
    if ci_test in ("chisq", "gsq"):
        data = _as_codes(data)
    deadline = _deadline(timeout_s)
    try:
        # causal-learn's FCI prints its orientation steps; keep them off the user's terminal.
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            if which == "pc":
                cit = BudgetedCIT(data, ci_test, deadline)
                marks = _pc_stable(data, u.names, cit, alpha, max_cond)
            else:
                cit = BudgetedCIT(data, ci_test, deadline)
                marks = _fci(data, u.names, cit, alpha, max_cond, int(max_path_length))
    except BudgetExceeded:
        raise MethodError(
            f"{which.upper()} exceeded its time budget of {timeout_s:g} s on {len(u.names)} columns "
            f"(raise timeout_s or lower max_cond)"
        ) from None
    except MethodError:
        raise
    except Exception as e:  # a failure inside the library must not pass as an empty graph
        raise MethodError(f"{which.upper()} failed on {len(u.names)} columns: {type(e).__name__}: {e}") from e
    G.add_edges_from(_marks_to_digraph(np.asarray(marks), u.names))
    if which == "pc":
        idx = {n: i for i, n in enumerate(u.names)}
        for a, b in G.edges:
            i, j = sorted((idx[a], idx[b]))
            if (i, j) in cit.max_logp:
                G.edges[a, b]["pvalue"] = math.exp(cit.max_logp[(i, j)])
                G.edges[a, b]["log10_pvalue"] = cit.max_logp[(i, j)] / math.log(10.0)
    return G


def _pc_stable(data: np.ndarray, names: list[str], cit: BudgetedCIT, alpha: float, max_cond: int | None) -> np.ndarray:
    """PC-stable: the skeleton, colliders by causal-learn's ``uc_sepset`` (priority 2, as ``pc``'s default), then
    Meek's rules. The same steps and decisions as ``causallearn...PC.pc(stable=True, uc_rule=0, uc_priority=2,
    max_k=max_cond)``. With Fisher-z the skeleton is ``pc_skeleton.stable_skeleton`` (causal-learn's ``fas``
    decisions, every test of a depth batched over one correlation matrix; its evidence goes to ``cit.max_logp``);
    with the discrete tests it is causal-learn's ``fas``. ``pc``'s own skeleton loop keeps its removed edges in a
    list and so grows quadratically, and its orientation steps deep-copy the graph together with the CI test's
    cache; the orientation here runs on budgeted subclasses of causal-learn's graphs (``pc_orient``). Returns the
    CPDAG's endpoint matrix."""
    from llmrca.methods.pc_orient import budgeted_from_marks, budgeted_graph, orient

    if cit.inner is None:
        A, sep_sets, maxlogp = stable_skeleton(cit.corr, cit.sample_size, alpha, max_cond, cit.deadline)
        iu = np.argwhere(np.triu(A, 1))
        cit.max_logp.update(zip(map(tuple, iu.tolist()), maxlogp[iu[:, 0], iu[:, 1]].tolist()))
        cg = budgeted_from_marks(list(names), np.where(A, -1, 0), cit.deadline)
        empty = np.empty(1, dtype=object)
        empty[0] = [()]  # one shared record for the pairs removed at depth 0 (the orientation only reads it)
        cg.sepset[~A & ~np.eye(len(names), dtype=bool)] = empty
        if cit.deadline is not None and time.monotonic() > cit.deadline:
            raise BudgetExceeded
    else:
        from causallearn.graph.GraphNode import GraphNode
        from causallearn.utils.FAS import fas

        nodes = [GraphNode(n) for n in names]
        G, sep_sets, _ = fas(data, nodes, cit, alpha=float(alpha), depth=-1 if max_cond is None else int(max_cond),
                             stable=True, show_progress=False)
        # the orientation steps keep to the same budget as the CI tests (causal-learn's take none: pc_orient.py)
        cg = budgeted_graph(list(names), G, cit.deadline)
    for (x, y), S in sep_sets.items():
        cg.sepset[x, y] = [tuple(sorted(S))]
    return orient(cg, 2).G.graph


class _SepSets(dict):
    """FCI's separating sets: the stored ones, and the empty set for a pair the skeleton removed at depth 0 (what
    causal-learn's ``fas`` would have stored); ``get`` is all FCI's rules use."""

    def __init__(self, stored: dict, adjacent: np.ndarray) -> None:
        super().__init__(stored)
        self.adjacent = adjacent

    def get(self, key, default=None):
        if key in self:
            return self[key]
        x, y = key
        return set() if x != y and not self.adjacent[x, y] else default


def _fci(data: np.ndarray, names: list[str], cit: BudgetedCIT, alpha: float, max_cond: int | None,
         max_path_length: int) -> np.ndarray:
    """FCI (Spirtes, Glymour & Scheines 2000; the rules of Zhang 2008): causal-learn's ``fci`` step by step, on a
    budgeted graph (``pc_orient``), with two changes.

    - The skeleton is ``pc_skeleton.stable_skeleton`` for Fisher-z (causal-learn's ``fas`` decisions, batched).
    - The possible-D-SEP step tests conditioning sets of at most ``max_cond`` variables, as the order-bounded FCI
      does (pcalg's ``fci(m.max=)`` bounds every test, this step's included; causal-learn's bounds only the
      skeleton, and its possible-D-SEP step tests every subset: 2^|possible-D-SEP| tests per edge). With
      ``max_cond=None`` it is causal-learn's step.

    Orientation: causal-learn's rules R0–R10 in ``fci``'s order, each look at the graph checking the deadline.
    Returns the PAG's endpoint matrix."""
    from causallearn.graph.Endpoint import Endpoint
    from causallearn.search.ConstraintBased import FCI as F

    from llmrca.methods.pc_orient import budgeted_from_marks

    if cit.inner is None:
        A, stored, _ = stable_skeleton(cit.corr, cit.sample_size, alpha, max_cond, cit.deadline)
        sep = _SepSets(stored, A)
        cg = budgeted_from_marks(list(names), np.where(A, -1, 0), cit.deadline)
    else:
        from causallearn.graph.GraphNode import GraphNode
        from causallearn.utils.FAS import fas

        G, stored, _ = fas(data, [GraphNode(n) for n in names], cit, alpha=float(alpha), depth=-1 if max_cond is None else int(max_cond),
                           stable=True, show_progress=False)
        cg = budgeted_from_marks(list(names), G.graph, cit.deadline, nodes=G.get_nodes())
        sep = _SepSets(stored, G.graph != 0)
    graph = cg.G
    nodes = graph.nodes
    for i, node in enumerate(nodes):
        node.add_attribute("id", i)
    F.reorientAllWith(graph, Endpoint.CIRCLE)
    F.rule0(graph, nodes, sep, None, False)
    _remove_by_possible_dsep(graph, cit, alpha, sep, max_cond)
    F.reorientAllWith(graph, Endpoint.CIRCLE)
    F.rule0(graph, nodes, sep, None, False)
    change = True
    while change:
        change = F.rulesR1R2cycle(graph, None, False, False)
        change = F.ruleR3(graph, sep, None, change, False)
        if change:
            change = F.ruleR4B(graph, max_path_length, data, cit, alpha, sep, change, None, False)
        change = F.ruleR5(graph, change, False)
        change = F.ruleR6(graph, change, False)
        change = F.ruleR7(graph, change, False)
        change = F.rule8(graph, nodes, change)
        change = F.rule9(graph, nodes, change)
        change = F.rule10(graph, change)
    return graph.graph


def _remove_by_possible_dsep(graph, cit: BudgetedCIT, alpha: float, sep: dict, max_cond: int | None) -> None:
    """FCI's second adjacency pass: an edge a *-* b goes when a and b are independent given some set of 2 to
    ``max_cond`` nodes (None: any size) of Possible-D-SEP(a, b), or failing that of Possible-D-SEP(b, a), that is
    not already within a's or b's adjacencies; the first such set (by size, then in index order of the
    possible-D-SEP list) is recorded. Possible-D-SEP is causal-learn's ``getPossibleDsep``, computed on the marks
    matrix (``fci_pdsep``)."""
    from itertools import combinations

    from llmrca.methods.fci_pdsep import PossibleDsep

    index = graph.get_node_map()
    pdsep = PossibleDsep(graph)
    for edge in graph.get_graph_edges():
        if cit.deadline is not None and time.monotonic() > cit.deadline:
            raise BudgetExceeded
        a, b = edge.get_node1(), edge.get_node2()
        for first, second in ((a, b), (b, a)):
            pds = pdsep(index[first], index[second], -1)
            adj_a, adj_b = set(graph.get_adjacent_nodes(a)), set(graph.get_adjacent_nodes(b))
            top = len(pds) if max_cond is None else min(len(pds), max_cond)
            removed = False
            for size in range(2, top + 1):
                for choice in combinations(range(len(pds)), size):
                    S = {pds[c] for c in choice}
                    if S <= adj_a or S <= adj_b:
                        continue
                    cond = tuple(index[pds[c]] for c in choice)
                    if cit(index[a], index[b], cond) > alpha:
                        graph.remove_edge(edge)
                        pdsep.refresh()
                        sep[(index[a], index[b])] = set(cond)
                        removed = True
                        break
                if removed:
                    break
            if removed:
                break


def _as_codes(data: np.ndarray) -> np.ndarray:
    """Integer codes per column, as causal-learn's discrete tests expect (values already discrete)."""
    out = np.empty(data.shape, dtype=np.int64)
    for j in range(data.shape[1]):
        _, out[:, j] = np.unique(data[:, j], return_inverse=True)
    return out


def pc_graph(
    X: np.ndarray,
    names: Sequence[str],
    *,
    alpha: float = 0.05,
    max_cond: int | None = 3,
    ci_test: str = "fisherz",
    seed: int = 0,
    timeout_s: float | None = None,
) -> nx.DiGraph:
    """PC-stable (causal-learn's decisions; Fisher-z skeleton batched: ``pc_skeleton``) with conditioning sets of at
    most ``max_cond`` variables (None = unbounded).

    ``seed`` is accepted for a uniform builder signature; PC-stable is deterministic. Edge ``pvalue`` = largest
    p-value of the CI tests run on the pair (all ≤ ``alpha`` for a kept edge), ``log10_pvalue`` its log10
    (finite even where ``pvalue`` underflows to 0).
    """
    del seed
    return _constraint_search("pc", X, names, alpha=alpha, max_cond=max_cond, ci_test=ci_test, timeout_s=timeout_s)


def fci_graph(
    X: np.ndarray,
    names: Sequence[str],
    *,
    alpha: float = 0.05,
    max_cond: int | None = 3,
    max_path_length: int = -1,
    ci_test: str = "fisherz",
    seed: int = 0,
    timeout_s: float | None = None,
) -> nx.DiGraph:
    """FCI (causal-learn's rules on the batched skeleton: ``_fci``); ``max_cond`` bounds the conditioning sets of
    the adjacency search and of the possible-D-SEP step (None = unbounded: causal-learn's ``fci``),
    ``max_path_length`` the discriminating paths (-1 = unbounded). ``seed`` is accepted for a uniform signature;
    FCI is deterministic."""
    del seed
    return _constraint_search(
        "fci", X, names, alpha=alpha, max_cond=max_cond, ci_test=ci_test, timeout_s=timeout_s,
        max_path_length=max_path_length,
    )


# --- Granger -----------------------------------------------------------------------------------------------


def granger_pvalues(data: np.ndarray, lag: int, deadline: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pairwise Granger-causality SSR F-tests at one lag, all pairs at once.

    ``P[i, j]`` is the p-value of "column i Granger-causes column j": the F-test of adding i's ``lag`` lags to the
    regression of j on a constant and its own ``lag`` lags, on the rows where all lags exist — the statistic of
    statsmodels' ``grangercausalitytests`` (``ssr_ftest``). Returns (F, P); the diagonal is NaN.

    All pairs share one lagged design: per block of targets, one QR of each target's own lags, then every cause's
    normal equations from the lag columns' Gram matrix minus their projection (Frisch–Waugh). ``deadline``
    (``time.monotonic()`` seconds) is checked between blocks (``BudgetExceeded``).
    """
    from scipy import stats

    n, k = data.shape
    m = n - lag  # usable rows
    df_resid = m - 2 * lag - 1
    if df_resid < 1:
        raise MethodError(f"Granger test at lag {lag} needs more than {3 * lag + 1} rows, got {n}")
    y = data[lag:]  # (m, k)
    lags = np.stack([data[lag - t : n - t] for t in range(1, lag + 1)], axis=2)  # (m, k, lag)
    # Every design holds the constant, so centring y and the lags over the m rows changes no fit (and keeps the
    # normal equations below well conditioned).
    y = y - y.mean(axis=0)
    lags = lags - lags.mean(axis=0)
    flat = lags.reshape(m, k * lag)  # column i*lag + t = series i at lag t+1
    own_gram = np.einsum("mkl,mkh->klh", lags, lags)  # (k, lag, lag): L_i' L_i
    F = np.full((k, k), np.nan)
    for s in range(0, k, _GRANGER_BLOCK):
        if deadline is not None and time.monotonic() > deadline:
            raise BudgetExceeded
        js = np.arange(s, min(k, s + _GRANGER_BLOCK))
        # Restricted fits (own lags; the constant is the centring): an orthonormal basis Q_j per target.
        Q, _ = np.linalg.qr(lags[:, js, :].transpose(1, 0, 2))  # (b, m, lag)
        yj = y[:, js].T  # (b, m)
        yr = yj - np.einsum("bmq,bq->bm", Q, np.einsum("bmq,bm->bq", Q, yj))
        ssr_r = np.einsum("bm,bm->b", yr, yr)
        # Frisch–Waugh: adding i's lags explains rhs' gram^-1 rhs of yr, with W_i = L_i minus its projection on
        # Q_j: gram = L_i'L_i - (Q_j'L_i)'(Q_j'L_i), rhs = L_i'yr (yr is already orthogonal to Q_j).
        P = np.einsum("bmq,mc->bqc", Q, flat).reshape(len(js), lag, k, lag)  # (b, q, i, t)
        gram = own_gram[None] - np.einsum("bqil,bqih->bilh", P, P)  # (b, k, lag, lag)
        rhs = (yr @ flat).reshape(len(js), k, lag)  # (b, k, lag)
        gram[np.arange(len(js)), js] = np.eye(lag)  # i = j: no test (NaN below); keeps the batch non-singular
        coef = _batched_solve(gram.reshape(-1, lag, lag), rhs.reshape(-1, lag)).reshape(len(js), k, lag)
        explained = np.einsum("bkl,bkl->bk", coef, rhs)
        ssr_u = np.maximum(ssr_r[:, None] - explained, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            f = ((ssr_r[:, None] - ssr_u) / lag) / (ssr_u / df_resid)  # (b targets, k causes)
        f[np.arange(len(js)), js] = np.nan
        F[:, js] = f.T
    with np.errstate(invalid="ignore"):
        P = stats.f.sf(F, lag, df_resid)
    return F, P


_GRANGER_BLOCK = 64  # targets per batch: (64, 1000, lag, lag) grams


def _batched_solve(gram: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Least-squares coefficients per batch item; singular Gram matrices (a series collinear with the target's
    own lags) get the minimum-norm solution, i.e. no extra explanatory power."""
    try:
        return np.linalg.solve(gram, rhs[..., None])[..., 0]
    except np.linalg.LinAlgError:
        return np.einsum("klh,kh->kl", np.linalg.pinv(gram), rhs)


def granger_graph(
    X: np.ndarray,
    names: Sequence[str],
    *,
    max_lag: int = 2,
    alpha: float = 0.05,
    family: str = "pair",
    seed: int = 0,
    timeout_s: float | None = None,
) -> nx.DiGraph:
    """Pairwise Granger causality: an edge i → j when the SSR F-test of some lag 1..``max_lag`` rejects "i does
    not Granger-cause j". Edge ``pvalue`` = smallest p-value over the lags, ``weight`` = its F statistic.
    ``seed`` is accepted for a uniform signature (the tests are deterministic).

    ``family`` sets the level each test is held to. ``"pair"`` (the study's): every (cause, target, lag) test at
    ``alpha``, so a target of k columns gets about ``alpha``·(k − 1) false causes and the false edges grow as
    ``alpha``·k². ``"target"``: Bonferroni over each target's family of (k − 1)·``max_lag`` tests (its candidate
    causes at every lag), so the expected number of false causes per target stays at most ``alpha`` at every
    column count."""
    del seed
    if family not in ("pair", "target"):
        raise MethodError(f"granger: family must be 'pair' or 'target', got {family!r}")
    u = usable_columns(X, names)
    G = _new_graph("granger", u)
    if len(u.names) < 2:
        return G
    if max_lag < 1:
        raise MethodError(f"granger: max_lag must be >= 1, got {max_lag}")
    _check_rows(u.data.shape[0], 3 * max_lag + 2, "Granger")
    deadline = _deadline(timeout_s)
    best_p = np.full((len(u.names),) * 2, np.inf)
    best_f = np.zeros_like(best_p)
    for lag in range(1, max_lag + 1):
        try:
            F, P = granger_pvalues(u.data, lag, deadline)
        except BudgetExceeded:
            raise MethodError(f"Granger exceeded its time budget of {timeout_s:g} s on {len(u.names)} columns") from None
        better = np.nan_to_num(P, nan=np.inf) < best_p
        best_p = np.where(better, P, best_p)
        best_f = np.where(better, F, best_f)
        if deadline is not None and time.monotonic() > deadline:
            raise MethodError(f"Granger exceeded its time budget of {timeout_s:g} s on {len(u.names)} columns")
    names_ = u.names
    level = alpha if family == "pair" else alpha / ((len(names_) - 1) * max_lag)
    ii, jj = np.nonzero((best_p < level) & ~np.eye(len(names_), dtype=bool))
    G.add_edges_from((names_[i], names_[j], {"pvalue": p, "weight": f}) for i, j, p, f in
                     zip(ii.tolist(), jj.tolist(), best_p[ii, jj].tolist(), best_f[ii, jj].tolist()))
    return G


# --- LiNGAM ------------------------------------------------------------------------------------------------


def lingam_graph(
    X: np.ndarray,
    names: Sequence[str],
    *,
    seed: int = 0,
    threshold: float = 0.01,
    timeout_s: float | None = None,
) -> nx.DiGraph:
    """DirectLiNGAM (``llmrca.methods.lingam_fast.direct_lingam``): the causal order by the pairwise
    likelihood-ratio measure, then each variable's coefficients on its predecessors by the adaptive lasso (BIC),
    as lingam's ``DirectLiNGAM`` and ``predict_adaptive_lasso`` compute them. An edge j → i when
    |B[i, j]| > ``threshold``; ``weight`` = |B[i, j]|. ``seed`` is accepted for a uniform signature (the pwling
    search is deterministic).

    DirectLiNGAM needs more rows than variables, in both of its steps: each step of the order search regresses
    the chosen variable out of the rest, so after n − 1 steps (n rows, centred) every residual is zero and the
    rest of the order is arbitrary; and the adaptive lasso weighs each predictor by its OLS coefficient on all
    earlier variables, which has no unique solution past n − 1 predictors. So fewer than ``columns + 2`` rows
    raise MethodError before any work, naming the column count the window can handle (n − 2).
    """
    del seed
    u = usable_columns(X, names)
    G = _new_graph("lingam", u)
    if len(u.names) < 2:
        return G
    n, k = u.data.shape
    if n < max(5, k + 2):  # refused before any work: past n - 1 steps the residuals are spent (docstring)
        raise MethodError(f"LiNGAM on {k} columns needs at least {max(5, k + 2)} rows in the window, got {n}: "
                          f"with {n} rows it handles at most {max(0, n - 2)} columns (a wider window or fewer "
                          "columns)")
    deadline = _deadline(timeout_s)
    try:
        _, B = direct_lingam(u.data, deadline=deadline)  # llmrca.methods.lingam_fast
    except BudgetExceeded:
        raise MethodError(f"LiNGAM exceeded its time budget of {timeout_s:g} s on {k} columns") from None
    except MethodError:
        raise
    except Exception as e:
        raise MethodError(f"LiNGAM failed on {k} columns: {type(e).__name__}: {e}") from e
    W = np.abs(B)
    ii, jj = np.nonzero(W > threshold)  # row-major: the edges in the order the double loop over (i, j) gave
    G.add_edges_from((u.names[j], u.names[i], {"weight": w}) for i, j, w in
                     zip(ii.tolist(), jj.tolist(), W[ii, jj].tolist()))
    return G


# --- PCMCI -------------------------------------------------------------------------------------------------


def pcmci_graph(
    X: np.ndarray,
    names: Sequence[str],
    *,
    tau_min: int = 1,
    tau_max: int = 2,
    pc_alpha: float = 0.05,
    alpha_level: float = 0.05,
    max_conds_dim: int | None = 3,
    seed: int = 0,
    timeout_s: float | None = None,
) -> nx.DiGraph:
    """PCMCI (Runge et al. 2019; tigramite) with the ParCorr partial-correlation test.

    Links at lags ``tau_min``..``tau_max`` significant at ``alpha_level`` after the MCI step become edges i → j: a lagged
    link i(t−τ) → j(t) points forward in time; a contemporaneous ``-->`` keeps its direction, an unoriented or
    conflicting one (``o-o``, ``x-x``) gives both directions. Edge ``weight`` = the largest |partial correlation|
    over the significant lags, ``pvalue`` = the smallest p-value, ``lag`` = the lag of the strongest link.
    ``max_conds_dim`` bounds the condition-selection (PC1) depth. The default ``tau_min=1`` learns lagged links
    only, as PCMCI was designed (its MCI step does not prune contemporaneous links against each other: with
    ``tau_min=0`` nearly every correlated pair becomes a contemporaneous link). ``seed`` is accepted for a uniform signature.
    """
    del seed
    u = usable_columns(X, names)
    G = _new_graph("pcmci", u)
    if len(u.names) < 2:
        return G
    if not 0 <= tau_min <= tau_max or tau_max < 1:
        raise MethodError(f"pcmci: need 0 <= tau_min <= tau_max and tau_max >= 1, got {tau_min}, {tau_max}")
    n, k = u.data.shape
    _check_rows(n, 2 * tau_max + (max_conds_dim or k) + 6, "PCMCI")
    deadline = _deadline(timeout_s)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from tigramite.data_processing import DataFrame
            from tigramite.pcmci import PCMCI

            test = _budgeted_parcorr(deadline)
            pcmci = PCMCI(dataframe=DataFrame(u.data, var_names=u.names), cond_ind_test=test, verbosity=0)
            res = pcmci.run_pcmci(tau_min=tau_min, tau_max=tau_max, pc_alpha=pc_alpha, alpha_level=alpha_level,
                                  max_conds_dim=max_conds_dim)
    except BudgetExceeded:
        raise MethodError(f"PCMCI exceeded its time budget of {timeout_s:g} s on {k} columns") from None
    except Exception as e:
        raise MethodError(f"PCMCI failed on {k} columns: {type(e).__name__}: {e}") from e
    graph, val, pmat = res["graph"], res["val_matrix"], res["p_matrix"]
    for i in range(k):
        for j in range(k):
            links = []
            for tau in range(tau_min, tau_max + 1):
                mark = graph[i, j, tau]
                if mark == "":
                    continue
                if tau == 0 and (i == j or mark == "<--"):
                    continue  # a contemporaneous j --> i is recorded from the (j, i) entry
                links.append((abs(float(val[i, j, tau])), float(pmat[i, j, tau]), tau))
            if i == j or not links:
                continue
            w, _, tau = max(links)
            G.add_edge(u.names[i], u.names[j], weight=w, pvalue=min(p for _, p, _ in links), lag=tau)
    return G


def _budgeted_parcorr(deadline: float | None):
    """tigramite's ParCorr with a time budget and its tests answered from one correlation matrix.

    PCMCI runs every test on the same samples (``cut_off='2xtau_max'``: rows 2·τmax … T−1), so the partial
    correlation of X(t−τx) and Y(t) given Z is a function of the correlation matrix of the lagged series
    (every variable at lags 0 … 2·τmax) over those rows: the residual covariance after projecting on Z is
    ``S_ab − S_aZ S_ZZ⁺ S_Zb`` (the pseudo-inverse gives the least-squares projection that tigramite's residual
    regression computes, collinear conditions included). Computing that matrix once replaces tigramite's per-test
    array construction, hashing and regressions, which were > 90 % of PCMCI's time; the statistic, the Student-t
    p-value (T − dim degrees of freedom) and the handling of constant components are tigramite's. Tests in any
    other layout fall back to tigramite's own path (``_residual_corr``: centre, one least-squares solve for X
    and Y, correlate).
    """
    from scipy.special import stdtr
    from tigramite.independence_tests.parcorr import ParCorr

    class _BudgetedParCorr(ParCorr):
        _lagged: tuple[int, np.ndarray, np.ndarray, int, int] | None = None  # (τmax, corr, constant, rows, width)

        def run_test(self, X, Y, Z=None, tau_max=0, cut_off="2xtau_max", alpha_or_thres=None):
            if deadline is not None and time.monotonic() > deadline:
                raise BudgetExceeded
            fast = (cut_off == "2xtau_max" and len(X) == 1 and len(Y) == 1 and self.dataframe is not None
                    and self.dataframe.mask is None and self.dataframe.analysis_mode == "single"
                    and self.significance == "analytic")
            if not fast:
                return super().run_test(X, Y, Z=Z, tau_max=tau_max, cut_off=cut_off, alpha_or_thres=alpha_or_thres)
            C, const, rows, width = self._lagged_corr(int(tau_max))

            def col(node: tuple[int, int]) -> int:
                var, lag = int(node[0]), -int(node[1])
                if not 0 <= lag < width:
                    raise ValueError(f"lag {-lag} outside 0..{width - 1}")
                return var * width + lag

            x, y = col(X[0]), col(Y[0])
            zs = list(dict.fromkeys(col(n) for n in (Z or [])))
            zs = [z for z in zs if z not in (x, y) and not const[z]]
            if const[x] or const[y]:
                val, pval = 0.0, 1.0
            else:
                val = self._partial_corr(C, x, y, zs)
                pval = self.get_analytic_significance(val, rows, 2 + len(zs), None)
            if alpha_or_thres is None:
                return val, pval
            return val, pval, bool(pval <= alpha_or_thres)

        def _lagged_corr(self, tau_max: int) -> tuple[np.ndarray, np.ndarray, int, int]:
            if self._lagged is not None and self._lagged[0] == tau_max:
                return self._lagged[1:]
            data = np.asarray(self.dataframe.values[0], dtype=float)
            T, N = data.shape
            width, start = 2 * tau_max + 1, 2 * tau_max
            rows = T - start
            if rows < 3:
                raise MethodError(f"PCMCI needs more than {start + 2} rows at tau_max={tau_max}, got {T}")
            # column var·width + lag holds var(t − lag) for t = start … T−1
            L = np.stack([data[start - lag: T - lag] for lag in range(width)], axis=2).reshape(rows, N * width)
            L = L - L.mean(axis=0)
            sd = np.sqrt((L * L).mean(axis=0))
            const = sd == 0.0
            L = L / np.where(const, 1.0, sd)
            C = (L.T @ L) / rows
            self._lagged = (tau_max, C, const, rows, width)
            return C, const, rows, width

        @staticmethod
        def _partial_corr(C: np.ndarray, x: int, y: int, zs: list[int]) -> float:
            if not zs:
                return float(C[x, y])
            if len(zs) == 1:  # closed form of the first-order partial correlation (most PC1 tests)
                z = zs[0]
                rxx, ryy = 1.0 - C[x, z] ** 2, 1.0 - C[y, z] ** 2
                rxy = C[x, y] - C[x, z] * C[y, z]
            else:
                idx = [x, y, *zs]
                sub = C[idx][:, idx]
                B, D = sub[:2, 2:], sub[2:, 2:]
                try:
                    L = np.linalg.cholesky(D)
                    W = np.linalg.solve(L, B.T)  # B D⁻¹ Bᵀ = (L⁻¹Bᵀ)ᵀ(L⁻¹Bᵀ)
                    R = sub[:2, :2] - W.T @ W
                except np.linalg.LinAlgError:  # collinear conditions: the least-squares projection
                    R = sub[:2, :2] - B @ np.linalg.pinv(D, hermitian=True) @ B.T
                rxx, ryy, rxy = R[0, 0], R[1, 1], R[0, 1]
            den = math.sqrt(max(float(rxx) * float(ryy), 0.0))
            return float(rxy) / den if den > 1e-12 else 0.0

        def get_dependence_measure(self, array, xyz, data_type=None):
            if deadline is not None and time.monotonic() > deadline:
                raise BudgetExceeded
            return _residual_corr(array)

        def get_analytic_significance(self, value, T, dim, xyz):
            deg_f = T - dim
            if deg_f < 1:
                return np.nan
            if abs(abs(value) - 1.0) <= sys.float_info.min:
                return 0.0
            t = abs(value) * math.sqrt(deg_f / (1.0 - value * value))
            return 2.0 * float(stdtr(deg_f, -t))

    return _BudgetedParCorr(significance="analytic")


def _residual_corr(array: np.ndarray) -> float:
    """Partial correlation of rows 0 and 1 of ``array`` given the rest (scale-invariant: centre, regress X and
    Y on Z in one least-squares solve, correlate the residuals)."""
    a = array - array.mean(axis=1, keepdims=True)
    xy = a[:2].T
    if a.shape[0] > 2:
        Z = a[2:].T
        xy = xy - Z @ np.linalg.lstsq(Z, xy, rcond=None)[0]
    x, y = xy[:, 0] - xy[:, 0].mean(), xy[:, 1] - xy[:, 1].mean()
    den = math.sqrt(float(x @ x) * float(y @ y))
    return float(x @ y) / den if den > 0 else 0.0
