import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from rcaeval_fixtures import write_re1_suite, write_re2_suite

from llmrca.case import GroundTruth
from llmrca.errors import CaseError, FormatError
from llmrca.io import case_format, load_case, load_suite, rcaeval
from llmrca.io.rcaeval import RcaevalWarning, ns_to_seconds, read_case, seconds_to_ns, write_case
from llmrca.synthetic import planted_case


@pytest.fixture(scope="module")
def re1(tmp_path_factory):
    root = tmp_path_factory.mktemp("re1")
    return root, write_re1_suite(root, n_cases=4, seed=3)


@pytest.fixture(scope="module")
def re2(tmp_path_factory):
    root = tmp_path_factory.mktemp("re2")
    return root, write_re2_suite(root, n_cases=3, seed=5)


def _data_case(folder, header="time,cartservice_cpu,frontend_latency-90", rows=None, inject="1700000002"):
    folder.mkdir(parents=True)
    rows = rows or ["1700000000,1.5,10", "1700000001,1.25,11", "1700000002,9.0,30", "1700000003,8.5,31"]
    (folder / "data.csv").write_text("\n".join([header, *rows]) + "\n")
    if inject is not None:
        (folder / "inject_time.txt").write_text(inject + "\n")
    return folder


def _with_telemetry(case):
    t0 = case.observation.metrics["time"].iloc[0]
    us = int(t0 * 1e6)
    traces = pd.DataFrame({
        "trace_id": ["t1", "t1", "t2"], "span_id": ["s1", "s2", "s3"], "parent_span_id": [None, "s1", None],
        "service": ["svc-0", "svc-1", "svc-0"], "operation": ["GET /", "llm_request", "GET /health"],
        "start_time_us": [us, us + 100, us + 7_654_321], "duration_us": [500, 300, 7],
        "status": ["OK", "ERROR", "OK"], "http_status": [200, None, 404],
        "attributes": ['{"a": 1}', '{"gen_ai.usage.prompt_tokens": 512, "methodName": "Generate"}', None],
    })
    logs = pd.DataFrame({
        "time": [t0 + 0.5, t0 + 123.123456789, t0 + 200.25], "service": ["svc-1", "svc-2", "svc-1"],
        "level": ["INFO", "ERROR", "INFO"],
        "message": ["Finished request 7", 'upstream "x", timed out\nretrying', "Finished request 9"],
        "template": ["Finished request <*>", None, "Finished request <*>"],
    })
    return case.with_observation(traces=traces, logs=logs)


# ------------------------------------------------------------------------------------------------------ reading


def test_re1_case_reads_with_truth_id_system_and_latency_rename(re1):
    root, truths = re1
    fx = truths[0]
    c = read_case(fx.path, root=root)
    assert c.id == fx.case_id and c.system == "RE1-OB"
    assert c.truth == GroundTruth(service=fx.service, fault_type=fx.fault_type, start=float(fx.inject_time))
    assert c.inject_time == fx.inject_time
    raw = pd.read_csv(fx.path / "data.csv")
    assert "frontend_latency" in c.observation.metrics and "frontend_latency-50" in c.observation.metrics
    assert "frontend_latency-90" not in c.observation.metrics
    assert c.observation.metrics["frontend_latency"].tolist() == raw["frontend_latency-90"].tolist()
    assert c.provenance["renamed_columns"]["cartservice_latency-90"] == "cartservice_latency"
    assert c.provenance["rcaeval"]["layout"] == "RE1"
    assert c.observation.interval == 1.0 and not c.observation.has("traces")


def test_re2_case_maps_units_status_and_attributes(re2):
    root, truths = re2
    fx = truths[0]
    c = read_case(fx.path, root=root)
    raw_tr = pd.read_csv(fx.path / "traces.csv", dtype=str, keep_default_na=False)
    tr = c.observation.traces
    assert len(tr) == len(raw_tr)
    assert tr["start_time_us"].tolist() == [int(v) for v in raw_tr["startTime"]]  # µs, unchanged
    assert tr["duration_us"].tolist() == [int(v) for v in raw_tr["duration"]]
    assert tr["operation"].tolist() == raw_tr["operationName"].tolist()
    front = tr[tr["service"] == "frontend"]
    assert front["parent_span_id"].isna().all() and tr[tr["service"] != "frontend"]["parent_span_id"].notna().all()
    assert set(front["http_status"].dropna()) <= {200, 500}
    assert (front["status"] == np.where(front["http_status"] == 500, "ERROR", "OK")).all()
    inner = tr[tr["service"] != "frontend"]
    attrs = [json.loads(a) for a in inner["attributes"]]
    assert all(a["methodName"].startswith("Get") for a in attrs)
    assert [a["rpc.grpc.status_code"] for a in attrs] == [0 if s == "OK" else 2 for s in inner["status"]]
    assert inner["http_status"].isna().all()
    assert (tr["status"] == "ERROR").any()

    raw_logs = pd.read_csv(fx.path / "logs.csv", dtype=str, keep_default_na=False)
    lg = c.observation.logs
    ns = np.array([int(v) for v in raw_logs["timestamp"]], dtype="int64")
    assert lg["time"].tolist() == ns_to_seconds(ns).tolist()  # ns → s
    assert np.abs(lg["time"].to_numpy() - ns / 1e9).max() < 1e-6
    assert lg["service"].tolist() == raw_logs["container_name"].tolist()
    assert lg["template"].tolist() == raw_logs["log_template"].tolist()
    assert lg["cluster_id"].tolist() == raw_logs["cluster_id"].tolist()  # no field of ours: kept as extra column

    assert c.provenance["dropped_columns"] == ["frontend_container-network-drop"]
    rc = c.provenance["rcaeval"]
    assert rc["layout"] == "RE2" and rc["metrics_file"] == "metrics.csv"
    assert set(rc["ignored_files"]) == {"simple_metrics.csv", "logts.csv", "tracets_err.csv", "tracets_lat.csv"}


def test_metrics_csv_is_preferred_and_can_be_overridden(tmp_path):
    d = _data_case(tmp_path / "cartservice_cpu" / "1")
    (d / "data.csv").rename(d / "simple_metrics.csv")
    (d / "metrics.csv").write_text("time,cartservice_container-cpu\n1700000000,1\n1700000001,2\n1700000002,3\n")
    (d / "cluster_info.json").write_text("{}")
    c = read_case(d)
    assert c.observation.metric_columns == ["cartservice_container-cpu"]
    assert c.provenance["rcaeval"]["other_files"] == ["cluster_info.json"]
    assert c.provenance["rcaeval"]["ignored_files"] == {"simple_metrics.csv": "another metrics file; metrics.csv was read"}
    c = read_case(d, metrics_file="simple_metrics.csv")
    assert c.observation.metric_columns == ["cartservice_cpu", "frontend_latency"]
    with pytest.raises(FormatError, match="data.csv"):
        read_case(d, metrics_file="data.csv")


def test_ground_truth_and_ids_follow_the_folders(tmp_path):
    d = _data_case(tmp_path / "data" / "RE2-TT" / "ts-auth-service_delay" / "2")
    c = read_case(d, root=tmp_path / "data")
    assert c.id == "RE2-TT/ts-auth-service_delay/2" and c.system == "RE2-TT"
    assert (c.truth.service, c.truth.fault_type, c.truth.start) == ("ts-auth-service", "delay", 1700000002.0)
    assert read_case(d).id == "ts-auth-service_delay/2"
    assert read_case(d, root=d.parent).id == "2"
    n = read_case(_data_case(tmp_path / "normal" / "1"))
    assert n.truth.is_normal and n.truth.fault_type == "normal" and n.id == "normal/1"
    with pytest.raises(FormatError, match="not inside"):
        read_case(d, root=tmp_path / "elsewhere")


def test_folder_off_convention_gives_unknown_truth_with_a_warning(tmp_path):
    d = _data_case(tmp_path / "my_data_x" / "run-a")
    with pytest.warns(RcaevalWarning, match="ground truth is unknown"):
        c = read_case(d, root=tmp_path)
    assert c.truth == GroundTruth(service=None, fault_type="unknown")
    assert c.id == "my_data_x/run-a" and "unknown" in c.provenance["rcaeval"]["truth"]


def test_io_detects_rcaeval_cases_and_suites(re1, re2):
    for root, truths in (re1, re2):
        assert case_format(truths[0].path) == "rcaeval"
        assert case_format(root) is None
        c = load_case(truths[-1].path, root=root)
        assert c.id == truths[-1].case_id
        cases = list(load_suite(root))
        assert [x.id for x in cases] == [t.case_id for t in truths]
        assert [(x.truth.service, x.truth.fault_type) for x in cases] == [(t.service, t.fault_type) for t in truths]


def test_fixture_plants_a_findable_root_and_is_deterministic(re2, tmp_path):
    root, truths = re2
    for fx, c in zip(truths, load_suite(root)):
        m = c.observation.metrics
        pre, post = m[m["time"] < c.inject_time], m[m["time"] >= c.inject_time]
        q1, med, q3 = pre.quantile(0.25), pre.median(), pre.quantile(0.75)
        z = ((post - med) / (q3 - q1)).abs().max().drop("time")
        assert z.idxmax().split("_")[0] == fx.service
    again = write_re2_suite(tmp_path, n_cases=3, seed=5)
    for a, b in zip(truths, again):
        for f in sorted(p.name for p in a.path.iterdir()):
            assert (a.path / f).read_bytes() == (b.path / f).read_bytes()


# ------------------------------------------------------------------------------------------------------- errors


def test_missing_inject_time_names_the_file(tmp_path):
    d = _data_case(tmp_path / "cartservice_cpu" / "1", inject=None)
    assert case_format(d) == "rcaeval"  # a broken case, reported loudly, not skipped
    with pytest.raises(FormatError, match="inject_time.txt: file missing"):
        load_case(d)


def test_non_numeric_inject_time_names_the_file(tmp_path):
    d = _data_case(tmp_path / "cartservice_cpu" / "1", inject="soon")
    with pytest.raises(FormatError, match=r"inject_time.txt: inject_time 'soon' is not a number"):
        read_case(d)


def test_non_numeric_time_names_file_and_field(tmp_path):
    d = _data_case(tmp_path / "cartservice_cpu" / "1", rows=["1700000000,1,2", "noon,1,2"])
    with pytest.raises(FormatError, match=r"data.csv: field 'time' holds a non-numeric value 'noon' \(row 2\)"):
        read_case(d)


def test_missing_time_column(tmp_path):
    d = _data_case(tmp_path / "cartservice_cpu" / "1", header="timestamp,cartservice_cpu,frontend_latency-90")
    with pytest.raises(FormatError, match="data.csv: no 'time' column"):
        read_case(d)


def test_bad_column_name_names_file_and_column(tmp_path):
    d = _data_case(tmp_path / "cartservice_cpu" / "1", header="time,cartservice_cpu,latency")
    with pytest.raises(CaseError, match=r"data.csv: metrics\['latency'\]: column name breaks") as e:
        read_case(d)
    assert e.value.problems[0].field == "metrics['latency']"


def test_duplicated_and_non_numeric_columns_are_errors(tmp_path):
    d = _data_case(tmp_path / "a_cpu" / "1", header="time,a_cpu,a_cpu")
    with pytest.raises(CaseError, match="duplicated column name.*'a_cpu'"):
        read_case(d)
    d = _data_case(tmp_path / "b_cpu" / "1", rows=["1700000000,1,x", "1700000001,1,2", "1700000002,1,3"])
    with pytest.raises(CaseError, match=r"metrics\['frontend_latency-90'\]: non-numeric values"):
        read_case(d)


def test_malformed_csv_names_the_file(tmp_path):
    d = _data_case(tmp_path / "cartservice_cpu" / "1", rows=["1700000000,1,2", "1700000001,1,2,3,4"])
    with pytest.raises(FormatError, match="data.csv: malformed CSV"):
        read_case(d)
    (d / "data.csv").write_text("")
    with pytest.raises(FormatError, match="data.csv: empty file"):
        read_case(d)


def test_bad_traces_and_logs_name_file_and_field(re2, tmp_path):
    d = _data_case(tmp_path / "cartservice_cpu" / "1")
    (d / "traces.csv").write_text("traceID,spanID,serviceName,startTime\nt,s,cartservice,1\n")
    with pytest.raises(FormatError, match="traces.csv: missing column.*duration"):
        read_case(d)
    (d / "traces.csv").write_text("traceID,spanID,serviceName,startTime,duration,statusCode\nt,s,a,1,2,teapot\n")
    with pytest.raises(FormatError, match="traces.csv: field 'statusCode' has an unknown value 'teapot'"):
        read_case(d)
    (d / "traces.csv").write_text("traceID,spanID,serviceName,startTime,duration\nt,s,a,1,\n")
    with pytest.raises(FormatError, match="traces.csv: field 'duration' row 1 is missing"):
        read_case(d)
    (d / "traces.csv").unlink()
    (d / "logs.csv").write_text("time,container_name,message\n00:01,a,hello\n")
    with pytest.raises(FormatError, match="logs.csv: no 'timestamp' column"):
        read_case(d)


def test_unsorted_time_is_reported_by_validation_with_the_folder(tmp_path):
    d = _data_case(tmp_path / "cartservice_cpu" / "1", rows=["1700000001,1,2", "1700000000,1,2", "1700000002,1,2"])
    with pytest.raises(CaseError, match=r"cartservice_cpu/1: metrics.time: not increasing"):
        read_case(d)
    assert read_case(d, validate=False).problems()


def test_all_nan_column_is_dropped_and_recorded(tmp_path):
    d = _data_case(tmp_path / "cartservice_cpu" / "1", header="time,cartservice_cpu,frontend_latency-90,x_net",
                   rows=["1700000000,1,2,", "1700000001,1,3,", "1700000002,2,2,"])
    c = read_case(d)
    assert "x_net" not in c.observation.metrics
    assert c.provenance["dropped_columns"] == ["x_net"]


def test_derived_series_without_raw_files_are_merged_and_announced(tmp_path):
    d = _data_case(tmp_path / "cartservice_cpu" / "1")
    (d / "data.csv").rename(d / "simple_metrics.csv")
    (d / "logts.csv").write_text("time,cartservice_3,frontend_1\n1699999995,4,0\n1700000010,6,1\n")
    (d / "tracets_lat.csv").write_text("time,cartservice_GetCart\n1699999995,12.5\n1700000010,\n")
    with pytest.warns(RcaevalWarning, match="merged into the metrics"):
        c = read_case(d)
    m = c.observation.metrics
    assert {"cartservice_logts-3", "frontend_logts-1", "cartservice_tracets-lat-GetCart"} <= set(m.columns)
    assert m["time"].tolist() == [1699999995, 1700000000, 1700000001, 1700000002, 1700000003, 1700000010]
    assert m.set_index("time").loc[1700000010, "cartservice_logts-3"] == 6
    assert c.provenance["rcaeval"]["merged_derived"] == {"logts.csv": 2, "tracets_lat.csv": 1}


# ------------------------------------------------------------------------------------------------------ writing


def test_round_trip_write_read_is_lossless(tmp_path):
    c = _with_telemetry(planted_case(seed=4))
    c = c.with_observation(inject_time=c.inject_time + 0.25)  # not a whole second: RCAEval gets the floor
    out = write_case(c, tmp_path / "suite")
    assert out == tmp_path / "suite" / f"{c.truth.service}_cpu" / "4"
    assert (out / "inject_time.txt").read_text() == f"{math.floor(c.inject_time)}\n"
    r = read_case(out, root=tmp_path / "suite")
    ro, co = r.observation, c.observation
    assert ro.metrics.to_numpy().tobytes() == co.metrics.to_numpy().tobytes()
    pd.testing.assert_frame_equal(ro.metrics, co.metrics)
    pd.testing.assert_frame_equal(ro.traces, co.traces.astype(ro.traces.dtypes.to_dict()))
    pd.testing.assert_frame_equal(ro.logs, co.logs.astype(ro.logs.dtypes.to_dict()))
    assert ro.logs["time"].tolist() == co.logs["time"].tolist()  # exact through integer nanoseconds
    assert (ro.inject_time, ro.interval, ro.topology) == (co.inject_time, co.interval, co.topology)
    assert (r.truth, r.system) == (c.truth, c.system)
    assert r.id == f"{c.truth.service}_cpu/4" and r.provenance["rcaeval"]["original_id"] == c.id
    assert {k: v for k, v in r.provenance.items() if k != "rcaeval"} == c.provenance


def test_rcaeval_case_survives_read_write_read(re2, tmp_path):
    root, truths = re2
    a = read_case(truths[1].path, root=root)
    out = write_case(a, tmp_path)
    assert out.relative_to(tmp_path).as_posix() == truths[1].case_id.split("/", 1)[1]
    b = read_case(out)
    for f in ("metrics", "traces", "logs"):
        pd.testing.assert_frame_equal(getattr(b.observation, f), getattr(a.observation, f))
    assert b.truth == a.truth and b.inject_time == a.inject_time and b.system == "RE2-OB"
    assert b.provenance["dropped_columns"] == a.provenance["dropped_columns"]
    assert b.provenance["rcaeval"]["source"]["metrics_file"] == "metrics.csv"
    # what RCAEval's own files said comes back in the same columns
    raw_a = pd.read_csv(truths[1].path / "traces.csv", dtype=str, keep_default_na=False)
    raw_b = pd.read_csv(out / "traces.csv", dtype=str, keep_default_na=False)
    for col in ("traceID", "spanID", "parentSpanID", "serviceName", "methodName", "operationName", "startTime",
                "startTimeMillis", "duration"):
        assert raw_b[col].tolist() == raw_a[col].tolist(), col
    assert [float(v) for v in raw_b["statusCode"]] == [float(v) for v in raw_a["statusCode"]]


def test_written_folder_is_what_rcaeval_reads(tmp_path):
    c = _with_telemetry(planted_case(seed=2))
    out = write_case(c, tmp_path)
    # RCAEval's runner: service and fault from the grandparent folder, an int inject time, a `time` column.
    service, fault = out.parent.name.split("_")
    assert (service, fault) == (c.truth.service, c.truth.fault_type)
    inject = int((out / "inject_time.txt").read_text().splitlines()[0].strip())
    data = pd.read_csv(out / "data.csv")
    assert len(data[data["time"] < inject]) == 120 and len(data[data["time"] >= inject]) == 120
    for f in ("metrics.csv", "simple_metrics.csv"):
        assert (out / f).read_bytes() == (out / "data.csv").read_bytes()
    # multi-source methods: derived series with a `time` column; trace methods: the Jaeger-style columns
    logts = pd.read_csv(out / "logts.csv")
    assert logts.columns[0] == "time" and logts.drop(columns="time").to_numpy().sum() == len(c.observation.logs)
    assert (logts["time"] % 15 == 0).all()
    err = pd.read_csv(out / "tracets_err.csv")
    assert err.drop(columns="time").to_numpy().sum() == 1 and "svc-1_Generate" in err
    lat = pd.read_csv(out / "tracets_lat.csv")
    assert lat["svc-0_GET /"].dropna().tolist() == [500.0] and lat["svc-0_GET /health"].dropna().tolist() == [7.0]
    spans = pd.read_csv(out / "traces.csv")
    op = spans["methodName"].fillna(spans["operationName"])
    assert (spans["serviceName"] + "_" + op).tolist() == ["svc-0_GET /", "svc-1_Generate", "svc-0_GET /health"]
    assert spans["statusCode"].tolist() == [200, 2, 404]
    assert (spans["startTimeMillis"] * 1000 <= spans["startTime"]).all()
    logs = pd.read_csv(out / "logs.csv")
    assert logs["timestamp"].dtype == "int64" and logs["cluster_id"].tolist() == [1, 2, 1]


def test_write_is_deterministic_refuses_to_overwrite_and_numbers_repetitions(tmp_path):
    c = _with_telemetry(planted_case(seed=1))
    a = write_case(c, tmp_path / "a")
    b = write_case(c, tmp_path / "b")
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    for p in a.iterdir():
        assert p.read_bytes() == (b / p.name).read_bytes(), p.name
    with pytest.raises(FileExistsError):
        write_case(c, tmp_path / "a")
    assert write_case(c, tmp_path / "a", overwrite=True) == a
    assert sorted(p.name for p in a.parent.iterdir()) == ["1"]  # no temporary folder left behind
    unnamed = planted_case(seed=1)
    unnamed.id = "no-number"
    assert write_case(unnamed, tmp_path / "a").name == "2"
    assert write_case(unnamed, tmp_path / "a").name == "3"


def test_fault_type_is_made_folder_safe_and_restored_from_the_sidecar(tmp_path):
    c = planted_case(seed=0, fault_type="kv_cache pressure")
    out = write_case(c, tmp_path)
    assert out.parent.name == f"{c.truth.service}_kv-cache-pressure"
    assert read_case(out).truth.fault_type == "kv_cache pressure"
    (out / "llmrca.json").unlink()  # RCAEval's files alone carry the folder name only
    r = read_case(out)
    assert r.truth.fault_type == "kv-cache-pressure" and r.inject_time == c.inject_time
    assert r.observation.topology.is_empty


def test_normal_case_goes_to_normal_folder_and_needs_an_inject_time(tmp_path):
    c = planted_case(seed=0)
    c.truth = GroundTruth(service=None)
    out = write_case(c, tmp_path)
    assert out == tmp_path / "normal" / "0"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_case(out).truth.is_normal
    with pytest.raises(CaseError, match="needs an injection time"):
        write_case(c.with_observation(inject_time=None), tmp_path / "x")


def test_seconds_and_nanoseconds_convert_exactly():
    rng = np.random.default_rng(0)
    t = 1.7e9 + rng.random(100_000) * 1e6
    assert (ns_to_seconds(seconds_to_ns(t)) == t).all()
    ns = np.array([1_700_000_000_123_456_789, 1_705_340_542_000_000_001])
    assert np.abs(ns_to_seconds(ns) - np.array([1_700_000_000.123456789, 1_705_340_542.000000001])).max() == 0


def test_is_rcaeval_dir(tmp_path):
    assert not rcaeval.is_rcaeval_dir(tmp_path)
    (tmp_path / "simple_metrics.csv").write_text("time,a_b\n1,2\n")
    assert rcaeval.is_rcaeval_dir(tmp_path)
    assert not rcaeval.is_rcaeval_dir(tmp_path / "simple_metrics.csv")


def test_rcaeval_files_win_over_a_sidecar_that_disagrees(tmp_path):
    c = planted_case(seed=0)
    out = write_case(c, tmp_path)
    (out / "inject_time.txt").write_text(f"{int(c.inject_time) + 30}\n")
    with pytest.warns(RcaevalWarning, match="the file wins"):
        r = read_case(out)
    assert r.inject_time == c.inject_time + 30 and "sidecar_conflict" in r.provenance["rcaeval"]
    (out / "llmrca.json").write_text("{not json")
    with pytest.raises(FormatError, match="llmrca.json: invalid JSON"):
        read_case(out)
