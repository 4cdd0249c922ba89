"""What one simulated run produced, before it becomes telemetry: per-request stage times and notable events.

The simulator core writes a :class:`SimRecord`; ``llmrca.sim.traces`` and ``llmrca.sim.logs`` turn it into spans
and log lines, ``llmrca.sim.metrics`` (from the core's own state) into the metrics table. The column list below is
the contract between them (see the module docs of ``traces``/``logs``); columns may be added, never renamed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from llmrca.case import Topology

# Per-request columns and their dtypes. Times are unix seconds; NaN where a stage never happened.
REQUEST_COLUMNS: dict[str, str] = {
    "request_id": "int64",  # 0..n-1 in arrival order
    "trace_id": "object",  # 32 hex characters, seeded
    "replica": "object",  # the replica service it was routed to
    "prompt_tokens": "int64",
    "output_tokens": "int64",  # tokens produced (< max_tokens on EOS, error or timeout)
    "max_tokens": "int64",  # requested
    "t_gateway_start": "float64",  # the request reaches nginx-proxy
    "t_proxy_start": "float64",  # it reaches the Serve HTTP proxy
    "t_send": "float64",  # the proxy starts the call to the replica (CLIENT span start, after routing)
    "t_engine_arrival": "float64",  # it reaches the replica (after any network delay towards it)
    "t_scheduled": "float64",  # it first leaves the engine's waiting queue
    "t_first_token": "float64",  # first output token produced by the engine
    "t_engine_end": "float64",  # last token produced by the engine (or the failure)
    "t_proxy_end": "float64",  # the proxy has the end of the replica's stream (CLIENT span end)
    "t_gateway_end": "float64",  # nginx sends the last byte to the client
    "prefill_s": "float64",  # time in model prefill, recomputation after preemption included
    "decode_s": "float64",  # time in model decode
    "queue_s": "float64",  # t_scheduled - t_engine_arrival (tokenization included, as vLLM counts it)
    "num_preemptions": "int64",
    "status": "object",  # "OK" or "ERROR"
    "http_status": "int64",  # nginx's status: 200 (also a stream cut by its read timeout), or 500/502/504
    "error": "object",  # "" or a short reason (UPSTREAM_TIMEOUT where nginx's read timeout fired)
    # Added by the core beyond the first contract (see /tmp/sim_contract.md notes):
    "t_ready": "float64",  # tokenized and handed to the engine core (the engine's waiting queue)
    "t_proxy_server_end": "float64",  # the proxy has forwarded the last chunk to nginx (its SERVER span end)
    "finished_reason": "object",  # "length" (hit max_tokens), "stop" (EOS) or "" on error
    "streamed_tokens": "int64",  # tokens the client received: output_tokens, those before the cut, or 0
}

# The error of a request on which nginx's proxy_read_timeout fired. With ``http_status`` 504 nginx never had the
# response header; with 200 the header (and maybe tokens) had gone out and nginx cut the stream.
UPSTREAM_TIMEOUT = "upstream timed out"

EVENT_COLUMNS = ("time", "service", "kind", "fields")

# Event kinds the core emits (service, fields):
#   engine_stats   replica; prompt_tps, gen_tps, running, waiting, swapped, kv_usage_perc, prefix_cache_hit_rate
#   preemption     replica; request_id, num_preempted
#   fault_start    target;  type, params, inject_time (when the fault's manifest was created), injector
#   fault_end      target;  type, params
#   oom            target;  by ("kernel"), process, bytes
#   replica_health replica; ok
#   engine_dead    replica; xid (the GPU error that killed it) or reason
#   gpu_xid        replica; xid (the driver's Xid, logged by the kernel of the replica's node)
EVENT_KINDS = ("engine_stats", "preemption", "fault_start", "fault_end", "oom", "replica_health", "engine_dead",
               "gpu_xid")


@dataclass
class SimRecord:
    requests: pd.DataFrame  # REQUEST_COLUMNS, one row per request that started inside the observed window
    events: pd.DataFrame  # EVENT_COLUMNS; `fields` holds JSON-serialisable dicts
    topology: Topology
    start: float  # unix s of t=0 (the observed window's start)
    duration: float  # seconds
    seed: int
    config: dict[str, Any]  # the SimConfig as a plain dict (its "model" is the served model's name)
    # Added fields (defaults keep the first contract's constructor valid):
    gateway: str = "nginx-proxy"
    proxy: str = "ray-head"  # the service whose pod runs the Serve HTTP proxy
    model_name: str = ""
    fault: dict[str, Any] | None = None  # the injection as in case.json's `fault`, None for a normal run
    extra: dict[str, Any] = field(default_factory=dict)


def empty_requests() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in REQUEST_COLUMNS.items()})


def empty_events() -> pd.DataFrame:
    return pd.DataFrame({"time": pd.Series(dtype="float64"), "service": pd.Series(dtype="object"),
                         "kind": pd.Series(dtype="object"), "fields": pd.Series(dtype="object")})


def events_frame(rows: list[tuple[float, str, str, dict[str, Any]]]) -> pd.DataFrame:
    """Events sorted by time (stable, so equal times keep their emission order)."""
    if not rows:
        return empty_events()
    t = np.array([r[0] for r in rows], dtype=float)
    order = np.argsort(t, kind="stable")
    fields = np.empty(len(rows), dtype=object)
    fields[:] = [rows[i][3] for i in order]
    return pd.DataFrame({
        "time": t[order],
        "service": np.array([rows[i][1] for i in order], dtype=object),
        "kind": np.array([rows[i][2] for i in order], dtype=object),
        "fields": fields,
    })
