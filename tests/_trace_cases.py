"""Cases shared by the trace and multi-source method tests: simulated runs (cached per test process) and small
hand-built span tables with a known culprit."""

from __future__ import annotations

import json
from functools import cache

import numpy as np
import pandas as pd

from llmrca.case import Case, Observation, Topology
from llmrca.case.schema import TRACE_COLUMNS, coerce, empty_logs

T0 = 1_700_000_000.0
SHORT = {"duration": 240.0, "inject_at": 165.0}  # the demo suite's run: 33 rows before the fault, 15 after


@cache
def simulated(fault: str, target: str, seed: int = 0, **params: float) -> Case:
    """One short simulated run (metrics, traces, logs) with ``fault`` on ``target``."""
    from llmrca.faults import Injection
    from llmrca.sim import SimConfig, simulate

    return simulate(SimConfig(**SHORT), fault=Injection(fault, target, params=dict(params)), seed=seed)


def chain_traces(n: int = 400, *, slow_from: float | None = None, slow_s: float = 0.5,
                 slow_share: float = 0.5, error_from: float | None = None, seed: int = 0,
                 peer: bool = False) -> pd.DataFrame:
    """Traces of ``gw → api → {db | cache}`` (``db`` in every other trace), one per second from ``T0``.

    From ``slow_from`` on, ``slow_share`` of the traces through ``db`` take ``slow_s`` longer in db (and so in
    its callers); from ``error_from`` on, those db spans fail instead. ``peer``: api's call to the backend is
    an OTel CLIENT span naming its peer, and the extra time is spent on the wire (db's own span stays fast).
    """
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        t = T0 + i
        tid = f"{i:032x}"
        backend = "db" if i % 2 == 0 else "cache"
        base = {"db": 0.05, "cache": 0.01}[backend] * (1 + 0.1 * rng.standard_normal())
        hit = backend == "db" and rng.random() < slow_share
        extra = slow_s if (slow_from is not None and t >= slow_from and hit) else 0.0
        fail = error_from is not None and t >= error_from and hit
        wire = extra if peer else 0.0
        own = base + (0.0 if peer else extra)
        api = own + wire + 0.01 * (1 + 0.1 * rng.standard_normal())
        gw = api + 0.005 * (1 + 0.1 * rng.standard_normal())
        spans = [("g", None, "gw", "GET /", 0.0, gw, "OK", None),
                 ("a", "g", "api", "handle", 0.002, api, "OK", None)]
        if peer:
            attrs = json.dumps({"span.kind": "CLIENT", "peer.service": backend})
            spans.append(("c", "a", "api", "call", 0.004, own + wire, "OK", attrs))
            spans.append(("b", "c", backend, "query", 0.004 + wire, own, "ERROR" if fail else "OK", None))
        else:
            spans.append(("b", "a", backend, "query", 0.004, own, "ERROR" if fail else "OK", None))
        for sid, par, svc, op, off, dur, status, attrs in spans:
            rows.append({"trace_id": tid, "span_id": f"{i:08x}{sid}", "parent_span_id": None if par is None
                         else f"{i:08x}{par}", "service": svc, "operation": op,
                         "start_time_us": round((t + off) * 1e6), "duration_us": round(dur * 1e6),
                         "status": status, "http_status": None, "attributes": attrs})
    return coerce(pd.DataFrame(rows), TRACE_COLUMNS, "chain traces")


def chain_observation(traces: pd.DataFrame, inject: float, *, metrics: bool = True,
                      n: int = 400) -> Observation:
    """``traces`` with flat metrics (one column per service, 5 s grid) and the topology of the chain."""
    t = T0 + 5.0 * np.arange(n // 5)
    rng = np.random.default_rng(1)
    m = pd.DataFrame({"time": t, **{f"{s}_cpu": 1 + 0.01 * rng.standard_normal(len(t))
                                    for s in ("gw", "api", "db", "cache")}})
    topo = Topology(services=("gw", "api", "db", "cache"),
                    edges=(("gw", "api"), ("api", "db"), ("api", "cache")), entry="gw")
    return Observation(metrics=m if metrics else m[["time"]], traces=traces, logs=empty_logs(),
                       inject_time=inject, topology=topo)
