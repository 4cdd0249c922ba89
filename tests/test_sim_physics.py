"""Directional physics of the simulator: each fault acts on a cause and the symptoms follow, where they should.

Checks are directions and rough sizes, never tuned numbers. Runs are shared per module (about 0.2 s each).
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llmrca.faults import Injection
from llmrca.io import save_case
from llmrca.sim.config import SimConfig
from llmrca.sim.run import run, simulate

TARGET = "ray-replicas-1"
PEERS = ("ray-head", "ray-replicas-0", "ray-replicas-2")


@functools.cache
def _run(fault: str | None, seed: int = 3, target: str = TARGET, **cfg: object):
    config = SimConfig(**cfg)
    return run(config, Injection(fault, target) if fault else None, seed)


def _windows(sim, metrics: bool = True):
    """(pre, post) row masks: well before the injection, and while the fault acts."""
    start = sim.record.start
    if metrics:
        t = sim.metrics["time"].to_numpy() - start
    else:
        t = sim.record.requests["t_gateway_start"].to_numpy() - start
    return (t >= 60) & (t < 280), (t >= 295) & (t < 340)


def _col(sim, name: str) -> tuple[float, float]:
    pre, post = _windows(sim)
    x = sim.metrics[name].to_numpy()
    return float(np.nanmedian(x[pre])), float(np.nanmedian(x[post]))


def _req(sim, replica: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    req = sim.record.requests
    pre, post = _windows(sim, metrics=False)
    if replica is not None:
        sel = (req["replica"] == replica).to_numpy()
        pre, post = pre & sel, post & sel
    return req[pre], req[post]


def _ttft(r: pd.DataFrame) -> float:
    return float((r["t_first_token"] - r["t_engine_arrival"]).mean())


def _itl(r: pd.DataFrame) -> float:
    long = r[r["output_tokens"] > 1]
    return float((long["decode_s"] / (long["output_tokens"] - 1)).mean())


def _gateway(r: pd.DataFrame) -> pd.Series:
    return r["t_gateway_end"] - r["t_gateway_start"]


def _engine(r: pd.DataFrame) -> pd.Series:
    return r["t_engine_end"] - r["t_engine_arrival"]


def test_calibration_at_the_study_load():
    """A100, 7B, 5 req/s over 4 replicas: TTFT tens of ms, TPOT ~10-15 ms (CALIBRATION.md)."""
    pre, _ = _req(_run(None))
    assert 0.02 < _ttft(pre) < 0.1
    assert 0.010 < _itl(pre) < 0.015


def test_more_load_raises_ttft_and_kv_usage():
    light, heavy = _run(None, rate=5.0), _run(None, rate=30.0)
    assert _ttft(_req(heavy)[0]) > _ttft(_req(light)[0]) * 1.05
    kv = [np.mean([_col(s, f"{r}_kv_cache_usage_perc")[0] for r in (TARGET, *PEERS)]) for s in (light, heavy)]
    assert kv[1] > 2.0 * kv[0]
    assert _itl(_req(heavy)[0]) > _itl(_req(light)[0])


def test_power_cap_lowers_the_clock_and_slows_decode_on_that_replica_only():
    sim = _run("gpu")
    clock = _col(sim, f"{TARGET}_sm_clock")
    assert clock[1] < 0.8 * clock[0]
    power = _col(sim, f"{TARGET}_power_usage")
    assert power[1] == pytest.approx(150.0, abs=8.0) and power[0] > 160.0
    pre, post = _req(sim, TARGET)
    assert _itl(post) > 1.05 * _itl(pre)  # visible...
    assert _itl(post) < 1.6 * _itl(pre)  # ...but not trivially huge at 37.5 % of TDP
    assert _ttft(post) > 1.2 * _ttft(pre)  # prefill is compute-bound: it scales with the clock
    for peer in PEERS:
        assert _col(sim, f"{peer}_sm_clock")[1] == pytest.approx(_col(sim, f"{peer}_sm_clock")[0], rel=0.02)
        a, b = _req(sim, peer)
        assert _itl(b) == pytest.approx(_itl(a), rel=0.04)
    util = _col(sim, f"{TARGET}_ctn_gpu")
    assert util[1] >= util[0] - 1.0  # the kernels take longer: utilisation stays high or rises


def test_power_cap_shape_is_flat_then_steep():
    """Decode barely moves at a mild cap and degrades much more at a deep one (CALIBRATION.md)."""
    slowdown = {}
    for frac in (0.6, 0.3):
        sim = run(SimConfig(), Injection("gpu", TARGET, {"power_limit_frac": frac}), 3)
        pre, post = _req(sim, TARGET)
        slowdown[frac] = _itl(post) / _itl(pre)
    assert slowdown[0.6] < 1.05
    assert slowdown[0.3] > slowdown[0.6] + 0.15


def test_cpu_stress_slows_the_target_and_idles_its_gpu():
    sim = _run("cpu")
    cpu = _col(sim, f"{TARGET}_ctn_cpu")
    assert cpu[1] == pytest.approx(SimConfig().pod_cpu, rel=0.05)  # saturated at the container's limit
    assert cpu[0] < 3.0
    pre, post = _req(sim, TARGET)
    assert _ttft(post) > 1.1 * _ttft(pre)
    assert _itl(post) > 1.1 * _itl(pre)
    util = _col(sim, f"{TARGET}_ctn_gpu")
    assert util[1] < util[0] - 5.0
    for peer in PEERS:
        assert _col(sim, f"{peer}_ctn_cpu")[1] < 3.0


def test_network_delay_shows_at_the_callers_not_in_the_engine():
    sim = _run("network", mesh_quantiles="exact")  # the delay's size is read off exact mesh quantiles
    delay = 1.0
    pre, post = _req(sim)
    share = float((post["replica"] == TARGET).mean())
    assert 0.1 < share < 0.3  # least-loaded routing shifts some load away from the slow replica
    # Per request, the time spent outside the engine: output-length spread cancels out.
    outside = float((_gateway(post) - _engine(post)).mean() - (_gateway(pre) - _engine(pre)).mean())
    assert outside == pytest.approx(share * delay, rel=0.2)
    p90 = _col(sim, "nginx-proxy_latency")
    assert p90[1] - p90[0] > 0.5 * 1000 * delay  # share > 10 %: the gateway's p90 moves by ~ the delay (ms)
    mesh = _col(sim, f"{TARGET}_latency")
    assert mesh[1] - mesh[0] == pytest.approx(1000 * delay, rel=0.25)
    a, b = _req(sim, TARGET)
    assert _ttft(b) == pytest.approx(_ttft(a), rel=0.15)  # the engine barely moves
    assert _itl(b) == pytest.approx(_itl(a), rel=0.05)
    client = b["t_proxy_end"] - b["t_send"]
    assert float((client - _engine(b)).mean()) > 0.8 * delay  # the proxy's CLIENT span carries it


def test_network_delay_towards_the_head_delays_every_request():
    sim = _run("network", target="ray-head")
    pre, post = _req(sim)

    def outside_engine(r: pd.DataFrame) -> pd.Series:
        return _gateway(r) - _engine(r)

    assert float(outside_engine(pre).max()) < 0.1
    assert float(outside_engine(post).min()) > 0.8  # nothing gets through without it
    remote = post[post["replica"] != "ray-head"]
    assert float(outside_engine(remote).mean()) > 1.7  # in towards the proxy, and the replica's stream back


def test_memory_hog_adds_its_size_to_the_working_set():
    sim = _run("memory")
    mem = _col(sim, f"{TARGET}_ctn_memory")
    assert mem[1] - mem[0] == pytest.approx(8e9, rel=0.04)
    for peer in PEERS:
        a, b = _col(sim, f"{peer}_ctn_memory")
        assert abs(b - a) < 0.2e9
    pre, post = _req(sim, TARGET)
    assert _itl(post) == pytest.approx(_itl(pre), rel=0.05)  # far from the limit: latency moves little


def test_memory_hog_over_the_limit_is_oom_killed():
    sim = run(SimConfig(), Injection("memory", TARGET, {"size_gb": 14.0}), 3)
    ev = sim.record.events
    assert (ev["kind"] == "oom").sum() == 1
    limit = SimConfig().pod_memory_gib * 1024**3
    assert float(sim.metrics[f"{TARGET}_ctn_memory"].max()) < limit


def test_no_fault_gives_stationary_series():
    sim = _run(None)
    m = sim.metrics
    n = len(m)
    study = [c for c in m.columns if c.split("_", 1)[-1] in ("ctn_cpu", "ctn_memory", "ctn_gpu", "latency")]
    for c in study:
        x = m[c].to_numpy()
        first, last = x[n // 6: n // 2], x[n // 2:]
        iqr = np.subtract(*np.nanpercentile(x[n // 6:], [75, 25]))
        scale = max(iqr, 1e-3 * abs(np.nanmedian(x)))
        assert abs(np.nanmedian(last) - np.nanmedian(first)) < 2.0 * scale, c
    assert (sim.record.requests["status"] == "OK").all()


def test_every_fault_lifts_the_gateway_sli_only_where_it_should():
    base = _col(_run(None), "nginx-proxy_latency")
    for fault in ("cpu", "network", "gpu"):
        pre, post = _col(_run(fault), "nginx-proxy_latency")
        assert post > pre, fault
    pre, post = _col(_run("memory"), "nginx-proxy_latency")
    assert abs(post - pre) < 0.05 * base[0]


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_same_seed_same_bytes(tmp_path):
    cfg = SimConfig(duration=120.0, inject_at=60.0, fault_duration=30.0)
    fault = Injection("cpu", TARGET)
    a = save_case(simulate(cfg, fault, seed=11), tmp_path / "a")
    b = save_case(simulate(cfg, fault, seed=11), tmp_path / "b")
    c = save_case(simulate(cfg, fault, seed=12), tmp_path / "c")
    assert _digest(a) == _digest(b)
    assert _digest(a)["metrics.parquet"] != _digest(c)["metrics.parquet"]
