"""Users' own data (issue 17): RCAEval folders written by hand carry no SLI, call graph or llmrca sidecar.

- The methods that start from the SLI or walk the call graph rank an RE1 case (metrics only) from what the folder
  has: the entry service from the names / latencies, the star call graph (``walk_graph``); RE2 from the traces.
- ``--sli COLUMN`` and ``--call-graph FILE`` (``llmrca.io.system``) set them; a bad file is one line naming it.
- The default metric window of an RCAEval folder is RCAEval's runner's (the whole case here), of llmrca's own
  cases the study's 60 rows.
"""

import json
import warnings

import numpy as np
import pytest
from rcaeval_fixtures import write_re1_suite, write_re2_suite
from typer.testing import CliRunner

from llmrca.cli import app
from llmrca.errors import FormatError, LlmrcaError, MethodError
from llmrca.io import load_case
from llmrca.io.rcaeval import read_case, write_case
from llmrca.io.system import apply_system, read_call_graph, system_info
from llmrca.methods import get_method
from llmrca.methods.call_graph import walk_graph
from llmrca.methods.params import checked_params
from llmrca.methods.sli import find_entry, sli_column
from llmrca.methods.window import RCAEVAL_WINDOW, STUDY_WINDOW, metric_window, resolve_window
from llmrca.synthetic import planted_case

runner = CliRunner()
WALKERS = ("pc-randomwalk", "fci-randomwalk", "granger-randomwalk", "lingam-randomwalk", "microcause", "microrca",
           "microscope", "monitorrank")


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def re1(tmp_path_factory):
    root = tmp_path_factory.mktemp("re1")
    cases = write_re1_suite(root, n_cases=2, seed=3, n_services=4, n_rows=160)
    return root, cases


def _read(root, fc):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_case(fc.path, root=root)


@pytest.mark.parametrize("name", WALKERS)
def test_sli_and_call_graph_methods_rank_an_re1_case(re1, name):
    root, cases = re1
    case = _read(root, cases[0])
    assert case.observation.topology.is_empty and not len(case.observation.traces)  # nothing but metrics
    ranking = get_method(name).rank(case.observation, seed=0)
    assert set(ranking.services()) <= set(case.observation.services)
    assert ranking.rank_of(cases[0].service) is not None  # the planted root is ranked, not dropped


def test_entry_rules_name_traces_latency_and_topology(re1, tmp_path):
    root, cases = re1
    obs = _read(root, cases[0]).observation
    assert find_entry(obs) == ("frontend", "name") and sli_column(obs) == "frontend_latency"
    assert walk_graph(obs).graph["source"] == "assumed-star"
    assert set(walk_graph(obs).edges) == {("frontend", s) for s in obs.services if s != "frontend"}
    # RE2: the root spans name the entry, the traced calls are the call graph
    re2 = write_re2_suite(tmp_path / "re2", n_cases=1, seed=4, n_services=4, n_rows=160)
    obs2 = _read(tmp_path / "re2", re2[0]).observation
    assert find_entry(obs2) == ("frontend", "traces") and walk_graph(obs2).graph["source"] == "traces"
    # no name says entry: the service with the largest latency before the injection (it holds its callees')
    rows = np.arange(100)
    rng = np.random.default_rng(0)
    b, c = 20 + rng.normal(0, 1, 100), 30 + rng.normal(0, 1, 100)
    b[50:] += 40  # the fault: b's latency overtakes a's after the injection, not before
    a = 5 + b + c
    folder = tmp_path / "shop" / "bravo_delay" / "1"
    folder.mkdir(parents=True)
    lines = ["time,bravo_latency-90,charlie_latency-90,alpha_latency-90,alpha_cpu"]
    lines += [f"{1_700_000_000 + i},{float(b[i])!r},{float(c[i])!r},{float(a[i])!r},{float(i % 7)!r}" for i in rows]
    (folder / "data.csv").write_text("\n".join(lines) + "\n")
    (folder / "inject_time.txt").write_text("1700000050\n")
    obs3 = load_case(folder, root=tmp_path / "shop").observation
    assert find_entry(obs3) == ("alpha", "latency") and sli_column(obs3) == "alpha_latency"
    # --sli wins over every rule, and is found under RCAEval's name for a renamed latency-90 column
    chosen = apply_system(_read(root, cases[0]), system_info(sli="cartservice_latency-90")).observation
    assert find_entry(chosen) == ("cartservice", "topology") and sli_column(chosen) == "cartservice_latency"


def test_sli_option_on_rank_and_a_missing_column(re1):
    _root, cases = re1
    r = run("rank", cases[0].path, "-m", "pc-randomwalk", "--json")
    assert r.exit_code == 0, r.output
    r = run("rank", cases[0].path, "-m", "microscope", "--sli", "frontend_latency-50", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["services"]
    r = run("rank", cases[0].path, "-m", "monitorrank", "--sli", "frontend_p99")
    assert r.exit_code == 1 and "--sli: no column 'frontend_p99'" in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_call_graph_file_csv_json_and_errors(re1, tmp_path):
    root, cases = re1
    good = tmp_path / "calls.csv"
    good.write_text("caller,callee\n# Online Boutique, the part this suite has\nfrontend,cartservice\n"
                    "frontend,checkoutservice\ncheckoutservice,currencyservice\n\n")
    as_json = tmp_path / "calls.json"
    as_json.write_text(json.dumps({"edges": [["frontend", "cartservice"], {"caller": "frontend", "callee":
                                   "checkoutservice"}, ["checkoutservice", "currencyservice"]]}))
    assert read_call_graph(good) == read_call_graph(as_json) == (
        ("frontend", "cartservice"), ("frontend", "checkoutservice"), ("checkoutservice", "currencyservice"))
    obs = apply_system(_read(root, cases[0]), system_info(call_graph=good)).observation
    g = walk_graph(obs)
    assert g.graph["source"] == "topology" and ("checkoutservice", "currencyservice") in g.edges
    assert find_entry(obs) == ("frontend", "topology")  # the one service nobody calls
    # the file's edges are the ones walked: currencyservice (the planted root, the one anomalous service) is
    # reached only through checkoutservice, which is normal, so MicroScope's walk stops there and abstains; on the
    # star it assumes without a file, currencyservice is a callee of the entry and ranks first
    assert cases[0].service == "currencyservice"
    r = run("rank", cases[0].path, "-m", "microscope", "--call-graph", good)
    assert r.exit_code == 3 and "no anomalous service reachable from the entry 'frontend'" in r.output, r.output
    r = run("rank", cases[0].path, "-m", "microscope", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["services"][0] == "currencyservice", r.output

    bad = tmp_path / "bad.csv"
    bad.write_text("caller,callee\nfrontend,cartservice\nfrontend cartservice\n")
    with pytest.raises(FormatError, match=r"bad.csv: line 3: expected two fields"):
        read_call_graph(bad)
    r = run("rank", cases[0].path, "-m", "monitorrank", "--call-graph", bad)
    assert r.exit_code == 1 and "bad.csv: line 3" in r.output and len(r.output.strip().splitlines()) == 1
    for text, match in [("[[\"frontend\"]]", r"edges\[0\]: must be"), ("{\"calls\": []}", "field 'edges' missing"),
                        ("[[\"frontend\", \"frontend\"]]", "calls itself"), ("{", "invalid JSON")]:
        f = tmp_path / "g.json"
        f.write_text(text)
        with pytest.raises(FormatError, match=match):
            read_call_graph(f)
    with pytest.raises(FormatError, match="missing"):
        read_call_graph(tmp_path / "nope.csv")
    stranger = tmp_path / "stranger.csv"
    stranger.write_text("frontend,redis\n")
    with pytest.raises(LlmrcaError, match=r"--call-graph .*stranger.csv: service\(s\) 'redis' not in"):
        apply_system(_read(root, cases[0]), system_info(call_graph=stranger))


def test_evaluate_takes_the_sli_and_call_graph(re1, tmp_path):
    root, _cases = re1
    calls = tmp_path / "calls.csv"
    calls.write_text("frontend,cartservice\nfrontend,checkoutservice\nfrontend,currencyservice\n")
    out = tmp_path / "res"
    r = run("evaluate", root, "-m", "monitorrank,microscope", "--jobs", "1", "--out", out, "--no-progress",
            "--sli", "frontend_latency", "--call-graph", calls)
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(row["status"] in ("ok",) or row["status"].startswith("no-answer")
                                  for row in rows), rows
    assert json.loads((out / "run.json").read_text())["params"]["system"]["sli"] == "frontend_latency"
    r = run("evaluate", root, "-m", "baro", "--out", tmp_path / "r2", "--no-progress", "--sli", "nosuch_latency")
    assert r.exit_code == 1 and "--sli: no column 'nosuch_latency'" in r.output


def test_default_window_is_the_whole_rcaeval_case_and_the_study_s_for_ours(re1, tmp_path):
    root, cases = re1
    obs = _read(root, cases[0]).observation
    assert obs.source == "rcaeval" and resolve_window(obs) == RCAEVAL_WINDOW
    assert len(metric_window(obs).times) == len(obs.metrics) == 160  # every row, not 60 each side
    for name in ("baro", "nsigma", "e-diagnosis"):
        whole = get_method(name, window=None).rank(obs)
        assert get_method(name).rank(obs) == whole
        assert get_method(name, window=STUDY_WINDOW // 2).rank(obs) != whole  # the window does matter here
    # llmrca's own case, also once exported to RCAEval's layout (its sidecar says it is ours): 60 rows each side
    case = planted_case(n_services=3, n_rows=200, inject_row=100, seed=1)
    assert case.observation.source is None and len(metric_window(case.observation).times) == 2 * STUDY_WINDOW
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        back = read_case(write_case(case, tmp_path / "ours"))
    assert back.observation.source is None and len(metric_window(back.observation).times) == 2 * STUDY_WINDOW
    # a number from --param still goes through, and a bad one is a one-line MethodError naming the parameter
    assert checked_params({"baro": {"window": 30}}, ["baro"]) == {"baro": {"window": 30}}
    with pytest.raises(MethodError, match="parameter window must be an integer >= 2, None"):
        get_method("nsigma", window="whole").rank(obs)


def test_sli_and_source_survive_the_native_layout(re1, tmp_path):
    from llmrca.io import save_case

    root, cases = re1
    case = apply_system(_read(root, cases[0]), system_info(sli="frontend_latency-50"))
    back = load_case(save_case(case, tmp_path / "native"))
    assert back.observation.source == "rcaeval" and back.observation.topology.sli == "frontend_latency-50"
    assert sli_column(back.observation) == "frontend_latency-50" and resolve_window(back.observation) == 600
    # a case without either writes neither field: llmrca's own case.json files keep their bytes
    plain = planted_case(n_services=2, n_rows=20, inject_row=10, seed=0)
    text = (save_case(plain, tmp_path / "plain") / "case.json").read_text()
    assert '"source"' not in text and '"sli"' not in text
