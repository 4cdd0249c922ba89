import json

import numpy as np
import pandas as pd
import pytest

from llmrca.case import GroundTruth
from llmrca.errors import CaseError, FormatError
from llmrca.io import find_cases, load_case, load_suite, save_case
from llmrca.synthetic import planted_case


def _with_telemetry(case):
    traces = pd.DataFrame({
        "trace_id": ["t1", "t1"], "span_id": ["s1", "s2"], "parent_span_id": [None, "s1"],
        "service": ["gw", "svc-1"], "operation": ["GET /", "llm_request"],
        "start_time_us": [1_700_000_000_000_000, 1_700_000_000_000_100], "duration_us": [500, 300],
        "status": ["OK", "ERROR"], "http_status": [200, None],
        "attributes": ['{"a": 1}', '{"gen_ai.usage.prompt_tokens": 512}'],
    })
    logs = pd.DataFrame({"time": [1_700_000_000.5], "service": ["svc-1"], "level": ["INFO"],
                         "message": ["Finished request 7"], "template": ["Finished request <*>"]})
    return case.with_observation(traces=traces, logs=logs)


def test_round_trip_is_lossless(tmp_path):
    c = _with_telemetry(planted_case(seed=4))
    save_case(c, tmp_path / "c")
    r = load_case(tmp_path / "c")
    pd.testing.assert_frame_equal(r.observation.metrics, c.observation.metrics)
    assert r.observation.metrics["svc-0_cpu"].to_numpy().tobytes() == c.observation.metrics["svc-0_cpu"].to_numpy().tobytes()
    assert r.observation.traces["parent_span_id"].isna().tolist() == [True, False]
    assert r.observation.traces["http_status"].tolist()[0] == 200
    assert pd.isna(r.observation.traces["http_status"].tolist()[1])
    assert r.observation.logs["template"].tolist() == ["Finished request <*>"]
    assert r.truth == c.truth and r.observation.topology == c.observation.topology
    assert r.observation.inject_time == c.observation.inject_time
    assert r.observation.interval == c.observation.interval
    assert (r.id, r.system, r.provenance) == (c.id, c.system, c.provenance)


def test_same_case_same_bytes(tmp_path):
    c = _with_telemetry(planted_case(seed=4))
    save_case(c, tmp_path / "a")
    save_case(c, tmp_path / "b")
    for f in ("case.json", "metrics.parquet", "traces.parquet", "logs.parquet"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()


def test_no_overwrite_by_default(tmp_path):
    c = planted_case(seed=1)
    save_case(c, tmp_path / "c")
    with pytest.raises(FileExistsError):
        save_case(c, tmp_path / "c")
    save_case(c, tmp_path / "c", overwrite=True)


def test_suite_is_lazy_and_sorted(tmp_path):
    for i in (2, 0, 1):
        save_case(planted_case(seed=i), tmp_path / "s" / f"group-{i % 2}" / f"c{i}")
    dirs = find_cases(tmp_path / "s")
    assert [d.name for d in dirs] == ["c0", "c2", "c1"]
    it = load_suite(tmp_path / "s")
    first = next(it)
    assert first.id == "planted-0"
    assert len(list(it)) == 2


def test_invalid_case_on_disk_names_the_folder(tmp_path):
    c = planted_case(seed=1)
    m = c.observation.metrics.copy()
    m["svc-0_cpu"] = np.nan
    save_case(c.with_observation(metrics=m), tmp_path / "bad")
    with pytest.raises(CaseError, match=r"bad.*all-NaN column.*svc-0_cpu"):
        load_case(tmp_path / "bad")
    load_case(tmp_path / "bad", validate=False)


def test_corrupt_files_give_clear_errors(tmp_path):
    save_case(planted_case(seed=1), tmp_path / "c")
    (tmp_path / "c" / "metrics.parquet").write_bytes(b"not parquet")
    with pytest.raises(FormatError, match="metrics.parquet: not a readable Parquet"):
        load_case(tmp_path / "c")
    (tmp_path / "c" / "case.json").write_text("{oops")
    with pytest.raises(FormatError, match="case.json: invalid JSON"):
        load_case(tmp_path / "c")
    with pytest.raises(FormatError, match="not a case folder"):
        load_case(tmp_path)
    with pytest.raises(FormatError, match="no such file"):
        load_case(tmp_path / "nope")


def test_normal_case_round_trip(tmp_path):
    c = planted_case(seed=1)
    c.truth = GroundTruth(service=None)
    save_case(c, tmp_path / "n")
    r = load_case(tmp_path / "n")
    assert r.truth.is_normal and r.truth.fault_type == "normal"
    assert json.loads((tmp_path / "n" / "case.json").read_text())["fault"]["service"] is None
