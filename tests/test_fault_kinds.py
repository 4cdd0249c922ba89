"""Fault kinds: on specs, in the case's ground truth, in result rows, and the diagnosis section of the report."""

import json
from dataclasses import replace

import pytest
from _fake_diagnoser import register_diagnoser, unregister_diagnoser
from typer.testing import CliRunner

from llmrca.case import GroundTruth
from llmrca.cli import app
from llmrca.evaluate import evaluate, load_results
from llmrca.faults import get, kind_of, specs
from llmrca.io import load_case, save_case
from llmrca.report.detection import confusion, diagnosis_markdown, diagnosis_summary
from llmrca.synthetic import planted_case

pytestmark = pytest.mark.usefixtures("fakes")


@pytest.fixture(scope="module", autouse=True)
def diagnoser():
    register_diagnoser()
    yield
    unregister_diagnoser()


def test_kind_defaults_to_the_id_and_can_be_set():
    spec = get("cpu")
    assert spec.kind == "" and spec.fault_kind == "cpu"
    assert replace(spec, kind="resource").fault_kind == "resource"
    assert kind_of("normal") == "normal" and kind_of(None) == "normal" and kind_of("imported-x") == "imported-x"


def test_faults_command_lists_kinds():
    res = CliRunner().invoke(app, ["faults", "--json"])
    assert res.exit_code == 0, res.output
    items = json.loads(res.output)
    assert {i["id"]: i["kind"] for i in items} == {s.id: s.fault_kind for s in specs()}
    table = CliRunner().invoke(app, ["faults"])
    assert "kind" in table.output


def test_truth_kind_round_trips_and_keeps_old_bytes(tmp_path):
    case = planted_case(seed=3)
    p1 = save_case(case, tmp_path / "a")
    before = (p1 / "case.json").read_bytes()
    assert b'"kind"' not in before  # a kind equal to the type's adds nothing to case.json
    assert load_case(p1).truth.fault_kind == "cpu"
    assert GroundTruth(service=None).fault_kind == "normal"
    assert GroundTruth(service=None, fault_type="unknown").fault_kind == "unknown"
    odd = replace(case, truth=replace(case.truth, kind="saturation"))
    p2 = save_case(odd, tmp_path / "b")
    assert json.loads((p2 / "case.json").read_text())["fault"]["kind"] == "saturation"
    assert load_case(p2).truth.fault_kind == "saturation"
    resaved = save_case(load_case(p1), tmp_path / "c")
    assert (resaved / "case.json").read_bytes() == before


def _cases(root):
    out = []
    for s in range(4):  # cpu cases shift their cpu series, memory cases their mem series
        metrics = ("cpu", "mem", "latency") if s % 2 == 0 else ("mem", "cpu", "latency")
        case = planted_case(seed=10 + s, metrics=metrics, fault_type="cpu" if s % 2 == 0 else "memory")
        out.append(str(save_case(case, root / f"f{s}")))
    return out


def test_rows_carry_kind_and_diagnosis_and_the_report_scores_it(tmp_path):
    paths = _cases(tmp_path / "cases")
    df = evaluate(paths, ["fake-diagnose", "fake-shift"], tmp_path / "run", jobs=1, progress=False)
    d = df[df["method"] == "fake-diagnose"]
    assert set(d["fault_kind"]) == {"cpu", "memory"}
    # the diagnosis follows the data: the metric that moved most names the kind
    assert (d["diagnosis"].astype(str) == d["fault_kind"].astype(str)).all()
    assert df.loc[df["method"] == "fake-shift", "diagnosis"].isna().all()
    summ = diagnosis_summary(load_results(tmp_path / "run"))
    assert set(summ["method"]) == {"fake-diagnose"}
    assert summ.set_index("fault_kind").loc["all", "accuracy"] == 1.0
    cm = confusion(df, "fake-diagnose")
    assert cm.loc["cpu", "cpu"] == 2 and cm.loc["memory", "memory"] == 2 and int(cm.to_numpy().sum()) == 4
    md = diagnosis_markdown(df)
    assert "Diagnosis accuracy per fault kind" in md and "Confusion matrix: fake-diagnose" in md


def test_a_wrong_diagnosis_is_counted_wrong(tmp_path):
    df = evaluate(_cases(tmp_path / "cases"), ["fake-diagnose"], tmp_path / "run", jobs=1, progress=False)
    df = df.copy()
    df["fault_kind"] = df["fault_kind"].astype(object)
    df.loc[df.index[0], "fault_kind"] = "gpu"  # pretend the first case was a gpu fault
    summ = diagnosis_summary(df).set_index("fault_kind")
    assert summ.loc["gpu", "accuracy"] == 0.0 and summ.loc["all", "accuracy"] == 0.75
    assert confusion(df, "fake-diagnose").loc["gpu"].sum() == 1


def test_no_diagnosis_section_without_diagnoses(tmp_path):
    df = evaluate(_cases(tmp_path / "cases")[:2], ["fake-shift"], tmp_path / "run", jobs=1, progress=False)
    assert diagnosis_markdown(df) == ""
    res = CliRunner().invoke(app, ["report", str(tmp_path / "run"), "-f", "md"])
    assert res.exit_code == 0 and "Diagnosis" not in res.output and "AUROC" in res.output
