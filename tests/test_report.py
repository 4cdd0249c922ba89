import io
import json
import math

import pandas as pd
import pytest
from rich.console import Console

from llmrca.evaluate.store import ResultStore, frame_to_rows, rows_to_frame
from llmrca.report import JSON_KEYS, print_table, summarize, to_json, to_markdown


def _row(method, case, fault, rank, status="ok", runtime=1.0, n=5, family="metric", root="svc-1",
         rank_fine=None, fine_level=False, indicator=None):
    return {"method": method, "family": family, "case_id": case, "fault_type": fault, "root_cause": root,
            "indicator": indicator, "rank": rank, "rank_fine": rank_fine, "fine_level": fine_level,
            "n_candidates": n, "top5": "[]", "runtime_s": runtime, "peak_mem_mb": 1.0, "status": status,
            "seed": 0, "case_path": f"/cases/{case}"}


@pytest.fixture()
def results():
    rows = [
        # method "a": cpu ranks 1, 2; memory ranks 4, and one error (a miss)
        _row("a", "c1", "cpu", 1, runtime=1.0), _row("a", "c2", "cpu", 2, runtime=3.0),
        _row("a", "c3", "memory", 4, runtime=2.0),
        _row("a", "c4", "memory", None, status="error: X: y", runtime=9),
        # method "b": a trace method that times out once and misses the truth once
        _row("b", "c1", "cpu", None, family="trace", runtime=0.5), _row("b", "c2", "cpu", 1, family="trace"),
        _row("b", "c3", "memory", None, status="timeout", family="trace", runtime=600),
        _row("b", "c4", "memory", 3, family="trace", runtime=2.0),
        # a normal case: never scored
        _row("a", "n1", "normal", None, root=None),
        _row("b", "n1", "normal", None, root=None, family="trace"),
    ]
    for r in rows:  # c3 has 10 services
        if r["case_id"] == "c3":
            r["n_candidates"] = 10
    return rows_to_frame(rows)


def _get(summary, method, fault):
    sel = summary[(summary["method"] == method) & (summary["fault_type"] == fault)]
    assert len(sel) == 1
    return sel.iloc[0]


def test_summary_values_per_fault_and_overall(results):
    s = summarize(results)
    assert list(s.columns) == ["method", "family", "fault_type", "ac1", "ac3", "avg5", "time_s", "n",
                               "errors", "timeouts", "no_answer"]
    r = _get(s, "a", "cpu")
    assert (r.ac1, r.ac3, r.avg5, r.time_s, r.n, r.errors) == pytest.approx((0.5, 1.0, 0.9, 2.0, 2, 0))
    r = _get(s, "a", "memory")  # ranks 4 and an error (miss): AC@1..5 = 0,0,0,.5,.5
    assert (r.ac1, r.ac3, r.avg5, r.time_s, r.n, r.errors) == pytest.approx((0.0, 0.0, 0.2, 2.0, 2, 1))
    r = _get(s, "a", "all")  # ranks 1, 2, 4, miss: AC@1..5 = .25,.5,.5,.75,.75
    assert (r.ac1, r.ac3, r.avg5, r.time_s, r.n, r.errors) == pytest.approx((0.25, 0.5, 0.55, 2.0, 4, 1))
    r = _get(s, "b", "all")  # ranks miss, 1, timeout, 3; time over ok rows only: (0.5 + 1 + 2) / 3
    assert (r.ac1, r.ac3, r.avg5, r.time_s, r.n, r.errors) == pytest.approx((0.25, 0.5, 0.4, 3.5 / 3, 4, 0))
    assert (r.timeouts, r.no_answer) == (1, 0)  # a timeout is counted as one, not as an error
    assert (_get(s, "a", "all").timeouts, _get(s, "a", "all").no_answer) == (0, 0)
    assert "normal" not in set(s["fault_type"])
    assert list(dict.fromkeys(s["fault_type"])) == ["cpu", "memory", "all"]


def test_chance_row_uses_each_case_once(results):
    s = summarize(results)
    r = _get(s, "chance", "all")  # c1, c2 with 5 services, c3 10, c4 5
    assert r.ac1 == pytest.approx((0.2 * 3 + 0.1) / 4)
    assert r.ac3 == pytest.approx((0.6 * 3 + 0.3) / 4)
    assert r.avg5 == pytest.approx((0.6 * 3 + 0.3) / 4)  # Avg@5 of n=5 is 0.6, of n=10 is 0.3
    assert (r.n, r.errors) == (4, 0) and math.isnan(r.time_s)
    assert _get(s, "chance", "memory").ac1 == pytest.approx((0.1 + 0.2) / 2)
    assert "chance" not in set(summarize(results, chance=False)["method"])


def test_fine_level_scores_only_indicator_ranking_methods(results):
    rows = results.copy()
    sel = rows["method"] == "a"
    rows.loc[sel, "indicator"] = "svc-1_cpu"
    rows.loc[sel & (rows["case_id"] == "c1"), ["rank_fine", "fine_level"]] = [2, True]
    rows.loc[sel & (rows["case_id"] == "c2"), ["rank_fine", "fine_level"]] = [None, True]
    s = summarize(rows, level="fine")
    assert set(s["method"]) == {"a"}
    r = _get(s, "a", "all")  # fine ranks 2, miss, miss (no rank_fine), error
    assert (r.ac1, r.ac3, r.n, r.errors) == pytest.approx((0.0, 0.25, 4, 1))


def test_to_json_has_exactly_the_agreed_keys(results):
    records = to_json(summarize(results))
    assert all(tuple(r) == JSON_KEYS for r in records)
    assert {r["fault_type"] for r in records} == {"cpu", "memory", "all"}
    chance = next(r for r in records if r["method"] == "chance" and r["fault_type"] == "all")
    assert chance["time_s"] is None
    json.dumps(records, allow_nan=False)  # strict JSON: no NaN


def test_markdown_tables_per_metric_and_wide(results):
    s = summarize(results)
    md = to_markdown(s)
    for title in ("### AC@1", "### AC@3", "### Avg@5", "### Time per case"):
        assert title in md
    assert "| Method | Family | cpu | memory | all |" in md
    assert "| a | metric | **1.00** | 0.00 | **0.50** |" in md  # AC@3 row of a: best on cpu and overall
    wide = to_markdown(s, layout="wide")
    assert "cpu AC@1" in wide and "all Avg@5" in wide
    assert wide.startswith("| Method | Family | cpu AC@1 |")
    assert wide.count("\n| ") == 3  # rows a, b, chance
    with pytest.raises(ValueError, match="layout"):
        to_markdown(s, layout="tall")


def test_print_table_renders_every_method(results):
    buf = io.StringIO()
    print_table(summarize(results), Console(file=buf, width=120, color_system=None))
    text = buf.getvalue()
    for word in ("AC@1", "Avg@5", "chance", "memory", "0.55"):
        assert word in text


def test_summarize_reads_a_results_folder(results, tmp_path):
    with ResultStore(tmp_path) as store:
        for r in frame_to_rows(results):
            store.append(r)
    expected = summarize(results)
    pd.testing.assert_frame_equal(summarize(tmp_path), expected)
    pd.testing.assert_frame_equal(summarize(tmp_path / "results.parquet"), expected)
    pd.testing.assert_frame_equal(summarize(tmp_path / "results.jsonl"), expected)
