"""The `llmrca` command end to end, on RCAEval-layout folders written by hand (tests/rcaeval_fixtures.py)."""

import json
import subprocess
import sys

import pandas as pd
import pytest
from rcaeval_fixtures import write_re1_suite, write_re2_suite
from typer.testing import CliRunner

from llmrca.cli import app
from llmrca.io import save_case
from llmrca.synthetic import planted_case

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def suites(tmp_path_factory):
    root = tmp_path_factory.mktemp("rcaeval")
    re1 = write_re1_suite(root / "re1", n_cases=8, seed=11)
    re2 = write_re2_suite(root / "re2", n_cases=8, seed=12)
    return root, re1, re2


@pytest.fixture(scope="module")
def evaluated(suites, tmp_path_factory):
    root, re1, re2 = suites
    out = tmp_path_factory.mktemp("results")
    r = run("evaluate", root / "re1", root / "re2", "--methods", "baro,nsigma,dummy", "--jobs", "2",
            "--out", out, "--no-progress", "--timeout", "120")
    assert r.exit_code == 0, r.output
    return out, re1 + re2


def test_methods_json():
    r = run("methods", "--json")
    assert r.exit_code == 0
    rows = json.loads(r.output)
    names = {row["name"] for row in rows}
    assert {"dummy", "nsigma", "baro", "e-diagnosis"} <= names
    assert all(set(row) == {"name", "family", "needs"} for row in rows)


def test_baro_and_nsigma_find_planted_roots_dummy_near_chance(evaluated):
    out, truths = evaluated
    res = pd.read_parquet(out / "results.parquet")
    assert len(res) == 3 * len(truths) and (res["status"] == "ok").all()
    for m in ("baro", "nsigma"):
        ranks = res[res["method"] == m]["rank"]
        assert (ranks == 1).mean() >= 0.9, (m, ranks.tolist())
    dummy_ac1 = (res[res["method"] == "dummy"]["rank"] == 1).mean()
    assert dummy_ac1 <= 0.5  # 6 services: chance 1/6; 16 cases keep this far from baro's ≥ 0.9


def test_report_json_and_markdown(evaluated):
    out, truths = evaluated
    r = run("report", out, "--format", "json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert all(set(row) == {"method", "fault_type", "ac1", "ac3", "avg5", "time_s", "n", "errors",
                                  "timeouts", "no_answer"} for row in rows)
    overall = {row["method"]: row for row in rows if row["fault_type"] == "all"}
    assert overall["baro"]["ac1"] >= 0.9 and overall["baro"]["n"] == len(truths)
    assert overall["baro"]["ac1"] > overall["dummy"]["ac1"]
    md = run("report", out, "--format", "md")
    assert md.exit_code == 0 and "| baro" in md.output.replace("|  baro", "| baro")


def test_rerun_computes_nothing_new(evaluated, suites):
    out, _ = evaluated
    root = suites[0]
    before = (out / "results.jsonl").read_text()
    r = run("evaluate", root / "re1", root / "re2", "--methods", "baro,nsigma,dummy", "--out", out,
            "--no-progress")
    assert r.exit_code == 0, r.output
    assert (out / "results.jsonl").read_text() == before


def test_rank_prints_planted_service_first(suites):
    _, re1, _ = suites
    case = re1[0]
    r = run("rank", case.path, "--method", "baro", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["services"][0] == case.service


def test_export_rcaeval_then_evaluate_reads_it_back(tmp_path):
    c = planted_case(seed=5)
    save_case(c, tmp_path / "native")
    r = run("export", tmp_path / "native", "--format", "rcaeval", "--out", tmp_path / "re")
    assert r.exit_code == 0, r.output
    r = run("rank", next((tmp_path / "re").rglob("inject_time.txt")).parent, "-m", "nsigma", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["services"][0] == c.truth.service


def test_validate_reports_every_problem(tmp_path):
    good = planted_case(seed=1)
    save_case(good, tmp_path / "s" / "good")
    m = good.observation.metrics.copy()
    m["nounderscore"] = 1.0
    m["svc-0_text"] = "x"
    save_case(good.with_observation(metrics=m), tmp_path / "s" / "bad")
    r = run("validate", tmp_path / "s")
    assert r.exit_code == 1
    assert "nounderscore" in r.output and "svc-0_text" in r.output
    assert "2 case(s) checked, 1 with errors" in r.output
    assert run("validate", tmp_path / "s" / "good").exit_code == 0


def test_errors_are_one_line_with_nonzero_exit(tmp_path):
    r = subprocess.run([sys.executable, "-m", "llmrca.cli", "rank", str(tmp_path), "-m", "baro"],
                       check=False, capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "not a case folder" in r.stderr
    assert "Traceback" not in r.stderr
    r = run("rank", tmp_path, "-m", "no-such-method")
    assert r.exit_code == 1 and "unknown method 'no-such-method'" in r.output
    r = subprocess.run([sys.executable, "-m", "llmrca.cli", "--debug", "rank", str(tmp_path), "-m", "baro"],
                       check=False, capture_output=True, text=True)
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_python_dash_m_is_the_llmrca_command():
    out = subprocess.run([sys.executable, "-m", "llmrca", "--version"], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("llmrca ")
