"""dummy, nsigma, baro and e-diagnosis: accuracy on planted cases, the constant-baseline rule, edge cases."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from llmrca.case import Observation
from llmrca.errors import MethodError, NoAnswer, UnknownNameError
from llmrca.methods import Ranking, entry, get_method, method_class
from llmrca.methods.baro import Baro
from llmrca.methods.ediagnosis import energy_test
from llmrca.methods.scoring import baseline, deviation_scores, resolution
from llmrca.synthetic import planted_case

METHODS = ["dummy", "nsigma", "baro", "e-diagnosis"]
SEEDS = range(10)


def _rank1_hits(method: str, cases, **params) -> int:
    m = get_method(method, **params)
    return sum(m.rank(c.observation, seed=i).rank_of(c.truth.service) == 1 for i, c in enumerate(cases))


def _obs(columns: dict[str, np.ndarray], inject_row: int, interval: float = 5.0) -> Observation:
    n = len(next(iter(columns.values())))
    t = 1_700_000_000.0 + interval * np.arange(n)
    return Observation(metrics=pd.DataFrame({"time": t, **columns}), inject_time=float(t[inject_row]))


@pytest.fixture(scope="module")
def planted():
    return [planted_case(seed=s) for s in SEEDS]


@pytest.fixture(scope="module")
def planted_hard():
    """12 services, half the default shift: the root is not always the largest mover."""
    return [planted_case(seed=s, n_services=12, shift=3.0) for s in range(20)]


# --- the registry and the interface -------------------------------------------------------------------------


@pytest.mark.parametrize("name", METHODS)
def test_registry_entry_matches_class(name):
    cls = method_class(name)
    e = entry(name)
    assert cls.name == name and cls.family == e.family == "metric"
    assert cls.needs == e.needs == frozenset({"metrics"})


@pytest.mark.parametrize("name", METHODS)
def test_full_ranking_of_every_metric_column(name, planted):
    obs = planted[0].observation
    r = get_method(name).rank(obs, seed=0)
    assert isinstance(r, Ranking)
    assert sorted(r.candidates) == sorted(obs.metric_columns)
    assert all(np.isfinite(r.scores))


@pytest.mark.parametrize("name", METHODS)
def test_same_seed_same_ranking(name, planted):
    obs = planted[1].observation
    assert get_method(name).rank(obs, seed=3) == get_method(name).rank(obs, seed=3)


def test_dummy_differs_across_seeds_and_ignores_column_order(planted):
    obs = planted[0].observation
    rankings = {get_method("dummy").rank(obs, seed=s).candidates for s in range(5)}
    assert len(rankings) == 5
    shuffled = replace(obs, metrics=obs.metrics[["time", *reversed(obs.metric_columns)]])
    assert get_method("dummy").rank(shuffled, seed=2) == get_method("dummy").rank(obs, seed=2)


def test_unknown_and_bad_parameters():
    with pytest.raises(UnknownNameError, match="windw"):
        get_method("nsigma", windw=10)
    obs = planted_case(seed=0).observation
    with pytest.raises(MethodError, match="window"):
        get_method("nsigma", window=1).rank(obs)
    with pytest.raises(MethodError, match="permutations"):
        get_method("e-diagnosis", permutations=0).rank(obs)
    with pytest.raises(MethodError, match="alpha"):
        get_method("e-diagnosis", alpha=1.5).rank(obs)
    with pytest.raises(MethodError, match="detect_onset"):
        get_method("baro", detect_onset="yes").rank(obs)


# --- accuracy on planted cases ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["nsigma", "baro"])
def test_root_at_rank_one_in_nearly_every_seed(name, planted):
    assert _rank1_hits(name, planted) >= 9


def test_the_bound_is_not_met_by_chance_or_without_a_before_after_change(planted):
    # The same bound fails for the chance baseline ...
    assert _rank1_hits("dummy", planted) <= 4
    # ... and for nsigma once the rows are shuffled in time, which removes the before/after difference.
    rng = np.random.default_rng(0)
    shuffled = []
    for c in planted:
        m = c.observation.metrics
        cols = c.observation.metric_columns
        m2 = m.copy()
        m2[cols] = m[cols].to_numpy()[rng.permutation(len(m))]
        shuffled.append(replace(c, observation=replace(c.observation, metrics=m2)))
    assert _rank1_hits("nsigma", shuffled) <= 4


def test_harder_planted_cases(planted_hard):
    assert _rank1_hits("nsigma", planted_hard) >= 15
    assert _rank1_hits("baro", planted_hard) >= 12
    assert _rank1_hits("e-diagnosis", planted_hard) >= 15


def test_ediagnosis_root_in_top3(planted, planted_hard):
    m = get_method("e-diagnosis")
    top3 = [m.rank(c.observation, seed=i).rank_of(c.truth.service) <= 3 for i, c in enumerate(planted + planted_hard)]
    assert sum(top3) >= 0.9 * len(top3)


def test_dummy_is_at_chance():
    # 8 services x 3 metrics: the first column is the root's with probability 3/24.
    cases = [planted_case(seed=s) for s in range(40)]
    m = get_method("dummy")
    hits = [m.rank(c.observation, seed=k).rank_of(c.truth.service) == 1 for c in cases for k in range(10)]
    assert abs(np.mean(hits) - 1 / 8) < 0.06  # ~3.6 binomial standard errors of 400 draws


def test_baro_without_inject_time_finds_onset_and_root(planted, planted_hard):
    baro = Baro()
    for cases, min_hits in ((planted, 9), (planted_hard, 12)):
        hits = 0
        for c in cases:
            obs = replace(c.observation, inject_time=None)
            onset = baro.detect_onset(obs)
            assert abs(onset.index - 120) <= 4
            assert onset.time == pytest.approx(obs.metrics["time"].iloc[onset.index])
            hits += baro.rank(obs).rank_of(c.truth.service) == 1
        assert hits >= min_hits


def test_baro_detect_onset_overrides_inject_time():
    c = planted_case(seed=4)
    late = replace(c.observation, inject_time=float(c.observation.metrics["time"].iloc[200]))
    assert Baro(detect_onset=True).rank(late) == Baro().rank(c.observation)


def test_baro_without_inject_time_and_without_a_change_raises():
    rng = np.random.default_rng(0)
    obs = replace(_obs({f"s{i}_m": rng.normal(size=240) for i in range(6)}, 120), inject_time=None)
    with pytest.raises(NoAnswer, match="BOCPD found no change point"):
        Baro().rank(obs)


# --- the constant-baseline rule and the shared scaling ------------------------------------------------------


def test_resolution():
    v = np.array([[1.0, 5.0, 2.0], [1.0, 5.0, 2.5], [3.0, 5.0, 2.25]])
    np.testing.assert_allclose(resolution(v), [2.0, 0.0, 0.25])


def test_constant_columns_score_zero_and_constant_then_changed_scores_in_resolution_steps():
    rng = np.random.default_rng(1)
    n = 120
    cols = {
        "a_noise": rng.normal(size=n),
        "b_shift": np.r_[rng.normal(size=60), rng.normal(4.0, 1.0, size=60)],
        "c_const": np.full(n, 0.1),  # 0.1 is not exact in binary: the mean of copies must not leave residue
        "d_step": np.r_[np.full(60, 0.1), np.full(60, 0.3)],
        "e_then_noisy": np.r_[np.full(60, 2.0), rng.normal(2.0, 0.01, size=60)],
        "f_steps": np.r_[np.full(60, 1.0), 1.0 + 0.5 * (np.arange(60) % 5 + 1)],
    }
    obs = _obs(cols, 60)
    for name in ("nsigma", "baro"):
        r = get_method(name).rank(obs)
        s = dict(zip(r.candidates, r.scores))
        assert s["c_const"] == 0.0
        # A one-step move of a two-level column is at its resolution: it scores 1, below a real 4-sigma shift.
        assert s["d_step"] == pytest.approx(1.0)
        assert s["f_steps"] == pytest.approx(5.0)  # five steps of 0.5 above a constant baseline
        assert s["e_then_noisy"] > s["b_shift"] > s["a_noise"] > s["d_step"]
        assert all(np.isfinite(r.scores))
    e = get_method("e-diagnosis").rank(obs)
    assert e.candidates[-1] == "c_const" and e.scores[-1] == 0.0


def test_floor_never_changes_a_standard_score_of_a_finely_resolved_baseline():
    rng = np.random.default_rng(2)
    pre = np.round(rng.normal(size=(40, 50)), 3)  # a resolution of 0.001, a spread of 1
    post = np.round(rng.normal(2.0, 1.0, size=(40, 50)), 3)
    center, scale = baseline(pre, post, "standard")
    np.testing.assert_array_equal(scale, pre.std(axis=0))
    np.testing.assert_array_equal(center, pre.mean(axis=0))


def test_a_coarse_baseline_is_scaled_by_at_least_its_resolution():
    rng = np.random.default_rng(2)
    pre = rng.integers(0, 3, size=(40, 50)).astype(float)  # std about 0.8 < the resolution 1
    post = rng.integers(0, 9, size=(40, 50)).astype(float)
    _, scale = baseline(pre, post, "standard")
    np.testing.assert_array_equal(scale, np.maximum(pre.std(axis=0), 1.0))


def test_robust_scale_of_a_mostly_constant_counter_uses_the_resolution():
    pre = np.zeros((60, 1))
    pre[[5, 30], 0] = 1.0  # IQR 0, not constant
    post = np.full((60, 1), 2.0)
    assert deviation_scores(pre, post, "robust")[0] == pytest.approx(2.0)  # two steps of 1
    assert deviation_scores(pre, post, "standard")[0] == pytest.approx(2.0 - pre.mean())


def test_float_noise_is_not_change():
    # A prefill-time p90 that is 0.27 before and 0.26999999999999996 (one ulp less) once after: no change at all.
    pre = np.full((57, 1), 0.27)
    post = np.full((15, 1), 0.27)
    post[4, 0] = 0.26999999999999996
    assert post[4, 0] != 0.27
    np.testing.assert_array_equal(resolution(np.r_[pre, post]), [0.0])
    for kind in ("standard", "robust"):
        assert deviation_scores(pre, post, kind)[0] == 0.0
    # Float noise in the baseline too, next to a real change elsewhere: the real change ranks first.
    rng = np.random.default_rng(4)
    noisy = 0.27 + np.where(rng.random(72) < 0.3, -5.551115123125783e-17, 0.0)
    real = np.r_[rng.normal(10.0, 1.0, 57), rng.normal(14.0, 1.0, 15)]
    obs = _obs({"a_prefill_p90": noisy, "b_cpu": real}, 57)
    for name in ("nsigma", "baro"):
        r = get_method(name).rank(obs)
        assert r.candidates[0] == "b_cpu"
        assert dict(zip(r.candidates, r.scores))["a_prefill_p90"] == 0.0


def test_a_quantized_quantile_stepping_between_two_buckets_ranks_below_a_real_shift():
    # A histogram p99 whose rank sits at the top of the 0.04-0.06 bucket (0.0598, with interpolation jitter) and
    # now and then one bucket up (about 0.078): before and after alike. A varying column shifts by 3 sigma.
    rng = np.random.default_rng(5)
    n, split = 72, 57
    up = rng.random(n) < 0.2
    p99 = np.where(up, 0.078 + 0.0004 * rng.integers(-2, 3, n), 0.0598 - 0.000025 * rng.integers(0, 2, n))
    p99[split:split + 4] = 0.0784  # a run of the upper bucket after the split
    shift = np.r_[rng.normal(1.0, 0.05, split), rng.normal(1.15, 0.05, n - split)]
    obs = _obs({"a_ttft_p99": p99, "b_latency": shift}, split)
    for name in ("nsigma", "baro"):
        r = get_method(name).rank(obs)
        s = dict(zip(r.candidates, r.scores))
        assert r.candidates[0] == "b_latency", s
        assert s["a_ttft_p99"] < 3.0


def test_one_sided_scores_ignore_drops():
    rng = np.random.default_rng(3)
    obs = _obs({"a_up": np.r_[rng.normal(size=60), rng.normal(5, 1, 60)],
                "b_down": np.r_[rng.normal(size=60), rng.normal(-8, 1, 60)]}, 60)
    assert get_method("nsigma").rank(obs).candidates[0] == "b_down"
    assert get_method("nsigma", two_sided=False).rank(obs).candidates[0] == "a_up"
    assert get_method("baro", two_sided=False).rank(obs).candidates[0] == "a_up"


def test_nsigma_is_the_max_z_score():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(120, 3))
    obs = _obs({f"s{i}_m": x[:, i] for i in range(3)}, 60)
    r = get_method("nsigma").rank(obs)
    z = np.abs(x[60:] - x[:60].mean(0)) / x[:60].std(0)
    assert dict(zip(r.candidates, r.scores)) == pytest.approx({f"s{i}_m": z[:, i].max() for i in range(3)})


# --- ε-Diagnosis -------------------------------------------------------------------------------------------


def test_energy_statistic_matches_the_pairwise_definition():
    rng = np.random.default_rng(5)
    a = np.round(rng.normal(size=(15, 4)), 1)  # rounding makes ties
    b = np.round(rng.normal(0.5, 2.0, size=(15, 4)), 1)
    stat, p = energy_test(a, b, permutations=50, rng=np.random.default_rng(0))
    n = len(a)
    for j in range(4):
        x, y = a[:, j], b[:, j]
        e = 2 * np.abs(x[:, None] - y).mean() - np.abs(x[:, None] - x).mean() - np.abs(y[:, None] - y).mean()
        assert stat[j] == pytest.approx(n * n / (2 * n) * e)
    assert np.all((p > 0) & (p <= 1))


def test_ediagnosis_direction_changed_columns_are_suspicious():
    rng = np.random.default_rng(6)
    base = rng.normal(size=60)
    obs = _obs({
        "a_same": np.r_[base, rng.permutation(base)],  # the same values after: no change at all
        "b_noise": rng.normal(size=120),
        "c_spread": np.r_[rng.normal(size=60), rng.normal(0, 4, 60)],  # same level, wider spread
        "d_level": np.r_[rng.normal(size=60), rng.normal(3, 1, 60)],
    }, 60)
    r = get_method("e-diagnosis").rank(obs, seed=0)
    assert r.candidates[:2] == ("d_level", "c_spread")
    s = dict(zip(r.candidates, r.scores))
    assert s["d_level"] > 1 and s["c_spread"] > 1  # significant at alpha
    assert s["a_same"] < 1  # not significant


def test_ediagnosis_uses_equal_windows_and_seeded_permutations(planted):
    obs = planted[2].observation
    a = get_method("e-diagnosis").rank(obs, seed=1)
    b = get_method("e-diagnosis", permutations=99).rank(obs, seed=1)
    assert a.candidates[:3] == b.candidates[:3]
    # inject_time near the end: the post side is short, the pre side is cut to the same length
    short = replace(obs, inject_time=float(obs.metrics["time"].iloc[-5]))
    assert len(get_method("e-diagnosis").rank(short)) == len(obs.metric_columns)


# --- degenerate input --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", METHODS)
def test_no_metric_columns_raises(name):
    obs = Observation(metrics=pd.DataFrame({"time": [1.0, 2.0, 3.0]}), inject_time=2.0)
    with pytest.raises(MethodError, match="no metric columns"):
        get_method(name).rank(obs)


@pytest.mark.parametrize("name", ["nsigma", "baro", "e-diagnosis"])
def test_too_few_pre_samples_raises(name):
    rng = np.random.default_rng(7)
    obs = _obs({"a_m": rng.normal(size=30), "b_m": rng.normal(size=30)}, 1)
    with pytest.raises(MethodError, match="before inject_time"):
        get_method(name).rank(obs)


@pytest.mark.parametrize("name", ["nsigma", "e-diagnosis"])
def test_missing_inject_time_raises(name, planted):
    with pytest.raises(MethodError, match="inject_time"):
        get_method(name).rank(replace(planted[0].observation, inject_time=None))


def test_dummy_needs_no_inject_time(planted):
    assert len(get_method("dummy").rank(replace(planted[0].observation, inject_time=None))) == 24


@pytest.mark.parametrize("name", ["nsigma", "baro", "e-diagnosis"])
def test_shortest_windows_work(name):
    # two samples each side is the minimum every method accepts
    obs = _obs({"a_m": np.array([1.0, 1.2, 5.0, 5.5]), "b_m": np.array([2.0, 2.1, 2.05, 2.0])}, 2)
    r = get_method(name, window=2).rank(obs, seed=0)
    assert r.candidates[0] == "a_m" and len(r) == 2
    with pytest.raises(MethodError, match="window"):
        get_method(name, window=1).rank(obs)


@pytest.mark.parametrize("name", METHODS)
def test_two_columns_nan_gaps_and_an_empty_column(name):
    rng = np.random.default_rng(8)
    a = np.r_[rng.normal(size=60), rng.normal(6, 1, 60)]
    a[[10, 11, 70, 119]] = np.nan  # gaps are filled before scoring
    obs = _obs({"a_m": a, "b_m": rng.normal(size=120)}, 60)
    r = get_method(name).rank(obs, seed=0)
    assert len(r) == 2 and all(np.isfinite(r.scores))
    if name != "dummy":
        assert r.candidates[0] == "a_m"
        # an all-NaN series (rejected by validation) ranks last with a NaN score instead of breaking the ranking
        obs2 = _obs({"a_m": a, "b_m": rng.normal(size=120), "c_m": np.full(120, np.nan)}, 60)
        r2 = get_method(name).rank(obs2, seed=0)
        assert r2.candidates[-1] == "c_m" and np.isnan(r2.scores[-1])
