"""DirectLiNGAM (Shimizu et al., JMLR 2011) with the pairwise likelihood-ratio measure (Hyvärinen & Smith,
JMLR 2013) and adaptive-lasso pruning (Zou 2006) of the coefficients, in numpy only.

It computes what ``lingam.DirectLiNGAM(measure="pwling")`` computes without prior knowledge — on well-posed data the
same causal order and the same adjacency matrix (``tests/test_lingam_fast.py`` checks both against the package) — in a
fraction of the time:

- **Causal order.** At each step the most exogenous remaining variable is the one with the smallest
  Σ_j min(0, ΔI(i, j))², ΔI(i, j) = H(x_j) + H(r_i←j) − H(x_i) − H(r_j←i), with H the maximum-entropy
  approximation of differential entropy (Hyvärinen 1998) of a standardised variable. All pairs of a step are
  evaluated at once: with z the standardised variables and c_ij their correlation, the standardised residual
  of z_i regressed on z_j is (z_i − c_ij z_j) / √(1 − c_ij²), so one correlation matrix and one broadcast give
  every H(r_i←j) (``_most_exogenous``, in cache-sized blocks of candidates). Every pair is evaluated: a bounded
  search that skipped the pairs which cannot change the argmin (each candidate's sum is bounded from below by
  its pairs evaluated so far) saved a third of the entropies but cost more in per-round bookkeeping on cases of
  the study's size, and gave the same argmin and the same sums.
  The chosen variable is then regressed out of all remaining ones in one rank-one update.
  log cosh u is evaluated as |u| + log(1 + e^(−2|u|)) − log 2 for every value (``entropy``): cheaper than
  ``np.log(np.cosh(u))`` and finite where that overflows (|u| > 710, which turns the package's measure into NaN);
  the measures differ from the package's in the last bits, so on well-posed data the order is the same.
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
from scipy.linalg import solve_triangular
from scipy.linalg.lapack import dpotrs

_K1, _K2, _GAMMA = 79.047, 7.4129, 0.37457
_H0 = (1 + math.log(2 * math.pi)) / 2
_LOG2 = math.log(2.0)
_BLOCK_ELEMS = 1 << 16  # values of one block of residuals: small enough to stay in cache
_SPENT = 1e-12  # a residual variance below this share of the original: an exact function of the ordered ones
_TINY32 = float(np.finfo(np.float32).tiny)
_EQ_TOL = float(np.finfo(np.float32).eps)  # the lasso path stops when the largest correlation / n is below this
_EPS = float(np.finfo(float).eps)


def _check(deadline: float | None) -> None:
    """``causal_graphs.BudgetExceeded`` (what every graph builder's search raises) once ``deadline`` passed."""
    if deadline is not None and time.monotonic() > deadline:
        from llmrca.methods.causal_graphs import BudgetExceeded

        raise BudgetExceeded


def entropy(u: np.ndarray, scratch: np.ndarray | None = None) -> np.ndarray:
    """Maximum-entropy approximation of the differential entropy of standardised samples, over the last axis.
    ``scratch`` (same shape as ``u``, C-ordered), when given, holds the temporaries.

    log cosh u is evaluated as |u| + log(1 + e^(−2|u|)) − log 2: the same function (exact in real arithmetic,
    a few ulp from ``log(cosh(u))`` in floating point), about a quarter cheaper per value than numpy's
    ``cosh`` and ``log`` where ``cosh`` is the C library's scalar one, and finite for every u (``cosh``
    overflows past |u| ≈ 710). ``log`` and not ``log1p``: e^(−2|u|) ≤ 1, so 1 + e loses at most one ulp of
    the sum's scale, and ``log1p`` costs twice ``log``. The three sums over the samples are ``einsum``'s row
    sums, under half the cost of numpy's per-row pairwise reductions on rows of ~70 values (they differ from
    those in the last bits); a row's sum does not depend on the other rows or on where the row lies in memory,
    which a BLAS product with a vector of ones (cheaper still) does not give: its kernels sum a row
    differently by its position in the matrix."""
    t = scratch if scratch is not None and scratch.flags.c_contiguous else np.empty(u.shape)
    n = u.shape[-1]
    rows = t.reshape(-1, n)  # a view (t is C-ordered)
    np.abs(u, out=t)
    s_logcosh = np.einsum("ij->i", rows)
    t *= -2.0
    np.exp(t, out=t)
    t += 1.0
    np.log(t, out=t)
    s_logcosh += np.einsum("ij->i", rows)
    logcosh = s_logcosh.reshape(u.shape[:-1]) / n - _LOG2
    np.multiply(u, u, out=t)
    t *= -0.5
    np.exp(t, out=t)
    t *= u
    g = np.einsum("ij->i", rows).reshape(u.shape[:-1]) / n
    return _H0 - _K1 * (logcosh - _GAMMA) ** 2 - _K2 * g**2


def causal_order(data: np.ndarray, *, deadline: float | None = None) -> list[int]:
    """DirectLiNGAM's causal order (see the module docs).

    A variable whose residual has vanished (variance below 1e-12 of its original: an exact linear function of
    the variables already ordered, e.g. a duplicated series) has no noise term to test; it is placed next, as a
    deterministic effect of its predecessors can be, instead of dividing by zero.
    """
    X = np.array(data, dtype=float, copy=True)  # the remaining variables' residuals, column c is variable U[c]
    n = X.shape[0]
    var0 = X.var(axis=0)
    U = np.arange(X.shape[1])
    order: list[int] = []
    buf, tmp = np.empty((2, _BLOCK_ELEMS))
    while len(U):
        _check(deadline)
        D = X - np.add.reduce(X, axis=0, keepdims=True) / n  # centred (what X.var and X.mean compute)
        var = np.add.reduce(D * D, axis=0) / n
        spent = var <= _SPENT * var0[U]
        if spent.any():
            order.extend(int(i) for i in U[spent])
            U, X = U[~spent], X[:, ~spent]
            continue
        if len(U) == 1:
            order.append(int(U[0]))
            break
        Zt = (D / np.sqrt(var)).T.copy()  # (m, n), standardised
        C = (Zt @ Zt.T) / n
        inv_sd = 1.0 / np.sqrt(np.maximum(1.0 - C * C, 1e-300))
        pos, _ = _most_exogenous(Zt, C, inv_sd, buf, tmp)
        order.append(int(U[pos]))
        x = X[:, pos]
        xm = x - x.mean()
        others = np.ones(len(U), dtype=bool)
        others[pos] = False
        rest = X[:, others]  # the others, compacted: no gather of the remaining columns per step
        b = (xm @ (rest - rest.mean(axis=0))) / n / var[pos]
        rest -= np.outer(x, b)
        U, X = U[others], rest
    return order


def _most_exogenous(Zt: np.ndarray, C: np.ndarray, inv_sd: np.ndarray, buf: np.ndarray, tmp: np.ndarray,
                    ) -> tuple[int, np.ndarray]:
    """(position of the candidate with the smallest M_i = Σ_j min(0, ΔI(i, j))², with NaN counted as inf; M),
    from the standardised candidates ``Zt`` (m, n), their correlations ``C`` and 1 / √(1 − C²) ``inv_sd``
    (both of whose diagonals it overwrites).

    Every pair is evaluated: H(r_i<-j) for all (i, j) by broadcasting, the standardised residual of z_i on z_j
    being (z_i − c_ij z_j)·inv_sd_ij, in blocks of candidates i of at most ``_BLOCK_ELEMS`` values (``buf`` and
    ``tmp`` hold them), so that a block's temporaries stay in cache. With the diagonals set to c_ii = 0 and
    inv_sd_ii = 1 the "residual" of z_i on itself is z_i exactly, so the same pass gives H(z_i) (the same
    operations on the same values as ``entropy(Zt)``) without a call of its own. On a case of the study's size
    (~33 columns, ~70 rows) the per-step bookkeeping of a bounded search that skips pairs which cannot change
    the argmin cost more than the third of the entropies it saves (docs/vs-rcaeval.md, sixth pass)."""
    m, n = Zt.shape
    np.fill_diagonal(C, 0.0)
    np.fill_diagonal(inv_sd, 1.0)
    HR = np.empty((m, m))
    rows = max(1, _BLOCK_ELEMS // (m * n))
    for s in range(0, m, rows):
        e = min(m, s + rows)
        R = buf[: (e - s) * m * n].reshape(e - s, m, n)
        np.multiply(C[s:e, :, None], Zt[None, :, :], out=R)
        np.subtract(Zt[s:e, None, :], R, out=R)
        R *= inv_sd[s:e, :, None]
        HR[s:e] = entropy(R, tmp[: R.size].reshape(R.shape))
    H = HR.diagonal().copy()
    with np.errstate(over="ignore", invalid="ignore"):
        diff = (H[None, :] + HR) - (H[:, None] + HR.T)  # ΔI(i, j)
        np.fill_diagonal(diff, 0.0)
        M = np.sum(np.minimum(0.0, diff) ** 2, axis=1)
    M[np.isnan(M)] = math.inf
    return int(np.argmin(M)), M


def _min_pos(v: np.ndarray) -> np.ndarray:
    """Per row, the smallest positive entry of ``v`` (inf where there is none)."""
    return np.where(v > 0, v, math.inf).min(axis=-1, initial=math.inf)


def lasso_paths(G: np.ndarray, c0: np.ndarray, n: int, max_iter: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Breakpoints of T lasso paths at once by LARS with the lasso modification (Efron et al. 2004).

    ``G`` (T, k, k) and ``c0`` (T, k) are the Gram matrices X'X and X'y of T centred problems with ``n`` rows
    each; a problem with fewer than k features has zero rows and columns for the others (they never join).
    Returns (points, T, k) coefficients and a (points, T) mask of which points are breakpoints of which path:
    for every path the first is all zero, the last the least-squares fit (or where the largest remaining
    correlation / n falls below float32 eps).

    Each step moves a path's active coefficients along the equiangular direction until an inactive
    variable's correlation ties the active ones (it joins) or an active coefficient crosses zero (it leaves:
    the lasso modification). A joining variable that is a linear function of the active ones (Cholesky pivot
    below 1e-7) does not join; its correlation is set to 0 and the path goes on, as scikit-learn's
    ``lars_path`` does. The inverse of each active Gram matrix is kept (embedded in k × k, zero outside the
    active set) by the block-inverse formulas: a joining variable by its Schur complement, which is also the
    pivot tested; a leaving one by the rank-one downdate. All T paths step together, one numpy operation per
    quantity for all of them.
    """
    T, k = c0.shape
    rows = np.arange(T)
    beta = np.zeros((T, k))
    c = np.array(c0, dtype=float)  # correlations X'(y - X beta); meaningful for the inactive variables
    cand = np.abs(np.einsum("tii->ti", G)) > 0  # the features each problem has
    active = np.zeros((T, k), dtype=bool)
    sign = np.zeros((T, k))
    inv = np.zeros((T, k, k))
    num, den = np.empty((2, 2, T, k))  # the two step lengths at which an inactive correlation ties
    running = np.ones(T, dtype=bool)
    drop = np.zeros(T, dtype=bool)
    prev_alpha = np.full(T, math.inf)
    n_points = np.ones(T, dtype=np.int64)
    points, marks = [beta.copy()], [np.ones(T, dtype=bool)]
    with np.errstate(divide="ignore", invalid="ignore"):  # quotients of masked-out entries are discarded
        for _ in range(max_iter + k):
            free = cand & ~active
            absc = np.where(free, np.abs(c), -1.0)
            j = np.argmax(absc, axis=1)
            C = np.maximum(absc[rows, j], 0.0)
            alpha = C / n
            running &= (alpha > _EQ_TOL) & (n_points <= max_iter)
            if not running.any():
                break
            g = np.where(active, G[rows, :, j], 0.0)
            u = np.matmul(inv, g[:, :, None])[:, :, 0]  # batched matrix-vector products: matmul, not einsum
            schur = G[rows, j, j] - np.einsum("ta,ta->t", g, u)
            may_join = running & ~drop
            degen = may_join & (np.sqrt(np.abs(schur)) < 1e-7)  # max(·, eps) < 1e-7 as sklearn: eps < 1e-7
            if degen.any():
                c[rows[degen], j[degen]] = 0.0
            joined = may_join & ~degen
            if joined.any():  # the block inverse with j appended
                t, jj, uu, sc = rows[joined], j[joined], u[joined], schur[joined]
                upd = np.einsum("ta,tb->tab", uu, uu)
                upd /= sc[:, None, None]
                if len(t) == T:  # every path: no gather and scatter of the (T, k, k) inverses
                    inv += upd
                else:
                    inv[t] += upd
                col = -uu / sc[:, None]
                inv[t, :, jj] = col
                inv[t, jj, :] = col
                inv[t, jj, jj] = 1.0 / sc
                active[t, jj] = True
                sign[t, jj] = np.where(c[t, jj] > 0, 1.0, -1.0)
            running &= degen | ~(prev_alpha < alpha)  # alpha no longer controlled (tiny residuals): stop, as LARS
            step = running & ~degen
            if not step.any():
                continue
            ls = np.matmul(inv, sign[:, :, None])[:, :, 0]
            AA = 1.0 / np.sqrt(np.maximum(np.einsum("ta,ta->t", ls, sign), _EPS))
            ls *= AA[:, None]  # the equiangular direction of the active coefficients (zero elsewhere)
            a = np.matmul(G, ls[:, :, None])[:, :, 0]  # change of every correlation per unit step
            np.multiply(a, 1e15, out=a)  # np.around(a, 15): what it computes, without its call overhead
            np.rint(a, out=a)
            a /= 1e15
            # the smallest positive step at which an inactive correlation ties the active ones, from above
            # ((C - c) / (AA - a)) or below ((C + c) / (AA + a))
            Cc, AAc = C[:, None], AA[:, None]
            np.subtract(Cc, c, out=num[0])
            np.add(Cc, c, out=num[1])
            np.subtract(AAc, a, out=den[0])
            np.add(AAc, a, out=den[1])
            den += _TINY32
            num /= den
            tie = np.where((num > 0) & (cand & ~active), num, math.inf).min(axis=(0, 2))
            z = np.where(active, -beta / (ls + _TINY32), -1.0)
            gamma = np.minimum(tie, C / AA)
            z_pos = _min_pos(z)
            new_drop = z_pos < gamma
            gamma = np.where(new_drop, z_pos, gamma)
            gamma = np.where(step, gamma, 0.0)
            beta += gamma[:, None] * ls
            c -= gamma[:, None] * a
            prev_alpha = np.where(step, alpha, prev_alpha)
            drop = np.where(step, new_drop, drop)
            dropping = step & new_drop
            if dropping.any():
                leaving = np.argwhere(dropping[:, None] & active & (z == z_pos[:, None]))
                for t, v in leaving:
                    col = inv[t, :, v].copy()
                    inv[t] -= np.outer(col, col) / col[v]
                    inv[t, v, :] = 0.0
                    inv[t, :, v] = 0.0
                    active[t, v] = False
                    sign[t, v] = 0.0
                    beta[t, v] = 0.0
                for t in np.unique(leaving[:, 0]):
                    out = leaving[leaving[:, 0] == t, 1]
                    c[t, out] = c0[t, out] - G[t, out] @ beta[t]
            n_points += step
            points.append(beta.copy())
            marks.append(step.copy())
    return np.array(points), np.array(marks)


def _sequential_ols(Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least squares of every column t of the centred ``Z`` on the columns before it: (coefficients, with
    column t holding those of target t in rows 0..t-1; residual sums of squares per target). One QR
    decomposition gives them (the regression of column t on the first t columns is the leading t × t
    triangle, its residual Q[:, t] U[t, t]); past a column that is (nearly) a linear function of those before
    it, the targets fall back to ``lstsq`` (the minimum-norm solution, as least squares on the rows gives)."""
    k = Z.shape[1]
    U = np.linalg.qr(Z, mode="r")
    d = np.abs(np.diag(U))
    bad = np.flatnonzero(d <= 1e-8 * np.maximum.accumulate(np.maximum(d, 1e-300)))
    good = int(bad[0]) if bad.size else k  # targets 0..good (capped at k - 1) have a well-posed triangle
    coef = np.zeros((k, k))
    rss = d**2
    m = min(good, k - 1) + 1
    if good > 0:
        g = min(good, k)
        Uinv = solve_triangular(U[:g, :g], np.eye(g))
        coef[:g, :m] = Uinv @ np.triu(U[:g, :m], 1)
    # Z[:, :t] = Q_t U[:t, :t] with Q_t orthonormal and z_t = Q_t U[:t, t] + (a part orthogonal to Q_t), so the
    # minimum-norm least squares on the t × t triangle is that on the n rows (the same singular values, hence
    # the rows' cut-off eps·max(n, t)), for a t × t instead of an n × t SVD
    n = Z.shape[0]
    for t in range(m, k):
        b, *_ = np.linalg.lstsq(U[:t, :t], U[:t, t], rcond=_EPS * max(n, t))
        coef[:t, t] = b
        rss[t] = float(np.sum((Z[:, t] - Z[:, :t] @ b) ** 2))
    return coef, rss


def _ols(Xc: np.ndarray, S: np.ndarray, sel: np.ndarray, t: int) -> np.ndarray:
    """Least squares of column t of the centred ``Xc`` on columns ``sel``: by Cholesky of the covariance ``S``
    when it is well conditioned, else ``lstsq`` on the rows."""
    A = S[sel][:, sel]
    try:
        L = np.linalg.cholesky(A)
        dl = np.diag(L)
        if dl.min() > 1e-6 * dl.max():
            x, info = dpotrs(L, S[sel, t], lower=1)  # what scipy's cho_solve calls, without its checks
            if info == 0:
                return x
    except np.linalg.LinAlgError:
        pass
    return np.linalg.lstsq(Xc[:, sel], Xc[:, t], rcond=None)[0]


def adjacency(data: np.ndarray, order: list[int], *, deadline: float | None = None) -> np.ndarray:
    """B with B[i, j] the coefficient of x_j in x_i's equation by the adaptive lasso with BIC (module docs);
    zero unless j precedes i in ``order``."""
    X = np.asarray(data, dtype=float)[:, order]  # in causal order: target t's predictors are columns 0..t-1
    n, k = X.shape
    B = np.zeros((k, k))
    if k < 2:
        return B
    _check(deadline)
    Xc = X - X.mean(axis=0)
    S = (Xc.T @ Xc) / n
    sd = np.sqrt(np.mean(Xc * Xc, axis=0))
    Z = Xc / np.where(sd > 0, sd, 1.0)
    R = (Z.T @ Z) / n
    ols, rss_ols = _sequential_ols(Z)
    T = k - 1  # targets 1..k-1
    W = np.abs(ols[:, 1:].T)  # (T, k): weights of target t+1 on its predictors, zero elsewhere
    G = n * R[None, :, :] * W[:, :, None] * W[:, None, :]
    xy = n * R[1:, :] * W
    points, marks = lasso_paths(G, xy, n)
    _check(deadline)
    p = np.arange(1, k)  # predictors per target
    sigma2 = rss_ols[1:] / (n - p - 1)
    # residual sums of squares of every path point on the rows (from G they cancel to noise on a near-exact fit)
    fitted = ((points * W[None]).reshape(-1, k) @ Z.T).reshape(len(points), T, n)
    rss = np.sum((Z[:, 1:].T[None] - fitted) ** 2, axis=2)
    df = (np.abs(points) > _EPS).sum(axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        bic = n * np.log(2 * math.pi * sigma2) + rss / sigma2 + math.log(n) * df
    bic = np.where(marks, bic, np.inf)
    best = points[np.argmin(bic, axis=0), np.arange(T)]  # (T, k)
    keep = np.abs(best * W) > 0.0
    for t in range(1, k):
        sel = np.flatnonzero(keep[t - 1])
        if sel.size:
            B[t, sel] = _ols(Xc, S, sel, t)
    inv_order = np.argsort(order)
    return B[np.ix_(inv_order, inv_order)]


def direct_lingam(data: np.ndarray, *, deadline: float | None = None) -> tuple[list[int], np.ndarray]:
    """(causal order, adjacency matrix B) of DirectLiNGAM on ``data`` (rows = samples); ``BudgetExceeded``
    when ``deadline`` (a ``time.monotonic()`` value) passes between two steps."""
    order = causal_order(data, deadline=deadline)
    return order, adjacency(data, order, deadline=deadline)
