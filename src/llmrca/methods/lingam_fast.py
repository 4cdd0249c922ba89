"""DirectLiNGAM (Shimizu et al., JMLR 2011) with the pairwise likelihood-ratio measure (Hyvärinen & Smith,
JMLR 2013) and adaptive-lasso pruning (Zou 2006) of the coefficients, in numpy only.

It computes what ``lingam.DirectLiNGAM(measure="pwling")`` computes without prior knowledge — the same causal
order and the same adjacency matrix (``tests/test_lingam_fast.py`` checks both against the package) — in a
fraction of the time:

- **Causal order.** At each step the most exogenous remaining variable is the one with the smallest
  Σ_j min(0, ΔI(i, j))², ΔI(i, j) = H(x_j) + H(r_i←j) − H(x_i) − H(r_j←i), with H the maximum-entropy
  approximation of differential entropy (Hyvärinen 1998) of a standardised variable. All pairs of a step are
  evaluated at once: with z the standardised variables and c_ij their correlation, the standardised residual
  of z_i regressed on z_j is (z_i − c_ij z_j) / √(1 − c_ij²), so one correlation matrix and one broadcast give
  every H(r_i←j). The chosen variable is then regressed out of all remaining ones in one rank-one update.
  log cosh is evaluated as |u| + log1p(e^(−2|u|)) − log 2, which cannot overflow (``np.log(np.cosh(u))``
  overflows to inf for |u| > 710 and turns the measure into NaN).
- **Coefficients.** For the variable at position p of the order, its coefficients on the p variables before
  it by the adaptive lasso with the lasso's BIC path selection: ordinary least squares on the standardised
  variables gives weights w = |β_OLS|; the lasso path of the target on the weighted predictors is traced by
  least-angle regression with the lasso modification (Efron et al., Ann. Statist. 2004); the path point with
  the smallest BIC = n log(2πσ²) + RSS/σ² + log(n)·df (σ² the OLS residual variance, df the number of non-zero
  coefficients; Zou, Hastie & Tibshirani 2007) selects the predictors; the coefficients are ordinary least
  squares of the target on the selected predictors in the original scale. The package does this with
  scikit-learn's ``LassoLarsIC`` on the data; here every regression runs on one k × k covariance matrix (the
  sufficient statistics), so no step touches the n rows again.
"""

from __future__ import annotations

import math
import time

import numpy as np

_K1, _K2, _GAMMA = 79.047, 7.4129, 0.37457
_H0 = (1 + math.log(2 * math.pi)) / 2
_LOG2 = math.log(2.0)
_BLOCK_ELEMS = 1 << 16  # elements of one (rows, m, n) residual block: small enough to stay in cache
_SPENT = 1e-12  # a residual variance below this share of the original: an exact function of the ordered ones
_TINY32 = float(np.finfo(np.float32).tiny)
_EQ_TOL = float(np.finfo(np.float32).eps)  # the lasso path stops when the largest correlation / n is below this
_EPS = float(np.finfo(float).eps)


def _check(deadline: float | None) -> None:
    """``causal_graphs.BudgetExceeded`` (what every graph builder's search raises) once ``deadline`` passed."""
    if deadline is not None and time.monotonic() > deadline:
        from llmrca.methods.causal_graphs import BudgetExceeded

        raise BudgetExceeded


def entropy(u: np.ndarray) -> np.ndarray:
    """Maximum-entropy approximation of the differential entropy of standardised samples, over the last axis."""
    a = np.abs(u)
    logcosh = np.mean(a, axis=-1) + np.mean(np.log1p(np.exp(-2.0 * a)), axis=-1) - _LOG2
    g = np.mean(u * np.exp(-0.5 * (u * u)), axis=-1)
    return _H0 - _K1 * (logcosh - _GAMMA) ** 2 - _K2 * g**2


def causal_order(data: np.ndarray, *, deadline: float | None = None) -> list[int]:
    """DirectLiNGAM's causal order (see the module docs).

    A variable whose residual has vanished (variance below 1e-12 of its original: an exact linear function of
    the variables already ordered, e.g. a duplicated series) has no noise term to test; it is placed next, as a
    deterministic effect of its predecessors can be, instead of dividing by zero.
    """
    X = np.array(data, dtype=float, copy=True)
    n = X.shape[0]
    var0 = X.var(axis=0)
    U = np.arange(X.shape[1])
    order: list[int] = []
    while len(U):
        _check(deadline)
        Xu = X[:, U]
        var = Xu.var(axis=0)
        spent = var <= _SPENT * var0[U]
        if spent.any():
            order.extend(int(i) for i in U[spent])
            U = U[~spent]
            continue
        if len(U) == 1:
            order.append(int(U[0]))
            break
        m = len(U)
        Zt = ((Xu - Xu.mean(axis=0)) / np.sqrt(var)).T.copy()  # (m, n), standardised
        C = (Zt @ Zt.T) / n
        H = entropy(Zt)
        inv_sd = 1.0 / np.sqrt(np.maximum(1.0 - C * C, 1e-300))
        np.fill_diagonal(inv_sd, 0.0)
        HR = np.empty((m, m))  # H(r_i<-j)
        rows = max(1, _BLOCK_ELEMS // (m * n))
        for s in range(0, m, rows):
            e = min(m, s + rows)
            R = Zt[s:e, None, :] - C[s:e, :, None] * Zt[None, :, :]
            R *= inv_sd[s:e, :, None]
            HR[s:e] = entropy(R)
        diff = (H[None, :] + HR) - (H[:, None] + HR.T)
        np.fill_diagonal(diff, 0.0)
        M = np.sum(np.minimum(0.0, diff) ** 2, axis=1)
        pos = int(np.argmin(M))
        pick = int(U[pos])
        order.append(pick)
        rest = np.delete(U, pos)
        xm = X[:, pick] - X[:, pick].mean()
        b = (xm @ (X[:, rest] - X[:, rest].mean(axis=0))) / n / var[pos]
        X[:, rest] -= np.outer(X[:, pick], b)
        U = rest
    return order


def _min_pos(v: np.ndarray) -> float:
    """The smallest positive entry of ``v`` (inf when there is none)."""
    return float(np.where(v > 0, v, math.inf).min()) if v.size else math.inf


def _solve(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    try:
        return np.linalg.solve(A, b)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(A, b, rcond=None)[0]


def lasso_path(G: np.ndarray, c0: np.ndarray, n: int, max_iter: int = 500) -> np.ndarray:
    """Breakpoints of the lasso path by LARS with the lasso modification, from the Gram matrix ``G`` = X'X and
    ``c0`` = X'y of centred data with ``n`` rows: (points, features) coefficients, the first row all zero, the
    last the least-squares fit (or where the largest remaining correlation / n falls below float32 eps).

    Each step moves the active coefficients along the equiangular direction until an inactive variable's
    correlation ties the active ones (it joins) or an active coefficient crosses zero (it leaves: the lasso
    modification). A joining variable that is a linear function of the active ones (Cholesky pivot below 1e-7)
    does not join; its correlation is set to 0 and the path goes on, as scikit-learn's ``lars_path`` does.
    The inverse of the active Gram matrix is kept up to date by the block-inverse formulas (a joining
    variable: its Schur complement, which is also the pivot tested; a leaving one: the rank-one downdate), so
    a step costs a few products of the active size.
    """
    k = len(c0)
    beta = np.zeros(k)
    c = np.array(c0, dtype=float)  # correlations X'(y - X beta); meaningful for the inactive variables
    active: list[int] = []
    signs: list[float] = []
    inv = np.zeros((0, 0))  # inverse of G[active, active]
    inactive = np.ones(k, dtype=bool)
    path = [beta.copy()]
    prev_alpha = math.inf
    drop = False
    for _ in range(max_iter + k):
        idx = np.flatnonzero(inactive)
        if idx.size:
            j = int(idx[np.argmax(np.abs(c[idx]))])
            C = abs(float(c[j]))
        else:
            j, C = -1, 0.0
        alpha = C / n
        if alpha <= _EQ_TOL or len(path) > max_iter:
            break
        if not drop:
            m = len(active)
            g = G[active, j]
            u = inv @ g
            schur = float(G[j, j] - g @ u)
            if max(math.sqrt(abs(schur)), _EPS) < 1e-7:
                c[j] = 0.0
                continue
            new = np.empty((m + 1, m + 1))
            new[:m, :m] = inv + np.outer(u, u) / schur
            new[:m, m] = new[m, :m] = -u / schur
            new[m, m] = 1.0 / schur
            inv = new
            active.append(j)
            signs.append(1.0 if c[j] > 0 else -1.0)
            inactive[j] = False
        if prev_alpha < alpha:  # residuals so small that alpha is no longer controlled: stop, as LARS does
            break
        s = np.array(signs)
        ls = inv @ s
        AA = 1.0 / math.sqrt(max(float(ls @ s), _EPS))
        ls *= AA  # the equiangular direction of the active coefficients
        a = G[:, active] @ ls  # change of every correlation per unit step
        np.around(a, decimals=15, out=a)
        gamma = C / AA
        if inactive.any():
            ci, ai = c[inactive], a[inactive]
            gamma = min(gamma, _min_pos((C - ci) / (AA - ai + _TINY32)), _min_pos((C + ci) / (AA + ai + _TINY32)))
        z = -beta[active] / (ls + _TINY32)
        z_pos = _min_pos(z)
        drop = z_pos < gamma
        if drop:
            gamma = z_pos
        beta[active] += gamma * ls
        c -= gamma * a
        prev_alpha = alpha
        if drop:
            out = [active[i] for i in np.flatnonzero(z == z_pos)]
            for v in out:
                i = active.index(v)
                keep = [q for q in range(len(active)) if q != i]
                col = inv[keep, i]
                inv = inv[np.ix_(keep, keep)] - np.outer(col, col) / inv[i, i]
                active.pop(i)
                signs.pop(i)
                inactive[v] = True
                beta[v] = 0.0
            c[out] = c0[out] - G[out] @ beta
        path.append(beta.copy())
    return np.array(path)


def adaptive_lasso(Z: np.ndarray, R: np.ndarray, S: np.ndarray, preds: np.ndarray, target: int) -> np.ndarray:
    """Coefficients of ``target`` on ``preds`` by the adaptive lasso with BIC (module docs). ``Z``: the
    standardised data (n, k); ``R``: its correlation matrix; ``S``: the population covariance of the data."""
    n = Z.shape[0]
    w = np.abs(_solve(R[np.ix_(preds, preds)], R[preds, target]))
    G = n * (R[np.ix_(preds, preds)] * np.outer(w, w))
    xy = n * (R[preds, target] * w)
    path = lasso_path(G, xy, n)
    p = len(preds)
    # residual sums of squares on the rows (from G they would cancel to noise on a near-exact fit)
    Xw = Z[:, preds] * w
    y = Z[:, target]
    b = np.linalg.lstsq(Xw, y, rcond=None)[0]
    sigma2 = float(np.sum((y - Xw @ b) ** 2)) / (n - p - 1)
    rss = np.sum((y[:, None] - Xw @ path.T) ** 2, axis=0)
    df = (np.abs(path) > _EPS).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        bic = n * np.log(2 * math.pi * sigma2) + rss / sigma2 + math.log(n) * df
    best = path[int(np.argmin(bic))]
    keep = np.abs(best * w) > 0.0
    coef = np.zeros(p)
    if keep.any():
        sel = preds[keep]
        coef[keep] = _solve(S[np.ix_(sel, sel)], S[sel, target])
    return coef


def adjacency(data: np.ndarray, order: list[int], *, deadline: float | None = None) -> np.ndarray:
    """B with B[i, j] the coefficient of x_j in x_i's equation (zero unless j precedes i in ``order``)."""
    X = np.asarray(data, dtype=float)
    n, k = X.shape
    Xc = X - X.mean(axis=0)
    S = (Xc.T @ Xc) / n
    sd = np.sqrt(np.diag(S))
    Z = Xc / np.where(sd > 0, sd, 1.0)
    R = (Z.T @ Z) / n
    B = np.zeros((k, k))
    for pos in range(1, k):
        _check(deadline)
        preds = np.array(order[:pos])
        B[order[pos], preds] = adaptive_lasso(Z, R, S, preds, order[pos])
    return B


def direct_lingam(data: np.ndarray, *, deadline: float | None = None) -> tuple[list[int], np.ndarray]:
    """(causal order, adjacency matrix B) of DirectLiNGAM on ``data`` (rows = samples); ``BudgetExceeded``
    when ``deadline`` (a ``time.monotonic()`` value) passes between two steps."""
    order = causal_order(data, deadline=deadline)
    return order, adjacency(data, order, deadline=deadline)
