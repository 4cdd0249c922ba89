"""docs/writing-a-method.md, run as a new user would: its files written into an empty folder, its commands run
there in order by the `llmrca` command (a separate process, started the way the installed script starts it), then
the folders they made checked. A guide that stops working fails here."""

import contextlib
import json
import os
import re
import runpy
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from _chance import random_avg_at_k_floor
from _live import src_env
from typer.testing import CliRunner

from llmrca.cli import app
from llmrca.evaluate import load_results
from llmrca.methods import resolve

runner = CliRunner()

GUIDE = Path(__file__).parent.parent / "docs" / "writing-a-method.md"
FENCE = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
# Only to keep the test quick (the guide names them): a smaller bench suite, one worker, no progress bars.
QUICKER = {"bench": ["--reps", "1", "--faults", "cpu", "--jobs", "1", "--no-progress"], "evaluate": ["--no-progress"],
           "generate": ["--no-progress"]}
TIMEOUT_S = 300


def blocks():
    """(language, attributes, text) of every fenced block, in order."""
    return [(m[1], m[2].split(), m[3]) for m in FENCE.finditer(GUIDE.read_text(encoding="utf-8"))]


def commands(text):
    return [shlex.split(line) for line in text.splitlines() if line.strip() and not line.startswith("#")]


def llmrca(args, cwd, env):
    """The `llmrca` script's way in: a fresh process started from a launcher outside `cwd`, so the current folder
    is not on sys.path by accident (as with `python -c` or `python -m`); llmrca must put it there itself."""
    launcher = cwd.parent / "launcher" / "llmrca_main.py"
    launcher.parent.mkdir(exist_ok=True)
    launcher.write_text("import sys\nfrom llmrca.cli import main\nsys.exit(main())\n")
    r = subprocess.run([sys.executable, str(launcher), *args], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=TIMEOUT_S, check=False)
    assert r.returncode == 0, f"llmrca {shlex.join(args)} failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout


@contextlib.contextmanager
def inside(folder):
    """The current folder set to ``folder``, and what running there adds to sys.path / sys.modules undone."""
    cwd, path, modules = os.getcwd(), list(sys.path), set(sys.modules)
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(cwd)
        sys.path[:] = path
        for name in set(sys.modules) - modules:
            if name in ("mymod",):
                del sys.modules[name]


def cli(args, cwd):
    """The same command in this process (each fresh process costs seconds of imports); the grid's workers are
    fresh processes either way."""
    with inside(cwd):
        r = runner.invoke(app, args)
    assert r.exit_code == 0, f"llmrca {shlex.join(args)} failed:\n{r.output}"
    return r.output


@pytest.fixture(scope="module")
def guide(tmp_path_factory):
    """Every file and command of the guide, in a fresh folder; returns the folder and each command's output."""
    work = tmp_path_factory.mktemp("new-user") / "work"
    work.mkdir()
    env = {**src_env(), "NO_COLOR": "1"}
    outputs: dict[str, str] = {}
    long: list[list[str]] = []
    for lang, attrs, text in blocks():
        files = [a.split("=", 1)[1] for a in attrs if a.startswith("file=")]
        if files:
            (work / files[0]).write_text(text, encoding="utf-8")
        elif lang == "python" and "run" in attrs:
            script = work.parent / f"guide-block-{len(outputs)}.py"  # outside the user's folder
            script.write_text(text, encoding="utf-8")
            with inside(work):
                runpy.run_path(str(script), run_name="guide")
        elif lang == "bash" and "long" in attrs:
            long.extend(commands(text))
        elif lang == "bash":
            for cmd in commands(text):
                assert cmd[0] == "llmrca", cmd
                args = cmd[1:] + QUICKER.get(cmd[1], [])
                # the check a new user makes runs as they run it; the others in this process
                run = llmrca if cmd[1] == "bench" else (lambda a, cwd, env: cli(a, cwd))
                outputs[shlex.join(cmd)] = run(args, work, env)
    return work, outputs, long, env


def test_the_guide_has_its_parts():
    kinds = [(lang, tuple(attrs)) for lang, attrs, _ in blocks()]
    assert ("python", ("file=mymod.py",)) in kinds and ("python", ("run",)) in kinds
    assert ("toml", ("file=params.toml",)) in kinds and ("toml", ("file=pyproject.toml",)) in kinds
    run = [shlex.join(c) for lang, attrs, text in blocks() if lang == "bash" and "long" not in attrs
           for c in commands(text)]
    assert "llmrca bench demo -m mymod:MeanShift,baro --view study,full --out bench-mine" in run
    assert any(c.startswith("llmrca rank ") for c in run) and any(c.startswith("llmrca report ") for c in run)


def test_the_method_ranks_the_true_root_first_on_the_case_it_shows(guide):
    _, outputs, _, _ = guide
    out = next(v for k, v in outputs.items() if k.startswith("llmrca rank suite/cpu/ray-replicas-0/"))
    assert "services: ray-replicas-0," in out


def test_evaluate_stores_every_row_and_beats_chance(guide):
    work, outputs, _, _ = guide
    rows = load_results(work / "results")
    assert sorted(rows["method"].unique()) == ["baro", "mean-shift", "nsigma"]
    assert len(rows) == 12 and set(rows["status"]) == {"ok"}
    mine = rows[rows["method"] == "mean-shift"]
    avg5 = float(((5 - mine["rank"].astype(float) + 1).clip(lower=0) / 5).mean())
    assert avg5 >= random_avg_at_k_floor(int(mine["n_candidates"].min()), len(mine))
    assert "mean-shift" in outputs["llmrca report results"]
    # the Python run, last into that folder, found every row there
    tasks = json.loads((work / "results" / "run.json").read_text())["tasks"]
    assert tasks == {"grid": 8, "resumed": 8, "replaced": 0, "to_run": 0}


def test_parameters_are_recorded_per_folder(guide):
    work, _, _, _ = guide
    w20 = json.loads((work / "results-w20" / "run.json").read_text())["params"]["method_params"]
    w10 = json.loads((work / "results-w10" / "run.json").read_text())["params"]["method_params"]
    assert w20 == {"mean-shift": {"window": 20, "min_std": 0.01}}
    assert w10 == {"mean-shift": {"window": 10, "min_std": 0.01}}
    a, b = load_results(work / "results-w20"), load_results(work / "results-w10")
    assert set(a["status"]) == set(b["status"]) == {"ok"}
    a, b = a[a["method"] == "mean-shift"], b[b["method"] == "mean-shift"]
    assert len(a) == 4 and set(a["input_hash"]).isdisjoint(b["input_hash"])  # another setting, other rows


def test_bench_runs_the_plugin_in_every_view_and_reports_it(guide):
    work, _, _, _ = guide
    bench = work / "bench-mine"
    for view in ("study", "full"):
        rows = load_results(bench / f"results-{view}")
        assert sorted(rows["method"].unique()) == ["baro", "mean-shift"], view
        assert set(rows["status"]) == {"ok"}
    page = (bench / "report.html").read_text(encoding="utf-8")
    assert page.count("mean-shift") >= 4  # each view's table, the comparison, the per-case ranks
    assert "mean-shift" in (bench / "report.md").read_text(encoding="utf-8")


def test_the_rcaeval_layout_gives_the_same_ranks(guide):
    work, _, _, _ = guide
    native = load_results(work / "results").set_index(["method", "root_cause"])
    exported = load_results(work / "results-rcaeval").set_index(["method", "root_cause"])
    assert len(exported) == 8 and set(exported["status"]) == {"ok"}
    for key in exported.index:
        assert exported.loc[key, "rank"] == native.loc[key, "rank"], key


def test_the_long_commands_name_the_built_in_methods_and_the_plugin(guide):
    work, _, long, _ = guide
    assert long, "the guide's long commands (not run here) are gone"
    with inside(work):
        for cmd in long:
            picked = resolve(cmd[cmd.index("-m") + 1])
            assert picked == [*resolve("all"), "mean-shift"], cmd  # every built-in method, then the plug-in


def install(project_dir, site):
    """``pip install`` of the guide's package into ``site``: its wheel built from the pyproject (setuptools, no
    network) and unpacked, which is what installing a wheel amounts to. Without setuptools at hand, the record
    pip would write (a dist-info with the pyproject's entry points) is written directly."""
    import zipfile

    site.mkdir(parents=True)
    try:
        import setuptools  # noqa: F401 - only whether it is there
    except ImportError:
        project = tomllib.loads((project_dir / "pyproject.toml").read_text(encoding="utf-8"))["project"]
        info = site / f"{project['name']}-{project['version']}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\n"
                                       f"Version: {project['version']}\n")
        (info / "entry_points.txt").write_text("[llmrca.methods]\n" + "".join(
            f"{k} = {v}\n" for k, v in project["entry-points"]["llmrca.methods"].items()))
        (site / "mymod.py").write_bytes((project_dir / "mymod.py").read_bytes())
        return
    wheels = site.parent / "wheels"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                        "-q", "-w", str(wheels), str(project_dir)], capture_output=True, text=True,
                       timeout=TIMEOUT_S, check=False)
    assert r.returncode == 0, f"the guide's pyproject.toml does not build:\n{r.stdout}\n{r.stderr}"
    (wheel,) = wheels.glob("*.whl")
    zipfile.ZipFile(wheel).extractall(site)


def test_the_packaged_method_is_found_by_its_entry_point(guide, tmp_path, monkeypatch):
    work, _, _, env = guide
    project = tomllib.loads((work / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    site = tmp_path / "site"
    install(work, site)
    assert (site / "mymod.py").is_file()
    elsewhere = tmp_path / "elsewhere"  # no mymod.py here: the installed module is the one found
    elsewhere.mkdir()
    (elsewhere / "suite").symlink_to(work / "suite")
    monkeypatch.syspath_prepend(str(site))
    listed = {r["name"]: r for r in json.loads(cli(["methods", "--json"], elsewhere))}
    assert listed["mean-shift"]["origin"] == f"entry point of {project['name']}"
    env = {**env, "PYTHONPATH": f"{site}{os.pathsep}{env['PYTHONPATH']}"}  # a fresh process finds it by name
    out = llmrca(["rank", "suite/cpu/ray-replicas-0/rep-00", "-m", "mean-shift"], elsewhere, env)
    assert "services: ray-replicas-0," in out
