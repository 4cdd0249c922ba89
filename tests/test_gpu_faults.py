"""gpu-xid, gpu-ecc and gpu-thermal in the simulator: what each does to the engine, the proxy, DCGM's fields and the
logs follows from the causes (gpu_lost, gpu_ecc, gpu_cooling) through the one deployment model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llmrca import faults
from llmrca.faults import FaultParamError, Injection
from llmrca.sim.config import SimConfig
from llmrca.sim.gpu import CLOCK_REASON_HW_THERMAL, CLOCK_REASON_SW_THERMAL
from llmrca.sim.run import run, simulate

T = "ray-replicas-1"
CFG = SimConfig(duration=420.0, inject_at=200.0, fault_duration=60.0)


def _case(fault, params=None, *, cfg=CFG, seed=3, duration=None, traces=False):
    return simulate(cfg, Injection(fault, T, params or {}, duration=duration), seed=seed, traces=traces)


def _rel(case):
    m = case.observation.metrics
    return m, (m["time"] - case.observation.inject_time).to_numpy()


def _served_by_target(run_, lo, hi):
    """Requests the target answered with 200 that reached it in [lo, hi) seconds after the injection."""
    req = run_.record.requests
    t = req["t_engine_arrival"].to_numpy() - run_.inject_time
    return int(((req["replica"] == T) & (req["http_status"] == 200) & (t >= lo) & (t < hi)).sum())


def _restart_s(run_):
    """Seconds from the engine's death to the replica's healthy report, from the record's events."""
    ev = run_.record.events
    mine = ev[ev["service"] == T]
    dead = mine[mine["kind"] == "engine_dead"]["time"]
    back = [t for t, f in zip(mine["time"], mine["fields"]) if f.get("ok") is True and "load_s" in f]
    return (min(back) - float(dead.iloc[0])) if back and len(dead) else math.inf


def test_registry_has_the_three_gpu_faults_outside_the_paper_suite():
    from llmrca.sim.suites import get_suite
    from llmrca.testbed.injectors import live_faults

    for fid, cause in (("gpu-xid", "gpu_lost"), ("gpu-ecc", "gpu_ecc"), ("gpu-thermal", "gpu_cooling")):
        spec = faults.get(fid)
        assert spec.causes == (cause,) and spec.layer == "gpu" and fid in live_faults()
        assert all(p.unit or p.kind is int for p in spec.params), fid
    assert not {"gpu-xid", "gpu-ecc", "gpu-thermal"} & set(get_suite("paper").faults)


def test_gpu_xid_kills_the_engine_blanks_the_gpu_and_the_replica_comes_back():
    r = run(CFG, Injection("gpu-xid", T, {"recover_s": 60.0, "load_s": 30.0}), seed=3)
    case = _case("gpu-xid", {"recover_s": 60.0, "load_s": 30.0})
    m, t = _rel(case)
    # the driver's line on the target's node, the engine's CUDA error and EngineDeadError on the target
    logs = case.observation.logs
    node = case.observation.topology.hosts[T]
    xid = logs[logs["message"].str.contains("NVRM: Xid")]
    assert xid["service"].tolist() == [node] and "79, " in xid["message"].iloc[0]
    assert "GPU has fallen off the bus." in xid["message"].iloc[0]
    mine = logs[logs["service"] == T]["message"]
    assert mine.str.contains("EngineDeadError").any() and mine.str.contains("RuntimeError: CUDA error:").any()
    # DCGM keeps the last Xid; every sampled field of the GPU and Ray's gauge vanish while it is off the bus
    assert (m[f"{T}_xid_errors"][t < 0] == 0).all() and (m[f"{T}_xid_errors"][t > 10] == 79).all()
    off = (t > 10) & (t < 55)
    for col in ("power_usage", "sm_clock", "gpu_temp", "gpu_util", "fb_used", "ctn_gpu", "ecc_dbe_vol_total"):
        assert m[f"{T}_{col}"][off].isna().all() and m[f"{T}_{col}"][t < 0].notna().all(), col
    assert m[f"{T}_power_usage"][t > 70].notna().all()  # back on the bus after recover_s
    # in-flight requests failed (502 at the proxy), none served while it was down, it serves after recover + load
    req = r.record.requests
    failed = req[(req["replica"] == T) & (req["http_status"] == 502)]
    assert len(failed) >= 1 and (failed["error"] == "EngineDeadError").all()
    assert _served_by_target(r, 10, 85) == 0 and _served_by_target(r, 100, 200) > 0
    assert abs(_restart_s(r) - 90.0) < 1.0


def test_gpu_xid_cordoned_keeps_the_replica_down_for_the_rest_of_the_case():
    r = run(CFG, Injection("gpu-xid", T, {"cordon": 1}), seed=3)
    case = _case("gpu-xid", {"cordon": 1})
    m, t = _rel(case)
    assert _served_by_target(r, 10, 220) == 0
    assert m[f"{T}_power_usage"][t > 10].isna().all() and (m[f"{T}_xid_errors"][t > 10] == 79).all()
    assert r.truth.params["cordoned"] == 1 and _restart_s(r) == math.inf
    # the peers took its load
    peers = r.record.requests
    late = peers[(peers["t_gateway_start"] - r.inject_time > 20) & (peers["http_status"] == 200)]
    assert len(late) > 0 and T not in set(late["replica"])


def test_gpu_ecc_94_is_contained_the_gpu_stays_readable_and_the_remap_waits_for_a_reset():
    r = run(CFG, Injection("gpu-ecc", T, {"xid": 94}), seed=3)
    case = _case("gpu-ecc", {"xid": 94})
    m, t = _rel(case)
    after = t > 10
    assert (m[f"{T}_xid_errors"][after] == 94).all() and (m[f"{T}_ecc_dbe_vol_total"][after] == 1).all()
    assert (m[f"{T}_row_remap_pending"][after] == 1).all() and (m[f"{T}_uncorrectable_remapped_rows"] == 0).all()
    assert m[f"{T}_power_usage"][after].notna().all()  # the GPU never left: only the process died
    logs = case.observation.logs
    assert logs["message"].str.contains("RuntimeError: CUDA error: uncorrectable ECC error encountered").any()
    assert logs["message"].str.contains(r"NVRM: Xid \(PCI:0000:\w\w:00\): 94, .*Contained").any()
    assert r.truth.params == {"xid": 94, "reset_s": 0.0, "load_s": 30.0}
    assert abs(_restart_s(r) - 30.0) < 1.0 and _served_by_target(r, 40, 120) > 0


def test_gpu_ecc_48_needs_a_gpu_reset_which_clears_the_count_and_performs_the_remap():
    r = run(CFG, Injection("gpu-ecc", T, {"xid": 48}), seed=3)
    case = _case("gpu-ecc", {"xid": 48})
    m, t = _rel(case)
    before_reset, after_reset = (t > 10) & (t < 55), t > 70
    assert (m[f"{T}_ecc_dbe_vol_total"][before_reset] == 1).all()
    assert (m[f"{T}_row_remap_pending"][before_reset] == 1).all()
    assert (m[f"{T}_ecc_dbe_vol_total"][after_reset] == 0).all()
    assert (m[f"{T}_uncorrectable_remapped_rows"][after_reset] == 1).all()
    assert (m[f"{T}_row_remap_pending"][after_reset] == 0).all() and (m[f"{T}_xid_errors"][after_reset] == 48).all()
    # down for the reset and the model load: longer than the contained error's restart
    assert abs(_restart_s(r) - 90.0) < 1.0 and _served_by_target(r, 10, 85) == 0


def test_gpu_ecc_refuses_other_xids_gpus_without_ecc_and_the_cpu_device():
    with pytest.raises(FaultParamError, match="'xid'"):
        _case("gpu-ecc", {"xid": 79})
    with pytest.raises(FaultParamError, match="no ECC memory"):
        _case("gpu-ecc", {"xid": 94}, cfg=CFG.with_(gpu="rtx-3090"))
    for fid in ("gpu-xid", "gpu-ecc", "gpu-thermal"):
        with pytest.raises(FaultParamError, match="not a GPU|host CPU"):
            _case(fid, cfg=CFG.with_(gpu="cpu", model="tiny", replicas=3))


def test_no_ecc_columns_on_a_gpu_without_ecc_and_quiet_ones_elsewhere():
    plain = simulate(CFG.with_(gpu="rtx-3090", model="0.5b"), seed=2, traces=False, logs=False).observation.metrics
    assert not [c for c in plain.columns if "ecc" in c or "remap" in c]
    normal = simulate(CFG, seed=2, traces=False, logs=False).observation.metrics
    for col in ("xid_errors", "ecc_dbe_vol_total", "uncorrectable_remapped_rows", "row_remap_pending",
                "thermal_violation"):
        x = normal[f"{T}_{col}"]
        assert (x.dropna() == 0).all(), col
    reasons = normal[f"{T}_clocks_event_reasons"].dropna().astype(int)
    assert not (reasons & (CLOCK_REASON_SW_THERMAL | CLOCK_REASON_HW_THERMAL)).any()


def _per_token_ms(run_, lo, hi):
    """Mean decode time per token and prefill time (ms) of the target's requests whose first token came in
    [lo, hi) seconds after the injection (exact, from the record: vLLM's ITL buckets are too coarse for this)."""
    q = run_.record.requests
    t = q["t_first_token"] - run_.inject_time
    sel = (q["replica"] == T) & (q["http_status"] == 200) & (t >= lo) & (t < hi)
    dec = q["decode_s"][sel] / np.maximum(q["output_tokens"][sel] - 1, 1)
    return 1000.0 * float(dec.mean()), 1000.0 * float(q["prefill_s"][sel].mean())


def test_gpu_thermal_heats_the_gpu_and_its_thermal_control_clocks_it_down():
    r = run(CFG, Injection("gpu-thermal", T, {"r_factor": 4.0}, duration=185.0), seed=3)
    m = r.metrics
    t = (m["time"] - r.inject_time).to_numpy()
    temp = m[f"{T}_gpu_temp"]
    assert temp[t < 0].max() < 60 and temp[(t > 50) & (t < 60)].mean() > temp[t < 0].mean() + 15
    # at its thermal target (slowdown 88 C - 3 C on an A100) the software slowdown holds it there
    hot = (t > 140) & (t < 185)
    assert 83 <= temp[hot].mean() <= 87 and temp[hot].max() < 88
    reasons = m[f"{T}_clocks_event_reasons"][hot].dropna().astype(int)
    assert (reasons & CLOCK_REASON_SW_THERMAL).mean() > 0.8 and not (reasons & CLOCK_REASON_HW_THERMAL).any()
    assert m[f"{T}_sm_clock"][hot].mean() < 0.85 * m[f"{T}_sm_clock"][t < 0].mean()
    assert m[f"{T}_power_usage"][hot].mean() < 0.8 * m[f"{T}_power_usage"][t < 0].mean()
    assert m[f"{T}_thermal_violation"][hot].mean() > 5e5  # us/s: throttled most of the time
    # slower decode and prefill on that replica: the clock the thermal budget allows, through the roofline
    (d0, p0), (d1, p1) = _per_token_ms(r, -100, 0), _per_token_ms(r, 140, 185)
    assert d1 > 1.2 * d0 and p1 > 2.0 * p0
    ttft = f"{T}_time_to_first_token_seconds_p50"
    assert m[ttft][hot].mean() > 1.5 * m[ttft][t < 0].mean()
    # cooling restored: it cools and clocks come back
    late = t >= 205
    assert m[f"{T}_sm_clock"][late].mean() > 0.95 * m[f"{T}_sm_clock"][t < 0].mean()
    # a peer is untouched
    assert not (m["ray-replicas-2_clocks_event_reasons"].dropna().astype(int) & CLOCK_REASON_SW_THERMAL).any()


def test_gpu_thermal_with_almost_no_cooling_ends_in_hardware_slowdown():
    r = run(CFG, Injection("gpu-thermal", T, {"r_factor": 20.0}, duration=200.0), seed=3)
    m = r.metrics
    t = (m["time"] - r.inject_time).to_numpy()
    reasons = m[f"{T}_clocks_event_reasons"][(t > 100) & (t < 195)].dropna().astype(int)
    # even the lowest clock draws more than that cooling takes away: the slowdown temperature is passed
    assert (reasons & CLOCK_REASON_HW_THERMAL).any() and m[f"{T}_gpu_temp"][(t > 100) & (t < 195)].max() >= 88


def test_gpu_thermal_ramp_and_strength():
    spec = faults.get("gpu-thermal")
    assert spec.scaled(0.5)["r_factor"] == pytest.approx(2.5) and spec.scaled(2.0)["r_factor"] == pytest.approx(7.0)
    step = _case("gpu-thermal", {"r_factor": 4.0}, duration=100.0)
    ramp = _case("gpu-thermal", {"r_factor": 4.0, "ramp_s": 90.0}, duration=100.0)
    (ms, t), (mr, _) = _rel(step), _rel(ramp)
    w = (t > 20) & (t < 60)
    assert mr[f"{T}_gpu_temp"][w].mean() < ms[f"{T}_gpu_temp"][w].mean() - 3  # a clogging intake heats slower


def test_gpu_faults_are_deterministic_per_seed():
    for fid, p in (("gpu-xid", {}), ("gpu-ecc", {"xid": 48}), ("gpu-thermal", {})):
        a = _case(fid, p, seed=11).observation.metrics
        b = _case(fid, p, seed=11).observation.metrics
        assert a.equals(b), fid


def test_each_default_fault_moves_its_indicator_against_the_fault_free_twin():
    """The study's run (a 60 s fault): each fault's indicator is among the series that differ from the twin beyond
    noise (gpu-thermal's only: the temperature climbs before any throttling)."""
    from llmrca.sim import twin

    cfg = SimConfig()
    for fid, p in (("gpu-xid", {}), ("gpu-ecc", {"xid": 48}), ("gpu-thermal", {})):
        case = simulate(cfg, Injection(fid, T, p), seed=5, traces=False, logs=False)
        moved = {m.column for m in twin.check(case, cfg, 5)}
        assert case.truth.indicator in moved, (fid, sorted(moved)[:5])
    assert f"{T}_sm_clock" not in moved  # a 60 s loss of cooling does not throttle an A100 at this load yet
