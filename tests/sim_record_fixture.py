"""Hand-built simulation records for the telemetry tests: every stage time is set here, so tests know the answer."""

from __future__ import annotations

import numpy as np
import pandas as pd

from llmrca.case import Topology
from llmrca.sim.record import SimRecord

START = 1_741_774_500.0
REPLICAS = ("ray-head", "ray-replicas-0", "ray-replicas-1", "ray-replicas-2")
MODEL = "tiiuae/Falcon-H1-7B-Instruct"


def topology() -> Topology:
    hosts = {s: f"node-gpu-{i}" for i, s in enumerate(REPLICAS)} | {"nginx-proxy": "node-cpu-0"}
    services = ("nginx-proxy", *REPLICAS, *sorted(set(hosts.values())))
    edges = [("nginx-proxy", "ray-head")] + [("ray-head", r) for r in REPLICAS[1:]]
    return Topology(services=services, edges=tuple(edges), entry="nginx-proxy", hosts=hosts,
                    replicas={"vllm": list(REPLICAS)})


def make_record(
    n: int = 40,
    seed: int = 7,
    delayed: str | None = None,
    delay_s: float = 1.0,
    failures: bool = True,
    events: bool = True,
    cut: bool = False,
) -> SimRecord:
    """``n`` requests at 5/s over the four replicas in turn; ``delayed`` gains ``delay_s`` on the wire to it.

    With ``failures``: request 3 times out at the gateway (504), request 5 hits a dead engine (500), request 7
    never reaches the proxy (502). With ``cut`` (``n`` > 11): nginx's read timeout cuts two streams whose header had
    gone out (nginx's status 200): request 9 after 40 tokens (its engine stopped), request 11 before its first token.
    """
    rng = np.random.default_rng(seed)
    t0 = START + 1.0 + np.arange(n) * 0.2
    replica = np.array([REPLICAS[i % len(REPLICAS)] for i in range(n)])
    wire = np.where(replica == delayed, delay_s, 0.0003)
    proxy_start = t0 + 0.0005
    send = proxy_start + 0.001
    arrival = send + wire
    ready = arrival + 0.004
    queue = rng.exponential(0.05, n)
    scheduled = ready + queue
    prefill = np.full(n, 0.08)
    decode = np.full(n, 256 * 0.02)
    first = scheduled + prefill
    end = first + decode
    proxy_end = end + wire
    proxy_server_end = proxy_end + 0.0002
    gateway_end = proxy_server_end + 0.0005
    out_tok = np.full(n, 256)
    streamed = out_tok.copy()
    status = np.array(["OK"] * n, dtype=object)
    http = np.full(n, 200)
    error = np.array([""] * n, dtype=object)
    frame = {
        "t_gateway_start": t0, "t_proxy_start": proxy_start, "t_send": send, "t_engine_arrival": arrival,
        "t_scheduled": scheduled, "t_first_token": first, "t_engine_end": end, "t_proxy_end": proxy_end,
        "t_gateway_end": gateway_end, "t_ready": ready, "t_proxy_server_end": proxy_server_end,
    }
    if failures and n > 7:
        # 3: the gateway gives up after 60 s while the engine still works on it.
        for c in ("t_engine_end", "t_proxy_end", "t_proxy_server_end", "t_first_token", "t_scheduled"):
            frame[c][3] = np.nan
        frame["t_gateway_end"][3] = t0[3] + 60.0
        out_tok[3], status[3], http[3], error[3] = 0, "ERROR", 504, "upstream timed out"
        prefill[3] = decode[3] = queue[3] = np.nan
        # 5: the engine dies mid-decode; the proxy returns 500.
        frame["t_engine_end"][5] = first[5] + 1.0
        frame["t_proxy_end"][5] = frame["t_engine_end"][5] + 0.002
        frame["t_proxy_server_end"][5] = frame["t_proxy_end"][5] + 0.0002
        frame["t_gateway_end"][5] = frame["t_proxy_server_end"][5] + 0.0005
        decode[5] = 1.0
        out_tok[5], status[5], http[5], error[5] = 50, "ERROR", 500, "EngineDeadError"
        # 7: the proxy refuses the connection.
        for c in ("t_proxy_start", "t_send", "t_engine_arrival", "t_ready", "t_scheduled", "t_first_token",
                  "t_engine_end", "t_proxy_end", "t_proxy_server_end"):
            frame[c][7] = np.nan
        frame["t_gateway_end"][7] = t0[7] + 0.003
        prefill[7] = decode[7] = queue[7] = np.nan
        out_tok[7], status[7], http[7], error[7] = 0, "ERROR", 502, "connection refused"
        streamed[[3, 5, 7]] = 0
    if cut and n > 11:
        # 9: 40 tokens, then the engine stops; nginx gives up 60 s after the last byte, the engine forgets it.
        stall = first[9] + 40 * 0.02
        # 11: waits in the engine's queue (its header went out at once) until nginx gives up after 60 s.
        for c in ("t_scheduled", "t_first_token"):
            frame[c][11] = np.nan
        for i, last in ((9, stall), (11, ready[11])):
            frame["t_engine_end"][i] = frame["t_gateway_end"][i] = last + 60.0
            frame["t_proxy_end"][i] = frame["t_proxy_server_end"][i] = last + 60.0 + 0.0003
            decode[i] = np.nan
            out_tok[i], status[i], http[i], error[i] = 0, "ERROR", 200, "upstream timed out"
        prefill[11] = queue[11] = np.nan
        streamed[9], streamed[11] = 40, 0
    requests = pd.DataFrame({
        "request_id": np.arange(n, dtype=np.int64),
        "trace_id": [rng.bytes(16).hex() for _ in range(n)],
        "replica": replica,
        "prompt_tokens": np.full(n, 512, dtype=np.int64),
        "output_tokens": out_tok.astype(np.int64),
        "max_tokens": np.full(n, 256, dtype=np.int64),
        **frame,
        "prefill_s": prefill, "decode_s": decode, "queue_s": queue,
        "num_preemptions": np.zeros(n, dtype=np.int64),
        "status": status.astype(str), "http_status": http.astype(np.int64), "error": error.astype(str),
        "finished_reason": np.where(status == "OK", "length", ""),
        "streamed_tokens": streamed.astype(np.int64),
    })
    ev = _events(n) if events else pd.DataFrame({"time": [], "service": [], "kind": [], "fields": []})
    return SimRecord(requests=requests, events=ev, topology=topology(), start=START, duration=360.0, seed=seed,
                     config={"model": MODEL, "seed": seed}, model_name=MODEL)


def _events(n: int) -> pd.DataFrame:
    rows = []
    for k in range(1, 4):
        for i, r in enumerate(REPLICAS):
            rows.append((START + 10.0 * k + 0.01 * i, r, "engine_stats", {
                "prompt_tps": 640.0 + k, "gen_tps": 310.5, "running": 7, "waiting": k - 1, "swapped": 0,
                "kv_usage_perc": 0.123 * k, "prefix_cache_hit_rate": 0.05}))
    # 51 preemptions of requests on ray-replicas-1 (every 4th from request 2): vLLM warns on the 1st and the 51st.
    for j in range(51):
        rows.append((START + 12.0 + 0.01 * j, "ray-replicas-1", "preemption",
                     {"request_id": 2 + 4 * (j % max((n - 2) // 4 + 1, 1)), "num_preempted": 1}))
    rows.append((START + 15.0, "ray-replicas-2", "fault_start", {"type": "cpu", "params": {"workers": 16}}))
    rows.append((START + 25.0, "ray-replicas-2", "fault_end", {"type": "cpu"}))
    rows.append((START + 16.0, "ray-replicas-0", "fault_start", {"type": "gpu", "params": {"power_limit_w": 150}}))
    rows.append((START + 17.0, "ray-replicas-1", "fault_start", {"type": "gpu-xid", "params": {"xid": 79}}))
    rows.append((START + 17.2, "ray-replicas-1", "engine_dead", {"reason": "xid 79"}))
    rows.append((START + 18.0, "ray-replicas-1", "replica_health", {"ok": False}))
    rows.append((START + 48.0, "ray-replicas-1", "replica_health", {"ok": True, "load_s": 30.0}))
    rows.append((START + 20.0, "ray-replicas-0", "oom", {"by": "kernel", "process": "memStress", "bytes": 8e9}))
    ev = pd.DataFrame(rows, columns=["time", "service", "kind", "fields"])
    return ev.sort_values("time", kind="stable").reset_index(drop=True)
