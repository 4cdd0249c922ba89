"""End to end on the simulator: generate → evaluate → report, through the library and the CLI."""

import json

import pytest
from typer.testing import CliRunner

from llmrca.cli import app
from llmrca.evaluate import evaluate
from llmrca.report import summarize
from llmrca.sim.suites import generate_suite

runner = CliRunner()


@pytest.fixture(scope="module")
def paper_results(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper")
    cases = generate_suite("paper", root / "cases", reps=2, seed=7, jobs=2, progress=False)
    res = evaluate(cases, ["dummy", "nsigma", "baro"], root / "out", jobs=2, progress=False, view="study",
                   root=root / "cases")
    return summarize(res)


def _score(summary, method, fault="all", col="ac1"):
    row = summary[(summary["method"] == method) & (summary["fault_type"] == fault)]
    assert len(row) == 1, (method, fault)
    return float(row[col].iloc[0])


def test_baro_and_nsigma_clearly_beat_dummy_on_the_paper_suite(paper_results):
    for m in ("baro", "nsigma"):
        assert _score(paper_results, m) >= _score(paper_results, "dummy") + 0.3, paper_results
        assert _score(paper_results, m, col="avg5") >= 0.7


def test_faults_are_not_all_equally_easy(paper_results):
    for m in ("baro", "nsigma"):
        per_fault = [_score(paper_results, m, f, "avg5") for f in ("cpu", "memory", "network", "gpu")]
        assert max(per_fault) - min(per_fault) >= 0.05, (m, per_fault)


def test_faults_command_lists_the_study_faults():
    r = runner.invoke(app, ["faults", "--json"])
    assert r.exit_code == 0, r.output
    assert {"cpu", "memory", "network", "gpu"} <= {f["id"] for f in json.loads(r.output)}


def test_generate_command_and_refusal_to_overwrite(tmp_path):
    args = ["generate", "--suite", "demo", "--reps", "1", "--out", str(tmp_path / "s"), "--no-progress"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "wrote 16 case(s)" in r.output
    again = runner.invoke(app, args)
    assert again.exit_code == 1 and "already exists" in again.output


def test_demo_prints_the_table_and_writes_the_report(tmp_path):
    r = runner.invoke(app, ["demo", "--out", str(tmp_path / "d"), "--no-progress"])
    assert r.exit_code == 0, r.output
    report = (tmp_path / "d" / "report.md").read_text()
    for m in ("dummy", "nsigma", "baro", "e-diagnosis", "chance"):
        assert m in r.output and f"| {m} |" in report
    (tmp_path / "other").mkdir()
    r = runner.invoke(app, ["demo", "--out", str(tmp_path / "other"), "--no-progress"])
    assert r.exit_code == 1 and "not a demo folder" in r.output
