"""Calibration: the same scenario on the live testbed (real vLLM, or the emulated engine) and in the simulator.

    PYTHONPATH=$PWD/src /tmp/vv/bin/python benchmarks/calibrate_vllm.py --engine vllm --out calib.json

Scenario (``scenario``): 2 replicas of llmrca/tiny-llama on the CPU device (one core each), 2 req/s of 128/64-token
streaming chat, 1 s scrapes, 5 s rate windows. Phases, each a window of ``--normal`` s, then the fault for
``--fault`` s, then ``--recovery`` s: CPU stress at two levels on the first replica (``cpu`` with 16 and 48
deployed workers, scaled to this machine as every live fault is), then a second deployment with a 2,048-token KV
cache per replica under a load that overfills it (no fault: the pressure is the deployment's). The simulator runs
each phase with the same deployment, the live run's pod CPU limit, the live fault's applied (scaled) parameters
and the same seed. Printed side by side, per phase and part (pre = before the fault, fault = while it acts):

* TTFT, ITL, e2e mean (from the histograms' sum/count) and p50/p90/p99 (histogram_quantile over the part, on the
  live histogram's bucket bounds for both sides), generation throughput (tokens/s), preemptions, requests;
* the pre-fault coefficient of variation of every study-view series (``llmrca.case.views``), as collected by
  llmrca's own collector (live) or built by the simulator (sim);
* each fault's effect size: fault/pre ratio of the mean and ``(mean_fault - mean_pre) / sd_pre`` of the fault's
  indicator series and of the latency and throughput series.

The JSON (``--out``) holds every number, the machine's load average before and after, and the live scaling.
With ``--engine emulated`` the live side is llmrca's emulated engine (the simulator's model run in real time):
that tests the benchmark, it calibrates nothing (it would compare the simulator with itself).
With ``--sim-only FIXTURE`` no testbed starts: the simulator side is recomputed against a stored run's live side
(e.g. ``benchmarks/data/calib-vllm-2026-12-07.json``) and the same table printed; ``--out`` then also keeps the
stored simulator columns as ``sim_before``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llmrca.case import TIME
from llmrca.case.views import columns as view_columns
from llmrca.deploy.config import DeployConfig
from llmrca.faults import Injection
from llmrca.sim import run as simrun
from llmrca.sim.hardware import model_spec
from llmrca.testbed.rundir import TestbedError

HISTOGRAMS = {"ttft": "vllm:time_to_first_token_seconds", "itl": "vllm:inter_token_latency_seconds",
              "e2e": "vllm:e2e_request_latency_seconds"}
QS = (0.5, 0.9, 0.99)
# Series whose fault/pre change the table shows besides the fault's indicator (replica-summed or -averaged).
EFFECT_SERIES = ("ctn_cpu", "latency", "generation_tokens", "time_to_first_token_seconds_p50",
                 "inter_token_latency_seconds_p50", "e2e_request_latency_seconds_p50", "num_preemptions")


def scenario(engine: str, *, kv_cache_tokens: int | None = None, rate: float = 2.0, users: int = 8,
             prompt: int = 128, output: int = 64, duration: float = 100.0, inject_at: float = 40.0,
             fault: float = 40.0) -> DeployConfig:
    """The calibration deployment (the live run's timing: a case is ``duration`` s, the fault at ``inject_at``)."""
    return DeployConfig(replicas=2, gpu="cpu", model="llmrca/tiny-llama", engine=engine, gpus_per_node=2,
                        rate=rate, users=users, prompt_tokens=prompt, output_tokens=output, eos_share=0.0,
                        max_num_seqs=64, max_num_batched_tokens=2048, block_size=32, step=1.0, rate_window=5.0,
                        duration=duration, warmup=30.0, inject_at=inject_at, fault_duration=fault,
                        kv_cache_tokens=kv_cache_tokens)


# ------------------------------------------------------------------------------------------------ statistics
def hist_quantile(bounds: np.ndarray, counts: np.ndarray, q: float) -> float:
    """Prometheus' histogram_quantile on one histogram (``counts`` per bucket, the last one +Inf)."""
    total = counts.sum()
    if total <= 0:
        return math.nan
    cum = np.cumsum(counts)
    b = int(np.argmax(cum >= q * total - 1e-12))
    if b >= len(bounds):
        return float(bounds[-1])
    lo = 0.0 if b == 0 else float(bounds[b - 1])
    before = 0.0 if b == 0 else float(cum[b - 1])
    return lo + (float(bounds[b]) - lo) * (q * total - before) / counts[b] if counts[b] > 0 else float(bounds[b])


def latency_stats(bounds: np.ndarray, counts: np.ndarray, total: float, n: float) -> dict[str, float]:
    out = {"mean": total / n if n > 0 else math.nan, "count": float(n)}
    for q in QS:
        out[f"p{round(100 * q)}"] = hist_quantile(bounds, counts, q)
    return out


def series_of(metrics: pd.DataFrame, metric: str) -> pd.Series | None:
    """One series per deployment: the sum over services of ``<svc>_<metric>`` (rates, CPU) or their mean
    (latencies), the way the table reads it; None when no service has it."""
    cols = [c for c in metrics.columns if c != TIME and c.split("_", 1)[-1] == metric]
    cols = [c for c in cols if not c.startswith(("gateway", "nginx"))] or cols
    if not cols:
        return None
    x = metrics[cols]
    return x.mean(axis=1) if ("seconds" in metric or metric == "latency") else x.sum(axis=1, min_count=1)


def canonical(column: str) -> str | None:
    """The name a study-view column is compared under: the live testbed's one node (``node-local``) and the
    simulator's node of the replicas (``node-gpu-0``) are both ``node``; the simulator's gateway node (its own
    machine in the modelled cluster, none on the testbed) is left out."""
    svc, metric = column.split("_", 1)
    if svc.startswith("node-cpu"):
        return None
    return f"node_{metric}" if svc.startswith("node-") else column


def study_cv(metrics: pd.DataFrame, t_inject: float) -> dict[str, float]:
    """Pre-fault coefficient of variation (sd / |mean|) of every study-view column."""
    pre = metrics[metrics[TIME] < t_inject]
    out = {}
    for c in view_columns([c for c in metrics.columns if c != TIME], "study"):
        x = pre[c].dropna().to_numpy(dtype=float)
        name = canonical(c)
        if name and len(x) > 2 and abs(x.mean()) > 0:
            out[name] = float(x.std(ddof=1) / abs(x.mean()))
    return out


def effect_sizes(metrics: pd.DataFrame, t_inject: float, t_end: float, indicator: str | None
                 ) -> dict[str, dict[str, float]]:
    pre = metrics[TIME] < t_inject
    during = (metrics[TIME] >= t_inject + 5.0) & (metrics[TIME] < t_end)  # past the first rate window
    out = {}
    names = ([indicator] if indicator and indicator in metrics else []) + list(EFFECT_SERIES)
    for name in names:
        s = metrics[name] if name in metrics else series_of(metrics, name)
        if s is None:
            continue
        a, b = s[pre].dropna().to_numpy(float), s[during].dropna().to_numpy(float)
        if len(a) < 3 or not len(b):
            continue
        sd = a.std(ddof=1)
        out[name] = {"pre": float(a.mean()), "fault": float(b.mean()),
                     "ratio": float(b.mean() / a.mean()) if a.mean() else math.nan,
                     # a series flat before the fault (a histogram quantile stuck in one bucket) has no z
                     "z": float((b.mean() - a.mean()) / sd) if sd > 1e-9 * abs(a.mean()) else math.nan}
    return out


# ------------------------------------------------------------------------------------------------ live side
class Live:
    """Phase numbers straight from the testbed's Prometheus (increase over a part of the window)."""

    def __init__(self, state: dict[str, Any]):
        from llmrca.testbed.prometheus import PromClient

        self.prom = PromClient(f"http://127.0.0.1:{state['ports']['prometheus']}")
        self.bounds: dict[str, np.ndarray] = {}

    def _scalar(self, expr: str, t: float) -> float:
        res = self.prom.query(expr, t)
        return float(sum(float(r["value"][1]) for r in res)) if res else 0.0

    def part(self, t0: float, t1: float) -> dict[str, Any]:
        w = f"{max(1, round(t1 - t0))}s"
        out: dict[str, Any] = {}
        for key, h in HISTOGRAMS.items():
            res = self.prom.query(f"sum by (le) (increase({h}_bucket[{w}]))", t1)
            le = sorted(((float(r["metric"]["le"]), float(r["value"][1])) for r in res), key=lambda x: x[0])
            bounds = np.array([b for b, _ in le if math.isfinite(b)])
            cum = np.array([c for _, c in le])
            counts = np.diff(np.concatenate([[0.0], cum])) if len(cum) else np.zeros(1)
            self.bounds[key] = bounds
            out[key] = latency_stats(bounds, counts, self._scalar(f"sum(increase({h}_sum[{w}]))", t1),
                                     self._scalar(f"sum(increase({h}_count[{w}]))", t1))
        span = t1 - t0
        out["gen_tps"] = self._scalar(f"sum(increase(vllm:generation_tokens_total[{w}]))", t1) / span
        out["prompt_tps"] = self._scalar(f"sum(increase(vllm:prompt_tokens_total[{w}]))", t1) / span
        out["preemptions"] = self._scalar(f"sum(increase(vllm:num_preemptions_total[{w}]))", t1)
        out["requests"] = self._scalar(f"sum(increase(vllm:request_success_total[{w}]))", t1)
        n = self._scalar(f"sum(increase(vllm:request_prompt_tokens_count[{w}]))", t1)
        out["prompt_per_request"] = self._scalar(f"sum(increase(vllm:request_prompt_tokens_sum[{w}]))", t1) / n \
            if n > 0 else math.nan
        return out


def live_phases(cfg: DeployConfig, faults: list[tuple[str, dict[str, Any]]], run_dir: Path, seed: int,
                timeout: float) -> dict[str, Any]:
    """Bring a testbed up, run one case per fault (or one fault-free case), collect, bring it down."""
    from llmrca.testbed import control
    from llmrca.testbed.collector import collect_case
    from llmrca.testbed.config import TestbedConfig

    tb = TestbedConfig(deploy=cfg, seed=seed)
    out: dict[str, Any] = {"cases": []}
    t_up = time.time()
    with control.running(tb, run_dir, timeout=timeout) as st:
        out["up_s"] = time.time() - t_up
        out["scaling"] = st.get("scaling")
        live = Live(st)
        target = st["replicas"][0]
        time.sleep(cfg.warmup)
        for fault, params in faults or [(None, {})]:
            t0 = time.time()
            time.sleep(cfg.inject_at)
            rec: dict[str, Any] = {}
            if fault:
                rec = control.inject(fault, target, cfg.fault_duration, params, run_dir)
            else:
                time.sleep(cfg.fault_duration)
            t_inj = float(rec.get("inject_time", t0 + cfg.inject_at))
            time.sleep(max(0.0, t0 + cfg.duration - time.time()))
            t1 = t0 + cfg.duration
            time.sleep(2.0 * cfg.step)  # the last scrape of the window lands
            case = collect_case(run_dir, t0, t1, traces=False, logs=False)
            out["cases"].append({
                "fault": fault, "target": target, "record": rec, "t0": t0, "t_inject": t_inj,
                "t_fault_end": t_inj + cfg.fault_duration, "metrics": case.observation.metrics,
                "indicator": case.truth.indicator,
                "parts": {"pre": live.part(t0, t_inj), "fault": live.part(t_inj, t_inj + cfg.fault_duration)},
            })
        out["bounds"] = {k: v.tolist() for k, v in live.bounds.items()}
    return out


# ------------------------------------------------------------------------------------------------- sim side
def sim_case(cfg: DeployConfig, fault: str | None, target: str, params: dict[str, Any], seed: int,
             bounds: dict[str, list[float]]) -> dict[str, Any]:
    inj = Injection(fault, target, dict(params)) if fault else None
    sim = simrun.run(cfg, inj, seed)
    start = sim.record.start
    t_inj = start + cfg.inject_at
    t_end = t_inj + cfg.fault_duration
    req = sim.record.requests
    ok = req["http_status"].to_numpy() == 200
    arr = req["t_engine_arrival"].to_numpy()
    tf = req["t_first_token"].to_numpy()
    te = req["t_engine_end"].to_numpy()
    obs = [e.observations() for e in sim.engines.values()]
    logs = [e.log.arrays() for e in sim.engines.values()]

    def part(a: float, b: float) -> dict[str, Any]:
        out: dict[str, Any] = {}
        m = np.isfinite(tf) & (tf >= a) & (tf < b)
        itl_t = np.concatenate([o["itl_t"] for o in obs]) + start
        itl_v = np.concatenate([o["itl_v"] for o in obs])
        itl_w = np.concatenate([o["itl_w"] for o in obs])
        mi = (itl_t >= a) & (itl_t < b)
        me = ok & (te >= a) & (te < b)
        for key, v, w in (("ttft", (tf - arr)[m], None), ("itl", itl_v[mi], itl_w[mi]), ("e2e", (te - arr)[me], None)):
            bd = np.asarray(bounds.get(key) or [], dtype=float)
            ww = np.ones(len(v)) if w is None else w
            counts = np.bincount(np.searchsorted(bd, v, side="left"), weights=ww, minlength=len(bd) + 1)
            out[key] = latency_stats(bd, counts, float((v * ww).sum()), float(ww.sum())) if len(bd) else {
                "mean": float((v * ww).sum() / ww.sum()) if ww.sum() else math.nan, "count": float(ww.sum())}
        gen = pre_ = prompt = req_n = 0.0
        for lg in logs:
            t = lg["t"] + start
            sel = (t > a) & (t <= b)
            gen += float(lg["gen_tokens"][sel].sum())
            prompt += float(lg["prompt_tokens"][sel].sum())
            c = lg["preemptions"]
            pre_ += float(np.interp(b, t, c) - np.interp(a, t, c))
        req_n = float(me.sum())
        out.update(gen_tps=gen / (b - a), prompt_tps=prompt / (b - a), preemptions=pre_, requests=req_n,
                   prompt_per_request=float(req["prompt_tokens"].to_numpy()[me].mean()) if me.any() else math.nan)
        return out

    return {"fault": fault, "target": target, "params": params, "t0": start, "t_inject": t_inj,
            "t_fault_end": t_end, "metrics": sim.metrics, "indicator": sim.truth.indicator,
            "parts": {"pre": part(start, t_inj), "fault": part(t_inj, t_end)}}


# ------------------------------------------------------------------------------------------------ the table
def summary(case: dict[str, Any]) -> dict[str, Any]:
    m = case["metrics"]
    return {"parts": case["parts"], "cv": study_cv(m, case["t_inject"]),
            "effects": effect_sizes(m, case["t_inject"], case["t_fault_end"], case["indicator"]) if case["fault"]
            else {}}


def _f(x: float) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:.4g}"


def print_phase(name: str, live: dict[str, Any], sim: dict[str, Any]) -> None:
    print(f"\n== {name}")
    print(f"{'':22s}{'live pre':>12s}{'sim pre':>12s}{'live fault':>12s}{'sim fault':>12s}")
    rows = [(f"{k} {s} (ms)", k, s, 1e3) for k in HISTOGRAMS for s in ("mean", "p50", "p90", "p99")]
    rows += [("gen tokens/s", "gen_tps", None, 1.0), ("prompt tokens/s", "prompt_tps", None, 1.0),
             ("prompt tokens/request", "prompt_per_request", None, 1.0),
             ("preemptions", "preemptions", None, 1.0), ("requests done", "requests", None, 1.0)]
    for label, k, s, scale in rows:
        vals = []
        for part in ("pre", "fault"):
            for side in (live, sim):
                v = side["parts"][part].get(k, math.nan)
                vals.append((v.get(s, math.nan) if s else v) * scale)
        print(f"{label:22s}" + "".join(f"{_f(v):>12s}" for v in vals))
    if live["effects"] or sim["effects"]:
        print(f"{'effect (fault/pre, z)':36s}{'live':>18s}{'sim':>18s}")
        for k in dict.fromkeys([*live["effects"], *sim["effects"]]):
            cell = [f"{_f(e[k]['ratio'])} / {_f(e[k]['z'])}" if k in e else "-" for e in (live["effects"],
                                                                                        sim["effects"])]
            print(f"  {k:34s}{cell[0]:>18s}{cell[1]:>18s}")
    print(f"{'pre-fault CV (study view)':36s}{'live':>10s}{'sim':>10s}")
    for k in sorted(set(live["cv"]) | set(sim["cv"])):
        print(f"  {k:34s}{_f(live['cv'].get(k, math.nan)):>10s}{_f(sim['cv'].get(k, math.nan)):>10s}")


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items() if not isinstance(v, pd.DataFrame)}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def sim_only(fixture: Path, out: Path | None) -> dict[str, Any]:
    """Recompute every phase's simulator column against a stored run's live one (its config, parameters, bounds).

    The live side is the fixture's as it was measured; the simulator side is today's code. Returns the result
    in the benchmark's JSON layout (also written to ``out``)."""
    stored = json.loads(fixture.read_text())
    result: dict[str, Any] = {**{k: v for k, v in stored.items() if k != "phases"}, "sim_only": str(fixture),
                              "phases": {}}
    for label, ph in stored["phases"].items():
        if "error" in ph:
            continue
        cfg = DeployConfig.from_dict(ph["config"])
        fault = ph["live_record"].get("fault") if ph.get("sim_params") else None
        target = ph["live_record"].get("target") or ""
        s = sim_case(cfg, fault, target, ph.get("sim_params") or {}, int(stored.get("seed", 0)), ph["bounds"])
        ss = summary(s)
        print_phase(label, ph["live"], ss)
        result["phases"][label] = {**ph, "sim": ss, "sim_before": ph["sim"]}
    if out:
        out.write_text(json.dumps(_jsonable(result), indent=1, sort_keys=True))
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", choices=("vllm", "emulated"), default="vllm")
    ap.add_argument("--normal", type=float, default=40.0, help="seconds before each fault")
    ap.add_argument("--fault", type=float, default=40.0, help="seconds each fault lasts")
    ap.add_argument("--recovery", type=float, default=20.0, help="seconds after each fault")
    ap.add_argument("--cpu-workers", default="16,48", help="deployed stress workers of the two CPU levels")
    # vLLM refuses a KV cache that cannot hold one request of the longest length it serves (the testbed passes
    # --max-model-len 4096, the model's context): near the smallest cache it takes, in the CPU's 32-token blocks.
    ap.add_argument("--kv-cache-tokens", type=int, default=4160, help="KV cache of the KV-pressure phase")
    ap.add_argument("--no-kv", action="store_true", help="skip the KV-pressure phase")
    ap.add_argument("--no-match-prompt", dest="match_prompt", action="store_false",
                    help="simulate the scenario's prompt_tokens, not the prompt tokens the live engine counted")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds the testbed may take to come up")
    ap.add_argument("--run-dir", type=Path, help="testbed run folder (default: a fresh temporary one)")
    ap.add_argument("--out", type=Path, help="write every number as JSON here")
    ap.add_argument("--sim-only", type=Path, metavar="FIXTURE",
                    help="no testbed: rerun the simulator side against the live columns stored in this JSON")
    a = ap.parse_args(argv)
    if a.sim_only:
        sim_only(a.sim_only, a.out)
        return
    timing = {"duration": a.normal + a.fault + a.recovery, "inject_at": a.normal, "fault": a.fault}
    base = scenario(a.engine, **timing)
    levels = [int(w) for w in a.cpu_workers.split(",") if w]
    phases: list[tuple[str, DeployConfig, list[tuple[str, dict[str, Any]]]]] = [
        ("cpu", base, [("cpu", {"workers": w, "load": 100}) for w in levels])]
    if not a.no_kv:
        phases.append(("kv", scenario(a.engine, kv_cache_tokens=a.kv_cache_tokens, rate=8.0, users=16, prompt=256,
                                      output=128, **timing), []))
    result: dict[str, Any] = {"engine": a.engine, "seed": a.seed, "loadavg_before": os.getloadavg(),
                              "started": time.time(), "model": model_spec("tiny").name, "phases": {}}
    root = a.run_dir or Path(tempfile.mkdtemp(prefix="llmrca-calib-"))
    for name, cfg, faults in phases:
        try:
            lv = live_phases(cfg, faults, root / name, a.seed, a.timeout)
        except TestbedError as e:  # a phase that cannot run live (the engine refused the deployment): say so, go on
            print(f"\n== {name}: the live run failed: {str(e).splitlines()[0]}")
            result["phases"][name] = {"error": str(e)[:2000]}
            continue
        pod_cpu = float((lv.get("scaling") or {}).get("pod_cpu") or cfg.pod_cpu)
        # The simulator sees the live machine: the live pod CPU limit and the live fault's applied parameters; and
        # the prompt as the engine counts it (the load generator writes `prompt_tokens` words; the real tokenizer
        # and chat template make more tokens of them).
        seen = [c["parts"]["pre"].get("prompt_per_request", math.nan) for c in lv["cases"]]
        seen = [x for x in seen if math.isfinite(x)]
        prompt = round(float(np.mean(seen))) if seen and a.match_prompt else cfg.prompt_tokens
        scfg = cfg.with_(pod_cpu=pod_cpu, engine="emulated", prompt_tokens=prompt)
        for c in lv["cases"]:
            applied = c["record"].get("params") or {} if c["fault"] else {}
            params = {k: applied[k] for k in ("workers", "load") if k in applied} if c["fault"] == "cpu" else applied
            s = sim_case(scfg, c["fault"], c["target"], params, a.seed, lv.get("bounds", {}))
            label = f"{name}" + (f" {c['fault']} {params}" if c["fault"] else "")
            ls, ss = summary(c), summary(s)
            print_phase(label, ls, ss)
            result["phases"][label] = {"live": ls, "sim": ss, "live_record": c["record"], "sim_params": params,
                                       "pod_cpu": pod_cpu, "up_s": lv.get("up_s"), "scaling": lv.get("scaling"),
                                       "config": scfg.to_dict(), "bounds": lv.get("bounds"),
                                       "loadavg": os.getloadavg()}
            if a.out:  # after every phase: a later phase's failure keeps what was measured
                a.out.write_text(json.dumps(_jsonable(result), indent=1, sort_keys=True))
    result["loadavg_after"] = os.getloadavg()
    if a.out:
        a.out.write_text(json.dumps(_jsonable(result), indent=1, sort_keys=True))
        print(f"\nwrote {a.out}")


if __name__ == "__main__":
    main()
