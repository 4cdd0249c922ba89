"""One consistent CLI: every command answers --json (one JSON document on stdout, nothing else), every command
that reads metrics takes --view with one default and names the view in its titles, --version, export of a
suite, report with intervals, and plain progress lines when stderr is not a terminal."""

import io
import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import llmrca
from llmrca.cli import app
from llmrca.options import DEFAULT_VIEW
from llmrca.progress import PlainProgress
from llmrca.scenarios import load
from llmrca.synthetic import planted_case

runner = CliRunner()
QUICK = ["deployment.replicas=2", "timing.duration=60", "timing.inject_at=30", "timing.fault_duration=15",
         "timing.warmup=10", 'faults.types=["cpu"]', "reps=1"]
READ_METRICS = ("rank", "evaluate", "export", "report", "demo", "bench")


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _leaves(cmd, path=()):
    if hasattr(cmd, "commands"):  # a group (typer's own class, not always a click.Group subclass)
        for name, sub in cmd.commands.items():
            yield from _leaves(sub, (*path, name))
        if cmd.invoke_without_command and path:  # `llmrca scenarios` lists by itself
            yield path, cmd
    else:
        yield path, cmd


def _options(cmd):
    return {o: p for p in cmd.params for o in getattr(p, "opts", [])}


COMMANDS = dict(_leaves(typer.main.get_command(app)))


def test_the_command_tree_is_what_this_test_walks():
    assert {("rank",), ("evaluate",), ("testbed", "collect"), ("scenarios", "show"), ("scenarios",)} <= set(COMMANDS)


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=" ".join)
def test_every_command_takes_json(path):
    assert "--json" in _options(COMMANDS[path]), f"llmrca {' '.join(path)} has no --json"


@pytest.mark.parametrize("name", READ_METRICS)
def test_every_command_that_reads_metrics_takes_the_view_with_one_default(name):
    opt = _options(COMMANDS[(name,)])["--view"]
    if name == "report":  # a results folder holds one view: by default the report reads the folder's own
        assert opt.default is None and DEFAULT_VIEW in opt.help
    else:
        assert opt.default == DEFAULT_VIEW, (name, opt.default)


def test_version():
    from importlib.metadata import PackageNotFoundError, version

    try:
        want = version("llmrca")
    except PackageNotFoundError:
        want = llmrca.__version__
    r = run("--version")
    assert r.exit_code == 0 and r.stdout == f"llmrca {want}\n"


# --------------------------------------------------------------------------------------------- one suite, run


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    src = root / "quick.toml"
    src.write_text(load("demo", QUICK).to_toml(), encoding="utf-8")
    r = run("generate", "--scenario", src, "--out", root / "s", "--no-progress", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert len(doc["cases"]) == 2 and all(Path(p).is_dir() for p in doc["cases"])
    assert "wrote 2 case(s)" in r.stderr
    return root, src, [Path(p) for p in doc["cases"]]


@pytest.fixture(scope="module")
def evaluated(suite):
    root, _, _ = suite
    r = run("evaluate", root / "s", "-m", "dummy,nsigma", "-o", root / "r", "--no-progress", "--json")
    assert r.exit_code == 0, r.output
    return root / "r", r


def test_json_documents_alone_on_stdout(suite, evaluated):
    root, _, cases = suite
    out, r = evaluated
    doc = json.loads(r.stdout)
    assert doc["view"] == DEFAULT_VIEW and doc["rows"] == 4 and doc["empty_because"] is None
    assert {row["method"] for row in doc["summary"]} == {"dummy", "nsigma", "chance"}
    assert f"RCA accuracy, {DEFAULT_VIEW} view" in r.stderr
    for args in (["methods"], ["faults"], ["scenarios"], ["scenarios", "show", "demo"], ["validate", root / "s"],
                 ["rank", cases[0], "-m", "nsigma"], ["report", out]):
        r = run(*args, "--json")
        assert r.exit_code == 0, (args, r.output)
        json.loads(r.stdout)  # one document, nothing else
    r = run("validate", root / "s", "--json")
    doc = json.loads(r.stdout)
    assert doc["cases"] == 2 and doc["with_errors"] == 0
    assert all(p["severity"] == "warning" and p["case"].startswith(str(root / "s")) for p in doc["problems"])


def test_evaluate_records_the_default_view(evaluated):
    out, _ = evaluated
    assert json.loads((out / "run.json").read_text())["params"]["view"] == DEFAULT_VIEW


def test_titles_name_the_view(suite, evaluated):
    _, _, cases = suite
    out, _ = evaluated
    r = run("rank", cases[0], "-m", "nsigma")
    assert r.exit_code == 0 and f"{DEFAULT_VIEW} view" in r.stdout
    for view in ("study", "full", "all"):
        r = run("rank", cases[0], "-m", "nsigma", "--view", view, "--json")
        cols = [c["name"] for c in json.loads(r.stdout)["candidates"]]
        assert json.loads(r.stdout)["view"] == view
        dup = any(c.endswith("_ctn_cpu") for c in cols) and any(c.endswith("_cpu_usage_seconds") for c in cols)
        assert dup == (view == "all")  # only 'all' lists one signal under both names
    r = run("report", out)
    assert r.exit_code == 0 and f"RCA accuracy, {DEFAULT_VIEW} view" in r.stdout
    r = run("report", out, "-f", "md")
    assert r.stdout.startswith(f"## RCA accuracy, {DEFAULT_VIEW} view")
    r = run("report", out, "--view", "full")
    assert r.exit_code == 1 and "computed under the study view, not full" in r.output
    r = run("rank", cases[0], "-m", "nsigma", "--view", "nope")
    assert r.exit_code == 1 and "unknown view 'nope'" in r.output


def test_foreign_data_has_no_views_and_the_title_says_so(tmp_path):
    c = planted_case(seed=5)  # columns svc-i_cpu, _mem, _latency: not llmrca telemetry
    llmrca.save_case(c, tmp_path / "p")
    r = run("rank", tmp_path / "p", "-m", "nsigma")
    assert r.exit_code == 0 and "study view asked; the case is not llmrca telemetry" in " ".join(r.stdout.split())
    r = run("rank", tmp_path / "p", "-m", "nsigma", "--json")
    doc = json.loads(r.stdout)
    assert doc["view"] == "all" and doc["services"][0] == c.truth.service
    assert len(doc["candidates"]) == len(c.observation.metric_columns)


def test_report_with_intervals(evaluated):
    out, _ = evaluated
    r = run("report", out, "--ci", "0.9", "--json")
    rows = json.loads(r.stdout)["summary"]
    assert all(row["ac1_lo"] <= row["ac1"] <= row["ac1_hi"] for row in rows if row["method"] != "chance")
    r = run("report", out, "--ci", "0.9")
    assert r.exit_code == 0 and "90 % bootstrap interval" in r.stdout.replace("\n", " ")
    assert "–" in r.stdout
    assert run("report", out, "--ci", "1.5").exit_code == 1
    r = run("report", out, "-f", "json")  # the plain records, as before
    assert isinstance(json.loads(r.stdout), list)


def test_export_of_a_suite(suite, tmp_path):
    root, _, cases = suite
    r = run("export", root / "s", "--out", tmp_path / "re", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert len(doc["cases"]) == 2 and doc["view"] == DEFAULT_VIEW
    for item in doc["cases"]:
        back = llmrca.load_case(item["path"])
        source = llmrca.load_case(item["case"])
        assert back.truth.service == source.truth.service and item["view"] == DEFAULT_VIEW
        assert set(back.observation.metric_columns) < set(source.observation.metric_columns)
        assert len(back.observation.metric_columns) == item["columns"]
    r = run("export", root / "s", "--out", tmp_path / "nat", "-f", "native", "--view", "all", "--json")
    assert r.exit_code == 0, r.output
    for c in cases:
        rel = c.relative_to(root / "s")
        assert (tmp_path / "nat" / rel / "case.json").is_file()
        assert (llmrca.load_case(tmp_path / "nat" / rel).observation.metric_columns
                == llmrca.load_case(c).observation.metric_columns)
    # two cases RCAEval's layout would put in one folder: refused before anything is written
    clash = tmp_path / "clash"
    for sub in ("a", "b"):
        llmrca.save_case(planted_case(seed=5), clash / sub)
    r = run("export", clash, "--out", tmp_path / "re2")
    assert r.exit_code == 1 and "would both be written to" in r.output
    assert not (tmp_path / "re2").exists()
    # a suite's multi-fault case has no RCAEval folder (one root cause per folder): left out, and said
    import dataclasses

    from llmrca.case import FaultRecord

    one = planted_case(seed=5)
    t = one.truth
    two = dataclasses.replace(t, faults=(FaultRecord(t.fault_type, t.service, t.start, t.end),
                                         FaultRecord("memory", "svc-0" if t.service != "svc-0" else "svc-1",
                                                     t.start, t.end)))
    mixed = tmp_path / "mixed"
    llmrca.save_case(one, mixed / "single")
    llmrca.save_case(dataclasses.replace(one, id="multi-1", truth=two), mixed / "multi")
    r = run("export", mixed, "--out", tmp_path / "re3", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert [Path(c["case"]).name for c in doc["cases"]] == ["single"]
    assert [Path(c["case"]).name for c in doc["left_out"]] == ["multi"] and "one root cause" in r.stderr


def test_bench_takes_a_view_list_and_names_each_view(suite, tmp_path):
    _, src, _ = suite
    r = run("bench", "--scenario", src, "-m", "dummy,nsigma", "--view", "study,full", "--out", tmp_path / "b",
            "--no-progress", "--jobs", "1", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["views"] == ["study", "full"] and set(doc["summary"]) == {"study", "full"}
    assert "study view" in r.stderr and "full view" in r.stderr
    rep = run("report", tmp_path / "b", "--view", "full", "--json")
    assert json.loads(rep.stdout)["view"] == "full"
    assert json.loads(run("report", tmp_path / "b", "--json").stdout)["view"] == DEFAULT_VIEW


# --------------------------------------------------------------------------------------------- progress


def test_plain_progress_prints_the_first_every_ten_seconds_and_the_last():
    now = [0.0]
    buf = io.StringIO()
    p = PlainProgress("evaluate", 5, stream=buf, clock=lambda: now[0])
    for i, t in enumerate((0.5, 3.0, 11.0, 12.0, 13.0), 1):
        now[0] = t
        p.update(i, f"note {i}")
    lines = buf.getvalue().splitlines()
    assert [ln.split(" (")[0] for ln in lines] == ["evaluate: 1/5", "evaluate: 3/5", "evaluate: 5/5"]
    assert lines[-1].endswith("13 s") and "left" in lines[0]
    late = io.StringIO()  # a reporter made when the work began, its first line after the first item
    PlainProgress("simulate", 4, stream=late, clock=lambda: 8.0, started=0.0).update(1)
    assert late.getvalue() == "simulate: 1/4, 8 s, ~24 s left\n"


def test_generate_and_evaluate_print_plain_lines_off_a_terminal(suite, tmp_path, capsys):
    """Under pytest stderr is not a terminal, as in a CI log or behind nohup."""
    from llmrca.evaluate import evaluate  # not llmrca.evaluate: once the CLI imported the package, that is it
    from llmrca.progress import is_terminal

    _, src, cases = suite
    assert not is_terminal()
    llmrca.generate_suite(src, tmp_path / "s", progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err and "simulate: 2/2 (" in err
    evaluate(cases, ["dummy"], tmp_path / "r", progress=True)
    err = capsys.readouterr().err
    assert "evaluate: 0/2 (starting workers)" in err and "evaluate: 2/2 (ok 2" in err
