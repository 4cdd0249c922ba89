"""Method parameters from the command line (`--param METHOD.KEY=VALUE`, `--params FILE.toml`): checked before a
run, recorded in the result folder, part of what a resumed row must match; and `evaluate --retry-failed`."""

import json
import sys
import textwrap

import pytest
from typer.testing import CliRunner

import llmrca
from llmrca.cli import app
from llmrca.evaluate import load_results
from llmrca.synthetic import planted_case

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("param-cases")
    return [llmrca.save_case(planted_case(seed=s, fault_type=ft), root / f"c{s}")
            for s, ft in [(7, "cpu"), (8, "memory")]]


def _ranking(r):
    assert r.exit_code == 0, r.output
    return [(c["name"], c["score"]) for c in json.loads(r.stdout)["candidates"]]


def test_a_param_reaches_the_method(cases):
    default = _ranking(run("rank", cases[0], "-m", "nsigma", "--json"))
    narrow = _ranking(run("rank", cases[0], "-m", "nsigma", "--json", "--param", "nsigma.window=3"))
    direct = llmrca.get_method("nsigma", window=3).rank(llmrca.load_case(cases[0]).observation)
    assert narrow == list(zip(direct.candidates, direct.scores))
    assert narrow != default  # a window of 3 rows sees other deviations than the default 60


def test_a_params_file_gives_the_same_and_a_param_wins_over_it(cases, tmp_path):
    f = tmp_path / "p.toml"
    f.write_text("[nsigma]\nwindow = 3\ntwo_sided = false\n")
    from_file = _ranking(run("rank", cases[0], "-m", "nsigma", "--json", "--params", f))
    direct = llmrca.get_method("nsigma", window=3, two_sided=False).rank(llmrca.load_case(cases[0]).observation)
    assert from_file == list(zip(direct.candidates, direct.scores))
    both = _ranking(run("rank", cases[0], "-m", "nsigma", "--json", "--params", f, "--param",
                        "nsigma.window=4"))
    direct = llmrca.get_method("nsigma", window=4, two_sided=False).rank(llmrca.load_case(cases[0]).observation)
    assert both == list(zip(direct.candidates, direct.scores))


@pytest.mark.parametrize(("args", "message"), [
    (["--param", "nsigma.windw=3"], "method 'nsigma': unknown parameter 'windw'; known: two_sided, window"),
    (["--param", "nsigma.window=three"], ("method 'nsigma': parameter window must be an integer or \"auto\" "
                                          '(default "auto"), got "three"')),
    (["--param", "nsigma.two_sided=1"], "parameter two_sided must be true or false (default true), got 1"),
    (["--param", "nsigma=3"], "--param 'nsigma=3': expected METHOD.KEY=VALUE (e.g. baro.window=30)"),
    (["--param", "baro.window=3"], "given for method(s) not in the run: baro; the run's: nsigma"),
    (["--param", "nosuch.window=3"], "unknown method 'nosuch'"),
])
def test_a_bad_param_is_one_line_before_anything_runs(cases, tmp_path, args, message):
    for cmd in (["rank", cases[0], "-m", "nsigma"], ["evaluate", cases[0], "-m", "nsigma", "-o", tmp_path / "o"]):
        r = run(*cmd, *args)
        assert r.exit_code == 1
        assert message in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "o").exists()


def test_a_bad_params_file_is_named(cases, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[nsigma\nwindow = 3\n")
    r = run("rank", cases[0], "-m", "nsigma", "--params", bad)
    assert r.exit_code == 1 and f"{bad}: not valid TOML" in r.output
    flat = tmp_path / "flat.toml"
    flat.write_text("window = 3\n")
    r = run("rank", cases[0], "-m", "nsigma", "--params", flat)
    assert r.exit_code == 1 and f"{flat}: window = 3 is not a table" in r.output
    r = run("rank", cases[0], "-m", "nsigma", "--params", tmp_path / "absent.toml")
    assert r.exit_code == 1 and "absent.toml: cannot read the parameters file" in r.output


def test_params_are_recorded_and_a_change_recomputes_the_rows(cases, tmp_path):
    out = tmp_path / "out"
    r = run("evaluate", *cases, "-m", "nsigma,baro", "-o", out, "--no-progress", "--param", "nsigma.window=3")
    assert r.exit_code == 0, r.output
    info = json.loads((out / "run.json").read_text())
    assert info["params"]["method_params"] == {"nsigma": {"window": 3}}
    first = load_results(out).set_index(["method", "case_id"])
    # the same parameters: every row is reused
    r = run("evaluate", *cases, "-m", "nsigma,baro", "-o", out, "--no-progress", "--param", "nsigma.window=3")
    assert "resumed: 4, to_run: 0" in r.output
    # other parameters: nsigma's rows are recomputed and replace the old ones, baro's are kept
    r = run("evaluate", *cases, "-m", "nsigma,baro", "-o", out, "--no-progress", "--param", "nsigma.window=5")
    assert r.exit_code == 0, r.output
    assert "resumed: 2, to_run: 2, replaced: 2" in r.output
    second = load_results(out).set_index(["method", "case_id"])
    assert len(second) == 4
    for cid in first.loc["nsigma"].index:
        assert second.loc[("nsigma", cid), "input_hash"] != first.loc[("nsigma", cid), "input_hash"]
        assert second.loc[("baro", cid), "runtime_s"] == first.loc[("baro", cid), "runtime_s"]
    assert json.loads((out / "run.json").read_text())["params"]["method_params"] == {"nsigma": {"window": 5}}


def test_an_int_for_a_float_parameter_is_that_float(cases, tmp_path):
    import llmrca.evaluate.store  # binds the package to llmrca.evaluate; the call below must still work
    a = llmrca.evaluate(cases[:1], ["e-diagnosis"], tmp_path / "a", progress=False,
                        method_params={"e-diagnosis": {"alpha": 1, "permutations": 19}})
    b = llmrca.evaluate(cases[:1], ["e-diagnosis"], tmp_path / "a", progress=False,
                        method_params={"e-diagnosis": {"alpha": 1.0, "permutations": 19}})
    assert list(a["input_hash"]) == list(b["input_hash"])
    assert json.loads((tmp_path / "a" / "run.json").read_text())["tasks"]["to_run"] == 0


FLAKY = '''
"""Fails while a flag file exists: a stand-in for a method that crashed in an earlier run."""
import os

from llmrca.methods import BaseMethod, Ranking

FLAG = {flag!r}


class Flaky(BaseMethod):
    """Ranks the columns by their last value; raises while FLAG exists."""

    name = "flaky"

    def rank(self, obs, *, seed=0):
        if os.path.exists(FLAG):
            raise RuntimeError("flag file present")
        last = obs.metrics[obs.metric_columns].iloc[-1]
        return Ranking.from_scores(obs.metric_columns, last.to_numpy())
'''


def test_retry_failed_reruns_the_failed_rows_only(cases, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    flag = tmp_path / "fail-now"
    flag.write_text("")
    (tmp_path / "flakymod.py").write_text(textwrap.dedent(FLAKY.format(flag=str(flag))))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    args = ["evaluate", *cases, "-m", "nsigma,flakymod:Flaky", "-o", out, "--no-progress", "-j", "2"]
    assert run(*args).exit_code == 0
    first = load_results(out).set_index(["method", "case_id"])
    assert set(first.loc["flaky", "status"]) == {"error: RuntimeError: flag file present"}
    flag.unlink()
    r = run(*args)  # a failure is a result: kept on a plain resume
    assert "resumed: 4, to_run: 0" in r.output
    r = run(*args, "--retry-failed")
    assert r.exit_code == 0 and "resumed: 2, to_run: 2" in r.output
    second = load_results(out).set_index(["method", "case_id"])
    assert len(second) == 4 and set(second.loc["flaky", "status"]) == {"ok"}
    assert second.loc["nsigma"].equals(first.loc["nsigma"])  # the ok rows are the stored ones, untouched
    # the table that a report reads was rewritten too, not only the journal
    assert set(load_results(out / "results.parquet").set_index("method").loc["flaky", "status"]) == {"ok"}
    sys.modules.pop("flakymod", None)


def test_bench_passes_params_per_view_and_reports_them(tmp_path):
    import io

    from rich.console import Console

    from llmrca.bench import run_bench

    res = run_bench("demo", tmp_path / "b", reps=1, jobs=1, methods="nsigma,baro", views=("study",),
                    overrides={"faults": ["cpu"]}, progress=False, console=Console(file=io.StringIO()),
                    method_params={"nsigma": {"window": 5}})
    info = json.loads((tmp_path / "b" / "results-study" / "run.json").read_text())
    assert info["params"]["method_params"] == {"nsigma": {"window": 5}}
    assert "**Method parameters**: nsigma: window=5" in res.report_md.read_text(encoding="utf-8")
    assert "nsigma: window=5" in res.report_html.read_text(encoding="utf-8")
    assert json.loads((tmp_path / "b" / "bench.json").read_text())["runs"][-1]["method_params"] == {
        "nsigma": {"window": 5}}
    r = run("bench", "demo", "-o", tmp_path / "b", "--reps", "1", "--faults", "cpu", "--views", "study",
            "-m", "nsigma,baro", "--param", "nsigma.window=6", "--no-progress", "-j", "1")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "b" / "bench.json").read_text())["runs"][-1]["computed"] == {"study": 4}
