"""benchmarks/vs_rcaeval.py's scoring: times are compared on the same cases on both sides (the calls of both
ran to their end; not the run's first case, whose calls also set up their libraries), accuracy counts every
case."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import vs_rcaeval


def _cases(n):
    return [{"id": f"c{i}", "truth": "a", "fault": "cpu"} for i in range(n)]


def test_times_are_means_over_the_cases_both_sides_completed():
    cases = [{"id": "first", "truth": "a", "fault": "cpu"}, *_cases(5)]
    ours = {
        ("tracerca", "first"): {"status": "ok", "seconds": 0.5, "services": ["b"], "rank": None},
        ("tracerca", "c0"): {"status": "ok", "seconds": 0.002, "services": ["a", "b"], "rank": 1},
        ("tracerca", "c1"): {"status": "no-answer: nothing moved", "seconds": 0.001, "services": []},
        ("tracerca", "c2"): {"status": "ok", "seconds": 0.004, "services": ["b", "a"], "rank": 2},
        ("tracerca", "c3"): {"status": "error: ValueError: x", "seconds": 0.5, "services": []},
        ("tracerca", "c4"): {"status": "ok", "seconds": 0.003, "services": ["a"], "rank": 1},
    }
    ref = {
        "first": {"status": "ok", "seconds": 0.03, "cpu_seconds": 0.03, "services": ["b"]},
        "c0": {"status": "ok", "seconds": 0.02, "cpu_seconds": 0.02, "services": ["b", "a"]},
        "c1": {"status": "error: empty ranking (the method returned no candidate)", "seconds": 0.01,
               "cpu_seconds": 0.01, "services": []},
        "c2": {"status": "error: KeyError: 'x' (foo.py:1 in f)", "seconds": 0.9, "cpu_seconds": 0.9,
               "services": []},
        "c3": {"status": "ok", "seconds": 0.03, "cpu_seconds": 0.03, "services": ["a"]},
        "c4": {"status": "fallback: the graph has no edge", "seconds": 0.006, "cpu_seconds": 0.006,
               "services": ["a"]},
    }
    cpu = {("tracerca", "first"): 0.4, ("tracerca", "c0"): 0.001, ("tracerca", "c1"): 0.0005, ("tracerca", "c2"): 0.002,
           ("tracerca", "c4"): 0.002}
    r = vs_rcaeval.score("tracerca", cases, ours, ref, cpu)
    # c0 (ok/ok), c1 (no-answer/empty ranking), c4 (ok/fallback); c2 and c3 have a crash on one side, and the
    # first case is each side's warm-up
    assert r["timed_cases"] == r["timed_cases_cpu"] == 3
    assert r["ours"]["seconds"] == pytest.approx((0.002 + 0.001 + 0.003) / 3)
    assert r["rcaeval"]["seconds"] == pytest.approx((0.02 + 0.01 + 0.006) / 3)
    assert r["ratio"] == pytest.approx(0.036 / 0.006)
    assert r["ratio_cpu"] == pytest.approx((0.02 + 0.01 + 0.006) / (0.001 + 0.0005 + 0.002))
    # accuracy still over every case: ours finds "a" first in c0 and c4; RCAEval's fallback is a miss
    assert r["ours"]["ac1"] == pytest.approx(2 / 6)
    assert r["rcaeval"]["ac1"] == pytest.approx(1 / 6)
    assert vs_rcaeval.table_rows([r])[0][-1] == "3/6"


def test_a_single_case_is_timed():
    cases = _cases(1)
    ours = {("baro", "c0"): {"status": "ok", "seconds": 0.001, "services": ["a"], "rank": 1}}
    ref = {"c0": {"status": "ok", "seconds": 0.01, "cpu_seconds": 0.01, "services": ["a"]}}
    r = vs_rcaeval.score("baro", cases, ours, ref, {("baro", "c0"): 0.002})
    assert r["timed_cases"] == 1 and r["ratio"] == pytest.approx(10.0) and r["ratio_cpu"] == pytest.approx(5.0)


def test_no_common_completed_case_gives_no_ratio():
    cases = _cases(2)
    ours = {("baro", c["id"]): {"status": "ok", "seconds": 0.001, "services": ["a"], "rank": 1} for c in cases}
    ref = {c["id"]: {"status": "timeout", "seconds": 5.0, "services": []} for c in cases}
    r = vs_rcaeval.score("baro", cases, ours, ref, {})
    assert r["timed_cases"] == 0 and r["ratio"] is None and r["ratio_cpu"] is None
