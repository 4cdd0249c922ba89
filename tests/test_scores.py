import itertools
import math

import pandas as pd
import pytest

from llmrca.case import GroundTruth, Observation
from llmrca.evaluate import ac_at_k, avg_at_k, chance_ac_at_k, chance_avg_at_k, truth_ranks
from llmrca.methods import Ranking


def test_ac_and_avg_at_k_exact_on_hand_made_ranks():
    ranks = [1, 2, None, 4, 6]
    assert ac_at_k(ranks, 1) == pytest.approx(0.2)
    assert ac_at_k(ranks, 3) == pytest.approx(0.4)
    assert ac_at_k(ranks, 5) == pytest.approx(0.6)
    # Avg@5 = mean(AC@1..AC@5) = (0.2 + 0.4 + 0.4 + 0.6 + 0.6) / 5
    assert avg_at_k(ranks, 5) == pytest.approx(0.44)
    assert avg_at_k(ranks, 1) == ac_at_k(ranks, 1)


def test_missing_ranks_of_any_kind_are_misses():
    assert ac_at_k([1, float("nan"), pd.NA, None], 10) == pytest.approx(0.25)
    assert ac_at_k(pd.array([1, None, 3], dtype="Int64"), 3) == pytest.approx(2 / 3)


def test_no_case_gives_nan_and_bad_k_raises():
    assert math.isnan(ac_at_k([], 1))
    assert math.isnan(avg_at_k([], 5))
    with pytest.raises(ValueError, match="positive integer"):
        ac_at_k([1], 0)
    with pytest.raises(ValueError, match="positive integer"):
        avg_at_k([1], 2.5)


def test_scores_from_rankings_at_service_level_collapse_metrics_to_services():
    obs = Observation(metrics=pd.DataFrame({"time": [0.0, 1.0], "a_cpu": [1, 2], "b_cpu": [1, 2],
                                            "b_mem": [1, 2], "c_cpu": [1, 2]}))
    # b appears twice; service-level ranking is a, b, c, so c is 3rd, not 4th.
    ranking = Ranking(("a_cpu", "b_mem", "b_cpu", "c_cpu"), (4.0, 3.0, 2.0, 1.0))
    truths = [GroundTruth(s, "cpu", f"{s}_cpu") for s in ("a", "b", "c")]
    got = [truth_ranks(ranking, t, obs) for t in truths]
    assert [g.rank for g in got] == [1, 2, 3]
    assert [g.rank_fine for g in got] == [1, 3, 4]
    assert all(g.fine_level for g in got)
    ranks = [g.rank for g in got]
    assert (ac_at_k(ranks, 1), ac_at_k(ranks, 2), ac_at_k(ranks, 3)) == pytest.approx((1 / 3, 2 / 3, 1.0))
    fine = [g.rank_fine for g in got]
    assert (ac_at_k(fine, 1), ac_at_k(fine, 3), avg_at_k(fine, 4)) == pytest.approx((1 / 3, 2 / 3, 7 / 12))


def test_fine_level_applies_only_to_indicator_rankings_with_a_known_indicator():
    obs = Observation(metrics=pd.DataFrame({"time": [0.0, 1.0], "a_cpu": [1, 2], "b_cpu": [1, 2]}))
    services_only = Ranking(("b", "a"), (2.0, 1.0))
    r = truth_ranks(services_only, GroundTruth("a", "cpu", "a_cpu"), obs)
    assert (r.rank, r.rank_fine, r.fine_level) == (2, None, False)
    r = truth_ranks(Ranking(("b_cpu",), (1.0,)), GroundTruth("a", "cpu", "a_cpu"), obs)
    assert (r.rank, r.rank_fine, r.fine_level) == (None, None, True)  # absent: a miss at fine level
    r = truth_ranks(Ranking(("a_cpu",), (1.0,)), GroundTruth("a", "cpu", None), obs)
    assert (r.rank, r.fine_level) == (1, False)
    r = truth_ranks(Ranking(("a_cpu",), (1.0,)), GroundTruth(None), obs)
    assert r.rank is None


def test_chance_baseline_exact():
    n = [4, 10]
    assert chance_ac_at_k(n, 1) == pytest.approx((1 / 4 + 1 / 10) / 2)
    assert chance_ac_at_k(n, 3) == pytest.approx((3 / 4 + 3 / 10) / 2)
    assert chance_ac_at_k(n, 5) == pytest.approx((1.0 + 0.5) / 2)  # min(k, n)/n saturates at 1
    # per case Avg@5: n=4 → (1+2+3+4+4)/(5*4) = 0.7; n=10 → (1+2+3+4+5)/(5*10) = 0.3
    assert chance_avg_at_k(n, 5) == pytest.approx(0.5)
    assert chance_ac_at_k([None, 0, 5], 1) == pytest.approx(0.2)  # unknown or empty cases skipped


def test_chance_equals_the_average_over_every_ordering_of_the_services():
    services = ["a", "b", "c", "d", "e"]
    ranks = [list(p).index("c") + 1 for p in itertools.permutations(services)]
    for k in (1, 2, 3, 5):
        assert ac_at_k(ranks, k) == pytest.approx(chance_ac_at_k([5], k))
    assert avg_at_k(ranks, 5) == pytest.approx(chance_avg_at_k([5], 5))
