"""The shipped `llm` suite: every LLM-serving fault on its targets, fault-free runs and two-fault cases; each fault
case differs from its fault-free twin (generate_suite refuses one that does not)."""

from __future__ import annotations

from collections import Counter

from llmrca import faults, find_cases, generate_suite, load_case
from llmrca.sim.suites import plan

NEW = {"gpu-xid", "gpu-ecc", "gpu-thermal", "kv-cache-pressure", "engine-hang", "replica-crash-loop", "straggler",
       "prompt-surge", "proxy-overload", "network-loss", "routing-skew"}


def test_the_registry_holds_the_llm_faults_with_kinds():
    assert NEW <= set(faults.ids()) and len(faults.ids()) >= 14
    assert all(faults.get(f).fault_kind for f in faults.ids())


def test_the_llm_plan_covers_every_new_fault_on_real_topology_members():
    cases = plan("llm")
    kinds = Counter(c.case_id.split("/")[0] for c in cases)
    assert NEW <= set(kinds) and kinds["normal"] >= 10 and kinds["multi"] >= 4
    assert {c.case_id.split("/")[1] for c in cases if c.case_id.startswith("prompt-surge/")} == {"loadgen"}
    assert {c.case_id.split("/")[1] for c in cases if c.case_id.startswith("routing-skew/")} == {"ray-head"}


def test_one_case_of_each_new_fault_is_generated_and_labelled(tmp_path):
    # Two replicas keep it small; each fault still meets every kind of target it has (replica, proxy, workload).
    generate_suite("llm", tmp_path, reps=1, normal=1, sets=["deployment.replicas=2", "faults.multi=1"],
                   progress=False, jobs=2)
    found = {}
    for path in find_cases(tmp_path):
        case = load_case(path)
        found.setdefault(case.truth.fault_type, case)
    assert NEW <= set(found) and "normal" in found
    for f in NEW:
        assert found[f].truth.service in found[f].observation.topology.services
    multi = [load_case(p) for p in find_cases(tmp_path) if "multi" in p.relative_to(tmp_path).parts[:1]]
    assert multi and all(len(c.truth.roots) == 2 for c in multi)
