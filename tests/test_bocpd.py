"""Multivariate BOCPD (llmrca.methods.bocpd): exact against brute force, finds shifts, stays quiet on noise."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.special import multigammaln

from llmrca.errors import MethodError, NoAnswer
from llmrca.methods.bocpd import (
    change_probabilities,
    detect_change_point,
    noise_scale,
    standardize_project,
)
from llmrca.synthetic import planted_case


def _correlated_noise(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    mix = rng.normal(size=(cols, cols)) / np.sqrt(cols)
    return rng.normal(size=(rows, cols)) @ (np.eye(cols) + mix) + rng.normal(5.0, 2.0, size=cols)


def _segment_log_marginal(x: np.ndarray, kappa0: float, nu0: float, psi0: np.ndarray) -> float:
    """log p(rows) under the Normal-inverse-Wishart prior with mean 0, in closed form."""
    n, k = x.shape
    xbar = x.mean(axis=0)
    centred = x - xbar
    kn, nn = kappa0 + n, nu0 + n
    psin = psi0 + centred.T @ centred + (kappa0 * n / kn) * np.outer(xbar, xbar)
    return float(
        -0.5 * n * k * np.log(np.pi)
        + multigammaln(nn / 2.0, k) - multigammaln(nu0 / 2.0, k)
        + 0.5 * nu0 * np.linalg.slogdet(psi0)[1] - 0.5 * nn * np.linalg.slogdet(psin)[1]
        + 0.5 * k * np.log(kappa0 / kn)
    )


def _brute_force_run_start(x: np.ndarray, hazard: float, kappa0: float, cov_rows: float) -> np.ndarray:
    """P(the last run started at row s | all rows), enumerating every segmentation of a short series."""
    t, k = x.shape
    nu0 = k + 1.0 + cov_rows
    psi0 = cov_rows * np.eye(k)
    weights = np.zeros(t)
    for flags in itertools.product((0, 1), repeat=t - 1):  # flags[i]: a new run starts at row i + 1
        starts = [0] + [i + 1 for i, f in enumerate(flags) if f]
        bounds = starts + [t]
        logw = sum(np.log(hazard) if f else np.log1p(-hazard) for f in flags)
        logw += sum(_segment_log_marginal(x[a:b], kappa0, nu0, psi0) for a, b in itertools.pairwise(bounds))
        weights[starts[-1]] += np.exp(logw)
    return weights / weights.sum()


@pytest.mark.parametrize("k", [1, 2])
def test_recursion_matches_brute_force_enumeration(k):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(7, k))
    x[4:] += 2.5
    kw = {"expected_run": 4.0, "kappa0": 0.3, "cov_rows": 3.0}
    exact = _brute_force_run_start(x, 1 / 4.0, kw["kappa0"], kw["cov_rows"])
    # lag >= T: every row is read from the posterior after the last row.
    ev = change_probabilities(x, lag=len(x), tolerance=0, max_runs=None, **kw)
    np.testing.assert_allclose(ev.point[1:], exact[1:], rtol=1e-9, atol=1e-12)
    # lag 0: row s is read from the filtering posterior right after row s.
    ev0 = change_probabilities(x, lag=0, tolerance=0, max_runs=None, **kw)
    for s in range(1, len(x)):
        np.testing.assert_allclose(ev0.point[s], _brute_force_run_start(x[: s + 1], 0.25, 0.3, 3.0)[s], rtol=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_clear_mean_shift_is_found_within_a_few_rows(seed):
    rng = np.random.default_rng(seed)
    x = _correlated_noise(rng, 300, 20)
    at = int(rng.integers(80, 220))
    x[at:, :4] += 1.5 * x[:at, :4].std(axis=0)  # 1.5 sigma in 4 of 20 columns
    cp = detect_change_point(x)
    assert cp is not None
    assert abs(cp.index - at) <= 3
    assert cp.near_probability >= 0.5


@pytest.mark.parametrize("seed", range(5))
def test_no_change_gives_no_confident_change_point(seed):
    x = _correlated_noise(np.random.default_rng(100 + seed), 300, 20)
    assert detect_change_point(x) is None


def test_no_change_in_a_planted_case_without_fault():
    for seed in range(3):
        m = planted_case(seed=seed, shift=0.0).observation.metrics.drop(columns="time").to_numpy()
        assert detect_change_point(m) is None


def test_planted_fault_onset_is_found():
    for seed in range(4):
        case = planted_case(seed=seed, n_services=12, shift=3.0)
        m = case.observation.metrics.drop(columns="time").to_numpy()
        cp = detect_change_point(m)
        assert cp is not None and abs(cp.index - 120) <= 4


def test_huge_shift_and_step_in_a_constant_column():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(200, 6))
    x[90:, 0] += 50.0
    assert detect_change_point(x).index == 90
    y = rng.normal(size=(200, 6))
    y[:, 5] = np.where(np.arange(200) >= 130, 3.0, 1.0)  # a flag that flips once, no noise
    assert detect_change_point(y).index == 130


def test_probabilities_are_probabilities():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(150, 3))
    x[70:] += 2.0
    ev = change_probabilities(x, lag=5, tolerance=2)
    assert ev.point[0] == 0.0 and ev.near[0] == 0.0
    assert np.all((ev.point >= 0) & (ev.point <= 1 + 1e-12))
    assert np.all(ev.near >= ev.point - 1e-12) and np.all(ev.near <= 1 + 1e-9)
    assert int(np.argmax(ev.point)) == 70


def test_beam_truncation_barely_changes_the_answer():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(260, 4))
    x[140:, :2] += 1.5
    exact = change_probabilities(x, max_runs=None)
    beam = change_probabilities(x, max_runs=30)
    assert int(np.argmax(exact.point)) == int(np.argmax(beam.point))
    assert abs(int(np.argmax(exact.point)) - 140) <= 2
    assert np.max(np.abs(exact.point - beam.point)) < 1e-3


def test_standardize_project_whitens_noise_and_drops_constant_columns():
    rng = np.random.default_rng(4)
    x = _correlated_noise(rng, 400, 8)
    x = np.column_stack([x, np.full(400, 3.0)])
    z = standardize_project(x, components=None)
    assert z.shape == (400, 8)
    np.testing.assert_allclose(np.cov(np.diff(z, axis=0).T) / 2, np.eye(8), atol=0.02)
    assert standardize_project(x, components=3).shape == (400, 3)
    # noise scale ignores a level shift
    y = rng.normal(size=(400, 1))
    y[200:] += 10.0
    assert noise_scale(y)[0] == pytest.approx(1.0, abs=0.15)


def test_degenerate_inputs_raise():
    with pytest.raises(NoAnswer, match="constant"):
        standardize_project(np.ones((50, 3)))
    with pytest.raises(MethodError, match="non-finite"):
        standardize_project(np.full((50, 3), np.nan))
    with pytest.raises(MethodError, match="at least 3 rows"):
        standardize_project(np.ones((2, 3)))
    with pytest.raises(MethodError, match="components"):
        standardize_project(np.random.default_rng(0).normal(size=(50, 3)), components=0)
    with pytest.raises(MethodError, match="threshold"):
        detect_change_point(np.random.default_rng(0).normal(size=(50, 3)), threshold=0.0)
    with pytest.raises(MethodError, match="max_runs"):
        change_probabilities(np.zeros((10, 2)), max_runs=1)


def test_deterministic():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(300, 30))
    x[150:, :3] += 2.0
    a, b = change_probabilities(standardize_project(x)), change_probabilities(standardize_project(x))
    assert np.array_equal(a.point, b.point) and np.array_equal(a.near, b.near)
