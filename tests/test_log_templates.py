import numpy as np
import pandas as pd
import pytest

from llmrca.case.derive import template_counts
from llmrca.case.templates import log_templates, mine_templates, template_id
from llmrca.errors import CaseError

T0 = 1_700_000_000.0


def _logs(rows):
    return pd.DataFrame(rows, columns=["time", "service", "level", "message", "template"])


def test_template_ids_are_stable_names():
    a = template_id("user <*> logged in")
    assert a == template_id("user <*> logged in") and a != template_id("user <*> logged out")
    assert a.startswith("t") and len(a) == 9 and "_" not in a


def test_drain_groups_lines_that_differ_in_their_variables():
    lines = ["user 12 logged in from 10.0.0.1", "disk /dev/sda1 is 91% full",
             "user 7 logged in from 10.0.0.9",
             "user 30 logged in from 10.0.0.4", "disk /dev/sdb2 is 95% full"]
    t = mine_templates(lines)
    assert t[0] == t[2] == t[3] and t[1] == t[4] and t[0] != t[1]
    assert "<*>" in t[0] and "logged in from" in t[0]
    assert mine_templates(lines) == t  # one fresh miner per call: same input, same templates


def test_given_templates_win_and_drain_fills_the_gaps():
    logs = _logs([
        (T0 + 2, "a", "INFO", "user 12 logged in", "user <*> logged in"),
        (T0 + 1, "a", "INFO", "user 7 logged in", None),
        (T0 + 3, "b", "INFO", "user 9 logged in", ""),
        (T0 + 4, "b", "INFO", "cache warmed", "cache warmed"),
    ])
    auto = log_templates(logs)
    assert auto[0] == "user <*> logged in" and auto[3] == "cache warmed"
    assert auto[1] == auto[2] and "<*>" in auto[1]  # mined, together
    drain = log_templates(logs, mode="drain")
    assert drain[0] == drain[1] == drain[2] and drain[3] == "cache warmed"
    with pytest.raises(CaseError, match="row 1: no template"):
        log_templates(logs, mode="given")
    assert log_templates(logs.iloc[[0, 3]], mode="given").tolist() == ["user <*> logged in", "cache warmed"]
    with pytest.raises(CaseError, match="unknown template mode"):
        log_templates(logs, mode="regex")
    no_column = logs.drop(columns=["template"])
    assert log_templates(no_column).nunique() == 2


def test_template_counts_per_service_template_and_window():
    logs = _logs([
        (T0 + 0.5, "a", "INFO", "x 1", "x <*>"),
        (T0 + 4.9, "a", "INFO", "x 2", "x <*>"),
        (T0 + 5.0, "a", "ERROR", "boom", "boom"),
        (T0 + 7.0, "b", "INFO", "x 3", "x <*>"),
        (T0 + 15.0, "b", "INFO", "late", "late"),  # outside: the end is exclusive, but its column exists
    ])
    out = template_counts(logs, 5, T0, T0 + 15)
    x, boom, late = template_id("x <*>"), template_id("boom"), template_id("late")
    assert out.columns.tolist() == ["time", *sorted([f"a_log-template-{x}", f"a_log-template-{boom}"]),
                                    *sorted([f"b_log-template-{x}", f"b_log-template-{late}"])]
    assert out["time"].tolist() == [T0, T0 + 5, T0 + 10]
    assert out[f"a_log-template-{x}"].tolist() == [2.0, 0.0, 0.0]
    assert out[f"a_log-template-{boom}"].tolist() == [0.0, 1.0, 0.0]
    assert out[f"b_log-template-{x}"].tolist() == [0.0, 1.0, 0.0]
    assert out[f"b_log-template-{late}"].tolist() == [0.0, 0.0, 0.0]
    assert all(out[c].dtype == np.float64 for c in out.columns)
    only_a = template_counts(logs, 5, T0, T0 + 15, services=["a"])
    assert [c.split("_")[0] for c in only_a.columns[1:]] == ["a", "a"]
    # Mined templates count the same way when the column is empty.
    mined = template_counts(logs.assign(template=None), 5, T0, T0 + 15)
    assert mined.shape == out.shape and mined.iloc[:, 1:].sum().sum() == out.iloc[:, 1:].sum().sum()


def test_template_counts_name_bad_input():
    with pytest.raises(CaseError, match="service"):
        template_counts(pd.DataFrame({"time": [T0]}), 5, T0, T0 + 10)
    with pytest.raises(CaseError, match="'_'"):
        template_counts(_logs([(T0, "bad_name", "INFO", "x", "x")]), 5, T0, T0 + 10)
    with pytest.raises(CaseError, match="templates for"):
        template_counts(_logs([(T0, "a", "INFO", "x", "x")]), 5, T0, T0 + 10, templates=pd.Series(["x", "y"]))


def test_simulated_logs_given_and_mined():
    from _trace_cases import simulated

    logs = simulated("cpu", "ray-replicas-1").observation.logs
    given = log_templates(logs)
    assert given.equals(logs["template"].astype(object))
    mined = log_templates(logs, mode="drain")
    # Drain merges some of the simulator's templates (same length, one differing word) but never splits one.
    assert mined.nunique() <= given.nunique()
    assert (pd.crosstab(given, mined) > 0).sum(axis=1).max() == 1
