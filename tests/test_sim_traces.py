import json

import numpy as np
import pandas as pd
import pytest
from sim_record_fixture import REPLICAS, make_record

from llmrca.case.schema import TRACE_COLUMNS, coerce
from llmrca.case.validation import validate_traces
from llmrca.errors import CaseError
from llmrca.sim.traces import (
    CLIENT_OPERATION,
    ENGINE_OPERATION,
    GATEWAY_OPERATION,
    PROXY_OPERATION,
    spans_from_record,
)

GEN_AI_KEYS = (
    "gen_ai.usage.prompt_tokens", "gen_ai.usage.completion_tokens", "gen_ai.request.id", "gen_ai.request.max_tokens",
    "gen_ai.response.model", "gen_ai.latency.time_in_queue", "gen_ai.latency.time_to_first_token",
    "gen_ai.latency.e2e", "gen_ai.latency.time_in_model_prefill", "gen_ai.latency.time_in_model_decode",
)


def _trace(spans: pd.DataFrame, record, i: int) -> pd.DataFrame:
    return spans[spans["trace_id"] == record.requests["trace_id"].iloc[i]].reset_index(drop=True)


def test_frame_follows_the_trace_schema():
    spans = spans_from_record(make_record())
    assert list(spans.columns) == list(TRACE_COLUMNS)
    for c, t in TRACE_COLUMNS.items():
        assert spans[c].dtype == pd.Series(dtype=t).dtype, c
    coerce(spans, TRACE_COLUMNS, where="spans")
    assert validate_traces(spans) == []


def test_successful_request_is_a_chain_of_four_spans():
    rec = make_record(n=12, failures=False)
    spans = spans_from_record(rec)
    assert len(spans) == 4 * 12
    for i in range(12):
        tr = _trace(spans, rec, i)
        assert tr["operation"].tolist() == [GATEWAY_OPERATION, PROXY_OPERATION, CLIENT_OPERATION, ENGINE_OPERATION]
        assert tr["service"].tolist() == ["nginx-proxy", "ray-head", "ray-head", rec.requests["replica"].iloc[i]]
        assert pd.isna(tr["parent_span_id"].iloc[0])
        assert tr["parent_span_id"].iloc[1:].tolist() == tr["span_id"].iloc[:3].tolist()
        assert (tr["status"] == "OK").all()
        assert tr["http_status"].iloc[:3].tolist() == [200, 200, 200] and pd.isna(tr["http_status"].iloc[3])
        kinds = [json.loads(a)["span.kind"] for a in tr["attributes"]]
        assert kinds == ["SERVER", "SERVER", "CLIENT", "SERVER"]


@pytest.mark.parametrize("failures", [False, True])
def test_children_lie_inside_their_parents(failures):
    spans = spans_from_record(make_record(n=40, failures=failures, delayed="ray-replicas-0"))
    assert (spans["duration_us"] >= 0).all()
    end = spans["start_time_us"] + spans["duration_us"]
    by_id = spans.set_index("span_id")
    child = spans[spans["parent_span_id"].notna()]
    parent = by_id.loc[child["parent_span_id"]]
    assert (child["start_time_us"].to_numpy() >= parent["start_time_us"].to_numpy()).all()
    assert (end[child.index].to_numpy() <= (parent["start_time_us"] + parent["duration_us"]).to_numpy()).all()


def test_span_times_are_the_request_stage_times():
    rec = make_record(n=8, failures=False)
    spans = spans_from_record(rec)
    r = rec.requests.iloc[2]
    tr = _trace(spans, rec, 2).set_index("operation")
    pairs = {GATEWAY_OPERATION: ("t_gateway_start", "t_gateway_end"),
             PROXY_OPERATION: ("t_proxy_start", "t_proxy_server_end"),
             CLIENT_OPERATION: ("t_send", "t_proxy_end"),
             ENGINE_OPERATION: ("t_engine_arrival", "t_engine_end")}
    for op, (a, b) in pairs.items():
        assert tr.loc[op, "start_time_us"] == round(r[a] * 1e6)
        assert abs(tr.loc[op, "duration_us"] - (r[b] - r[a]) * 1e6) <= 1


def test_engine_span_carries_vllm_gen_ai_attributes():
    rec = make_record(n=8, failures=False)
    spans = spans_from_record(rec)
    eng = spans[spans["operation"] == ENGINE_OPERATION].reset_index(drop=True)
    for i, text in enumerate(eng["attributes"]):
        a = json.loads(text)
        assert set(GEN_AI_KEYS) <= set(a)
        r = rec.requests.iloc[i]
        assert a["gen_ai.usage.prompt_tokens"] == 512 and a["gen_ai.usage.completion_tokens"] == 256
        assert a["gen_ai.response.model"] == "tiiuae/Falcon-H1-7B-Instruct"
        assert a["gen_ai.request.id"].startswith("chatcmpl-") and len(a["gen_ai.request.id"]) == 9 + 32
        assert a["gen_ai.latency.e2e"] == pytest.approx(r["t_engine_end"] - r["t_engine_arrival"], abs=1e-6)
        assert a["gen_ai.latency.time_to_first_token"] == pytest.approx(
            r["t_first_token"] - r["t_engine_arrival"], abs=1e-6)
        assert a["gen_ai.latency.time_in_queue"] == pytest.approx(r["queue_s"], abs=1e-6)
    client = spans[spans["operation"] == CLIENT_OPERATION]
    urls = [json.loads(a)["vllm.backend_url"] for a in client["attributes"]]
    assert urls == [f"http://{r}:8000" for r in rec.requests["replica"]]
    assert len(set(eng["attributes"].map(lambda t: json.loads(t)["gen_ai.request.id"]))) == len(eng)


def test_failed_requests_are_error_spans_with_5xx():
    rec = make_record(n=12)
    spans = spans_from_record(rec)
    timeout = _trace(spans, rec, 3)  # gateway gave up: the engine never ended it, so no llm_request span
    assert timeout["operation"].tolist() == [GATEWAY_OPERATION, PROXY_OPERATION, CLIENT_OPERATION]
    assert (timeout["status"] == "ERROR").all()
    assert timeout["http_status"].iloc[0] == 504 and timeout["http_status"].iloc[1] == 499
    dead = _trace(spans, rec, 5)  # engine failure: 500 all the way up
    assert len(dead) == 4 and (dead["status"] == "ERROR").all()
    assert dead["http_status"].iloc[:3].tolist() == [500, 500, 500]
    refused = _trace(spans, rec, 7)  # the proxy was never reached
    assert refused["operation"].tolist() == [GATEWAY_OPERATION]
    assert refused["status"].iloc[0] == "ERROR" and refused["http_status"].iloc[0] == 502
    ok = spans[~spans["trace_id"].isin(rec.requests["trace_id"].iloc[[3, 5, 7]])]
    assert (ok["status"] == "OK").all()


def test_a_stream_cut_after_its_header_is_a_200_gateway_span_as_nginx_logs_it():
    # The live testbed builds the gateway span from nginx's access line (200: status OK); the Serve proxy saw nginx
    # hang up (499) after its call had the replica's 200 header; a 504 (no header yet) leaves that call statusless.
    rec = make_record(n=12, cut=True)
    spans = spans_from_record(rec)
    for i in (9, 11):
        tr = _trace(spans, rec, i).set_index("operation")
        assert (tr.loc[GATEWAY_OPERATION, "status"], tr.loc[GATEWAY_OPERATION, "http_status"]) == ("OK", 200)
        assert (tr.loc[PROXY_OPERATION, "status"], tr.loc[PROXY_OPERATION, "http_status"]) == ("ERROR", 499)
        assert (tr.loc[CLIENT_OPERATION, "status"], tr.loc[CLIENT_OPERATION, "http_status"]) == ("ERROR", 200)
        assert tr.loc[ENGINE_OPERATION, "status"] == "ERROR"
        assert json.loads(tr.loc[GATEWAY_OPERATION, "attributes"])["http.status_code"] == 200
    timeout = _trace(spans, rec, 3).set_index("operation")
    assert (timeout.loc[GATEWAY_OPERATION, "status"], timeout.loc[GATEWAY_OPERATION, "http_status"]) == ("ERROR", 504)
    assert pd.isna(timeout.loc[CLIENT_OPERATION, "http_status"])


def test_network_delay_shows_on_the_client_span_not_on_llm_request():
    rec = make_record(n=40, failures=False, delayed="ray-replicas-1", delay_s=1.0)
    spans = spans_from_record(rec)
    replica_of = dict(zip(rec.requests["trace_id"], rec.requests["replica"]))
    spans["replica"] = spans["trace_id"].map(replica_of)
    dur = spans.pivot_table(index="replica", columns="operation", values="duration_us", aggfunc="mean") / 1e6
    others = [r for r in REPLICAS if r != "ray-replicas-1"]
    gap = dur[CLIENT_OPERATION] - dur[ENGINE_OPERATION]
    assert gap["ray-replicas-1"] > 1.9  # 1 s on the way there and 1 s of stalled stream back
    assert (gap[others] < 0.01).all()
    assert abs(dur.loc["ray-replicas-1", ENGINE_OPERATION] - dur.loc[others, ENGINE_OPERATION].mean()) < 0.1
    assert dur.loc["ray-replicas-1", GATEWAY_OPERATION] > dur.loc[others, GATEWAY_OPERATION].max() + 1.9


def test_same_seed_same_spans_other_seed_other_ids():
    a = spans_from_record(make_record(seed=3))
    b = spans_from_record(make_record(seed=3))
    pd.testing.assert_frame_equal(a, b)
    c = spans_from_record(make_record(seed=4))
    assert not set(a["span_id"]) & set(c["span_id"])
    assert a["span_id"].str.fullmatch(r"[0-9a-f]{16}").all()
    assert a["trace_id"].str.fullmatch(r"[0-9a-f]{32}").all()
    assert a["span_id"].is_unique


def test_empty_record_gives_an_empty_frame():
    rec = make_record(n=0, failures=False)
    spans = spans_from_record(rec)
    assert len(spans) == 0 and list(spans.columns) == list(TRACE_COLUMNS)


def test_bad_records_are_named():
    rec = make_record(n=8, failures=False)
    rec.requests = rec.requests.drop(columns=["t_send"])
    with pytest.raises(CaseError, match="t_send"):
        spans_from_record(rec)
    rec = make_record(n=8, failures=False)
    rec.requests.loc[4, "t_engine_end"] = rec.requests.loc[4, "t_engine_arrival"] - 1.0
    with pytest.raises(CaseError, match=r"request 4: t_engine_end .* before t_engine_arrival"):
        spans_from_record(rec)
    rec = make_record(n=8, failures=False)
    rec.requests["t_gateway_end"] = np.nan
    with pytest.raises(CaseError, match="t_gateway_end"):
        spans_from_record(rec)
