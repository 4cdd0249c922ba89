import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
from _fake_methods import MeanShift

from llmrca.errors import CaseError, LlmrcaError, UnknownNameError
from llmrca.evaluate import COLUMNS, ResultStore, evaluate, load_results
from llmrca.evaluate.store import JOURNAL, read_journal
from llmrca.io import load_case, save_case
from llmrca.synthetic import planted_case

TESTS = Path(__file__).parent


pytestmark = pytest.mark.usefixtures("fakes")  # the test-only methods (tests/conftest.py)


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("cases")
    return [str(save_case(planted_case(seed=s, fault_type=ft), root / f"c{s}"))
            for s, ft in [(1, "cpu"), (2, "memory"), (3, "cpu")]]


def test_ok_rows_match_the_ranking_computed_in_process(cases, tmp_path):
    out = tmp_path / "run"
    df = evaluate(cases, ["fake-mutate", "fake-shift", "fake-short", "fake-touch"], out, jobs=2, progress=True)
    assert list(df.columns) == list(COLUMNS)
    assert len(df) == 12 and set(df["status"]) == {"ok"}
    if os.path.exists("/proc/self/clear_refs"):  # peak RSS growth is measured (Linux)
        peaks = df.loc[df["method"] == "fake-touch", "peak_mem_mb"]
        assert peaks.between(60, 100).all(), peaks.tolist()
    for path in cases:
        case = load_case(path)
        row = df[(df["case_id"] == case.id) & (df["method"] == "fake-shift")].iloc[0]
        ranking = MeanShift().rank(case.observation)
        # the vandal before it on the same cached case did not change what fake-shift saw
        assert row["rank"] == ranking.rank_of(case.truth.service)
        assert row["rank_fine"] == ranking.rank_of(case.truth.indicator, level="fine")
        assert bool(row["fine_level"]) is True
        assert json.loads(row["top5"]) == ranking.services()[:5]
        assert (row["fault_type"], row["root_cause"], row["indicator"]) == (
            case.truth.fault_type, case.truth.service, case.truth.indicator)
        assert row["n_candidates"] == 8 and row["family"] == "metric" and row["seed"] == 0
        assert row["runtime_s"] > 0 and row["peak_mem_mb"] >= 0
        short = df[(df["case_id"] == case.id) & (df["method"] == "fake-short")].iloc[0]
        expected = 1 if case.truth.service == "svc-7" else None
        assert (None if pd.isna(short["rank"]) else short["rank"]) == expected
        assert bool(short["fine_level"]) is False and pd.isna(short["rank_fine"])
    # the store holds the same rows, as journal and as parquet
    for source in (out, out / "results.parquet"):
        stored = load_results(source).sort_values(["case_id", "method"]).reset_index(drop=True)
        pd.testing.assert_frame_equal(stored, df.sort_values(["case_id", "method"]).reset_index(drop=True))
    info = json.loads((out / "run.json").read_text())
    assert info["methods"] == ["fake-mutate", "fake-shift", "fake-short", "fake-touch"]
    assert info["status"] == "finished" and info["counts"]["ok"] == 12
    assert info["tasks"] == {"grid": 12, "resumed": 0, "replaced": 0, "to_run": 12}
    assert info["llmrca_version"] and info["finished"] and info["params"]["jobs"] == 2


def test_failures_become_rows_and_the_grid_goes_on(cases, tmp_path):
    methods = ["fake-raise", "fake-sleep", "fake-hog", "fake-crash", "fake-shift"]
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "case.json").write_text("{not json")
    t0 = time.monotonic()
    df = evaluate([*cases[:2], broken], methods, tmp_path / "run", jobs=2, timeout=1.5, memory_limit_mb=256,
                  progress=False)
    assert time.monotonic() - t0 < 30
    assert len(df) == 15
    unloadable = df[df["case_id"] == "broken"]
    assert len(unloadable) == 5
    assert unloadable["status"].str.startswith("error: case not loaded: FormatError: ").all()
    assert "case.json" in unloadable["status"].iloc[0]
    df = df[df["case_id"] != "broken"]
    for case_id in df["case_id"].unique():
        status = df[df["case_id"] == case_id].set_index("method")["status"]
        assert status["fake-raise"] == "error: ValueError: boom on purpose"  # one line
        assert status["fake-sleep"] == "timeout"
        assert status["fake-hog"].startswith("error: MemoryError (memory limit 256 MB)")
        assert status["fake-crash"] == "error: worker died (signal SIGABRT)"
        assert status["fake-shift"] == "ok"  # ran after all of them, in a fresh worker
    failed = df[df["status"] != "ok"]
    assert failed["rank"].isna().all() and (failed["fault_type"].notna()).all()
    assert (df.loc[df["method"] == "fake-sleep", "runtime_s"] >= 1.5).all()
    log = (tmp_path / "run" / "errors.log").read_text()
    assert "boom on" in log and "MemoryError" in log


def test_resume_after_sigkill_computes_only_missing_rows(tmp_path):
    root = tmp_path / "cases"
    paths = [str(save_case(planted_case(seed=s, n_services=4, n_rows=60, inject_row=30), root / f"c{s}"))
             for s in range(6)]
    out, marker = tmp_path / "run", tmp_path / "marker.txt"
    # Both runs use the same parameters: a row is reused only when its content hash (parameters included) matches.
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(TESTS)!r})
        from _fake_methods import register_fakes
        register_fakes()
        from llmrca.evaluate import evaluate
        evaluate({paths!r}, ["fake-count"], {str(out)!r}, jobs=1, progress=False,
                 method_params={{"fake-count": {{"marker": {str(marker)!r}, "delay": 0.3}}}})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    journal = out / JOURNAL
    deadline = time.monotonic() + 60
    while not (journal.exists() and len(journal.read_bytes().splitlines()) >= 2):
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _assert_no_worker_outlives(proc.pid)
    before, _ = read_journal(journal)
    assert 2 <= len(before) < 6
    with open(journal, "ab") as f:  # a write cut short by the kill
        f.write(b'{"method":"fake-count","case_id":"planted-')

    runs_before = len(marker.read_text().splitlines())
    df = evaluate(paths, ["fake-count"], out, jobs=1, progress=False,
                  method_params={"fake-count": {"marker": str(marker), "delay": 0.3}})
    assert len(marker.read_text().splitlines()) - runs_before == 6 - len(before)
    assert len(df) == 6 and df["case_id"].is_unique and set(df["status"]) == {"ok"}
    after, _ = read_journal(journal)
    assert len(after) == 6 and journal.read_bytes().endswith(b"\n")
    assert after[: len(before)] == before  # rows already there are untouched
    info = json.loads((out / "run.json").read_text())
    assert info["tasks"] == {"grid": 6, "resumed": len(before), "replaced": 0, "to_run": 6 - len(before)}
    assert info["previous"][0]["status"] == "running"  # the killed run never finished


def _assert_no_worker_outlives(parent_pid: int) -> None:
    deadline = time.monotonic() + 10
    while True:
        left = []
        for p in psutil.process_iter(["cmdline"]):
            cmd = p.info["cmdline"] or []
            if any("llmrca.evaluate.worker" in c for c in cmd) and cmd and cmd[-1] == str(parent_pid):
                left.append(p)
        if not left:
            return
        assert time.monotonic() < deadline, f"orphaned workers: {left}"
        time.sleep(0.1)


def test_failed_rows_are_kept_on_resume_unless_retry_failed(cases, tmp_path):
    evaluate(cases[:1], ["fake-raise"], tmp_path, progress=False)
    first = json.loads((tmp_path / "run.json").read_text())["tasks"]
    assert first["to_run"] == 1
    evaluate(cases[:1], ["fake-raise"], tmp_path, progress=False)
    assert json.loads((tmp_path / "run.json").read_text())["tasks"]["to_run"] == 0
    df = evaluate(cases[:1], ["fake-raise"], tmp_path, progress=False, retry_failed=True)
    assert json.loads((tmp_path / "run.json").read_text())["tasks"]["to_run"] == 1
    assert len(df) == 1 and len(load_results(tmp_path)) == 1  # the new row replaced the old one
    assert len(read_journal(tmp_path / JOURNAL)[0]) == 2


def test_store_drops_a_torn_line_and_rebuilds_from_parquet(tmp_path):
    row = {"method": "m", "case_id": "c1", "seed": 0, "status": "ok", "rank": 2, "runtime_s": float("nan")}
    with ResultStore(tmp_path) as store:
        store.append(row)
        store.append({**row, "case_id": "c2"})
    journal = tmp_path / JOURNAL
    size = journal.stat().st_size
    with open(journal, "ab") as f:
        f.write(b'{"method":"m","case_id":"c3","se')
    assert len(load_results(tmp_path)) == 2  # a reader skips the torn tail
    with ResultStore(tmp_path) as store:
        assert len(store) == 2
        assert journal.stat().st_size == size  # the writer cut it off before appending
        store.append({**row, "case_id": "c3"})
    journal.unlink()
    with ResultStore(tmp_path) as store:  # only the parquet left: it seeds a new journal
        assert [r["case_id"] for r in store.rows()] == ["c1", "c2", "c3"]
    assert len(read_journal(journal)[0]) == 3
    frame = load_results(tmp_path)
    assert frame["rank"].tolist() == [2, 2, 2] and frame["runtime_s"].isna().all()


def test_one_writer_per_results_folder(tmp_path):
    with ResultStore(tmp_path), pytest.raises(LlmrcaError, match="another evaluation"):
        ResultStore(tmp_path)
    ResultStore(tmp_path).close()


def test_bad_grid_inputs_fail_before_any_work(cases, tmp_path):
    with pytest.raises(UnknownNameError, match="no-such-method"):
        evaluate(cases, ["no-such-method"], tmp_path / "a", progress=False)
    with pytest.raises(UnknownNameError, match="method_params"):
        evaluate(cases, ["fake-shift"], tmp_path / "b", method_params={"fake-raise": {}}, progress=False)
    twin = save_case(planted_case(seed=1), tmp_path / "twin")  # same id as cases[0]
    with pytest.raises(CaseError, match="planted-1"):
        evaluate([cases[0], str(twin)], ["fake-shift"], tmp_path / "c", progress=False)
    assert not os.path.exists(tmp_path / "a" / JOURNAL)
