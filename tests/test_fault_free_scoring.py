"""Fault-free cases are ranked too; the top score of each ranking separates fault from normal runs (AUROC)."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from llmrca.case import GroundTruth
from llmrca.evaluate import evaluate, load_results
from llmrca.evaluate.store import rows_to_frame
from llmrca.io import save_case
from llmrca.methods.base import Ranking
from llmrca.report import summarize
from llmrca.report.detection import detection_markdown, detection_summary
from llmrca.report.html import to_html
from llmrca.synthetic import planted_case

pytestmark = pytest.mark.usefixtures("fakes")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ff")
    paths = [str(save_case(planted_case(seed=s, fault_type="cpu"), root / f"fault{s}")) for s in range(3)]
    for s in range(3):  # a normal case: no shift planted, no root cause
        quiet = planted_case(seed=20 + s, shift=0.0)
        quiet = replace(quiet, truth=GroundTruth(service=None))
        paths.append(str(save_case(quiet, root / f"normal{s}")))
    df = evaluate(paths, ["fake-shift", "fake-abstain"], root / "run", jobs=1, progress=False)
    return df, root / "run"


def test_top_score():
    assert Ranking(("a", "b"), (0.5, 2.0)).top_score == 2.0
    assert np.isnan(Ranking((), ()).top_score)
    assert Ranking(("a", "b"), (float("nan"), 1.0)).top_score == 1.0


def test_normal_cases_are_ranked_and_keep_their_top_score(run):
    df, _ = run
    shift = df[df["method"] == "fake-shift"]
    normal = shift[shift["fault_type"] == "normal"]
    assert len(normal) == 3 and (normal["status"] == "ok").all() and normal["rank"].isna().all()
    assert normal["fault_kind"].eq("normal").all()
    assert np.isfinite(shift["top_score"].astype(float)).all()


def test_auroc_is_that_of_the_top_scores(run):
    df, folder = run
    det = detection_summary(load_results(folder)).set_index("method")
    shift = df[(df["method"] == "fake-shift")]
    y = shift["root_cause"].notna().to_numpy(dtype=int)
    want = roc_auc_score(y, shift["top_score"].astype(float))
    assert det.loc["fake-shift", "auroc"] == pytest.approx(want)
    assert det.loc["fake-shift", "auroc"] > 0.9  # a planted shift of 6 sigma against none
    normal = shift.loc[shift["root_cause"].isna(), "top_score"].astype(float)
    assert det.loc["fake-shift", "normal_median"] == pytest.approx(normal.median())
    assert det.loc["fake-shift", "normal_p90"] == pytest.approx(np.percentile(normal, 90))
    assert (det.loc["fake-shift", "n_fault"], det.loc["fake-shift", "n_normal"]) == (3, 3)
    assert np.isnan(det.loc["fake-abstain", "auroc"])  # it never answers: no score, n/a
    md = detection_markdown(df)
    assert "| fake-abstain | metric | n/a |" in md


def test_accuracy_tables_stay_on_fault_cases(run):
    df, _ = run
    summ = summarize(df)
    assert int(summ[(summ["method"] == "fake-shift") & (summ["fault_type"] == "all")]["n"].iloc[0]) == 3


def test_auroc_is_na_without_normal_runs(run):
    df, _ = run
    det = detection_summary(df[df["root_cause"].notna()])
    assert det["auroc"].isna().all()
    assert "n/a" in detection_markdown(df[df["root_cause"].notna()])


def test_ties_count_half():
    rows = [{"method": "m", "family": "metric", "case_id": f"c{i}", "seed": 0, "status": "ok",
             "fault_type": "cpu" if i < 2 else "normal", "root_cause": "s" if i < 2 else None,
             "top_score": 1.0} for i in range(4)]
    assert detection_summary(rows_to_frame(rows))["auroc"].iloc[0] == 0.5


def test_old_results_without_the_new_columns_load(tmp_path):
    old = pd.DataFrame({"method": ["m"], "family": ["metric"], "case_id": ["c"], "seed": [0], "status": ["ok"],
                        "fault_type": ["cpu"], "root_cause": ["s"], "rank": [1]})
    old.to_parquet(tmp_path / "results.parquet")
    df = load_results(tmp_path)
    assert df["top_score"].isna().all() and df["diagnosis"].isna().all()
    assert np.isnan(detection_summary(df)["auroc"].iloc[0])


def test_html_report_shows_detection(run):
    df, _ = run
    page = to_html({"all": df})
    assert 'id="detection"' in page and "fake-shift" in page and 'id="diagnosis"' not in page


def test_bench_prints_the_auroc(run):
    from rich.console import Console

    from llmrca.bench import print_detection

    df, _ = run
    console = Console(record=True, width=200)
    print_detection(df, console)
    text = console.export_text()
    want = detection_summary(df).set_index("method").loc["fake-shift", "auroc"]
    assert f"fake-shift {want:.2f}" in text and "fake-abstain n/a" in text
