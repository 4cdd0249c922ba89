"""Multi-fault cases: the ground truth's list of faults, case.json, validation, the simulator and the scores."""

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from llmrca.case import FaultRecord, GroundTruth
from llmrca.evaluate.scores import rank_of_truth
from llmrca.evaluate.store import rows_to_frame
from llmrca.faults import FaultParamError, Injection
from llmrca.io import load_case, save_case
from llmrca.methods.base import Ranking
from llmrca.report import summarize
from llmrca.report.multi import multi_markdown, multi_summary
from llmrca.sim import SimConfig
from llmrca.sim.run import simulate
from llmrca.synthetic import planted_case

SHORT = {"duration": 120.0, "inject_at": 60.0, "fault_duration": 30.0}


def _two(truth: GroundTruth, other: str) -> GroundTruth:
    first = FaultRecord(truth.fault_type, truth.service, truth.start, truth.end, dict(truth.params), truth.indicator)
    second = FaultRecord("memory", other, truth.start, truth.end, {}, f"{other}_mem")
    return replace(truth, faults=(first, second))


def test_roots_and_any_all_ranks():
    single = GroundTruth(service="a", fault_type="cpu")
    assert single.roots == ("a",) and not single.is_multi and GroundTruth(service=None).roots == ()
    multi = _two(single, "c")
    assert multi.roots == ("a", "c") and multi.is_multi
    r = Ranking(("b", "c", "a"), (3.0, 2.0, 1.0))
    tr = rank_of_truth(r, multi, set())
    assert (tr.rank, tr.rank_all) == (2, 3)  # any root: c at 2; all roots: a at 3
    assert rank_of_truth(Ranking(("c", "b"), (2.0, 1.0)), multi, set()).rank_all is None  # a is absent
    one = rank_of_truth(r, single, set())
    assert one.rank == one.rank_all == 3


def test_case_json_round_trip_and_single_fault_bytes(tmp_path):
    case = planted_case(seed=4)
    p = save_case(case, tmp_path / "one")
    assert b'"faults"' not in (p / "case.json").read_bytes()
    other = next(s for s in case.observation.services if s != case.truth.service)
    multi = replace(case, truth=_two(case.truth, other))
    q = save_case(multi, tmp_path / "two")
    doc = json.loads((q / "case.json").read_text())
    assert [f["service"] for f in doc["fault"]["faults"]] == [case.truth.service, other]
    back = load_case(q)
    assert back.truth.roots == (case.truth.service, other) and back.truth.faults[1].fault_kind == "memory"
    assert not [x for x in back.problems() if x.severity == "error"]


def test_validation_refuses_two_faults_on_one_target(tmp_path):
    case = planted_case(seed=4)
    bad = replace(case, truth=_two(case.truth, case.truth.service))
    errs = [x for x in bad.problems() if x.severity == "error"]
    assert any("fault.faults[1].service" in x.field for x in errs)
    doc_path = save_case(planted_case(seed=4), tmp_path / "c") / "case.json"
    doc = json.loads(doc_path.read_text())
    doc["fault"]["faults"] = [{"type": "cpu"}]
    doc_path.write_text(json.dumps(doc))
    with pytest.raises(Exception, match=r"fault\.faults\[0\]\.service"):
        load_case(doc_path.parent)


@pytest.fixture(scope="module")
def sims():
    cfg = SimConfig(**SHORT)
    one = simulate(cfg, Injection("cpu", "ray-replicas-0"), seed=7, traces=False, logs=False)
    listed = simulate(cfg, [Injection("cpu", "ray-replicas-0")], seed=7, traces=False, logs=False)
    two = simulate(cfg, [Injection("cpu", "ray-replicas-0"), Injection("network", "ray-replicas-1", start=75.0)],
                   seed=7, traces=False, logs=False)
    return one, listed, two


def test_a_list_of_one_is_the_single_run(sims):
    one, listed, _ = sims
    pd.testing.assert_frame_equal(one.observation.metrics, listed.observation.metrics)
    assert one.truth == listed.truth and one.provenance == listed.provenance


def test_two_faults_share_one_environment(sims):
    one, _, two = sims
    assert two.truth.roots == ("ray-replicas-0", "ray-replicas-1")
    assert two.truth.faults[1].start == pytest.approx(two.truth.start + 15.0)
    # the first fault is drawn as in the single run; the second changes what ray-replicas-1 shows
    assert two.truth.params == one.truth.params
    col = next(c for c in two.observation.metric_columns if c.startswith("ray-replicas-1_"))
    assert not np.allclose(two.observation.metrics[col], one.observation.metrics[col], equal_nan=True)
    assert [f["target"] for f in two.provenance["faults"]] == ["ray-replicas-0", "ray-replicas-1"]


def test_two_faults_on_one_target_are_refused():
    with pytest.raises(FaultParamError, match="ray-replicas-0"):
        simulate(SimConfig(**SHORT), [Injection("cpu", "ray-replicas-0"), Injection("memory", "ray-replicas-0")])


def test_report_has_a_multi_fault_section_and_keeps_it_out_of_the_main_tables():
    base = {"method": "m", "family": "metric", "seed": 0, "status": "ok", "fault_type": "cpu", "root_cause": "a"}
    rows = [{**base, "case_id": "s1", "rank": 1, "rank_all": 1},
            {**base, "case_id": "m1", "rank": 1, "rank_all": 2, "roots": '["a", "b"]'},
            {**base, "case_id": "m2", "rank": 3, "rank_all": None, "roots": '["a", "b"]'}]
    df = rows_to_frame(rows)
    summ = multi_summary(df).iloc[0]
    assert (summ["any_ac1"], summ["any_ac3"], summ["all_ac1"], summ["all_ac3"], summ["n"]) == (0.5, 1.0, 0.0,
                                                                                               0.5, 2)
    assert int(summarize(df, chance=False).query("fault_type == 'all'")["n"].iloc[0]) == 1
    assert "Multi-fault cases" in multi_markdown(df) and multi_markdown(df.iloc[:1]) == ""
    from llmrca.report.html import to_html

    assert 'id="multi"' in to_html({"all": df}) and 'id="multi"' not in to_html({"all": df.iloc[:1]})


def test_suite_plans_multi_fault_cases_deterministically(tmp_path):
    from llmrca.sim.suites import _make, plan

    def multi(seed):
        return [p for p in plan("demo", seed=seed, sets={"faults.multi": 2}) if p.case_id.startswith("multi/")]

    first = multi(0)
    assert [p.case_id for p in first] == [p.case_id for p in multi(0)]
    assert [p.case_id for p in first] != [p.case_id for p in multi(1)]
    assert not [p for p in plan("demo") if p.case_id.startswith("multi/")]  # no key, no multi-fault case
    for p in first:
        a, b = p.injection
        assert a.target != b.target
        assert p.case_id.startswith(f"multi/{a.fault}+{b.fault}/{a.target}+{b.target}/rep-")
        assert b.start > p.config.inject_at and b.start + b.duration <= p.config.duration
    path = _make(first[0], str(tmp_path), "demo", 0, {}, False)
    case = load_case(path)
    assert case.truth.roots == (first[0].injection[0].target, first[0].injection[1].target)


def test_rcaeval_export_warns_and_writes_the_first_root(tmp_path):
    from llmrca.io.rcaeval import RcaevalWarning, write_case

    case = planted_case(seed=4)
    other = next(s for s in case.observation.services if s != case.truth.service)
    multi = replace(case, truth=_two(case.truth, other))
    with pytest.warns(RcaevalWarning, match=other):
        folder = write_case(multi, tmp_path / "re")
    assert folder.parent.name == f"{case.truth.service}_{case.truth.fault_type}"


def test_each_fault_of_a_two_fault_case_must_show_against_the_run_without_it():
    """The second fault of a pair is checked on its own: a pair with an invisible fault (a power cap above the
    GPU's draw) is refused, naming that fault, though the other fault is loud."""
    import pytest

    from llmrca.faults import Injection
    from llmrca.sim.config import SimConfig
    from llmrca.sim.run import simulate
    from llmrca.sim.twin import NoObservableEffectError, check

    cfg = SimConfig(duration=240.0, inject_at=120.0, fault_duration=60.0)
    loud = Injection("cpu", "ray-replicas-1")
    pair = [loud, Injection("network", "ray-replicas-2")]
    case = simulate(cfg, pair, 3)
    moved = check(case, cfg, 3, pair)
    assert {m.column.split("_", 1)[0] for m in moved} >= {"ray-replicas-1"}
    silent = [loud, Injection("gpu", "ray-replicas-2", {"power_limit_w": 400.0})]
    with pytest.raises(NoObservableEffectError, match=r"'gpu' on 'ray-replicas-2' \(fault 2 of 2\)"):
        check(simulate(cfg, silent, 3), cfg, 3, silent)
