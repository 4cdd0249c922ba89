"""Malformed case files: each gives one error naming the file and the field, never a traceback, and `llmrca
validate` on a suite reports every bad case (issue 12, item 6)."""

import json

import numpy as np
import pytest
from rcaeval_fixtures import write_re1_suite
from typer.testing import CliRunner

from llmrca.case import GroundTruth
from llmrca.cli import app
from llmrca.errors import CaseError, FormatError
from llmrca.io import load_case, save_case, validate_path
from llmrca.synthetic import planted_case

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _case(tmp_path, name, edit=None, metrics=None, seed=1):
    good = planted_case(seed=seed)
    d = save_case(good if metrics is None else good.with_observation(metrics=metrics), tmp_path / name)
    if edit is not None:
        p = d / "case.json"
        p.write_text(json.dumps(edit(json.loads(p.read_text()))))
    return d


def _fault(**changes):
    return lambda m: {**m, "fault": {**m["fault"], **changes}}


def _without(key):
    return lambda m: {k: v for k, v in m.items() if k != key}


# (case.json edit, field the error names, words of the message)
BAD_JSON = {
    "list": (lambda m: [m], "case.json", "JSON object"),
    "null": (lambda m: None, "case.json", "JSON object"),
    "number": (lambda m: 3, "case.json", "JSON object"),
    "provenance-list": (lambda m: {**m, "provenance": [1, 2]}, "provenance", "object"),
    "service-int": (_fault(service=5), "fault.service", "string"),
    "interval-str": (lambda m: {**m, "interval": "abc"}, "interval", "number"),
    "inject-time-str": (lambda m: {**m, "inject_time": str(m["inject_time"])}, "inject_time", "number"),
    "no-fault": (_without("fault"), "fault", "missing"),
    "no-fault-type": (lambda m: {**m, "fault": {k: v for k, v in m["fault"].items() if k != "type"}},
                      "fault.type", "missing"),
    "normal-with-service": (_fault(type="normal"), "fault.service", "normal"),
    "fault-without-service": (_fault(service=None), "fault.service", "missing"),
    "start-str": (_fault(start="soon"), "fault.start", "number"),
    "edges-bad": (lambda m: {**m, "topology": {**m["topology"], "edges": [["a"]]}}, "topology.edges", "pairs"),
    "format-version-str": (lambda m: {**m, "format_version": "one"}, "format_version", "integer"),
}


@pytest.mark.parametrize("name", sorted(BAD_JSON))
def test_malformed_case_json_is_one_clear_error(tmp_path, name):
    edit, field, words = BAD_JSON[name]
    d = _case(tmp_path, name, edit)
    with pytest.raises((CaseError, FormatError)) as e:
        load_case(d)
    msg = str(e.value)
    assert str(d / "case.json") in msg and field in msg and words in msg, msg
    r = run("rank", d, "-m", "baro")
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.output.strip().count("\n") == 0 and field in r.output, r.output


def test_normal_case_is_explicit(tmp_path):
    c = planted_case(seed=1)
    c.truth = GroundTruth(service=None)
    d = save_case(c, tmp_path / "n")
    assert json.loads((d / "case.json").read_text())["fault"]["type"] == "normal"
    assert load_case(d).truth.is_normal
    # The variant that was scored as a fault of type "normal": a service, no type.
    p = d / "case.json"
    m = json.loads(p.read_text())
    m["fault"] = {"service": "svc-3"}
    p.write_text(json.dumps(m))
    with pytest.raises(CaseError, match="fault.type: missing"):
        load_case(d)
    c.truth = GroundTruth(service=None, fault_type="unknown")  # truth not known (RCAEval off-pattern): readable
    assert load_case(save_case(c, tmp_path / "u")).truth.fault_type == "unknown"
    with pytest.raises(CaseError, match="fault.type"):  # built in code, the same rule holds
        c.truth = GroundTruth(service="svc-3", fault_type="")
        c.validate()


@pytest.mark.parametrize("value,words", [(np.inf, "infinite"), (-np.inf, "infinite"), (1e308, "absurd")])
def test_extreme_metric_values_are_rejected_naming_the_column(tmp_path, value, words):
    c = planted_case(seed=1)
    col = c.truth.indicator  # the root cause's own series: methods used to drop it from the ranking
    m = c.observation.metrics.copy()
    m.loc[7, col] = value
    d = _case(tmp_path, "x", metrics=m)
    with pytest.raises(CaseError) as e:
        load_case(d)
    assert f"metrics['{col}']" in str(e.value) and words in str(e.value) and "row 7" in str(e.value)
    r = run("validate", d)
    assert r.exit_code == 1 and col in r.output
    r = run("rank", d, "-m", "nsigma")
    assert r.exit_code == 1 and col in r.output and "Traceback" not in r.output


def test_large_but_sane_values_pass(tmp_path):
    c = planted_case(seed=1)
    m = c.observation.metrics.copy()
    m[c.truth.indicator] = m[c.truth.indicator] * 1e15  # bytes of a big cluster's memory
    assert not [p for p in c.with_observation(metrics=m).problems() if p.severity == "error"]


def test_suite_validate_reports_every_bad_case(tmp_path):
    suite = tmp_path / "s"
    _case(suite, "a-good")
    for name in ("list", "service-int", "no-fault", "interval-str"):
        _case(suite, name, BAD_JSON[name][0])
    m = planted_case(seed=1).observation.metrics.copy()
    m.iloc[3, 1] = np.inf
    _case(suite, "inf", metrics=m)
    found = dict(validate_path(suite))
    assert len(found) == 6
    bad = {p.parent.name if p.name == "case.json" else p.name for p, probs in found.items()
           if any(x.severity == "error" for x in probs)}
    assert bad == {"list", "service-int", "no-fault", "interval-str", "inf"}
    r = run("validate", suite)
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "6 case(s) checked, 5 with errors" in r.output
    for name in ("list", "service-int", "no-fault", "interval-str", "inf"):
        assert f"/{name}" in r.output


def test_string_inject_time_is_refused_before_export(tmp_path):
    d = _case(tmp_path, "c", BAD_JSON["inject-time-str"][0])
    assert run("validate", d).exit_code == 1
    r = run("export", d, "--out", tmp_path / "re")
    assert r.exit_code == 1 and "inject_time" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "re").exists()


def test_bom_in_inject_time_txt_is_accepted(tmp_path):
    fx = write_re1_suite(tmp_path / "re1", n_cases=1, seed=3)[0]
    p = fx.path / "inject_time.txt"
    p.write_bytes(b"\xef\xbb\xbf" + p.read_bytes())
    assert load_case(fx.path).inject_time == float(fx.inject_time)
    p.write_bytes(b"\xef\xbb\xbfsoon\n")
    with pytest.raises(FormatError, match="inject_time.txt: inject_time 'soon' is not a number"):
        load_case(fx.path)


def test_malformed_sidecar_names_its_field(tmp_path):
    c = planted_case(seed=1)
    from llmrca.io.rcaeval import write_case

    d = write_case(c, tmp_path / "re")
    p = d / "llmrca.json"
    m = json.loads(p.read_text())
    m["interval"] = "fast"
    p.write_text(json.dumps(m))
    with pytest.raises(CaseError) as e:
        load_case(d)
    assert "llmrca.json" in str(e.value) and "interval" in str(e.value)


def test_evaluate_records_malformed_cases_as_errors_and_runs_the_rest(tmp_path):
    from llmrca.evaluate import load_results

    suite = tmp_path / "s"
    _case(suite, "a-good")
    _case(suite, "no-fault", BAD_JSON["no-fault"][0], seed=2)
    huge = planted_case(seed=3)
    m = huge.observation.metrics.copy()
    m.loc[150, huge.truth.indicator] = 1e308  # after the injection: ranks the root last if read
    _case(suite, "huge", metrics=m, seed=3)
    r = run("evaluate", suite, "-m", "nsigma", "--out", tmp_path / "r", "--no-progress")
    assert r.exit_code == 0, r.output
    rows = load_results(tmp_path / "r").set_index("case_path")["status"]
    by_name = {k.rsplit("/", 1)[-1]: v for k, v in rows.items()}
    assert by_name["a-good"] == "ok"
    assert by_name["no-fault"].startswith("error:") and "fault: missing" in by_name["no-fault"]
    assert by_name["huge"].startswith("error:") and "absurd" in by_name["huge"]


def test_infinite_value_in_an_rcaeval_csv_names_the_column(tmp_path):
    fx = write_re1_suite(tmp_path / "re1", n_cases=1, seed=3)[0]
    p = fx.path / "data.csv"
    lines = p.read_text().splitlines()
    header, cells = lines[0].split(","), lines[50].split(",")
    cells[1] = "inf"
    lines[50] = ",".join(cells)
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(CaseError, match=rf"metrics\['{header[1]}'\]: 1 infinite value"):
        load_case(fx.path)
