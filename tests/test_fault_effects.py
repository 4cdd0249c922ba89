"""Faults that always act and say what they did: relative GPU caps, applied parameters recorded, replica-kill
simulated, and the fault-vs-twin check that refuses a case whose telemetry shows nothing."""

from __future__ import annotations

import numpy as np
import pytest

from llmrca import faults
from llmrca.faults import FaultParamError, Injection
from llmrca.sim import twin
from llmrca.sim.config import SimConfig
from llmrca.sim.run import run, simulate
from llmrca.sim.suites import generate_suite, plan

SHORT = {"duration": 120.0, "inject_at": 60.0, "fault_duration": 30.0}


def _check(spec) -> list[twin.Move]:
    case = simulate(spec.config, spec.injection, spec.seed, logs=False)  # traces: the check's second look
    return twin.check(case, spec.config, spec.seed)


@pytest.mark.parametrize("strength", [0.25, 0.5])
def test_every_demo_fault_case_differs_from_its_twin(strength):
    specs = plan("demo", reps=1, overrides={"strength": strength})
    assert {s.injection.fault for s in specs} == {"cpu", "memory", "network", "gpu"}
    for s in specs:
        assert _check(s), s.case_id  # raises NoObservableEffectError otherwise


def test_docs_example_h100_six_replicas_half_strength():
    for s in plan("demo", reps=1, overrides={"gpu": "h100", "replicas": 6, "strength": 0.5, "faults": ["gpu"]}):
        hits = _check(s)
        assert any(m.column.startswith(s.injection.target) for m in hits), s.case_id


def test_paper_default_cap_stays_150_watts_on_the_a100():
    gpu = [s for s in plan("paper", reps=1) if s.injection.fault == "gpu"]
    sim = run(SimConfig(**SHORT), gpu[0].injection, 1)
    assert sim.truth.params == {"watts": 150.0}
    # strength 1 is the study's cap too, reached from the replica's own draw
    s1 = next(s for s in plan("paper", reps=1, overrides={"strength": 1.0}) if s.injection.fault == "gpu")
    assert run(SimConfig(**SHORT), s1.injection, 1).truth.params["watts"] == 150.0


def test_a_cap_given_in_watts_wins_over_the_strength():
    cases = plan("demo", sets=["faults.strength=0.5", "faults.gpu.power_limit_w=200"])
    gpu = [c.injection.params for c in cases if c.injection is not None and c.injection.fault == "gpu"]
    assert gpu and all(p["power_limit_w"] == 200.0 and p["depth"] is None for p in gpu)
    relative = [c.injection.params for c in plan("demo", sets=["faults.strength=0.5"])
                if c.injection is not None and c.injection.fault == "gpu"]
    assert all(p["depth"] == 0.5 for p in relative)


def test_recorded_parameters_are_the_applied_ones():
    cfg = SimConfig(**SHORT)
    t = "ray-replicas-1"
    for fault in ("cpu", "memory", "network", "gpu", "replica-kill"):
        params = faults.get(fault).scaled(0.5)
        sim = run(cfg, Injection(fault, t, params), 4)
        got, env = sim.truth.params, sim.env
        if fault == "cpu":
            assert env.stress_cores[t].max() == got["workers"] * got["load"] / 100.0 == 8.0
        elif fault == "memory":
            assert env.hog_bytes[t].max() == got["bytes"] == 4e9
        elif fault == "network":
            assert env.delays[t][0].latency == got["latency_s"] == 0.5
        elif fault == "gpu":
            assert env.power_limit[t].min() == got["watts"]
            draw = got["basis"]["power_draw_w"]
            assert got["watts"] == pytest.approx(150.0 + 0.5 * (draw - 150.0)) and got["watts"] < draw
            assert "power_limit_w" not in got and "fraction" not in got
        else:
            (die, back), = env.kills[t]
            assert back - die == got["load_s"] == 15.0
        assert sim.record.fault["params"] == got  # the record and the truth say the same


def test_caps_outside_the_gpu_range_name_the_parameter():
    with pytest.raises(FaultParamError, match="'power_limit_w'.*outside what a h100 accepts"):
        run(SimConfig(gpu="h100", **SHORT), Injection("gpu", "ray-head", {"power_limit_w": 150.0}))
    with pytest.raises(FaultParamError, match="'power_limit_frac'"):
        run(SimConfig(**SHORT), Injection("gpu", "ray-head", {"power_limit_frac": 1.5}))


def test_a_fault_that_does_nothing_is_refused(tmp_path):
    # 390 W on a replica that draws ~210 W: in range, accepted by the GPU, and without any effect.
    over = {**SHORT, "replicas": 2, "faults": ["gpu"], "fault_params": {"gpu": {"power_limit_w": 390.0}}}
    with pytest.raises(twin.NoObservableEffectError, match=r"fault 'gpu' on 'ray-head' with watts=390"):
        generate_suite("demo", tmp_path / "s", reps=1, overrides=over, progress=False)


def test_twin_is_identical_without_a_fault_and_noise_decides_a_move():
    cfg = SimConfig(**SHORT)
    a = run(cfg, None, 3).metrics
    assert not [m for m in twin.moves(a, a.copy(), cfg.inject_at, cfg.duration) if twin.moved(m)]


def test_replica_kill_fails_inflight_requests_and_shifts_load_until_restart():
    cfg = SimConfig(**SHORT)
    t = "ray-replicas-0"
    sim = run(cfg, Injection("replica-kill", t, {"load_s": 20.0}), 2)
    (die, back), = sim.env.kills[t]
    req = sim.record.requests
    start = sim.record.start
    on_t = req[req["replica"] == t]
    dead = on_t[on_t["http_status"] == 502]
    assert len(dead) >= 1 and (dead["error"] == "EngineDeadError").all()
    # fast failures: the proxy answers at once, not after nginx's 60 s timeout
    assert (dead["t_gateway_end"] - dead["t_gateway_start"]).max() < 5.0
    arrived = on_t["t_send"] - start
    assert not ((arrived > die + 2.5) & (arrived < back)).any()  # out of the router's list while restarting
    assert (arrived > back).any()  # and serving again afterwards
    ok = req[req["http_status"] == 200]
    assert (ok[ok["replica"] == t]["t_send"] - start > back).any()
    sent = req["t_send"] - start
    before = req[(sent > die - 40) & (sent < die)]
    during = req[(sent > die + 2.5) & (sent < back)]
    assert (before["replica"] == t).mean() > 0.15  # its share before the kill ...
    assert len(during) > 20 and (during["replica"] != t).all()  # ... goes to the peers while it restarts
    ev = sim.record.events
    health = ev[(ev["kind"] == "replica_health") & (ev["service"] == t)]
    assert [f["ok"] for f in health["fields"]] == [False, True]
    assert np.isclose(health["fields"].iloc[1]["load_s"], 20.0)


def test_replica_kill_logs_the_controller_restart():
    cfg = SimConfig(**SHORT)
    case = simulate(cfg, Injection("replica-kill", "ray-replicas-1", {"load_s": 10.0}), 2, traces=False)
    msgs = case.observation.logs["message"]
    assert msgs.str.contains("failed health check, stopping it").any()
    assert msgs.str.contains(r"started successfully on node .* after 10\.0s").any()


def test_every_registry_fault_declares_known_causes_and_its_effect_uses_them():
    for spec in faults.specs():
        assert spec.causes and set(spec.causes) <= set(faults.CAUSES)
        perts = spec.perturbations("r1", 0.0, 10.0)
        assert {p.cause for p in perts} <= set(spec.causes)
        assert all(set(p.values) <= set(faults.CAUSES[p.cause]) for p in perts)
    kill = faults.get("replica-kill")
    assert kill.layer == "process" and kill.targets == "replicas" and kill.causes == ("process_kill",)


def test_trace_series_show_a_delay_towards_one_replica():
    # What the check falls back on when bucketed metrics hide a delay: the proxy's call spans around the target's.
    cfg = SimConfig(**SHORT)
    t = "ray-replicas-1"
    case = simulate(cfg, Injection("network", t, faults.get("network").scaled(0.25)), 6, logs=False)
    base = simulate(cfg, None, 6, logs=False)
    times = case.observation.metrics["time"].to_numpy()
    a = twin.span_series(case.observation.traces, times, cfg.step)
    b = twin.span_series(base.observation.traces, times, cfg.step)
    got = {m.column: m for m in twin.moves(a, b, case.observation.inject_time, case.truth.end)}
    call = got[f"call:ray-head->{t}:process_request"]
    assert twin.moved(call) and call.delta == pytest.approx(250.0, rel=0.2)  # ms: the added delay
    assert not twin.moved(got["call:ray-head->ray-replicas-2:process_request"])
