"""Fault-free cases are scored: the top score of every ranking is stored, and the report gives, per method, the
AUROC of that score separating fault cases from normal ones."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from llmrca import evaluate, find_cases, generate_suite
from llmrca.cli import app
from llmrca.report.separation import separation, separation_markdown


def _rows(method, kinds, tops, status="ok"):
    return pd.DataFrame({"method": method, "fault_type": kinds, "top_score": tops, "status": status})


def test_auroc_is_one_when_a_threshold_separates_and_half_when_scores_ignore_the_fault():
    df = pd.concat([
        _rows("sharp", ["cpu", "cpu", "normal", "normal"], [9.0, 7.0, 1.0, 2.0]),
        _rows("blind", ["cpu", "cpu", "normal", "normal"], [3.0, 1.0, 3.0, 1.0]),
        _rows("backwards", ["cpu", "normal"], [1.0, 5.0]),
    ])
    sep = separation(df).set_index("method")
    assert sep.loc["sharp", "auroc"] == 1.0 and sep.loc["blind", "auroc"] == 0.5
    assert sep.loc["backwards", "auroc"] == 0.0
    assert sep.loc["sharp", "normal_top_median"] == 1.5 and sep.loc["sharp", "fault_top_median"] == 8.0


def test_failed_rows_and_non_finite_scores_are_left_out_and_counted():
    df = pd.DataFrame({"method": "m", "fault_type": ["cpu", "cpu", "normal", "normal"],
                       "top_score": [5.0, np.nan, 1.0, 9.0], "status": ["ok", "ok", "ok", "error: boom"]})
    r = separation(df).iloc[0]
    assert (r["fault_cases"], r["normal_cases"], r["left_out"], r["auroc"]) == (1, 1, 2, 1.0)


def test_no_normal_runs_gives_na_not_a_number():
    r = separation(_rows("m", ["cpu", "gpu"], [1.0, 2.0])).iloc[0]
    assert math.isnan(r["auroc"]) and "n/a" in separation_markdown(separation(_rows("m", ["cpu"], [1.0])))


def test_a_suite_with_normal_runs_is_scored_end_to_end(tmp_path):
    generate_suite("demo", tmp_path / "cases", reps=1, normal=2, progress=False,
                   sets=['faults.types=["cpu"]', 'faults.targets=["ray-replicas-0"]'])
    cases = find_cases(tmp_path / "cases")
    df = evaluate(cases, ["nsigma", "dummy"], tmp_path / "res", jobs=1, progress=False)
    assert (df["fault_type"] == "normal").sum() == 4  # 2 normal runs x 2 methods, ranked like any case
    ok = df[df["status"] == "ok"]
    assert ok["top_score"].notna().all()
    sep = separation(df).set_index("method")
    assert sep.loc["nsigma", "normal_cases"] == 2 and np.isfinite(sep.loc["nsigma", "auroc"])
    r = CliRunner().invoke(app, ["report", str(tmp_path / "res"), "-f", "md"])
    assert r.exit_code == 0, r.output
    assert "AUROC" in r.output and "nsigma" in r.output
