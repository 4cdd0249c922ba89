"""The one metric catalogue and the one log/span catalogue: the simulator's columns are the catalogue's, and the
live services render the same lines and span attributes as the simulator for the same events (no testbed needed;
the sim-vs-live check on a running testbed is in test_testbed_e2e.py)."""

from __future__ import annotations

import json
import re

import pytest

from llmrca.case import catalog as cat
from llmrca.case.views import STUDY_METRICS, view_of
from llmrca.deploy.telemetry import (
    CLIENT_SPAN,
    ENGINE_SPAN,
    GATEWAY_SPAN,
    LINES,
    NGINX_LOG_FORMAT,
    PROXY_SPAN,
    line,
    template_of,
)
from llmrca.sim.config import SimConfig
from llmrca.sim.deployment import deployment
from llmrca.sim.metrics import catalogue_columns
from llmrca.sim.run import simulate


def _regex(template: str) -> re.Pattern:
    return re.compile(".*?".join(re.escape(p) for p in template.split("<*>")) + r"\Z", re.DOTALL)


@pytest.fixture(scope="module")
def sim_case():
    cfg = SimConfig(replicas=3, duration=90.0, warmup=10.0, inject_at=45.0, rate=4.0, prompt_tokens=256,
                    output_tokens=64)
    return cfg, simulate(cfg, seed=3)


def test_catalogue_is_one_description_with_unique_columns_per_scope():
    keys = [(m.scope, m.metric) for m in cat.CATALOG]
    assert len(keys) == len(set(keys))
    assert {m.source for m in cat.CATALOG} == set(cat.SOURCES)
    assert {m.kind for m in cat.CATALOG} <= set(cat.KINDS) and {m.scope for m in cat.CATALOG} <= set(cat.SCOPES)
    # the study view is the catalogue's study entries, and the views follow it
    assert set(STUDY_METRICS) == {"ctn_cpu", "ctn_memory", "ctn_network", "ctn_gpu", "latency", "node_cpu",
                                  "node_memory", "node_network"}
    for m in cat.CATALOG:
        assert view_of(f"svc_{m.metric}") == m.view, m.metric
        if m.kind == "histogram":
            assert m.quantile is not None and "histogram_quantile(" in m.promql
            assert m.metric.endswith(cat.quantile_name(m.quantile)) or m.metric == "latency"
    q = cat.entry("requests_5xx", "mesh").query("destination_workload", "5s", 'namespace="llm"')
    assert q == ('(sum by (destination_workload) (rate(istio_requests_total{namespace="llm",response_code=~"5.."}'
                 '[5s]))) or (0 * sum by (destination_workload) (rate(istio_requests_total{namespace="llm"}[5s])))')


def test_simulator_makes_exactly_the_catalogues_columns(sim_case):
    cfg, case = sim_case
    expected = catalogue_columns(deployment(cfg))
    got = [c for c in case.observation.metrics.columns if c != "time"]
    assert set(got) <= set(expected), sorted(set(got) - set(expected))
    # the only columns left out are histogram quantiles that saw no observation in the run (no series)
    kinds = {f"{s}_{m.metric}": m.kind for s in (*deployment(cfg).pods, *deployment(cfg).nodes) for m in cat.CATALOG}
    missing = set(expected) - set(got)
    assert all(kinds.get(c) == "histogram" for c in missing), sorted(missing)
    assert len(missing) < 10


def test_collector_queries_the_catalogue():
    from llmrca.testbed.collector import catalog

    assert [q.metric for q in catalog()] == [m.metric for m in cat.CATALOG]


def test_nginx_access_kind_is_the_gateways_log_format():
    from llmrca.testbed.nginx import LOG_FORMAT

    assert LOG_FORMAT == NGINX_LOG_FORMAT
    fields = re.findall(r"\$\w+", NGINX_LOG_FORMAT)
    rendered = line("nginx.access").render("$time_local", *[f for f in fields if f not in ("$time_local",
                                                                                         "$request")])
    assert rendered == re.sub(r"\$request\b", "POST /v1/chat/completions HTTP/1.1", NGINX_LOG_FORMAT)


def test_simulated_nginx_lines_parse_back_and_get_their_template(sim_case, tmp_path):
    """The collector reads live nginx lines through the catalogue: a simulated line read back the same way gets
    the simulator's template, and parses as an access line."""
    from llmrca.testbed.collector import read_nginx_logs

    _, case = sim_case
    logs = case.observation.logs
    gw = logs[logs["service"] == "nginx-proxy"]
    access = tmp_path / "access.log"
    access.write_text("\n".join(gw["message"]) + "\n", encoding="utf-8")
    rows = read_nginx_logs(access, None, "nginx-proxy", 0.0, 1e12)
    assert len(rows) == len(gw)  # every simulated access line parses as the live gateway's format
    assert {r["template"] for r in rows} == set(gw["template"]) == {line("nginx.access").template()}


def _live_lines(tmp_path):
    """The live engine's and proxy's lines for one request of each outcome, as they write them."""
    from llmrca.testbed import engine_server as es
    from llmrca.testbed.logs import JsonLog

    path = tmp_path / "engine.jsonl"
    log = JsonLog(path, "ray-replicas-0", "vllm")
    rid = "chatcmpl-" + "ab" * 16
    es.log_received(log, rid, 1, 1.0, 1.0, 64)
    es.log_added(log, rid)
    es.log_finished(log, rid, 200, "length")
    es.log_finished(log, rid, 504, "abort")
    es.log_stats(log, 512.0, 255.75, 4, 2, 0.4567, 0.25)
    es.log_stats(log, 10.0, 5.0, 3, 4, 0.99, 0.0, preemptions=27)
    es.log_replica_access(log, "abcd1234", "8c1e9a2e-8f7e-4d49-9b1a-0d6f5b1c2d3e", 200, 812.3)
    log.line(line("serve.proxy_access"), "127.0.0.1", "8c1e9a2e-8f7e-4d49-9b1a-0d6f5b1c2d3e", 200, "812.9")
    log.close()
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_live_engine_lines_match_the_simulators_for_the_same_events(sim_case, tmp_path):
    _, case = sim_case
    sim = case.observation.logs
    live = _live_lines(tmp_path)
    by_kind = {r["kind"]: r for r in live}
    compared = 0
    for kind, rec in by_kind.items():
        tmpl = rec["template"]
        assert tmpl == LINES[kind].template()
        assert _regex(tmpl).match(rec["message"]), (kind, rec["message"])
        mine = sim[sim["template"] == tmpl]
        if len(mine):  # an event both produced: the simulated lines fit the same template
            compared += 1
            assert all(_regex(tmpl).match(m) for m in mine["message"])
    # request received/added/finished, engine stats, replica and proxy access all occur in the simulated run
    assert compared >= 6, sorted(by_kind)
    # and every simulated line of those programs is a catalogued kind
    known = {k.template() for k in LINES.values() if "{" not in k.fmt.replace("{}", "").replace("{time}", "")}
    for t in set(sim["template"]):
        assert t in known or any(_regex(k.template(**_fixed(k))).match(t) for k in LINES.values()), t


def _fixed(kind):
    names = set(re.findall(r"\{(\w+)\}", kind.fmt)) - {"time"}
    return {n: "<*>" for n in names}


def test_live_and_simulated_spans_carry_the_same_attribute_keys(sim_case):
    from llmrca.testbed import engine_server as es
    from llmrca.testbed.nginx import gateway_span

    _, case = sim_case
    tr = case.observation.traces
    keys = {op: set(json.loads(a)) for op, a in zip(tr["operation"], tr["attributes"]) if '"http.status_code"' in a
            or op == ENGINE_SPAN.operation}
    live_engine = es.span_attributes("m", "chatcmpl-1", temperature=1.0, top_p=1.0, n=1, max_tokens=64,
                                     prompt_tokens=256, completion_tokens=64, queue=0.01, ttft=0.1, e2e=1.0,
                                     prefill=0.05, decode=0.9)
    assert {"span.kind", *live_engine} == keys[ENGINE_SPAN.operation]
    assert not any(k.startswith("http.") for k in live_engine) and "gen_ai.system" not in live_engine
    rec = {"method": "POST", "path": "/v1/chat/completions", "user_agent": "x", "remote_addr": "127.0.0.1",
           "upstream_addr": "127.0.0.1:1", "status": 200, "trace_id": "a" * 32, "span_id": "b" * 16,
           "parent_span_id": None, "start": 1.0, "request_time": 0.5}
    assert set(json.loads(gateway_span(rec, "nginx-proxy")["attributes"])) == keys[GATEWAY_SPAN.operation]
    for span in (PROXY_SPAN, CLIENT_SPAN):
        assert keys[span.operation] == {"span.kind", *span.keys, "http.status_code"}
    with pytest.raises(KeyError, match="missing attribute"):
        ENGINE_SPAN.attributes({"gen_ai.request.id": "x"})


def test_template_of_finds_catalogued_kinds_only():
    t = 1_700_000_000.25
    msg = line("vllm.engine_stats").at(t, "000", "1.0", "2.0", 1, 0, "3.0", "0.0")
    assert template_of(msg) == line("vllm.engine_stats").template()
    assert template_of("something else entirely") is None


def test_live_engine_exports_the_catalogues_engine_and_gpu_series(tmp_path):
    """What the live engine serves on /metrics is what the catalogue's vLLM, DCGM and Ray entries query."""
    pytest.importorskip("prometheus_client", reason="the testbed extra is not installed")
    pytest.importorskip("opentelemetry.sdk", reason="the testbed extra is not installed")
    from _engine_exposition import served_series

    served = served_series(tmp_path)
    wanted = {m.series + ("_bucket" if m.kind == "histogram" else "") for m in cat.CATALOG
              if m.source in ("vllm", "dcgm", "ray")}
    assert wanted <= served, sorted(wanted - served)
    extra = {s for s in served if not s.endswith(("_created", "_sum", "_count"))} - wanted
    # the rest of vLLM 0.32.0's families (llmrca.testbed.parity, checked against the recorded real server) and the
    # enforced power limit (as dcgm-exporter exports it) are served but no column of the catalogue
    from llmrca.testbed.parity import FAMILIES

    vllm = {f + ("_bucket" if kind == "histogram" else "") for f, (kind, _) in FAMILIES.items()}
    assert extra - vllm == {"DCGM_FI_DEV_POWER_MANAGEMENT_LIMIT"}, sorted(extra - vllm)
    assert {s for s in served if s.startswith("vllm:") and not s.endswith(("_created", "_sum", "_count"))} == vllm
