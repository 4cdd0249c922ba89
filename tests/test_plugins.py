"""Plug-in methods: `module:Class` specs from the current folder, and installed packages' entry points
(group `llmrca.methods`), through the public API, the grid's worker processes and the CLI."""

import json
import sys
import textwrap
import uuid

import pytest
from typer.testing import CliRunner

import llmrca
from llmrca.cli import app
from llmrca.errors import FormatError, MethodError, UnknownNameError
from llmrca.methods import resolve
from llmrca.synthetic import planted_case

runner = CliRunner()

# A real statistic (mean shift after the injection in pre-injection standard deviations), so the rows have ranks
# that can be wrong: on a planted case the root's columns shift by 6 standard deviations.
METHOD = '''
"""Mean-shift scorer for the plug-in tests."""
from llmrca.methods import BaseMethod, Ranking


class Shift(BaseMethod):
    """|mean after - mean before| / std before, per metric column."""

    name = "{name}"

    @classmethod
    def default_params(cls):
        return {{"floor": 1e-9}}

    def rank(self, obs, *, seed=0):
        m = obs.metrics
        before, after = m[m["time"] < obs.inject_time], m[m["time"] >= obs.inject_time]
        cols = obs.metric_columns
        score = (after[cols].mean() - before[cols].mean()).abs() / before[cols].std().clip(lower=self.params["floor"])
        return Ranking.from_scores(cols, score.to_numpy())


class Protocolish:
    """Implements the Method protocol without BaseMethod."""

    name = "{name}-p"
    family = "metric"
    needs = frozenset({{"metrics"}})

    def rank(self, obs, *, seed=0):
        return Shift().rank(obs, seed=seed)


class NoFamily(Shift):
    family = "tabular"


class BadRank(Shift):
    def rank(self, obs):
        return None


class Clash(Shift):
    name = "baro"


not_a_class = 3
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A module in a fresh current folder, with a name no other test uses; sys.path restored afterwards."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    tag = uuid.uuid4().hex[:8]
    mod, name = f"plug_{tag}", f"shift-{tag}"
    (tmp_path / f"{mod}.py").write_text(textwrap.dedent(METHOD.format(name=name)))
    monkeypatch.chdir(tmp_path)
    yield mod, name
    for m in [m for m in sys.modules if m.startswith(mod)]:
        del sys.modules[m]


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("plugin-cases")
    return [llmrca.save_case(planted_case(seed=s, fault_type=ft), root / f"c{s}")
            for s, ft in [(4, "cpu"), (5, "memory"), (6, "cpu")]]


def test_a_spec_from_the_current_folder_is_a_method(plugin, cases):
    mod, name = plugin
    m = llmrca.get_method(f"{mod}:Shift")
    assert m.name == name
    case = llmrca.load_case(cases[0])
    ranking = m.rank(case.observation)
    assert ranking.services()[0] == case.truth.service
    # once resolved, the class is known by its name too (rows, --param)
    assert llmrca.get_method(name, floor=0.5).params == {"floor": 0.5}
    assert resolve(f"baro,{mod}:Shift,nsigma") == ["baro", name, "nsigma"]
    assert llmrca.get_method(f"{mod}:Protocolish").rank(case.observation).candidates == ranking.candidates


@pytest.mark.parametrize(("attr", "message"), [
    ("Nope", "has no attribute 'Nope'"),
    ("not_a_class", "is a int, not a method class"),
    ("NoFamily", "its `family` must be one of metric, trace, multi-source, llm-aware (got 'tabular')"),
    ("BadRank", "cannot be called as rank(obs, seed=...)"),
    ("Clash", "its name 'baro' is taken by llmrca.methods.baro:Baro (built-in)"),
])
def test_a_spec_that_names_no_usable_class_is_one_line(plugin, attr, message):
    mod, _ = plugin
    with pytest.raises((UnknownNameError, MethodError)) as e:
        llmrca.get_method(f"{mod}:{attr}")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_missing_and_failing_modules_are_named(plugin, tmp_path):
    with pytest.raises(UnknownNameError, match=r"no module named 'no_such_mod_x' \(looked in "):
        llmrca.get_method("no_such_mod_x:Cls")
    (tmp_path / "plug_raises.py").write_text("import json\nVALUE = 1 / 0\n")
    with pytest.raises(MethodError, match=r"importing plug_raises raised ZeroDivisionError: division by zero"):
        llmrca.get_method("plug_raises:Cls")
    (tmp_path / "plug_imports.py").write_text("import no_such_dependency_y\n")
    with pytest.raises(MethodError, match="importing plug_imports raised ModuleNotFoundError: .*no_such_dependency_y"):
        llmrca.get_method("plug_imports:Cls")
    with pytest.raises(UnknownNameError, match="expected module:Class"):
        llmrca.get_method("a b:C")


def test_worker_processes_run_a_plugin_from_the_current_folder(plugin, cases, tmp_path):
    mod, name = plugin
    rows = llmrca.evaluate(cases, [f"{mod}:Shift", "nsigma"], tmp_path / "out", jobs=2, progress=False)
    mine = rows[rows["method"] == name]
    assert len(mine) == 3 and set(mine["status"]) == {"ok"}
    assert (mine["rank"] == 1).all()
    info = json.loads((tmp_path / "out" / "run.json").read_text())
    assert info["methods"] == [name, "nsigma"]
    # the CLI takes the same spec in a comma list, and a second run resumes every row
    r = runner.invoke(app, ["evaluate", *map(str, cases), "-m", f"nsigma,{mod}:Shift", "-o",
                            str(tmp_path / "out"), "--no-progress", "--view", "all"])  # the library's view
    assert r.exit_code == 0, r.output
    assert "resumed: 6, to_run: 0" in r.output


def test_editing_the_plugin_recomputes_its_rows(plugin, cases, tmp_path):
    mod, _ = plugin
    out = tmp_path / "out"
    llmrca.evaluate(cases[:2], [f"{mod}:Shift", "nsigma"], out, progress=False)
    source = tmp_path / f"{mod}.py"
    source.write_text(source.read_text() + "\n# a changed method: its stored rows no longer say what it does\n")
    llmrca.evaluate(cases[:2], [f"{mod}:Shift", "nsigma"], out, progress=False)
    tasks = json.loads((out / "run.json").read_text())["tasks"]
    assert tasks == {"grid": 4, "resumed": 2, "replaced": 2, "to_run": 2}  # nsigma's rows are kept


def test_the_cli_names_a_bad_spec_in_one_line(plugin, cases):
    mod, _ = plugin
    r = runner.invoke(app, ["rank", str(cases[0]), "-m", f"{mod}:Nope"])
    assert r.exit_code == 1 and f"method '{mod}:Nope': module {mod}" in r.output
    assert len(r.output.strip().splitlines()) == 1
    r = runner.invoke(app, ["rank", str(cases[0]), "-m", "nonesuch"])
    assert r.exit_code == 1 and "or a plug-in's module:Class" in r.output


# --------------------------------------------------------------------------------------------- entry points


@pytest.fixture
def site(tmp_path, monkeypatch):
    """An installed package as pip would leave it: a module and a dist-info with entry points, on sys.path."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    tag = uuid.uuid4().hex[:8]
    root = tmp_path / "site"
    root.mkdir()
    mod = f"epmod_{tag}"
    (root / f"{mod}.py").write_text(textwrap.dedent(METHOD.format(name=f"cls-{tag}")))
    info = root / f"epdist_{tag}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: epdist-{tag}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(f"""\
        [llmrca.methods]
        ep-shift-{tag} = {mod}:Shift
        ep-broken-{tag} = {mod}:NoFamily
        ep-missing-{tag} = nosuchmod_{tag}:X
        baro = {mod}:Shift
        """))
    monkeypatch.syspath_prepend(str(root))
    yield tag, f"epdist-{tag}"
    for m in [m for m in sys.modules if m.startswith(mod)]:
        del sys.modules[m]


def test_installed_methods_are_listed_and_broken_ones_are_one_line_each(site):
    tag, dist = site
    r = runner.invoke(app, ["methods", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    by_name = {row["name"]: row for row in rows}
    assert by_name[f"ep-shift-{tag}"] == {"name": f"ep-shift-{tag}", "family": "metric", "needs": ["metrics"],
                                          "origin": f"entry point of {dist}"}
    assert f"ep-broken-{tag}" not in by_name and f"ep-missing-{tag}" not in by_name
    assert "origin" not in by_name["baro"]  # the built-in one, not the entry point that took its name
    warnings = [line for line in r.stderr.splitlines() if tag in line]
    assert len(warnings) == 3
    assert any(f"ep-missing-{tag}" in w and f"no module named 'nosuchmod_{tag}'" in w for w in warnings)
    assert any(f"ep-broken-{tag}" in w and "`family`" in w for w in warnings)
    assert any("'baro' is a built-in method's name; skipped" in w for w in warnings)
    table = runner.invoke(app, ["methods"])
    assert table.exit_code == 0 and "origin" in table.stdout  # the column appears once a plug-in is installed


def test_an_installed_method_runs_by_its_entry_point_name(site, cases, tmp_path):
    tag, _ = site
    name = f"ep-shift-{tag}"
    rows = llmrca.evaluate(cases[:2], [name], tmp_path / "out", progress=False)
    assert list(rows["method"]) == [name, name] and set(rows["status"]) == {"ok"}
    assert (rows["rank"] == 1).all()
    with pytest.raises(MethodError, match=f"entry point 'ep-broken-{tag}' of epdist-{tag}: .*`family`"):
        llmrca.get_method(f"ep-broken-{tag}")


# --------------------------------------------------------------------------------------------- folders


def test_a_suite_folder_where_a_case_belongs_is_refused(cases, tmp_path):
    suite = cases[0].parent
    with pytest.raises(FormatError, match=r"a suite folder \(3 case folder\(s\) below it\), not a case folder"):
        llmrca.evaluate([suite], ["nsigma"], tmp_path / "out", progress=False)
    with pytest.raises(FormatError, match="a case folder; write the results elsewhere"):
        llmrca.evaluate(cases[:1], ["nsigma"], cases[1], progress=False)
    assert not (tmp_path / "out").exists()
    assert not (cases[1] / "results.jsonl").exists()


def test_demo_takes_methods_and_refuses_a_bad_one_before_simulating(plugin, tmp_path):
    mod, _ = plugin
    for spec in (f"baro,{mod}:Nope", "nosuch"):
        r = runner.invoke(app, ["demo", "-o", str(tmp_path / "d"), "-m", spec, "--no-progress"])
        assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, r.output
    r = runner.invoke(app, ["demo", "-o", str(tmp_path / "d"), "-m", f"{mod}:Shift", "--param",
                            "nsigma.window=3", "--no-progress"])
    assert r.exit_code == 1 and "not in the run: nsigma" in r.output
    assert not (tmp_path / "d").exists()
