"""The SLI: the symptom graph heads start from. A property of the system (its entry service's latency), never
of the ground truth."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from llmrca.case import TIME, Observation, service_of
from llmrca.errors import MethodError

# Latency metric names in order of preference: study view, RCAEval, then the mesh's p90 under its full-view name
# (the same series as the study view's `latency`: latency of requests *to* the service, as the caller sees it).
# The mesh series comes before an engine's own `*latency*` histograms (vLLM's e2e_request_latency_seconds): those
# are measured inside the server and miss what happens on the way to it (a delayed link, a queue in front).
LATENCY_METRICS = ("latency", "latency-90", "latency-p90", "request_duration_milliseconds_p90", "latency-50",
                   "latency-p50", "request_duration_milliseconds_p50")


# Words that name a system's entry in a service name (a '-'/'.'-separated part of it, or the whole name): Online
# Boutique's `frontend`, Sock Shop's `front-end`, Train Ticket's `ts-ui-dashboard`, an `istio-ingressgateway`, the
# study's `nginx-proxy`.
ENTRY_WORDS = ("frontend", "front", "gateway", "ingress", "ingressgateway", "nginx", "proxy", "ui", "web", "edge",
               "entry", "entrypoint", "api")


def find_entry(obs: Observation) -> tuple[str, str]:
    """The entry service and how it was found, first rule that answers:

    1. ``topology``: the topology's entry (declared, the ``--sli`` column's service, or the one service nobody
       calls);
    2. ``traces``: the service of the most root spans (spans without a parent: where requests come in);
    3. ``name``: among the services with a latency series, the only one whose name says entry (a part of it is
       one of ``ENTRY_WORDS``: frontend, front-end, gateway, ingress, nginx, proxy, ui, web, …);
    4. ``latency``: among those services (the ones that say entry, if several do, else all with a latency series),
       the one whose latency has the largest median before ``inject_time`` (every row without one; ties by name).
       In a tree of synchronous calls the entry's latency holds each callee's, so it is the largest.

    Rules 3 and 4 are guesses from column names and values; they fail on a system whose entry answers before its
    callees finish (asynchronous work, queues), whose services report latency in different units, or whose
    slowest service is not on the request path (a batch job). ``--sli COLUMN`` (``llmrca.case.system``) settles it.
    Raises ``MethodError`` when no rule answers.
    """
    s = obs.topology.entry_service()
    if s:
        return s, "topology"
    tr = obs.traces
    if tr is not None and len(tr):
        roots = tr[tr["parent_span_id"].isna() | (tr["parent_span_id"] == "")]["service"].value_counts()
        if len(roots):
            return str(roots.index[0]), "traces"
    cols = obs.metric_columns
    lat = {svc: c for svc in dict.fromkeys(service_of(c) for c in cols)
           if (c := latency_column(svc, cols)) is not None}
    if not lat:
        raise MethodError("cannot tell the entry service: the topology names none, there are no root spans and no "
                          "service has a latency series (give the SLI: --sli COLUMN)")
    named = sorted(svc for svc in lat if _says_entry(svc))
    if len(named) == 1:
        return named[0], "name"
    pool = named or sorted(lat)
    return min(pool, key=lambda svc: (-_pre_median(obs, lat[svc]), svc)), "latency"


def entry_service(obs: Observation) -> str:
    """The entry service (``find_entry``'s rules: topology, root spans, a name that says entry, the largest
    latency)."""
    return find_entry(obs)[0]


def _says_entry(service: str) -> bool:
    low = service.lower()
    parts = set(re.split(r"[-_.]", low))
    return low in ENTRY_WORDS or bool(parts & set(ENTRY_WORDS))


def _pre_median(obs: Observation, column: str) -> float:
    t = obs.metrics[TIME].to_numpy(dtype=float)
    v = obs.metrics[column].to_numpy(dtype=float)
    if obs.inject_time is not None and (t < obs.inject_time).any():
        v = v[t < obs.inject_time]
    v = v[np.isfinite(v)]
    return float(np.median(v)) if len(v) else -np.inf


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
    """The SLI column: the topology's ``sli`` where the user named one (``--sli``), else the entry service's
    latency column, e.g. ``nginx-proxy_latency``."""
    chosen = obs.topology.sli
    if chosen is not None:
        if chosen not in obs.metric_columns:
            raise MethodError(f"the SLI column {chosen!r} (topology.sli, --sli) is not among the metric columns")
        return chosen
    svc = entry_service(obs)
    col = latency_column(svc, obs.metric_columns)
    if col is None:
        raise MethodError(f"no latency column for the entry service {svc!r} (looked for {svc}_latency, "
                          "*latency* and *duration* series)")
    return col
