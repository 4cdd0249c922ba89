"""The simulator's configuration, topology, fault registry, views and suites."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from llmrca import faults
from llmrca.errors import LlmrcaError, UnknownNameError
from llmrca.faults import FaultParamError, Injection
from llmrca.io import load_case, load_suite
from llmrca.methods.sli import sli_column
from llmrca.sim.config import ConfigError, SimConfig
from llmrca.sim.deployment import deployment
from llmrca.sim.run import derive_seed, run, simulate
from llmrca.sim.suites import generate_suite, get_suite, plan, suites
from llmrca.sim.views import STUDY_METRICS, select_view, view_of

SHORT = {"duration": 120.0, "inject_at": 60.0, "fault_duration": 30.0}


# -- configuration and topology --------------------------------------------------------------------------------

def test_config_defaults_are_the_study():
    c = SimConfig()
    assert (c.replicas, c.rate, c.prompt_tokens, c.output_tokens) == (4, 5.0, 512, 256)
    assert (c.duration, c.inject_at, c.fault_duration, c.step) == (360.0, 285.0, 60.0, 5.0)
    assert c.gpu_kind.name == "a100-80gb" and c.gpu_kind.tdp_w == 400.0
    assert SimConfig.from_dict(c.to_dict()) == SimConfig(gpu="a100-80gb", model=c.model_spec.name)


@pytest.mark.parametrize("bad, field", [
    ({"replicas": 0}, "replicas"), ({"rate": -1.0}, "rate"),
    ({"rate_window": 7.0}, "rate_window"), ({"inject_at": 400.0}, "inject_at"),
    ({"gpu": "l4", "model": "14b"}, "KV cache"),
])
def test_config_rejects_bad_values_naming_the_field(bad, field):
    with pytest.raises((ConfigError, UnknownNameError)) as e:
        SimConfig(**bad)
    assert field in str(e.value)


def test_unknown_names_are_unknown_name_errors():
    with pytest.raises(UnknownNameError):
        SimConfig(gpu="tpu-v5")
    with pytest.raises(UnknownNameError, match="routing"):
        SimConfig(routing="random")
    with pytest.raises(UnknownNameError):
        SimConfig.from_dict({"replica": 3})


def test_topology_is_the_study_call_graph():
    topo = deployment(SimConfig()).topology()
    assert topo.entry == "nginx-proxy"
    assert ("nginx-proxy", "ray-head") in topo.edges
    assert {b for a, b in topo.edges if a == "ray-head"} == {"ray-replicas-0", "ray-replicas-1", "ray-replicas-2"}
    assert topo.replicas["vllm"] == ["ray-head", "ray-replicas-0", "ray-replicas-1", "ray-replicas-2"]
    assert all("_" not in s for s in topo.services)
    assert set(topo.hosts) == {"nginx-proxy", *topo.replicas["vllm"]}
    assert set(topo.hosts.values()) <= set(topo.services)
    assert not topo.problems()
    assert len(deployment(SimConfig(replicas=6)).topology().replicas["vllm"]) == 6


# -- fault registry --------------------------------------------------------------------------------------------

def test_registry_holds_the_study_faults_with_their_parameters():
    assert [s.id for s in faults.specs()][:4] == ["cpu", "memory", "network", "gpu"]
    assert faults.get("cpu").defaults() == {"workers": 16, "load": 100}
    assert faults.get("memory").defaults()["size_gb"] == 8.0
    assert faults.get("network").defaults() == {"latency_ms": 1000.0, "jitter_ms": 100.0, "correlation": 0.25}
    assert faults.get("gpu").defaults()["power_limit_w"] == 150.0
    rows = faults.rows()
    assert [r[0] for r in rows][:4] == ["cpu", "memory", "network", "gpu"]
    assert all(len(r) == 4 and all(isinstance(x, str) and x for x in r) for r in rows)
    with pytest.raises(UnknownNameError):
        faults.get("disk")


def test_fault_parameters_are_checked():
    spec = faults.get("cpu")
    with pytest.raises(UnknownNameError):
        spec.resolve({"threads": 4})
    with pytest.raises(FaultParamError):
        spec.resolve({"workers": 2.5})
    with pytest.raises(FaultParamError):
        spec.resolve({"workers": "many"})
    assert spec.scaled(0.5)["workers"] == 8
    assert faults.get("memory").scaled(2.0)["size_gb"] == 16.0
    assert isinstance(FaultParamError("x"), LlmrcaError)


def test_faults_act_on_causes_of_the_target():
    for spec in faults.specs():
        perts = spec.perturbations("ray-replicas-1", 10.0, 20.0)
        assert perts and all(p.service == "ray-replicas-1" and p.cause in faults.CAUSES for p in perts)


def test_targets_and_power_limits_are_checked():
    with pytest.raises(UnknownNameError):
        run(SimConfig(**SHORT), Injection("cpu", "nginx-proxy"))
    with pytest.raises(FaultParamError, match="nvidia-smi"):
        run(SimConfig(gpu="h100", **SHORT), Injection("gpu", "ray-head", {"power_limit_w": 150.0}))


# -- the case --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def case():
    return simulate(SimConfig(**SHORT), Injection("network", "ray-replicas-0"), seed=5)


def test_simulated_case_is_valid_and_complete(case):
    assert not [p for p in case.problems() if p.severity == "error"]
    obs = case.observation
    assert obs.interval == 5.0 and len(obs.metrics) == 24
    assert case.truth.service == "ray-replicas-0" and case.truth.fault_type == "network"
    assert case.truth.start == obs.inject_time and case.truth.end == obs.inject_time + 30.0
    assert len(obs.traces) and len(obs.logs)
    assert sli_column(obs) == "nginx-proxy_latency"
    assert case.truth.indicator in obs.metric_columns


def test_views_split_by_the_naming_rule(case):
    cols = case.observation.metric_columns
    study = select_view(case, "study").observation.metric_columns
    full = select_view(case.observation, "full").metric_columns
    assert set(study) | set(full) == set(cols) and not set(study) & set(full)
    assert {c.split("_", 1)[1] for c in study} == set(STUDY_METRICS)
    for svc in ("ray-head", "ray-replicas-0", "ray-replicas-1", "ray-replicas-2"):
        for m in ("ctn_cpu", "ctn_memory", "ctn_network", "ctn_gpu"):
            assert f"{svc}_{m}" in study
    for c in ("ray-replicas-1_time_to_first_token_seconds_p95", "ray-replicas-1_num_requests_waiting",
              "ray-replicas-1_kv_cache_usage_perc", "ray-replicas-1_power_usage", "ray-replicas-1_sm_clock",
              "ray-replicas-1_xid_errors", "ray-replicas-1_request_duration_milliseconds_p50",
              "nginx-proxy_requests", "ray-replicas-1_generation_tokens"):
        assert c in full and view_of(c) == "full"
    assert list(select_view(case.observation.metrics, "all").columns) == ["time", *cols]
    with pytest.raises(UnknownNameError):
        select_view(case, "everything")


def test_record_follows_the_contract(case):
    rec = run(SimConfig(**SHORT), Injection("network", "ray-replicas-0"), seed=5).record
    req = rec.requests
    assert rec.proxy == "ray-head" and rec.gateway == "nginx-proxy" and rec.config["model"] == rec.model_name
    assert (req["request_id"].to_numpy() == np.arange(len(req))).all()
    assert req["trace_id"].str.fullmatch(r"[0-9a-f]{32}").all()
    ok = req[req["status"] == "OK"]
    stages = ["t_gateway_start", "t_proxy_start", "t_send", "t_engine_arrival", "t_ready", "t_scheduled",
              "t_first_token", "t_engine_end", "t_proxy_end", "t_proxy_server_end", "t_gateway_end"]
    for a, b in itertools.pairwise(stages):
        assert (ok[b] >= ok[a]).all(), (a, b)
    assert (req["t_gateway_start"] >= rec.start).all()
    kinds = set(rec.events["kind"])
    assert {"engine_stats", "fault_start", "fault_end"} <= kinds
    start = rec.events[rec.events["kind"] == "fault_start"].iloc[0]
    assert start["service"] == "ray-replicas-0" and start["fields"]["type"] == "network"
    json.dumps(list(rec.events["fields"]))


# -- suites ----------------------------------------------------------------------------------------------------

def test_suite_registry_and_plan():
    assert {s.name for s in suites()} >= {"paper", "demo"}
    paper = plan("paper")
    assert len(paper) == 4 * 4 * 10
    assert paper[0].case_id == "cpu/ray-head/rep-00" and paper[-1].case_id == "gpu/ray-replicas-2/rep-09"
    assert paper[0].seed == derive_seed(0, "cpu", "ray-head", 0)
    assert len({s.seed for s in paper}) == len(paper)
    assert plan("paper") == paper  # deterministic
    demo = plan("demo", normal=2)
    assert len(demo) == 4 * 4 * 2 + 2 and demo[-1].injection is None and demo[-1].case_id == "normal/rep-01"
    assert get_suite("demo").deploy.duration < 360.0
    with pytest.raises(UnknownNameError):
        get_suite("nope")
    with pytest.raises(UnknownNameError):
        plan("paper", overrides={"replica_count": 3})


def test_plan_overrides_make_held_out_variants():
    v = plan("paper", reps=1, overrides={"replicas": 6, "load": 8.0, "strength": 0.5, "gpu": "h100"})
    assert len(v) == 4 * 6
    assert v[0].config.rate == 8.0 and v[0].config.gpu == "h100"
    by_fault = {s.injection.fault: s.injection.params for s in v}
    assert by_fault["cpu"]["workers"] == 8 and by_fault["network"]["latency_ms"] == 500.0
    assert by_fault["gpu"]["depth"] == 0.5  # half-way from the replica's draw to the study's cap
    h100 = plan("paper", reps=1, overrides={"gpu": "h100"})
    assert next(s for s in h100 if s.injection.fault == "gpu").injection.params["depth"] == 1.0


def test_generate_suite_writes_loadable_cases(tmp_path):
    over = {**SHORT, "faults": ["cpu"], "replicas": 2}
    seen = []
    paths = generate_suite("demo", tmp_path / "s", reps=1, normal=1, overrides=over,
                           progress=lambda i, n, cid: seen.append((i, n, cid)))
    assert [p.relative_to(tmp_path / "s").as_posix() for p in paths] == [
        "cpu/ray-head/rep-00", "cpu/ray-replicas-0/rep-00", "normal/rep-00"]
    assert seen[-1][:2] == (3, 3)
    cases = list(load_suite(tmp_path / "s"))
    assert [c.id for c in cases] == ["cpu/ray-head/rep-00", "cpu/ray-replicas-0/rep-00", "normal/rep-00"]
    assert cases[2].truth.is_normal and cases[0].truth.service == "ray-head"
    assert cases[0].provenance["suite"] == "demo" and cases[0].provenance["seed"] == derive_seed(0, "cpu",
                                                                                                   "ray-head", 0)
    manifest = json.loads((tmp_path / "s" / "suite.json").read_text())
    assert manifest["cases"] == [c.id for c in cases]
    with pytest.raises(FileExistsError):
        generate_suite("demo", tmp_path / "s", reps=1, overrides=over, progress=False)
    again = load_case(generate_suite("demo", tmp_path / "s", reps=1, overrides=over, progress=False,
                                     overwrite=True)[0])
    assert again.observation.metrics.equals(cases[0].observation.metrics)


def test_package_exports():
    from llmrca import sim

    assert sim.simulate is simulate and sim.SimConfig is SimConfig and sim.generate_suite is generate_suite
    assert sim.select_view is select_view and sim.Injection is Injection
    with pytest.raises(AttributeError):
        sim.nothing_here  # noqa: B018


def test_a_case_leaves_no_reference_cycles():
    # The run's state (engines, tick logs, request table, router closures) is freed by reference counting when
    # the case is made; a cycle would keep all of it for the cyclic collector, whose pass then walks every list.
    import gc

    from llmrca.sim.engine import ReplicaEngine, RequestTable, TickLog
    from llmrca.sim.run import simulate

    def alive() -> set[int]:  # engines, tick logs and request tables still alive (other tests may hold some)
        # type(), not isinstance: isinstance reads __class__, which some library objects answer with a warning
        kinds = (ReplicaEngine, RequestTable, TickLog)
        return {id(o) for o in gc.get_objects() if type(o) in kinds}

    simulate(SimConfig(duration=60.0, inject_at=30.0), Injection("cpu", "ray-head"), seed=3)
    gc.collect()
    before = alive()
    was = gc.isenabled()
    gc.disable()  # so only reference counting can free them (other garbage in the process does not matter here)
    try:
        simulate(SimConfig(duration=60.0, inject_at=30.0), Injection("gpu", "ray-replicas-1"), seed=4)
        assert alive() - before == set()
    finally:
        if was:
            gc.enable()
