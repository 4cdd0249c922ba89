"""The ground-truth seal, stale-row detection and process hygiene of the evaluation grid (issue 12 items 1-3, 8)."""

import json
import time

import pandas as pd
import psutil
import pytest
from _fake_methods import Peeker

from llmrca.evaluate import evaluate, load_results
from llmrca.io import load_case, save_case
from llmrca.synthetic import planted_case

pytestmark = pytest.mark.usefixtures("fakes")  # the test-only methods (tests/conftest.py)


@pytest.fixture(scope="module")
def leaky_cases(tmp_path_factory):
    """Cases whose id and folder name the root cause, as the paper suite's ids do."""
    root = tmp_path_factory.mktemp("cases")
    out = []
    for s in range(4):
        case = planted_case(seed=s, n_services=6, n_rows=80, inject_row=40)
        case.id = f"LEAK-{case.truth.service}/rep-{s}"
        out.append(str(save_case(case, root / f"LEAK-{case.truth.service}-{s}")))
    return out


def test_the_peeking_method_finds_the_truth_when_it_is_there(leaky_cases, tmp_path):
    # The control: held in a caller's frame, as the old worker did, the truth is found and ranked first.
    marker = tmp_path / "found.txt"
    peek = Peeker(marker=str(marker))
    hits = 0
    for path in leaky_cases:
        case = load_case(path)
        truth = case.truth  # noqa: F841 - what a careless caller keeps around
        hits += peek.rank(case.observation).rank_of(case.truth.service) == 1
    assert hits == len(leaky_cases)
    assert all(json.loads(line) for line in marker.read_text().splitlines())


@pytest.mark.parametrize("jobs", [1, 2])
def test_the_peeking_method_finds_nothing_in_a_worker(leaky_cases, tmp_path, jobs):
    marker = tmp_path / "found.txt"
    df = evaluate(leaky_cases, ["fake-peek"], tmp_path / "run", jobs=jobs, progress=False,
                  method_params={"fake-peek": {"marker": str(marker)}})
    assert set(df["status"]) == {"ok"}
    findings = [json.loads(line) for line in marker.read_text().splitlines()]
    assert len(findings) == len(leaky_cases) and findings == [[]] * len(leaky_cases), findings
    # its ranking is the blind one (reverse name order), not the truth first
    for path in leaky_cases:
        case = load_case(path)
        row = df[df["case_id"] == case.id].iloc[0]
        blind = sorted(case.observation.services, reverse=True)
        assert row["rank"] == blind.index(case.truth.service) + 1


def test_a_regenerated_case_is_recomputed_and_counted_as_replaced(tmp_path):
    cases = tmp_path / "cases"
    paths = [str(save_case(planted_case(seed=s, n_services=5, n_rows=60, inject_row=30), cases / f"c{s}"))
             for s in range(3)]
    out = tmp_path / "run"
    evaluate(paths, ["fake-shift", "fake-short"], out, progress=False)
    # the same ids, other telemetry: what the audit did with `generate --seed 2 --overwrite`
    changed = planted_case(seed=7, n_services=5, n_rows=60, inject_row=30)
    changed.id = "planted-1"
    save_case(changed, cases / "c1", overwrite=True)
    df = evaluate(paths, ["fake-shift", "fake-short"], out, progress=False)
    tasks = json.loads((out / "run.json").read_text())["tasks"]
    assert tasks == {"grid": 6, "resumed": 4, "replaced": 2, "to_run": 2}
    fresh = evaluate(paths, ["fake-shift", "fake-short"], tmp_path / "fresh", progress=False)
    cols = ["method", "case_id", "rank", "top5", "root_cause", "status"]
    key = ["method", "case_id"]
    pd.testing.assert_frame_equal(df[cols].sort_values(key).reset_index(drop=True),
                                  fresh[cols].sort_values(key).reset_index(drop=True))
    # other parameters are other inputs too; the same ones are not
    evaluate(paths, ["fake-touch"], out, progress=False, method_params={"fake-touch": {"mb": 1}})
    evaluate(paths, ["fake-touch"], out, progress=False, method_params={"fake-touch": {"mb": 2}})
    assert json.loads((out / "run.json").read_text())["tasks"]["replaced"] == 3
    evaluate(paths, ["fake-touch"], out, progress=False, method_params={"fake-touch": {"mb": 2}})
    assert json.loads((out / "run.json").read_text())["tasks"] == {
        "grid": 3, "resumed": 3, "replaced": 0, "to_run": 0}
    assert load_results(out)["input_hash"].notna().all()


def test_an_abstention_is_no_answer_and_a_miss(leaky_cases, tmp_path):
    df = evaluate(leaky_cases[:2], ["fake-abstain", "fake-raise"], tmp_path / "run", progress=False)
    status = df.set_index("method")["status"]
    assert (df.loc[df["method"] == "fake-abstain", "status"] == "no-answer: no abnormal span on purpose").all()
    assert status["fake-raise"].iloc[0].startswith("error: ValueError")
    assert df["rank"].isna().all() and df["fault_type"].notna().all()
    counts = json.loads((tmp_path / "run" / "run.json").read_text())["counts"]
    assert counts == {"ok": 0, "no-answer": 2, "error": 2, "timeout": 0}


def test_a_timeout_before_rank_still_has_its_fault_type(leaky_cases, tmp_path):
    df = evaluate(leaky_cases[:1], ["fake-sleep"], tmp_path / "run", timeout=1.0, progress=False)
    row = df.iloc[0]
    case = load_case(leaky_cases[0])
    assert row["status"] == "timeout"
    assert (row["fault_type"], row["root_cause"]) == (case.truth.fault_type, case.truth.service)


def test_a_child_escaping_into_a_new_session_dies_with_the_timeout(leaky_cases, tmp_path):
    pidfile = tmp_path / "child.pid"
    t0 = time.monotonic()
    df = evaluate(leaky_cases[:1], ["fake-escape"], tmp_path / "run", timeout=3.0, progress=False,
                  method_params={"fake-escape": {"pidfile": str(pidfile)}})
    assert df.iloc[0]["status"] == "timeout" and time.monotonic() - t0 < 60
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 10
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, f"the escaped child {pid} outlived the timeout kill"
        time.sleep(0.1)


def test_memory_limit_defaults_to_available_memory(monkeypatch):
    from llmrca.evaluate import default_memory_limit_mb

    class VM:
        total = 64 * 2**30
        available = 8 * 2**30

    monkeypatch.setattr(psutil, "virtual_memory", lambda: VM)
    assert default_memory_limit_mb(2) == pytest.approx(0.75 * 8 * 1024 / 2)
    assert default_memory_limit_mb(64) == 1024.0  # at least 1 GiB each


def test_runtime_is_that_of_rank_alone_not_of_the_memory_watch(monkeypatch):
    """``runtime_s`` is taken just around ``rank()``: the runner's memory watch (here made slow) is not counted."""
    from llmrca.evaluate import sealed

    class SlowWatch(sealed._MemoryWatch):
        def __enter__(self):
            time.sleep(0.3)
            return super().__enter__()

        def __exit__(self, *exc):
            super().__exit__(*exc)
            time.sleep(0.3)

    monkeypatch.setattr(sealed, "_MemoryWatch", SlowWatch)
    runner = sealed.Runner()
    runner.hold("t", sealed.seal(planted_case(seed=0, n_services=5, n_rows=60, inject_row=30).observation))
    t0 = time.perf_counter()
    answer = runner.run(sealed.SealedTask(target="_fake_methods:MeanShift", memory_limit_mb=4096))
    assert time.perf_counter() - t0 >= 0.6  # the watch did run
    assert answer["status"] == "ok" and 0.0 <= answer["runtime_s"] < 0.3
