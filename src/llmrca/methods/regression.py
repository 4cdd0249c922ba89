"""Regression-based hypothesis testing (CIRCA's scorer).

Each series is regressed on its parents in a causal graph using normal (pre-injection) rows only; the question
is how far its post-injection residuals stray from the normal ones. A series explained by its parents' values
is an effect; one whose residual jumps is where the change entered the system.

The normal residuals a post-injection residual is compared with are out-of-sample, as the post-injection ones
are: each normal row's residual is the one it would have if the regression were refitted without it
(leave-one-out). A post-injection row is predicted by coefficients fitted on other rows; an in-sample residual
is not, and its spread shrinks with the number of parents (it is 0 where a series has as many parents as normal
rows, and ridge with a small penalty then fits them almost exactly, so any post-injection wiggle scored hundreds
of "sigmas"). Ridge and least squares give the leave-one-out residual in closed form, ``e_i / (1 - h_ii)`` with
``h_ii = 1/n + x_iᵀ(XᵀX + αI)⁻¹x_i`` the diagonal of the hat matrix of the centred design (intercept
unpenalised), from the same factorisation as the coefficients; where ``1 - h_ii`` is below 1e-8 (a row that alone
determines a coefficient, possible for least squares only) that row is refitted explicitly instead. Residuals are
then scaled with ``llmrca.methods.scoring.baseline`` (mean/std of the normal leave-one-out residuals, with that
module's explicit rule for a flat baseline): a series flat before injection that moves after it scores high, one
constant over the whole window scores 0.

All regressions of one window are solved from shared sufficient statistics: the lagged design of every column
is built once, its centred cross-product matrix over the normal rows (``XᵀX``, one matrix product) is computed
once, and each series' fit is a small solve on the rows and columns of its parents — the same normal equations
scikit-learn's ``Ridge`` (Cholesky) and ``LinearRegression`` (minimum-norm least squares) solve, without building
a design matrix and an estimator per series. Where a series has more parent regressors than there are normal
rows the ridge fit is solved in its dual form (``Xᵀ(XXᵀ + αI)⁻¹y``, the same coefficients, an n × n solve).
Series with the same parents share one factorisation. Residuals of all series are then one matrix product.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.linalg import cho_factor, cho_solve

from llmrca.errors import MethodError
from llmrca.methods.scoring import baseline

Regressor = Literal["linear", "ridge"]
Aggregate = Literal["max", "mean"]

_GRAM_MAX = 4000  # most features for which the whole cross-product matrix is formed (4000² doubles = 128 MB)


def lagged_features(values: np.ndarray, cols: Sequence[int], max_lag: int) -> np.ndarray:
    """Columns ``cols`` at lags 0..max_lag, rows max_lag.. (the first rows have no full history)."""
    n = values.shape[0]
    parts = [values[max_lag - k : n - k, list(cols)] for k in range(max_lag + 1)]
    return np.concatenate(parts, axis=1) if parts else np.empty((n - max_lag, 0))


@dataclass(frozen=True)
class ResidualTest:
    """Residual z-scores of every column over rows ``max_lag..`` of the window; the first ``n_fit`` rows are the
    normal (fitting) rows, whose z are those of their leave-one-out residuals. A column constant over the whole
    window has z = 0 throughout."""

    z: np.ndarray  # (rows, columns)
    n_fit: int

    def scores(self, aggregate: Aggregate = "max") -> np.ndarray:
        """Per column, the max (or mean) |z| over the post-injection rows: CIRCA's anomaly score."""
        dev = np.abs(self.z[self.n_fit :])
        return dev.max(axis=0) if aggregate == "max" else dev.mean(axis=0)

    def shift(self) -> np.ndarray:
        """Per column, a two-sample statistic for "the residuals grew after injection": the mean |z| after minus
        the mean |z| before, over its standard error (Welch's, with the post window's variance taken as at least
        the normal one, so a single post row is judged against the normal spread). Under "nothing changed"
        it is about standard normal whatever the residuals' distribution (both means average many rows), unlike a
        max over many rows, which grows with their number and with heavy tails. +inf where the residual was flat
        before and moved after; 0 for a column constant over the whole window."""
        a = np.abs(self.z)
        pre, post = a[: self.n_fit], a[self.n_fit :]
        n, m = len(pre), len(post)
        var_pre = pre.var(axis=0)
        var_post = np.maximum(post.var(axis=0), var_pre)
        diff = post.mean(axis=0) - pre.mean(axis=0)
        se = np.sqrt(var_pre / n + var_post / m)
        out = np.divide(diff, se, out=np.zeros_like(diff), where=se > 0)
        return np.where((se == 0) & (diff > 0), np.inf, out)


_LOO_MIN = 1e-8  # 1 - h_ii below this: that row is refitted explicitly (module doc)


def _solve_ridge(gram: np.ndarray, rhs: np.ndarray, alpha: float) -> np.ndarray:
    """``(G + αI)⁻¹ R`` for a positive semi-definite ``G`` (Cholesky; least squares if G + αI is not PD)."""
    a = gram + alpha * np.eye(len(gram))
    try:
        return cho_solve(cho_factor(a, lower=True, check_finite=False), rhs, check_finite=False)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(a, rhs, rcond=None)[0]


def _fit_block(
    xp: np.ndarray | None, g_pp: np.ndarray, g_py: np.ndarray, regressor: Regressor, alpha: float, leverage: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """Coefficients ``(G_pp + αI)⁻¹ G_py`` (ridge) or ``G_pp⁺ G_py`` (least squares) and, with ``leverage``, the
    centred part ``x_iᵀ(G_pp + αI)⁻¹x_i`` of each row's hat-matrix diagonal (``xp``: the rows × parents design)."""
    rhs = np.concatenate([g_py, xp.T], axis=1) if leverage else g_py  # one solve for coefficients and leverage
    if regressor == "ridge":
        sol = _solve_ridge(g_pp, rhs, alpha)
    else:
        # Minimum-norm least squares on the design equals the minimum-norm solution of its normal equations
        # (pinv(XᵀX)Xᵀy = X⁺y), so collinear parents get LinearRegression's answer too; likewise xᵢᵀ(XᵀX)⁺xᵢ is
        # the diagonal of the projection onto the design's columns.
        sol = np.linalg.lstsq(g_pp, rhs, rcond=None)[0]
    k = g_py.shape[1]
    return sol[:, :k], np.einsum("ij,ji->i", xp, sol[:, k:]) if leverage else None


def _group_fits(
    x_fit: np.ndarray,
    parents: Sequence[Sequence[int]],
    targets: Sequence[int],
    regressor: Regressor,
    ridge_alpha: float,
    gram: np.ndarray | None,
    leverage: bool = False,
) -> list[tuple[np.ndarray, list[int], np.ndarray, np.ndarray | None]]:
    """``(parent features, target indices i, coefficients (len(parents) × len(i)), leverage)`` per distinct parent
    set; ``leverage`` (with ``leverage=True``, else ``None``) is the centred part of each normal row's hat-matrix
    diagonal, ``x_iᵀ(XᵀX + αI)⁻¹x_i`` (``α = 0`` and a pseudo-inverse for least squares)."""
    n_fit = x_fit.shape[0]
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, pa in enumerate(parents):
        if len(pa):
            groups.setdefault(tuple(int(p) for p in pa), []).append(i)
    out = []
    for pa_t, members in groups.items():
        pa = np.asarray(pa_t)
        tg = [int(targets[i]) for i in members]
        xp = x_fit[:, pa] if leverage or gram is None or (regressor == "ridge" and len(pa) > n_fit) else None
        if regressor == "ridge" and len(pa) > n_fit:
            # Dual form: with more regressors than rows the n × n system is the small one. Xᵀ(XXᵀ + αI)⁻¹y are the
            # same coefficients, and the hat matrix XXᵀ(XXᵀ + αI)⁻¹ = I - α(XXᵀ + αI)⁻¹ has diagonal 1 - α·diag(A⁻¹).
            rhs = np.concatenate([x_fit[:, tg], np.eye(n_fit)], axis=1) if leverage else x_fit[:, tg]
            dual = _solve_ridge(xp @ xp.T, rhs, ridge_alpha)
            k = len(tg)
            lev = 1.0 - ridge_alpha * np.diagonal(dual[:, k:]) if leverage else None
            out.append((pa, members, xp.T @ dual[:, :k], lev))
            continue
        if gram is not None:
            g_pp, g_py = gram[np.ix_(pa, pa)], gram[np.ix_(pa, tg)]
        else:
            g_pp, g_py = xp.T @ xp, xp.T @ x_fit[:, tg]
        out.append((pa, members, *_fit_block(xp, g_pp, g_py, regressor, ridge_alpha, leverage)))
    return out


def _refit_residual(xp: np.ndarray, y: np.ndarray, i: int, regressor: Regressor, alpha: float) -> np.ndarray:
    """Residuals at row ``i`` of the targets ``y`` (rows × k) refitted, intercept included, on the other rows of the
    design ``xp``: the leave-one-out residual where the closed form loses its precision."""
    keep = np.arange(len(xp)) != i
    xr, yr = xp[keep], y[keep]
    mx, my = xr.mean(axis=0), yr.mean(axis=0)
    xr, yr = xr - mx, yr - my
    if regressor == "ridge":
        coef = xr.T @ _solve_ridge(xr @ xr.T, yr, alpha) if xr.shape[1] > len(xr) else \
            _solve_ridge(xr.T @ xr, xr.T @ yr, alpha)
    else:
        coef = np.linalg.lstsq(xr, yr, rcond=None)[0]
    return y[i] - my - (xp[i] - mx) @ coef


def regression_coefficients(
    x_fit: np.ndarray,
    parents: Sequence[Sequence[int]],
    targets: Sequence[int],
    *,
    regressor: Regressor = "linear",
    ridge_alpha: float = 1.0,
    gram: np.ndarray | None = None,
) -> np.ndarray:
    """Coefficients ``B`` (features × len(targets)) of each target column of ``x_fit`` regressed, with an
    intercept, on the feature columns ``parents[i]``: ``x_fit`` is the (normal rows × features) design, column
    means removed. ``gram`` is its cross-product ``x_fitᵀ x_fit`` when already computed. Ridge (penalty
    ``ridge_alpha``, intercept unpenalised) or minimum-norm least squares, as scikit-learn's ``Ridge`` and
    ``LinearRegression`` fit them."""
    coef = np.zeros((x_fit.shape[1], len(targets)))
    for pa, members, block, _ in _group_fits(x_fit, parents, targets, regressor, ridge_alpha, gram):
        coef[np.ix_(pa, members)] = block
    return coef


def residual_test(
    values: np.ndarray,
    split: int,
    parents: Sequence[Sequence[int]],
    *,
    max_lag: int = 0,
    regressor: Regressor = "linear",
    ridge_alpha: float = 1.0,
) -> ResidualTest:
    """Per column j: regress it on ``parents[j]`` (lags 0..max_lag) over rows before ``split``; z of every row's
    residual against the pre-injection leave-one-out residuals (centre and scale from ``scoring.baseline``; module
    doc). A column without parents is tested on its own values (an N-Sigma z-score, each normal row against the
    mean of the others)."""
    n, d = values.shape
    if len(parents) != d:
        raise MethodError(f"regression: {len(parents)} parent lists for {d} columns")
    n_fit = split - max_lag
    if n_fit < 2 or split >= n:
        raise MethodError(
            f"regression: {split} pre-injection and {n - split} post-injection rows (max_lag={max_lag}); "
            "need at least max_lag + 2 before and 1 after"
        )
    # Regressors in units of their normal spread: least squares does not care, ridge's penalty then means the
    # same for a byte counter as for a utilisation, and the normal equations stay well conditioned.
    sd = values[:split].std(axis=0)
    values = (values - values[:split].mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    # Feature k * d + c is column c at lag k; the targets are the lag-0 block.
    feats = lagged_features(values, range(d), max_lag)
    mean = feats[:n_fit].mean(axis=0)
    centred = feats - mean
    x_fit = centred[:n_fit]
    pa_feat: list[list[int]] = []
    for j in range(d):
        pa = sorted({int(p) for p in parents[j] if int(p) != j})
        if regressor == "linear" and pa and len(pa) * (max_lag + 1) >= n_fit - 1:
            raise MethodError(
                f"regression: column {j} has {len(pa) * (max_lag + 1)} regressors for {n_fit} normal rows; "
                "use regressor='ridge', a smaller max_lag or a longer window"
            )
        pa_feat.append([k * d + p for k in range(max_lag + 1) for p in pa])
    used = sorted({f for pa in pa_feat for f in pa} | set(range(d)))
    # Only the features some series uses (and the targets) enter the cross-product matrix.
    pos = {f: i for i, f in enumerate(used)}
    xu = x_fit[:, used]
    # Only worth it where some series takes the primal (Gram) route; past a few thousand features the matrix
    # itself gets large, and each group's product is formed on its own instead (same numbers).
    primal = any(pa and (len(pa) <= n_fit or regressor == "linear") for pa in pa_feat)
    gram = xu.T @ xu if primal and len(used) <= _GRAM_MAX else None
    resid = centred[:, :d].copy()
    cu = centred[:, used]
    fits = _group_fits(xu, [[pos[f] for f in pa] for pa in pa_feat], [pos[j] for j in range(d)], regressor,
                       ridge_alpha, gram, leverage=True)
    # Leave-one-out residuals of the normal rows (module doc): e_i / (1 - h_ii), h_ii = 1/n + the centred part;
    # a series without parents is compared with the mean of the other normal rows (h_ii = 1/n).
    loo = resid[:n_fit] * (n_fit / (n_fit - 1.0))
    for pa, members, block, lev in fits:  # targets are columns 0..d-1, so a member's index is its column
        resid[:, members] -= cu[:, pa] @ block
        denom = 1.0 - 1.0 / n_fit - lev
        loo[:, members] = resid[:n_fit, members] / np.maximum(denom, _LOO_MIN)[:, None]
        for i in np.flatnonzero(denom < _LOO_MIN):
            loo[i, members] = _refit_residual(xu[:, pa], xu[:, [pos[m] for m in members]], int(i), regressor,
                                              ridge_alpha)
    center, scale = baseline(loo, resid[n_fit:], "standard")
    z = np.divide(resid - center, scale, out=np.zeros_like(resid), where=scale > 0)
    z[:n_fit] = np.divide(loo - center, scale, out=np.zeros_like(loo), where=scale > 0)
    return ResidualTest(z=z, n_fit=n_fit)
