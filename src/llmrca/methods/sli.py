"""The SLI: the symptom graph heads start from. A property of the system (its entry service's latency), never
of the ground truth."""

from __future__ import annotations

from collections.abc import Sequence

from llmrca.case import Observation, service_of
from llmrca.errors import MethodError

# Latency metric names in order of preference: study view, RCAEval, then the mesh's p90 under its full-view name
# (the same series as the study view's `latency`: latency of requests *to* the service, as the caller sees it).
# The mesh series comes before an engine's own `*latency*` histograms (vLLM's e2e_request_latency_seconds): those
# are measured inside the server and miss what happens on the way to it (a delayed link, a queue in front).
LATENCY_METRICS = ("latency", "latency-90", "latency-p90", "request_duration_milliseconds_p90", "latency-50",
                   "latency-p50", "request_duration_milliseconds_p50")


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


def latency_column(service: str, columns: Sequence[str]) -> str | None:
    """The service's latency series: the names of ``LATENCY_METRICS`` in that order, else a ``*latency*`` series,
    else a ``*duration*`` one (mesh histograms: ``request_duration_milliseconds_p90``); p90 first, then by name."""
    have = set(columns)
    for m in LATENCY_METRICS:
        if f"{service}_{m}" in have:
            return f"{service}_{m}"
    own = [c for c in columns if service_of(c) == service]
    for word in ("latency", "duration"):
        cands = sorted((c for c in own if word in c.split("_", 1)[1]), key=lambda c: ("90" not in c, c))
        if cands:
            return cands[0]
    return None


def sli_column(obs: Observation) -> str:
    """The entry service's latency column, e.g. ``nginx-proxy_latency``."""
    svc = entry_service(obs)
    col = latency_column(svc, obs.metric_columns)
    if col is None:
        raise MethodError(f"no latency column for the entry service {svc!r} (looked for {svc}_latency, "
                          "*latency* and *duration* series)")
    return col
