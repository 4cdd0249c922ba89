"""The SLI: the symptom graph heads start from. A property of the system (its entry service's latency), never
of the ground truth."""

from __future__ import annotations

from llmrca.case import Observation
from llmrca.errors import MethodError

# Latency metric names in order of preference: study view, RCAEval, mesh/full view.
LATENCY_METRICS = ("latency", "latency-90", "latency-p90", "latency-50", "latency-p50")


def entry_service(obs: Observation) -> str:
    """The entry service from the topology; fall back to the root of the traces' call tree."""
    s = obs.topology.entry_service()
    if s:
        return s
    tr = obs.traces
    if tr is not None and len(tr):
        roots = tr[tr["parent_span_id"].isna() | (tr["parent_span_id"] == "")]["service"].value_counts()
        if len(roots):
            return str(roots.index[0])
    raise MethodError("cannot tell the entry service: the topology names none and there are no root spans")


def sli_column(obs: Observation) -> str:
    """The entry service's latency column, e.g. ``nginx-proxy_latency``."""
    svc = entry_service(obs)
    cols = set(obs.metric_columns)
    for m in LATENCY_METRICS:
        c = f"{svc}_{m}"
        if c in cols:
            return c
    cands = sorted(c for c in cols if c.startswith(f"{svc}_") and "latency" in c)
    if cands:
        return cands[0]
    raise MethodError(f"no latency column for the entry service {svc!r} (looked for {svc}_latency and similar)")
