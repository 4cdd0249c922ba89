"""`llmrca bench`: suite → both views → results + HTML/Markdown report; resume; refusal; CIs; escaping."""

import io
import json
import math

import numpy as np
import pandas as pd
import pytest
from rich.console import Console
from typer.testing import CliRunner

from llmrca.bench import run_bench
from llmrca.cli import app
from llmrca.errors import LlmrcaError
from llmrca.evaluate import avg_at_k, load_results
from llmrca.evaluate.store import rows_to_frame
from llmrca.report import (
    bootstrap_mean_ci,
    case_ranks,
    compare_views,
    score_cis,
    summarize,
    to_html,
    to_markdown,
    wilson_interval,
)
from llmrca.report.ci import per_case_scores

METHODS = ["dummy", "nsigma", "baro"]
TINY = {"reps": 1, "jobs": 2, "timeout": 60, "methods": METHODS, "views": ("study", "full"), "seed": 3,
        "overrides": {"faults": ["cpu", "gpu"]}, "progress": False}


def _quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "b"
    return run_bench("paper", out, console=_quiet(), **TINY)


# --------------------------------------------------------------------------------------------- run_bench


def test_bench_simulates_the_suite_and_evaluates_every_view(bench):
    assert bench.generated and bench.cases == 8  # 2 faults × 4 replicas × 1 rep
    assert bench.views == ("study", "full") and bench.methods == METHODS
    for view in ("study", "full"):
        assert bench.computed[view] == 8 * len(METHODS)
        stored = load_results(bench.out_dir / f"results-{view}")
        assert len(stored) == 8 * len(METHODS)
        assert set(stored["fault_type"]) == {"cpu", "gpu"}
        run = json.loads((bench.out_dir / f"results-{view}" / "run.json").read_text())
        assert run["params"]["view"] == view
        s = bench.summaries[view]
        assert {"ac1_lo", "avg5_hi"} <= set(s.columns) and "chance" in set(s["method"])
    manifest = json.loads((bench.out_dir / "cases" / "suite.json").read_text())
    assert (manifest["suite"], manifest["reps"], manifest["seed"]) == ("paper", 1, 3)


def test_report_html_has_every_section_method_and_case(bench):
    page = bench.report_html.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page and "http" not in page
    for section in ('id="compare"', "study vs full: side by side", "Accuracy, study view",
                    "Accuracy, full view", 'id="heatmap"', "Rank of the true root cause, per case",
                    "How to read this report", 'id="families"', "Method families",
                    "Metric-based", "chance", "bootstrap", "s/case", "Errors"):
        assert section in page, section
    for m in METHODS:
        assert f">{m}<" in page
    for cid in json.loads((bench.out_dir / "cases" / "suite.json").read_text())["cases"]:
        assert f">{cid}<" in page
    md = bench.report_md.read_text(encoding="utf-8")
    assert "## study view" in md and "## full view" in md and "| chance |" in md and "Δ" in md
    assert "## Method families" in md and "| metric (2) |" in md  # nsigma, baro (dummy is the baseline)


def test_rerun_computes_nothing_and_returns_the_same_results(bench):
    again = run_bench("paper", bench.out_dir, console=_quiet(), **TINY)
    assert not again.generated and again.computed == {"study": 0, "full": 0}
    for view in ("study", "full"):
        pd.testing.assert_frame_equal(again.results[view], bench.results[view])
    runs = json.loads((bench.out_dir / "bench.json").read_text())["runs"]
    assert len(runs) >= 2 and runs[-1]["computed"] == {"study": 0, "full": 0}


@pytest.mark.parametrize("change", [{"reps": 2}, {"seed": 4}, {"overrides": {"faults": ["cpu"]}}])
def test_a_suite_made_with_other_settings_is_refused(bench, change):
    before = (bench.out_dir / "cases" / "suite.json").read_bytes()
    with pytest.raises(LlmrcaError, match="other settings"):
        run_bench("paper", bench.out_dir, console=_quiet(), **{**TINY, **change})
    assert (bench.out_dir / "cases" / "suite.json").read_bytes() == before


def test_a_suite_json_of_other_settings_is_refused_before_anything_runs(tmp_path):
    (tmp_path / "cases").mkdir()
    made = {"suite": "paper", "seed": 3, "reps": 5, "normal": 0, "overrides": {}, "cases": []}
    (tmp_path / "cases" / "suite.json").write_text(json.dumps(made))
    with pytest.raises(LlmrcaError, match=r"suite there was made with other settings: overrides .* reps 5"):
        run_bench("paper", tmp_path, console=_quiet(), **TINY)
    assert not (tmp_path / "results-study").exists()


def test_results_of_another_bench_are_not_reused_when_its_cases_are_gone(tmp_path):
    settings = {"suite": "paper", "reps": 1, "seed": 0, "overrides": {"faults": ["cpu", "gpu"]}}
    (tmp_path / "bench.json").write_text(json.dumps({"settings": settings, "runs": []}))
    with pytest.raises(LlmrcaError, match=r"bench folder was made with other settings: seed 0 \(asked 3\)"):
        run_bench("paper", tmp_path, console=_quiet(), **TINY)
    assert not (tmp_path / "cases").exists()


def test_a_foreign_cases_folder_is_refused(tmp_path):
    (tmp_path / "cases" / "x").mkdir(parents=True)
    with pytest.raises(LlmrcaError, match="no suite.json"):
        run_bench("paper", tmp_path, console=_quiet(), **TINY)


def test_unknown_view_is_refused(tmp_path):
    with pytest.raises(LlmrcaError, match="unknown view"):
        run_bench("paper", tmp_path, console=_quiet(), **{**TINY, "views": ("study", "nope")})


def test_bench_command_resumes_and_prints_the_tables(bench):
    args = ["bench", "paper", "--out", str(bench.out_dir), "--reps", "1", "--seed", "3",
            "--faults", "cpu,gpu", "--methods", ",".join(METHODS), "--view", "study,full", "--no-progress"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "study: 0 task(s) run, full: 0 task(s) run" in r.output
    assert "Avg@5: study → full" in r.output and "nsigma" in r.output and "report.html" in r.output
    r = CliRunner().invoke(app, args[:-1] + ["--seed", "9", "--no-progress"])
    assert r.exit_code == 1 and "other settings" in r.output


# --------------------------------------------------------------------------------------------- intervals


def test_wilson_interval_known_values():
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(5, 5)[1] == pytest.approx(1.0)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_per_case_scores_add_up_to_ac_and_avg():
    ranks = [1, 3, 5, 7, None]
    m = per_case_scores(ranks)
    assert m.tolist() == [[1, 1, 1], [0, 1, 0.6], [0, 0, 0.2], [0, 0, 0], [0, 0, 0]]
    assert m[:, 2].mean() == pytest.approx(avg_at_k(ranks, 5))


def test_bootstrap_interval_width_and_strata():
    assert bootstrap_mean_ci([0.7] * 12) == pytest.approx((0.7, 0.7))
    # two strata, each constant: resampling within strata cannot move the mean; across them it can
    values, strata = [0.0] * 5 + [1.0] * 5, ["a"] * 5 + ["b"] * 5
    assert bootstrap_mean_ci(values, strata) == pytest.approx((0.5, 0.5))
    lo, hi = bootstrap_mean_ci(values)
    assert lo < 0.3 and hi > 0.7
    # a fair coin over 100 cases: about ±1.96·0.05
    coin = np.tile([0.0, 1.0], 50)
    lo, hi = bootstrap_mean_ci(coin, resamples=4000, seed=1)
    assert lo == pytest.approx(0.402, abs=0.02) and hi == pytest.approx(0.598, abs=0.02)
    assert bootstrap_mean_ci(coin, seed=5) == bootstrap_mean_ci(coin, seed=5)
    assert all(math.isnan(v) for v in bootstrap_mean_ci([]))


def test_score_cis_contain_the_scores():
    ranks = [1, 2, None, 1, 4, 1, 6, 1]
    ci = score_cis(ranks, ["x", "y"] * 4, seed=2)
    assert ci["ac1_lo"] <= 0.5 <= ci["ac1_hi"] and ci["ac1_lo"] < ci["ac1_hi"]
    assert ci["avg5_lo"] <= avg_at_k(ranks, 5) <= ci["avg5_hi"]


# --------------------------------------------------------------------------------------------- tables


def _row(method, case, fault, rank, status="ok", family="metric", root="svc-1", n=5):
    return {"method": method, "family": family, "case_id": case, "fault_type": fault, "root_cause": root,
            "indicator": None, "rank": rank, "rank_fine": None, "fine_level": False, "n_candidates": n,
            "top5": "[]", "runtime_s": 0.5, "peak_mem_mb": 1.0, "status": status, "seed": 0,
            "case_path": f"/c/{case}"}


def _frame(ranks_a, ranks_b):
    rows = []
    for i, (ra, rb) in enumerate(zip(ranks_a, ranks_b, strict=True)):
        fault = "cpu" if i % 2 == 0 else "gpu"
        rows.append(_row("a", f"c{i}", fault, ra))
        rows.append(_row("b", f"c{i}", fault, rb, family="trace"))
    return rows_to_frame(rows)


def test_summarize_ci_is_opt_in_and_markdown_shows_it():
    df = _frame([1, 2, 1, 9], [None, 1, 3, 1])
    plain = summarize(df)
    with_ci = summarize(df, ci=0.9, ci_seed=1)
    assert list(plain.columns) == list(with_ci.columns[: len(plain.columns)])
    pd.testing.assert_frame_equal(plain, with_ci[plain.columns])
    chance = with_ci[with_ci["method"] == "chance"]
    assert chance["ac1_lo"].isna().all()
    row = with_ci[(with_ci["method"] == "a") & (with_ci["fault_type"] == "all")].iloc[0]
    assert row.ac1_lo <= row.ac1 <= row.ac1_hi
    md = to_markdown(with_ci)
    assert f"({row.ac1_lo:.2f}–{row.ac1_hi:.2f})" in md and "90 % interval" in md
    assert "(" not in to_markdown(plain).split("\n\n")[1]  # no brackets without the CI columns


def test_compare_views_differences():
    study = summarize(_frame([1, 2, 1, 9], [None, 1, 3, 1]))
    full = summarize(_frame([1, 1, 1, 1], [None, None, None, None]))
    comp = compare_views({"study": study, "full": full}, "ac1")
    a = comp[(comp["method"] == "a") & (comp["fault_type"] == "all")].iloc[0]
    assert (a.study, a.full, a["diff"]) == pytest.approx((0.5, 1.0, 0.5))
    b = comp[(comp["method"] == "b") & (comp["fault_type"] == "cpu")].iloc[0]
    assert (b.study, b.full, b["diff"]) == pytest.approx((0.0, 0.0, 0.0))
    assert comp["method"].iloc[-1] == "chance"


def test_case_ranks_codes():
    rows = [_row("a", "c1", "cpu", 2), _row("a", "c2", "cpu", None), _row("a", "c3", "gpu", None, "timeout"),
            _row("b", "c1", "cpu", None, "error: X: y"), _row("a", "n", "normal", None, root=None)]
    t = case_ranks(rows_to_frame(rows))
    assert t["case_id"].tolist() == ["c1", "c2", "c3"]
    assert t["a"].tolist() == [2, "–", "T"] and t["b"].tolist() == ["E", "", ""]


def test_html_escapes_names_from_the_data():
    evil = "<img src=x onerror=alert(1)>"
    rows = [_row(evil, "c1&<b>", "cpu", 1, root='svc"<i>'), _row("ok", "c1&<b>", "cpu", 2, root='svc"<i>')]
    page = to_html({"study": rows_to_frame(rows), "full": rows_to_frame(rows)}, title="t<script>",
                   info=[("x", "<y>")])
    assert "<img" not in page and "<script>" not in page and "<b>" not in page and "<i>" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page and "c1&amp;&lt;b&gt;" in page and "&lt;y&gt;" in page


def test_full_view_leaves_out_column_heavy_methods_unless_asked(tmp_path):
    from llmrca.methods import resolve
    from llmrca.methods.registry import COLUMN_HEAVY

    light = resolve("light")
    assert set(light).isdisjoint(COLUMN_HEAVY) and len(light) + len(COLUMN_HEAVY) == len(resolve("all"))
    # (a short limit: the full view's PC may time out, a row all the same; only which rows exist is checked)
    opts = {**TINY, "methods": ["baro", "circa", "pc-pagerank"], "overrides": {"faults": ["cpu"]}, "reps": 1,
            "timeout": 10}
    b = run_bench("paper", tmp_path / "b", console=_quiet(), **opts)
    assert b.view_methods == {"study": ["baro", "circa", "pc-pagerank"], "full": ["baro", "circa"]}
    assert set(b.results["study"]["method"]) == {"baro", "circa", "pc-pagerank"}
    assert set(b.results["full"]["method"]) == {"baro", "circa"}
    assert "Not run in the full view" in b.report_md.read_text(encoding="utf-8")
    with pytest.raises(LlmrcaError, match="no method left for the full view"):
        run_bench("paper", tmp_path / "c", console=_quiet(), **{**opts, "methods": ["pc-pagerank"]})
    again = run_bench("paper", tmp_path / "b", console=_quiet(), **{**opts, "full_methods": "all"})
    assert again.computed == {"study": 0, "full": 4}  # only the heavy method's full-view rows are new
    assert set(again.results["full"]["method"]) == {"baro", "circa", "pc-pagerank"}


def test_family_scores_average_a_family_without_the_baseline():
    from llmrca.report.families import family_scores

    summary = pd.DataFrame([
        {"method": m, "family": fam, "fault_type": f, "avg5": v, "ac1": v, "ac3": v}
        for m, fam, vals in (("dummy", "metric", (0.9, 0.9)), ("a", "metric", (0.2, 0.4)),
                             ("b", "metric", (0.6, 0.8)), ("t", "trace", (0.1, 0.1)),
                             ("chance", "", (0.3, 0.3)))
        for f, v in zip(("cpu", "all"), vals)])
    fam = family_scores(summary).set_index(["family", "fault_type"])
    assert fam.loc[("metric", "cpu"), "mean"] == pytest.approx(0.4) and fam.loc[("metric", "all"), "best"] == "b"
    assert fam.loc[("metric", "all"), "methods"] == 2 and fam.loc[("trace", "all"), "max"] == pytest.approx(0.1)
    assert set(fam.index.get_level_values(0)) == {"metric", "trace"}
