import json
import re
import time

import numpy as np
import pandas as pd
import pytest
from sim_record_fixture import START, make_record

from llmrca.case.schema import LOG_COLUMNS, coerce
from llmrca.case.validation import validate_logs
from llmrca.errors import CaseError
from llmrca.sim.logs import logs_from_record
from llmrca.sim.record import events_frame
from llmrca.sim.traces import ENGINE_OPERATION, spans_from_record


def _regex(template: str) -> re.Pattern:
    return re.compile(".+?".join(re.escape(part) for part in template.split("<*>")) + r"\Z", re.DOTALL)


def _with_events(rec, rows):
    rec.events = events_frame(rows)
    return rec


def test_frame_follows_the_log_schema_and_is_sorted():
    logs = logs_from_record(make_record())
    assert list(logs.columns) == list(LOG_COLUMNS)
    for c, t in LOG_COLUMNS.items():
        assert logs[c].dtype == pd.Series(dtype=t).dtype, c
    coerce(logs, LOG_COLUMNS, where="logs")
    assert validate_logs(logs) == []
    assert logs["time"].is_monotonic_increasing
    assert set(logs["level"]) <= {"INFO", "WARNING", "ERROR"}


def test_every_line_fits_its_template_and_templates_mask_variables():
    logs = logs_from_record(make_record(n=60))
    for msg, tmpl in zip(logs["message"], logs["template"]):
        assert _regex(tmpl).match(msg), (msg, tmpl)
    templates = set(logs["template"])
    assert not any(re.search(r"chatcmpl-[0-9a-f]{8}|\d{2}:\d{2}:\d{2}|10\.42\.", t) for t in templates)
    access = logs[logs["message"].str.contains('"POST /v1/chat/completions HTTP/1.1" 200')]
    assert access["template"].nunique() == 1 and access["message"].nunique() > 10
    # Far fewer templates than lines: lines of one kind share one template.
    assert len(templates) < 40 < len(logs)


def test_request_lines_name_the_request_as_its_span_does():
    rec = make_record(n=20, failures=False)
    logs = logs_from_record(rec)
    spans = spans_from_record(rec)
    eng = spans[spans["operation"] == ENGINE_OPERATION]
    ids = [json.loads(a)["gen_ai.request.id"] for a in eng["attributes"]]
    for vid, replica in zip(ids, rec.requests["replica"]):
        mine = logs[logs["message"].str.contains(vid, regex=False)]
        assert mine["service"].eq(replica).all()
        kinds = [k for k in ("Received request", "Added request", "Generated response")
                 if mine["message"].str.contains(k).any()]
        assert kinds == ["Received request", "Added request", "Generated response"]
    gw = logs[logs["service"] == "nginx-proxy"]
    assert len(gw) == 20 and gw["level"].eq("INFO").all()
    assert (logs["service"] == "ray-head").sum() >= 20  # one Serve proxy access line per request (+ its replica)


def test_log_times_carry_a_little_jitter_after_the_event():
    rec = make_record(n=30, failures=False, events=False)
    logs = logs_from_record(rec)
    gw = logs[logs["service"] == "nginx-proxy"]["time"].to_numpy()
    end = np.sort(rec.requests["t_gateway_end"].to_numpy())
    lag = np.sort(gw) - end
    assert (lag > 0).all() and (lag < 0.02).all() and len(set(np.round(lag, 7))) > 1
    # The printed second is the line's own time (nginx prints $time_local to the second).
    first = logs[logs["service"] == "nginx-proxy"].iloc[0]
    printed = re.search(r"\[(\S+) \+0000\]", first["message"]).group(1)
    assert printed == time.strftime("%d/%b/%Y:%H:%M:%S", time.gmtime(int(first["time"])))


def test_engine_stats_lines_follow_vllm_and_go_quiet_when_idle():
    rec = _with_events(make_record(n=8, failures=False), [
        (START + 10.0, "ray-replicas-0", "engine_stats", {"prompt_tps": 512.0, "gen_tps": 255.75, "running": 4,
                                                          "waiting": 2, "swapped": 0, "kv_usage_perc": 0.4567,
                                                          "prefix_cache_hit_rate": 0.25}),
        (START + 20.0, "ray-replicas-0", "engine_stats", {"prompt_tps": 0.0, "gen_tps": 0.0, "running": 0,
                                                          "waiting": 0, "swapped": 0, "kv_usage_perc": 0.0,
                                                          "prefix_cache_hit_rate": 0.25}),
        (START + 30.0, "ray-replicas-0", "engine_stats", {"prompt_tps": 0.0, "gen_tps": 0.0, "running": 0,
                                                          "waiting": 0, "swapped": 0, "kv_usage_perc": 0.0,
                                                          "prefix_cache_hit_rate": 0.25}),
    ])
    logs = logs_from_record(rec)
    stats = logs[logs["message"].str.contains("Avg prompt throughput")]
    assert len(stats) == 2  # the second idle interval is logged at DEBUG only
    # vLLM V1's one-line record: engine index, throughputs, queue, KV usage and prefix-cache hit rate
    assert stats["message"].iloc[0].endswith(
        "Engine 000: Avg prompt throughput: 512.0 tokens/s, Avg generation throughput: 255.8 tokens/s, Running: 4 "
        "reqs, Waiting: 2 reqs, GPU KV cache usage: 45.7%, Prefix cache hit rate: 25.0%")
    assert re.match(r"INFO \d\d-\d\d \d\d:\d\d:\d\d \[loggers\.py:\d+\] ", stats["message"].iloc[0])
    assert stats["template"].nunique() == 1


def test_preemptions_log_no_line_of_their_own_only_a_count_in_the_stats_line():
    # vLLM V1 (0.32.0): no warning per preemption; the periodic stats line adds "Preemptions: N" for its interval.
    rows = [(START + 5 + 0.01 * j, "ray-replicas-1", "preemption", {"request_id": 1, "num_preempted": 1})
            for j in range(120)]
    base = logs_from_record(_with_events(make_record(n=8, failures=False), []))
    logs = logs_from_record(_with_events(make_record(n=8, failures=False), rows))
    assert list(logs["template"]) == list(base["template"])
    assert not logs["message"].str.contains("preempted", case=False).any()
    stats = {"prompt_tps": 10.0, "gen_tps": 5.0, "running": 3, "waiting": 4, "kv_usage_perc": 0.99,
             "prefix_cache_hit_rate": 0.0}
    logs = logs_from_record(_with_events(make_record(n=8, failures=False), [
        (START + 10, "ray-replicas-1", "engine_stats", {**stats, "preemptions": 27}),
        (START + 20, "ray-replicas-1", "engine_stats", stats)]))
    lines = logs[logs["message"].str.contains("Engine 000")]["message"].tolist()
    assert lines[0].endswith("Running: 3 reqs, Waiting: 4 reqs, Preemptions: 27, GPU KV cache usage: 99.0%, "
                             "Prefix cache hit rate: 0.0%")
    assert "Preemptions" not in lines[1]


def test_faults_the_real_system_does_not_log_add_no_lines():
    rec = make_record(n=16, failures=False, events=False)
    base = logs_from_record(rec)
    rows = []
    for i, (kind, params) in enumerate([("cpu", {"workers": 16}), ("memory", {"size_gb": 8}),
                                        ("network", {"latency_ms": 1000}), ("gpu", {"power_limit_w": 150})]):
        rows.append((START + 2 + i, "ray-replicas-0", "fault_start", {"type": kind, "params": params}))
        rows.append((START + 20 + i, "ray-replicas-0", "fault_end", {"type": kind, "params": params}))
    faulty = logs_from_record(_with_events(make_record(n=16, failures=False, events=False), rows))
    assert len(faulty) == len(base)
    assert list(faulty["template"]) == list(base["template"])


def test_a_stream_cut_by_the_read_timeout_is_200_at_nginx_with_the_bytes_sent_so_far():
    # Measured on the live testbed: a streamed response's 200 header goes out before its first token, so when
    # proxy_read_timeout fires nginx logs 200 (upstream 200) with the bytes it relayed and "while reading upstream".
    from llmrca.testbed.nginx import parse_access_line

    rec = make_record(n=12, cut=True)
    logs = logs_from_record(rec)
    gw = logs[logs["service"] == "nginx-proxy"]["message"]
    access = {r["trace_id"]: r for r in map(parse_access_line, gw) if r is not None}
    tid = rec.requests["trace_id"]
    mid, queued, timeout, full = (access[tid.iloc[i]] for i in (9, 11, 3, 0))
    assert (mid["status"], mid["upstream_status"], queued["status"], queued["upstream_status"]) == (200, "200",
                                                                                                   200, "200")
    assert timeout["status"] == 504 and timeout["upstream_status"] == "504"
    assert queued["bytes"] == 0  # the header only: vLLM sends its first chunk with the first token
    assert 40 * 100 < mid["bytes"] < full["bytes"]  # 40 tokens' chunks, no stop chunk, no [DONE]
    assert mid["request_time"] == pytest.approx(rec.requests["t_gateway_end"].iloc[9] - rec.requests[
        "t_gateway_start"].iloc[9], abs=2e-3)
    err = gw[gw.str.contains(r"\[error\]")]
    assert err.str.contains(r"upstream timed out \(110: Connection timed out\) while reading upstream,").sum() == 2
    assert err.str.contains("upstream timed out .* while reading response header from upstream,").sum() == 1
    head = logs[logs["service"] == "ray-head"]["message"]
    assert head.str.contains("disconnected, cancelling request.").sum() == 3  # nginx hung up on 3, 9 and 11
    assert head.str.contains(r"-- POST / 499 ").sum() == 3
    assert logs["message"].str.contains("Aborted request chatcmpl-").sum() == 3  # the client left: 3, 9, 11


def test_failures_log_where_the_real_software_does():
    logs = logs_from_record(make_record(n=12))
    gw_err = logs[(logs["service"] == "nginx-proxy") & (logs["level"] == "ERROR")]["message"]
    assert gw_err.str.contains(r"upstream timed out \(110: Connection timed out\) while reading response header").any()
    assert gw_err.str.contains(r"connect\(\) failed \(111: Connection refused\) while connecting to upstream").any()
    head = logs[logs["service"] == "ray-head"]["message"]
    assert head.str.contains("disconnected, cancelling request.").sum() == 1
    assert head.str.contains(r"-- POST / 499 ").sum() == 1
    failed = logs[logs["message"].str.endswith("-- Request failed.")]
    assert len(failed) == 1 and failed["level"].iloc[0] == "ERROR" and failed["service"].iloc[0] == "ray-replicas-0"
    assert logs["message"].str.contains("Aborted request chatcmpl-").sum() == 1


def test_engine_death_health_check_and_restart():
    logs = logs_from_record(make_record(n=12))
    rep = logs[logs["service"] == "ray-replicas-1"]
    dead = rep[rep["level"] == "ERROR"]["message"].tolist()
    assert any("EngineCore encountered a fatal error." in m for m in dead)
    assert any("EngineDeadError: EngineCore encountered an issue." in m for m in dead)
    assert any(m.startswith("RuntimeError: CUDA error:") for m in dead)
    head = logs[logs["service"] == "ray-head"]["message"]
    failed = head[head.str.contains("failed health check, stopping it.")]
    started = head[head.str.contains("started successfully on node")]
    assert len(failed) == 1 and len(started) == 1
    old = re.search(r"Replica\(id='(\w+)'", failed.iloc[0]).group(1)
    new = re.search(r"Replica\(id='(\w+)'", started.iloc[0]).group(1)
    assert old != new
    xid = logs[logs["message"].str.contains("NVRM: Xid")]
    assert xid["service"].tolist() == ["node-gpu-2"] and ": 79, " in xid["message"].iloc[0]


def test_new_replica_id_after_restart_in_access_lines():
    rec = _with_events(make_record(n=40, failures=False), [
        (START + 2.0, "ray-replicas-1", "replica_health", {"ok": False}),
        (START + 4.0, "ray-replicas-1", "replica_health", {"ok": True, "load_s": 1.5}),
    ])
    logs = logs_from_record(rec)
    acc = logs[(logs["service"] == "ray-replicas-1") & logs["message"].str.contains("default_VLLMDeployment")]
    tags = acc["message"].str.extract(r"default_VLLMDeployment (\w+) ")[0]
    before = tags[acc["time"] < START + 4.0 + 5.3]  # requests that arrived before the restart end ~5.3 s later
    assert tags.nunique() == 2 and before.nunique() == 1


def test_oom_kill_is_logged_by_the_node_kernel():
    logs = logs_from_record(make_record(n=12))
    node = logs[logs["service"] == "node-gpu-1"]
    assert len(node) == 2
    assert node["message"].iloc[1].split("kernel: ")[1].startswith(
        "Memory cgroup out of memory: Killed process ") and "(memStress)" in node["message"].iloc[1]
    assert node["level"].tolist() == ["WARNING", "ERROR"]


def test_same_seed_same_lines():
    a = logs_from_record(make_record(seed=5))
    pd.testing.assert_frame_equal(a, logs_from_record(make_record(seed=5)))
    b = logs_from_record(make_record(seed=6))
    assert not a["message"].equals(b["message"])


def test_events_need_their_columns():
    rec = make_record(n=4, failures=False)
    rec.events = rec.events.drop(columns=["fields"])
    with pytest.raises(CaseError, match="fields"):
        logs_from_record(rec)


@pytest.mark.parametrize("style", ["vllm", "python", "nginx_access", "nginx_error", "syslog"])
def test_bulk_clock_prints_every_second_as_the_program_does(style):
    # The bulk clock prints a second from its minute's text; across a new day, month, year and a leap day, at
    # random times and with seconds far apart (the sorting path), it must print what clock_text prints.
    from llmrca.deploy.telemetry import clock_text
    from llmrca.sim.logs import _Clock

    rng = np.random.default_rng(3)
    edges = [1_704_067_140.0, 1_709_164_740.0, 1_709_251_140.0, 1_735_689_540.0]  # 2024 new year, 28/29 Feb, 2025
    times = np.concatenate([e + np.arange(0.0, 130.0, 0.37) for e in edges]
                           + [rng.uniform(0.0, 2e9, 500), rng.uniform(START, START + 400.0, 700)])
    pieces = [e + np.arange(0.0, 130.0, 0.37) for e in edges]  # each within two hours: the minute tables
    for t in (times, np.sort(times)[:900], times[:1], *pieces, rng.permutation(pieces[1])):
        got = _Clock().python(t) if style == "python" else _Clock()(t, style)
        want = [clock_text(x, style if style != "python" else "python") for x in t.tolist()]
        assert got == want
