"""PC-stable's adjacency search with Fisher-z tests, batched: the skeleton of Spirtes, Glymour & Scheines' PC
(order-independent form of Colombo & Maathuis 2014), with every test of a depth answered from one correlation
matrix at once.

The search is the one causal-learn's ``fas(stable=True)`` runs, decision for decision:

- depth d = 0, 1, ... while some node has more than d + 1 neighbours and d ≤ ``max_cond`` (the order-bounded PC:
  conditioning sets of at most ``max_cond`` variables; None = unbounded);
- at depth d, on the adjacencies frozen at the start of the depth, every ordered pair (x, y) of neighbours is
  tested given every d-subset of adj(x) \\ {y} (so each edge from both ends); the edge goes when any test gives
  p > ``alpha``, after the whole depth;
- the separating set recorded for a removed pair is the union of every separating set found for it at that depth,
  from both ends (causal-learn's record, which its collider step reads);
- each pair's largest log p-value over all its tests is kept (``BudgetedCIT.max_logp``: the weakest evidence
  for a kept edge).

What differs is how: depth 0 is one matrix operation on the correlation matrix; at depth d ≥ 1 the (x, y, S)
triples of each node are built as index arrays and their partial correlations computed in batches (the closed
form at d = 1; at d ≥ 2 −P₀₁/√(P₀₀P₁₁) of the inverse P of the (d+2)×(d+2) correlation submatrix, numpy's
batched inverse, the same LAPACK call ``BudgetedCIT`` makes per test; a singular batch falls back to the
pseudo-inverse item by item as it does). The deadline is checked at every node and between batches, so a budget
is overrun by at most one batch (~64k tests, tens of milliseconds). ``tests/test_pc_skeleton.py`` compares graphs,
separating sets and p-values with causal-learn's ``fas`` and its ``fisherz``.
"""

from __future__ import annotations

import math
import time
from functools import cache
from itertools import combinations

import numpy as np
from scipy.special import erfc, log_ndtr

from llmrca.errors import MethodError

_BATCH = 1 << 16
_SQRT2 = math.sqrt(2.0)
_LOG2 = math.log(2.0)


def _check(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        from llmrca.methods.causal_graphs import BudgetExceeded

        raise BudgetExceeded


@cache
def _combos(m: int, d: int) -> np.ndarray:
    """Every d-subset of range(m), in itertools order, as a (C(m, d), d) index array."""
    if d > m:
        return np.empty((0, d), dtype=np.intp)
    return np.array(list(combinations(range(m), d)), dtype=np.intp).reshape(-1, d)


def fisherz_logp(C: np.ndarray, n: int, idx: np.ndarray) -> np.ndarray:
    """Natural-log Fisher-z p-values of the tests ``idx`` (rows x, y, s1..sd) from correlation matrix ``C`` over
    ``n`` rows: the statistic and p-value of ``BudgetedCIT._fisherz`` (and so causal-learn's ``fisherz``)."""
    d = idx.shape[1] - 2
    x, y = idx[:, 0], idx[:, 1]
    if d == 0:
        r = C[x, y]
    elif d == 1:
        z = idx[:, 2]
        cxz, cyz = C[x, z], C[y, z]
        den = (1.0 - cxz**2) * (1.0 - cyz**2)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.where(den > 1e-300, (C[x, y] - cxz * cyz) / np.sqrt(np.where(den > 1e-300, den, 1.0)), 0.0)
    else:
        sub = C[idx[:, :, None], idx[:, None, :]]
        try:
            inv = np.linalg.inv(sub)
        except np.linalg.LinAlgError:
            inv = np.empty_like(sub)
            for t in range(len(sub)):
                try:
                    inv[t] = np.linalg.inv(sub[t])
                except np.linalg.LinAlgError:
                    inv[t] = np.linalg.pinv(sub[t])
        den = np.abs(inv[:, 0, 0] * inv[:, 1, 1])
        r = -inv[:, 0, 1] / np.sqrt(np.where(den == 0, 1.0, den))
    r = np.clip(r, -1.0 + 1e-15, 1.0 - 1e-15)
    dof = n - d - 3
    if dof <= 0:
        raise MethodError(f"Fisher-z test with {d} conditioning variable(s) needs more than {d + 3} rows, got {n}")
    stat = math.sqrt(dof) * np.abs(np.arctanh(r))
    p = erfc(stat / _SQRT2)
    with np.errstate(divide="ignore"):
        return np.where(p > 1e-300, np.log(np.where(p > 1e-300, p, 1.0)), _LOG2 + log_ndtr(-stat))


def stable_skeleton(
    C: np.ndarray, n: int, alpha: float, max_cond: int | None, deadline: float | None = None
) -> tuple[np.ndarray, dict[tuple[int, int], set[int]], np.ndarray]:
    """PC-stable's skeleton from the correlation matrix ``C`` of ``n`` rows (module docstring).

    Returns (adjacency: bool (k, k) symmetric; the separating sets of the pairs removed at depth ≥ 1, keyed by both
    (x, y) and (y, x) as causal-learn's ``fas`` returns them — a non-adjacent pair without an entry was removed at
    depth 0 and its set is empty (not stored: half a million pairs at 1,000 columns); the max log p-value per
    pair: (k, k) symmetric, -inf where no test ran).
    """
    k = C.shape[0]
    log_alpha = math.log(alpha)
    A = ~np.eye(k, dtype=bool)
    maxlogp = np.full((k, k), -np.inf)
    sep: dict[tuple[int, int], set[int]] = {}
    limit = math.inf if max_cond is None else max_cond
    depth = -1
    while k > 1 and int(A.sum(axis=1).max()) - 1 > depth and depth < limit:
        depth += 1
        _check(deadline)
        if depth == 0:
            iu = np.argwhere(np.triu(A, 1))
            lp = fisherz_logp(C, n, iu)
            maxlogp[iu[:, 0], iu[:, 1]] = lp
            gone = iu[lp > log_alpha]
            A[gone[:, 0], gone[:, 1]] = A[gone[:, 1], gone[:, 0]] = False
            continue
        frozen = A.copy()
        indep: list[np.ndarray] = []  # rows (min(x, y), max(x, y), s1..sd) of the tests that gave p > alpha
        pending: list[np.ndarray] = []
        size = 0

        def run(batch: list[np.ndarray], indep: list[np.ndarray] = indep) -> None:
            idx = np.concatenate(batch)
            lp = fisherz_logp(C, n, idx)
            a, b = np.minimum(idx[:, 0], idx[:, 1]), np.maximum(idx[:, 0], idx[:, 1])
            np.maximum.at(maxlogp, (a, b), lp)
            hit = lp > log_alpha
            if hit.any():
                indep.append(np.column_stack([a[hit], b[hit], idx[hit, 2:]]))
            _check(deadline)

        for x in range(k):
            _check(deadline)
            nb = np.flatnonzero(frozen[x])
            m = len(nb)
            if m - 1 < depth:
                continue
            # others[i] = nb without nb[i]; the tests of (x, nb[i]) condition on its depth-subsets
            others = np.broadcast_to(nb, (m, m))[~np.eye(m, dtype=bool)].reshape(m, m - 1)
            S = others[:, _combos(m - 1, depth)]  # (m, C(m-1, d), d)
            c = S.shape[1]
            idx = np.empty((m * c, depth + 2), dtype=np.intp)
            idx[:, 0] = x
            idx[:, 1] = np.repeat(nb, c)
            idx[:, 2:] = S.reshape(m * c, depth)
            for s in range(0, len(idx), _BATCH):
                pending.append(idx[s: s + _BATCH])
                size += len(pending[-1])
                if size >= _BATCH:
                    run(pending)
                    pending, size = [], 0
        if pending:
            run(pending)
        if indep:
            rows = np.concatenate(indep).astype(np.int64)
            # one key (a, b, s) per conditioning variable of an independence, deduplicated: the union per pair
            keys = np.unique((np.repeat(rows[:, 0] * k + rows[:, 1], depth) * k) + rows[:, 2:].reshape(-1))
            pair, var = np.divmod(keys, k)
            pairs, first = np.unique(pair, return_index=True)
            a, b = np.divmod(pairs, k)
            A[a, b] = A[b, a] = False
            vals, bounds = var.tolist(), [*first.tolist(), len(var)]
            for t, (x, y) in enumerate(zip(a.tolist(), b.tolist())):
                if t % 4096 == 0:
                    _check(deadline)
                sv = set(vals[bounds[t]: bounds[t + 1]])
                sep[(x, y)] = sv
                sep[(y, x)] = set(sv)
    maxlogp = np.maximum(maxlogp, maxlogp.T)
    return A, sep, maxlogp
